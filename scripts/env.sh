#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install watermark-ood into it, offline-safe.
# The environment lives outside the checkout so fresh clones reuse it; WATERMARK_OOD_VENV overrides the path.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
VENV="${WATERMARK_OOD_VENV:-$HOME/.cache/watermark-ood/venv}"
quiet() { grep -v -e "^WARNING: Location" -e "^$" >&2 || true; }
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating virtual environment $VENV (first run: installs PyTorch, a few minutes)" >&2
  "$PY" -m venv "$VENV"
  # torch/torchvision resolve to the releases cached on this machine's disk (pip's constraints);
  # elsewhere pip takes them from PyPI.
  "$VENV/bin/pip" install -q --disable-pip-version-check "torch>=2.2" "torchvision>=0.17" 2>&1 | quiet
fi
# Editable install of this checkout with the test/export extras (fast when everything is already there).
"$VENV/bin/pip" install -q --disable-pip-version-check -e "$ROOT[test]" 2>&1 | quiet
"$VENV/bin/python" -c "import watermark_ood, torch" || { echo "installation failed" >&2; exit 1; }
echo "$VENV"
