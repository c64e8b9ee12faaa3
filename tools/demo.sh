#!/usr/bin/env bash
# The main job end to end on a fresh machine: build stasis, make a real Debian ext4
# image and two descendants changed in place (tools/corpus-disk.sh), snapshot them into
# the embedded default repository (one full, one full with dedup, one as a sparse diff
# layer), restore each, compare byte for byte, verify every block, show the space used.
#
# usage: tools/demo.sh            (needs root for debootstrap and loop mounts)
# Environment: CORPUS (default ~/.cache/stasis-corpus), STASIS_REPO (default: the
# embedded default repository, ~/.local/share/stasis).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CORPUS=${CORPUS:-$HOME/.cache/stasis-corpus}
echo "== building stasis"
cargo build --release --quiet
STASIS=$PWD/target/release/stasis

echo "== building the corpus in $CORPUS (debootstrap + mkfs.ext4 -d; cached)"
tools/corpus-disk.sh "$CORPUS"

run=$(date +%Y%m%d-%H%M%S)
vm=demo-$run
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# The default repository is created on first use; an explicit one may need init.
if [ -n "${STASIS_REPO:-}" ] && [ ! -e "$STASIS_REPO/store/config" ]; then
  "$STASIS" init
fi
echo "== snapshots of VM $vm"
"$STASIS" create "$vm" base   --disk "root=$CORPUS/base.ext4"
"$STASIS" create "$vm" child1 --disk "root=$CORPUS/child1.ext4"
"$STASIS" create "$vm" child2 --parent "$vm/child1" --diff --disk "root=$CORPUS/child2.diff"

echo "== restore and compare"
for pair in base:base.ext4 child1:child1.ext4 child2:child2.ext4; do
  snap=${pair%%:*} want=${pair#*:}
  "$STASIS" restore "$vm/$snap" "$out/$snap"
  cmp "$out/$snap/root" "$CORPUS/$want"
  echo "   $vm/$snap is byte-identical to $want ($(du -h "$out/$snap/root" | cut -f1) allocated of $(du -h --apparent-size "$out/$snap/root" | cut -f1))"
done

echo "== verify every block"
"$STASIS" verify --read-data
echo "== space"
"$STASIS" tree 2>/dev/null || "$STASIS" list --vm "$vm"
"$STASIS" du
echo "demo ok"
