#!/usr/bin/env bash
# L1 hit throughput and latency of tiercache against the bare-axum ceiling
# (examples/bare_baseline.rs, this project's own copy of ../shared/bench/baseline-axum built
# with the same dependencies), side by side on this machine.
#
# Servers are pinned to core 0 and wrk to core 1 (wrk -t1 -c$CONNS); rounds alternate between
# the two servers so drift hits both; the table reports medians. Everything started here is
# stopped by PID on exit. Traffic goes to 127.0.0.1 only.
#
#   ROUNDS=5 SECONDS_PER_RUN=10 CONNS=64 SIZES="100 1024" bash bench/hit.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
CONNS=${CONNS:-64}
SIZES=${SIZES:-"100 1024"}
STATE=${STATE:-/tmp/tiercache-bench}
TC_PORT=18186
BASE_PORT=18181

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
mkdir -p "$STATE"
cargo build --release --quiet --bin tiercache --example bare_baseline

source bench/lib.sh


TIERCACHE__SERVER__LISTEN=127.0.0.1:$TC_PORT TIERCACHE__LOG__LEVEL=warn \
  taskset -c 0 target/release/tiercache >"$STATE/tiercache.log" 2>&1 &
pids+=($!)
BIND=127.0.0.1:$BASE_PORT SIZES="${SIZES// /,}" taskset -c 0 target/release/examples/bare_baseline >"$STATE/baseline.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$TC_PORT/health"
wait_http "http://127.0.0.1:$BASE_PORT/api/cache/b100"

for size in $SIZES; do
  # A JSON string of exactly $size bytes serialized: the quotes count.
  value=$(head -c $((size - 2)) /dev/zero | tr '\0' 'x')
  curl -sf -X PUT "http://127.0.0.1:$TC_PORT/api/cache/b$size" -H 'Content-Type: application/json' \
    -d "{\"value\":\"$value\",\"ttl\":86400}" >/dev/null
done

run_wrk() { # url -> "req/s p50_ms p99_ms"
  taskset -c 1 wrk -t1 -c"$CONNS" -d"${SECONDS_PER_RUN}s" --latency "$1" | wrk_summary
}

echo "| size | server | req/s (median of $ROUNDS) | p50 ms | p99 ms | vs axum |"
echo "|---|---|---|---|---|---|"
for size in $SIZES; do
  : >"$STATE/tc.$size"; : >"$STATE/base.$size"
  for _ in $(seq "$ROUNDS"); do
    run_wrk "http://127.0.0.1:$BASE_PORT/api/cache/b$size" >>"$STATE/base.$size"
    run_wrk "http://127.0.0.1:$TC_PORT/api/cache/b$size" >>"$STATE/tc.$size"
  done
  base_rps=$(cut -d' ' -f1 "$STATE/base.$size" | median)
  tc_rps=$(cut -d' ' -f1 "$STATE/tc.$size" | median)
  for name in base tc; do
    file="$STATE/$name.$size"
    label=$([ $name = base ] && echo "bare axum (ceiling)" || echo "tiercache L1 hit")
    rps=$(cut -d' ' -f1 "$file" | median); p50=$(cut -d' ' -f2 "$file" | median); p99=$(cut -d' ' -f3 "$file" | median)
    echo "| $size B | $label | $rps | $p50 | $p99 | $(awk -v a="$rps" -v b="$base_rps" 'BEGIN{printf "%.2f", a/b}') |"
  done
done
