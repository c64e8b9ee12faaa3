#!/usr/bin/env bash
# Reads through FUSE mounts of one 2 GiB disk image, measured in one run: `stasis mount`
# against `restic mount`, `borg mount` and the FUSE ceiling (crates/stasis-fuse/examples/
# nullfs.rs: a file served from memory, mounted with stasis's exact options and tuning)
# and the decoding floor (examples/decodefs.rs: the image served through the same mount
# from zstd frames and blake3 ids in memory, only decoding and checking).
#
# usage: tools/bench-mount.sh [IMAGE]     (default /work/corpus/disk/child1.ext4)
#
# Per tool and round (rounds interleave the tools, in a rotating order):
#   seq   cold sequential read of the whole image: fresh mount, then `sync; echo 3 >
#         /proc/sys/vm/drop_caches`, then read(2) in 1 MiB calls (readbench seq)
#   rand  COUNT timed 4 KiB preads at random offsets inside the image's data, one per
#         distinct 4 MiB region (readbench rand, seed = round): cold (fresh mount, caches
#         dropped) then warm (the same offsets again at once); every block read is
#         compared with the image
# A fresh mount per cold pass also empties each tool's own in-process caches (stasis's
# block cache, restic's and borg's chunk caches). Each tool's file is compared with the
# image once (cmp) before any timing. Reported: medians over the rounds, and per-round
# ratios against `stasis` (default tuning), median over the rounds.
#
# Needs root (drop_caches, FUSE mounts). Environment:
#   ROUNDS (3), COUNT (200), BENCH_TMP (parent of the work dir; default target/ of this
#   checkout), KEEP=1 (keep repositories), TOOLS (space-separated, default
#   "stasis restic borg-fixed4M borg-default nullfs decodefs disk"; a tool written
#   NAME@TUNING runs stasis, nullfs or decodefs with STASIS_FUSE_TUNING=TUNING, e.g.
#   stasis@threads=4;
#   "disk" is the image read straight from the local disk, for reference; "stasis-alt"
#   is another build of stasis, STASIS_ALT=PATH, on the same repository, e.g. to compare
#   against an earlier commit).
# Settings: restic repository v2, --compression auto (it always encrypts); borg
# --encryption none, lz4 (its default), fixed 4 MiB chunks (borg's advice for images) and
# its default chunker; stasis defaults (64 KiB blocks, zstd 1).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
IMG=${1:-/work/corpus/disk/child1.ext4}
[[ -f $IMG ]] || { echo "bench-mount: $IMG missing" >&2; exit 1; }
IMG=$(cd "$(dirname "$IMG")" && pwd)/$(basename "$IMG")
ROUNDS=${ROUNDS:-3}
COUNT=${COUNT:-200}
TOOLS=${TOOLS:-stasis restic borg-fixed4M borg-default nullfs decodefs disk}
export LC_ALL=C
log() { printf '[bench-mount %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }
[[ $(id -u) == 0 ]] || die "needs root (drop_caches, FUSE mounts)"
for t in restic borg python3 cmp; do command -v "$t" >/dev/null || die "$t missing"; done

log "building stasis, nullfs, decodefs, readbench (release)"
(cd "$ROOT" && cargo build -q --release --bin stasis -p stasis \
  && cargo build -q --release -p stasis-fuse --example nullfs --example decodefs --example readbench)
STASIS=$ROOT/target/release/stasis
NULLFS=$ROOT/target/release/examples/nullfs
DECODEFS=$ROOT/target/release/examples/decodefs
READBENCH=$ROOT/target/release/examples/readbench

PARENT=${BENCH_TMP:-$ROOT/target}
mkdir -p "$PARENT"
WORK=$(mktemp -d "$PARENT/bench-mount.XXXXXX")
MNT=$WORK/mnt
mkdir -p "$MNT"
RES=$WORK/results.tsv
: >"$RES"
MPID=
cleanup() {
  if mountpoint -q "$MNT"; then umount -l "$MNT" || true; fi
  if [[ -n $MPID ]]; then kill "$MPID" 2>/dev/null || true; fi
  if [[ ${KEEP:-0} == 1 ]]; then log "keeping $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# ---------------------------------------------------------------- repositories
export RESTIC_PASSWORD=stasis-bench RESTIC_CACHE_DIR=$WORK/restic.cache
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
export BORG_BASE_DIR=$WORK/borg.home
base() { local b=${1%%@*}; echo "${b%-alt}"; }
tuning() { if [[ $1 == *@* ]]; then echo "${1#*@}"; fi; }
declare -A made
for t in $TOOLS; do
  b=$(base "$t")
  [[ -n ${made[$b]:-} ]] && continue
  made[$b]=1
  case $b in
    stasis)
      log "stasis: ingest"
      "$STASIS" --repo "$WORK/stasis" init >/dev/null
      "$STASIS" --repo "$WORK/stasis" create vm img --disk "root=$IMG" >/dev/null ;;
    restic)
      log "restic: ingest"
      restic -q -r "$WORK/restic" init --repository-version 2 >/dev/null
      restic -q -r "$WORK/restic" backup --compression auto --host bench "$IMG" >/dev/null ;;
    borg-fixed4M | borg-default)
      log "$b: ingest"
      params=()
      # shellcheck disable=SC2054 # the comma belongs to borg's value
      [[ $b == borg-fixed4M ]] && params=(--chunker-params fixed,4194304)
      borg init --encryption none "$WORK/$b" >/dev/null
      (cd "$(dirname "$IMG")" && borg create "${params[@]}" "$WORK/$b::img" "$(basename "$IMG")") ;;
    nullfs | decodefs | disk) ;;
    *) die "unknown tool $t" ;;
  esac
done

# ---------------------------------------------------------------- mounts
# mount_tool TOOL: mount it at $MNT (its pid in MPID); FILE is the image in the mount.
# (Not called as $(...): the server would inherit the substitution's pipe.)
mount_tool() {
  local t=$1 b f i bin
  b=$(base "$t")
  case $b in
    disk) FILE=$IMG; return ;;
    stasis)
      bin=$STASIS
      if [[ ${t%%@*} == stasis-alt ]]; then bin=${STASIS_ALT:?stasis-alt needs STASIS_ALT}; fi
      STASIS_LOG=stasis_fuse=info STASIS_FUSE_TUNING=$(tuning "$t") "$bin" --repo "$WORK/stasis" mount "$MNT" \
        2>>"$WORK/mount.log" &
      f=$MNT/vms/vm/img/root ;;
    nullfs)
      STASIS_FUSE_TUNING=$(tuning "$t") "$NULLFS" "$MNT" "$(stat -c %s "$IMG")" \
        2>>"$WORK/mount.log" &
      f=$MNT/file ;;
    decodefs)
      STASIS_FUSE_TUNING=$(tuning "$t") "$DECODEFS" "$MNT" "$IMG" 2>>"$WORK/mount.log" &
      f=$MNT/file ;;
    restic)
      restic -r "$WORK/restic" mount "$MNT" >>"$WORK/mount.log" 2>&1 &
      f=$MNT/snapshots/latest$IMG ;;
    borg-*)
      borg mount -f "$WORK/$b::img" "$MNT" >>"$WORK/mount.log" 2>&1 &
      f=$MNT/$(basename "$IMG") ;;
  esac
  MPID=$!
  for ((i = 0; i < 1200; i++)); do
    [[ -e $f ]] && { FILE=$f; return; }
    kill -0 "$MPID" 2>/dev/null || { tail "$WORK/mount.log" >&2; die "$t: mount exited"; }
    sleep 0.1
  done
  die "$t: $f did not appear within 120 s"
}

umount_tool() {
  [[ $1 == disk ]] && return
  umount "$MNT" || { sleep 1; umount "$MNT"; }
  wait "$MPID" || true
  MPID=
}

put() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RES"; }

for t in $TOOLS; do
  [[ $t == nullfs* || $t == disk ]] && continue
  log "$t: checking its file against the image (cmp)"
  mount_tool "$t"
  cmp "$FILE" "$IMG" || die "$t serves different bytes"
  umount_tool "$t"
done

# ---------------------------------------------------------------- rounds
read -r -a order <<<"$TOOLS"
for ((r = 1; r <= ROUNDS; r++)); do
  for t in "${order[@]}"; do
    mount_tool "$t"
    drop_caches
    out=$("$READBENCH" seq "$FILE")
    umount_tool "$t"
    secs=${out##*secs=}
    put "$r" "$t" seq_s "$secs"

    mount_tool "$t"
    drop_caches
    nv=()
    [[ $t == nullfs* ]] && nv=(noverify)  # the ceiling serves a pattern, not the image
    cold=$("$READBENCH" rand "$FILE" "$IMG" "$COUNT" "$r" "${nv[@]}")
    warm=$("$READBENCH" rand "$FILE" "$IMG" "$COUNT" "$r" "${nv[@]}")
    umount_tool "$t"
    for k in p50_us p99_us; do
      put "$r" "$t" "cold_$k" "$(grep -o "$k=[0-9.]*" <<<"$cold" | cut -d= -f2)"
      put "$r" "$t" "warm_$k" "$(grep -o "$k=[0-9.]*" <<<"$warm" | cut -d= -f2)"
    done
    log "round $r $t: seq ${secs}s; cold: ${cold#rand }; warm: ${warm#rand }"
  done
  order=("${order[@]:1}" "${order[0]}")  # rotate, so no tool always goes first
done

log "read requests the kernel sent, by size (one line per mount and pass kind):"
grep -ho "[a-z-]*: Tuning.*read requests by size: .*" "$WORK/mount.log" | sort | uniq -c >&2 || true

# ---------------------------------------------------------------- table
python3 - "$RES" "$(stat -c %s "$IMG")" "$IMG" "$ROUNDS" "$COUNT" <<'PY'
import collections, statistics, sys
path, size, img, rounds, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
v = collections.defaultdict(dict)   # (tool, metric) -> {round: value}
tools = []
for line in open(path):
    r, t, m, x = line.rstrip("\n").split("\t")
    v[(t, m)][r] = float(x)
    if t not in tools:
        tools.append(t)
ref = "stasis" if "stasis" in tools else tools[0]
med = lambda d: statistics.median(d.values())
def ratio(t, m):
    # per-round ref/tool, then the median: < 1 means the reference takes less time
    rs = [v[(ref, m)][r] / v[(t, m)][r] for r in v[(t, m)] if r in v[(ref, m)] and v[(t, m)][r] > 0]
    return statistics.median(rs) if rs else float("nan")
print(f"\nImage {img} ({size / 2**30:.2f} GiB), {rounds} rounds, {count} random reads per pass; "
      "medians over rounds.\n")
print("| tool | cold seq read | GB/s | cold 4K p50 / p99 | warm 4K p50 / p99 |")
print("|---|---:|---:|---:|---:|")
for t in tools:
    s = med(v[(t, "seq_s")])
    print(f"| {t} | {s:.2f} s | {size / s / 1e9:.2f} | {med(v[(t, 'cold_p50_us')]):.0f} / "
          f"{med(v[(t, 'cold_p99_us')]):.0f} µs | {med(v[(t, 'warm_p50_us')]):.1f} / "
          f"{med(v[(t, 'warm_p99_us')]):.1f} µs |")
print(f"\nRatios: {ref}'s time ÷ the tool's (median of per-round ratios; below 1 means "
      f"{ref} is faster).\n")
print(f"| {ref} vs | cold seq | cold p50 | cold p99 | warm p50 | warm p99 |")
print("|---|---:|---:|---:|---:|---:|")
for t in tools:
    if t == ref:
        continue
    cells = [ratio(t, m) for m in ("seq_s", "cold_p50_us", "cold_p99_us", "warm_p50_us", "warm_p99_us")]
    print(f"| {t} | " + " | ".join(f"{c:.2f}×" for c in cells) + " |")
PY
