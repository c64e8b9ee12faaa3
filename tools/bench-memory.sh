#!/usr/bin/env bash
# Guest memory files: stasis at several memory block sizes against zstd -1, in one run.
#
# usage: tools/bench-memory.sh MEMDIR [STASIS_BIN]
# MEMDIR holds guestA-t1.mem, guestA-t2.mem and guestB.mem (tools/corpus-memory.sh).
# For each block size: stasis stores A-t1, A-t2 (child of A-t1) and B (a sibling VM);
# reported: repository bytes and the total ingest time, next to zstd -1 of each file
# (bytes) and zstd -1 -T0 on the three (time). Files are read into page cache first.
set -euo pipefail
MEM=${1:?usage: $0 MEMDIR [STASIS_BIN]}
STASIS=${2:-$(cd "$(dirname "$0")/.." && pwd)/target/release/stasis}
SIZES=${SIZES:-4KiB 16KiB 64KiB}
files=("$MEM/guestA-t1.mem" "$MEM/guestA-t2.mem" "$MEM/guestB.mem")
work=$(mktemp -d "${TMPDIR:-/var/tmp}/stasis-mem.XXXXXX")
trap 'rm -rf "$work"' EXIT
now() { date +%s.%N; }
cat "${files[@]}" > /dev/null

t0=$(now); zstd -q -1 -T0 -c "${files[@]}" > /dev/null; t1=$(now)
zstd_t=$(echo "$t1 - $t0" | bc)
zstd_bytes=0
for f in "${files[@]}"; do
  zstd_bytes=$((zstd_bytes + $(zstd -q -1 -T0 -c "$f" | wc -c)))
done
echo "| what | bytes | × zstd -1 per file | time s | × zstd -1 -T0 |"
echo "|---|---:|---:|---:|---:|"
echo "| zstd -1 of each file | $zstd_bytes | 1.00 | $zstd_t | 1.00 |"
for bs in $SIZES; do
  repo=$work/repo-$bs
  "$STASIS" --repo "$repo" init --block-size "memory=$bs" > /dev/null
  t0=$(now)
  "$STASIS" --repo "$repo" create vma t1 --memory "mem=${files[0]}" > /dev/null
  "$STASIS" --repo "$repo" create vma t2 --memory "mem=${files[1]}" > /dev/null
  "$STASIS" --repo "$repo" create vmb b --memory "mem=${files[2]}" > /dev/null
  t1=$(now)
  t=$(echo "$t1 - $t0" | bc)
  bytes=$(du -sb "$repo/store" | cut -f1)
  printf '| stasis, memory blocks %s | %s | %.3f | %.2f | %.2f |\n' "$bs" "$bytes" \
    "$(echo "$bytes / $zstd_bytes" | bc -l)" "$t" "$(echo "$t / $zstd_t" | bc -l)"
  "$STASIS" --repo "$repo" restore vmb "$work/out-$bs" > /dev/null
  cmp "$work/out-$bs/mem" "${files[2]}"
done
echo
echo "(restores of guestB compared byte for byte with cmp: ok)"
