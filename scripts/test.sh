#!/usr/bin/env bash
# Install into the project's virtual environment and run the whole test suite (about 10 minutes on 2 CPU cores).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$(bash "$ROOT/scripts/env.sh")"
cd "$ROOT"
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests "$@"
