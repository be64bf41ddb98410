#!/usr/bin/env bash
# The shared CIFAR-10 suite with --preset auto (issue: self-tuning); same arguments as run_shared_suite.sh.
# Usage: bash benchmarks/run_auto_suite.sh [SHARED_DIR] [OUT_ROOT] [extra bench options...]
PRESET=auto exec bash "$(dirname "${BASH_SOURCE[0]}")/run_shared_suite.sh" "$@"
