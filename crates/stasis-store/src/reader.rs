//! Reading payloads back: random access by offset, and whole-file restore.

use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use serde::Serialize;

use crate::error::{IoContext, Result};
use crate::id::BlockId;
use crate::manifest::{self, BlockRef, Manifest};
use crate::store::Store;

/// Reads one payload by offset, through the store's block cache.
#[derive(Debug)]
pub struct PayloadReader<'s> {
    store: &'s Store,
    manifest: Manifest,
}

impl<'s> PayloadReader<'s> {
    /// A reader of `manifest`'s payload.
    pub fn new(store: &'s Store, manifest: Manifest) -> Result<Self> {
        manifest.validate()?;
        Ok(PayloadReader { store, manifest })
    }

    /// The payload's size.
    pub fn size(&self) -> u64 {
        self.manifest.size
    }

    /// Fill `buf` from `offset`; returns the bytes read (short only at the end).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let m = &self.manifest;
        if offset >= m.size || buf.is_empty() {
            return Ok(0);
        }
        let len = (buf.len() as u64).min(m.size - offset) as usize;
        let bs = u64::from(m.block_size);
        let first = offset / bs;
        let last = (offset + len as u64 - 1) / bs;
        let mut err = None;
        manifest::visit_blocks(self.store, m, first..last + 1, &mut |i, n, r| {
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

    /// Hint that bytes `range` will be read soon: the store prefetches the packs of
    /// the data blocks there (see [`Store::prefetch`]).
    pub fn prefetch(&self, range: std::ops::Range<u64>) -> Result<()> {
        let m = &self.manifest;
        let end = range.end.min(m.size);
        if range.start >= end {
            return Ok(());
        }
        let bs = u64::from(m.block_size);
        let mut ids = Vec::new();
        manifest::visit_blocks(
            self.store,
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

    /// The data regions (blocks that are neither holes nor zeros), as byte ranges.
    pub fn data_ranges(&self) -> Result<Vec<std::ops::Range<u64>>> {
        let m = &self.manifest;
        let bs = u64::from(m.block_size);
        let mut out: Vec<std::ops::Range<u64>> = Vec::new();
        manifest::visit_blocks(self.store, m, 0..m.nblocks(), &mut |i, n, r| {
            if let BlockRef::Data(_) = r {
                let (a, b) = (i * bs, ((i + n) * bs).min(m.size));
                match out.last_mut() {
                    Some(l) if l.end == a => l.end = b,
                    _ => out.push(a..b),
                }
            }
            Ok(())
        })?;
        Ok(out)
    }
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

/// Write `manifest`'s payload into `out` (a new, empty file): data blocks are written
/// at their offsets, holes and zero blocks are left as holes.
///
/// One worker per rayon thread claims runs of blocks in file order (so the packs are
/// read roughly in order), decodes and checks each block and writes the run; a
/// prefetcher thread hints the packs of the next window to the backend, so the workers
/// seldom wait on the disk and never on each other. The first error stops the workers.
pub fn restore(
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
