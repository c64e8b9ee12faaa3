#!/usr/bin/env python3
"""Write a sparse "diff layer" of NEW against OLD.

usage: imgdiff.py OLD NEW OUT [--block-size 4096]

OUT gets the length of NEW and holds, at the same offsets, only the blocks of
NEW that differ from OLD; everything else is a hole. A changed block whose new
content is all zeros is still written as data (a hole means "unchanged", not
"zero"), like a Firecracker diff snapshot. OLD shorter than NEW reads as zeros
past its end. OUT is written to OUT.tmp and renamed when complete.

Prints one line of counts to stdout.
"""
import argparse
import os
import sys

WINDOW = 8 << 20  # bytes compared at once before looking at single blocks


def read_full(fd, size, off):
    buf = os.pread(fd, size, off)
    if len(buf) < size:  # past EOF of the shorter file: zeros
        buf += bytes(size - len(buf))
    return buf


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("out")
    ap.add_argument("--block-size", type=int, default=4096)
    a = ap.parse_args()
    bs = a.block_size
    if bs <= 0 or WINDOW % bs:
        sys.exit("block size must divide %d" % WINDOW)

    fo = os.open(a.old, os.O_RDONLY)
    fn = os.open(a.new, os.O_RDONLY)
    length = os.fstat(fn).st_size
    tmp = a.out + ".tmp"
    fw = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.ftruncate(fw, length)
    zero = bytes(bs)
    changed = zero_changed = 0
    off = 0
    while off < length:
        n = min(WINDOW, length - off)
        nb = read_full(fn, n, off)
        ob = read_full(fo, n, off)
        if nb != ob:
            mn, mo = memoryview(nb), memoryview(ob)
            for i in range(0, n, bs):
                blk = mn[i:i + bs]
                if blk != mo[i:i + bs]:
                    os.pwrite(fw, blk, off + i)
                    changed += 1
                    if blk == zero[:len(blk)]:
                        zero_changed += 1
        off += n
    os.fsync(fw)
    os.close(fw)
    os.close(fo)
    os.close(fn)
    os.rename(tmp, a.out)
    print("%s: %d changed %d-byte blocks (%.1f MiB), %d of them all-zero, "
          "image length %d" % (a.out, changed, bs, changed * bs / 2**20,
                               zero_changed, length))


if __name__ == "__main__":
    main()
