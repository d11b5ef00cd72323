#!/usr/bin/env bash
# The README's test command on a newcomer's machine: a fresh clone of HEAD, `npm ci`, then `npm test` in a network
# namespace of its own (loopback only: no broker on 1883, no package registry) with Python's dist-packages hidden
# (no PyTorch). The TypeScript suite must pass on its own broker; the Python tests must be reported as skipped, with
# the reason. Needs root (unshare); CI runs it after the ordinary `npm test`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ] || ! command -v unshare >/dev/null || ! command -v ip >/dev/null; then
  echo "check-newcomer: needs root, unshare and ip (util-linux, iproute2); not run here" >&2
  exit 1
fi
work=$(mktemp -d /tmp/focusd-newcomer-XXXXXX)
trap 'rm -rf "$work"' EXIT
git clone -q . "$work/clone"
cd "$work/clone"
echo "check-newcomer: fresh clone of $(git rev-parse --short HEAD) in $work/clone; npm ci"
ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund >"$work/npm-ci.log" 2>&1 || { tail -20 "$work/npm-ci.log"; exit 1; }
echo "check-newcomer: npm test with no network but loopback, nothing on 127.0.0.1:1883, no PyTorch"
set +e
unshare --net --mount bash -c '
  set -e
  ip link set lo up
  mount -t tmpfs none /usr/lib/python3/dist-packages
  if (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; then echo "something listens on 1883 in the namespace" >&2; exit 1; fi
  if /usr/bin/python3 -c "import torch" 2>/dev/null; then echo "torch still importable" >&2; exit 1; fi
  npm test
' 2>&1 | tee "$work/test.log"
rc=${PIPESTATUS[0]}
set -e
[ "$rc" = 0 ] || { echo "check-newcomer: npm test failed (exit $rc)" >&2; exit "$rc"; }
grep -q "python tests: SKIPPED" "$work/test.log" || { echo "check-newcomer: the Python tests were not reported as skipped" >&2; exit 1; }
grep -q "test broker: mosquitto at mqtt://127.0.0.1:" "$work/test.log" || { echo "check-newcomer: the tests did not start their own broker" >&2; exit 1; }
echo "check-newcomer: passed (own broker, no PyTorch, Python tests reported skipped with the reason)"
