#!/usr/bin/env python3
"""Would delta-compressing guest memory pages against similar stored pages close the
memory target? Stores the three memory files in order (A-t1, A-t2, B) the way a
repository sees them (distinct non-zero 4 KiB pages, deduplicated across files) and,
for the pages each file adds, prints the bytes of:

  - frames of 64 new pages, zstd -1 (what stasis stores today);
  - each page alone with a reference page as a raw-content zstd dictionary, keeping
    the smaller of that and the page alone. The reference is the previous file's page
    at the same offset, or the stored page sharing the most of 4 min-hash features
    over the page's 8-byte words.

and, with the reference found by similarity (the best of 4 features, or only the first
feature cut to 32 bits, as an index of 4 bytes per stored page would hold):

  - hybrid: a page becomes a delta on its reference (as above, plus its 32-byte id)
    when that takes at most half of the page alone; the rest go into frames of 64;
  - xor: a page is replaced by its XOR with its reference when that compresses to at
    most half of the page alone (plus 32 bytes for the reference's id), and all pages
    go into frames of 64 as before;
  - xor by word count (what stasis does): as xor, with the first feature only, deciding
    by how many non-zero 8-byte words the XOR leaves instead of by compressing.

    tools/mem-delta-study.py guestA-t1.mem guestA-t2.mem guestB.mem

Needs python's zstandard and numpy. Compare with
`zstd -1 --long=30 --patch-from=OLD NEW`, which finds matches anywhere in OLD.
"""
import hashlib
import sys

import numpy as np
import zstandard as z

PAGE = 4096
WORDS = PAGE // 8
MULS = [np.uint64(m) for m in (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93)]


def load(path):
    return np.fromfile(path, dtype=np.uint64).reshape(-1, WORDS)


def features(pages):
    """Min-hash of the non-zero 8-byte words, one per multiplier: pages x 4."""
    out = []
    with np.errstate(over="ignore"):
        for m in MULS:
            x = pages * m
            x ^= x >> np.uint64(29)
            x = x * m
            out.append(np.where(pages == 0, np.uint64(2**64 - 1), x).min(axis=1))
    return np.stack(out, axis=1)


def key(page):
    return hashlib.blake2b(page.tobytes(), digest_size=16).digest()


class Repo:
    def __init__(self):
        self.seen = set()
        self.pages = []  # stored page bytes
        self.index = [{} for _ in MULS]  # feature -> stored page
        self.index32 = {}  # first feature's low 32 bits -> stored page

    def new_pages(self, arr):
        rows = np.nonzero(arr.any(axis=1))[0]
        feats = features(arr[rows])
        out = []
        for r, f in zip(rows, feats):
            k = key(arr[r])
            if k in self.seen:
                continue
            self.seen.add(k)
            out.append((int(r), arr[r].tobytes(), [int(x) for x in f]))
        return out

    def similar(self, f):
        votes = {}
        for j, x in enumerate(f):
            s = self.index[j].get(x)
            if s is not None:
                votes[s] = votes.get(s, 0) + 1
        return self.pages[max(votes, key=votes.get)] if votes else None

    def similar32(self, f):
        """The stored page found through the first feature's low 32 bits alone."""
        s = self.index32.get(f[0] & 0xFFFFFFFF)
        return None if s is None else self.pages[s]

    def add(self, new):
        for _, p, f in new:
            s = len(self.pages)
            self.pages.append(p)
            for j, x in enumerate(f):
                self.index[j].setdefault(x, s)
            self.index32.setdefault(f[0] & 0xFFFFFFFF, s)


def delta(page, ref, alone):
    if ref is None:
        return alone
    d = z.ZstdCompressionDict(ref, dict_type=z.DICT_TYPE_RAWCONTENT)
    return min(alone, len(z.ZstdCompressor(level=1, dict_data=d).compress(page)))


def frames(c, pages):
    return sum(len(c.compress(b"".join(pages[i : i + 64]))) for i in range(0, len(pages), 64))


def by_similarity(c, new, pick):
    """(hybrid bytes, deltas, xor bytes, xored pages) with references from pick(f)."""
    hyb, rest, xored, nd, nx = 0, [], [], 0, 0
    for _, p, f in new:
        ref = pick(f)
        if ref is None:
            rest.append(p)
            xored.append(p)
            continue
        alone = min(len(c.compress(p)), PAGE)
        d = z.ZstdCompressionDict(ref, dict_type=z.DICT_TYPE_RAWCONTENT)
        ds = len(z.ZstdCompressor(level=1, dict_data=d).compress(p)) + 32
        if 2 * ds <= alone:
            hyb, nd = hyb + ds, nd + 1
        else:
            rest.append(p)
        x = (np.frombuffer(p, dtype=np.uint64) ^ np.frombuffer(ref, dtype=np.uint64)).tobytes()
        if 2 * len(c.compress(x)) <= alone:
            xored.append(x)
            nx += 1
        else:
            xored.append(p)
    return hyb + frames(c, rest), nd, frames(c, xored) + 32 * nx, nx


def by_word_count(c, new, pick, t):
    """(xor bytes, xored pages) when a page is XORed with its reference wherever that
    leaves at most t times its non-zero 8-byte words non-zero (no compression needed
    to decide, as stasis decides), +34 B per XOR for its reference table entry."""
    xored, nx = [], 0
    for _, p, f in new:
        ref = pick(f)
        page = np.frombuffer(p, dtype=np.uint64)
        if ref is not None:
            x = page ^ np.frombuffer(ref, dtype=np.uint64)
            if np.count_nonzero(page) and np.count_nonzero(x) <= t * np.count_nonzero(page):
                xored.append(x.tobytes())
                nx += 1
                continue
        xored.append(p)
    return frames(c, xored) + 34 * nx, nx


def main():
    paths = sys.argv[1:]
    if len(paths) < 2:
        sys.exit(__doc__)
    c = z.ZstdCompressor(level=1)
    repo, prev = Repo(), None
    for path in paths:
        arr = load(path)
        new = repo.new_pages(arr)
        framed = frames(c, [p for _, p, _ in new])
        same = sim = 0
        for r, p, f in new:
            alone = min(len(c.compress(p)), PAGE)
            ref = prev[r].tobytes() if prev is not None and r < len(prev) and prev[r].any() else None
            same += delta(p, ref, alone)
            sim += delta(p, repo.similar(f), alone)
        print(
            f"{path}: {len(new)} new pages; frames of 64: {framed / 1e6:.2f} MB; "
            f"per page against the same offset before: {same / 1e6:.2f} MB; "
            f"against the most similar stored page: {sim / 1e6:.2f} MB",
            flush=True,
        )
        if repo.pages:
            for name, pick in (("best of 4 features", repo.similar), ("one 32-bit feature", repo.similar32)):
                hyb, nd, xo, nx = by_similarity(c, new, pick)
                print(
                    f"  reference by {name}: hybrid {hyb / 1e6:.2f} MB ({nd} deltas); "
                    f"xor {xo / 1e6:.2f} MB ({nx} pages xored)",
                    flush=True,
                )
            for t in (0.3, 0.5, 0.7):
                xo, nx = by_word_count(c, new, repo.similar32, t)
                print(
                    f"  one 32-bit feature, XOR where at most {t} of the non-zero words stay: "
                    f"{xo / 1e6:.2f} MB ({nx} pages xored)",
                    flush=True,
                )
        repo.add(new)
        prev = arr


if __name__ == "__main__":
    main()
