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

# ------------------------------------------------------------ the migration

# The README's recipe under "Moving an embedded broker into a cluster", run
# from its own text into the installation the brokers below use: an
# embedded broker (this script's, on its own data directory) stores two
# events and an endpoint and is stopped (the recipe's `systemctl stop`);
# the recipe's exports are run as written; its `stevedore migrate` runs
# with the release binary and that data directory in place of
# /var/lib/stevedore; its last line, `stevedore serve` on the cluster, is
# the broker recipe below (the embedded broker had no master key).
ORDER=examples/order_status.json
RETURN=examples/return_received.json
EMBEDDED=127.0.0.1:$(free_ports 1)

t_embedded_before_migration() {
  local _
  (cd "$tmpdir" && exec "$BIN" serve --listen "$EMBEDDED" --metrics-listen off \
    --console-listen off --data-dir "$tmpdir/embedded") \
    >"$tmpdir/embedded.out" 2>"$tmpdir/embedded.err" </dev/null &
  local pid=$!
  for _ in $(seq 600); do
    grep -q '^stevedore listening on' "$tmpdir/embedded.out" && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  publish_at "$EMBEDDED" "$ORDER" order-status-sample-1 false mig-order.json
  publish_at "$EMBEDDED" "$RETURN" return-sample-1 false mig-return.json
  gc -d '{"endpoint": {"url": "https://example.invalid/migrated", "eventTypes": ["order.status"]}}' \
    "$EMBEDDED" stevedore.v1.Admin/CreateEndpoint >"$tmpdir/mig-endpoint.json"
  kill "$pid"
  wait "$pid" || true
  echo "embedded broker stopped"
}

t_migrate() {
  local line ran=0
  while IFS= read -r line; do
    case "$line" in
      systemctl\ stop\ *) ;; # done: the embedded broker above is stopped
      export\ *) eval "$line" ;;
      stevedore\ migrate\ --data-dir\ /var/lib/stevedore)
        "$BIN" migrate --data-dir "$tmpdir/embedded" 2>&1 | tee "$tmpdir/migrate.out"
        ran=1
        ;;
      STEVEDORE_MASTER_KEY=*\ stevedore\ serve\ *) ;; # the broker recipe below
      "" | \#*) ;;
      *)
        echo "FAIL: a line of the README's migration recipe this script does not know: $line"
        return 1
        ;;
    esac
  done < <(readme_fenced_block "### Moving an embedded broker into a cluster")
  [ "$ran" -eq 1 ] || {
    echo "FAIL: the README's migration recipe runs no stevedore migrate"
    return 1
  }
  grep -q 'copied 2 event record(s) (offsets 1..=2)' "$tmpdir/migrate.out"
  grep -q 'endpoints 1' "$tmpdir/migrate.out"
}

check "migration: an embedded broker stores two events and an endpoint, then stops" t_embedded_before_migration
check "migration: the README's recipe copies them into the cluster" t_migrate

# ------------------------------------------------------------ the brokers

# A command continued with a trailing backslash is one line here.
brokers=$(readme_fenced_block "### Pointing brokers at it" | sed -e ':a' -e '/\\$/{N; s/\\\n[[:space:]]*/ /; ba' -e '}')
n=0
ADDRS=()
BROKER_ARGS=()
# Starts broker $1 with the recipe's arguments $2, in $tmpdir (the recipe's
# data directories are relative); its pid goes to pids[2 + $1].
start_broker() {
  local i=$1
  eval "set -- $2"
  (cd "$tmpdir" && exec "$BIN" "$@") >"$tmpdir/broker$i.out" 2>"$tmpdir/broker$i.err" </dev/null &
  pids[$((2 + i))]=$!
}
while IFS= read -r line; do
  case "$line" in
    export\ *) eval "$line" ;;
    cargo\ run\ --release\ --\ *)
      n=$((n + 1))
      BROKER_ARGS[n]=${line#cargo run --release -- }
      start_broker "$n" "${BROKER_ARGS[n]}"
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

# The recipe's ports (50051, 50052, 9464, ...) lie in Linux's ephemeral
# range (32768-60999): an outgoing connection of another process (a NATS
# route, a client) can hold one for a while, and the broker then exits with
# "Address already in use" (one CI run met this on 50052). Such a broker is
# started again, at most 5 times, 2 s apart, saying so; any other exit
# fails. This runs in this shell, not in a check's subshell, so that the
# pid of a broker started again reaches `pids` and the cleanup.
for i in 1 2; do
  tries=0
  for _ in $(seq 600); do
    grep -q '^stevedore listening on' "$tmpdir/broker$i.out" && break
    if ! kill -0 "${pids[$((2 + i))]}" 2>/dev/null; then
      grep -q 'Address already in use' "$tmpdir/broker$i.err" && [ "$tries" -lt 5 ] || break
      tries=$((tries + 1))
      echo "note: broker $i: a port of the recipe was in use; starting it again ($tries of at most 5)"
      sleep 2
      start_broker "$i" "${BROKER_ARGS[i]}"
    fi
    sleep 0.1
  done
done

t_brokers_up() {
  local i
  for i in 1 2; do
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

# The migrated events come first in the log: pick.confirmed's only.
t_subscribe_b() {
  subscribe_at "$B" "$PICK" pick.confirmed '{"earliest": true, "eventTypes": ["pick.confirmed"]}'
}

t_migrated_events() {
  get_event_at "$B" 1 "$ORDER" order.status
  get_event_at "$A" 2 "$RETURN" return.received
  publish_at "$A" "$ORDER" order-status-sample-1 true mig-again-a.json 1
  publish_at "$B" "$RETURN" return-sample-1 true mig-again-b.json 2
}

t_migrated_endpoint() {
  gc -d '{}' "$B" stevedore.v1.Admin/ListEndpoints >"$tmpdir/mig-list.json"
  grep -q "example.invalid/migrated" "$tmpdir/mig-list.json"
}

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
check "migration: the migrated events at their offsets on either broker, their ids duplicates" t_migrated_events
check "migration: the migrated endpoint is served" t_migrated_endpoint
check "publish pick_confirmed.json to A" t_publish_a
check "the same id to B is a duplicate at A's offset" t_publish_b_duplicate
check "GetEvent on B returns what A stored" t_get_event_b
check "Subscribe from earliest on B streams A's event" t_subscribe_b
check "publish shipment_closed.json to B, again to A: a duplicate" t_publish_b_then_a_duplicate
check "an endpoint created on A is served and deleted on B, and is gone on A" t_endpoint_shared

summary
