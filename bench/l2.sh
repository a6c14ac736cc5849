#!/usr/bin/env bash
# Issue 3 measurements, on loopback, everything stopped by PID on exit:
# 1. invalidation propagation between two instances sharing one Redis (examples/propagation.rs):
#    time from A acknowledging a write to B answering the new value, p50/p99 over WRITES writes;
# 2. an L2-hit GET through tiercache (l1.max_entries = 1, random keys, so reads go to Redis)
#    with tiercache and Redis sharing core 0 (the server side), load generators on core 1,
#    against redis-benchmark GET on the same Redis in the same run: the service's overhead.
#
#   WRITES=1000 SECONDS_PER_RUN=10 ROUNDS=3 CONNS=64 bash bench/l2.sh
set -euo pipefail
cd "$(dirname "$0")/.."
WRITES=${WRITES:-1000}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-64}
KEYS=${KEYS:-10000}
STATE=${STATE:-/tmp/tiercache-bench-l2}
REDIS_PORT=18290; A_PORT=18291; B_PORT=18292; C_PORT=18293
mkdir -p "$STATE"

for tool in wrk redis-benchmark; do
  command -v "$tool" >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk redis-tools >/dev/null; }
done
cargo build --release --quiet --bin tiercache --example propagation

source bench/lib.sh

taskset -c 0 redis-server --port $REDIS_PORT --bind 127.0.0.1 --save "" --appendonly no --dir "$STATE" >/dev/null &
pids+=($!)
for _ in $(seq 100); do redis-cli -p $REDIS_PORT ping >/dev/null 2>&1 && break; sleep 0.05; done
start() { # port, extra env...
  local port=$1; shift
  env TIERCACHE__SERVER__LISTEN=127.0.0.1:$port REDIS_URL=redis://127.0.0.1:$REDIS_PORT TIERCACHE__LOG__LEVEL=warn "$@" \
    taskset -c 0 target/release/tiercache >"$STATE/tc-$port.log" 2>&1 &
  pids+=($!)
  wait_http "http://127.0.0.1:$port/health"
}
start $A_PORT
start $B_PORT
start $C_PORT TIERCACHE__L1__MAX_ENTRIES=1
sleep 0.5 # subscriptions

echo "## Invalidation propagation (A writes, B reads), $WRITES writes"
target/release/examples/propagation "http://127.0.0.1:$A_PORT" "http://127.0.0.1:$B_PORT" "$WRITES"

echo
echo "## L2-hit GET vs redis-benchmark GET (100-byte values, $KEYS keys, c$CONNS, median of $ROUNDS x ${SECONDS_PER_RUN}s)"
value=$(head -c 98 /dev/zero | tr '\0' 'x')
for idx in $(seq 0 $((KEYS - 1))); do
  printf '{"key":"key:%d","value":"%s","ttl":86400}\n' "$idx" "$value"
done | paste -sd, | sed 's/^/{"entries":[/; s/$/]}/' >"$STATE/batch.json"
curl -sf -X POST "http://127.0.0.1:$C_PORT/api/cache/batch/set" -H 'Content-Type: application/json' --data-binary @"$STATE/batch.json" >/dev/null
cat >"$STATE/random.lua" <<LUA
math.randomseed(os.time())
request = function() return wrk.format("GET", "/api/cache/key:" .. math.random(0, $((KEYS - 1)))) end
LUA
# redis-benchmark reads the same key space in raw RESP form (its own keys, same sizes).
redis-cli -p $REDIS_PORT eval "for i=0,$((KEYS - 1)) do redis.call('SET','key:'..string.format('%012d',i),string.rep('x',100)) end" 0 >/dev/null

: >"$STATE/tc"; : >"$STATE/rb"
for _ in $(seq "$ROUNDS"); do
  taskset -c 1 wrk -t1 -c"$CONNS" -d"${SECONDS_PER_RUN}s" --latency -s "$STATE/random.lua" "http://127.0.0.1:$C_PORT" | wrk_summary >>"$STATE/tc"
  # CSV columns: test, rps, avg, min, p50, p95, p99, max (ms).
  taskset -c 1 redis-benchmark -p $REDIS_PORT -t get -c "$CONNS" -r "$KEYS" -d 100 -n $((SECONDS_PER_RUN * 60000)) --csv |
    awk -F'"' '$2 == "GET" {print $4, $10, $14}' >>"$STATE/rb"
done
row() { # label file
  echo "| $1 | $(cut -d' ' -f1 "$2" | median) | $(cut -d' ' -f2 "$2" | median) | $(cut -d' ' -f3 "$2" | median) |"
}
echo "| what | req/s (median) | p50 ms | p99 ms |"
echo "|---|---|---|---|"
row "tiercache L2-hit GET over HTTP (wrk)" "$STATE/tc"
row "redis-benchmark GET (RESP)" "$STATE/rb"
tc=$(cut -d' ' -f1 "$STATE/tc" | median); rb=$(cut -d' ' -f1 "$STATE/rb" | median)
echo
echo "tiercache / redis-benchmark throughput: $(awk -v a="$tc" -v b="$rb" 'BEGIN{printf "%.2f", a/b}')"
echo "hit sources at C: $(curl -s "http://127.0.0.1:$C_PORT/api/cache/metrics" | grep -o '"l2_hits":[0-9]*\|"hits":[0-9]*' | tr '\n' ' ')"
