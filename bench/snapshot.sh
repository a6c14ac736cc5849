#!/usr/bin/env bash
# Snapshot write and restore of tiercache against Redis SAVE and an RDB load, same data set,
# same run: ENTRIES keys with 100-byte values, ROUNDS rounds each, medians (see
# examples/snapshot_bench.rs for what is timed and how memory is read). Servers pinned to
# core 0, the driver to core 1. Everything started is stopped. Loopback only.
#
#   ENTRIES=1000000 ROUNDS=3 bash bench/snapshot.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ENTRIES=${ENTRIES:-1000000}
ROUNDS=${ROUNDS:-3}
STATE=${STATE:-/tmp/tiercache-bench/snapshot}
command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
cargo build --release --quiet --bin tiercache --example snapshot_bench
mkdir -p "$STATE"
taskset -c 1 target/release/examples/snapshot_bench target/release/tiercache "$STATE" "$ENTRIES" "$ROUNDS"
