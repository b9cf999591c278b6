# Shared by .ci/cluster_interop.sh and .ci/interop.sh's cluster mode
# (sourced, not run): a 3-node nats-server cluster made from the README's
# node configuration. The sourcing script sets `tmpdir`, `NATS` and the
# array `pids` (the nodes' pids are appended to it; it kills them).

# The first fenced block under the README heading $1.
readme_fenced_block() {
  awk -v heading="$1" '
    $0 == heading { section = 1; next }
    section && !inside && /^#/ { exit }
    section && /^```/ { if (inside) exit; inside = 1; next }
    inside { print }
  ' README.md
}

# free_ports N: N distinct loopback ports that bind now, below Linux's
# ephemeral range (as tests/it/support/nats.rs picks them: no
# 127.0.0.1:0 listener can take one between the pick and the node's bind).
free_ports() {
  "$PYTHON" - "$1" <<'PY'
import os, socket, sys
n, lo, hi = int(sys.argv[1]), 20000, 32000
held, port = [], lo + (os.getpid() * 97) % (hi - lo)
for _ in range(hi - lo):
    if len(held) == n:
        break
    port = lo + (port + 1 - lo) % (hi - lo)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        held.append(s)
    except OSError:
        s.close()
if len(held) != n:
    sys.exit(f"no {n} free loopback ports in {lo}..{hi}")
print(" ".join(str(s.getsockname()[1]) for s in held))
PY
}

# cluster_start C1 C2 C3 H1 H2 H3 R1 R2 R3: nodes n1, n2 and n3 from the
# README's configuration of n1 (under "Starting a 3-node nats-server
# cluster"), each with its client, monitoring (http) and route port from
# the list and its store_dir in $tmpdir; the routes name the three route
# ports. Sets NATS_URLS and MONITOR_URLS (comma-separated, as the broker's
# nats_url and nats_monitor_url take them).
cluster_start() {
  local ports=("$@") node1 k routes
  node1=$(readme_fenced_block "### Starting a 3-node nats-server cluster")
  [ -n "$node1" ] || {
    echo "FAIL: no node configuration in README.md"
    exit 1
  }
  routes="routes: [nats-route://127.0.0.1:${ports[6]}, nats-route://127.0.0.1:${ports[7]}, nats-route://127.0.0.1:${ports[8]}]"
  NATS_URLS=
  MONITOR_URLS=
  for k in 1 2 3; do
    sed -e "s/^server_name: n1\$/server_name: n$k/" \
      -e "s#store_dir: /var/lib/nats/n1#store_dir: $tmpdir/n$k#" \
      -e "s/^listen: 127.0.0.1:4222\$/listen: 127.0.0.1:${ports[k - 1]}/" \
      -e "s/^http: 127.0.0.1:8222\$/http: 127.0.0.1:${ports[k + 2]}/" \
      -e "s/^  listen: 127.0.0.1:6222\$/  listen: 127.0.0.1:${ports[k + 5]}/" \
      -e "s#^  routes: \[.*\]\$#  $routes#" \
      <<<"$node1" >"$tmpdir/n$k.conf"
    for want in "server_name: n$k" "  store_dir: $tmpdir/n$k" "listen: 127.0.0.1:${ports[k - 1]}" \
      "http: 127.0.0.1:${ports[k + 2]}" "  listen: 127.0.0.1:${ports[k + 5]}" "  $routes"; do
      grep -qxF -- "$want" "$tmpdir/n$k.conf" || {
        echo "FAIL: the README's node configuration no longer has the lines this script renumbers ($want)"
        exit 1
      }
    done
    "$NATS" -c "$tmpdir/n$k.conf" >"$tmpdir/n$k.out" 2>"$tmpdir/n$k.err" </dev/null &
    pids+=($!)
    NATS_URLS+="${NATS_URLS:+,}nats://127.0.0.1:${ports[k - 1]}"
    MONITOR_URLS+="${MONITOR_URLS:+,}http://127.0.0.1:${ports[k + 2]}"
  done
  CLUSTER_HTTP_PORTS=("${ports[@]:3:3}")
}

# A check: the three nodes report JetStream healthy (within 30 s each) and
# are the processes cluster_start started (not others on those ports).
t_cluster_up() {
  local k _ port
  for k in 1 2 3; do
    port=${CLUSTER_HTTP_PORTS[k - 1]}
    for _ in $(seq 300); do
      curl -fsS "http://127.0.0.1:$port/healthz?js-enabled-only=true" >/dev/null 2>&1 && break
      sleep 0.1
    done
    curl -fsS "http://127.0.0.1:$port/healthz?js-enabled-only=true"
    kill -0 "${pids[k - 1]}" || {
      echo "nats-server n$k exited (are its ports free?)"
      return 1
    }
  done
}
