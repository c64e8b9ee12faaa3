//! Reading payloads back: random access by offset, and whole-file restore.

use std::fs::File;
use std::os::unix::fs::FileExt;

use rayon::prelude::*;
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

/// Write `manifest`'s payload into `out` (a new, empty file): data blocks are written
/// in parallel at their offsets, holes and zero blocks are left as holes.
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
    let per_chunk = ((32u64 << 20) / bs).max(1) as usize;
    let mut written = 0u64;
    let chunks: Vec<&[(u64, BlockId)]> = blocks.chunks(per_chunk).collect();
    if let Some(first) = chunks.first() {
        store.prefetch(first.iter().map(|(_, id)| id));
    }
    for (k, chunk) in chunks.iter().enumerate() {
        // The next chunk's packs are fetched while this one is decoded and written.
        if let Some(next) = chunks.get(k + 1) {
            store.prefetch(next.iter().map(|(_, id)| id));
        }
        let n: Result<Vec<u64>> = chunk
            .par_iter()
            .map(|(i, id)| {
                let data = store.read_blob(id)?;
                if data.len() != m.block_len(*i) {
                    return Err(crate::Error::corrupt(format!(
                        "block {id} has the wrong length for block {i}"
                    )));
                }
                out.write_all_at(&data, i * bs)
                    .ctx(|| "writing the restored file".to_string())?;
                Ok(data.len() as u64)
            })
            .collect();
        let n: u64 = n?.iter().sum();
        written += n;
        progress(n);
    }
    out.set_len(m.size)
        .ctx(|| "setting the restored file's size".to_string())?;
    Ok(RestoreStats {
        size: m.size,
        written,
    })
}
