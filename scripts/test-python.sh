#!/usr/bin/env bash
# Python tests: the defocus model's training code (models/training/tests) and the committed TypeScript-test
# fixtures (test/fixtures/test_fixtures.py). Needs Debian's python3-torch, numpy, scipy, PIL, onnx, which
# scripts/test-setup.sh installs; where it could not, the tests are reported as skipped with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
if ! "$PY" -c "import torch, numpy, scipy, PIL, onnx" 2>/dev/null; then
  reason=$(cat var/test-setup/python-skip-reason 2>/dev/null || echo "torch/numpy/scipy/PIL/onnx missing for $PY; run scripts/test-setup.sh or apt-get install -y python3-torch python3-numpy python3-scipy python3-pil python3-onnx")
  echo "python tests: SKIPPED (all of them): $reason"
  exit 0
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
"$PY" -m unittest discover -s models/training/tests -v
"$PY" -m unittest discover -s test/fixtures -p 'test_*.py' -v
