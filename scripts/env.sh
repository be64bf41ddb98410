#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install watermark-ood into it, offline-safe.
# The environment lives outside the checkout so fresh clones reuse it; WATERMARK_OOD_VENV overrides the path.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
KEY="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/env.sh" | sha256sum | cut -c1-12)"
VENV="${WATERMARK_OOD_VENV:-$HOME/.cache/watermark-ood/venv-$KEY}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating virtual environment $VENV" >&2
  "$PY" -m venv "$VENV"
  # torch/torchvision resolve to the releases cached on this machine's disk (pip's constraints);
  # elsewhere pip takes them from PyPI.
  "$VENV/bin/pip" install -q --disable-pip-version-check "torch>=2.2" "torchvision>=0.17" >&2
fi
# Editable install of this checkout (fast when dependencies are already there).
"$VENV/bin/pip" install -q --disable-pip-version-check -e "$ROOT[test]" >&2
echo "$VENV"
