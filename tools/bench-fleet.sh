#!/usr/bin/env bash
# stasis on an object store against stasis on a local directory and restic on the same
# object store, one run, side by side, on a disk corpus made by tools/corpus-disk.sh
# (base.ext4, child1.ext4, child2.ext4, ingested in that order).
#
# usage: tools/bench-fleet.sh CORPUSDIR [STASIS_BIN]
#
# Starts its own Garage (tools/garage.sh; NODES nodes, default 1: replicas of one
# machine's disk would only divide its bandwidth) and measures, per tool:
#   - ingest wall time of each image;
#   - cold restore of child2: page cache dropped, and for stasis-s3 its host cache
#     cleared first (every block comes from Garage), restic with an empty cache dir;
#   - warm restore of child2 (stasis-s3 only: its host cache kept, page cache dropped);
#   - GET requests and bytes fetched by the cold stasis-s3 restore (`stasis cache stats`);
#   - cold sequential read of child2 through each tool's FUSE mount (stasis mount of
#     each repository, restic mount; page cache dropped and the stasis-s3 cache
#     cleared once the mount is up; dd in 1 MiB reads);
#   - bytes in the bucket / repository after the three images.
# Restores are checked with cmp. Prints a markdown table with ratios; stdout only.
set -euo pipefail
CORPUS=$(cd "${1:?usage: $0 CORPUSDIR [STASIS_BIN]}" && pwd)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STASIS=${2:-$HERE/../target/release/stasis}
STASIS=$(cd "$(dirname "$STASIS")" && pwd)/$(basename "$STASIS")
NODES=${NODES:-1}
for f in base child1 child2; do [ -f "$CORPUS/$f.ext4" ] || { echo "no $CORPUS/$f.ext4" >&2; exit 1; }; done
command -v restic >/dev/null || { echo "bench-fleet: install restic" >&2; exit 1; }
[ -x "$STASIS" ] || { echo "bench-fleet: no $STASIS (cargo build --release)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/bench-fleet.XXXXXX)
MNT=$WORK/mnt
MPID=
unmount() {
  if mountpoint -q "$MNT" 2>/dev/null; then fusermount3 -u "$MNT" 2>/dev/null || umount -l "$MNT" || true; fi
  if [ -n "$MPID" ]; then kill "$MPID" 2>/dev/null || true; wait "$MPID" 2>/dev/null || true; MPID=; fi
}
cleanup() { unmount; bash "$HERE/garage.sh" stop "$WORK/garage" >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT
log() { printf '[bench-fleet %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
drop_caches() { sync; if [ -w /proc/sys/vm/drop_caches ]; then echo 3 >/proc/sys/vm/drop_caches; fi; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

log "starting Garage ($NODES node(s))"
while IFS='=' read -r k v; do export "$k=$v"; done < <(bash "$HERE/garage.sh" start "$WORK/garage" "$NODES")
BUCKET=$STASIS_TEST_BUCKET
export RESTIC_PASSWORD=stasis-bench
declare -A T

# stasis: local directory, then the bucket.
for kind in local s3; do
  repo=$WORK/stasis-$kind
  if [ "$kind" = s3 ]; then
    "$STASIS" --repo "$repo" init --store "s3://$BUCKET/stasis" >&2
  else
    "$STASIS" --repo "$repo" init >&2
  fi
  prev=
  for img in base child1 child2; do
    parent=()
    [ -n "$prev" ] && parent=(--parent "vm/$prev")
    drop_caches
    t0=$(now)
    "$STASIS" --repo "$repo" create vm "$img" --disk "root=$CORPUS/$img.ext4" "${parent[@]}" >&2
    T[stasis-$kind.ingest.$img]=$(secs "$t0" "$(now)")
    prev=$img
  done
  [ "$kind" = s3 ] && "$STASIS" --repo "$repo" cache clear >&2
  before=$("$STASIS" --repo "$repo" --json cache stats 2>/dev/null || echo '{}')
  drop_caches
  t0=$(now)
  "$STASIS" --repo "$repo" restore vm/child2 "$WORK/out-$kind-cold" >&2
  T[stasis-$kind.restore.cold]=$(secs "$t0" "$(now)")
  cmp "$WORK/out-$kind-cold/root" "$CORPUS/child2.ext4"
  if [ "$kind" = s3 ]; then
    after=$("$STASIS" --repo "$repo" --json cache stats)
    T[stasis-s3.requests]=$(python3 -c 'import json,sys; a,b=json.loads(sys.argv[1]),json.loads(sys.argv[2]); print(b["requests"]-a.get("requests",0), b["fetched"]-a.get("fetched",0))' "$before" "$after")
    drop_caches
    t0=$(now)
    "$STASIS" --repo "$repo" restore vm/child2 "$WORK/out-$kind-warm" >&2
    T[stasis-s3.restore.warm]=$(secs "$t0" "$(now)")
    cmp "$WORK/out-$kind-warm/root" "$CORPUS/child2.ext4"
  fi
  T[stasis-$kind.bytes]=$("$STASIS" --repo "$repo" --json du |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["pack_bytes"]+d["index_bytes"])')
  rm -rf "$WORK"/out-"$kind"-*
done

# mount_read KEY FILE CMD...: run the mount CMD in the background, wait (bounded) for
# FILE, run BEFORE_READ if set, drop caches, time a sequential read of FILE, unmount.
mount_read() {
  local key=$1 file=$2 i t0
  shift 2
  mkdir -p "$MNT"
  "$@" >>"$WORK/mount.log" 2>&1 &
  MPID=$!
  for i in $(seq 1 600); do
    [ -e "$file" ] && break
    kill -0 "$MPID" 2>/dev/null || { tail "$WORK/mount.log" >&2; exit 1; }
    sleep 0.1
  done
  [ -e "$file" ] || { tail "$WORK/mount.log" >&2; ls -R "$MNT" 2>&1 | head -20 >&2; echo "bench-fleet: $file did not appear" >&2; exit 1; }
  if [ -n "${BEFORE_READ:-}" ]; then $BEFORE_READ >&2; fi
  drop_caches
  t0=$(now)
  dd if="$file" of=/dev/null bs=1M status=none
  T[$key]=$(secs "$t0" "$(now)")
  unmount
}
for kind in local s3; do
  repo=$WORK/stasis-$kind
  before=
  [ "$kind" = s3 ] && before="$STASIS --repo $repo cache clear"
  BEFORE_READ=$before mount_read "stasis-$kind.mount" "$MNT/vms/vm/child2/root" \
    "$STASIS" --repo "$repo" mount "$MNT"
done

# restic on the same Garage.
R="s3:$AWS_ENDPOINT_URL/$BUCKET/restic"
restic -r "$R" init --repository-version 2 >&2
for img in base child1 child2; do
  drop_caches
  t0=$(now)
  (cd "$CORPUS" && RESTIC_CACHE_DIR=$WORK/restic-cache restic -r "$R" backup --compression auto \
    --host bench --tag "$img" "$img.ext4" >&2)
  T[restic.ingest.$img]=$(secs "$t0" "$(now)")
done
rm -rf "$WORK/restic-cache"
drop_caches
t0=$(now)
RESTIC_CACHE_DIR=$WORK/restic-cache restic -r "$R" restore latest --host bench --tag child2 \
  --target "$WORK/out-restic" >&2
T[restic.restore.cold]=$(secs "$t0" "$(now)")
cmp "$(find "$WORK/out-restic" -name child2.ext4)" "$CORPUS/child2.ext4"
rm -rf "$WORK/restic-cache"
BEFORE_READ= mount_read restic.mount "$MNT/snapshots/latest/child2.ext4" \
  env RESTIC_CACHE_DIR="$WORK/restic-cache" restic -r "$R" mount "$MNT"
T[restic.bytes]=$(RESTIC_CACHE_DIR=$WORK/restic-cache restic -r "$R" stats --mode raw-data --json 2>/dev/null |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["total_size"])')

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
echo "| figure | stasis local | stasis on Garage | restic on Garage | Garage / local | Garage / restic |"
echo "|---|---|---|---|---|---|"
for img in base child1 child2; do
  l=${T[stasis-local.ingest.$img]} s=${T[stasis-s3.ingest.$img]} r=${T[restic.ingest.$img]}
  echo "| ingest $img (s) | $l | $s | $r | $(ratio "$s" "$l") | $(ratio "$s" "$r") |"
done
l=${T[stasis-local.restore.cold]} s=${T[stasis-s3.restore.cold]} r=${T[restic.restore.cold]}
echo "| cold restore child2 (s) | $l | $s | $r | $(ratio "$s" "$l") | $(ratio "$s" "$r") |"
w=${T[stasis-s3.restore.warm]}
echo "| warm restore child2 (s) | $l | $w | - | $(ratio "$w" "$l") | - |"
l=${T[stasis-local.mount]} s=${T[stasis-s3.mount]} r=${T[restic.mount]}
echo "| cold mount read child2 (s) | $l | $s | $r | $(ratio "$s" "$l") | $(ratio "$s" "$r") |"
l=${T[stasis-local.bytes]} s=${T[stasis-s3.bytes]} r=${T[restic.bytes]}
echo "| bytes after three images | $l | $s | $r | $(ratio "$s" "$l") | $(ratio "$s" "$r") |"
read -r req fetched <<<"${T[stasis-s3.requests]}"
echo
echo "Cold stasis-s3 restore of child2: $req GET requests, $fetched bytes fetched ($(ratio "$fetched" "$req") bytes per request)."
echo "Times are seconds of one run (lower is better); a ratio is the left tool's time or bytes over the right one's."
