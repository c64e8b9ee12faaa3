#!/usr/bin/env python3
"""Fixed-size block dedup/compression statistics over a set of images.

usage: blockstats.py FILE... [--block-sizes 4K,16K,64K,256K,1M,4M] [--level 1]
                             [--json OUT]

For each block size, over all FILEs taken as one set (e.g. base, child1,
child2 of a snapshot chain), in the order given:
  - non-zero blocks: blocks that are not all zeros, summed over the files
    (holes are zero blocks and are skipped without reading them)
  - unique non-zero blocks by content hash (BLAKE2b-128) across all files
  - unique bytes, and the sum of per-block `zstd -N` (default 1) compressed
    sizes of the unique blocks, i.e. what a store of independently
    compressed fixed-size blocks would hold
  - per file: non-zero blocks, and the new unique blocks / bytes / zstd bytes
    it adds to the store after the files before it (incremental cost)

Blocks are aligned to multiples of their size from offset 0. The last block
of a file whose length is not a multiple of the size is counted at its real
length. Compression uses the `zstandard` module (pip install zstandard) or
falls back to libzstd through ctypes.
"""
import argparse
import ctypes
import ctypes.util
import hashlib
import json
import os
import sys
import time

SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(s):
    s = s.strip().upper().rstrip("B").rstrip("I")
    unit = s[-1] if s and s[-1] in SUFFIX else ""
    return int(s[: len(s) - len(unit)]) * SUFFIX[unit]


def fmt_size(n):
    for unit, m in (("M", 1 << 20), ("K", 1 << 10)):
        if n % m == 0:
            return "%d%s" % (n // m, unit)
    return str(n)


def make_compressor(level):
    try:
        import zstandard

        c = zstandard.ZstdCompressor(level=level)
        return c.compress, "zstandard %s" % zstandard.__version__
    except ImportError:
        pass
    name = ctypes.util.find_library("zstd") or "libzstd.so.1"
    lib = ctypes.CDLL(name)
    lib.ZSTD_compressBound.restype = ctypes.c_size_t
    lib.ZSTD_compressBound.argtypes = [ctypes.c_size_t]
    lib.ZSTD_compress.restype = ctypes.c_size_t
    lib.ZSTD_compress.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p,
                                  ctypes.c_size_t, ctypes.c_int]
    lib.ZSTD_isError.argtypes = [ctypes.c_size_t]
    bufs = {}

    def compress(data):
        data = bytes(data)
        cap = lib.ZSTD_compressBound(len(data))
        buf = bufs.get(cap)
        if buf is None:
            buf = bufs[cap] = ctypes.create_string_buffer(cap)
        n = lib.ZSTD_compress(buf, cap, data, len(data), level)
        if lib.ZSTD_isError(n):
            raise RuntimeError("ZSTD_compress failed")
        return buf.raw[:n]

    return compress, "libzstd via ctypes (%s)" % name


def data_windows(fd, length, window):
    """Yield window-aligned offsets of windows that contain data (not holes)."""
    off = 0
    last = -1
    while off < length:
        try:
            start = os.lseek(fd, off, os.SEEK_DATA)
        except OSError:  # ENXIO: no more data
            return
        end = os.lseek(fd, start, os.SEEK_HOLE)
        w = start - start % window
        if w <= last:
            w = last + window
        while w < end:
            yield w
            last = w
            w += window
        off = max(end, last + window)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", metavar="FILE")
    ap.add_argument("--block-sizes", default="4K,16K,64K,256K,1M,4M")
    ap.add_argument("--level", type=int, default=1, help="zstd level (default 1)")
    ap.add_argument("--json", help="also write the results as JSON to this file")
    a = ap.parse_args()

    sizes = sorted({parse_size(s) for s in a.block_sizes.split(",") if s.strip()})
    window = max(sizes)
    for bs in sizes:
        if bs <= 0 or window % bs:
            sys.exit("block sizes must divide the largest one (%d)" % window)
    compress, zimpl = make_compressor(a.level)
    names = [os.path.basename(f) for f in a.files]

    # per block size: hash -> compressed size; per-file counters
    seen = {bs: {} for bs in sizes}
    per = {bs: [dict(nonzero=0, new_unique=0, new_unique_bytes=0, new_zstd_bytes=0)
                for _ in a.files] for bs in sizes}
    zero = {bs: bytes(bs) for bs in sizes}
    t0 = time.time()
    for fi, path in enumerate(a.files):
        fd = os.open(path, os.O_RDONLY)
        length = os.fstat(fd).st_size
        for w in data_windows(fd, length, window):
            buf = os.pread(fd, min(window, length - w), w)
            mv = memoryview(buf)
            for bs in sizes:
                st, sn, z = per[bs][fi], seen[bs], zero[bs]
                for i in range(0, len(buf), bs):
                    blk = mv[i:i + bs]
                    if blk == (z if len(blk) == bs else bytes(len(blk))):
                        continue
                    st["nonzero"] += 1
                    h = hashlib.blake2b(blk, digest_size=16).digest()
                    if h not in sn:
                        c = len(compress(blk))
                        sn[h] = c
                        st["new_unique"] += 1
                        st["new_unique_bytes"] += len(blk)
                        st["new_zstd_bytes"] += c
        os.close(fd)
    elapsed = time.time() - t0

    results = []
    for bs in sizes:
        p = per[bs]
        nz = sum(x["nonzero"] for x in p)
        uniq = sum(x["new_unique"] for x in p)
        ub = sum(x["new_unique_bytes"] for x in p)
        zb = sum(x["new_zstd_bytes"] for x in p)
        results.append(dict(block_size=bs, nonzero_blocks=nz, nonzero_bytes=nz * bs,
                            unique_blocks=uniq, unique_bytes=ub, zstd_unique_bytes=zb,
                            files={n: x for n, x in zip(names, p)}))

    mib = lambda n: "%.1f" % (n / 2**20)
    print("Files: %s; zstd level %d (%s); %.1f s" % (", ".join(names), a.level, zimpl, elapsed))
    print()
    print("| block | non-zero blocks (all files) | unique non-zero | unique MiB | "
          "zstd-%d unique MiB | dedup x | zstd x | %s |" % (
              a.level, " | ".join("%s non-zero / new unique / new zstd MiB" % n for n in names)))
    print("|---|---:|---:|---:|---:|---:|---:|%s" % ("---:|" * len(names)))
    for r in results:
        bs = r["block_size"]
        cols = []
        for n in names:
            x = r["files"][n]
            cols.append("%d / %d / %s" % (x["nonzero"], x["new_unique"], mib(x["new_zstd_bytes"])))
        print("| %s | %d | %d | %s | %s | %.2f | %.2f | %s |" % (
            fmt_size(bs), r["nonzero_blocks"], r["unique_blocks"], mib(r["unique_bytes"]),
            mib(r["zstd_unique_bytes"]),
            r["nonzero_bytes"] / r["unique_bytes"] if r["unique_bytes"] else 0,
            r["unique_bytes"] / r["zstd_unique_bytes"] if r["zstd_unique_bytes"] else 0,
            " | ".join(cols)))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(dict(files=a.files, zstd_level=a.level, zstd_impl=zimpl,
                           results=results), fh, indent=2)


if __name__ == "__main__":
    main()
