//! Reading payloads back: random access by offset, and whole-file restore.

use std::fs::File;
use std::ops::{Deref, Range};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use serde::Serialize;

use crate::error::{IoContext, Result};
use crate::id::BlockId;
use crate::manifest::{self, BlockRef, Manifest};
use crate::store::Store;

/// Requests at least this large are taken for a sequential reader's (a kernel's
/// readahead, an HTTP body streamed in pieces, a copy loop), and read ahead of.
pub const SEQUENTIAL_REQUEST: u64 = 256 << 10;
/// How far ahead of a sequential reader the packs of its blocks are prefetched.
pub const READ_AHEAD: u64 = 8 << 20;

/// Reads one payload: the one read path of the mount, the HTTP API and restore.
///
/// It owns what every reader needs:
/// - **holes**: holes and zero blocks read as zeros without touching storage; the data
///   regions are worked out once ([`data_ranges`](Self::data_ranges)) for
///   SEEK_DATA/SEEK_HOLE and for answering all-hole reads without a buffer
///   ([`read_holes`](Self::read_holes));
/// - **prefetch**: a request of at least `SEQUENTIAL_REQUEST` bytes asks the store for
///   the packs of the next `READ_AHEAD` bytes, each stretch once, so cold blocks are
///   read from storage while earlier ones are decoded; restore prefetches a window
///   ahead of its workers;
/// - **index reloads**: every block is found through [`Store`], which loads the index
///   again when a block is not in it (another process stored it since) or its pack is
///   gone (gc repacked it), so a long-lived reader sees what was committed after it
///   started.
///
/// Every block is checked against its id; corrupt bytes are an error, never returned.
///
/// `S` is how the reader holds the store: `&Store` for a reader that lives in one
/// call, `Arc<Store>` (the default) for one kept with an open file.
#[derive(Debug)]
pub struct PayloadReader<S: Deref<Target = Store> = Arc<Store>> {
    store: S,
    manifest: Manifest,
    /// Data regions (holes and zero blocks left out), sorted, worked out once.
    ranges: OnceLock<Vec<Range<u64>>>,
    /// How far a sequential reader's packs have been prefetched.
    prefetched: AtomicU64,
}

impl<S: Deref<Target = Store>> PayloadReader<S> {
    /// A reader of `manifest`'s payload in `store`.
    pub fn new(store: S, manifest: Manifest) -> Result<Self> {
        manifest.validate()?;
        Ok(PayloadReader {
            store,
            manifest,
            ranges: OnceLock::new(),
            prefetched: AtomicU64::new(0),
        })
    }

    /// The payload's size.
    pub fn size(&self) -> u64 {
        self.manifest.size
    }

    /// The manifest read.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Fill `buf` from `offset`; returns the bytes read (short only at the end). A
    /// request of at least `SEQUENTIAL_REQUEST` bytes reads ahead past it.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let n = self.read_blocks(offset, buf)?;
        if buf.len() as u64 >= SEQUENTIAL_REQUEST {
            self.read_ahead(offset + n as u64);
        }
        Ok(n)
    }

    /// Whether `offset..offset + len` (cut at the end) lies wholly in holes and zero
    /// blocks, so the caller may answer zeros without reading. Counted as a read: a
    /// large request still reads ahead past it.
    pub fn read_holes(&self, offset: u64, len: u64) -> Result<bool> {
        let end = offset.saturating_add(len).min(self.manifest.size);
        let meets = meets(self.data_ranges()?, offset, end);
        if !meets && len >= SEQUENTIAL_REQUEST {
            self.read_ahead(end);
        }
        Ok(!meets)
    }

    /// `lseek(SEEK_DATA)`: the first data byte at or after `offset`, if any.
    pub fn seek_data(&self, offset: u64) -> Result<Option<u64>> {
        Ok(self
            .data_ranges()?
            .iter()
            .find(|r| r.end > offset)
            .map(|r| r.start.max(offset)))
    }

    /// `lseek(SEEK_HOLE)`: the first hole byte at or after `offset` (the end of the
    /// payload counts as a hole).
    pub fn seek_hole(&self, offset: u64) -> Result<u64> {
        Ok(self
            .data_ranges()?
            .iter()
            .find(|r| r.start <= offset && offset < r.end)
            .map_or(offset, |r| r.end))
    }

    /// Fill `buf` from `offset` through the store's caches.
    fn read_blocks(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let m = &self.manifest;
        if offset >= m.size || buf.is_empty() {
            return Ok(0);
        }
        let len = (buf.len() as u64).min(m.size - offset) as usize;
        let bs = u64::from(m.block_size);
        let first = offset / bs;
        let last = (offset + len as u64 - 1) / bs;
        let mut err = None;
        manifest::visit_blocks(&*self.store, m, first..last + 1, &mut |i, n, r| {
            // The part of `buf` that blocks i..i+n cover.
            let lo = (i * bs).max(offset);
            let hi = ((i + n) * bs).min(offset + len as u64);
            let dst = &mut buf[(lo - offset) as usize..(hi - offset) as usize];
            match r {
                BlockRef::Hole | BlockRef::Zero => dst.fill(0),
                BlockRef::Data(id) => {
                    let data = self.store.block(&id)?;
                    let s = (lo - i * bs) as usize;
                    match data.get(s..s + dst.len()) {
                        Some(src) => dst.copy_from_slice(src),
                        None => {
                            err = Some(crate::Error::corrupt(format!(
                                "block {id} is shorter than its place"
                            )));
                        }
                    }
                }
            }
            Ok(())
        })?;
        match err {
            Some(e) => Err(e),
            None => Ok(len),
        }
    }

    /// After a sequential read ending at `end`, ask the store for the packs of the
    /// next [`READ_AHEAD`] bytes. Each stretch is asked for once: `prefetched` records
    /// how far it went, and a reader that jumps elsewhere starts a new stretch.
    fn read_ahead(&self, end: u64) {
        let limit = end.saturating_add(READ_AHEAD).min(self.manifest.size);
        let done = self.prefetched.load(Ordering::Relaxed);
        let from = if (end..limit).contains(&done) {
            done
        } else {
            end
        };
        if from >= limit
            || self
                .prefetched
                .compare_exchange(done, limit, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        // Only a hint: a failure here shows up, if at all, on the read itself.
        let _ = self.prefetch(from..limit);
    }

    /// Hint that bytes `range` will be read soon: the store prefetches the packs of
    /// the data blocks there (see [`Store::prefetch`]).
    pub fn prefetch(&self, range: Range<u64>) -> Result<()> {
        let m = &self.manifest;
        let end = range.end.min(m.size);
        if range.start >= end {
            return Ok(());
        }
        let bs = u64::from(m.block_size);
        let mut ids = Vec::new();
        manifest::visit_blocks(
            &*self.store,
            m,
            range.start / bs..end.div_ceil(bs),
            &mut |_, _, r| {
                if let BlockRef::Data(id) = r {
                    ids.push(id);
                }
                Ok(())
            },
        )?;
        self.store.prefetch(&ids);
        Ok(())
    }

    /// The data regions (blocks that are neither holes nor zeros), as sorted, disjoint
    /// byte ranges; worked out on first use.
    pub fn data_ranges(&self) -> Result<&[Range<u64>]> {
        if let Some(r) = self.ranges.get() {
            return Ok(r);
        }
        let m = &self.manifest;
        let bs = u64::from(m.block_size);
        let mut out: Vec<Range<u64>> = Vec::new();
        manifest::visit_blocks(&*self.store, m, 0..m.nblocks(), &mut |i, n, r| {
            if let BlockRef::Data(_) = r {
                let (a, b) = (i * bs, ((i + n) * bs).min(m.size));
                match out.last_mut() {
                    Some(l) if l.end == a => l.end = b,
                    _ => out.push(a..b),
                }
            }
            Ok(())
        })?;
        Ok(self.ranges.get_or_init(|| out))
    }

    /// Write the payload into `out` (a new, empty file): data blocks at their offsets,
    /// holes and zero blocks left as holes; `progress` hears of the bytes written.
    ///
    /// One worker per rayon thread claims runs of blocks in file order (so the packs
    /// are read roughly in order), decodes and checks each block and writes the run; a
    /// prefetcher thread hints the packs of the next window to the backend, so the
    /// workers seldom wait on the disk and never on each other. The first error stops
    /// the workers.
    pub fn restore(&self, out: &File, progress: &(dyn Fn(u64) + Sync)) -> Result<RestoreStats> {
        restore_into(&self.store, &self.manifest, out, progress)
    }
}

/// Whether `start..end` meets any of the sorted, disjoint `ranges`.
fn meets(ranges: &[Range<u64>], start: u64, end: u64) -> bool {
    let i = ranges.partition_point(|r| r.end <= start);
    ranges.get(i).is_some_and(|r| r.start < end)
}

/// What a restore wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RestoreStats {
    /// Logical size.
    pub size: u64,
    /// Bytes written (data blocks); the rest are holes.
    pub written: u64,
}

/// Blocks go out in runs: consecutive data blocks, at most this many bytes, decoded by
/// one worker and written with one `pwritev`. Per-block writes from two threads queued
/// on the output inode's lock (ext4 takes it for every buffered write).
const RUN_BYTES: u64 = 1 << 20;

/// The packs of this many bytes of blocks are prefetched at once, one window ahead of
/// the runs being decoded.
const WINDOW_BYTES: u64 = 32 << 20;

/// [`PayloadReader::restore`].
fn restore_into(
    store: &Store,
    m: &Manifest,
    out: &File,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<RestoreStats> {
    m.validate()?;
    let bs = u64::from(m.block_size);
    let mut blocks: Vec<(u64, BlockId)> = Vec::new();
    manifest::visit_blocks(store, m, 0..m.nblocks(), &mut |i, _, r| {
        if let BlockRef::Data(id) = r {
            blocks.push((i, id));
        }
        Ok(())
    })?;
    let runs = split_runs(&blocks, (RUN_BYTES / bs).max(1) as usize);
    let windows = split_windows(&runs, (WINDOW_BYTES / bs).max(1) as usize);

    let claimed = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let workers = rayon::current_num_threads().max(1);
    let written = std::thread::scope(|s| -> Result<u64> {
        let prefetcher = s.spawn(|| {
            for (w, win) in windows.iter().enumerate() {
                // Window w goes out once the workers have reached window w - 1.
                if let Some(prev) = w.checked_sub(1).and_then(|p| windows.get(p)) {
                    while claimed.load(Ordering::Acquire) < prev.start
                        && !stop.load(Ordering::Acquire)
                    {
                        std::thread::park();
                    }
                }
                if stop.load(Ordering::Acquire) {
                    return;
                }
                let ids = runs[win.clone()]
                    .iter()
                    .flat_map(|r| r.iter().map(|(_, id)| id));
                store.prefetch(ids);
            }
        });
        let wake = prefetcher.thread().clone();
        let (runs, windows, claimed, stop) = (&runs, &windows, &claimed, &stop);
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let wake = wake.clone();
                s.spawn(move || -> Result<u64> {
                    let mut n = 0u64;
                    let mut buf = Vec::new();
                    while !stop.load(Ordering::Acquire) {
                        let k = claimed.fetch_add(1, Ordering::AcqRel);
                        let Some(run) = runs.get(k) else { break };
                        // The prefetcher waits for the workers to enter a window.
                        if windows.binary_search_by_key(&k, |w| w.start).is_ok() {
                            wake.unpark();
                        }
                        match write_run(store, m, out, run, &mut buf) {
                            Ok(w) => {
                                n += w;
                                progress(w);
                            }
                            Err(e) => {
                                stop.store(true, Ordering::Release);
                                wake.unpark();
                                return Err(e);
                            }
                        }
                    }
                    Ok(n)
                })
            })
            .collect();
        let mut total = Ok(0u64);
        for h in handles {
            let r = h.join().unwrap_or_else(|p| {
                // Free a parked prefetcher first, or the scope would wait for it forever.
                stop.store(true, Ordering::Release);
                wake.unpark();
                std::panic::resume_unwind(p)
            });
            total = match (total, r) {
                (Ok(a), Ok(b)) => Ok(a + b),
                (Err(e), _) | (_, Err(e)) => Err(e),
            };
        }
        stop.store(true, Ordering::Release);
        wake.unpark();
        total
    })?;
    out.set_len(m.size)
        .ctx(|| "setting the restored file's size".to_string())?;
    Ok(RestoreStats {
        size: m.size,
        written,
    })
}

/// Split `blocks` (in index order) into runs of consecutive indices, at most `max` each.
fn split_runs(blocks: &[(u64, BlockId)], max: usize) -> Vec<&[(u64, BlockId)]> {
    let mut runs = Vec::new();
    let mut start = 0;
    for k in 1..=blocks.len() {
        let breaks = k == blocks.len() || blocks[k].0 != blocks[k - 1].0 + 1 || k - start >= max;
        if breaks {
            runs.push(&blocks[start..k]);
            start = k;
        }
    }
    runs
}

/// Group runs into windows of at least `blocks` blocks each (the last may be smaller),
/// as ranges of run indices.
fn split_windows(runs: &[&[(u64, BlockId)]], blocks: usize) -> Vec<std::ops::Range<usize>> {
    let mut windows = Vec::new();
    let (mut start, mut n) = (0, 0);
    for (k, r) in runs.iter().enumerate() {
        n += r.len();
        if n >= blocks || k + 1 == runs.len() {
            windows.push(start..k + 1);
            (start, n) = (k + 1, 0);
        }
    }
    windows
}

/// Decode, check and write one run of consecutive blocks; returns the bytes written.
fn write_run(
    store: &Store,
    m: &Manifest,
    out: &File,
    run: &[(u64, BlockId)],
    buf: &mut Vec<u8>,
) -> Result<u64> {
    let Some(&(first, _)) = run.first() else {
        return Ok(0);
    };
    let len: usize = run.iter().map(|(i, _)| m.block_len(*i)).sum();
    buf.resize(len, 0);
    let mut at = 0;
    for (i, id) in run {
        let n = m.block_len(*i);
        store.read_block_into(id, &mut buf[at..at + n])?;
        at += n;
    }
    write_all_at(out, buf, first * u64::from(m.block_size))
        .ctx(|| "writing the restored file".to_string())
}

/// `pwrite` all of `buf` at `at`, resuming after short writes.
fn write_all_at(out: &File, buf: &[u8], at: u64) -> std::io::Result<u64> {
    let mut done = 0usize;
    while done < buf.len() {
        match rustix::io::pwrite(out, &buf[done..], at + done as u64) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(buf.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn blocks(idx: &[u64]) -> Vec<(u64, BlockId)> {
        idx.iter()
            .map(|&i| (i, BlockId::of(&i.to_le_bytes())))
            .collect()
    }

    fn indices(runs: &[&[(u64, BlockId)]]) -> Vec<Vec<u64>> {
        runs.iter()
            .map(|r| r.iter().map(|(i, _)| *i).collect())
            .collect()
    }

    #[test]
    fn runs_break_at_gaps_and_at_the_limit() {
        let b = blocks(&[0, 1, 2, 3, 4, 7, 8, 10]);
        let runs = split_runs(&b, 3);
        assert_eq!(
            indices(&runs),
            vec![vec![0, 1, 2], vec![3, 4], vec![7, 8], vec![10]]
        );
        assert!(split_runs(&[], 3).is_empty());
        let w = split_windows(&runs, 4);
        assert_eq!(w, vec![0..2, 2..4]);
        assert_eq!(split_windows(&runs, 100), vec![0..4]);
        assert!(split_windows(&[], 4).is_empty());
    }

    proptest! {
        /// `meets` agrees with checking every range.
        #[test]
        fn meets_is_an_overlap_test(
            gaps in proptest::collection::vec((1u64..50, 1u64..50), 0..20),
            start in 0u64..1500,
            len in 1u64..200,
        ) {
            let mut ranges = Vec::new();
            let mut at = 0;
            for (gap, n) in gaps {
                ranges.push(at + gap..at + gap + n);
                at += gap + n;
            }
            let end = start + len;
            let want = ranges.iter().any(|r| r.start < end && start < r.end);
            prop_assert_eq!(meets(&ranges, start, end), want);
        }

        /// Runs cover every block once, in order, consecutive inside, at most `max`;
        /// windows cover every run once, in order.
        #[test]
        fn runs_and_windows_partition(
            gaps in proptest::collection::vec(0u64..3, 0..200),
            max in 1usize..20,
            per in 1usize..50,
        ) {
            let mut idx = Vec::new();
            let mut at = 0;
            for g in gaps {
                at += g;
                idx.push(at);
                at += 1;
            }
            let b = blocks(&idx);
            let runs = split_runs(&b, max);
            prop_assert_eq!(indices(&runs).concat(), idx);
            for r in &runs {
                prop_assert!(!r.is_empty() && r.len() <= max);
                prop_assert!(r.windows(2).all(|p| p[1].0 == p[0].0 + 1));
            }
            let w = split_windows(&runs, per);
            let flat: Vec<usize> = w.iter().flat_map(|r| r.clone()).collect();
            prop_assert_eq!(flat, (0..runs.len()).collect::<Vec<_>>());
        }
    }
}
