#!/usr/bin/env bash
# The docker-compose topology, natively on loopback: redis-server, two tiercache instances
# sharing it (persistence on, distinct instance ids) and Prometheus scraping both with
# deploy/prometheus.yml (targets rewritten to the loopback ports). Everything started here is
# stopped by PID on exit.
#
#   bash scripts/cluster.sh            # run until Ctrl-C
#   bash scripts/cluster.sh --smoke    # start, check the topology works end to end, stop
#
# Environment: BIN (tiercache binary; default: cargo build --release), PORT_BASE (default 14000:
# Redis on +0, instances on +1 and +2, Prometheus on +3), STATE (working directory).
set -euo pipefail
cd "$(dirname "$0")/.."
SMOKE=false
[ "${1:-}" = "--smoke" ] && SMOKE=true
PORT_BASE=${PORT_BASE:-14000}
REDIS_PORT=$PORT_BASE; TC1_PORT=$((PORT_BASE + 1)); TC2_PORT=$((PORT_BASE + 2)); PROM_PORT=$((PORT_BASE + 3))
STATE=${STATE:-$(mktemp -d /tmp/tiercache-cluster.XXXXXX)}
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet --bin tiercache
  BIN=target/release/tiercache
fi

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_http() { # url [tries of 50 ms]
  for _ in $(seq "${2:-200}"); do curl -sf -o /dev/null "$1" && return 0; sleep 0.05; done
  echo "no answer from $1" >&2; return 1
}

redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no >"$STATE/redis.log" 2>&1 &
pids+=($!)
for idx in 1 2; do
  port_var="TC${idx}_PORT"
  env -i PATH="$PATH" \
    TIERCACHE__SERVER__LISTEN="127.0.0.1:${!port_var}" \
    TIERCACHE__SERVER__INSTANCE_ID="tiercache-$idx" \
    TIERCACHE__PERSISTENCE__PATH="$STATE/tiercache-$idx.snapshot" \
    REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
    "$BIN" >"$STATE/tiercache-$idx.log" 2>&1 &
  pids+=($!)
done
sed -e "s/\"tiercache-1:4000\", \"tiercache-2:4000\"/\"127.0.0.1:$TC1_PORT\", \"127.0.0.1:$TC2_PORT\"/" \
  -e "s/scrape_interval: 5s/scrape_interval: 1s/" deploy/prometheus.yml >"$STATE/prometheus.yml"
prometheus --config.file="$STATE/prometheus.yml" --storage.tsdb.path="$STATE/prometheus" \
  --web.listen-address="127.0.0.1:$PROM_PORT" >"$STATE/prometheus.log" 2>&1 &
pids+=($!)

wait_http "http://127.0.0.1:$TC1_PORT/ready"
wait_http "http://127.0.0.1:$TC2_PORT/ready"
wait_http "http://127.0.0.1:$PROM_PORT/-/ready" 400
echo "tiercache-1  http://127.0.0.1:$TC1_PORT"
echo "tiercache-2  http://127.0.0.1:$TC2_PORT"
echo "prometheus   http://127.0.0.1:$PROM_PORT"
echo "redis        redis://127.0.0.1:$REDIS_PORT   (logs and snapshots in $STATE)"

if ! $SMOKE; then
  echo "running; Ctrl-C stops everything"
  wait
  exit 0
fi

# Both instances report L2 up, a write on one is read from L2 on the other, and Prometheus
# sees both targets up.
for port in "$TC1_PORT" "$TC2_PORT"; do
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/health" | grep -q '"l2":"up"' && break
    sleep 0.05
  done
  curl -sf "http://127.0.0.1:$port/health" | grep -q '"l2":"up"' || { echo "l2 not up on $port" >&2; exit 1; }
done
curl -sf -X PUT "http://127.0.0.1:$TC1_PORT/api/cache/smoke" -H 'Content-Type: application/json' \
  -d '{"value":{"from":"tiercache-1"}}' >/dev/null
curl -sf "http://127.0.0.1:$TC2_PORT/api/cache/smoke" | grep -q '"source":"l2"' \
  || { echo "tiercache-2 did not read tiercache-1's write from L2" >&2; exit 1; }
for _ in $(seq 120); do
  up=$(curl -sf "http://127.0.0.1:$PROM_PORT/api/v1/query?query=up%7Bjob%3D%22tiercache%22%7D%3D%3D1" | grep -o '"instance"' | wc -l || true)
  [ "$up" -eq 2 ] && { echo "smoke ok"; exit 0; }
  sleep 0.25
done
echo "prometheus did not see both instances up" >&2
exit 1
