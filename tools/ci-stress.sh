#!/usr/bin/env bash
# Run the whole suite ROUNDS times in a row (default 3) with --no-fail-fast while
# `stress-ng --cpu 2` loads both cores, to show that no test depends on timing or an
# idle machine. It runs in a clean clone of the committed HEAD (edits in the working
# tree cannot break a round halfway), with the test command of .ci/run. Prints each
# round's time and result; exits non-zero if any round failed.
#
#   tools/ci-stress.sh [ROUNDS]
set -euo pipefail
rounds=${1:-3}
command -v stress-ng >/dev/null || { echo "ci-stress: install stress-ng (apt-get install stress-ng)" >&2; exit 1; }
top=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
work=$(mktemp -d /tmp/stasis-ci-stress.XXXXXX)
git clone -q --no-local "$top" "$work/main"
cd "$work/main"
echo "ci-stress: $rounds rounds on $(git rev-parse --short HEAD) in $work/main" >&2
# The suite's command as .ci/run runs it, with --no-fail-fast so a round reports every
# failure.
line=$(grep -E '^cargo test ' .ci/run | tail -1)
[ -n "$line" ] || { echo "ci-stress: no 'cargo test' line in .ci/run" >&2; exit 1; }
read -r -a suite <<<"$line --no-fail-fast"
"${suite[@]}" --no-run -q
stress-ng --cpu 2 --timeout 3h --quiet &
load=$!
trap 'kill "$load" 2>/dev/null || true; wait "$load" 2>/dev/null || true' EXIT
failed=0
for i in $(seq 1 "$rounds"); do
  log=$work/round$i.log
  start=$(date +%s)
  if "${suite[@]}" >"$log" 2>&1; then rc=0; else rc=$?; fi
  passed=$( (grep -Eo '^test result: [a-zA-Z]+\. [0-9]+ passed' "$log" || true) | awk '{ s += $4 } END { print s + 0 }')
  bad=$( (grep -Eo '; [0-9]+ failed' "$log" || true) | awk '{ s += $2 } END { print s + 0 }')
  echo "ci-stress: round $i: exit $rc, $passed passed, $bad failed, $(($(date +%s) - start)) s (log $log)"
  [ "$rc" -eq 0 ] || failed=1
done
exit "$failed"
