#!/usr/bin/env bash
# Peer baseline: restic, borg (fixed 4 MiB and default chunker), casync and,
# when given, stasis, side by side in one run on a disk corpus made by
# tools/corpus-disk.sh (base.ext4, child1.ext4, child2.ext4, ingested in that
# order, each tool into its own fresh repository).
#
# usage: tools/peers.sh CORPUSDIR [STASIS_BIN]
#
# Measures per tool: ingest wall time per image, peak RSS of the base ingest,
# repository bytes (du -sb) after each image, cold-cache restore time of child2
# (verified with cmp), cold sequential read of child2 through the tool's FUSE mount
# (restic mount, borg mount, stasis mount; casync has no FUSE view of a blob index:
# a fresh mount, then drop_caches, then read(2) in 1 MiB calls; the median of
# MOUNT_ROUNDS (3) such reads; as root only). Also
# machine limits in the same run: b3sum per image, zstd -1 -T1 / -T0 of base, dd of
# base from page cache, and the FUSE ceiling: the same read from a do-nothing FUSE file
# served from memory with stasis's mount options (crates/stasis-fuse/examples/nullfs.rs),
# and the decoding floor: child2 served through the same mount from zstd frames and
# blake3 ids held in memory, with only the decoding and checking any server of
# compressed, checked blocks must do (crates/stasis-fuse/examples/decodefs.rs).
# Everything above except the corpus facts is measured ROUNDS (3) times: each round
# takes the machine limits, then every tool in turn (the order rotates by one each
# round and runs backwards every other round) from a fresh repository. Tables give the
# median of each figure over the rounds and ratios of those medians; the JSON keeps every
# round's times (*_rounds).
# This machine's figures vary by 10-30% from one measurement to the next, too much
# for a single sample to settle a ratio.
# Prints markdown tables; writes JSON to $OUT_JSON when set.
#
# Settings (encryption off wherever the tool allows, to compare fairly):
#   restic  repository v2, --compression auto, RESTIC_PASSWORD set (restic
#           cannot turn encryption off), private cache dir, plain restore
#           (restic 0.14 has no sparse restore)
#   borg    --encryption none, default compression (lz4), two rows:
#           --chunker-params fixed,4194304 and the default buzhash chunker;
#           extract --sparse
#   casync  make with defaults (64 KiB average chunks, zstd), extract (punches
#           holes by default)
#   stasis  init / create --parent / restore, defaults
#   stasis-diff  (row "stasis --diff") the same, but child1/child2 are ingested
#           from the sparse diff layers child1.diff/child2.diff made by
#           tools/corpus-disk.sh (create --parent vm/PREV --diff); base as above
#   stasis-noframes  stasis with `init --frame-size 0`: every block compressed alone
#           (the A/B of shared frames)
# Images are read once into the page cache right before each ingest, so every
# tool ingests from a warm cache (stasis-diff: the diff layer it reads); caches
# are dropped (sync; echo 3 > drop_caches) before each restore.
# Restore times stop when the tool exits (no extra sync); a second figure,
# restore+sync, also includes the sync that follows (writeback of the output).
#
# Mount reads need root and the nullfs/decodefs/readbench examples (built with cargo from this
# checkout when missing; MOUNT=0 skips the column).
# Environment: PEERS_TMP (parent dir for the temporary repositories; default
# the parent of CORPUSDIR, i.e. the same disk), OUT_JSON, KEEP_REPOS=1,
# TOOLS (space-separated subset of: restic borg-fixed4M borg-default casync stasis
# stasis-diff stasis-noframes).
set -euo pipefail

CORPUS=${1:?usage: $0 CORPUSDIR [STASIS_BIN]}
STASIS_BIN=${2:-}
CORPUS=$(cd "$CORPUS" && pwd)
IMAGES=(base child1 child2)
export LC_ALL=C DEBIAN_FRONTEND=noninteractive

log() { printf '[peers %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

for i in "${IMAGES[@]}"; do
  [[ -f $CORPUS/$i.ext4 ]] || die "$CORPUS/$i.ext4 missing (run tools/corpus-disk.sh first)"
done
[[ $(id -u) == 0 ]] || log "warning: not root, cannot drop caches before restores"

# ---------------------------------------------------------------- tools
need_pkgs=()
for spec in restic:restic borg:borgbackup casync:casync b3sum:b3sum zstd:zstd \
    python3:python3; do
  command -v "${spec%%:*}" >/dev/null 2>&1 || need_pkgs+=("${spec#*:}")
done
[[ -x /usr/bin/time ]] || need_pkgs+=(time)
if ((${#need_pkgs[@]})); then
  log "installing ${need_pkgs[*]}"
  apt-get update -qq
  apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

TOOLS=${TOOLS:-restic borg-fixed4M borg-default casync stasis stasis-diff}
# drop_tool NAME: remove the word NAME from $TOOLS (whole words only)
drop_tool() {
  local t keep=()
  for t in $TOOLS; do [[ $t == "$1" ]] || keep+=("$t"); done
  TOOLS=${keep[*]}
}
if [[ -n $STASIS_BIN && -x $STASIS_BIN ]]; then
  STASIS_BIN=$(cd "$(dirname "$STASIS_BIN")" && pwd)/$(basename "$STASIS_BIN")
else
  if [[ -n $STASIS_BIN ]]; then log "warning: $STASIS_BIN not executable, skipping stasis"; fi
  drop_tool stasis
  drop_tool stasis-diff
  drop_tool stasis-noframes
fi
if [[ " $TOOLS " == *" stasis-diff "* ]]; then
  for i in "${IMAGES[@]:1}"; do
    if [[ ! -f $CORPUS/$i.diff ]]; then
      log "warning: $CORPUS/$i.diff missing, skipping stasis-diff"
      drop_tool stasis-diff
      break
    fi
  done
fi

PARENT=${PEERS_TMP:-$(dirname "$CORPUS")}
WORK=$(mktemp -d "$PARENT/stasis-peers.XXXXXX")
case $WORK in /work/main/*) die "temporary repositories must stay out of /work/main" ;; esac
cleanup() {
  if [[ ${KEEP_REPOS:-0} == 1 ]]; then
    log "keeping $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ROUNDS=${ROUNDS:-3}
RES=$WORK/results.env.tsv
: >"$RES"
put() { printf '%s\t%s\n' "$1" "$2" >>"$RES"; }
log "work dir $WORK (same filesystem as corpus: $(stat -f -c %T "$WORK"))"

# timed KEY CMD...: run CMD (output to $WORK/KEY.log), record KEY.s (wall) and
# KEY.rss_kib (peak RSS of the largest process, /usr/bin/time %M), KEY.cpu_s, and the
# kernel's reclaim/compaction stalls and huge-page fallbacks while it ran.
timed() {
  local key=$1 t0 t1 vm0 vm1
  shift
  vm0=$(vmstat_stalls)
  t0=$(date +%s.%N)
  # bash -c so that the exported adapter functions can be timed too; %M is the
  # largest RSS among the waited-for processes, i.e. the tool itself
  if ! /usr/bin/time -f '%M %U %S %F' -o "$WORK/$key.time" bash -c '"$@"' _ "$@" \
      >"$WORK/$key.log" 2>&1; then
    tail -20 "$WORK/$key.log" >&2
    die "$key failed: $*"
  fi
  t1=$(date +%s.%N)
  vm1=$(vmstat_stalls)
  LAST_S=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}')
  put "$key.s" "$LAST_S"
  # Direct compaction and reclaim stalls during the command (huge-page faults of a
  # tool that asks for them can stall there when free memory is fragmented).
  LAST_STALLS=$(($(cut -d' ' -f1 <<<"$vm1") - $(cut -d' ' -f1 <<<"$vm0")))
  put "$key.stalls" "$LAST_STALLS"
  put "$key.thp_fallbacks" "$(($(cut -d' ' -f2 <<<"$vm1") - $(cut -d' ' -f2 <<<"$vm0")))"
  local rss user sys major
  read -r rss user sys major <"$WORK/$key.time"
  put "$key.rss_kib" "$rss"
  # CPU time (user + system) and major faults tell a slow run that computed more from
  # one that waited (for the disk, or for a CPU the host gave to someone else).
  LAST_CPU=$(awk -v u="$user" -v s="$sys" 'BEGIN{printf "%.2f", u+s}')
  put "$key.cpu_s" "$LAST_CPU"
  put "$key.major_faults" "$major"
}
vmstat_stalls() {
  awk '$1 == "compact_stall" || $1 == "allocstall_normal" || $1 == "allocstall_movable" { st += $2 }
       $1 == "thp_fault_fallback" { fb = $2 } END { print st + 0, fb + 0 }' /proc/vmstat
}
drop_caches() {
  sync
  if [[ -w /proc/sys/vm/drop_caches ]]; then echo 3 >/proc/sys/vm/drop_caches; fi
}
warm() { cat "$1" >/dev/null; }

# ---------------------------------------------------------------- per-tool adapters
# Each defines (tool name with - as _): <t>_init REPO, <t>_ingest REPO NAME PATH PREVNAME,
# <t>_restore REPO NAME OUTDIR (prints the restored file's path).
export RESTIC_PASSWORD=stasis-bench  # restic always encrypts
restic_init() { RESTIC_CACHE_DIR=$1.cache restic -r "$1" init --repository-version 2; }
restic_ingest() {
  RESTIC_CACHE_DIR=$1.cache restic -r "$1" backup --compression auto --host bench \
    --tag "$2" "$3"
}
restic_restore() {
  RESTIC_CACHE_DIR=$1.cache restic -r "$1" restore latest --host bench --tag "$2" \
    --target "$3" >&2
  echo "$3$CORPUS/$2.ext4"
}

export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
borg_init() { BORG_BASE_DIR=$1.home borg init --encryption none "$1"; }
borg_create() {  # REPO NAME PATH CHUNKER...
  local repo=$1 name=$2 path=$3
  shift 3
  (cd "$(dirname "$path")" && BORG_BASE_DIR=$repo.home borg create "$@" "$repo::$name" \
    "$(basename "$path")")
}
borg_restore() {
  (cd "$3" && BORG_BASE_DIR=$1.home borg extract --sparse "$1::$2") >&2
  echo "$3/$2.ext4"
}
borg_fixed4M_init() { borg_init "$@"; }
borg_fixed4M_ingest() { borg_create "$1" "$2" "$3" --chunker-params fixed,4194304; }
borg_fixed4M_restore() { borg_restore "$@"; }
borg_default_init() { borg_init "$@"; }
borg_default_ingest() { borg_create "$1" "$2" "$3"; }
borg_default_restore() { borg_restore "$@"; }

casync_init() { mkdir -p "$1/default.castr"; }
casync_ingest() { casync make --store="$1/default.castr" "$1/$2.caibx" "$3"; }
casync_restore() {
  casync extract --store="$1/default.castr" "$1/$2.caibx" "$3/$2.ext4" >&2
  echo "$3/$2.ext4"
}

stasis_init() { "$STASIS_BIN" --repo "$1" init; }
stasis_ingest() {
  local parent=()
  [[ -n $4 ]] && parent=(--parent "vm/$4")
  "$STASIS_BIN" --repo "$1" create vm "$2" --disk "root=$3" "${parent[@]}"
}
stasis_restore() {
  "$STASIS_BIN" --repo "$1" restore "vm/$2" "$3" >&2
  echo "$3/root"
}
# same repository layout; child images come in as diff layers (see input_path)
stasis_diff_init() { stasis_init "$@"; }
stasis_diff_ingest() {
  if [[ -z $4 ]]; then stasis_ingest "$@"; return; fi
  "$STASIS_BIN" --repo "$1" create vm "$2" --disk "root=$3" --parent "vm/$4" --diff
}
stasis_diff_restore() { stasis_restore "$@"; }
# stasis with each block compressed alone (no shared frames): the A/B of that design
stasis_noframes_init() { "$STASIS_BIN" --repo "$1" init --frame-size 0; }
stasis_noframes_ingest() { stasis_ingest "$@"; }
stasis_noframes_restore() { stasis_restore "$@"; }

# <t>_mount REPO NAME MNT: serve the repository at MNT in the foreground (the caller
# backgrounds it); <t>_mounted_file REPO NAME MNT: where image NAME appears in it.
restic_mount() { RESTIC_CACHE_DIR=$1.cache restic -r "$1" mount "$3"; }
restic_mounted_file() { echo "$3/snapshots/latest$CORPUS/$2.ext4"; }
borg_mount() { BORG_BASE_DIR=$1.home borg mount -f "$1::$2" "$3"; }
borg_fixed4M_mount() { borg_mount "$@"; }
borg_fixed4M_mounted_file() { echo "$3/$2.ext4"; }
borg_default_mount() { borg_mount "$@"; }
borg_default_mounted_file() { echo "$3/$2.ext4"; }
stasis_mount() { "$STASIS_BIN" --repo "$1" mount "$3"; }
stasis_mounted_file() { echo "$3/vms/vm/$2/root"; }
stasis_diff_mount() { stasis_mount "$@"; }
stasis_diff_mounted_file() { stasis_mounted_file "$@"; }
stasis_noframes_mount() { stasis_mount "$@"; }
stasis_noframes_mounted_file() { stasis_mounted_file "$@"; }

# input_path TOOL IMAGE: the file TOOL ingests for IMAGE (warmed, then timed)
input_path() {
  if [[ $1 == stasis-diff && $2 != "${IMAGES[0]}" ]]; then
    echo "$CORPUS/$2.diff"
  else
    echo "$CORPUS/$2.ext4"
  fi
}

export CORPUS STASIS_BIN
export -f restic_init restic_ingest restic_restore borg_init borg_create borg_restore \
  borg_fixed4M_init borg_fixed4M_ingest borg_fixed4M_restore \
  borg_default_init borg_default_ingest borg_default_restore \
  casync_init casync_ingest casync_restore stasis_init stasis_ingest stasis_restore \
  stasis_diff_init stasis_diff_ingest stasis_diff_restore restic_mount borg_mount \
  stasis_noframes_init stasis_noframes_ingest stasis_noframes_restore \
  borg_fixed4M_mount borg_default_mount stasis_mount stasis_diff_mount stasis_noframes_mount

# ---------------------------------------------------------------- mounts
MOUNT=${MOUNT:-1}
if [[ $MOUNT == 1 && $(id -u) != 0 ]]; then
  log "warning: not root, skipping the mount column"
  MOUNT=0
fi
if [[ $MOUNT == 1 ]]; then
  ROOT=$(cd "$(dirname "$0")/.." && pwd)
  EXAMPLES=$ROOT/target/release/examples
  log "building the nullfs, decodefs and readbench examples"
  (cd "$ROOT" && cargo build -q --release -p stasis-fuse --example nullfs --example decodefs --example readbench)
  MNT=$WORK/mnt
  mkdir -p "$MNT"
fi
MPID=
unmount_all() {
  if [[ -n ${MNT:-} ]] && mountpoint -q "$MNT"; then umount "$MNT" 2>/dev/null || umount -l "$MNT"; fi
  if [[ -n $MPID ]]; then wait "$MPID" 2>/dev/null || true; MPID=; fi
}
trap 'unmount_all; cleanup' EXIT
# mount_read KEY CMD...: $MOUNT_ROUNDS times, run CMD (a mount server) in the
# background, wait for $MOUNTED_FILE, drop caches, time a sequential read of it,
# unmount; records the median as KEY.s (and each round as KEY.rounds).
MOUNT_ROUNDS=${MOUNT_ROUNDS:-1}
mount_read() {
  local key=$1 r all=()
  shift
  for ((r = 0; r < MOUNT_ROUNDS; r++)); do
    mount_read_once "$key" "$@"
    all+=("$LAST_S")
  done
  LAST_S=$(printf '%s\n' "${all[@]}" | sort -g | awk '{v[NR]=$1} END{print v[int((NR+1)/2)]}')
  put "$key.s" "$LAST_S"
  put "$key.rounds" "${all[*]}"
}
mount_read_once() {
  local key=$1 i out
  shift
  "$@" >>"$WORK/mount.log" 2>&1 &
  MPID=$!
  for ((i = 0; i < 1200; i++)); do
    [[ -e $MOUNTED_FILE ]] && break
    kill -0 "$MPID" 2>/dev/null || { tail "$WORK/mount.log" >&2; die "$key: mount exited"; }
    sleep 0.1
  done
  [[ -e $MOUNTED_FILE ]] || die "$key: $MOUNTED_FILE did not appear"
  drop_caches
  local cpu0 rep0
  cpu0=$(tree_cpu_ticks "$MPID")
  rep0=$(reported_kib)
  out=$("$EXAMPLES/readbench" seq "$MOUNTED_FILE")
  # The mount server's CPU during the read, and how much freed memory the guest handed
  # back to its host meanwhile (free page reporting; first touches of such memory
  # cost host faults and make reads slow at random on such machines).
  put "$key.server_cpu_s" "$(awk -v a="$cpu0" -v b="$(tree_cpu_ticks "$MPID")" \
    -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.2f", (b-a)/hz}')"
  put "$key.reported_mib" "$((($(reported_kib) - rep0) / 1024))"
  unmount_all
  LAST_S=${out##*secs=}
}
# CPU ticks (user + system) of PID and its children: a mount command may be a shell
# function whose child is the server.
tree_cpu_ticks() {
  local p t=0 v
  for p in "$1" $(pgrep -P "$1" 2>/dev/null); do
    v=$(awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$p/stat" 2>/dev/null) || v=0
    t=$((t + ${v:-0}))
  done
  echo "$t"
}
# KiB of free memory the guest reported to its host since boot (0 without the feature).
reported_kib() {
  cat /sys/module/page_reporting/parameters/reported_kib 2>/dev/null || echo 0
}

# ---------------------------------------------------------------- environment
put machine.nproc "$(nproc)"
put machine.kernel "$(uname -r)"
put machine.mem_kib "$(awk '/MemTotal/{print $2}' /proc/meminfo)"
put versions.restic "$(restic version | awk '{print $2}')"
put versions.borg "$(borg --version | awk '{print $2}')"
put versions.casync "$(casync --version | awk '{print $2; exit}')"
put versions.zstd "$(zstd -V | grep -o 'v[0-9.]*' | head -1)"
put versions.b3sum "$(b3sum --version | awk '{print $2}')"
for i in "${IMAGES[@]}"; do
  put "corpus.$i.apparent_bytes" "$(stat -c %s "$CORPUS/$i.ext4")"
  put "corpus.$i.allocated_bytes" "$(du -B1 "$CORPUS/$i.ext4" | cut -f1)"
  if [[ -f $CORPUS/$i.diff ]]; then
    put "corpus.$i.diff_allocated_bytes" "$(du -B1 "$CORPUS/$i.diff" | cut -f1)"
  fi
done

# ---------------------------------------------------------------- rounds
# Each round measures the machine limits and every tool from a fresh repository, the
# tools in a rotating order, reversed every other round; the report gives the median
# of each figure over the rounds.
order=$TOOLS
for ((round = 1; round <= ROUNDS; round++)); do
  RES=$WORK/results.$round.tsv
  : >"$RES"
  log "round $round: machine limits: b3sum, zstd, dd (page cache)"
  for i in "${IMAGES[@]}"; do
    warm "$CORPUS/$i.ext4"
    timed "limits.b3sum_$i" b3sum "$CORPUS/$i.ext4"
  done
  warm "$CORPUS/base.ext4"
  timed limits.zstd1_T1_base zstd -q -1 -T1 -c "$CORPUS/base.ext4" -o /dev/null
  timed limits.zstd1_T0_base zstd -q -1 -T0 -c "$CORPUS/base.ext4" -o /dev/null
  put limits.zstd1_base_bytes "$(zstd -q -1 -T0 -c "$CORPUS/base.ext4" | wc -c)"
  timed limits.dd_base dd if="$CORPUS/base.ext4" of=/dev/null bs=1M
  if [[ $MOUNT == 1 ]]; then
    MOUNTED_FILE=$MNT/file
    mount_read limits.fuse_ceiling_child2 "$EXAMPLES/nullfs" "$MNT" "$(stat -c %s "$CORPUS/child2.ext4")"
    log "FUSE ceiling: ${LAST_S}s"
    mount_read limits.decode_floor_child2 "$EXAMPLES/decodefs" "$MNT" "$CORPUS/child2.ext4"
    log "decoding floor: ${LAST_S}s"
  fi

  for t in $order; do
    repo=$WORK/$t.repo
    fn=${t//-/_}
    log "round $round, $t: init"
    rm -rf "$repo" "$repo".*
    "${fn}_init" "$repo" >"$WORK/$t.init.log" 2>&1 || { cat "$WORK/$t.init.log" >&2; die "$t init failed"; }
    prev=
    for i in "${IMAGES[@]}"; do
      src=$(input_path "$t" "$i")
      warm "$src"
      # Nobody's timed ingest pays for the writeback of what ran before it.
      sync
      log "$t: ingest $i ($(basename "$src"))"
      timed "tools.$t.ingest.$i" "${fn}_ingest" "$repo" "$i" "$src" "$prev"
      log "$t: ingest $i took ${LAST_S}s (${LAST_CPU} CPU-s, $LAST_STALLS stalls)"
      put "tools.$t.repo_bytes_after.$i" "$(du -sb "$repo" | cut -f1)"
      prev=$i
    done
    put "tools.$t.repo_bytes" "$(du -sb "$repo" | cut -f1)"
    put "tools.$t.repo_allocated_bytes" "$(du -s -B1 "$repo" | cut -f1)"
    if [[ $t == stasis* ]]; then "$STASIS_BIN" --repo "$repo" du >"$WORK/$t.du.log" 2>&1 || true; cat "$WORK/$t.du.log" >&2; fi
    out=$WORK/$t.restore
    rm -rf "$out"
    mkdir -p "$out"
    drop_caches
    log "$t: restore child2 (cold cache)"
    t0=$(date +%s.%N)
    if ! restored=$("${fn}_restore" "$repo" child2 "$out" 2>"$WORK/$t.restore.log"); then
      tail -20 "$WORK/$t.restore.log" >&2
      die "$t restore failed"
    fi
    t1=$(date +%s.%N)
    sync
    t2=$(date +%s.%N)
    put "tools.$t.restore.child2.s" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}')"
    put "tools.$t.restore.child2.sync_s" "$(awk -v a="$t0" -v b="$t2" 'BEGIN{printf "%.3f", b-a}')"
    if cmp -s "$restored" "$CORPUS/child2.ext4"; then ok=true; else ok=false; fi
    put "tools.$t.restore.child2.ok" "$ok"
    put "tools.$t.restore.child2.allocated_bytes" "$(du -B1 "$restored" | cut -f1)"
    log "$t: restore ok=$ok"
    rm -rf "$out"
    if [[ $MOUNT == 1 ]] && declare -F "${fn}_mount" >/dev/null; then
      MOUNTED_FILE=$("${fn}_mounted_file" "$repo" child2 "$MNT")
      log "$t: cold sequential read of child2 through its mount"
      mount_read "tools.$t.mount_read.child2" "${fn}_mount" "$repo" child2 "$MNT"
      log "$t: mount read took ${LAST_S}s"
    fi
  done
  # The next round starts with the next tool, and every other round runs backwards:
  # rotation alone keeps each tool behind the same neighbour in every round (stasis
  # always ran right after casync), so whatever a tool leaves behind would always
  # land on the same one.
  read -r first rest <<<"$order"
  order="$rest $first"
  if ((round % 2 == 1)); then order=$(tr ' ' '\n' <<<"$order" | tac | tr '\n' ' '); fi
done

# ---------------------------------------------------------------- report
python3 - "${OUT_JSON:-}" "$WORK"/results.env.tsv "$WORK"/results.[0-9]*.tsv <<'PY'
import json, statistics, sys

out_json, files = sys.argv[1], sys.argv[2:]

def value(val):
    if val in ("true", "false"):
        return val == "true"
    for conv in (int, float):
        try:
            return conv(val)
        except ValueError:
            pass
    return val

# key -> values over the rounds (the environment file has one of each)
values = {}
for path in files:
    for line in open(path):
        key, val = line.rstrip("\n").split("\t", 1)
        values.setdefault(key, []).append(value(val))

def combine(vs):
    nums = [v for v in vs if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(nums) == len(vs) and len(vs) > 1:
        return statistics.median(nums)
    if all(isinstance(v, bool) for v in vs):
        return all(vs)  # a restore is ok only if it was ok in every round
    return vs[0]

data = {"rounds": len(files) - 1}
for key, vs in values.items():
    d = data
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
    d[parts[-1]] = combine(vs)
    if len(vs) > 1 and parts[-1] in ("s", "sync_s", "cpu_s", "server_cpu_s", "reported_mib"):
        d[parts[-1] + "_rounds"] = vs

images = ["base", "child1", "child2"]
tools = data.get("tools", {})
# ingest.<img>.s / .rss_kib -> tidy
for t, r in tools.items():
    ing = r.pop("ingest")
    r["ingest_s"] = {i: ing[i]["s"] for i in images}
    r["ingest_s_rounds"] = {i: ing[i].get("s_rounds") for i in images}
    r["ingest_total_s"] = round(sum(r["ingest_s"].values()), 3)
    r["ingest_cpu_s"] = {i: ing[i].get("cpu_s") for i in images}
    r["ingest_cpu_s_rounds"] = {i: values.get("tools.%s.ingest.%s.cpu_s" % (t, i)) for i in images}
    for what in ("major_faults", "stalls"):
        r["ingest_%s_rounds" % what] = {
            i: values.get("tools.%s.ingest.%s.%s" % (t, i, what)) for i in images}
    r["peak_rss_kib_base"] = ing["base"]["rss_kib"]
    rc = r.pop("restore")["child2"]
    r["restore_child2_s"] = rc["s"]
    r["restore_child2_s_rounds"] = rc.get("s_rounds")
    r["restore_child2_plus_sync_s"] = rc["sync_s"]
    r["restore_child2_ok"] = rc["ok"]
    r["restore_child2_allocated_bytes"] = rc["allocated_bytes"]
    mr = r.pop("mount_read", {}).get("child2")
    r["mount_read_child2_s"] = mr["s"] if mr else None
    r["mount_read_child2_s_rounds"] = mr.get("s_rounds") if mr else None
    r["mount_read_child2_server_cpu_s"] = mr.get("server_cpu_s") if mr else None
    r["mount_read_child2_reported_mib"] = mr.get("reported_mib") if mr else None
lim = data.get("limits", {})
apparent = data["corpus"]["base"]["apparent_bytes"]
limits = {}
for k, v in list(lim.items()):
    if isinstance(v, dict):
        mbps = None
        img = k.rsplit("_", 1)[-1]
        if img in images:
            mbps = round(data["corpus"][img]["apparent_bytes"] / v["s"] / 1e6, 1)
        limits[k] = {"s": v["s"], "rss_kib": v.get("rss_kib"), "apparent_MBps": mbps,
                     "server_cpu_s": v.get("server_cpu_s"), "reported_mib": v.get("reported_mib")}
        if "s_rounds" in v:
            limits[k]["s_rounds"] = v["s_rounds"]
    else:
        limits[k] = v
data["limits"] = limits

ref = "borg-fixed4M" if "borg-fixed4M" in tools else (next(iter(tools)) if tools else None)
smallest = min((r["repo_bytes"] for r in tools.values()), default=None)
data["reference"] = {"time": ref, "bytes": "smallest repository"}

def f(x, d=2):
    return "%.*f" % (d, x)

print()
print("### Peers (medians of %d rounds; ingest from page cache; restore after drop_caches; time ratio vs %s, bytes ratio vs smallest repo)" % (data["rounds"], ref))
print()
labels = {"stasis-diff": "stasis --diff"}
print("| tool | ingest base s | ingest child1 s | ingest child2 s | ingest total s | × %s | peak RSS base MiB | repo after base MB | +child1 MB | +child2 MB | repo bytes (du -sb) | × smallest | repo allocated | restore child2 s | × %s | restore ok | restore+sync s | mount read child2 s |" % (ref, ref))
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
for t, r in tools.items():
    a = r["repo_bytes_after"]
    mr = r["mount_read_child2_s"]
    print("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d | %s | %d | %s | %s | %s | %s | %s |" % (
        labels.get(t, t), f(r["ingest_s"]["base"]), f(r["ingest_s"]["child1"]), f(r["ingest_s"]["child2"]),
        f(r["ingest_total_s"]), f(r["ingest_total_s"] / tools[ref]["ingest_total_s"]),
        f(r["peak_rss_kib_base"] / 1024, 0),
        f(a["base"] / 1e6, 1), f((a["child1"] - a["base"]) / 1e6, 1),
        f((a["child2"] - a["child1"]) / 1e6, 1), r["repo_bytes"],
        f(r["repo_bytes"] / smallest), r["repo_allocated_bytes"], f(r["restore_child2_s"]),
        f(r["restore_child2_s"] / tools[ref]["restore_child2_s"]),
        "yes" if r["restore_child2_ok"] else "NO", f(r["restore_child2_plus_sync_s"]),
        f(mr) if mr else "-"))
stasis_rows = [t for t in tools if t.startswith("stasis")]
peers = [t for t in tools if not t.startswith("stasis")]
if stasis_rows and peers:
    tref = "borg-fixed4M" if "borg-fixed4M" in tools else peers[0]
    rref = "restic" if "restic" in tools else peers[0]
    sp = min(peers, key=lambda t: tools[t]["repo_bytes"])
    print()
    print("### stasis ratios (ingest time vs %s per image; repo bytes vs the smallest peer, %s; restore child2 vs %s)" % (tref, sp, rref))
    print()
    ceiling = limits.get("fuse_ceiling_child2", {}).get("s")
    mref = "restic" if tools.get("restic", {}).get("mount_read_child2_s") else None
    print("| row | ingest base × | ingest child1 × | ingest child2 × | ingest total × | repo bytes × %s | restore × %s | restore+sync × %s | mount read × %s | mount read speed × FUSE ceiling |" % (sp, rref, rref, mref))
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t in stasis_rows:
        r, q = tools[t], tools[tref]
        rr = tools[rref]
        print("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            labels.get(t, t), *(f(r["ingest_s"][i] / q["ingest_s"][i]) for i in images),
            f(r["ingest_total_s"] / q["ingest_total_s"]),
            f(r["repo_bytes"] / tools[sp]["repo_bytes"], 3),
            f(r["restore_child2_s"] / rr["restore_child2_s"]),
            f(r["restore_child2_plus_sync_s"] / rr["restore_child2_plus_sync_s"]),
            f(r["mount_read_child2_s"] / tools[mref]["mount_read_child2_s"]) if mref and r["mount_read_child2_s"] else "-",
            f(ceiling / r["mount_read_child2_s"]) if ceiling and r["mount_read_child2_s"] else "-"))
    floor = limits.get("decode_floor_child2", {}).get("s")
    if ceiling and floor:
        print()
        print("Decoding floor (decodefs): child2 read through the same mount in %s s, %s× "
              "the FUSE ceiling's speed; stasis's mount read at %s of the floor's speed." % (
                  f(floor, 3), f(ceiling / floor), ", ".join(
                      "%s %s×" % (labels.get(t, t), f(floor / tools[t]["mount_read_child2_s"]))
                      for t in stasis_rows if tools[t].get("mount_read_child2_s"))))
    print()
    print("Ingest of base as a share of b3sum's rate on the same file: " + ", ".join(
        "%s %.0f%%" % (labels.get(t, t), 100 * limits["b3sum_base"]["s"] / tools[t]["ingest_s"]["base"])
        for t in stasis_rows))
print()
print("Ingest CPU-s (user + system, medians; base / child1 / child2): " + "; ".join(
    "%s %s" % (labels.get(t, t), " / ".join(
        f(r["ingest_cpu_s"][i]) if r["ingest_cpu_s"][i] is not None else "-" for i in images))
    for t, r in tools.items()))
reads = [("FUSE ceiling", limits.get("fuse_ceiling_child2", {})),
         ("decoding floor", limits.get("decode_floor_child2", {}))] + [
    (labels.get(t, t), {"server_cpu_s": r.get("mount_read_child2_server_cpu_s"),
                        "reported_mib": r.get("mount_read_child2_reported_mib")})
    for t, r in tools.items() if r.get("mount_read_child2_s")]
if any(v.get("server_cpu_s") is not None for _, v in reads):
    print()
    print("Mount reads of child2, mount server's CPU-s and MiB of free memory the guest "
          "reported to its host during the read (medians): " + "; ".join(
              "%s %s CPU-s, %s MiB" % (n, v.get("server_cpu_s"), v.get("reported_mib"))
              for n, v in reads))
print()
print("### Machine limits (same run; MB/s over the apparent image size)")
print()
print("| what | s | MB/s |")
print("|---|---:|---:|")
for k, v in limits.items():
    if isinstance(v, dict):
        print("| %s | %s | %s |" % (k, f(v["s"], 3), v["apparent_MBps"]))
print("| zstd -1 of base.ext4, bytes | %d | |" % limits.get("zstd1_base_bytes", 0))
print()
print("Corpus: " + ", ".join("%s %.1f MB allocated / %.0f MiB apparent" % (
    i, data["corpus"][i]["allocated_bytes"] / 1e6, data["corpus"][i]["apparent_bytes"] / 2**20)
    for i in images))
print("Versions: " + ", ".join("%s %s" % kv for kv in data.get("versions", {}).items()))
if out_json:
    with open(out_json, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
    print("JSON written to " + out_json, file=sys.stderr)
PY
