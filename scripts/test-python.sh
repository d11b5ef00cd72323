#!/usr/bin/env bash
# Python tests of the defocus model (models/training/tests). Needs Debian's python3-torch, numpy, scipy, PIL, onnx.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
if ! "$PY" -c "import torch, numpy, PIL" 2>/dev/null; then
  echo "test-python: $PY lacks torch/numpy/PIL (apt install python3-torch python3-numpy python3-scipy python3-pil)" >&2
  exit 1
fi
exec "$PY" -m unittest discover -s models/training/tests -v
