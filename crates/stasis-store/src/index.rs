//! The index: which pack, offset and length hold each blob.
//!
//! On storage it is a set of immutable index files (`index/<blake3 of the file>`), one
//! per write session, each listing the blobs of the packs that session wrote:
//! a [`raw::IndexHeader`], the pack table, [`raw::IndexEntry`]s sorted by id, and a
//! blake3 of all of it. In memory it is one hash map. Index files only speed things up:
//! [`Index::rebuild_from_packs`] recreates them from the packs' own entry tables.

use std::collections::HashMap;

use rustc_hash::FxBuildHasher;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, IntoBytes};

use crate::backend::Backend;
use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::id::{BlockId, Id, PackId};
use crate::pack::{self, BlobKind, PackEntry};
use crate::raw;

/// Where a blob is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// The pack, as a position in [`Index::packs`].
    pub pack: u32,
    /// Offset of the stored bytes in the pack.
    pub offset: u64,
    /// Stored length.
    pub stored_len: u32,
    /// Uncompressed length.
    pub raw_len: u32,
    /// Encoding.
    pub codec: Codec,
    /// Data or tree.
    pub kind: BlobKind,
    /// Where the blob starts in its decoded frame ([`Codec::in_frame`]), else zero.
    pub skip: u32,
}

impl Location {
    /// The location of `e` in the pack at position `pack`.
    pub fn of(pack: u32, e: &PackEntry) -> Location {
        Location {
            pack,
            offset: e.offset,
            stored_len: e.stored_len,
            raw_len: e.raw_len,
            codec: e.codec,
            kind: e.kind,
            skip: e.skip,
        }
    }

    /// The range of its pack that holds the stored bytes (a frame's, for a member).
    pub fn stored(&self) -> std::ops::Range<u64> {
        self.offset..self.offset + u64::from(self.stored_len)
    }
}

/// The object key of an index file.
pub fn index_key(id: &Id) -> String {
    format!("index/{}", id.to_hex())
}

/// Every known blob's location.
#[derive(Debug, Default)]
pub struct Index {
    packs: Vec<PackId>,
    pack_pos: HashMap<PackId, u32, FxBuildHasher>,
    blobs: HashMap<BlockId, Location, FxBuildHasher>,
    /// Indexed members of each shared frame, by (pack position, offset).
    frame_members: HashMap<(u32, u64), u32, FxBuildHasher>,
    /// A block with each similarity feature (the first indexed), for references.
    similar: HashMap<u32, BlockId, FxBuildHasher>,
    /// The index files this was loaded from.
    files: Vec<String>,
}

impl Index {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Load every index file of a backend. An index file that disappears while being
    /// loaded (gc replaced it) makes the load start over, since its replacement may
    /// have been written after the listing.
    pub fn load(backend: &dyn Backend) -> Result<Index> {
        let mut attempts = 0;
        loop {
            match Self::load_once(backend) {
                Err(e) if e.kind() == crate::ErrorKind::NotFound && attempts < 10 => {
                    attempts += 1;
                }
                r => return r,
            }
        }
    }

    fn load_once(backend: &dyn Backend) -> Result<Index> {
        let (idx, mut bad) = Self::load_tolerant(backend)?;
        match bad.pop() {
            Some((_, e)) => Err(e),
            None => Ok(idx),
        }
    }

    /// Load every index file that is intact; return the others with their errors
    /// (for verify and repair, which must open a damaged repository).
    pub fn load_tolerant(backend: &dyn Backend) -> Result<(Index, Vec<(String, Error)>)> {
        let mut idx = Index::new();
        let mut bad = Vec::new();
        for meta in backend.list("index/")? {
            idx.files.push(meta.key.clone());
            let bytes = backend.get(&meta.key, None)?;
            let (packs, entries) = match decode_file(&bytes) {
                Ok(d) if Id::of(&bytes).to_hex() == meta.key["index/".len()..] => d,
                Ok(_) => {
                    let e = Error::corrupt(format!("{}: name does not match content", meta.key));
                    bad.push((meta.key, e));
                    continue;
                }
                Err(e) => {
                    let e = e.context(&meta.key);
                    bad.push((meta.key, e));
                    continue;
                }
            };
            idx.blobs.reserve(entries.len());
            for (pack_id, pe) in entries.iter().map(|(p, e)| (packs[*p as usize], e)) {
                idx.insert(pack_id, pe);
            }
        }
        Ok((idx, bad))
    }

    /// Rebuild the index from the packs alone (reads every pack's entry table).
    /// Returns the index and the packs whose tables could not be read.
    pub fn rebuild_from_packs(backend: &dyn Backend) -> Result<(Index, Vec<(String, Error)>)> {
        let mut idx = Index::new();
        let mut bad = Vec::new();
        for meta in backend.list("packs/")? {
            let Some(pid) = pack::pack_id_of_key(&meta.key) else {
                continue;
            };
            match pack::read_entries(backend, &pid) {
                Ok(entries) => {
                    for e in &entries {
                        idx.insert(pid, e);
                    }
                }
                Err(e) => bad.push((meta.key, e)),
            }
        }
        Ok((idx, bad))
    }

    fn pack_slot(&mut self, id: PackId) -> u32 {
        if let Some(p) = self.pack_pos.get(&id) {
            return *p;
        }
        let p = u32::try_from(self.packs.len()).unwrap_or(u32::MAX);
        self.packs.push(id);
        self.pack_pos.insert(id, p);
        p
    }

    /// Record that `e` lives in pack `pack` (a blob already known keeps its location).
    ///
    /// The first copy of a blob wins, except that a whole copy replaces a delta: a
    /// delta's base must be read whole, and gc can leave a block stored both ways (see
    /// [`crate::gc`]).
    pub fn insert(&mut self, pack: PackId, e: &PackEntry) {
        let slot = self.pack_slot(pack);
        match self.blobs.entry(e.id) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(Location::of(slot, e));
            }
            std::collections::hash_map::Entry::Occupied(mut o) => {
                if !o.get().codec.has_base() || e.codec.has_base() {
                    return;
                }
                o.insert(Location::of(slot, e));
            }
        }
        if e.codec.in_frame() {
            *self.frame_members.entry((slot, e.offset)).or_insert(0) += 1;
        }
        if e.feature != 0 && !e.codec.has_base() {
            self.similar.entry(e.feature).or_insert(e.id);
        }
    }

    /// A stored block with similarity feature `feature`, if any (it may since have
    /// been stored another way, or removed: check with [`Index::get`]).
    pub fn similar(&self, feature: u32) -> Option<BlockId> {
        self.similar.get(&feature).copied()
    }

    /// The stored bytes `loc` accounts for: its stored length, or an even share of its
    /// frame's among the frame's indexed members.
    pub fn stored_share(&self, loc: &Location) -> u64 {
        let n = if loc.codec.in_frame() {
            self.frame_members
                .get(&(loc.pack, loc.offset))
                .copied()
                .unwrap_or(1)
                .max(1)
        } else {
            1
        };
        u64::from(loc.stored_len) / u64::from(n)
    }

    /// Where `id` is stored.
    pub fn get(&self, id: &BlockId) -> Option<&Location> {
        self.blobs.get(id)
    }

    /// Whether `id` is stored.
    pub fn contains(&self, id: &BlockId) -> bool {
        self.blobs.contains_key(id)
    }

    /// The pack id of a location's pack.
    pub fn pack_id(&self, loc: &Location) -> PackId {
        self.packs[loc.pack as usize]
    }

    /// Number of blobs.
    pub fn len(&self) -> usize {
        self.blobs.len()
    }

    /// No blobs.
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Every blob and its location.
    pub fn iter(&self) -> impl Iterator<Item = (&BlockId, &Location)> {
        self.blobs.iter()
    }

    /// Record that index file `key` is included (a session of this process wrote it).
    pub(crate) fn note_file(&mut self, key: String) {
        if let Err(at) = self.files.binary_search(&key) {
            self.files.insert(at, key);
        }
    }

    /// The index files it was loaded from (sorted), empty if built otherwise.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// Every pack the index knows.
    pub fn packs(&self) -> &[PackId] {
        &self.packs
    }
}

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
                frame_skip: U16::new((e.skip / pack::FRAME_SKIP_UNIT) as u16),
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
            pack::compress_table(&[&body[..], entries.as_bytes(), features].concat())
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
    let mut buf = Vec::with_capacity(32 + body.len() + 32);
    buf.extend_from_slice(header.as_bytes());
    buf.extend_from_slice(&body);
    let sum = *blake3::hash(&buf).as_bytes();
    buf.extend_from_slice(&sum);
    (index_key(&Id::of(&buf)), buf)
}

/// An index file's pack table and its (pack position, entry) pairs.
pub type DecodedFile = (Vec<PackId>, Vec<(u32, PackEntry)>);

/// Decode and check an index file: its packs and (pack position, entry) pairs.
pub fn decode_file(bytes: &[u8]) -> Result<DecodedFile> {
    let hsize = size_of::<raw::IndexHeader>();
    if bytes.len() < hsize + 32 {
        return Err(Error::corrupt("index file is truncated"));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != sum {
        return Err(Error::corrupt("index file checksum mismatch"));
    }
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
        plain = pack::decompress_table(rest, want, "index file body")?;
        &plain
    };
    if want != Some(rest.len()) {
        return Err(Error::corrupt("index file size does not match its header"));
    }
    let (pack_bytes, entry_bytes) = rest.split_at(npacks * 32);
    let (entry_bytes, feature_bytes) = entry_bytes.split_at(nentries * 56);
    let packs: Vec<PackId> = pack_bytes
        .chunks_exact(32)
        .map(|c| {
            let mut a = [0u8; 32];
            a.copy_from_slice(c);
            Id(a)
        })
        .collect();
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
        let e = pack::entry_from_raw(
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
    use proptest::prelude::*;

    fn entry(seed: u8, off: u64) -> PackEntry {
        PackEntry {
            id: Id::of(&[seed]),
            kind: if seed.is_multiple_of(2) {
                BlobKind::Data
            } else {
                BlobKind::Tree
            },
            codec: Codec::Zstd,
            offset: off,
            stored_len: 10 + u32::from(seed),
            raw_len: 100,
            skip: 0,
            feature: if seed.is_multiple_of(3) {
                0
            } else {
                u32::from(seed) * 0x0101_0101
            },
        }
    }

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
                    let es = (0..*n).map(|k| { seed = seed.wrapping_add(1); entry(seed, 32 + k as u64 * 100) }).collect();
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
        fn a_whole_copy_wins_over_a_delta(delta_first in any::<bool>()) {
            let whole = entry(4, 32);
            let delta = PackEntry { codec: Codec::ZstdDelta, offset: 500, ..whole };
            let (a, b) = (Id::of(b"pa"), Id::of(b"pb"));
            let mut idx = Index::new();
            if delta_first {
                idx.insert(a, &delta);
                idx.insert(b, &whole);
            } else {
                idx.insert(b, &whole);
                idx.insert(a, &delta);
            }
            let loc = idx.get(&whole.id).copied().expect("indexed");
            prop_assert_eq!(loc.codec, Codec::Zstd);
            prop_assert_eq!(idx.pack_id(&loc), b);
        }

        #[test]
        fn features_name_a_whole_block(first in any::<bool>()) {
            // Two blocks with one feature: the first indexed is found; a block read
            // through a base never is (a reference must be whole).
            let (a, mut b) = (entry(1, 32), entry(2, 200));
            b.feature = a.feature;
            let xor = PackEntry { id: Id::of(b"x"), codec: Codec::ZstdFrameXor, feature: 77, ..a };
            let mut idx = Index::new();
            idx.insert(Id::of(b"p"), &xor);
            let (x, y) = if first { (a, b) } else { (b, a) };
            idx.insert(Id::of(b"p"), &x);
            idx.insert(Id::of(b"p"), &y);
            prop_assert_eq!(idx.similar(a.feature), Some(x.id));
            prop_assert_eq!(idx.similar(77), None);
            prop_assert_eq!(idx.similar(0), None);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode_file(&bytes);
        }

        #[test]
        fn any_flip_is_detected(pos in any::<prop::sample::Index>(), flip in 1u8..=255, version in versions()) {
            let packs = vec![(Id::of(b"p"), vec![entry(1, 32), entry(2, 200)])];
            let (_, mut bytes) = encode_file(&packs, version);
            let i = pos.index(bytes.len());
            bytes[i] ^= flip;
            prop_assert!(decode_file(&bytes).is_err());
        }
    }
}
