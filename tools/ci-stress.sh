#!/usr/bin/env bash
# Run the whole suite ROUNDS times in a row (default 3) with --no-fail-fast while
# `stress-ng --cpu 2` loads both cores, to show that no test depends on timing or an
# idle machine. Prints each round's time and result; exits non-zero if any round failed.
#
#   tools/ci-stress.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
command -v stress-ng >/dev/null || { echo "ci-stress: install stress-ng (apt-get install stress-ng)" >&2; exit 1; }
cargo test --workspace --release --no-run -q
stress-ng --cpu 2 --timeout 3h --quiet &
load=$!
trap 'kill "$load" 2>/dev/null || true; wait "$load" 2>/dev/null || true' EXIT
failed=0
for i in $(seq 1 "$rounds"); do
  log=$(mktemp /tmp/stasis-stress.XXXXXX.log)
  start=$(date +%s)
  if cargo test --workspace --release --no-fail-fast >"$log" 2>&1; then rc=0; else rc=$?; fi
  passed=$(grep -Eo '^test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | awk '{ s += $4 } END { print s + 0 }')
  bad=$(grep -Eo '[0-9]+ failed' "$log" | awk '{ s += $1 } END { print s + 0 }')
  echo "ci-stress: round $i: exit $rc, $passed passed, $bad failed, $(($(date +%s) - start)) s (log $log)"
  [ "$rc" -eq 0 ] || failed=1
done
exit "$failed"
