#!/usr/bin/env bash
# Install into the project's virtual environment and run the offline demo (under 3 minutes on 2 CPU cores).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$(bash "$ROOT/scripts/env.sh")"
exec "$VENV/bin/watermark-ood" demo --out "${1:-demo-out}"
