#!/usr/bin/env bash
# Install into the project's virtual environment and run the whole test suite in two pytest-xdist workers (one
# torch thread each; WATERMARK_OOD_TEST_WORKERS overrides the count, 0 runs in this process). Measured time: README.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$(bash "$ROOT/scripts/env.sh")"
cd "$ROOT"
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider -n "${WATERMARK_OOD_TEST_WORKERS:-2}" tests "$@"
