//! The index: which pack, offset and length hold each blob.
//!
//! On storage it is a set of immutable index files (`index/<blake3 of the file>`), one
//! per write session, each listing the blobs of the packs that session wrote:
//! a [`raw::IndexHeader`], the pack table, [`raw::IndexEntry`]s sorted by id, and a
//! blake3 of all of it. In memory it is one hash map. Index files only speed things up:
//! [`Index::rebuild_from_packs`] recreates them from the packs' own entry tables.

use std::collections::HashMap;

use rustc_hash::FxBuildHasher;

use crate::backend::Backend;
use crate::error::{Error, ErrorKind, Result};
use crate::format::codec::Codec;
use crate::format::index_file;
use crate::format::keys;
use crate::id::{BlockId, PackId};
use crate::pack::{self, BlobKind, PackEntry};

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
        for meta in backend.list(keys::INDEX_PREFIX)? {
            idx.files.push(meta.key.clone());
            let read = || {
                let bytes = backend.get(&meta.key, None)?;
                if !keys::index_key_names(&meta.key, &bytes) {
                    return Err(Error::corrupt(format!(
                        "{}: name does not match content",
                        meta.key
                    )));
                }
                index_file::decode_file(&bytes).map_err(|e| e.context(&meta.key))
            };
            let (packs, entries) =
                match crate::backend::read_again_if_damaged(backend, &meta.key, read) {
                    Ok(d) => d,
                    Err(e) if e.kind() == ErrorKind::Corrupt => {
                        bad.push((meta.key, e));
                        continue;
                    }
                    Err(e) => return Err(e),
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
        for meta in backend.list(keys::PACK_PREFIX)? {
            let Some(pid) = keys::pack_id_of_key(&meta.key) else {
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
    /// `crate::gc`).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::pack::sample_entry;
    use crate::id::Id;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_whole_copy_wins_over_a_delta(delta_first in any::<bool>()) {
            let whole = sample_entry(4, 32);
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
            let (a, mut b) = (sample_entry(1, 32), sample_entry(2, 200));
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
    }
}
