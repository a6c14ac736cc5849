#!/usr/bin/env bash
# Read-through figures of issue 4, side by side on this machine:
#  1. coalescing: origin requests per $CLIENTS concurrent GETs of one key nobody has read
#     (each client on its own connection; origin answers after $DELAY_MS), $ROUNDS keys;
#  2. miss-heavy throughput: wrk where every request is a new key, so every request is an
#     origin fetch through tiercache, against wrk calling the same origin directly.
# tiercache and the origin share core 0, wrk runs on core 1 (so the direct run gives the origin
# the core to itself: the ratio is the price of the extra hop). Rounds alternate; medians.
# Everything started here is stopped by PID on exit. Traffic goes to 127.0.0.1 only.
#
#   ROUNDS=5 SECONDS_PER_RUN=10 CONNS=64 CLIENTS=1000 bash bench/origin.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
CONNS=${CONNS:-64}
CLIENTS=${CLIENTS:-1000}
DELAY_MS=${DELAY_MS:-100}
STATE=${STATE:-/tmp/tiercache-bench}
TC_PORT=18196; SLOW_PORT=18197; FAST_PORT=18198; TC_FAST_PORT=18199

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
mkdir -p "$STATE"
cargo build --release --quiet --bin tiercache --example origin_bench
BENCH=target/release/examples/origin_bench

source bench/lib.sh
start_tiercache() { # port origin_port
  TIERCACHE__SERVER__LISTEN=127.0.0.1:$1 TIERCACHE__LOG__LEVEL=warn TIERCACHE__SERVER__MAX_CONCURRENCY=4096 \
    TIERCACHE__ORIGIN__URL="http://127.0.0.1:$2/items/{key}" TIERCACHE__ORIGIN__TIMEOUT_MS=10000 \
    taskset -c 0 target/release/tiercache >"$STATE/tiercache-$1.log" 2>&1 &
  pids+=($!)
  wait_http "http://127.0.0.1:$1/health"
}

taskset -c 0 "$BENCH" serve 127.0.0.1:$SLOW_PORT "$DELAY_MS" >/dev/null 2>&1 & pids+=($!)
taskset -c 0 "$BENCH" serve 127.0.0.1:$FAST_PORT 0 >/dev/null 2>&1 & pids+=($!)
wait_http "http://127.0.0.1:$SLOW_PORT/count/x"; wait_http "http://127.0.0.1:$FAST_PORT/count/x"
start_tiercache $TC_PORT $SLOW_PORT
start_tiercache $TC_FAST_PORT $FAST_PORT

echo "## Coalescing: $CLIENTS concurrent GETs of one unread key, origin delay ${DELAY_MS} ms"
echo
echo "| round | origin requests | clients answered 200 |"
echo "|---|---|---|"
taskset -c 1 "$BENCH" coalesce "http://127.0.0.1:$TC_PORT" "http://127.0.0.1:$SLOW_PORT" "$ROUNDS" "$CLIENTS" \
  | awk '{printf "| %d | %d | %d of '"$CLIENTS"' |\n", NR, $1, $2}'
echo

cat >"$STATE/unique.lua" <<'LUA'
local counter = 0
local prefix = os.getenv("PATH_PREFIX") or "/api/cache/"
local run = tostring(os.time()) .. "-" .. tostring(math.random(1000000))
request = function()
  counter = counter + 1
  return wrk.format("GET", prefix .. "miss-" .. run .. "-" .. counter)
end
LUA
run_wrk() { # url_base path_prefix -> "req/s p50_ms p99_ms"
  PATH_PREFIX=$2 taskset -c 1 wrk -t1 -c"$CONNS" -d"${SECONDS_PER_RUN}s" --latency -s "$STATE/unique.lua" "$1" | wrk_summary
}
: >"$STATE/miss.direct"; : >"$STATE/miss.tc"
for _ in $(seq "$ROUNDS"); do
  run_wrk "http://127.0.0.1:$FAST_PORT" /items/ >>"$STATE/miss.direct"
  run_wrk "http://127.0.0.1:$TC_FAST_PORT" /api/cache/ >>"$STATE/miss.tc"
done
direct=$(cut -d' ' -f1 "$STATE/miss.direct" | median)
echo "## Miss-heavy load: every request a new key (wrk -t1 -c$CONNS, ${SECONDS_PER_RUN}s, median of $ROUNDS)"
echo
echo "| path | req/s | p50 ms | p99 ms | vs origin direct |"
echo "|---|---|---|---|---|"
for name in direct tc; do
  file="$STATE/miss.$name"
  label=$([ $name = direct ] && echo "origin called directly" || echo "through tiercache (miss → origin → store)")
  rps=$(cut -d' ' -f1 "$file" | median); p50=$(cut -d' ' -f2 "$file" | median); p99=$(cut -d' ' -f3 "$file" | median)
  echo "| $label | $rps | $p50 | $p99 | $(awk -v a="$rps" -v b="$direct" 'BEGIN{printf "%.2f", a/b}') |"
done
