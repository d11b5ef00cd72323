#!/usr/bin/env bash
# First step of `npm test`: make sure what the tests run against is on this machine, installing Debian packages
# where it can (root or passwordless sudo), or saying exactly what to run.
#   - mosquitto (the broker binary; the tests start their own on a free loopback port, nothing needs to be running)
#   - chromium (the HTML report tests open the page headless)
#   - python3-torch python3-numpy python3-scipy python3-pil python3-onnx (the Python training tests only; the
#     TypeScript tests need no Python). If they cannot be installed, the Python tests are reported as SKIPPED with
#     the reason (scripts/test-python.sh), never silently.
set -uo pipefail
cd "$(dirname "$0")/.."
state=var/test-setup
mkdir -p "$state"
rm -f "$state/python-skip-reason"

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo -n "$@"; else return 126; fi
}
apt_updated=0
apt_install() { # packages...; returns apt's status, its output in $state/apt.log
  if ! command -v apt-get >/dev/null 2>&1; then echo "no apt-get on this machine" >"$state/apt.log"; return 127; fi
  if [ "$apt_updated" = 0 ]; then
    as_root apt-get update -qq >"$state/apt.log" 2>&1 || { echo "apt-get update failed" >>"$state/apt.log"; return 1; }
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >>"$state/apt.log" 2>&1
}

# require_binary PACKAGE WHAT CHECK...: installs the Debian PACKAGE unless CHECK succeeds; fails naming the command
require_binary() {
  local pkg=$1 what=$2
  shift 2
  "$@" && return 0
  echo "test-setup: installing $pkg (Debian package, $what)"
  if ! apt_install "$pkg" || ! "$@"; then
    echo "test-setup: $what needs $pkg and it could not be installed here:" >&2
    tail -n 5 "$state/apt.log" >&2 2>/dev/null
    echo "test-setup: run as root: apt-get update && apt-get install -y $pkg   (then npm test again)" >&2
    exit 1
  fi
}
have_mosquitto() { command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; }
have_chromium() { command -v chromium >/dev/null 2>&1; }
require_binary mosquitto "the broker every test run starts" have_mosquitto
# the HTML report tests open the page in headless Chromium (test/helpers/chromium.ts)
require_binary chromium "the HTML report tests" have_chromium

PY=/usr/bin/python3
py_missing() {
  local missing=()
  [ -x "$PY" ] || { echo "python3"; return; }
  for m in torch:python3-torch numpy:python3-numpy scipy:python3-scipy PIL:python3-pil onnx:python3-onnx; do
    "$PY" -c "import ${m%%:*}" 2>/dev/null || missing+=("${m#*:}")
  done
  echo "${missing[*]:-}"
}
need=$(py_missing)
if [ -n "$need" ]; then
  echo "test-setup: installing $need (Debian packages, for the Python training tests)"
  apt_install $need
  need=$(py_missing)
  if [ -n "$need" ]; then
    reason="$need not installable here ($(tail -n 1 "$state/apt.log" 2>/dev/null | tr -d '\n' || echo 'apt-get unavailable')); install with: apt-get install -y $need"
    echo "$reason" >"$state/python-skip-reason"
    echo "test-setup: WARNING: the Python tests will be SKIPPED: $reason" >&2
  fi
fi
echo "test-setup: ready (mosquitto: $(command -v mosquitto || echo /usr/sbin/mosquitto); python tests: $([ -f "$state/python-skip-reason" ] && echo skipped || echo yes))"
