#!/usr/bin/env python3
"""Page-level statistics of guest memory files (or any images), for stasis design.

usage: tools/memstats.py [--json OUT.json] [--chunks 4,16,64,...] FILE...

Per file: size, allocated bytes (st_blocks), fraction of 4 KiB pages that are all
zero, distinct non-zero pages, `zstd -1` size of the whole file (zstd CLI).
Per pair of files (each ordered pair, in the order given): of the non-zero pages of
the second, the fraction whose exact content appears anywhere in the first (any offset)
and the fraction identical to the first at the same offset.
Across all files: distinct non-zero pages, and the sum of per-page `zstd -1` sizes of
those distinct pages (python `zstandard` if installed; otherwise the zstd CLI on
batches of 256 pages, which is an approximation: per-frame overhead is shared).
With --chunks (KiB, default 4,16,64,256,1024): the same dedupe + per-chunk zstd -1
figures for bigger fixed chunks (a chunk counts as zero when all its bytes are).
"""
import argparse
import hashlib
import json
import mmap
import os
import shutil
import subprocess
import sys

PAGE = 4096

try:
    import zstandard
except ImportError:  # fall back to the zstd CLI
    zstandard = None


def digests(path, size):
    """List of 16-byte digests per SIZE-byte chunk of PATH; None for an all-zero chunk."""
    zero = bytes(size)
    out = []
    with open(path, "rb") as f:
        length = os.fstat(f.fileno()).st_size
        if length == 0:
            return out
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            for off in range(0, length, size):
                chunk = m[off:off + size]
                if chunk == zero[:len(chunk)]:
                    out.append(None)
                else:
                    out.append(hashlib.blake2b(chunk, digest_size=16).digest())
    return out


def zstd_cli_size(path):
    p = subprocess.run(["zstd", "-1", "-q", "-c", path], stdout=subprocess.PIPE, check=True)
    return len(p.stdout)


def unique_chunks(paths, size, digs):
    """Yield (digest, bytes) for each distinct non-zero chunk over PATHS, first seen."""
    seen = set()
    for path in paths:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            for i, d in enumerate(digs[path]):
                if d is None or d in seen:
                    continue
                seen.add(d)
                yield m[i * size:(i + 1) * size]


def zstd_unique_size(paths, size, digs):
    """Sum of zstd -1 sizes of each distinct non-zero chunk compressed on its own."""
    total = 0
    if zstandard is not None:
        c = zstandard.ZstdCompressor(level=1)
        for chunk in unique_chunks(paths, size, digs):
            total += len(c.compress(chunk))
        return total, "zstandard, one frame per chunk"
    batch = []

    def flush():
        nonlocal total
        if batch:
            p = subprocess.run(["zstd", "-1", "-q", "-c"], input=b"".join(batch),
                               stdout=subprocess.PIPE, check=True)
            total += len(p.stdout)
            batch.clear()

    for chunk in unique_chunks(paths, size, digs):
        batch.append(chunk)
        if len(batch) >= max(1, (1 << 20) // size):
            flush()
    flush()
    return total, "zstd CLI on 1 MiB batches (approximation)"


def pct(a, b):
    return 100.0 * a / b if b else 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--json", help="also write the figures as JSON here")
    ap.add_argument("--chunks", default="4,16,64,256,1024",
                    help="chunk sizes in KiB for the dedupe/compression table ('' for 4 only)")
    args = ap.parse_args()
    paths = args.files
    have_cli = shutil.which("zstd") is not None
    res = {"page": PAGE, "files": {}, "pairs": [], "all": {}, "chunks": []}

    digs = {p: digests(p, PAGE) for p in paths}
    cli_total = 0
    print(f"{'file':<24} {'size MiB':>9} {'alloc MiB':>9} {'zero %':>7} "
          f"{'distinct nz':>11} {'zstd-1 MiB':>10}")
    for p in paths:
        st = os.stat(p)
        d = digs[p]
        nz = [x for x in d if x is not None]
        z = zstd_cli_size(p) if have_cli else None
        cli_total += z or 0
        r = {"size": st.st_size, "allocated": st.st_blocks * 512, "pages": len(d),
             "zero_pages": len(d) - len(nz), "zero_frac": (len(d) - len(nz)) / len(d) if d else 0,
             "distinct_nonzero_pages": len(set(nz)), "zstd1_cli_bytes": z}
        res["files"][p] = r
        print(f"{os.path.basename(p):<24} {st.st_size / 2**20:9.1f} {r['allocated'] / 2**20:9.1f} "
              f"{100 * r['zero_frac']:7.2f} {r['distinct_nonzero_pages']:11d} "
              f"{(z or 0) / 2**20:10.1f}")

    print("\npairs: of the non-zero pages of NEW, % found anywhere in OLD / % same at same offset")
    for i, a in enumerate(paths):
        for j, b in enumerate(paths):
            if i == j:
                continue
            da, db = digs[a], digs[b]
            set_a = {x for x in da if x is not None}
            nz_b = [k for k, x in enumerate(db) if x is not None]
            anywhere = sum(1 for k in nz_b if db[k] in set_a)
            same = sum(1 for k in nz_b if k < len(da) and da[k] == db[k])
            r = {"old": a, "new": b, "new_nonzero_pages": len(nz_b),
                 "found_anywhere_frac": anywhere / len(nz_b) if nz_b else 0,
                 "same_offset_frac": same / len(nz_b) if nz_b else 0}
            res["pairs"].append(r)
            print(f"  old {os.path.basename(a):<20} new {os.path.basename(b):<20} "
                  f"anywhere {100 * r['found_anywhere_frac']:6.2f} %  "
                  f"same offset {100 * r['same_offset_frac']:6.2f} %  (of {len(nz_b)} pages)")

    sizes = [4]
    if args.chunks:
        sizes = sorted({int(x) for x in args.chunks.split(",") if x})
    total_bytes = sum(os.stat(p).st_size for p in paths)
    print(f"\nall {len(paths)} files: {total_bytes / 2**20:.1f} MiB, zstd -1 of each file "
          f"(CLI) summed: {cli_total / 2**20:.1f} MiB")
    print(f"{'chunk KiB':>9} {'nz chunks':>10} {'distinct':>9} {'distinct MiB':>12} "
          f"{'zstd-1 of distinct MiB':>22}  method")
    for kib in sizes:
        size = kib * 1024
        d = digs if size == PAGE else {p: digests(p, size) for p in paths}
        nz = [x for p in paths for x in d[p] if x is not None]
        distinct = len(set(nz))
        zsum, method = zstd_unique_size(paths, size, d)
        r = {"chunk": size, "nonzero_chunks": len(nz), "distinct_nonzero_chunks": distinct,
             "distinct_bytes": distinct * size, "zstd1_distinct_bytes": zsum, "method": method}
        res["chunks"].append(r)
        if size == PAGE:
            res["all"] = {"total_bytes": total_bytes, "zstd1_cli_sum_bytes": cli_total,
                          "distinct_nonzero_pages": distinct, "zstd1_distinct_pages_bytes": zsum}
        print(f"{kib:9d} {len(nz):10d} {distinct:9d} {distinct * size / 2**20:12.1f} "
              f"{zsum / 2**20:22.1f}  {method}")

    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
