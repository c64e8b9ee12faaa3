#!/usr/bin/env python3
"""How small can guest memory get? Compress the distinct non-zero 4 KiB pages of
memory files per page (what stasis stores today), with a trained zstd dictionary,
and in frames of N distinct pages; prints MiB per method.

    tools/mem-compress-study.py /work/corpus/mem/*.mem

Needs python's zstandard (pip install zstandard). Pages are deduplicated by hash
across all files, in file order, as a repository would see them.
"""
import hashlib
import random
import sys
import time

import zstandard as z

PAGE = 4096


def distinct_pages(paths):
    seen, pages = set(), []
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        for i in range(0, len(data), PAGE):
            p = data[i : i + PAGE]
            if p.count(0) == len(p):
                continue
            h = hashlib.blake2b(p, digest_size=16).digest()
            if h not in seen:
                seen.add(h)
                pages.append(p)
    return pages


def per_page(pages, level, dict_data=None):
    c = z.ZstdCompressor(level=level, dict_data=dict_data) if dict_data else z.ZstdCompressor(level=level)
    # A block that does not shrink is stored raw.
    return sum(min(len(c.compress(p)), len(p)) for p in pages)


def grouped(pages, level, n):
    c = z.ZstdCompressor(level=level)
    return sum(len(c.compress(b"".join(pages[i : i + n]))) for i in range(0, len(pages), n))


def main():
    paths = sys.argv[1:]
    if not paths:
        sys.exit(__doc__)
    pages = distinct_pages(paths)
    mib = lambda n: n / 2**20
    print(f"{len(pages)} distinct non-zero pages, {mib(len(pages) * PAGE):.1f} MiB")
    for level in (1, 3):
        t = time.time()
        print(f"per page, level {level}: {mib(per_page(pages, level)):.1f} MiB ({time.time() - t:.1f} s)")
    sample = random.Random(1).sample(pages, min(len(pages), 20000))
    for size in (64 << 10, 112 << 10):
        d = z.train_dictionary(size, sample, level=1)
        for level in (1, 3):
            print(f"per page, {size >> 10} KiB dictionary, level {level}: {mib(per_page(pages, level, d)):.1f} MiB")
    for n in (4, 8, 16, 32):
        for level in (1, 3):
            print(f"frames of {n} pages, level {level}: {mib(grouped(pages, level, n)):.1f} MiB")


if __name__ == "__main__":
    main()
