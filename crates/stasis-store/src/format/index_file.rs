//! Index files: which pack holds each blob, one file per write session.
//!
//! A [`raw::IndexHeader`], the pack table (32-byte pack ids), the [`raw::IndexEntry`]s
//! (plain and sorted by id in [`raw::FORMAT_VERSION`]; in pack order and, with the pack
//! table, one zstd frame from [`raw::COMPACT_FORMAT_VERSION`]; followed inside that
//! frame by one u32 similarity feature per entry in [`raw::FEATURES_FORMAT_VERSION`]),
//! sealed by a blake3 of all of it (see [`super::seal`]). Named `index/<blake3 of the
//! file>`.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, IntoBytes};

use super::keys::index_key;
use super::pack::{FRAME_SKIP_UNIT, PackEntry, entry_from_raw};
use super::raw;
use crate::error::{Error, Result};
use crate::id::{Id, PackId};

/// Encode an index file for `packs` (each with its entries). Returns its key and bytes.
///
/// `version` is [`raw::FORMAT_VERSION`] (entries sorted by id, as earlier releases
/// read), [`raw::COMPACT_FORMAT_VERSION`] (entries in pack order, and everything after
/// the header one zstd frame: neighbouring entries share their pack, frame and
/// lengths, so the entries shrink to little more than their ids) or
/// [`raw::FEATURES_FORMAT_VERSION`] (compact, with each entry's similarity feature).
/// Features are dropped in the older formats.
pub fn encode_file(packs: &[(PackId, Vec<PackEntry>)], version: u32) -> (String, Vec<u8>) {
    let mut entries: Vec<raw::IndexEntry> = Vec::new();
    let mut features: Vec<u8> = Vec::new();
    for (pos, (_, es)) in packs.iter().enumerate() {
        for e in es {
            features.extend_from_slice(&e.feature.to_le_bytes());
            entries.push(raw::IndexEntry {
                id: e.id.0,
                pack: U32::new(u32::try_from(pos).unwrap_or(u32::MAX)),
                stored_len: U32::new(e.stored_len),
                offset: U64::new(e.offset),
                raw_len: U32::new(e.raw_len),
                codec: e.codec as u8,
                kind: e.kind as u8,
                frame_skip: U16::new((e.skip / FRAME_SKIP_UNIT) as u16),
            });
        }
    }
    let mut body = Vec::with_capacity(packs.len() * 32 + entries.len() * 56);
    for (id, _) in packs {
        body.extend_from_slice(&id.0);
    }
    // Compact: entries in pack order, compressed with the pack ids. Plain (also when zstd
    // fails, out of memory say): entries sorted by id, as earlier releases wrote them.
    let with_features = version == raw::FEATURES_FORMAT_VERSION;
    let compact = (version == raw::COMPACT_FORMAT_VERSION || with_features)
        .then(|| {
            let features: &[u8] = if with_features { &features } else { &[] };
            super::compress_table(&[&body[..], entries.as_bytes(), features].concat())
        })
        .flatten();
    let version = match compact {
        Some(c) => {
            body = c;
            if with_features {
                raw::FEATURES_FORMAT_VERSION
            } else {
                raw::COMPACT_FORMAT_VERSION
            }
        }
        None => {
            entries.sort_by_key(|e| e.id);
            body.extend_from_slice(entries.as_bytes());
            raw::FORMAT_VERSION
        }
    };
    let header = raw::IndexHeader {
        magic: raw::INDEX_MAGIC,
        version: U32::new(version),
        pack_count: U32::new(u32::try_from(packs.len()).unwrap_or(u32::MAX)),
        entry_count: U64::new(entries.len() as u64),
        reserved: [0; 8],
    };
    let mut buf = Vec::with_capacity(32 + body.len() + super::CHECKSUM_LEN);
    buf.extend_from_slice(header.as_bytes());
    buf.extend_from_slice(&body);
    super::seal(&mut buf);
    (index_key(&Id::of(&buf)), buf)
}

/// An index file's pack table and its (pack position, entry) pairs.
pub type DecodedFile = (Vec<PackId>, Vec<(u32, PackEntry)>);

/// Decode and check an index file: its packs and (pack position, entry) pairs.
pub fn decode_file(bytes: &[u8]) -> Result<DecodedFile> {
    let body = super::unseal(bytes, size_of::<raw::IndexHeader>(), "index file")?;
    let (header, rest) = raw::IndexHeader::read_from_prefix(body)
        .map_err(|_| Error::corrupt("index file header is short"))?;
    let version = header.version.get();
    let known = [
        raw::FORMAT_VERSION,
        raw::COMPACT_FORMAT_VERSION,
        raw::FEATURES_FORMAT_VERSION,
    ];
    if header.magic != raw::INDEX_MAGIC || !known.contains(&version) {
        return Err(Error::corrupt("index file has a bad magic or version"));
    }
    let npacks = header.pack_count.get() as usize;
    let nentries = usize::try_from(header.entry_count.get())
        .map_err(|_| Error::corrupt("index entry count"))?;
    let per_entry = if version == raw::FEATURES_FORMAT_VERSION {
        56 + 4
    } else {
        56
    };
    let want = npacks.checked_mul(32).and_then(|p| {
        nentries
            .checked_mul(per_entry)
            .and_then(|e| e.checked_add(p))
    });
    let plain: Vec<u8>;
    let rest: &[u8] = if version == raw::FORMAT_VERSION {
        rest
    } else {
        let want = want.ok_or_else(|| Error::corrupt("index file counts overflow"))?;
        plain = super::decompress_table(rest, want, "index file body")?;
        &plain
    };
    if want != Some(rest.len()) {
        return Err(Error::corrupt("index file size does not match its header"));
    }
    let (pack_bytes, entry_bytes) = rest.split_at(npacks * 32);
    let (entry_bytes, feature_bytes) = entry_bytes.split_at(nentries * 56);
    let packs: Vec<PackId> = super::ids(pack_bytes);
    let raws = <[raw::IndexEntry]>::ref_from_bytes(entry_bytes)
        .map_err(|_| Error::corrupt("index entries misaligned"))?;
    let mut out = Vec::with_capacity(raws.len());
    let mut features = feature_bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    for r in raws {
        let pack = r.pack.get();
        if pack as usize >= npacks {
            return Err(Error::corrupt("index entry names a pack outside its table"));
        }
        let e = entry_from_raw(
            r.id,
            r.kind,
            r.codec,
            r.offset.get(),
            r.stored_len.get(),
            r.raw_len.get(),
            r.frame_skip.get(),
        )?;
        let feature = features.next().unwrap_or(0);
        out.push((pack, PackEntry { feature, ..e }));
    }
    Ok((packs, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::codec::Codec;
    use crate::format::pack::{BlobKind, sample_entry};
    use proptest::prelude::*;

    fn versions() -> impl Strategy<Value = u32> {
        prop_oneof![
            Just(raw::FORMAT_VERSION),
            Just(raw::COMPACT_FORMAT_VERSION),
            Just(raw::FEATURES_FORMAT_VERSION),
        ]
    }

    proptest! {
        #[test]
        fn file_roundtrip(sizes in proptest::collection::vec(0usize..20, 0..5), version in versions()) {
            let mut seed = 0u8;
            let packs: Vec<(PackId, Vec<PackEntry>)> = sizes
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let es = (0..*n).map(|k| { seed = seed.wrapping_add(1); sample_entry(seed, 32 + k as u64 * 100) }).collect();
                    (Id::of(&[i as u8, 0xff]), es)
                })
                .collect();
            let (key, bytes) = encode_file(&packs, version);
            prop_assert_eq!(key, index_key(&Id::of(&bytes)));
            prop_assert_eq!(bytes[8..12].to_vec(), version.to_le_bytes().to_vec());
            let (dp, de) = decode_file(&bytes).expect("decode");
            prop_assert_eq!(dp.len(), packs.len());
            let total: usize = packs.iter().map(|(_, e)| e.len()).sum();
            prop_assert_eq!(de.len(), total);
            // Features survive in the format that holds them, and only there.
            let keeps = version == raw::FEATURES_FORMAT_VERSION;
            for (p, e) in de {
                let strip = |x: &PackEntry| PackEntry { feature: if keeps { x.feature } else { 0 }, ..*x };
                let found = packs[p as usize].1.iter().any(|x| strip(x) == strip(&e));
                prop_assert!(found);
                if keeps {
                    prop_assert!(packs[p as usize].1.contains(&e));
                } else {
                    prop_assert_eq!(e.feature, 0);
                }
            }
        }

        #[test]
        fn compact_files_are_smaller_for_frames(members in 16usize..200) {
            // Members of shared frames: same pack range, consecutive skips.
            let es: Vec<PackEntry> = (0..members)
                .map(|k| PackEntry {
                    id: Id::of(&k.to_le_bytes()),
                    kind: BlobKind::Data,
                    codec: Codec::ZstdFrame,
                    offset: 32 + (k / 64) as u64 * 9000,
                    stored_len: 9000,
                    raw_len: 4096,
                    skip: (k % 64) as u32 * 4096,
                    feature: 0,
                })
                .collect();
            let packs = vec![(Id::of(b"p"), es)];
            let (_, plain) = encode_file(&packs, raw::FORMAT_VERSION);
            let (_, compact) = encode_file(&packs, raw::COMPACT_FORMAT_VERSION);
            prop_assert!(compact.len() * 10 < plain.len() * 8, "{} vs {}", compact.len(), plain.len());
            prop_assert_eq!(decode_file(&compact).expect("decode").1.len(), members);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode_file(&bytes);
        }

        #[test]
        fn any_flip_is_detected(pos in any::<prop::sample::Index>(), flip in 1u8..=255, version in versions()) {
            let packs = vec![(Id::of(b"p"), vec![sample_entry(1, 32), sample_entry(2, 200)])];
            let (_, mut bytes) = encode_file(&packs, version);
            let i = pos.index(bytes.len());
            bytes[i] ^= flip;
            prop_assert!(decode_file(&bytes).is_err());
        }
    }
}
