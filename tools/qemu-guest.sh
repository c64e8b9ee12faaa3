#!/usr/bin/env bash
# A tiny Linux guest for the resume test (tests/qemu_resume.rs): the Debian cloud kernel
# and a busybox initramfs whose /init proves, once resumed, that it is the same guest and
# that its memory is intact.
#
# usage: tools/qemu-guest.sh OUTDIR
#
# Writes OUTDIR/vmlinuz and OUTDIR/initrd.cpio.gz (and nothing else that stays). Idempotent
# and cached: a second run with the same script is a no-op, so tests can call it every time.
# Needs apt-get download (network) the first time; when run as root it installs what the
# host lacks (qemu-system-x86, cpio); otherwise it says what is missing.
#
# The guest's /init (no modules: serial console only):
#   - draws a random token (this boot's identity),
#   - writes 32 MiB of random bytes into a tmpfs (so they live in guest RAM) and prints
#       GUEST-READY <token> <md5 of the 32 MiB>
#   - then once a second, forever, re-reads them and prints
#       GUEST-TICK <token> <n> <md5 of the 32 MiB>
# A guest resumed from a saved state continues the count with the same token and md5; a
# rebooted one would draw a new token and start again at 1.
#
# Boot it like tools/corpus-memory.sh does (TCG; -machine q35,memory-backend=mem and a
# memory-backend-file), with -append "console=ttyS0 panic=-1 quiet" -no-reboot.
set -euo pipefail

OUT=${1:?usage: $0 OUTDIR}
export DEBIAN_FRONTEND=noninteractive LC_ALL=C
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
log() { printf '[qemu-guest] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The outputs are keyed by this script's content: edit the guest, get a new initramfs.
KEY=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)
if [[ -s $OUT/vmlinuz && -s $OUT/initrd.cpio.gz && $(cat "$OUT/key" 2>/dev/null) == "$KEY" ]]; then
  exit 0
fi
exec 9>"$OUT/.lock"
flock 9
# Another run may have finished while we waited for the lock.
if [[ -s $OUT/vmlinuz && -s $OUT/initrd.cpio.gz && $(cat "$OUT/key" 2>/dev/null) == "$KEY" ]]; then
  exit 0
fi

need=()
for spec in qemu-system-x86_64:qemu-system-x86 cpio:cpio dpkg-deb:dpkg gzip:gzip; do
  command -v "${spec%%:*}" >/dev/null 2>&1 || need+=("${spec#*:}")
done
apt_updated=0
apt_update() { ((apt_updated)) || apt-get update -qq; apt_updated=1; }
if ((${#need[@]})); then
  [[ $(id -u) == 0 ]] || die "missing ${need[*]} (install them, or run as root)"
  log "installing ${need[*]}"
  apt_update
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

BUILD=$OUT/build
rm -rf "$BUILD"
mkdir -p "$BUILD"
# apt-get download as root warns when _apt cannot write the directory; harmless.
fetch_deb() { # PACKAGE: unpack the package's files into $BUILD/x-PACKAGE
  local deb
  (cd "$BUILD" && apt-get download "$1" >/dev/null 2>&1) \
    || { apt_update; (cd "$BUILD" && apt-get download "$1" >/dev/null 2>&1); } \
    || die "apt-get download $1 failed"
  deb=$(find "$BUILD" -maxdepth 1 -name "$1_*.deb" | head -1)
  [[ -n $deb ]] || die "apt-get download $1 left no .deb"
  dpkg-deb -x "$deb" "$BUILD/x-$1"
}

if [[ ! -s $OUT/vmlinuz ]]; then
  pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null \
    | awk '/Depends: linux-image-[0-9]/{print $2; exit}' || true)
  if [[ -z $pkg ]]; then
    apt_update
    pkg=$(apt-cache depends linux-image-cloud-amd64 \
      | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  fi
  [[ -n $pkg ]] || die "cannot find the Debian cloud kernel package"
  log "fetching $pkg"
  fetch_deb "$pkg"
  kernel=$(find "$BUILD/x-$pkg/boot" -name 'vmlinuz-*' | head -1)
  [[ -n $kernel ]] || die "$pkg holds no vmlinuz"
  cp "$kernel" "$OUT/vmlinuz.tmp"
  mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
fi

log "building the initramfs"
fetch_deb busybox-static
root=$BUILD/root
mkdir -p "$root"/{bin,dev,proc,sys,data}
cp "$BUILD/x-busybox-static/bin/busybox" "$root/bin/busybox"
cat >"$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs -o size=40m data /data
token=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
dd if=/dev/urandom of=/data/blob bs=1M count=32 2>/dev/null
sum=$(md5sum /data/blob | cut -d' ' -f1)
echo "GUEST-READY $token $sum" >/dev/console
n=0
while :; do
  n=$((n + 1))
  echo "GUEST-TICK $token $n $(md5sum /data/blob | cut -d' ' -f1)" >/dev/console
  sleep 1
done
INIT
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -6 >"$OUT/initrd.cpio.gz.tmp")
mv "$OUT/initrd.cpio.gz.tmp" "$OUT/initrd.cpio.gz"
echo "$KEY" >"$OUT/key"
rm -rf "$BUILD"
log "guest ready in $OUT"
