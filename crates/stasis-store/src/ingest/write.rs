//! The ingest writer: stores the blocks the [`super::policy`] chose to, in the
//! encodings it chose. New blocks are grouped into shared frames
//! ([`crate::frame::plan`]), compressed on the rayon pool, and added to the
//! [`Writer`] (a frame some of whose members are XORed starts with its reference
//! table); a group that does not compress is stored block by block, raw.

use std::ops::Range;

use rayon::prelude::*;

use super::policy::Decided;
use super::{IngestStats, raw_len};
use crate::error::Result;
use crate::format::codec::{self, Algorithm, Codec};
use crate::format::refs;
use crate::frame;
use crate::id::BlockId;
use crate::pack::{BlobKind, FrameMember};
use crate::similarity;
use crate::store::Writer;

/// The bytes of `parts` as one slice of `backing`, if they lie in it back to back.
fn joined<'a>(backing: &'a [u8], parts: impl IntoIterator<Item = &'a [u8]>) -> Option<&'a [u8]> {
    let base = backing.as_ptr() as usize;
    let mut span: Option<Range<usize>> = None;
    for p in parts {
        // Where `p` starts inside `backing`, by address: nothing is read through it.
        let at = (p.as_ptr() as usize).checked_sub(base)?;
        let end = at.checked_add(p.len()).filter(|&e| e <= backing.len())?;
        span = match span {
            None => Some(at..end),
            Some(r) if r.end == at => Some(r.start..end),
            Some(_) => return None,
        };
    }
    span.map(|r| &backing[r])
}

/// Store what `d` decided: its deltas, then its new blocks, in frames where they
/// compress together. `xbuf` holds the XORed blocks; `backing`, when given, is the
/// buffer the blocks were read into (a frame of blocks that lie in it back to back is
/// compressed from there, without a copy); `outs` lends compression buffers.
pub(super) fn store(
    w: &mut Writer<'_>,
    d: &Decided<'_>,
    xbuf: &[u8],
    backing: Option<&[u8]>,
    outs: &mut Vec<Vec<u8>>,
    stats: &mut IngestStats,
) -> Result<()> {
    for (k, delta) in &d.deltas {
        let (id, len) = (d.id_of(*k)?, raw_len(d.data(*k))?);
        if w.add_encoded(id, BlobKind::Data, Codec::ZstdDelta, len, delta)? {
            stats.new_blocks += 1;
            stats.delta_blocks += 1;
        }
    }
    let compression = w.compression();
    // Shared frames are zstd frames; other codecs compress each block alone.
    let frame_size = match compression.algorithm() {
        Algorithm::Zstd => w.store().config().frame_size as usize,
        _ => 0,
    };
    let (todo, data) = (&d.todo, |k: usize| d.data(k));
    let (feature, xor_of) = (|i: usize| d.feature(i), |i: usize| d.xor_of(i));
    let member = |i: usize| d.member(xbuf, i);
    let id_of = |k: usize| d.id_of(k);

    let lens: Vec<usize> = todo.iter().map(|&k| data(k).len()).collect();
    let groups = frame::plan(&lens, frame_size);
    // Output buffers come from `outs` and go back to it: fresh ones each batch would
    // be freed together and trimmed off the heap, to fault in again for the next.
    let bufs: Vec<Vec<u8>> = groups
        .iter()
        .map(|_| outs.pop().unwrap_or_default())
        .collect();
    let encoded: Vec<Result<(Codec, Vec<u8>)>> = groups
        .par_iter()
        .zip(bufs)
        .map(|(g, mut out)| {
            let any_xor = g.clone().any(|i| xor_of(i).is_some());
            let c = if g.len() == 1 {
                codec::compress(compression, member(g.start), &mut out)?
            } else if let Some(run) = backing
                .filter(|_| !any_xor)
                .and_then(|b| joined(b, todo[g.clone()].iter().map(|&k| data(k))))
            {
                codec::compress(compression, run, &mut out)?
            } else {
                let mut whole = Vec::with_capacity(lens[g.clone()].iter().sum());
                for i in g.clone() {
                    whole.extend_from_slice(member(i));
                }
                codec::compress(compression, &whole, &mut out)?
            };
            Ok((c, out))
        })
        .collect();
    let raw_len = |k: usize| raw_len(data(k));
    for (g, enc) in groups.iter().zip(encoded) {
        let (c, out) = enc?;
        let refs: Vec<(u32, BlockId)> = {
            let mut skip = 0u32;
            let mut refs = Vec::new();
            for i in g.clone() {
                if let Some(r) = xor_of(i) {
                    refs.push((skip, r));
                }
                skip += raw_len(todo[i])?;
            }
            refs
        };
        if c == Codec::Zstd && (g.len() > 1 || !refs.is_empty()) {
            let mut members = Vec::with_capacity(g.len());
            let mut skip = 0u32;
            for i in g.clone() {
                let k = todo[i];
                let raw_len = raw_len(k)?;
                let codec = match (refs.is_empty(), xor_of(i).is_some()) {
                    (true, _) => Codec::ZstdFrame,
                    (false, false) => Codec::ZstdFrameRefs,
                    (false, true) => Codec::ZstdFrameXor,
                };
                members.push(FrameMember {
                    id: id_of(k)?,
                    raw_len,
                    skip,
                    codec,
                    feature: feature(i),
                });
                skip += raw_len;
            }
            if refs.is_empty() {
                w.add_frame(BlobKind::Data, &members, &out)?;
            } else {
                let mut stored = Vec::with_capacity(2 + refs.len() * refs::REF_ENTRY + out.len());
                refs::encode_refs(&refs, &mut stored)?;
                stored.extend_from_slice(&out);
                w.add_frame(BlobKind::Data, &members, &stored)?;
                stats.xor_blocks += refs.len() as u64;
            }
            stats.new_blocks += members.len() as u64;
            outs.push(out);
            continue;
        }
        // A lone block, or a group that did not compress: each block alone, as it is
        // (not XORed: a group that did not compress gains nothing from it).
        for i in g.clone() {
            let k = todo[i];
            let (c, stored): (Codec, &[u8]) = if g.len() == 1 && c != Codec::Raw {
                (c, &out)
            } else {
                (Codec::Raw, data(k))
            };
            let f = if xor_of(i).is_some() {
                similarity::feature(data(k))
            } else {
                feature(i)
            };
            if w.add_encoded_with_feature(id_of(k)?, BlobKind::Data, c, raw_len(k)?, stored, f)? {
                stats.new_blocks += 1;
            }
        }
        outs.push(out);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Adjacent parts of the backing buffer join into the slice they cover; parts
        /// with a gap between them, or from another buffer, do not.
        #[test]
        fn joined_spans_adjacent_parts_only(
            len in 1usize..4096,
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
            from in any::<prop::sample::Index>(),
        ) {
            let buf: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(len + 1)).collect();
            at.extend([0, len]);
            at.sort_unstable();
            at.dedup();
            let parts: Vec<&[u8]> = at.windows(2).map(|w| &buf[w[0]..w[1]]).collect();
            prop_assert_eq!(joined(&buf, parts.iter().copied()), Some(&buf[..]));
            let f = from.index(parts.len());
            prop_assert_eq!(joined(&buf, parts[f..].iter().copied()), Some(&buf[at[f]..]));
            if parts.len() >= 3 {
                prop_assert_eq!(joined(&buf, [parts[0], parts[2]]), None);
            }
            let other = buf.clone();
            prop_assert_eq!(joined(&buf, [&other[..]]), None);
            prop_assert_eq!(joined(&buf, std::iter::empty()), None);
        }
    }
}
