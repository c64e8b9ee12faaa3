//! The store: blobs by id over a backend, and write sessions that add new ones.
//!
//! ## Commit order
//! A [`Writer`] collects new blobs into packs (data blocks and tree nodes in separate
//! packs, so tree walks stay within a few dense packs). A pack's bytes go to a flusher
//! thread in pieces of 4 MiB as it fills, and the flusher appends them to an object
//! started with [`Backend::create`] (the local backend: a temporary file, written with
//! `O_DIRECT` in 4 MiB stretches where the filesystem allows it, else through the page
//! cache with writeback started piece by piece). When the pack is full the
//! flusher seals it (entry table and trailer), names it by the hash of all its bytes and
//! finishes the object (the local backend: fdatasync, then rename to its key). Nothing
//! names a pack before that. [`Writer::commit`] seals the last packs, waits for the
//! flusher, calls [`Backend::sync`] (directory fsyncs: the packs are now durable),
//! `put`s one index file naming the session's packs, and syncs again, after which
//! everything the session wrote is durable. An index file therefore never names a pack
//! that a power loss could take away. Only then may the caller record the new manifests
//! in the catalog: the catalog commit is the point at which a snapshot exists. A crash
//! before it leaves unreferenced packs, index files and temporaries (garbage for gc),
//! never a damaged snapshot, since nothing stored is ever modified in place.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;

use bytes::Bytes;
use rustc_hash::FxBuildHasher;
use serde::Serialize;

use crate::backend::Backend;
use crate::error::{Error, ErrorKind, Result};
use crate::format::codec::{self, Codec, Compression};
use crate::format::config::StoreConfig;
use crate::format::index_file;
use crate::format::keys;
use crate::format::refs;
use crate::frame::FrameCache;
use crate::id::{BlockId, Id, PackId};
use crate::index::{Index, Location};
use crate::lock::Guard;
use crate::manifest::{NodeSink, NodeSource};
use crate::pack::{BlobKind, FrameMember, PackBuilder, PackEntry};

#[derive(Clone, Debug)]
struct ByteWeight;
impl quick_cache::Weighter<BlockId, Bytes> for ByteWeight {
    fn weight(&self, _: &BlockId, v: &Bytes) -> u64 {
        v.len() as u64 + 64
    }
}

/// A repository's blob store.
#[derive(Debug)]
pub struct Store {
    backend: Arc<dyn Backend>,
    config: StoreConfig,
    index: RwLock<Index>,
    cache: quick_cache::sync::Cache<BlockId, Bytes, ByteWeight>,
    frames: FrameCache,
}

/// Where a store's bytes are ([`Store::space`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Space {
    /// Distinct data blocks, before compression.
    pub unique_bytes: u64,
    /// Their stored (compressed) share of the packs.
    pub stored_data_bytes: u64,
    /// Stored tree nodes (manifests).
    pub stored_tree_bytes: u64,
    /// Pack objects, as the backend holds them.
    pub pack_bytes: u64,
    /// Index objects.
    pub index_bytes: u64,
}

/// Default bound of the decompressed-block cache.
pub const DEFAULT_CACHE_BYTES: u64 = 128 << 20;

/// Bound of the decoded-frame cache: a few frames for each of several sequential
/// readers (a mount serves requests on many threads).
pub const FRAME_CACHE_BYTES: u64 = 32 << 20;

impl Store {
    /// Create a new repository in `backend` (which must hold no config yet).
    pub fn init(backend: Arc<dyn Backend>, config: StoreConfig) -> Result<Store> {
        config.validate()?;
        match backend.get(keys::CONFIG_KEY, None) {
            Ok(_) => {
                return Err(Error::new(
                    ErrorKind::Repository,
                    "a repository already exists here",
                ));
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let json = serde_json::to_vec_pretty(&config)
            .map_err(|e| Error::new(ErrorKind::Io, e.to_string()))?;
        backend.put(keys::CONFIG_KEY, &json)?;
        backend.sync()?;
        Ok(Store::with(backend, config, Index::new()))
    }

    /// Whether `backend` holds a store (its config object).
    pub fn exists(backend: &dyn Backend) -> Result<bool> {
        match backend.size(keys::CONFIG_KEY) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Open an existing repository: read its config and load its index.
    pub fn open(backend: Arc<dyn Backend>) -> Result<Store> {
        let config = read_config(&*backend)?;
        let index = Index::load(&*backend)?;
        Ok(Store::with(backend, config, index))
    }

    /// Open a possibly damaged repository for verify and repair: index files that fail
    /// their checks are left out and returned with their errors.
    pub fn open_damaged(backend: Arc<dyn Backend>) -> Result<(Store, Vec<(String, Error)>)> {
        let config = read_config(&*backend)?;
        let (index, bad) = Index::load_tolerant(&*backend)?;
        Ok((Store::with(backend, config, index), bad))
    }

    fn with(backend: Arc<dyn Backend>, config: StoreConfig, index: Index) -> Store {
        Store {
            backend,
            config,
            index: RwLock::new(index),
            cache: quick_cache::sync::Cache::with_weighter(
                16 << 10,
                DEFAULT_CACHE_BYTES,
                ByteWeight,
            ),
            frames: FrameCache::new(FRAME_CACHE_BYTES),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The config.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Read access to the index. Do not hold it while reading blocks: a read whose pack
    /// was removed by gc reloads the index.
    pub fn index(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Where the store's bytes are: blocks and tree nodes by their index, packs and
    /// index files by what the backend holds.
    pub fn space(&self) -> Result<Space> {
        let mut space = Space::default();
        {
            let idx = self.index();
            for (_, loc) in idx.iter() {
                match loc.kind {
                    BlobKind::Data => {
                        space.unique_bytes += u64::from(loc.raw_len);
                        space.stored_data_bytes += idx.stored_share(loc);
                    }
                    BlobKind::Tree => space.stored_tree_bytes += idx.stored_share(loc),
                }
            }
        }
        space.pack_bytes = self
            .backend
            .list(keys::PACK_PREFIX)?
            .iter()
            .map(|m| m.size)
            .sum();
        space.index_bytes = self
            .backend
            .list(keys::INDEX_PREFIX)?
            .iter()
            .map(|m| m.size)
            .sum();
        Ok(space)
    }

    /// Load the index files again (another process may have changed them).
    pub fn reload_index(&self) -> Result<()> {
        let idx = Index::load(&*self.backend)?;
        self.set_index(idx);
        Ok(())
    }

    /// Reload the index if its files changed since it was loaded (a create or gc in
    /// another process); listing the index files is cheap. Returns whether it did.
    pub fn refresh_index(&self) -> Result<bool> {
        let now: Vec<String> = self
            .backend
            .list(keys::INDEX_PREFIX)?
            .into_iter()
            .map(|m| m.key)
            .collect();
        if now.as_slice() == self.index().files() {
            return Ok(false);
        }
        self.reload_index()?;
        Ok(true)
    }

    /// Replace the in-memory index (after a rebuild).
    pub fn set_index(&self, index: Index) {
        *self.index.write().unwrap_or_else(|p| p.into_inner()) = index;
    }

    /// Where `id` is stored, and in which pack.
    pub fn locate(&self, id: &BlockId) -> Option<(PackId, Location)> {
        let idx = self.index();
        idx.get(id).map(|l| (idx.pack_id(l), *l))
    }

    /// Hint that the blobs `ids` will be read soon (see [`Backend::prefetch`]): their
    /// stored ranges, merged per pack where they nearly touch, are passed to the
    /// backend. Ids not in the index are skipped.
    pub fn prefetch<'a>(&self, ids: impl IntoIterator<Item = &'a BlockId>) {
        /// Ranges closer than this are fetched as one.
        const GAP: u64 = 256 << 10;
        let mut by_pack: HashMap<PackId, Vec<std::ops::Range<u64>>, FxBuildHasher> =
            HashMap::default();
        {
            let idx = self.index();
            for id in ids {
                if let Some(l) = idx.get(id) {
                    by_pack.entry(idx.pack_id(l)).or_default().push(l.stored());
                }
            }
        }
        for (pack, ranges) in by_pack {
            let merged = merge_ranges(ranges, GAP);
            self.backend.prefetch(&keys::pack_key(&pack), &merged);
        }
    }

    /// Read a blob from storage, decode it and check it against its id (no cache).
    ///
    /// If the block's pack is gone (gc repacked it since the index was loaded), the
    /// index is loaded again and the read retried once.
    pub fn read_blob(&self, id: &BlockId) -> Result<Bytes> {
        let base = |b: &BlockId| self.delta_base(b);
        self.with_location(id, |pack, loc| {
            read_located(&*self.backend, &self.frames, id, pack, loc, &base)
        })
    }

    /// Decode block `id` into `dst`, which must be exactly its length, and check it
    /// against its id: copied from the block cache if that holds it, else read and
    /// decoded straight into `dst` past the block cache. For reads that take every
    /// block once (a restore): caching those would cost a fresh buffer and a copy per
    /// block. A mount's reads go through the cache ([`Store::block`]): blocks shared by
    /// several snapshots' files are decoded once for all of them.
    pub fn read_block_into(&self, id: &BlockId, dst: &mut [u8]) -> Result<()> {
        if let Some(b) = self.cache.get(id) {
            if b.len() != dst.len() {
                return Err(Error::corrupt(format!(
                    "block {id} is {} bytes, its place {}",
                    b.len(),
                    dst.len()
                )));
            }
            dst.copy_from_slice(&b);
            return Ok(());
        }
        let base = |b: &BlockId| self.delta_base(b);
        self.with_location(id, |pack, loc| {
            read_located_into(&*self.backend, &self.frames, id, pack, loc, &base, dst)
        })
    }

    /// `read(pack, location)` for `id`, looked up in the index (reloaded when another
    /// process may have written it since), and once more if its pack is gone: gc moved
    /// the blob. Callers never hold the index lock while reading blocks, so reloading
    /// here cannot deadlock.
    fn with_location<T>(
        &self,
        id: &BlockId,
        mut read: impl FnMut(&PackId, &Location) -> Result<T>,
    ) -> Result<T> {
        let not_indexed = || {
            Error::new(
                ErrorKind::NotFound,
                format!("block {id} is not in the index"),
            )
        };
        let (pack, loc) = match self.locate(id) {
            Some(l) => l,
            None if self.refresh_index()? => self.locate(id).ok_or_else(not_indexed)?,
            None => return Err(not_indexed()),
        };
        // Damage read from a cached copy is dropped and read from storage once more
        // (with the pack's decoded frames forgotten first: a frame decoded from the
        // damaged copy would fail the second read too).
        let mut read = |pack: &PackId, loc: &Location| {
            let mut again = false;
            crate::backend::read_again_if_damaged(&*self.backend, &keys::pack_key(pack), || {
                if again {
                    self.frames.forget_pack(pack);
                }
                again = true;
                read(pack, loc)
            })
        };
        match read(&pack, &loc) {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                self.reload_index()?;
                let (pack, loc) = self.locate(id).ok_or_else(not_indexed)?;
                read(&pack, &loc)
            }
            r => r,
        }
    }

    /// The bytes of `id` as the base of a delta or the reference of an XOR member:
    /// through the block cache, and refused if `id` is read through a base itself (a
    /// base is always a whole block, which bounds a read to two blocks and rules out
    /// cycles).
    pub fn delta_base(&self, id: &BlockId) -> Result<Bytes> {
        if self.locate(id).is_some_and(|(_, l)| l.codec.has_base()) {
            return Err(Error::corrupt(format!(
                "base {id} is itself read through a base"
            )));
        }
        self.block(id)
    }

    /// The shared frame `id` is a member of, as (pack, offset), if it is one.
    pub fn frame_of(&self, id: &BlockId) -> Option<(PackId, u64)> {
        self.locate(id)
            .filter(|(_, l)| l.codec.in_frame())
            .map(|(p, l)| (p, l.offset))
    }

    /// Whether the frame at `offset` in `pack` is decoded in the frame cache now (a read
    /// of one of its members costs no decode).
    pub fn frame_cached(&self, pack: &PackId, offset: u64) -> bool {
        self.frames.contains(pack, offset)
    }

    /// Call `f` with the bytes of `id` as the reference of a new XOR member, checked as
    /// [`Store::delta_base`] does but read past the block cache, and without copying a
    /// frame member out of its (cached) frame: an ingest reads thousands of references
    /// once each, which would only push out what the cache holds for readers and cost
    /// fresh memory for each.
    pub fn with_reference<T>(&self, id: &BlockId, f: impl FnOnce(&[u8]) -> T) -> Result<T> {
        let Some((pack, loc)) = self.locate(id) else {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("block {id} is not in the index"),
            ));
        };
        if loc.codec.has_base() {
            return Err(Error::corrupt(format!(
                "base {id} is itself read through a base"
            )));
        }
        if loc.codec.in_frame() {
            match self.frames.frame(&*self.backend, &pack, &loc) {
                Ok(frame) => {
                    let (a, b) = (loc.skip as usize, loc.skip as usize + loc.raw_len as usize);
                    return match frame.bytes.get(a..b) {
                        Some(m) if frame.reference(loc.skip).is_none() && Id::of(m) == *id => {
                            Ok(f(m))
                        }
                        _ => Err(Error::corrupt(format!(
                            "block {id} in {} does not match its checksum",
                            keys::pack_key(&pack)
                        ))),
                    };
                }
                // Its pack is gone (gc repacked it): the usual read reloads the index.
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let bytes = match self.cache.get(id) {
            Some(b) => b,
            None => self.read_blob(id)?,
        };
        Ok(f(&bytes))
    }

    /// The base a stored delta or XOR member names (`None` if `id` is stored whole).
    /// Reads only the front of its stored bytes: a delta's base id, or the reference
    /// table of an XOR member's frame.
    pub fn base_of(&self, id: &BlockId) -> Result<Option<BlockId>> {
        match self.locate(id) {
            Some((pack, loc)) => self.base_at(id, &pack, &loc),
            None => Ok(None),
        }
    }

    /// The base the copy of `id` at `loc` in `pack` names, as [`Store::base_of`] (a
    /// block may be stored more than once, each copy on its own base).
    pub fn base_at(&self, id: &BlockId, pack: &PackId, loc: &Location) -> Result<Option<BlockId>> {
        BaseReader::new(self).base_at(id, pack, loc)
    }

    /// The reference table of the frame at `loc` in `pack` (a member of a frame with
    /// one), read without decoding the frame.
    pub fn references_at(&self, pack: &PackId, loc: &Location) -> Result<refs::References> {
        let key = keys::pack_key(pack);
        let head = |n: usize| {
            let n = (n as u64).min(u64::from(loc.stored_len));
            self.backend.get(&key, Some(loc.offset..loc.offset + n))
        };
        let at = |e: Error| e.context(format!("frame at {} in {key}", loc.offset));
        let len = refs::refs_len(&head(2)?).map_err(at)?;
        let table = head(len + 1)?;
        refs::split_refs(&table).map(|(refs, _)| refs).map_err(at)
    }

    /// A blob by id, through the shared cache of decoded blocks.
    pub fn block(&self, id: &BlockId) -> Result<Bytes> {
        self.cache.get_or_insert_with(id, || self.read_blob(id))
    }

    /// Start a write session with `compression`. The session is registered (see
    /// `crate::lock`) until the [`Committed`] that [`Writer::commit`] returns is dropped:
    /// keep that until the catalog has recorded what was written.
    pub fn writer(&self, compression: Compression) -> Result<Writer<'_>> {
        let session = self.backend.locks().register_session()?;
        // After registering: a gc that publishes a plan later waits for us; one that
        // published before is seen here.
        let masked = crate::plans::load_masks(&*self.backend)?;
        Ok(Writer::new(self, compression, Some(session), masked))
    }

    /// A session for gc's repack, which holds the maintenance lock: not registered (gc
    /// waits for registered sessions) and copying blobs whatever the index says.
    pub(crate) fn maintenance_writer(&self) -> Writer<'_> {
        Writer::new(self, Compression::none(), None, HashSet::default())
    }
}

/// Reads the bases of stored blocks (see [`Store::base_at`]), each frame's reference
/// table once for all its XOR members: for passes over many blocks (gc's marking,
/// verify's check of a snapshot).
#[derive(Debug)]
pub struct BaseReader<'s> {
    store: &'s Store,
    tables: HashMap<(PackId, u64), refs::References, FxBuildHasher>,
}

impl<'s> BaseReader<'s> {
    /// A reader with no table read yet.
    pub fn new(store: &'s Store) -> Self {
        BaseReader {
            store,
            tables: HashMap::default(),
        }
    }

    /// The base the copy of `id` at `loc` in `pack` names (`None` if stored whole).
    pub fn base_at(
        &mut self,
        id: &BlockId,
        pack: &PackId,
        loc: &Location,
    ) -> Result<Option<BlockId>> {
        match loc.codec {
            Codec::ZstdDelta => {
                let n = (codec::DELTA_HEADER as u64).min(u64::from(loc.stored_len));
                let head = self
                    .store
                    .backend
                    .get(&keys::pack_key(pack), Some(loc.offset..loc.offset + n))?;
                let base =
                    codec::delta_base_id(&head).map_err(|e| e.context(format!("block {id}")))?;
                Ok(Some(Id(base)))
            }
            Codec::ZstdFrameXor => {
                let refs = match self.tables.entry((*pack, loc.offset)) {
                    std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(self.store.references_at(pack, loc)?)
                    }
                };
                match refs::reference_in(refs, loc.skip) {
                    Some(r) => Ok(Some(r)),
                    None => Err(Error::corrupt(format!(
                        "block {id} has no reference in its frame's table"
                    ))),
                }
            }
            _ => Ok(None),
        }
    }
}

/// Read and check a repository's config.
fn read_config(backend: &dyn Backend) -> Result<StoreConfig> {
    let bytes = backend.get(keys::CONFIG_KEY, None).map_err(|e| {
        if e.kind() == ErrorKind::NotFound {
            Error::new(
                ErrorKind::Repository,
                "no repository here (run `stasis init`)",
            )
        } else {
            e
        }
    })?;
    let config: StoreConfig = serde_json::from_slice(&bytes)
        .map_err(|e| Error::corrupt(format!("repository config: {e}")))?;
    config.validate()?;
    Ok(config)
}

/// Read the blob `id` at `loc` in `pack` and check it; a member of a shared frame is
/// cut from the frame, decoded through `frames`.
///
/// A delta ([`Codec::ZstdDelta`]) is decoded against its base, and an XOR member
/// ([`Codec::ZstdFrameXor`]) XORed with its reference, which `base` reads (checked
/// against its id, and refused if it is read through a base itself).
pub fn read_located(
    backend: &dyn Backend,
    frames: &FrameCache,
    id: &BlockId,
    pack: &PackId,
    loc: &Location,
    base: &dyn Fn(&BlockId) -> Result<Bytes>,
) -> Result<Bytes> {
    if loc.codec == Codec::Raw {
        // Kept as the backend gives it (for a sealed pack, a slice of its map): no copy.
        let key = keys::pack_key(pack);
        let raw = backend.get(&key, Some(loc.stored()))?;
        if raw.len() != loc.raw_len as usize || Id::of(&raw) != *id {
            return Err(Error::corrupt(format!(
                "block {id} in {key} does not match its checksum"
            )));
        }
        return Ok(raw);
    }
    if loc.raw_len > crate::format::config::MAX_BLOCK_SIZE {
        return Err(Error::corrupt(format!(
            "block {id} claims {} bytes, more than any block",
            loc.raw_len
        )));
    }
    let mut out = vec![0; loc.raw_len as usize];
    read_located_into(backend, frames, id, pack, loc, base, &mut out)?;
    Ok(Bytes::from(out))
}

/// As [`read_located`], decoded into `dst`, which must be exactly the block's length.
pub fn read_located_into(
    backend: &dyn Backend,
    frames: &FrameCache,
    id: &BlockId,
    pack: &PackId,
    loc: &Location,
    base: &dyn Fn(&BlockId) -> Result<Bytes>,
    dst: &mut [u8],
) -> Result<()> {
    let key = keys::pack_key(pack);
    let mismatch = || Error::corrupt(format!("block {id} in {key} does not match its checksum"));
    if dst.len() != loc.raw_len as usize {
        return Err(Error::corrupt(format!(
            "block {id} in {key} is {} bytes, its place {}",
            loc.raw_len,
            dst.len()
        )));
    }
    if loc.codec.in_frame() {
        let frame = frames.frame(backend, pack, loc)?;
        let (a, b) = (loc.skip as usize, loc.skip as usize + loc.raw_len as usize);
        let member = frame.bytes.get(a..b).ok_or_else(mismatch)?;
        match (loc.codec, frame.reference(loc.skip)) {
            (Codec::ZstdFrameXor, Some(r)) if r != *id => {
                let r_bytes = base(&r)
                    .map_err(|e| e.context(format!("the reference of block {id} in {key}")))?;
                if r_bytes.len() != member.len() {
                    return Err(Error::corrupt(format!(
                        "block {id} in {key} has a reference of another length"
                    )));
                }
                crate::similarity::xor_to(member, &r_bytes, dst);
            }
            (Codec::ZstdFrameXor, _) => {
                return Err(Error::corrupt(format!(
                    "block {id} in {key} has no usable reference in its frame"
                )));
            }
            (_, Some(_)) => {
                return Err(Error::corrupt(format!(
                    "block {id} in {key} is listed as XORed but its entry says not"
                )));
            }
            (_, None) => dst.copy_from_slice(member),
        }
    } else {
        let stored = backend.get(&key, Some(loc.stored()))?;
        if loc.codec == Codec::ZstdDelta {
            let (base_id, frame) = codec::split_delta(&stored)
                .map_err(|e| e.context(format!("block {id} in {key}")))?;
            let base_id = Id(base_id);
            if base_id == *id {
                return Err(Error::corrupt(format!(
                    "block {id} in {key} is a delta on itself"
                )));
            }
            let base_bytes = base(&base_id)
                .map_err(|e| e.context(format!("the base of delta block {id} in {key}")))?;
            let mut out = Vec::new();
            codec::decompress_delta(frame, &base_bytes, loc.raw_len as usize, &mut out)
                .map_err(|e| e.context(format!("block {id} in {key}")))?;
            dst.copy_from_slice(&out);
        } else {
            codec::decompress_into(loc.codec, &stored, dst)
                .map_err(|e| e.context(format!("block {id} in {key}")))?;
        }
    }
    if Id::of(dst) == *id {
        Ok(())
    } else {
        Err(mismatch())
    }
}

impl NodeSource for Store {
    fn node_bytes(&self, id: &BlockId) -> Result<Bytes> {
        self.block(id)
    }
}

/// `ranges` sorted and merged where they overlap or lie less than `gap` apart.
fn merge_ranges(mut ranges: Vec<std::ops::Range<u64>>, gap: u64) -> Vec<std::ops::Range<u64>> {
    ranges.sort_unstable_by_key(|r| r.start);
    let mut merged: Vec<std::ops::Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match merged.last_mut() {
            Some(m) if r.start <= m.end.saturating_add(gap) => m.end = m.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}

/// What a write session added.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WriteStats {
    /// New blobs stored.
    pub blobs: u64,
    /// Their uncompressed bytes.
    pub raw_bytes: u64,
    /// Their stored bytes.
    pub stored_bytes: u64,
    /// Packs written.
    pub packs: u64,
    /// Their bytes.
    pub pack_bytes: u64,
}

/// A committed write session. Its registration lasts until this is dropped: hold it
/// until the catalog records the manifests, so that gc cannot remove a block the
/// session deduplicated against before the snapshot that uses it exists.
#[derive(Debug)]
pub struct Committed {
    /// What the session added.
    pub stats: WriteStats,
    _session: Option<Guard>,
}

impl Committed {
    /// An error if the session's registration was lost meanwhile (a lock held through a
    /// database connection that broke): gc may then have collected what the session
    /// wrote, so the caller must not record it. Call right before recording.
    pub fn still_registered(&self) -> Result<()> {
        match &self._session {
            Some(g) => g.still_held(),
            None => Ok(()),
        }
    }
}

/// A writer hands its packs to storage in pieces of at least this many bytes, as they
/// fill, instead of whole when they are sealed: the bytes start towards the disk
/// while later blocks are compressed, and a commit waits only for the last piece.
const PIECE: usize = 4 << 20;

/// A piece buffer that holds a piece without growing: [`PIECE`], plus the largest blob
/// that may cross it (a 4 MiB block) and room for an entry table.
const PIECE_CAPACITY: usize = PIECE + (4 << 20) + (1 << 20);

/// Pieces that may wait for the flusher before the writer blocks.
const FLUSH_QUEUE: usize = 4;

/// What a writer hands its flusher thread, in order.
enum ToFlusher {
    /// The next bytes of the open pack of a kind.
    Part(BlobKind, Vec<u8>),
    /// The open pack of a kind is complete: seal and name it.
    Seal(BlobKind, PackBuilder),
}

/// Which blocks a new delta of a write session may name as its base
/// ([`Writer::bases`]); a value that threads can share.
#[derive(Clone, Copy, Debug)]
pub struct Bases<'s, 'w> {
    store: &'s Store,
    masked: &'w HashSet<BlockId, FxBuildHasher>,
}

impl<'s> Bases<'s, '_> {
    /// The store written to.
    pub fn store(&self) -> &'s Store {
        self.store
    }

    /// Whether a new delta or XOR member may name `id` as its base: committed (a base
    /// must be durable before a block read through it is), not being removed by a gc
    /// plan, and stored whole, not read through a base itself.
    pub fn may_base(&self, id: &BlockId) -> bool {
        !self.masked.contains(id)
            && self
                .store
                .locate(id)
                .is_some_and(|(_, l)| !l.codec.has_base())
    }
}

/// A write session: new blobs go into packs, made durable by [`Writer::commit`].
#[derive(Debug)]
pub struct Writer<'s> {
    store: &'s Store,
    compression: Compression,
    /// The open data pack.
    pack: PackBuilder,
    /// The open tree pack: nodes live apart from data so that walking trees (du, gc,
    /// verify) reads a few dense packs instead of pages scattered through data packs.
    tree_pack: PackBuilder,
    written: Vec<(PackId, Vec<PackEntry>)>,
    pending: HashSet<BlockId, FxBuildHasher>,
    /// Tree nodes added by this session, readable before commit.
    pending_nodes: HashMap<BlockId, Bytes, FxBuildHasher>,
    stats: WriteStats,
    flush_tx: Option<SyncSender<ToFlusher>>,
    flusher: Option<JoinHandle<Result<Flushed>>>,
    /// Piece buffers the flusher has written out, for the next pieces: a fresh buffer
    /// costs the kernel clearing every page of it as it is first touched.
    spare_rx: Option<Receiver<Vec<u8>>>,
    scratch: Vec<u8>,
    /// The session's registration (none for gc's own writer).
    session: Option<Guard>,
    /// Blobs a gc plan is removing: never deduplicated against.
    masked: HashSet<BlockId, FxBuildHasher>,
    /// Set once the flusher failed: the open packs have given it pieces that are lost,
    /// and blocks in `pending` may be in packs that were never written. Nothing more is
    /// added or committed; a second flusher would write packs missing their start.
    failed: bool,
}

/// What the flusher wrote: each pack's id and entries, in the order they were sealed,
/// and their bytes in all.
type Flushed = (Vec<(PackId, Vec<PackEntry>)>, u64);

/// A pack the flusher is writing: its object so far and the hash of its bytes.
struct OpenPack<'b> {
    object: Box<dyn crate::backend::PartialObject + 'b>,
    hash: blake3::Hasher,
}

/// Write the packs the writer hands over, piece by piece, and name each by its hash
/// when it is sealed. Sealing (the entry table) and hashing happen here, off the thread
/// that feeds blocks. Buffers written out go back to the writer for reuse.
fn flusher(
    backend: Arc<dyn Backend>,
    rx: Receiver<ToFlusher>,
    spare_tx: SyncSender<Vec<u8>>,
) -> Result<Flushed> {
    let mut open: [Option<OpenPack<'_>>; 2] = [None, None];
    let mut done = Vec::new();
    let mut bytes_written = 0u64;
    for msg in rx {
        let (kind, bytes, entries) = match msg {
            ToFlusher::Part(kind, bytes) => (kind, bytes, None),
            ToFlusher::Seal(kind, builder) => {
                let (bytes, entries) = builder.seal()?;
                (kind, bytes, Some(entries))
            }
        };
        let slot = &mut open[kind as usize];
        let pack = match slot {
            Some(p) => p,
            None => slot.insert(OpenPack {
                object: backend.create(keys::PACK_PREFIX)?,
                hash: blake3::Hasher::new(),
            }),
        };
        pack.object.write(&bytes)?;
        pack.hash.update(&bytes);
        bytes_written += bytes.len() as u64;
        if let Some(entries) = entries {
            let Some(pack) = slot.take() else {
                return Err(Error::new(ErrorKind::Io, "pack writer lost its open pack"));
            };
            let id = Id(*pack.hash.finalize().as_bytes());
            pack.object.finish(&keys::pack_key(&id))?;
            done.push((id, entries));
        }
        // Handed back for reuse if the writer has room for it; else freed here.
        let _ = spare_tx.try_send(bytes);
    }
    Ok((done, bytes_written))
}

impl<'s> Writer<'s> {
    fn new(
        store: &'s Store,
        compression: Compression,
        session: Option<Guard>,
        masked: HashSet<BlockId, FxBuildHasher>,
    ) -> Self {
        Writer {
            store,
            compression,
            // Reserved address space only: pages are touched as blocks arrive.
            pack: PackBuilder::with_format(PIECE_CAPACITY, store.config.object_format()),
            tree_pack: PackBuilder::with_format(1 << 20, store.config.object_format()),
            written: Vec::new(),
            pending: HashSet::default(),
            pending_nodes: HashMap::default(),
            stats: WriteStats::default(),
            flush_tx: None,
            flusher: None,
            spare_rx: None,
            scratch: Vec::new(),
            session,
            masked,
            failed: false,
        }
    }

    /// The store written to.
    pub fn store(&self) -> &'s Store {
        self.store
    }

    /// The compression of this session.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Whether the repository or this session already has `id`.
    pub fn knows(&self, id: &BlockId) -> bool {
        self.pending.contains(id) || (!self.masked.contains(id) && self.store.index().contains(id))
    }

    /// Whether this session stores deltas at all: zstd only, and only in a repository
    /// that earlier releases do not read (see `crate::format::config::DELTA_REPO_VERSION`).
    pub fn stores_deltas(&self) -> bool {
        self.compression.algorithm() == crate::format::codec::Algorithm::Zstd
            && self.store.config.version >= crate::format::config::DELTA_REPO_VERSION
    }

    /// Whether this session stores blocks XORed with similar blocks and their
    /// similarity features: zstd only, and only in a repository that earlier releases
    /// do not read (see `crate::format::config::SIMILAR_REPO_VERSION`).
    pub fn stores_similar(&self) -> bool {
        self.compression.algorithm() == crate::format::codec::Algorithm::Zstd
            && self.store.config.version >= crate::format::config::SIMILAR_REPO_VERSION
    }

    /// What this session's deltas may use as bases (`Bases::may_base`).
    pub fn bases(&self) -> Bases<'s, '_> {
        Bases {
            store: self.store,
            masked: &self.masked,
        }
    }

    /// What this session added so far.
    pub fn stats(&self) -> WriteStats {
        self.stats
    }

    /// Add an already encoded blob unless it is known. Returns whether it was added.
    pub fn add_encoded(
        &mut self,
        id: BlockId,
        kind: BlobKind,
        codec: Codec,
        raw_len: u32,
        stored: &[u8],
    ) -> Result<bool> {
        self.add_encoded_with_feature(id, kind, codec, raw_len, stored, 0)
    }

    /// [`Writer::add_encoded`] with the block's similarity feature (0 for none), which
    /// the index keeps so that later blocks may name this one as their reference.
    pub fn add_encoded_with_feature(
        &mut self,
        id: BlockId,
        kind: BlobKind,
        codec: Codec,
        raw_len: u32,
        stored: &[u8],
        feature: u32,
    ) -> Result<bool> {
        if self.knows(&id) {
            return Ok(false);
        }
        self.push(id, kind, codec, raw_len, stored, feature)?;
        Ok(true)
    }

    /// Add an encoded blob even if the index has it elsewhere (gc's repack); only this
    /// session's own blobs are deduplicated.
    pub(crate) fn copy_encoded(&mut self, e: &PackEntry, stored: &[u8]) -> Result<()> {
        if self.pending.contains(&e.id) {
            return Ok(());
        }
        self.push(e.id, e.kind, e.codec, e.raw_len, stored, e.feature)
    }

    /// Add one shared frame of data blocks (`stored`: the zstd frame of their bytes
    /// back to back, after the reference table of a frame that has one). Members this
    /// session already added are left out of it; the caller leaves out blocks the
    /// repository has (gc's repack keeps them all).
    pub(crate) fn add_frame(
        &mut self,
        kind: BlobKind,
        members: &[FrameMember],
        stored: &[u8],
    ) -> Result<()> {
        let fresh: Vec<FrameMember> = members
            .iter()
            .filter(|m| !self.pending.contains(&m.id))
            .copied()
            .collect();
        if fresh.is_empty() {
            return Ok(());
        }
        self.usable()?;
        let pack = match kind {
            BlobKind::Data => &mut self.pack,
            BlobKind::Tree => &mut self.tree_pack,
        };
        pack.add_frame(kind, &fresh, stored)?;
        for m in &fresh {
            self.pending.insert(m.id);
            self.stats.blobs += 1;
            self.stats.raw_bytes += u64::from(m.raw_len);
        }
        self.stats.stored_bytes += stored.len() as u64;
        self.grew(kind)
    }

    /// Copy `entries` of pack `pid` as they are stored, even if the index has them
    /// elsewhere (gc's repack, repair): the listed members of a frame share one copy
    /// of it, which keeps the bytes of members left out (a frame is never re-encoded,
    /// so a copy cannot change what it decodes to).
    pub(crate) fn copy_entries(&mut self, pid: &PackId, entries: &[PackEntry]) -> Result<()> {
        let key = keys::pack_key(pid);
        let mut entries = entries.to_vec();
        entries.sort_unstable_by_key(|e| (e.offset, e.skip));
        for group in entries.chunk_by(PackEntry::same_frame) {
            let e = group[0];
            let stored = self
                .store
                .backend
                .get(&key, Some(e.offset..e.offset + u64::from(e.stored_len)))?;
            if e.codec.in_frame() {
                let members: Vec<FrameMember> = group
                    .iter()
                    .map(|m| FrameMember {
                        id: m.id,
                        raw_len: m.raw_len,
                        skip: m.skip,
                        codec: m.codec,
                        feature: m.feature,
                    })
                    .collect();
                self.add_frame(e.kind, &members, &stored)?;
            } else {
                self.copy_encoded(&e, &stored)?;
            }
        }
        Ok(())
    }

    fn push(
        &mut self,
        id: BlockId,
        kind: BlobKind,
        codec: Codec,
        raw_len: u32,
        stored: &[u8],
        feature: u32,
    ) -> Result<()> {
        self.usable()?;
        let pack = match kind {
            BlobKind::Data => &mut self.pack,
            BlobKind::Tree => &mut self.tree_pack,
        };
        pack.add(id, kind, codec, raw_len, stored, feature)?;
        self.pending.insert(id);
        self.stats.blobs += 1;
        self.stats.raw_bytes += u64::from(raw_len);
        self.stats.stored_bytes += stored.len() as u64;
        self.grew(kind)
    }

    fn slot(&mut self, kind: BlobKind) -> &mut PackBuilder {
        match kind {
            BlobKind::Data => &mut self.pack,
            BlobKind::Tree => &mut self.tree_pack,
        }
    }

    /// After a blob was added to the pack of `kind`: seal the pack if it is full, or
    /// else hand its bytes to the flusher once they make a piece.
    fn grew(&mut self, kind: BlobKind) -> Result<()> {
        let pack_size = self.store.config.pack_size;
        let pack = self.slot(kind);
        if pack.len() >= pack_size {
            return self.seal(kind);
        }
        if pack.untaken() >= PIECE {
            let next = self.spare();
            let part = self.slot(kind).take(next);
            self.send_to_flusher(ToFlusher::Part(kind, part))?;
        }
        Ok(())
    }

    /// A buffer for the next piece: one the flusher is done with, or a fresh one.
    fn spare(&self) -> Vec<u8> {
        match self.spare_rx.as_ref().and_then(|rx| rx.try_recv().ok()) {
            Some(buf) if buf.capacity() >= PIECE_CAPACITY => buf,
            _ => crate::buffer::with_capacity(PIECE_CAPACITY),
        }
    }

    /// Compress and add a blob unless it is known. Returns whether it was added.
    pub fn add(&mut self, id: BlockId, kind: BlobKind, raw: &[u8]) -> Result<bool> {
        if self.knows(&id) {
            return Ok(false);
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let codec = codec::compress(self.compression, raw, &mut scratch)?;
        let stored: &[u8] = if codec == Codec::Raw { raw } else { &scratch };
        let raw_len = u32::try_from(raw.len())
            .map_err(|_| Error::new(ErrorKind::InvalidInput, "blob too large"))?;
        let r = self.add_encoded(id, kind, codec, raw_len, stored);
        self.scratch = scratch;
        r
    }

    fn seal(&mut self, kind: BlobKind) -> Result<()> {
        if self.slot(kind).is_empty() {
            return Ok(());
        }
        let fresh = PackBuilder::reusing(self.spare(), self.store.config.object_format());
        let sealed = std::mem::replace(self.slot(kind), fresh);
        self.send_to_flusher(ToFlusher::Seal(kind, sealed))
    }

    /// An error once the flusher has failed (see `failed`).
    fn usable(&self) -> Result<()> {
        if self.failed {
            return Err(Error::new(
                ErrorKind::Io,
                "pack writer failed earlier in this session; nothing more can be written",
            ));
        }
        Ok(())
    }

    /// Send `msg` to the flusher thread, starting it on first use.
    fn send_to_flusher(&mut self, msg: ToFlusher) -> Result<()> {
        self.usable()?;
        if self.flush_tx.is_none() {
            // A few pieces may wait while one is written; the writer blocks beyond that.
            let (tx, rx) = sync_channel::<ToFlusher>(FLUSH_QUEUE);
            let backend = Arc::clone(&self.store.backend);
            // No more buffers than can be in use at once: the ones queued, the one
            // being written and the one filling.
            let (spare_tx, spare_rx) = sync_channel::<Vec<u8>>(FLUSH_QUEUE + 2);
            self.spare_rx = Some(spare_rx);
            self.flusher = Some(std::thread::spawn(move || flusher(backend, rx, spare_tx)));
            self.flush_tx = Some(tx);
        }
        let sent = self.flush_tx.as_ref().map(|tx| tx.send(msg));
        if !matches!(sent, Some(Ok(()))) {
            // The flusher stopped: its error says why.
            self.failed = true;
            return self
                .join_flusher()
                .and(Err(Error::new(ErrorKind::Io, "pack writer stopped")));
        }
        Ok(())
    }

    /// Wait for the flusher to write every pack handed to it, and record them.
    fn join_flusher(&mut self) -> Result<()> {
        self.flush_tx = None;
        let (done, bytes) = match self.flusher.take().map(|h| h.join()) {
            None => return Ok(()),
            Some(Ok(Ok(r))) => r,
            Some(Ok(Err(e))) => {
                self.failed = true;
                return Err(e);
            }
            Some(Err(_)) => {
                self.failed = true;
                return Err(Error::new(ErrorKind::Io, "pack writer thread panicked"));
            }
        };
        self.stats.packs += done.len() as u64;
        self.stats.pack_bytes += bytes;
        self.written.extend(done);
        Ok(())
    }

    /// Make everything added durable (see the module docs for the order) and visible to
    /// readers of this store.
    pub fn commit(mut self) -> Result<Committed> {
        self.usable()?;
        self.seal(BlobKind::Data)?;
        self.seal(BlobKind::Tree)?;
        self.join_flusher()?;
        let mut written_file = None;
        if !self.written.is_empty() {
            // The packs must be durable before an index file names them: otherwise a
            // power loss could keep the index and lose a pack, and later writes would
            // deduplicate against blocks that are gone.
            self.store.backend.sync()?;
            let (key, bytes) =
                index_file::encode_file(&self.written, self.store.config.index_format());
            self.store.backend.put(&key, &bytes)?;
            written_file = Some(key);
        }
        self.store.backend.sync()?;
        let mut idx = self.store.index.write().unwrap_or_else(|p| p.into_inner());
        if let Some(key) = written_file {
            idx.note_file(key);
        }
        for (pid, entries) in &self.written {
            for e in entries {
                idx.insert(*pid, e);
            }
        }
        drop(idx);
        // The session's tree nodes are read again soon (the sizes of the new snapshot
        // are counted by walking its trees): keep them decoded.
        for (id, bytes) in self.pending_nodes.drain() {
            self.store.cache.insert(id, bytes);
        }
        Ok(Committed {
            stats: self.stats,
            _session: self.session.take(),
        })
    }
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        // An uncommitted session: let the flusher finish what it has; its packs are
        // unreferenced garbage for gc.
        let _ = self.join_flusher();
    }
}

impl NodeSink for Writer<'_> {
    fn put_node(&mut self, id: BlockId, bytes: &[u8]) -> Result<()> {
        if self.add(id, BlobKind::Tree, bytes)? {
            self.pending_nodes.insert(id, Bytes::copy_from_slice(bytes));
        }
        Ok(())
    }
}

/// A session reads its own new nodes, then the store's.
impl NodeSource for Writer<'_> {
    fn node_bytes(&self, id: &BlockId) -> Result<Bytes> {
        match self.pending_nodes.get(id) {
            Some(b) => Ok(b.clone()),
            None => self.store.block(id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemoryBackend;

    #[test]
    fn prefetch_ranges_merge_when_close() {
        assert_eq!(
            merge_ranges(vec![300..400, 0..100, 90..120, 1000..1100, 130..140], 10),
            vec![0..140, 300..400, 1000..1100]
        );
        assert_eq!(merge_ranges(vec![], 10), Vec::<std::ops::Range<u64>>::new());
        assert_eq!(merge_ranges(vec![5..9, 0..20], 0), vec![0..20]);
    }

    /// Prefetching is only a hint: known, unknown and repeated ids are all fine, and
    /// reads afterwards return the same bytes.
    #[test]
    fn prefetch_changes_no_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let be: Arc<dyn Backend> =
            Arc::new(crate::backend::LocalBackend::open(dir.path()).expect("backend"));
        let store = Store::init(Arc::clone(&be), StoreConfig::default()).expect("init");
        let mut w = store.writer(Compression::default()).expect("writer");
        let blocks: Vec<Vec<u8>> = (0..20u8).map(|k| vec![k; 70_000]).collect();
        let ids: Vec<BlockId> = blocks.iter().map(|b| Id::of(b)).collect();
        for (id, b) in ids.iter().zip(&blocks) {
            w.add(*id, BlobKind::Data, b).expect("add");
        }
        w.commit().expect("commit");
        let unknown = Id::of(b"never stored");
        store.prefetch(ids.iter().chain([&unknown, &ids[0]]));
        for (id, b) in ids.iter().zip(&blocks) {
            assert_eq!(&store.read_blob(id).expect("read")[..], &b[..]);
        }
    }

    /// `n` deterministic incompressible bytes from `seed`.
    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut b = vec![0u8; n];
        fastrand::Rng::with_seed(seed).fill(&mut b);
        b
    }

    /// A frame holding `members` (bytes, codec, reference), each 4 KiB, with a
    /// reference table when any names a reference; added by hand, as a damaged or
    /// hostile repository could hold it.
    fn add_ref_frame(w: &mut Writer<'_>, members: &[(&[u8], Codec, Option<BlockId>)]) {
        let mut refs = Vec::new();
        let mut whole = Vec::new();
        let mut ms = Vec::new();
        for (k, (bytes, codec, r)) in members.iter().enumerate() {
            let skip = (k * 4096) as u32;
            if let Some(r) = r {
                refs.push((skip, *r));
            }
            whole.extend_from_slice(bytes);
            ms.push(FrameMember {
                id: Id::of(bytes),
                raw_len: 4096,
                skip,
                codec: *codec,
                feature: 0,
            });
        }
        let mut stored = Vec::new();
        if !refs.is_empty() {
            refs::encode_refs(&refs, &mut stored).expect("table");
        }
        let mut z = Vec::new();
        codec::compress(Compression::default(), &whole, &mut z).expect("zstd");
        stored.extend_from_slice(&z);
        w.add_frame(BlobKind::Data, &ms, &stored).expect("frame");
    }

    /// XOR members read back through their reference; a member whose reference is read
    /// through a base itself, names itself, or is missing from the table is corrupt,
    /// and so is a member the table lists whose entry says it is stored as it is.
    #[test]
    fn xor_members_read_only_through_a_whole_reference() {
        let store =
            Store::init(Arc::new(MemoryBackend::new()), StoreConfig::default()).expect("init");
        let a = noise(4096, 1);
        let mut b = a.clone();
        b[100] ^= 1;
        let mut c = b.clone();
        c[200] ^= 1;
        let (ia, ib, ic) = (Id::of(&a), Id::of(&b), Id::of(&c));
        let xor = |x: &[u8], y: &[u8]| {
            let mut o = vec![0; x.len()];
            crate::similarity::xor_to(x, y, &mut o);
            o
        };
        let mut w = store.writer(Compression::default()).expect("writer");
        w.add(ia, BlobKind::Data, &a).expect("a");
        // b on a (fine), then a plain member of the same frame.
        let (bx, plain) = (xor(&b, &a), noise(4096, 2));
        add_ref_frame(
            &mut w,
            &[
                (&bx, Codec::ZstdFrameXor, Some(ia)),
                (&plain, Codec::ZstdFrameRefs, None),
            ],
        );
        w.commit().expect("commit");
        // The members' ids are of their stored bytes; index them under the real ones.
        let fix = |store: &Store, stored: &[u8], real: BlockId| {
            let (pid, loc) = store.locate(&Id::of(stored)).expect("indexed");
            let mut idx = store.index.write().expect("lock");
            let e = PackEntry {
                id: real,
                kind: BlobKind::Data,
                codec: loc.codec,
                offset: loc.offset,
                stored_len: loc.stored_len,
                raw_len: loc.raw_len,
                skip: loc.skip,
                feature: 0,
            };
            idx.insert(pid, &e);
        };
        fix(&store, &bx, ib);
        assert_eq!(&store.read_blob(&ib).expect("b")[..], &b[..]);
        assert_eq!(store.base_of(&ib).expect("table"), Some(ia));
        assert_eq!(
            &store.read_blob(&Id::of(&plain)).expect("plain")[..],
            &plain[..]
        );
        assert_eq!(store.base_of(&Id::of(&plain)).expect("plain"), None);

        // c on b, an XOR member itself.
        let cx = xor(&c, &b);
        let mut w = store.writer(Compression::default()).expect("writer");
        add_ref_frame(&mut w, &[(&cx, Codec::ZstdFrameXor, Some(ib))]);
        w.commit().expect("commit");
        fix(&store, &cx, ic);
        let err = store
            .read_blob(&ic)
            .expect_err("reference read through a base");
        assert!(
            err.to_string().contains("itself read through a base"),
            "{err}"
        );

        // A member naming itself; a member missing from its table; a listed member
        // whose entry says it is plain.
        let (d, e) = (vec![3u8; 4096], vec![4u8; 4096]);
        let mut w = store.writer(Compression::default()).expect("writer");
        add_ref_frame(&mut w, &[(&d, Codec::ZstdFrameXor, Some(Id::of(&d)))]);
        add_ref_frame(
            &mut w,
            &[
                (&e, Codec::ZstdFrameXor, None),
                (&bx, Codec::ZstdFrameRefs, Some(ia)),
            ],
        );
        w.commit().expect("commit");
        for (id, what) in [
            (Id::of(&d), "no usable reference"),
            (Id::of(&e), "no usable reference"),
            (Id::of(&bx), "listed as XORed"),
        ] {
            let err = store.read_blob(&id).expect_err(what);
            assert!(err.to_string().contains(what), "{err}");
        }
    }

    /// A backend holding a damaged copy (a cache) of every pack until it evicts it.
    #[derive(Debug)]
    struct DamagedCopies {
        inner: MemoryBackend,
        evicted: std::sync::Mutex<Vec<String>>,
    }

    impl Backend for DamagedCopies {
        fn put(&self, key: &str, data: &[u8]) -> Result<()> {
            self.inner.put(key, data)
        }
        fn get(&self, key: &str, range: Option<std::ops::Range<u64>>) -> Result<Bytes> {
            let good = self.inner.get(key, range)?;
            let evicted = self
                .evicted
                .lock()
                .expect("lock")
                .contains(&key.to_string());
            if !key.starts_with("packs/") || evicted || good.is_empty() {
                return Ok(good);
            }
            let mut bad = good.to_vec();
            let mid = bad.len() / 2;
            bad[mid] ^= 0x20;
            Ok(Bytes::from(bad))
        }
        fn size(&self, key: &str) -> Result<u64> {
            self.inner.size(key)
        }
        fn list(&self, prefix: &str) -> Result<Vec<crate::ObjectMeta>> {
            self.inner.list(prefix)
        }
        fn delete(&self, key: &str) -> Result<()> {
            self.inner.delete(key)
        }
        fn sync(&self) -> Result<()> {
            self.inner.sync()
        }
        fn locks(&self) -> &dyn crate::Locks {
            self.inner.locks()
        }
        fn create(&self, prefix: &str) -> Result<Box<dyn crate::PartialObject + '_>> {
            self.inner.create(prefix)
        }
        fn evict(&self, key: &str) -> bool {
            self.evicted.lock().expect("lock").push(key.to_string());
            true
        }
    }

    /// A block read from a damaged copy fails its id: the backend evicts the copy and
    /// the block is read again, right; without a copy to evict, the damage is an error.
    #[test]
    fn damage_in_a_copy_is_evicted_and_read_again() {
        let be = Arc::new(DamagedCopies {
            inner: MemoryBackend::new(),
            evicted: std::sync::Mutex::new(Vec::new()),
        });
        let store =
            Store::init(Arc::clone(&be) as Arc<dyn Backend>, StoreConfig::default()).expect("init");
        let block = noise(64 << 10, 3);
        let id = Id::of(&block);
        // Small blocks written together share a compressed frame.
        let small: Vec<Vec<u8>> = (0..8u64).map(|i| noise(4096, 10 + i)).collect();
        let mut w = store.writer(Compression::default()).expect("writer");
        w.add(id, BlobKind::Data, &block).expect("add");
        for b in &small {
            w.add(Id::of(b), BlobKind::Data, b).expect("add");
        }
        drop(w.commit().expect("commit"));
        be.evicted.lock().expect("lock").clear();
        assert_eq!(&store.read_blob(&id).expect("read again")[..], &block[..]);
        for b in &small {
            assert_eq!(
                &store.read_blob(&Id::of(b)).expect("read again")[..],
                &b[..]
            );
        }
        let evicted = be.evicted.lock().expect("lock").clone();
        assert_eq!(evicted.len(), 1, "{evicted:?}");
        assert!(evicted[0].starts_with("packs/"));
        // The whole store verifies clean through the copies (each evicted once found).
        be.evicted.lock().expect("lock").clear();
        let report = crate::verify::verify_store(&store, true, &|_| {}).expect("verify");
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        // The same damage in storage itself: an error, never the wrong bytes.
        let plain = MemoryBackend::new();
        for m in be.inner.list("").expect("list") {
            let mut bytes = be.inner.get(&m.key, None).expect("get").to_vec();
            if m.key.starts_with("packs/") {
                let mid = bytes.len() / 2;
                bytes[mid] ^= 0x20;
            }
            plain.put(&m.key, &bytes).expect("put");
        }
        let damaged = Store::open(Arc::new(plain)).expect("open");
        assert_eq!(
            damaged.read_blob(&id).map_err(|e| e.kind()).err(),
            Some(ErrorKind::Corrupt)
        );
    }

    /// Once the flusher fails, the session is over: later adds and the commit fail,
    /// instead of a second flusher writing the rest of a pack that lost its start.
    #[test]
    fn a_failed_flusher_ends_the_session() {
        let be = Arc::new(crate::backend::CrashBackend::new());
        let cfg = StoreConfig {
            pack_size: 4 << 20,
            ..StoreConfig::default()
        };
        let store = Store::init(Arc::clone(&be) as Arc<dyn Backend>, cfg).expect("init");
        let mut w = store.writer(Compression::none()).expect("writer");
        be.fail_after(0);
        let block = |i: u64| noise(1 << 20, i);
        let mut failed_at = None;
        for i in 0..40 {
            let b = block(i);
            if w.add(Id::of(&b), BlobKind::Data, &b).is_err() {
                failed_at = Some(i);
                break;
            }
        }
        let i = failed_at.expect("the failed pack write surfaces on a later add");
        for j in i + 1..i + 20 {
            let b = block(j);
            assert!(
                w.add(Id::of(&b), BlobKind::Data, &b).is_err(),
                "add {j} after the failure"
            );
        }
        assert!(w.commit().is_err());
    }

    /// A session larger than a pack, whose packs go out in several pieces each: every
    /// pack is whole and named by its hash, and every block reads back after a reopen.
    #[test]
    fn packs_written_in_pieces_read_back_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let local: Arc<dyn Backend> =
            Arc::new(crate::backend::LocalBackend::open(dir.path()).expect("backend"));
        let memory: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        for be in [local, memory] {
            let cfg = StoreConfig {
                pack_size: 10 << 20,
                ..StoreConfig::default()
            };
            let store = Store::init(Arc::clone(&be), cfg).expect("init");
            let mut w = store.writer(Compression::none()).expect("writer");
            // 25 MiB of distinct 1 MiB blocks: three packs of up to three pieces.
            let blocks: Vec<Vec<u8>> = (0..25).map(|i| noise(1 << 20, i)).collect();
            for b in &blocks {
                assert!(w.add(Id::of(b), BlobKind::Data, b).expect("add"));
            }
            let stats = w.commit().expect("commit").stats;
            assert_eq!(stats.packs, 3);
            let packs = be.list(keys::PACK_PREFIX).expect("list");
            assert_eq!(packs.len(), 3);
            assert_eq!(packs.iter().map(|m| m.size).sum::<u64>(), stats.pack_bytes);
            for m in &packs {
                let bytes = be.get(&m.key, None).expect("get");
                assert_eq!(keys::pack_key(&Id::of(&bytes)), m.key);
            }
            let again = Store::open(be).expect("open");
            for b in &blocks {
                assert_eq!(&again.read_blob(&Id::of(b)).expect("read")[..], &b[..]);
            }
        }
    }

    #[test]
    fn write_commit_read() {
        let be: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let store = Store::init(Arc::clone(&be), StoreConfig::default()).expect("init");
        let mut w = store.writer(Compression::default()).expect("writer");
        let a = vec![7u8; 10_000];
        let id = Id::of(&a);
        assert!(w.add(id, BlobKind::Data, &a).expect("add"));
        assert!(!w.add(id, BlobKind::Data, &a).expect("dedup"));
        let st = w.commit().expect("commit").stats;
        assert_eq!(st.blobs, 1);
        assert!(st.stored_bytes < 10_000);
        assert_eq!(&store.block(&id).expect("read")[..], &a[..]);
        // A reopened store finds it through its index file.
        let again = Store::open(be).expect("open");
        assert_eq!(&again.read_blob(&id).expect("read")[..], &a[..]);
        assert!(Store::init(Arc::clone(again.backend()), StoreConfig::default()).is_err());
    }

    /// `read_block_into` gives what `read_blob` gives for each way a block is stored
    /// (as it is, lz4, zstd alone, a member of a shared frame), from storage and from
    /// the block cache, and refuses a buffer of another length and damaged bytes.
    #[test]
    fn reads_into_a_buffer_match_reads_of_a_blob() {
        let text: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8 / 3).collect();
        let cases: [(&str, Option<Compression>); 4] = [
            ("raw", Some(Compression::none())),
            (
                "lz4",
                Some(Compression::new(codec::Algorithm::Lz4, None).expect("lz4")),
            ),
            ("zstd", Some(Compression::default())),
            ("frame", None),
        ];
        for (what, compression) in cases {
            let be = Arc::new(MemoryBackend::new());
            let store = Store::init(be.clone(), StoreConfig::default()).expect("init");
            let mut w = store.writer(Compression::default()).expect("writer");
            let data = match compression {
                Some(c) => {
                    let mut w = store.writer(c).expect("writer");
                    w.add(Id::of(&text), BlobKind::Data, &text).expect("add");
                    w.commit().expect("commit");
                    text.clone()
                }
                None => {
                    let (a, b) = (vec![7u8; 4096], noise(4096, 3));
                    add_ref_frame(
                        &mut w,
                        &[(&a, Codec::ZstdFrame, None), (&b, Codec::ZstdFrame, None)],
                    );
                    b
                }
            };
            w.commit().expect("commit");
            let id = Id::of(&data);
            let mut dst = vec![0xAA; data.len()];
            store.read_block_into(&id, &mut dst).expect(what);
            assert_eq!(dst, data, "{what}");
            assert_eq!(&store.read_blob(&id).expect(what)[..], &data[..], "{what}");
            // From the block cache as well.
            store.block(&id).expect(what);
            dst.fill(0);
            store.read_block_into(&id, &mut dst).expect(what);
            assert_eq!(dst, data, "{what} cached");
            for len in [data.len() - 1, data.len() + 1] {
                let err = store
                    .read_block_into(&id, &mut vec![0; len])
                    .expect_err(what);
                assert_eq!(err.kind(), ErrorKind::Corrupt, "{what}: {err}");
            }
            let err = Store::open(be.clone())
                .expect("open")
                .read_block_into(&id, &mut vec![0; data.len() + 1])
                .expect_err(what);
            assert_eq!(err.kind(), ErrorKind::Corrupt, "{what} uncached: {err}");

            let (pack, loc) = store.locate(&id).expect("located");
            let key = keys::pack_key(&pack);
            let mut bytes = be.get(&key, None).expect("get").to_vec();
            bytes[(loc.offset + u64::from(loc.stored_len) / 2) as usize] ^= 0x40;
            be.overwrite(&key, bytes);
            let fresh = Store::open(be.clone()).expect("open");
            let err = fresh.read_block_into(&id, &mut dst).expect_err(what);
            assert_eq!(err.kind(), ErrorKind::Corrupt, "{what} damaged: {err}");
            let err = fresh.read_blob(&id).expect_err(what);
            assert_eq!(err.kind(), ErrorKind::Corrupt, "{what} damaged: {err}");
        }
    }

    #[test]
    fn corrupt_blob_is_an_error() {
        let be = Arc::new(MemoryBackend::new());
        let store = Store::init(be.clone(), StoreConfig::default()).expect("init");
        let mut w = store.writer(Compression::none()).expect("writer");
        let a: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let id = Id::of(&a);
        w.add(id, BlobKind::Data, &a).expect("add");
        w.commit().expect("commit");
        let (pack, loc) = store.locate(&id).expect("located");
        let key = keys::pack_key(&pack);
        let mut bytes = be.get(&key, None).expect("get").to_vec();
        bytes[loc.offset as usize + 17] ^= 1;
        be.overwrite(&key, bytes);
        let err = store.read_blob(&id).expect_err("must fail");
        assert_eq!(err.kind(), ErrorKind::Corrupt);
    }

    #[test]
    fn unopened_repo_is_a_clear_error() {
        let be: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        let err = Store::open(be).expect_err("no repo");
        assert_eq!(err.kind(), ErrorKind::Repository);
    }
}
