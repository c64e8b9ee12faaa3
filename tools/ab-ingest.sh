#!/usr/bin/env bash
# A/B two stasis builds on ingest time: fresh repository each round, the two builds
# alternating in ABBA order (A B, B A, A B, ...) so neither always runs second.
#
# usage: tools/ab-ingest.sh BUILD_A BUILD_B [CORPUS]
# CORPUS is a disk corpus (tools/corpus-disk.sh): base.ext4, child1.ext4, child2.ext4.
# IMAGE=base|child1|child2 (default base): the ancestors of a child are stored first,
# untimed, and the child is created with its parent, as tools/peers.sh does.
# ROUNDS (default 10). Prints each build's times and their median.
set -euo pipefail
A=${1:?usage: $0 BUILD_A BUILD_B [CORPUS]}
B=${2:?usage: $0 BUILD_A BUILD_B [CORPUS]}
CORPUS=${3:-/work/corpus/disk}
IMAGE=${IMAGE:-base}
ROUNDS=${ROUNDS:-10}
work=$(mktemp -d "${TMPDIR:-/var/tmp}/stasis-ab.XXXXXX")
trap 'rm -rf "$work"' EXIT
case $IMAGE in
  base) chain=() ;;
  child1) chain=(base) ;;
  child2) chain=(base child1) ;;
  *) echo "IMAGE must be base, child1 or child2" >&2; exit 2 ;;
esac

one() {
  local bin=$1 repo=$work/repo parent=""
  rm -rf "$repo"
  "$bin" --repo "$repo" init > /dev/null
  for img in "${chain[@]}"; do
    "$bin" --repo "$repo" create vm "$img" --disk "root=$CORPUS/$img.ext4" ${parent:+--parent "vm/$parent"} > /dev/null
    parent=$img
  done
  cat "$CORPUS/$IMAGE.ext4" > /dev/null
  sync
  sleep 0.3
  local t0 t1
  t0=$(date +%s.%N)
  "$bin" --repo "$repo" create vm "$IMAGE" --disk "root=$CORPUS/$IMAGE.ext4" ${parent:+--parent "vm/$parent"} > /dev/null
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc
}

for r in $(seq "$ROUNDS"); do
  if ((r % 2)); then order="A B"; else order="B A"; fi
  for x in $order; do echo "$x $(one "${!x}")"; done
done | sort -k1,1 -k2n | awk -v img="$IMAGE" '
  { t[$1] = t[$1] " " $2; n[$1]++; v[$1, n[$1]] = $2 }
  END {
    for (k in n) {
      m = (n[k] % 2) ? v[k, (n[k] + 1) / 2] : (v[k, n[k] / 2] + v[k, n[k] / 2 + 1]) / 2
      printf "%s %s: median %.3f s over %d rounds:%s\n", img, k, m, n[k], t[k]
    }
  }' | sort
