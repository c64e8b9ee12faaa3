#!/usr/bin/env bash
# Do what CI does, from scratch: clone the committed HEAD into a new temporary
# directory (no target/, no untracked files), lay a read-only copy of ../shared beside
# it as CI does, and run `bash .ci/run` there with CI=true and no standard input.
#
#   tools/ci-fresh.sh            # keeps the clone only if the run fails
#   KEEP=1 tools/ci-fresh.sh     # keeps it either way
#
# Uncommitted changes are not in the clone: commit first. Exits with .ci/run's status.
set -euo pipefail
top=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
if [ -n "$(git -C "$top" status --porcelain --untracked-files=no)" ]; then
  echo "ci-fresh: uncommitted changes are not tested (only HEAD is cloned)" >&2
fi
work=$(mktemp -d /tmp/stasis-ci-fresh.XXXXXX)
git clone -q --no-local "$top" "$work/main"
if [ -d "$top/../shared" ]; then
  cp -r "$top/../shared" "$work/shared"
  chmod -R a-w "$work/shared"
fi
head=$(git -C "$work/main" rev-parse --short HEAD)
echo "ci-fresh: running .ci/run on $head in $work/main" >&2
start=$(date +%s)
set +e
(cd "$work/main" && CI=true bash .ci/run </dev/null)
rc=$?
set -e
echo "ci-fresh: .ci/run on $head exited $rc after $(($(date +%s) - start)) s" >&2
if [ "$rc" -eq 0 ] && [ -z "${KEEP:-}" ]; then
  chmod -R u+w "$work"
  rm -rf "$work"
else
  echo "ci-fresh: the clone is kept at $work" >&2
fi
exit "$rc"
