#!/usr/bin/env bash
# Build a realistic VM disk corpus for stasis benchmarks.
#
# usage: tools/corpus-disk.sh OUTDIR
#
# Produces, in OUTDIR:
#   rootfs/       debootstrap --variant=minbase of Debian $SUITE (default bookworm)
#   base.ext4     sparse 2 GiB raw ext4 image made with mkfs.ext4 -d rootfs
#   child1.ext4   base + a "VM that ran a while": apt upgrade + installs, logs,
#                 ~20 MB new random data, config edits, deletions
#   child2.ext4   child1 + more packages, apt-get clean, logrotate, sqlite db,
#                 ~10 MB random data (new + rewritten in place), deletions
#   child1.diff   sparse diff layer of child1 vs base  (changed 4 KiB blocks only,
#   child2.diff   sparse diff layer of child2 vs child1  holes elsewhere)
#
# Idempotent and make-like: a step is skipped when its output exists and is
# newer than its input. Needs root (debootstrap, loop mounts, chroot).
# Environment: SUITE (default bookworm), MIRROR (default: the Debian mirror
# configured for apt on this machine), IMG_SIZE (default 2G).
set -euo pipefail

OUTDIR=${1:?usage: $0 OUTDIR}
SUITE=${SUITE:-bookworm}
IMG_SIZE=${IMG_SIZE:-2G}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export DEBIAN_FRONTEND=noninteractive LC_ALL=C

log() { printf '[corpus-disk %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $(id -u) == 0 ]] || die "must run as root"

# ---------------------------------------------------------------- tools
need_pkgs=()
for spec in debootstrap:debootstrap mkfs.ext4:e2fsprogs e2fsck:e2fsprogs \
    losetup:mount python3:python3 truncate:coreutils; do
  command -v "${spec%%:*}" >/dev/null 2>&1 || need_pkgs+=("${spec#*:}")
done
if ((${#need_pkgs[@]})); then
  log "installing ${need_pkgs[*]}"
  apt-get update -qq
  apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# ---------------------------------------------------------------- mirrors
# Print the URIs apt is configured with (deb822 .sources and one-line .list).
apt_uris() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
      /etc/apt/sources.list.d/*.sources; do
    [[ -r $f ]] || continue
    if [[ $f == *.sources ]]; then
      # pair each stanza's URIs with its Suites
      awk 'BEGIN{RS=""} {u="";s="";
             for(i=1;i<=NF;i++){ if($i=="URIs:")u=$(i+1); if($i=="Suites:")s=$(i+1)}
             if(u!="") print u, s}' "$f"
    else
      awk '$1=="deb"{ i=2; if($2 ~ /^\[/){while($i !~ /\]$/)i++; i++}
                      print $i, $(i+1)}' "$f"
    fi
  done
}
if [[ -z ${MIRROR:-} ]]; then
  MIRROR=$(apt_uris | awk '$1 ~ /\/debian\/?$/ && $2 !~ /-security/ {print $1; exit}')
  MIRROR=${MIRROR:-http://deb.debian.org/debian}
fi
SECURITY_MIRROR=${SECURITY_MIRROR:-$(apt_uris | awk '$2 ~ /-security/ {print $1; exit}')}
log "mirror $MIRROR, security mirror ${SECURITY_MIRROR:-none}, suite $SUITE"

mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)

# ---------------------------------------------------------------- mounts
# Everything mounted or attached is recorded and undone by the EXIT trap,
# innermost first.
MOUNTS=()
LOOPS=()
cleanup() {
  local i
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
    umount "${MOUNTS[i]}" 2>/dev/null || umount -l "${MOUNTS[i]}" 2>/dev/null || true
  done
  MOUNTS=()
  for ((i = ${#LOOPS[@]} - 1; i >= 0; i--)); do
    losetup -d "${LOOPS[i]}" 2>/dev/null || true
  done
  LOOPS=()
  if [[ -n ${MNT:-} && -d $MNT ]]; then rmdir "$MNT" 2>/dev/null || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# open_image IMG: loop-attach IMG, mount it on $MNT with /proc /sys /dev for chroot.
open_image() {
  local dev
  dev=$(losetup --find --show "$1")
  LOOPS+=("$dev")
  MNT=$(mktemp -d "$OUTDIR/.mnt.XXXXXX")
  mount -t ext4 "$dev" "$MNT"
  MOUNTS+=("$MNT")
  mount -t proc proc "$MNT/proc";      MOUNTS+=("$MNT/proc")
  mount -t sysfs sys "$MNT/sys";       MOUNTS+=("$MNT/sys")
  mount --bind /dev "$MNT/dev";        MOUNTS+=("$MNT/dev")
  mount --bind /dev/pts "$MNT/dev/pts"; MOUNTS+=("$MNT/dev/pts")
  # no daemons may start inside the chroot
  printf '#!/bin/sh\nexit 101\n' >"$MNT/usr/sbin/policy-rc.d"
  chmod 755 "$MNT/usr/sbin/policy-rc.d"
}
close_image() {
  rm -f "$MNT/usr/sbin/policy-rc.d"
  sync
  cleanup
  MNT=
}
in_chroot() { chroot "$MNT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  HOME=/root LC_ALL=C DEBIAN_FRONTEND=noninteractive "$@"; }

# fsck_ok IMG: read-only full check; prints e2fsck's report only on errors.
fsck_ok() {
  local out
  out=$(e2fsck -fn "$1" 2>&1) || { printf '%s\n' "$out" >&2; die "$1: e2fsck found errors"; }
}

# fresh OUT [INPUT...]: true when OUT exists and is newer than every INPUT.
fresh() {
  local out=$1 in
  shift
  [[ -e $out ]] || return 1
  for in in "$@"; do [[ $out -nt $in ]] || return 1; done
}

# random_files DIR COUNT SIZE_KIB: incompressible files (media, keys, blobs).
random_files() {
  local dir=$1 n=$2 kib=$3 i
  mkdir -p "$dir"
  for ((i = 0; i < n; i++)); do
    head -c "$((kib * 1024))" /dev/urandom >"$dir/$(printf 'obj-%05d.bin' "$i")"
  done
}
# log_lines FILE COUNT PROG HOST: append syslog-style lines.
log_lines() {
  awk -v n="$2" -v prog="$3" -v host="$4" -v seed="$RANDOM" 'BEGIN{srand(seed);
    split("Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec", m, " ");
    for(i=0;i<n;i++){
      printf "%s %2d %02d:%02d:%02d %s %s[%d]: session %08x user app from 10.0.%d.%d port %d: %s\n",
        m[int(rand()*12)+1], int(rand()*28)+1, int(rand()*24), int(rand()*60), int(rand()*60),
        host, prog, int(rand()*30000)+100, int(rand()*2^30), int(rand()*255), int(rand()*255),
        int(rand()*60000)+1024, (rand()<0.9 ? "request completed status=200" : "warning: slow request took " int(rand()*9000) "ms")}}' >>"$1"
}

# ---------------------------------------------------------------- rootfs
ROOTFS=$OUTDIR/rootfs
if [[ -e $OUTDIR/.rootfs.done ]]; then
  log "rootfs: exists, skipping"
else
  log "rootfs: debootstrap --variant=minbase $SUITE"
  rm -rf "$ROOTFS"
  debootstrap --variant=minbase "$SUITE" "$ROOTFS" "$MIRROR" >"$OUTDIR/debootstrap.log" 2>&1 \
    || { tail -20 "$OUTDIR/debootstrap.log" >&2; die "debootstrap failed"; }
  touch "$OUTDIR/.rootfs.done"
fi

# ---------------------------------------------------------------- base
BASE=$OUTDIR/base.ext4
if fresh "$BASE" "$OUTDIR/.rootfs.done"; then
  log "base.ext4: up to date, skipping"
else
  log "base.ext4: mkfs.ext4 -d rootfs into sparse $IMG_SIZE"
  rm -f "$BASE.tmp"
  truncate -s "$IMG_SIZE" "$BASE.tmp"
  # Initialise inode tables and journal now, so mounting later does not start
  # the kernel's lazy-init zeroing thread (which would dirty the children).
  mkfs.ext4 -q -F -L stasis-root -E lazy_itable_init=0,lazy_journal_init=0 \
    -d "$ROOTFS" "$BASE.tmp"
  fsck_ok "$BASE.tmp"
  mv "$BASE.tmp" "$BASE"
fi

# ---------------------------------------------------------------- child1
modify_child1() {
  local r=$MNT
  log "child1: apt sources, update, upgrade"
  if [[ -n $SECURITY_MIRROR ]]; then
    printf 'deb %s %s-security main\n' "$SECURITY_MIRROR" "$SUITE" >>"$r/etc/apt/sources.list"
  fi
  printf 'deb %s %s-updates main\n' "$MIRROR" "$SUITE" >>"$r/etc/apt/sources.list"
  in_chroot apt-get update -qq
  in_chroot apt-get -y -qq upgrade >/dev/null
  log "child1: install packages"
  in_chroot apt-get install -y -qq --no-install-recommends \
    python3 curl ca-certificates procps iproute2 less vim-tiny openssh-client \
    cron logrotate >/dev/null
  log "child1: users, config, logs, data, deletions"
  echo vm-child1 >"$r/etc/hostname"
  printf '127.0.1.1\tvm-child1\n' >>"$r/etc/hosts"
  in_chroot useradd -m -s /bin/bash app
  printf 'alias ll="ls -l"\nexport EDITOR=vi\n' >>"$r/etc/bash.bashrc"
  printf '*/5 * * * * app /usr/bin/python3 /home/app/job.py\n' >>"$r/etc/crontab"
  printf 'import time\nprint(time.time())\n' >"$r/home/app/job.py"
  # logs a VM accumulates
  log_lines "$r/var/log/syslog" 40000 sshd vm-child1
  log_lines "$r/var/log/auth.log" 8000 sshd vm-child1
  # ~20 MB of new incompressible data: a 16 MiB blob store + 200 small objects
  mkdir -p "$r/var/lib/app"
  head -c $((16 << 20)) /dev/urandom >"$r/var/lib/app/db.bin"
  random_files "$r/home/app/data" 200 20
  # deletions: man pages, info, non-English locales
  rm -rf "$r"/usr/share/man/* "$r"/usr/share/info/*
  find "$r/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'en*' \
    ! -name locale.alias -exec rm -rf {} +
  in_chroot chown -R app:app /home/app /var/lib/app
}

modify_child2() {
  local r=$MNT
  log "child2: update, install more packages, clean apt cache"
  in_chroot apt-get update -qq
  in_chroot apt-get install -y -qq --no-install-recommends \
    git rsync sqlite3 nginx-light jq >/dev/null
  in_chroot apt-get clean
  log "child2: config edits, logrotate, sqlite, data, deletions"
  echo vm-child2 >"$r/etc/hostname"
  sed -i 's/vm-child1/vm-child2/' "$r/etc/hosts"
  in_chroot useradd -m -s /bin/bash deploy
  sed -i 's/listen 80 default_server;/listen 8080 default_server;/' \
    "$r/etc/nginx/sites-available/default" 2>/dev/null || true
  sed -i 's/worker_processes auto;/worker_processes 2;/' "$r/etc/nginx/nginx.conf" 2>/dev/null || true
  printf '0 3 * * * deploy /usr/bin/rsync -a /home/app/ /srv/backup/\n' >>"$r/etc/crontab"
  # logrotate by hand: compress yesterday's logs, start new ones
  local f
  for f in syslog auth.log; do
    mv "$r/var/log/$f" "$r/var/log/$f.1"
    gzip -9 "$r/var/log/$f.1"
  done
  log_lines "$r/var/log/syslog" 20000 nginx vm-child2
  log_lines "$r/var/log/auth.log" 4000 sshd vm-child2
  mkdir -p "$r/var/log/nginx"
  log_lines "$r/var/log/nginx/access.log" 20000 nginx vm-child2
  # a compressible application database
  in_chroot sqlite3 /var/lib/app/app.sqlite \
    "CREATE TABLE IF NOT EXISTS ev(id INTEGER PRIMARY KEY, ts INTEGER, name TEXT, payload TEXT);
     WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<60000)
     INSERT INTO ev(ts,name,payload) SELECT 1700000000+x, 'event-'||(x%97),
       hex(randomblob(16))||' status=ok path=/api/v1/items/'||x FROM c;"
  # ~10 MB random: rewrite 4 MiB inside db.bin in place, grow it 2 MiB, 4 MB new files
  dd if=/dev/urandom of="$r/var/lib/app/db.bin" bs=1M seek=5 count=4 conv=notrunc status=none
  head -c $((2 << 20)) /dev/urandom >>"$r/var/lib/app/db.bin"
  random_files "$r/home/app/uploads" 64 64
  # deletions: half of child1's small objects, a package's docs
  rm -f "$r"/home/app/data/obj-000[0-9]?.bin
  rm -rf "$r/usr/share/doc/vim-tiny" "$r/usr/share/doc/python3"*
  in_chroot chown -R app:app /home/app /var/lib/app
}

# make_child PARENT CHILD FUNC
make_child() {
  local parent=$1 child=$2 fn=$3
  if fresh "$child" "$parent"; then
    log "$(basename "$child"): up to date, skipping"
    return
  fi
  log "$(basename "$child"): copying $(basename "$parent") sparsely"
  rm -f "$child.tmp"
  cp --sparse=always "$parent" "$child.tmp"
  open_image "$child.tmp"
  "$fn"
  close_image
  fsck_ok "$child.tmp"
  mv "$child.tmp" "$child"
}

make_diff() {
  local old=$1 new=$2 out=$3
  if fresh "$out" "$old" "$new"; then
    log "$(basename "$out"): up to date, skipping"
    return
  fi
  python3 "$HERE/imgdiff.py" "$old" "$new" "$out"
}

make_child "$BASE" "$OUTDIR/child1.ext4" modify_child1
make_child "$OUTDIR/child1.ext4" "$OUTDIR/child2.ext4" modify_child2
make_diff "$BASE" "$OUTDIR/child1.ext4" "$OUTDIR/child1.diff"
make_diff "$OUTDIR/child1.ext4" "$OUTDIR/child2.ext4" "$OUTDIR/child2.diff"

# ---------------------------------------------------------------- sizes
echo
echo "== apparent size (du -h --apparent-size)"
(cd "$OUTDIR" && du -h --apparent-size base.ext4 child1.ext4 child2.ext4 child1.diff child2.diff && du -sh --apparent-size rootfs)
echo "== allocated size (du -h)"
(cd "$OUTDIR" && du -h base.ext4 child1.ext4 child2.ext4 child1.diff child2.diff && du -sh rootfs)
