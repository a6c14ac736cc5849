#!/usr/bin/env bash
# The long chaos run (issue 8): the schedule of tests/it/chaos.rs (Redis blackholed 5 s, Redis
# SIGKILLed and restarted, +200 ms to Redis, one instance SIGTERMed and restarted from its
# snapshot, the origin failing half its requests, calm periods between) repeated for N minutes
# under a 200 req/s mixed load, then settle and the consistency check. Release build.
#
#   bash bench/chaos.sh --minutes 10
#
# The report (the figures of RELIABILITY.md) is printed and written to target/chaos/. Exits
# non-zero when a check fails. CHAOS_ENV=NAME=VALUE,… adds settings to both instances.
# Every process the run starts (redis-server, two tiercache, the origin and proxy in the test
# process) is stopped by the test; traffic goes to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=10
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes=${2:?--minutes needs a number}; shift 2 ;;
    *) echo "usage: bash bench/chaos.sh [--minutes N]" >&2; exit 2 ;;
  esac
done
command -v redis-server >/dev/null || { echo "redis-server is needed (scripts/test.sh installs it)" >&2; exit 1; }
mkdir -p target/chaos
report="$PWD/target/chaos/report-$(date -u +%Y%m%dT%H%M%SZ).md"
echo "chaos: $minutes minutes; report: $report"
CHAOS_MINUTES="$minutes" CHAOS_REPORT="$report" \
  cargo test --release --locked --test it chaos::long -- --ignored --exact --nocapture
