#!/usr/bin/env bash
# The README's cluster-mode recipes, run from the README's own text: the
# node configuration under "Starting a 3-node nats-server cluster" (node n1
# as written; n2 and n3 "alike, with their own name, ports and store_dir":
# each port + 1, + 2), then the commands under "Pointing brokers at it"
# (with the release binary in place of `cargo run --release --`, each broker
# in the background), then grpcurl checks addressed to either broker.
#
#   bash .ci/cluster_interop.sh     # after `cargo build --release`
#
# Environment:
#   NATS_SERVER_BIN  nats-server 2.12 or newer (default: the one the README's
#                    cluster test recipe installs, else `nats-server` on PATH)
#   STEVEDORE_BIN, INTEROP_VENV, PYTHON: as for .ci/interop.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

BIN=$(realpath -m "${STEVEDORE_BIN:-target/release/stevedore}")
unset STEVEDORE_BIN
NATS=${NATS_SERVER_BIN:-$HOME/.cache/nats-server-2.15.1/bin/nats-server}
[ -x "$NATS" ] || NATS=$(command -v nats-server)
PYTHON=${PYTHON:-python3}
VENV=${INTEROP_VENV:-${TMPDIR:-/tmp}/stevedore-interop-venv}
CHECKS=.ci/interop_checks.py
PICK=examples/pick_confirmed.json
SHIPMENT=examples/shipment_closed.json

tmpdir=$(mktemp -d "${TMPDIR:-/tmp}/stevedore-cluster-interop.XXXXXX")
# shellcheck source=.ci/checks.sh
source .ci/checks.sh
# shellcheck source=.ci/cluster.sh
source .ci/cluster.sh
pids=()

cleanup() {
  local rc=$?
  local pid
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [ "$rc" -ne 0 ] || [ "$failed" -gt 0 ]; then
    show_logs 60 "$tmpdir"/*.out "$tmpdir"/*.err
  fi
  rm -rf "$tmpdir"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

setup_venv
"$NATS" --version

# ------------------------------------------------------------ the cluster

# The README's ports: n1's as written, n2's and n3's each + 1 and + 2.
cluster_start 4222 4223 4224 8222 8223 8224 6222 6223 6224
check "cluster: three nats-server nodes from the README's configuration" t_cluster_up

# ------------------------------------------------------------ the brokers

# A command continued with a trailing backslash is one line here.
brokers=$(readme_fenced_block "### Pointing brokers at it" | sed -e ':a' -e '/\\$/{N; s/\\\n[[:space:]]*/ /; ba' -e '}')
n=0
ADDRS=()
while IFS= read -r line; do
  case "$line" in
    export\ *) eval "$line" ;;
    cargo\ run\ --release\ --\ *)
      n=$((n + 1))
      eval "set -- ${line#cargo run --release -- }"
      # In $tmpdir: the recipe's data directories are relative.
      (cd "$tmpdir" && exec "$BIN" "$@") >"$tmpdir/broker$n.out" 2>"$tmpdir/broker$n.err" </dev/null &
      pids+=($!)
      ADDRS+=("$(sed -n 's/.*--listen \([^ ]*\).*/\1/p' <<<"$line")")
      ;;
    "" | \#*) ;;
    *)
      echo "FAIL: a line of the README's broker recipe this script does not know: $line"
      exit 1
      ;;
  esac
done <<<"$brokers"
[ "$n" -eq 2 ] || {
  echo "FAIL: the README's broker recipe starts $n brokers, want 2"
  exit 1
}
A=${ADDRS[0]}
B=${ADDRS[1]}

t_brokers_up() {
  local i _
  for i in 1 2; do
    for _ in $(seq 600); do
      grep -q '^stevedore listening on' "$tmpdir/broker$i.out" && break
      kill -0 "${pids[$((2 + i))]}" 2>/dev/null || break
      sleep 0.1
    done
    grep '^stevedore listening on' "$tmpdir/broker$i.out"
  done
}
check "brokers: both start on the cluster (durability preflight passed)" t_brokers_up

# ------------------------------------------------------------ checks

t_publish_a() { publish_at "$A" "$PICK" pick-sample-1 false publish-a.json; }

t_publish_b_duplicate() {
  publish_at "$B" "$PICK" pick-sample-1 true publish-b.json "$(offset_of publish-a.json)"
}

t_get_event_b() { get_event_at "$B" "$(offset_of publish-a.json)" "$PICK" pick.confirmed; }

t_subscribe_b() { subscribe_at "$B" "$PICK" pick.confirmed; }

t_publish_b_then_a_duplicate() {
  publish_at "$B" "$SHIPMENT" shipment-sample-1 false ship-b.json
  publish_at "$A" "$SHIPMENT" shipment-sample-1 true ship-a.json "$(offset_of ship-b.json)"
}

t_endpoint_shared() {
  local id _
  gc -d '{"endpoint": {"url": "https://example.invalid/hook", "eventTypes": ["pick.confirmed"]}}' \
    "$A" stevedore.v1.Admin/CreateEndpoint >"$tmpdir/create.json"
  id=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["endpoint"]["id"])' \
    "$tmpdir/create.json")
  echo "created $id on A"
  gc -d "{\"id\": \"$id\"}" "$B" stevedore.v1.Admin/GetEndpoint >"$tmpdir/get-b.json"
  grep -q "example.invalid/hook" "$tmpdir/get-b.json"
  echo "B serves it"
  gc -d "{\"id\": \"$id\"}" "$B" stevedore.v1.Admin/DeleteEndpoint
  echo "deleted on B"
  # A's copy of the state follows within a moment.
  for _ in $(seq 50); do
    gc -d "{\"id\": \"$id\"}" "$A" stevedore.v1.Admin/GetEndpoint >"$tmpdir/get-a.out" 2>&1 || {
      grep -q "NotFound" "$tmpdir/get-a.out"
      echo "gone on A"
      return 0
    }
    sleep 0.1
  done
  echo "still on A after it was deleted on B"
  return 1
}

check "health: broker A serves" health_at "$A" ""
check "health: broker B serves" health_at "$B" ""
check "publish pick_confirmed.json to A" t_publish_a
check "the same id to B is a duplicate at A's offset" t_publish_b_duplicate
check "GetEvent on B returns what A stored" t_get_event_b
check "Subscribe from earliest on B streams A's event" t_subscribe_b
check "publish shipment_closed.json to B, again to A: a duplicate" t_publish_b_then_a_duplicate
check "an endpoint created on A is served and deleted on B, and is gone on A" t_endpoint_shared

summary
