#!/usr/bin/env bash
# Real guest memory files (and device states) for stasis benchmarks and tests.
#
# usage: tools/corpus-memory.sh OUTDIR
#
# Boots small Linux guests under QEMU (TCG: nested KVM fails on this machine kind) with
# their RAM in a file (memory-backend-file, share=on): the Debian cloud kernel and a
# busybox initramfs whose /init unpacks the kernel's modules tree into a tmpfs, runs
# depmod and loads virtio drivers and filesystems, checksums and compresses files, builds
# and fills an ext2 filesystem on a loop device, generates mixed data (text, random,
# zeros, copies, gzip) in a loop and keeps a process with a few tens of MB of anonymous
# data. Memory then holds page cache, tmpfs, anonymous data, kernel structures and
# freed pages with stale contents. Each snapshot is: QMP `stop`, device state saved with
# `migrate` + x-ignore-shared (RAM skipped), RAM file copied with cp --sparse=always.
#
# Output, in OUTDIR:
#   guestA-t1.mem  guestA-t1.vmstate   guest A once its workload settled
#   guestA-t2.mem  guestA-t2.vmstate   guest A $LATER s later (light activity between)
#   guestB.mem     guestB.vmstate      a sibling: same kernel, initramfs and workload
#   guestA.vmstate                     symlink to guestA-t2.vmstate
#   qemu-args.txt                      the QEMU arguments (less RAM path), for resuming
#   build/vmlinuz build/initrd.cpio.gz the guest's kernel and initramfs (resume needs them)
# The .mem files are the guest RAM, sparse where pages are zero; with MEM <= 2 GiB the file
# offset is the guest physical address (q35 splits RAM around the 4 GiB hole only above).
#
# Resume (checked below unless VERIFY=0): the same arguments with a copy of the .mem as
# memory-backend-file share=off, plus -incoming defer; then over QMP
# migrate-set-capabilities x-ignore-shared=true, migrate-incoming exec:cat X.vmstate, cont.
#
# Idempotent: a guest whose outputs all exist is not booted again. Needs root (apt-get,
# for qemu-system-x86, cpio and python3 when missing). Environment: MEM (MiB, 512),
# SMP (1), SETTLE (s after the workload ends, 20), LATER (s between t1 and t2, 45),
# VERIFY (1: resume each snapshot once and wait for the guest to tick).
set -euo pipefail

OUT=${1:?usage: $0 OUTDIR}
MEM=${MEM:-512}
SMP=${SMP:-1}
SETTLE=${SETTLE:-20}
LATER=${LATER:-45}
VERIFY=${VERIFY:-1}
export DEBIAN_FRONTEND=noninteractive LC_ALL=C
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
BUILD=$OUT/build
mkdir -p "$BUILD"
exec 9>"$OUT/.lock"
flock -n 9 || { echo "corpus-memory: another run holds $OUT/.lock" >&2; exit 1; }
log() { printf '[corpus-memory %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

have_all() { local f; for f in "$@"; do [[ -e $OUT/$f ]] || return 1; done; }
A_FILES=(guestA-t1.mem guestA-t1.vmstate guestA-t2.mem guestA-t2.vmstate)
B_FILES=(guestB.mem guestB.vmstate)
if have_all "${A_FILES[@]}" "${B_FILES[@]}"; then
  log "all outputs exist in $OUT, nothing to do"
  exit 0
fi

# ---------------------------------------------------------------- host tools
need=()
for spec in qemu-system-x86_64:qemu-system-x86 cpio:cpio python3:python3 \
    dpkg-deb:dpkg gzip:gzip; do
  command -v "${spec%%:*}" >/dev/null 2>&1 || need+=("${spec#*:}")
done
apt_updated=0
apt_update() { ((apt_updated)) || apt-get update -qq; apt_updated=1; }
if ((${#need[@]})); then
  log "installing ${need[*]}"
  apt_update
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Download a .deb into $BUILD without installing it (nothing on the host changes).
fetch_deb() { # PACKAGE
  local deb
  ( cd "$BUILD" && apt-get download "$1" >/dev/null 2>&1 ) \
    || { apt_update; ( cd "$BUILD" && apt-get download "$1" >/dev/null 2>&1 ); } \
    || die "apt-get download $1 failed"
  deb=$(find "$BUILD" -maxdepth 1 -name "$1_*.deb" | head -1)
  rm -rf "$BUILD/x-$1"
  dpkg-deb -x "$deb" "$BUILD/x-$1"
}

# ---------------------------------------------------------------- kernel + initramfs
if [[ ! -s $BUILD/vmlinuz || ! -s $BUILD/initrd.cpio.gz ]]; then
  rm -f "$BUILD/initrd.cpio.gz"
  pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null \
        | awk '/Depends: linux-image-[0-9]/{print $2; exit}' || true)
  if [[ -z $pkg ]]; then
    apt_update
    pkg=$(apt-cache depends linux-image-cloud-amd64 \
          | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  fi
  [[ -n $pkg ]] || die "cannot find the Debian cloud kernel package"
  log "fetching $pkg and busybox-static"
  fetch_deb "$pkg"
  fetch_deb busybox-static
  kdir=$BUILD/x-$pkg
  kver=$(ls "$kdir/lib/modules")
  cp "$kdir/boot/vmlinuz-$kver" "$BUILD/vmlinuz"

  log "building the initramfs (kernel $kver)"
  root=$BUILD/root
  rm -rf "$root"
  mkdir -p "$root"/{bin,dev,proc,sys,tmp,mnt,work,data,lib/modules}
  cp "$BUILD/x-busybox-static/bin/busybox" "$root/bin/busybox"
  # The whole modules tree (about 90 MB, uncompressed .ko), gzipped; /init unpacks it.
  tar -C "$kdir/lib/modules" -cf - "$kver" | gzip -6 > "$root/data/modules.tar.gz"
  cp "$kdir/boot/config-$kver" "$kdir/boot/System.map-$kver" "$root/data/"
  cat > "$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
say() { echo "STASIS: $*" > /dev/console; }
up() { cut -d' ' -f1 /proc/uptime; }
say "init at $(up)s"
hostname stasis-guest
kver=$(uname -r)

# 1. The kernel modules tree into a tmpfs; index it; load drivers and filesystems.
mount -t tmpfs -o size=160m modules /lib/modules
mount -t tmpfs -o size=192m work /work
tar -xzf /data/modules.tar.gz -C /lib/modules
depmod -a "$kver"
for m in virtio_pci virtio_rng virtio_net loop btrfs xfs squashfs overlay fuse \
    isofs nls_utf8 zram lz4_compress; do
  modprobe "$m" 2>/dev/null || say "modprobe $m failed"
done
ip link set lo up
ip link set eth0 up 2>/dev/null || say "no eth0"
say "modules loaded at $(up)s: $(wc -l < /proc/modules) modules"

# 2. Page cache and tmpfs data: checksums, concatenation, compression.
cd /work
find /lib/modules -name '*.ko' | sort > ko.list
find /lib/modules -name '*.ko' -exec md5sum {} + > ko.md5
cat $(head -n 300 ko.list) | gzip -1 > mods-300.gz
gzip -dc mods-300.gz | sha256sum > mods-300.sha256
tar -C "/lib/modules/$kver/kernel/fs" -cf - . | gzip -6 > fs-modules.tgz
cp /data/System.map-* /data/config-* .
sort -k3 System.map-* > System.map.by-name
say "page cache work done at $(up)s"

# 3. A small ext2 filesystem on a loop device: buffer cache, inodes, dentries.
dd if=/dev/zero of=disk.img bs=1M count=40 2>/dev/null
mke2fs -F -b 4096 disk.img >/dev/null 2>&1
if mount -o loop disk.img /mnt; then
  cp -a "/lib/modules/$kver/kernel/drivers/net" /mnt/
  cp fs-modules.tgz /mnt/
  sync
  find /mnt -type f | xargs sha1sum > ext2.sha1
else
  say "loop mount failed"
fi

# 4. Mixed data in a loop: text, random, zeros, copies, compressed; some of it deleted
#    again, so freed pages keep stale contents.
i=0
while [ $i -lt 12 ]; do
  awk -v s=$i 'BEGIN { srand(s); split("GET PUT POST DELETE HEAD", v, " ");
    for (n = 0; n < 25000; n++)
      printf "%08d %s /api/v%d/item/%x %.4f status=%d\n", n, v[1 + int(rand() * 5)],
        1 + int(rand() * 3), int(rand() * 1e9), rand() * 1000, 200 + 100 * int(rand() * 4) }' \
    > log-$i.txt
  dd if=/dev/urandom of=rand-$i.bin bs=64k count=16 2>/dev/null
  dd if=/dev/zero of=zero-$i.bin bs=64k count=4 2>/dev/null
  cp "$(sed -n "$((i * 37 + 1))p" ko.list)" copy-$i.ko
  cat log-$i.txt rand-$i.bin copy-$i.ko | gzip -1 > bundle-$i.gz
  if [ $((i % 3)) -ne 0 ]; then rm -f log-$i.txt rand-$i.bin bundle-$i.gz; fi
  i=$((i + 1))
done
sort -k4 log-0.txt | uniq -c -f2 | tail -n 5000 > sorted-0.txt
say "mixed data done at $(up)s"

# 5. Anonymous memory: a long-lived process holding a table (tens of MB of heap) that
#    it keeps updating; wait until the table is built.
awk 'BEGIN { srand(7); n = 250000
  pad = "The quick brown fox jumps over the lazy dog 0123456789 ABCDEFGHIJKLMNOPQRSTUVWXYZ"
  for (i = 0; i < n; i++)
    t[i] = sprintf("row %d %08x %s", i, int(rand() * 2147483647), substr(pad, 1 + int(rand() * 40)))
  print "built" > "/work/anon.ready"; close("/work/anon.ready")
  while (1) {
    for (k = 0; k < 300; k++) { j = int(rand() * n); t[j] = sprintf("upd %d %08x", j, int(rand() * 2147483647)) }
    system("sleep 2")
  } }' &
w=0
while [ ! -e anon.ready ] && [ $w -lt 300 ]; do sleep 1; w=$((w + 1)); done
say "anonymous table built at $(up)s"
free > free.txt
say "READY at $(up)s: $(grep -E 'MemFree|^Cached|Shmem:|AnonPages' /proc/meminfo | tr -s ' ' | tr '\n' ' ')"
echo STASIS-READY > /dev/console

# 6. Light activity until the VM is stopped: logs, small in-place rewrites, heartbeat.
n=0
while :; do
  n=$((n + 1))
  echo "$(date) tick $n load $(cut -d' ' -f1-3 /proc/loadavg)" >> activity.log
  if [ $((n % 5)) -eq 0 ]; then
    dd if=/dev/urandom of=rand-0.bin bs=4k count=4 seek=$(((n * 7) % 250)) conv=notrunc 2>/dev/null
    echo "STASIS-TICK $n" > /dev/console
  fi
  if [ $((n % 10)) -eq 0 ]; then tail -c 100000 activity.log | gzip > act-$((n / 10 % 4)).gz; fi
  sleep 1
done
INIT
  chmod +x "$root/init"
  (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1 > "$BUILD/initrd.cpio.gz.tmp")
  mv "$BUILD/initrd.cpio.gz.tmp" "$BUILD/initrd.cpio.gz"
  rm -rf "$root" "$BUILD"/x-* "$BUILD"/*.deb
fi

# ---------------------------------------------------------------- QEMU and QMP
# Arguments shared by a booted and a resumed guest (the RAM backend is added per run).
# shellcheck disable=SC2054 # commas belong to QEMU option values
QARGS=(-accel tcg -cpu max -smp "$SMP" -m "${MEM}M" -machine q35,memory-backend=mem
  -nodefaults -no-user-config -vga none -display none -monitor none
  -kernel "$BUILD/vmlinuz" -initrd "$BUILD/initrd.cpio.gz"
  -append "console=ttyS0 panic=-1 quiet" -no-reboot
  -device virtio-rng-pci
  -netdev user,id=n0,restrict=on -device virtio-net-pci,netdev=n0)
printf '%s\n' "${QARGS[@]}" > "$OUT/qemu-args.txt"

qmp() { # SOCKET COMMAND [JSON-ARGUMENTS]: run one QMP command, print its return as JSON
  python3 - "$@" <<'PY'
import json, socket, sys
path, name = sys.argv[1], sys.argv[2]
args = json.loads(sys.argv[3]) if len(sys.argv) > 3 else None
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(120)
s.connect(path)
f = s.makefile("rw")

def call(cmd, arguments=None):
    msg = {"execute": cmd}
    if arguments is not None:
        msg["arguments"] = arguments
    f.write(json.dumps(msg) + "\n")
    f.flush()
    while True:
        line = f.readline()
        if not line:
            if cmd == "quit":
                return {}
            sys.exit(f"qmp {cmd}: connection closed")
        reply = json.loads(line)
        if "event" in reply:
            continue
        if "error" in reply:
            sys.exit(f"qmp {cmd}: {reply['error'].get('desc')}")
        return reply.get("return")

f.readline()  # greeting
call("qmp_capabilities")
print(json.dumps(call(name, args)))
PY
}

qemu_pids=()
cleanup() {
  local p
  for p in "${qemu_pids[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

start_qemu() { # NAME RAMFILE SHARE [EXTRA ARGS...]: start QEMU in the background
  local name=$1 ram=$2 share=$3
  shift 3
  local sock=$BUILD/$name.qmp console=$BUILD/$name.console pidf=$BUILD/$name.pid
  rm -f "$sock" "$console" "$pidf"
  qemu-system-x86_64 -name "$name" "${QARGS[@]}" \
    -object "memory-backend-file,id=mem,size=${MEM}M,mem-path=$ram,share=$share" \
    -serial "file:$console" -qmp "unix:$sock,server=on,wait=off" \
    -daemonize -pidfile "$pidf" "$@"
  qemu_pids+=("$(cat "$pidf")")
}

stop_qemu() { # NAME
  local pid
  pid=$(cat "$BUILD/$1.pid" 2>/dev/null) || return 0
  qmp "$BUILD/$1.qmp" quit >/dev/null 2>&1 || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill "$pid" 2>/dev/null || true
  rm -f "$BUILD/$1.pid"
}

alive() { kill -0 "$(cat "$BUILD/$1.pid")" 2>/dev/null; }

wait_console() { # NAME PATTERN TIMEOUT
  local t=0
  until grep -q "$2" "$BUILD/$1.console" 2>/dev/null; do
    alive "$1" || { tail -n 20 "$BUILD/$1.console" >&2; die "guest $1 exited"; }
    ((t < $3)) || { tail -n 20 "$BUILD/$1.console" >&2; return 1; }
    sleep 2
    t=$((t + 2))
  done
  echo "$t"
}

migrate_status() { qmp "$1" query-migrate | python3 -c 'import json,sys; print(json.load(sys.stdin).get("status", "none"))'; }

wait_migration() { # SOCKET
  local st
  for _ in $(seq 600); do
    st=$(migrate_status "$1")
    case $st in
      completed) return 0 ;;
      failed|cancelled) qmp "$1" query-migrate >&2; return 1 ;;
    esac
    sleep 0.2
  done
  return 1
}

boot() { # NAME: boot a guest with its RAM in $BUILD/NAME.ram, wait until its workload ran
  local name=$1 t
  rm -f "$BUILD/$name.ram"
  log "booting guest $name (TCG, ${MEM} MiB, $SMP vCPU)"
  start_qemu "$name" "$BUILD/$name.ram" on
  t=$(wait_console "$name" STASIS-READY 1200) || die "guest $name not ready after 1200 s"
  log "guest $name ready after ${t}s: $(grep 'STASIS: READY' "$BUILD/$name.console" | cut -c1-200)"
}

snap() { # NAME BASENAME: stop the guest, save its device state and RAM as BASENAME.*.tmp
  local name=$1 sock=$BUILD/$1.qmp dst=$OUT/$2
  qmp "$sock" stop >/dev/null
  qmp "$sock" migrate-set-capabilities \
    '{"capabilities":[{"capability":"x-ignore-shared","state":true}]}' >/dev/null
  qmp "$sock" migrate "{\"uri\":\"exec:cat > $dst.vmstate.tmp\"}" >/dev/null
  wait_migration "$sock" || die "migrate (device state) of $name failed"
  cp --sparse=always "$BUILD/$name.ram" "$dst.mem.tmp"
  log "snapshot $2: $(du -h --apparent-size "$dst.mem.tmp" | cut -f1) apparent," \
    "$(du -h "$dst.mem.tmp" | cut -f1) allocated, vmstate $(stat -c %s "$dst.vmstate.tmp") bytes"
}

verify() { # BASENAME: resume the snapshot in a scratch QEMU and wait for a heartbeat
  local b=$1 name=resume-$1 ram=$BUILD/resume.ram sock t t0 t1
  sock=$BUILD/$name.qmp
  cp --sparse=always "$OUT/$b.mem" "$ram"
  start_qemu "$name" "$ram" off -incoming defer
  qmp "$sock" migrate-set-capabilities \
    '{"capabilities":[{"capability":"x-ignore-shared","state":true}]}' >/dev/null
  t0=$(date +%s.%N)
  qmp "$sock" migrate-incoming "{\"uri\":\"exec:cat $OUT/$b.vmstate\"}" >/dev/null
  if wait_migration "$sock"; then
    qmp "$sock" cont >/dev/null
    t1=$(date +%s.%N)
    if t=$(wait_console "$name" STASIS-TICK 60); then
      log "resume $b: OK, loaded in $(python3 -c "print(round($t1-$t0,2))") s," \
        "guest ticked within ${t}s ($(grep STASIS-TICK "$BUILD/$name.console" | head -1))"
    else
      log "resume $b: FAILED, no heartbeat after resuming (console above)"
    fi
  else
    log "resume $b: FAILED, migrate-incoming did not complete"
  fi
  stop_qemu "$name"
  rm -f "$ram"
}

commit() { local f; for f in "$@"; do mv "$OUT/$f.tmp" "$OUT/$f"; done; }

# ---------------------------------------------------------------- guest A
if ! have_all "${A_FILES[@]}"; then
  boot guestA
  log "guest A: settling ${SETTLE}s"
  sleep "$SETTLE"
  snap guestA guestA-t1
  qmp "$BUILD/guestA.qmp" cont >/dev/null
  log "guest A: running ${LATER}s more"
  sleep "$LATER"
  snap guestA guestA-t2
  stop_qemu guestA
  rm -f "$BUILD/guestA.ram"
  commit "${A_FILES[@]}"
  ln -sfn guestA-t2.vmstate "$OUT/guestA.vmstate"
  if ((VERIFY)); then verify guestA-t1; verify guestA-t2; fi
fi

# ---------------------------------------------------------------- guest B
if ! have_all "${B_FILES[@]}"; then
  boot guestB
  log "guest B: settling ${SETTLE}s"
  sleep "$SETTLE"
  snap guestB guestB
  stop_qemu guestB
  rm -f "$BUILD/guestB.ram"
  commit "${B_FILES[@]}"
  if ((VERIFY)); then verify guestB; fi
fi

rm -f "$BUILD"/*.qmp
ls -ls "$OUT" >&2
