//! Ingest: turn an input file into stored blocks and a manifest.
//!
//! Full ingest reads only the input's data regions (holes become [`BlockRef::Hole`]
//! without being read), in batches; a reader thread fills the next batch while the
//! current one is hashed, deduplicated and compressed on the rayon pool (both cores).
//! Diff ingest reads only the data regions of a sparse diff layer and applies them over
//! the parent's manifest: a hole in the layer keeps the parent's bytes, written bytes
//! (zeros included) replace them.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::sync_channel;

use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::id::BlockId;
use crate::manifest::{self, BlockRef, Manifest, TreeBuilder};
use crate::source::data_regions;
use crate::store::Writer;

mod policy;
mod write;

/// Bytes read per batch.
const BATCH_BYTES: u64 = 8 << 20;

/// What an ingest saw and stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IngestStats {
    /// Logical size of the payload.
    pub size: u64,
    /// Bytes the payload allocates: the input's data regions for a full ingest; the
    /// merged payload's non-hole blocks for a diff layer.
    pub allocated: u64,
    /// Bytes read from the input.
    pub read: u64,
    /// Blocks with stored data.
    pub data_blocks: u64,
    /// Bytes in those blocks.
    pub data_bytes: u64,
    /// Blocks of written zeros.
    pub zero_blocks: u64,
    /// Hole blocks.
    pub hole_blocks: u64,
    /// Data blocks that were new to the repository.
    pub new_blocks: u64,
    /// Of those, the blocks stored as deltas on their predecessor in the parent.
    pub delta_blocks: u64,
    /// Of those, the blocks stored XORed with a similar stored block.
    pub xor_blocks: u64,
}

/// How [`ingest_full_with`] stores the new blocks of a payload.
#[derive(Clone, Copy, Debug, Default)]
pub struct FullOptions<'a> {
    /// The same payload in the parent snapshot: a new block that replaces a stored
    /// block at the same place is stored as a delta on it when that pays.
    pub parent: Option<&'a Manifest>,
    /// Give new blocks similarity features, and store a new block XORed with a stored
    /// block of the same feature when that pays (`crate::similarity`): for guest
    /// memory, whose pages recur with small edits at other offsets and in other VMs.
    pub similar: bool,
}

/// Progress callback: called with bytes of the input processed since the last call.
pub type Progress<'a> = &'a (dyn Fn(u64) + Sync);

/// Store a batch of blocks (`None` = a hole) and return their references: the
/// [`policy`] decides what each block becomes, then [`write`] stores the blocks it
/// chose to. `bases[k]`, when given, is the block that was at block `k`'s place in the
/// parent; `backing`, when given, is the buffer the blocks were read into; `scratch`
/// keeps buffers from one batch to the next. With `similar`, new blocks get features
/// and may be stored XORed with a similar block (see [`FullOptions`]).
fn store_blocks(
    w: &mut Writer<'_>,
    blocks: &[Option<&[u8]>],
    backing: Option<&[u8]>,
    bases: &[Option<BlockId>],
    similar: bool,
    scratch: &mut Scratch,
    stats: &mut IngestStats,
) -> Result<Vec<BlockRef>> {
    let Scratch { outs, xbuf } = scratch;
    let decided = policy::decide(w, blocks, bases, similar, xbuf, stats)?;
    write::store(w, &decided, xbuf, backing, outs, stats)?;
    Ok(decided.refs)
}

/// Buffers an ingest reuses from one batch to the next: fresh ones each batch would be
/// freed together and trimmed off the heap, to fault in again for the next.
#[derive(Default)]
struct Scratch {
    /// Compression outputs.
    outs: Vec<Vec<u8>>,
    /// XORed blocks, one slot per new block of a batch.
    xbuf: Vec<u8>,
}

fn raw_len(data: &[u8]) -> Result<u32> {
    u32::try_from(data.len()).map_err(|_| Error::new(ErrorKind::InvalidInput, "block too large"))
}

/// One batch of a full ingest: blocks `first..first+present.len()`.
struct Batch {
    first: u64,
    present: Vec<bool>,
    buf: Vec<u8>,
}

fn read_err(e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Error::new(
            ErrorKind::InvalidInput,
            "the input file shrank while it was being read",
        )
    } else {
        Error::io("reading the input", e)
    }
}

/// An input's size and modification time, to tell whether it changed while it was read.
#[derive(Debug, PartialEq, Eq)]
struct Stamp {
    size: u64,
    mtime: (i64, i64),
}

impl Stamp {
    fn of(file: &File) -> Result<Stamp> {
        use std::os::unix::fs::MetadataExt;
        let m = file
            .metadata()
            .map_err(|e| Error::io("reading the input's size", e))?;
        Ok(Stamp {
            size: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
        })
    }

    /// An error unless the input is still `size` bytes and unmodified since `before`.
    fn same_as(&self, before: &Stamp, size: u64) -> Result<()> {
        if self.size != size || self.size != before.size {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "the input file changed size while it was being read ({size} to {} bytes)",
                    self.size
                ),
            ));
        }
        if self.mtime != before.mtime {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "the input file changed while it was being read; pause the VM (or copy \
                 the file) and try again",
            ));
        }
        Ok(())
    }
}

/// Store a whole input file; returns its manifest.
///
/// With a `parent` (the same payload in the parent snapshot, with the same block size),
/// a new block that replaces a stored block of the parent at the same place is stored
/// as a delta on that block when that pays: a guest memory page that changed between
/// two snapshots of one VM usually differs from its old bytes in a few words.
pub fn ingest_full(
    w: &mut Writer<'_>,
    file: &File,
    size: u64,
    block_size: u32,
    parent: Option<&Manifest>,
    progress: Progress<'_>,
) -> Result<(Manifest, IngestStats)> {
    let opts = FullOptions {
        parent,
        similar: false,
    };
    ingest_full_with(w, file, size, block_size, opts, progress)
}

/// [`ingest_full`] with every option: deltas on a parent, similar blocks.
pub fn ingest_full_with(
    w: &mut Writer<'_>,
    file: &File,
    size: u64,
    block_size: u32,
    opts: FullOptions<'_>,
    progress: Progress<'_>,
) -> Result<(Manifest, IngestStats)> {
    // The parent's blocks are looked up only for a session that stores deltas.
    let parent = opts
        .parent
        .filter(|p| p.block_size == block_size && w.stores_deltas());
    let bs = u64::from(block_size);
    let fanout = w.store().config().fanout;
    let before = Stamp::of(file)?;
    let regions = data_regions(file, size)?;
    let nblocks = size.div_ceil(bs);
    let per_batch = (BATCH_BYTES / bs).max(1);
    let mut stats = IngestStats {
        size,
        allocated: regions.iter().map(|r| r.end - r.start).sum(),
        ..Default::default()
    };
    let mut builder = TreeBuilder::new(nblocks, fanout);
    let mut scratch = Scratch::default();

    // Which batches hold data: only those are read.
    let mut batches: Vec<u64> = Vec::new();
    for r in &regions {
        let (a, b) = (r.start / bs / per_batch, (r.end - 1) / bs / per_batch);
        for k in a..=b {
            if batches.last() != Some(&k) {
                batches.push(k);
            }
        }
    }

    let block_len = |i: u64| (size - i * bs).min(bs);
    let (tx, rx) = sync_channel::<Result<Batch>>(2);
    // Batch buffers come back once their blocks are stored, and are read into again
    // without being cleared: only the present blocks' bytes are ever used, and those
    // are all read anew.
    let (free_tx, free_rx) = sync_channel::<Vec<u8>>(4);
    std::thread::scope(|s| -> Result<()> {
        let regions = &regions;
        let batches = &batches;
        s.spawn(move || {
            let mut ri = 0usize;
            for &k in batches {
                let first = k * per_batch;
                let count = per_batch.min(nblocks - first);
                let mut present = vec![false; count as usize];
                let len = (count * bs) as usize;
                let mut buf = match free_rx.try_recv() {
                    Ok(mut b) if b.len() >= len => {
                        b.truncate(len);
                        b
                    }
                    _ => crate::buffer::zeroed(len),
                };
                let lo = first * bs;
                let hi = ((first + count) * bs).min(size);
                while ri > 0 && regions[ri - 1].end > lo {
                    ri -= 1;
                }
                let mut result = Ok(());
                for r in regions[ri..].iter().take_while(|r| r.start < hi) {
                    let (a, b) = (r.start.max(lo), r.end.min(hi));
                    if a >= b {
                        continue;
                    }
                    for i in a / bs..b.div_ceil(bs) {
                        present[(i - first) as usize] = true;
                    }
                    ri += 1;
                }
                // Read each run of present blocks whole (holes inside read as zeros).
                let mut i = 0usize;
                while i < present.len() && result.is_ok() {
                    if !present[i] {
                        i += 1;
                        continue;
                    }
                    let mut j = i;
                    while j < present.len() && present[j] {
                        j += 1;
                    }
                    let off = (first + i as u64) * bs;
                    let end = ((first + j as u64) * bs).min(size);
                    let dst = &mut buf[i * bs as usize..i * bs as usize + (end - off) as usize];
                    result = file.read_exact_at(dst, off).map_err(read_err);
                    i = j;
                }
                let failed = result.is_err();
                if tx
                    .send(result.map(|()| Batch {
                        first,
                        present,
                        buf,
                    }))
                    .is_err()
                    || failed
                {
                    return;
                }
            }
        });
        for msg in rx {
            let batch = msg?;
            // Holes between batches.
            while builder.position() < batch.first {
                builder.push(0, BlockRef::Hole, w)?;
                stats.hole_blocks += 1;
            }
            let blocks: Vec<Option<&[u8]>> = batch
                .present
                .iter()
                .enumerate()
                .map(|(k, &p)| {
                    let i = batch.first + k as u64;
                    let off = k * bs as usize;
                    p.then(|| &batch.buf[off..off + block_len(i) as usize])
                })
                .collect();
            let mut bases: Vec<Option<BlockId>> = Vec::new();
            if let Some(p) = parent {
                bases.resize(blocks.len(), None);
                let end = batch.first + blocks.len() as u64;
                manifest::visit_blocks(w.store(), p, batch.first..end, &mut |i, n, r| {
                    if let BlockRef::Data(id) = r {
                        for j in i..i + n {
                            bases[(j - batch.first) as usize] = Some(id);
                        }
                    }
                    Ok(())
                })
                .map_err(|e| e.context("reading the parent's blocks"))?;
            }
            let refs = store_blocks(
                w,
                &blocks,
                Some(&batch.buf),
                &bases,
                opts.similar,
                &mut scratch,
                &mut stats,
            )?;
            let bytes: u64 = blocks.iter().flatten().map(|b| b.len() as u64).sum();
            drop(blocks);
            // Full-size buffers only: a short last batch's is freed.
            if batch.buf.len() == (per_batch * bs) as usize {
                let _ = free_tx.try_send(batch.buf);
            }
            stats.read += bytes;
            for r in refs {
                builder.push(0, r, w)?;
            }
            progress(bytes);
        }
        Ok(())
    })?;
    // A file that shrank before its data regions were listed reads as holes past its
    // new end, with no read failing: compare it with what it was.
    Stamp::of(file)?.same_as(&before, size)?;
    while builder.position() < nblocks {
        builder.push(0, BlockRef::Hole, w)?;
        stats.hole_blocks += 1;
    }
    let root = builder.finish(w)?;
    Ok((
        Manifest {
            size,
            block_size,
            fanout,
            root,
        },
        stats,
    ))
}

/// Where a layer's written bytes come from.
pub trait LayerSource: Sync {
    /// Fill `buf` with the layer's bytes at logical `offset` (inside one region).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

impl LayerSource for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.read_exact_at(buf, offset)
    }
}

/// Store a sparse diff layer over `parent`: the layer's data regions replace the
/// parent's bytes, its holes keep them. The result has the layer's size.
pub fn ingest_diff(
    w: &mut Writer<'_>,
    file: &File,
    size: u64,
    parent: &Manifest,
    progress: Progress<'_>,
) -> Result<(Manifest, IngestStats)> {
    let before = Stamp::of(file)?;
    let regions = data_regions(file, size)?;
    let out = ingest_layer(w, file, &regions, size, parent, progress)?;
    Stamp::of(file)?.same_as(&before, size)?;
    Ok(out)
}

/// Apply a layer over `parent`: the bytes of `regions` (sorted, disjoint, read from
/// `source`) replace the parent's, everything else keeps them (a diff file's data
/// regions, or the clusters a qcow2 overlay allocated). The result is `size` long.
pub fn ingest_layer(
    w: &mut Writer<'_>,
    source: &dyn LayerSource,
    regions: &[Range<u64>],
    size: u64,
    parent: &Manifest,
    progress: Progress<'_>,
) -> Result<(Manifest, IngestStats)> {
    let store = w.store();
    let bs = u64::from(parent.block_size);
    let new_n = size.div_ceil(bs);
    let parent_n = parent.nblocks();
    let mut stats = IngestStats {
        size,
        allocated: regions.iter().map(|r| r.end - r.start).sum(),
        ..Default::default()
    };

    // Block index -> the parts of it the layer wrote.
    let mut touched: BTreeMap<u64, Vec<Range<u64>>> = BTreeMap::new();
    for r in regions {
        for i in r.start / bs..r.end.div_ceil(bs) {
            let (a, b) = ((i * bs).max(r.start), ((i + 1) * bs).min(r.end));
            touched.entry(i).or_default().push(a..b);
        }
    }
    if size != parent.size {
        // The blocks at either end change length even where the layer wrote nothing.
        for i in [parent_n.wrapping_sub(1), new_n.wrapping_sub(1)] {
            if i < new_n {
                touched.entry(i).or_default();
            }
        }
    }
    let new_m = Manifest { size, ..*parent };
    let per_batch = (BATCH_BYTES / bs).max(1) as usize;
    let todo: Vec<(u64, Vec<Range<u64>>)> = touched.into_iter().collect();
    let mut changes: BTreeMap<u64, BlockRef> = BTreeMap::new();
    let mut scratch = Scratch::default();
    for chunk in todo.chunks(per_batch) {
        let contents: Vec<Result<Vec<u8>>> = chunk
            .par_iter()
            .map(|(i, parts)| {
                let len = new_m.block_len(*i);
                let start = i * bs;
                let whole = parts.len() == 1 && parts[0] == (start..start + len as u64);
                let mut buf = if whole || *i >= parent_n {
                    vec![0u8; len]
                } else {
                    let mut b = match manifest::lookup(store, parent, *i)? {
                        BlockRef::Data(id) => store
                            .block(&id)
                            .map_err(|e| e.context(format!("parent block {i}")))?
                            .to_vec(),
                        BlockRef::Hole | BlockRef::Zero => Vec::new(),
                    };
                    b.resize(len, 0);
                    b
                };
                for p in parts {
                    let dst = &mut buf[(p.start - start) as usize..(p.end - start) as usize];
                    source.read_at(dst, p.start).map_err(read_err)?;
                }
                Ok(buf)
            })
            .collect();
        let contents: Vec<Vec<u8>> = contents.into_iter().collect::<Result<_>>()?;
        let blocks: Vec<Option<&[u8]>> = contents.iter().map(|c| Some(&c[..])).collect();
        let refs = store_blocks(w, &blocks, None, &[], false, &mut scratch, &mut stats)?;
        let bytes: u64 = chunk
            .iter()
            .flat_map(|(_, p)| p)
            .map(|p| p.end - p.start)
            .sum();
        stats.read += bytes;
        progress(bytes);
        for ((i, _), r) in chunk.iter().zip(refs) {
            changes.insert(*i, r);
        }
    }
    let m = manifest::apply_changes(store, parent, size, &changes, w)
        .map_err(|e| e.context("applying the layer"))?;
    // Count what the merged payload holds (the layer's own counts are in `changes`);
    // its allocated bytes are those of the merged file, not of the layer.
    stats.data_blocks = 0;
    stats.data_bytes = 0;
    stats.zero_blocks = 0;
    stats.hole_blocks = 0;
    stats.allocated = 0;
    manifest::visit_blocks(&*w, &m, 0..new_n, &mut |i, n, r| {
        let bytes = ((i + n) * bs).min(size) - i * bs;
        match r {
            BlockRef::Hole => stats.hole_blocks += n,
            BlockRef::Zero => {
                stats.zero_blocks += n;
                stats.allocated += bytes;
            }
            BlockRef::Data(_) => {
                stats.data_blocks += n;
                stats.data_bytes += bytes;
                stats.allocated += bytes;
            }
        }
        Ok(())
    })?;
    Ok((m, stats))
}
