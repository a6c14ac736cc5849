#!/usr/bin/env bash
# The issue 7 benchmark suite: every target measured side by side with its baseline in one run,
# printed as one table (also written to $STATE/table.md, raw figures to $STATE/raw.tsv).
#
#   bash bench/run.sh --quick   # ~2 min: one short round of each scenario (the test command's smoke run)
#   bash bench/run.sh --full    # ~20 min: 5 rounds, 8 s runs, 1M entries, criterion benches
#
# Scenarios (servers on core $SERVER_CPUS, load generators on core $CLIENT_CPUS; PINNED=0 runs
# unpinned): L1 hit GET of 100 B and 1 KiB against the project's bare-axum ceiling
# (examples/bare_baseline.rs), with CPU per request and auth tokens on; open-loop latency at half
# the ceiling's rate (examples/openloop.rs, coordinated-omission corrected); L2-hit GET against
# webdis on the same Redis, and PUT with write-through against that GET; batch/get of 100
# L1-resident keys against redis-benchmark -P16; RSS per entry against Redis's used_memory per
# key (bench/memory.py); start-up (examples/startup_bench.rs); in full mode the criterion engine
# benches. Rounds alternate between a target and its baseline so drift hits both; figures are
# medians, with the spread (min-max) of the rounds. Every process started here is stopped by
# PID on exit. Traffic goes to 127.0.0.1 only. It exits non-zero when a scenario yields no
# figure, never because a target is missed.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=${1:---quick}
case "$MODE" in
  --quick) ROUNDS=${ROUNDS:-1}; DUR=${DUR:-2}; OPEN_SECS=${OPEN_SECS:-3}; MEM_ENTRIES=${MEM_ENTRIES:-100000}; CRITERION=0 ;;
  --full) ROUNDS=${ROUNDS:-5}; DUR=${DUR:-8}; OPEN_SECS=${OPEN_SECS:-10}; MEM_ENTRIES=${MEM_ENTRIES:-1000000}; CRITERION=1 ;;
  *) echo "usage: bash bench/run.sh [--quick|--full]" >&2; exit 2 ;;
esac
CONNS=${CONNS:-64}
PINNED=${PINNED:-1}
SERVER_CPUS=${SERVER_CPUS:-0}
CLIENT_CPUS=${CLIENT_CPUS:-1}
STATE=${STATE:-/tmp/tiercache-bench-suite}
PORT_BASE=${PORT_BASE:-18500}
P_BASE=$((PORT_BASE + 1)); P_TC=$((PORT_BASE + 2)); P_AUTH=$((PORT_BASE + 3)); P_REDIS=$((PORT_BASE + 4))
P_WEBDIS=$((PORT_BASE + 5)); P_L2=$((PORT_BASE + 6)); P_MEMREDIS=$((PORT_BASE + 7)); P_MEM=$((PORT_BASE + 8))
P_START=$((PORT_BASE + 9))
TOKEN=bench-token-0123456789abcdef
KEYS=10000

rm -rf "$STATE"; mkdir -p "$STATE"
: >"$STATE/raw.tsv"

missing=()
for tool in wrk:wrk redis-server:redis-server redis-benchmark:redis-tools webdis:webdis python3:python3 curl:curl; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
cargo build --release --quiet --bin tiercache --example bare_baseline --example openloop --example startup_bench

source bench/lib.sh

# Command prefixes (exec'd, never a function or subshell, so $! is the server's own PID).
if [ "$PINNED" = 1 ]; then ON_SERVER=(taskset -c "$SERVER_CPUS"); ON_CLIENT=(taskset -c "$CLIENT_CPUS"); else ON_SERVER=(env); ON_CLIENT=(env); fi
# record SCENARIO NAME VALUE: one raw figure of one round.
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$STATE/raw.tsv"; }
figures() { awk -F'\t' -v s="$1" -v n="$2" '$1 == s && $2 == n {print $3}' "$STATE/raw.tsv"; }
med() { figures "$1" "$2" | median; }
spread() { figures "$1" "$2" | sort -g | awk 'NR == 1 {lo = $1} {hi = $1} END {print lo "–" hi}'; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
CLK_TCK=$(getconf CLK_TCK)

# wrk_run SCENARIO NAME PID URL [wrk args...]: req/s, p99 and CPU µs per request of PID.
wrk_run() {
  local scenario=$1 name=$2 pid=$3 url=$4; shift 4
  local before after out requests
  before=$(ticks "$pid")
  out=$("${ON_CLIENT[@]}" wrk -t1 -c"$CONNS" -d"${DUR}s" --latency "$@" "$url")
  after=$(ticks "$pid")
  requests=$(echo "$out" | awk '/requests in/ {print $1}')
  if echo "$out" | grep -q 'Non-2xx'; then echo "$name: non-2xx answers: $out" >&2; exit 1; fi
  read -r rps _ p99 < <(echo "$out" | wrk_summary)
  record "$scenario" "$name.rps" "$rps"
  record "$scenario" "$name.p99" "$p99"
  record "$scenario" "$name.cpu" "$(awk -v t=$((after - before)) -v n="$requests" -v hz="$CLK_TCK" 'BEGIN {printf "%.2f", t * 1e6 / hz / n}')"
}

start_tiercache() { # port log env...: the instance's PID is the last of $pids
  local port=$1 log=$2; shift 2
  env TIERCACHE__SERVER__LISTEN=127.0.0.1:$port TIERCACHE__LOG__LEVEL=warn "$@" \
    "${ON_SERVER[@]}" target/release/tiercache >"$STATE/$log.log" 2>&1 &
  pids+=($!)
  wait_http "http://127.0.0.1:$port/health"
}

put_json_value() { # port key bytes [auth]
  local value; value=$(head -c $(($3 - 2)) /dev/zero | tr '\0' 'x')
  curl -sf -X PUT "http://127.0.0.1:$1/api/cache/$2" -H 'Content-Type: application/json' ${4:+-H "Authorization: Bearer $4"} \
    -d "{\"value\":\"$value\",\"ttl\":86400}" >/dev/null
}

echo "mode $MODE: $ROUNDS round(s) of ${DUR}s, wrk -t1 -c$CONNS, pinned=$PINNED (server cores $SERVER_CPUS, client cores $CLIENT_CPUS)" >&2

# --- 1 and 2: L1 hit against the ceiling, then open-loop latency ---------------------------
BIND=127.0.0.1:$P_BASE SIZES=100,1024 "${ON_SERVER[@]}" target/release/examples/bare_baseline >"$STATE/baseline.log" 2>&1 &
base_pid=$!; pids+=($base_pid)
start_tiercache $P_TC tiercache; tc_pid=${pids[-1]}
start_tiercache $P_AUTH tiercache-auth TIERCACHE__AUTH__TOKENS="$TOKEN"; auth_pid=${pids[-1]}
wait_http "http://127.0.0.1:$P_BASE/api/cache/b100"
for size in 100 1024; do put_json_value $P_TC "b$size" $size; put_json_value $P_AUTH "b$size" $size $TOKEN; done
cat >"$STATE/auth.lua" <<LUA
wrk.headers["Authorization"] = "Bearer $TOKEN"
LUA
for round in $(seq "$ROUNDS"); do
  echo "round $round/$ROUNDS: L1 hit" >&2
  for size in 100 1024; do
    wrk_run hit "base$size" $base_pid "http://127.0.0.1:$P_BASE/api/cache/b$size"
    wrk_run hit "tc$size" $tc_pid "http://127.0.0.1:$P_TC/api/cache/b$size"
    wrk_run hit "auth$size" $auth_pid "http://127.0.0.1:$P_AUTH/api/cache/b$size" -s "$STATE/auth.lua"
  done
done
RATE=$(awk -v r="$(med hit base100.rps)" 'BEGIN {printf "%d", r / 2}')
for round in $(seq "$ROUNDS"); do
  echo "round $round/$ROUNDS: open loop at $RATE req/s" >&2
  for target in base:$P_BASE tc:$P_TC; do
    out=$("${ON_CLIENT[@]}" target/release/examples/openloop "http://127.0.0.1:${target#*:}/api/cache/b100" "$RATE" "$OPEN_SECS" "$CONNS")
    for field in p50_ms p99_ms p999_ms achieved_rps errors; do
      record open "${target%%:*}.$field" "$(echo "$out" | python3 -c "import json, sys; print(json.load(sys.stdin)['$field'])")"
    done
  done
done
kill $base_pid $tc_pid $auth_pid 2>/dev/null || true
# The machine's own floor for tail latency: how often the server core is taken away from a
# process that never sleeps (hypervisor steal, host noise), and for how long.
stalls=$("${ON_SERVER[@]}" python3 - "$OPEN_SECS" <<'PY'
import sys, time
end = time.perf_counter() + float(sys.argv[1])
last = time.perf_counter(); gaps = 0; worst = 0.0
while last < end:
    now = time.perf_counter()
    gap = now - last
    if gap >= 0.001:
        gaps += 1
    worst = max(worst, gap)
    last = now
print(f"{gaps / float(sys.argv[1]):.1f} {worst * 1000:.2f}")
PY
)
record open stalls_per_s "${stalls% *}"
record open stall_max_ms "${stalls#* }"

# --- 3: L2-hit GET against webdis; PUT against that GET -----------------------------------
"${ON_SERVER[@]}" redis-server --port $P_REDIS --bind 127.0.0.1 --save "" --appendonly no --dir "$STATE" >/dev/null &
redis_pid=$!; pids+=($redis_pid)
for _ in $(seq 100); do redis-cli -p $P_REDIS ping >/dev/null 2>&1 && break; sleep 0.05; done
cat >"$STATE/webdis.json" <<JSON
{"redis_host": "127.0.0.1", "redis_port": $P_REDIS, "redis_auth": null, "http_host": "127.0.0.1",
 "http_port": $P_WEBDIS, "threads": 1, "pool_size": 8, "daemonize": false, "websockets": false,
 "database": 0, "verbosity": 1, "logfile": "$STATE/webdis.log"}
JSON
"${ON_SERVER[@]}" webdis "$STATE/webdis.json" &
webdis_pid=$!; pids+=($webdis_pid)
# L1 of one entry: every read of a random key among $KEYS goes to Redis.
start_tiercache $P_L2 tiercache-l2 REDIS_URL=redis://127.0.0.1:$P_REDIS TIERCACHE__L1__MAX_ENTRIES=1; l2_pid=${pids[-1]}
wait_http "http://127.0.0.1:$P_WEBDIS/PING"
value98=$(head -c 98 /dev/zero | tr '\0' 'x')
python3 - "$KEYS" "$value98" >"$STATE/batch_set.json" <<'PY'
import json, sys
n, value = int(sys.argv[1]), sys.argv[2]
print(json.dumps({"entries": [{"key": f"key:{i}", "value": value, "ttl": 86400} for i in range(n)]}))
PY
curl -sf -X POST "http://127.0.0.1:$P_L2/api/cache/batch/set" -H 'Content-Type: application/json' --data-binary @"$STATE/batch_set.json" >/dev/null
redis-cli -p $P_REDIS eval "for i=0,$((KEYS - 1)) do redis.call('SET','w:'..i,'\"'..string.rep('x',98)..'\"') end" 0 >/dev/null
cat >"$STATE/l2_get.lua" <<LUA
request = function() return wrk.format("GET", "/api/cache/key:" .. math.random(0, $((KEYS - 1)))) end
LUA
cat >"$STATE/webdis_get.lua" <<LUA
request = function() return wrk.format("GET", "/GET/w:" .. math.random(0, $((KEYS - 1))) .. ".txt") end
LUA
cat >"$STATE/put.lua" <<LUA
local body = '{"value":"$value98","ttl":86400}'
request = function()
  return wrk.format("PUT", "/api/cache/key:" .. math.random(0, $((KEYS - 1))), {["Content-Type"] = "application/json"}, body)
end
LUA
for round in $(seq "$ROUNDS"); do
  echo "round $round/$ROUNDS: L2 hit, webdis, PUT" >&2
  wrk_run l2 webdis $webdis_pid "http://127.0.0.1:$P_WEBDIS" -s "$STATE/webdis_get.lua"
  wrk_run l2 get $l2_pid "http://127.0.0.1:$P_L2" -s "$STATE/l2_get.lua"
  wrk_run l2 put $l2_pid "http://127.0.0.1:$P_L2" -s "$STATE/put.lua"
done
hits_from_l2=$(curl -sf "http://127.0.0.1:$P_L2/api/cache/metrics" | python3 -c "import json, sys; print(json.load(sys.stdin)['l2_hits'])")
[ "$hits_from_l2" -gt 0 ] || { echo "the L2 scenario never read L2" >&2; exit 1; }
kill $webdis_pid $l2_pid 2>/dev/null || true

# --- 4: batch/get of 100 L1-resident keys against pipelined Redis --------------------------
start_tiercache $P_TC tiercache-batch; batch_pid=${pids[-1]}
curl -sf -X POST "http://127.0.0.1:$P_TC/api/cache/batch/set" -H 'Content-Type: application/json' --data-binary @"$STATE/batch_set.json" >/dev/null
python3 -c 'import json; print(json.dumps({"keys": [f"key:{i}" for i in range(100)]}))' >"$STATE/batch_get.json"
cat >"$STATE/batch_get.lua" <<LUA
local f = io.open("$STATE/batch_get.json"); local body = f:read("*a"); f:close()
request = function() return wrk.format("POST", "/api/cache/batch/get", {["Content-Type"] = "application/json"}, body) end
LUA
found=$(curl -sf -X POST "http://127.0.0.1:$P_TC/api/cache/batch/get" -H 'Content-Type: application/json' --data-binary @"$STATE/batch_get.json" |
  python3 -c "import json, sys; print(len(json.load(sys.stdin)['entries']))")
[ "$found" = 100 ] || { echo "batch/get found $found of 100 keys" >&2; exit 1; }
for round in $(seq "$ROUNDS"); do
  echo "round $round/$ROUNDS: batch/get, redis-benchmark -P16" >&2
  CONNS=16 wrk_run batch tc $batch_pid "http://127.0.0.1:$P_TC" -s "$STATE/batch_get.lua"
  # CSV columns: test, rps, ...; keys per second = commands per second.
  rb=$("${ON_CLIENT[@]}" redis-benchmark -p $P_REDIS -t get -c 16 -P 16 -r $KEYS -d 100 -n $((DUR * 400000)) --csv | awk -F'"' '$2 == "GET" {print $4}')
  record batch redis.keys "$rb"
done
kill $batch_pid 2>/dev/null || true

# --- 5: memory per entry ---------------------------------------------------------------------
echo "memory: $MEM_ENTRIES entries" >&2
"${ON_SERVER[@]}" redis-server --port $P_MEMREDIS --bind 127.0.0.1 --save "" --appendonly no --dir "$STATE" >/dev/null &
pids+=($!)
for _ in $(seq 100); do redis-cli -p $P_MEMREDIS ping >/dev/null 2>&1 && break; sleep 0.05; done
start_tiercache $P_MEM tiercache-mem TIERCACHE__L1__MAX_ENTRIES=$((MEM_ENTRIES * 2)) TIERCACHE__L1__MAX_BYTES=$((8 << 30))
mem_pid=${pids[-1]}
python3 bench/memory.py "http://127.0.0.1:$P_MEM" $mem_pid $P_MEMREDIS "$MEM_ENTRIES" >"$STATE/memory.txt"
record memory tc "$(awk '$1 == "tiercache_rss_per_entry" {print $2}' "$STATE/memory.txt")"
record memory redis "$(awk '$1 == "redis_used_memory_per_key" {print $2}' "$STATE/memory.txt")"
kill $mem_pid 2>/dev/null || true

# --- 6: start-up -------------------------------------------------------------------------------
echo "start-up: 20 starts" >&2
startup=$(target/release/examples/startup_bench target/release/tiercache 20 $P_START)
record startup median "$(echo "$startup" | sed -E 's/.*median ([0-9.]+) ms.*/\1/')"

# --- the table -----------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "–"}'; }
# verdict VALUE OP LIMIT: "yes" or "no".
verdict() { awk -v v="$1" -v l="$3" -v op="$2" 'BEGIN {ok = (op == ">=") ? v >= l : v <= l; print ok ? "yes" : "**no**"}'; }
row() { # what measured baseline ratio target met
  printf '| %s | %s | %s | %s | %s | %s |\n' "$@"
}
{
  echo "| target | tiercache (median, spread) | baseline, same run (median) | ratio | target | met |"
  echo "|---|---|---|---|---|---|"
  for size in 100 1024; do
    label=$([ $size = 100 ] && echo "100 B" || echo "1 KiB")
    t=$(med hit tc$size.rps); b=$(med hit base$size.rps); r=$(ratio "$t" "$b")
    row "1 L1 hit GET $label, req/s" "$t ($(spread hit tc$size.rps))" "$b bare axum" "$r" "≥ 0.90 (never < 0.80)" "$(verdict "$r" ">=" 0.90)"
    t=$(med hit tc$size.cpu); b=$(med hit base$size.cpu); r=$(ratio "$t" "$b")
    row "1 server CPU per hit $label, µs" "$t ($(spread hit tc$size.cpu))" "$b" "$r" "≤ 1.15" "$(verdict "$r" "<=" 1.15)"
    t=$(med hit tc$size.p99); b=$(med hit base$size.p99)
    row "1 p99 at c$CONNS $label, ms" "$t ($(spread hit tc$size.p99))" "$b" "–" "≤ 2 ms" "$(verdict "$t" "<=" 2)"
    t=$(med hit auth$size.rps); b=$(med hit base$size.rps); r=$(ratio "$t" "$b")
    row "1 L1 hit with auth on $label, req/s" "$t ($(spread hit auth$size.rps))" "$b" "$r" "≥ 0.85" "$(verdict "$r" ">=" 0.85)"
  done
  t=$(med open tc.p99_ms); b=$(med open base.p99_ms)
  row "2 open loop at $RATE req/s (half the ceiling), p99 ms" "$t ($(spread open tc.p99_ms))" "$b" "–" "≤ 2 ms" "$(verdict "$t" "<=" 2)"
  t=$(med open tc.p999_ms); b=$(med open base.p999_ms)
  row "2 open loop p99.9 ms" "$t ($(spread open tc.p999_ms))" "$b" "–" "≤ 5 ms" "$(verdict "$t" "<=" 5)"
  row "2 server core stalls ≥ 1 ms (spin probe), per s / longest ms" "$(med open stalls_per_s) / $(med open stall_max_ms)" "–" "–" "(the machine's floor)" "–"
  t=$(med l2 get.rps); b=$(med l2 webdis.rps); r=$(ratio "$t" "$b")
  row "3 L2-hit GET, req/s" "$t ($(spread l2 get.rps))" "$b webdis" "$r" "≥ 1.2" "$(verdict "$r" ">=" 1.2)"
  t=$(med l2 put.rps); b=$(med l2 get.rps); r=$(ratio "$t" "$b")
  row "3 PUT with write-through, req/s" "$t ($(spread l2 put.rps))" "$b L2-hit GET" "$r" "≥ 0.8" "$(verdict "$r" ">=" 0.8)"
  t=$(med l2 put.cpu); b=$(med l2 get.cpu); r=$(ratio "$t" "$b")
  row "3 tiercache CPU per PUT vs per L2-hit GET, µs" "$t" "$b" "$r" "(explains the PUT ratio)" "–"
  t=$(awk -v r="$(med batch tc.rps)" 'BEGIN {printf "%.0f", r * 100}'); b=$(med batch redis.keys); r=$(ratio "$t" "$b")
  row "4 batch/get of 100 L1 keys (c16), keys/s" "$t" "$b redis-benchmark GET -P16" "$r" "≥ 500k keys/s" "$(verdict "$t" ">=" 500000)"
  t=$(med memory tc); b=$(med memory redis); r=$(ratio "$t" "$b")
  row "5 memory, $MEM_ENTRIES × 100 B, bytes per entry" "$t RSS" "$b Redis used_memory" "$r" "≤ 1.0" "$(verdict "$r" "<=" 1.0)"
  t=$(med startup median)
  row "7 start-up, exec → /ready, median of 20, ms" "$t" "–" "–" "≤ 50 ms" "$(verdict "$t" "<=" 50)"
} >"$STATE/table.md"

# Every cell must hold a figure: an empty one means a scenario silently failed.
if awk -F'|' 'NR > 2 && $3 !~ /^ [0-9]/ {bad = 1} END {exit !bad}' "$STATE/table.md"; then
  cat "$STATE/table.md"; echo "a scenario yielded no figure (raw: $STATE/raw.tsv)" >&2; exit 1
fi

if [ "$CRITERION" = 1 ]; then
  cleanup; pids=()
  echo "criterion engine benches" >&2
  cargo bench --quiet --bench engine -- --warm-up-time 1 --measurement-time 3 2>/dev/null |
    awk '/^[a-z0-9_]+\/[^ ]+/ {name = $1} /time:/ {sub(/.*time: +\[/, ""); split($0, t, " "); if (t[4] ~ /^(ps|ns|µs|us|ms|s)$/) print "| `" name "` | " t[3] " " t[4] " |"}' >"$STATE/criterion.md"
  { echo; echo "| engine benchmark (criterion) | median |"; echo "|---|---|"; cat "$STATE/criterion.md"; } >>"$STATE/table.md"
fi

cat "$STATE/table.md"
