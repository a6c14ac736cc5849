#!/usr/bin/env bash
# Userspace instructions per L1-hit GET, counted by callgrind: repeatable on a noisy machine
# (the same binary and inputs give the same count whatever else runs), so it is the A/B figure
# for hit-path changes; wall-clock ratios come from bench/run.sh. Kernel work (the TCP stack)
# is not counted. Loopback only; the service it starts is stopped on exit.
#
#   bash bench/instructions.sh [TIERCACHE_BIN ...]     (default: target/release/tiercache)
#   N=20000 bash bench/instructions.sh old-binary new-binary
#   SIZE=1024 bash bench/instructions.sh ...                 (the hit of a 1 KiB value)
#   SCENARIO=batch100 N=2000 bash bench/instructions.sh ...   (POST batch/get of 100 L1 keys)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-20000}
SCENARIO=${SCENARIO:-hit}
SIZE=${SIZE:-100}   # bytes of the JSON value read by the hit scenario
PORT=${PORT:-18791}
STATE=${STATE:-$(mktemp -d /tmp/tiercache-instructions.XXXXXX)}
for tool in valgrind wrk curl; do
  command -v $tool >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind wrk curl >/dev/null; }
done
if [ $# -eq 0 ]; then
  cargo build --release --quiet --bin tiercache
  set -- target/release/tiercache
fi
value=$(head -c $((SIZE - 2)) /dev/zero | tr '\0' 'x')
if [ "$SCENARIO" = batch100 ]; then
  keys=$(for idx in $(seq 0 99); do printf '"k%d",' "$idx"; done)
  printf '{"keys":[%s]}' "${keys%,}" >"$STATE/batch.json"
  entries=$(for idx in $(seq 0 99); do printf '{"key":"k%d","value":"%s"},' "$idx" "$value"; done)
  printf '{"entries":[%s]}' "${entries%,}" >"$STATE/setup.json"
  setup() { curl -sf -X POST "http://127.0.0.1:$PORT/api/cache/batch/set" -H 'Content-Type: application/json' --data-binary @"$STATE/setup.json" >/dev/null; }
  request='local f = io.open("'$STATE'/batch.json"); local body = f:read("*a"); f:close()
local make = function() return wrk.format("POST", "/api/cache/batch/get", {["Content-Type"] = "application/json"}, body) end'
else
  setup() { curl -sf -X PUT "http://127.0.0.1:$PORT/api/cache/b100" -H 'Content-Type: application/json' -d "{\"value\":\"$value\"}" >/dev/null; }
  request='local make = function() return wrk.format("GET", "/api/cache/b100") end'
fi
cat >"$STATE/n.lua" <<LUA
$request
local n = 0
request = function()
  n = n + 1
  if n > $N then wrk.thread:stop() end
  return make()
end
LUA
for bin in "$@"; do
  rm -f "$STATE"/callgrind.out.*
  TIERCACHE__SERVER__LISTEN=127.0.0.1:$PORT TIERCACHE__LOG__LEVEL=warn \
    valgrind --tool=callgrind --callgrind-out-file="$STATE/callgrind.out.%p" "$bin" >/dev/null 2>"$STATE/valgrind.log" &
  pid=$!
  trap 'kill $pid 2>/dev/null || true' EXIT
  for _ in $(seq 300); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/health" && break; sleep 0.1; done
  setup
  wrk -t1 -c8 -d2s -s "$STATE/n.lua" "http://127.0.0.1:$PORT" >/dev/null   # warm-up, not counted
  callgrind_control --zero "$pid" >/dev/null 2>&1
  requests=$(wrk -t1 -c8 -d120s -s "$STATE/n.lua" "http://127.0.0.1:$PORT" | awk '/requests in/ {print $1}')
  callgrind_control --dump "$pid" >/dev/null 2>&1
  kill "$pid"; wait "$pid" 2>/dev/null || true
  # Counted: the N requests, then shutdown (small next to N requests).
  total=$(grep -h '^summary:' "$STATE"/callgrind.out.*.1 | awk '{s += $2} END {print s}')
  echo "$bin ($SCENARIO): $requests requests, $(awk -v i="$total" -v n="$requests" 'BEGIN {printf "%.0f", i / n}') instructions per request"
done
