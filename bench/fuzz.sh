#!/usr/bin/env bash
# Long fuzzing (issue 8): every `fuzz_` property test — the L2 envelope, the snapshot file, pub/sub
# messages (parsed and applied), warm source splitting and items, HTTP requests (paths, bodies,
# content types through the real router) — with CASES cases each (default 100 000), in a release
# build. The test command runs the same properties with their short counts.
#
#   bash bench/fuzz.sh            # CASES=1000 bash bench/fuzz.sh for a quick look
#
# Prints a table (property, cases, seconds) and writes it to target/fuzz/report.md; exits
# non-zero when a property fails (proptest prints the minimal failing input).
set -euo pipefail
cd "$(dirname "$0")/.."
CASES=${CASES:-100000}
mkdir -p target/fuzz
report=target/fuzz/report.md
cargo test --release --locked --no-run -q 2>/dev/null
{
  echo "Fuzz run: $CASES cases per property, $(date -u +%Y-%m-%dT%H:%MZ), \`bash bench/fuzz.sh\`"
  echo
  echo "| property | cases | seconds |"
  echo "|---|---|---|"
} > "$report"
for target in --lib "--test it"; do
  # shellcheck disable=SC2086 # $target is two words on purpose
  names=$(cargo test --release --locked -q $target -- --list fuzz_ 2>/dev/null | sed -n 's/: test$//p')
  for name in $names; do
    started=$(date +%s%N)
    # shellcheck disable=SC2086
    TIERCACHE_FUZZ_CASES=$CASES cargo test --release --locked -q $target -- --exact "$name" >/dev/null
    tenths=$((($(date +%s%N) - started) / 100000000))
    printf '| `%s` | %s | %d.%d |\n' "$name" "$CASES" $((tenths / 10)) $((tenths % 10)) | tee -a "$report"
  done
done
echo "report: $report"
