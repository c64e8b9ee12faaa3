//! The ingest policy: what each block of a batch becomes.
//!
//! A block is a hole (not read), a zero block (not stored), a block the repository
//! already holds (deduplicated by id), a delta on the block at its place in the parent
//! (when that pays, see [`DELTA_MAX_SHARE`]), a member of a shared frame stored XORed
//! with a similar stored block (guest memory, when that pays), or new data. The rules a
//! base or reference must obey (committed, whole, not in a gc plan) are the
//! [`Bases`]'s. Nothing here writes: [`super::write`] stores what [`decide`] chose.

use std::collections::{HashMap, HashSet};

use rayon::prelude::*;
use rustc_hash::FxBuildHasher;

use super::IngestStats;
use crate::error::{Error, ErrorKind, Result};
use crate::format::codec::{self, Codec, Compression};
use crate::id::{BlockId, Id, PackId};
use crate::manifest::BlockRef;
use crate::similarity;
use crate::source::is_zero;
use crate::store::{Bases, Writer};

/// A delta is kept only when it is at most this fraction of the block compressed alone:
/// a block that is not stored as a delta usually compresses better than alone, in a
/// shared frame with its neighbours.
const DELTA_MAX_SHARE: usize = 2;

/// A reference whose frame is not decoded already is read only when at least this many
/// blocks of the batch name a reference in that frame.
const MIN_FRAME_REFERENCES: u32 = 2;

/// A delta of at most this fraction of its block is kept without compressing the
/// block alone to compare (128 bytes of a 4 KiB page).
const DELTA_SURE_SHARE: usize = 32;

/// Compress `data` against `base` (its predecessor at the same place); the stored bytes
/// of a delta when that pays (see [`DELTA_MAX_SHARE`]), else `None`.
fn try_delta(
    w: Bases<'_, '_>,
    compression: Compression,
    base: &BlockId,
    data: &[u8],
) -> Result<Option<Vec<u8>>> {
    let level = compression.level();
    // The parent's block, or, when that is a delta itself (the page changed in the
    // parent too), the block that delta is on: a base is always a whole block.
    let base = &if w.may_base(base) {
        *base
    } else {
        match w.store().base_of(base) {
            Ok(Some(b)) if w.may_base(&b) => b,
            _ => return Ok(None),
        }
    };
    let base_bytes = match w.store().delta_base(base) {
        Ok(b) => b,
        Err(e) => {
            // Only a missed saving: the block is stored whole.
            tracing::warn!("not storing a delta on block {base}: {e}");
            return Ok(None);
        }
    };
    let mut delta = Vec::new();
    codec::compress_delta(level, &base.0, &base_bytes, data, &mut delta)?;
    // Most changed pages differ in a few words: a delta this small pays whatever the
    // block would take alone, and one over half the block never does; only the rest
    // are worth compressing alone to compare.
    if delta.len() <= data.len() / DELTA_SURE_SHARE {
        return Ok(Some(delta));
    }
    if delta.len() * DELTA_MAX_SHARE > data.len() {
        return Ok(None);
    }
    let mut alone = Vec::new();
    let c = codec::compress(compression, data, &mut alone)?;
    let alone_len = if c == Codec::Raw {
        data.len()
    } else {
        alone.len()
    };
    Ok((delta.len() * DELTA_MAX_SHARE <= alone_len).then_some(delta))
}

/// What the policy chose for a batch.
pub(super) struct Decided<'b> {
    /// The batch's blocks (`None` = a hole).
    blocks: &'b [Option<&'b [u8]>],
    /// Each block's reference.
    pub refs: Vec<BlockRef>,
    /// Blocks to store as deltas: their position and stored bytes.
    pub deltas: Vec<(usize, Vec<u8>)>,
    /// The positions of the other blocks to store (new to the repository, each id
    /// once), in order.
    pub todo: Vec<usize>,
    /// For each block of `todo`: its similarity feature, 0 for none (empty when the
    /// batch takes no features).
    features: Vec<u32>,
    /// For each block of `todo`: the reference it is stored XORed with, its XORed
    /// bytes in slot `i` of the XOR buffer (empty when none is).
    xored: Vec<Option<BlockId>>,
    /// Bytes of one slot of the XOR buffer.
    slot: usize,
}

impl Decided<'_> {
    /// The bytes of block `k` (empty for a hole).
    pub fn data(&self, k: usize) -> &[u8] {
        self.blocks[k].unwrap_or_default()
    }

    /// The id of data block `k`.
    pub fn id_of(&self, k: usize) -> Result<BlockId> {
        match self.refs[k] {
            BlockRef::Data(id) => Ok(id),
            _ => Err(Error::new(ErrorKind::Io, "a data block lost its id")),
        }
    }

    /// The feature of block `i` of `todo`, 0 for none.
    pub fn feature(&self, i: usize) -> u32 {
        self.features.get(i).copied().unwrap_or(0)
    }

    /// The reference block `i` of `todo` is XORed with, if any.
    pub fn xor_of(&self, i: usize) -> Option<BlockId> {
        self.xored.get(i).copied().flatten()
    }

    /// What goes into a frame for block `i` of `todo`: its bytes, or its XOR with its
    /// reference from `xbuf`.
    pub fn member<'a>(&'a self, xbuf: &'a [u8], i: usize) -> &'a [u8] {
        let d = self.data(self.todo[i]);
        match self.xor_of(i) {
            Some(_) => &xbuf[i * self.slot..i * self.slot + d.len()],
            None => d,
        }
    }
}

/// Decide what each of `blocks` becomes (counting holes, zeros and data blocks in
/// `stats`). `bases[k]`, when given, is the block at block `k`'s place in the parent: a
/// new block that differs from it may become a delta on it. With `similar`, new blocks
/// get features and may be XORed with a similar stored block; their XORed bytes go to
/// `xbuf`, one slot per block of `todo` (reused from batch to batch).
pub(super) fn decide<'b>(
    w: &Writer<'_>,
    blocks: &'b [Option<&'b [u8]>],
    bases: &[Option<BlockId>],
    similar: bool,
    xbuf: &mut Vec<u8>,
    stats: &mut IngestStats,
) -> Result<Decided<'b>> {
    let (refs, mut todo) = classify(w, blocks, stats);
    let deltas = if w.stores_deltas() && !bases.is_empty() {
        deltas(w, &todo, bases, blocks)?
    } else {
        Vec::new()
    };
    if !deltas.is_empty() {
        let as_delta: HashSet<usize, FxBuildHasher> = deltas.iter().map(|(k, _)| *k).collect();
        todo.retain(|k| !as_delta.contains(k));
    }
    let slot = blocks
        .iter()
        .flatten()
        .map(|b| b.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let (features, xored) = if similar && w.stores_similar() {
        xors(w, &todo, blocks, xbuf, slot)
    } else {
        (Vec::new(), Vec::new())
    };
    Ok(Decided {
        blocks,
        refs,
        deltas,
        todo,
        features,
        xored,
        slot,
    })
}

/// Each block's reference (hashing on the rayon pool), and the positions of the data
/// blocks the repository does not hold yet, each id once.
fn classify(
    w: &Writer<'_>,
    blocks: &[Option<&[u8]>],
    stats: &mut IngestStats,
) -> (Vec<BlockRef>, Vec<usize>) {
    let refs: Vec<BlockRef> = blocks
        .par_iter()
        .map(|b| match b {
            None => BlockRef::Hole,
            Some(d) if is_zero(d) => BlockRef::Zero,
            Some(d) => BlockRef::Data(Id::of(d)),
        })
        .collect();
    let mut seen: HashSet<Id, FxBuildHasher> = HashSet::default();
    let mut todo = Vec::new();
    for (k, r) in refs.iter().enumerate() {
        match r {
            BlockRef::Hole => stats.hole_blocks += 1,
            BlockRef::Zero => stats.zero_blocks += 1,
            BlockRef::Data(id) => {
                stats.data_blocks += 1;
                stats.data_bytes += blocks[k].map_or(0, |b| b.len() as u64);
                if !w.knows(id) && seen.insert(*id) {
                    todo.push(k);
                }
            }
        }
    }
    (refs, todo)
}

/// The blocks of `todo` worth storing as deltas on their predecessor at the same place
/// (`bases`), with their stored bytes.
fn deltas(
    w: &Writer<'_>,
    todo: &[usize],
    bases: &[Option<BlockId>],
    blocks: &[Option<&[u8]>],
) -> Result<Vec<(usize, Vec<u8>)>> {
    let data = |k: usize| blocks[k].unwrap_or_default();
    let candidates: Vec<(usize, BlockId)> = todo
        .iter()
        .filter_map(|&k| bases.get(k).copied().flatten().map(|b| (k, b)))
        .collect();
    let (bases, compression) = (w.bases(), w.compression());
    let tried: Vec<Result<Option<Vec<u8>>>> = candidates
        .par_iter()
        .map(|(k, b)| try_delta(bases, compression, b, data(*k)))
        .collect();
    let mut out = Vec::new();
    for ((k, _), d) in candidates.iter().zip(tried) {
        if let Some(d) = d? {
            out.push((*k, d));
        }
    }
    Ok(out)
}

/// Similar blocks: every block of `todo` gets a feature; one whose feature names a
/// stored whole block is XORed with it where that pays (into slot `i` of `xbuf`, of
/// `slot` bytes), and loses its feature (it can never be a reference itself). Returns
/// the features and each block's reference.
fn xors(
    w: &Writer<'_>,
    todo: &[usize],
    blocks: &[Option<&[u8]>],
    xbuf: &mut Vec<u8>,
    slot: usize,
) -> (Vec<u32>, Vec<Option<BlockId>>) {
    let data = |k: usize| blocks[k].unwrap_or_default();
    let mut features: Vec<u32> = todo
        .par_iter()
        .map(|&k| similarity::feature(data(k)))
        .collect();
    let bases = w.bases();
    let mut candidates: Vec<Option<BlockId>> = {
        let idx = w.store().index();
        features
            .iter()
            .map(|&f| if f == 0 { None } else { idx.similar(f) })
            .collect()
    };
    candidates
        .iter_mut()
        .for_each(|c| *c = c.filter(|r| bases.may_base(r)));
    // A reference costs its whole frame when that is not decoded already. A frame
    // that only one block of the batch names is not worth it: such lone matches
    // rarely pay (in the study, decodes fell from 707 to 436 for 24 fewer XORs of
    // 5,448), while true siblings come in runs that share frames.
    let frames: Vec<Option<(PackId, u64)>> = candidates
        .iter()
        .map(|c| c.and_then(|r| w.store().frame_of(&r)))
        .collect();
    let mut per_frame: HashMap<(PackId, u64), u32, FxBuildHasher> = HashMap::default();
    for f in frames.iter().flatten() {
        *per_frame.entry(*f).or_insert(0) += 1;
    }
    for (c, f) in candidates.iter_mut().zip(&frames) {
        if let Some((pack, offset)) = f
            && per_frame.get(&(*pack, *offset)).copied().unwrap_or(0) < MIN_FRAME_REFERENCES
            && !w.store().frame_cached(pack, *offset)
        {
            *c = None;
        }
    }
    if xbuf.len() < todo.len() * slot {
        xbuf.resize(todo.len() * slot, 0);
    }
    let xored: Vec<Option<BlockId>> = xbuf
        .par_chunks_mut(slot)
        .zip(todo.par_iter().zip(&candidates))
        .map(|(out, (&k, r))| {
            let r = (*r)?;
            let d = data(k);
            let xor = |rb: &[u8]| {
                let pays = similarity::xor_pays(d, rb);
                if pays {
                    similarity::xor_to(d, rb, &mut out[..d.len()]);
                }
                pays
            };
            match bases.store().with_reference(&r, xor) {
                Ok(true) => Some(r),
                Ok(false) => None,
                Err(e) => {
                    // Only a missed saving: the block is stored as it is.
                    tracing::warn!("not storing a block XORed with {r}: {e}");
                    None
                }
            }
        })
        .collect();
    for (f, x) in features.iter_mut().zip(&xored) {
        if x.is_some() {
            *f = 0;
        }
    }
    (features, xored)
}
