//! Garbage collection: remove blobs no snapshot references, repack packs that became
//! mostly garbage.
//!
//! ## Protocol
//! gc holds the maintenance lock ([`crate::lock`]) throughout; creates and mounts keep
//! running. Before step 1 it removes the plans of interrupted gcs, and the temporary
//! files of crashed writers ([`Backend::remove_stale_temporaries`]: never a running
//! writer's, whose pack is still filling).
//! 1. **Load** every index file as it is (which packs each one names, and their entries)
//!    and list the packs. Packs that no index file names are *orphans* (left by crashed
//!    writers, or being written right now).
//! 2. **Mark** every blob reachable from the roots (the catalog's snapshots): tree nodes
//!    and data blocks, each shared subtree walked once, so the cost follows the live data;
//!    then the base of every live delta block and the reference of every live XOR
//!    member (each is read through it).
//! 3. **Plan**: each live blob is owned by one pack (the first that holds it, preferring
//!    a whole copy to a delta copy). A pack owning no live blob is deleted; one whose
//!    live share (by stored bytes) is below the threshold is repacked, and so are small
//!    packs (under 1/8 of the pack size, as every create leaves) when there are several,
//!    so that they merge. The *dead* blobs are those of these packs that nothing
//!    references.
//! 4. **Publish** the plan (`gc/<blake3>`: dead blob ids and packs to remove), synced.
//!    From now on a new write session reads the plan when it starts and never
//!    deduplicates against a dead blob, nor stores a delta on one or XORs a block with
//!    one; it stores its own copy.
//! 5. **Wait** for every write session registered before the plan was published: such a
//!    session may have deduplicated against a dead blob. Then **mark again** from the
//!    roots (snapshots committed meanwhile are walked; the rest were seen) and re-plan
//!    with the larger live set; re-read the index files so that orphans a session has
//!    since committed are kept.
//! 6. **Repack**: copy the live blobs of repacked packs, checked against their ids, into
//!    new packs (stored bytes as they are, no recompression); commit them as any writer
//!    does (packs, sync, index file, sync).
//! 7. **Rewrite the index**: one new index file for the surviving packs named by the
//!    index files that also name removed packs; sync; delete those old index files; sync.
//!    Index files that name no removed pack are left alone.
//! 8. **Delete** the removed and orphan packs; sync; delete the plan; sync.
//!
//! A crash anywhere leaves a readable repository: before step 7 nothing was removed;
//! after it, the old and new index files overlap (harmless); after the old ones go, the
//! removed packs are orphans that the next gc deletes. A leftover plan only makes new
//! sessions store some blocks again; the next gc removes it.
//!
//! Readers that looked a blob up before a repack hold a location in a deleted pack: a
//! pack mapped already stays readable (an unlinked file lives while mapped), and a read
//! that finds its pack gone reloads the index and retries ([`crate::store::Store::block`]).

use std::collections::{BTreeMap, HashMap, HashSet};

use rustc_hash::FxBuildHasher;
use serde::Serialize;

use crate::backend::Backend;
use crate::error::{Error, ErrorKind, Result};
use crate::format::index_file;
use crate::format::keys;
use crate::format::keys::PLAN_PREFIX;
use crate::format::plan::Plan;
use crate::frame::{self, FrameCache};
use crate::id::{BlockId, PackId};
use crate::index::Location;
use crate::manifest::{self, BlockRef, Manifest};
use crate::pack::{self, PackEntry};
use crate::store::{BaseReader, Store, read_located};

type IdSet = HashSet<BlockId, FxBuildHasher>;

/// Settings.
#[derive(Clone, Copy, Debug)]
pub struct GcOptions {
    /// Report what would be done, change nothing.
    pub dry_run: bool,
    /// Repack a pack whose live share of stored bytes is below this (0.0-1.0).
    pub repack_below: f64,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            dry_run: false,
            repack_below: 0.9,
        }
    }
}

/// What gc found and did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GcReport {
    /// Packs and their bytes before.
    pub packs_before: u64,
    /// Bytes of every pack before.
    pub bytes_before: u64,
    /// Manifests marked.
    pub roots: u64,
    /// Reachable blobs.
    pub live_blobs: u64,
    /// Stored bytes of reachable blobs.
    pub live_bytes: u64,
    /// Unreferenced blobs removed (or that would be).
    pub dead_blobs: u64,
    /// Unreferenced blobs left in packs that stay (live share above the threshold).
    pub dead_blobs_kept: u64,
    /// Packs deleted whole.
    pub packs_deleted: u64,
    /// Packs rewritten.
    pub packs_repacked: u64,
    /// Orphan packs deleted (no index file named them).
    pub orphans_deleted: u64,
    /// New packs written by the repack.
    pub packs_written: u64,
    /// Bytes freed: removed packs minus new packs.
    pub bytes_freed: u64,
    /// Index files replaced by one.
    pub index_files_replaced: u64,
    /// Write sessions gc waited for.
    pub waited_sessions: u64,
    /// Leftover plans of interrupted gcs removed.
    pub stale_plans: u64,
    /// Temporary files of crashed writers removed ([`Backend::remove_stale_temporaries`]).
    pub temporaries_removed: u64,
    /// Packs kept although planned for removal, with why (a live blob failed its check).
    pub kept: Vec<String>,
    /// Nothing was changed.
    pub dry_run: bool,
}

/// Phases reported while gc runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Loading index files.
    Load,
    /// Walking the roots.
    Mark,
    /// Waiting for this many write sessions.
    Wait(usize),
    /// Copying live blobs.
    Repack,
    /// Deleting.
    Sweep,
}

/// The packs and entries the index files name, as stored.
#[derive(Debug, Default)]
struct Files {
    /// index key -> the packs it names.
    files: BTreeMap<String, Vec<PackId>>,
    /// pack -> its entries (union over files).
    packs: BTreeMap<PackId, Vec<PackEntry>>,
}

fn load_files(backend: &dyn Backend, skip: &BTreeMap<String, Vec<PackId>>) -> Result<Files> {
    let mut out = Files::default();
    for meta in backend.list(keys::INDEX_PREFIX)? {
        if skip.contains_key(&meta.key) {
            continue;
        }
        let bytes = backend.get(&meta.key, None)?;
        let (packs, entries) = index_file::decode_file(&bytes).map_err(|e| e.context(&meta.key))?;
        if !keys::index_key_names(&meta.key, &bytes) {
            return Err(Error::corrupt(format!(
                "{}: name does not match content",
                meta.key
            )));
        }
        let mut per: Vec<Vec<PackEntry>> = vec![Vec::new(); packs.len()];
        for (p, e) in entries {
            per[p as usize].push(e);
        }
        for (pid, es) in packs.iter().zip(per) {
            let slot = out.packs.entry(*pid).or_default();
            if slot.is_empty() {
                *slot = es;
            } else {
                let have: IdSet = slot.iter().map(|e| e.id).collect();
                slot.extend(es.into_iter().filter(|e| !have.contains(&e.id)));
            }
        }
        out.files.insert(meta.key, packs);
    }
    // Index files list entries by id; put each pack's in its table's order, so that a
    // frame's members are next to each other.
    for es in out.packs.values_mut() {
        es.sort_unstable_by_key(|e| (e.offset, e.skip));
    }
    Ok(out)
}

/// Mark everything reachable from `roots` (skipping keys already in `seen`).
fn mark(
    store: &Store,
    roots: &[(String, Manifest)],
    seen: &mut HashSet<String>,
    live: &mut IdSet,
    nodes: &mut IdSet,
) -> Result<u64> {
    let mut n = 0;
    for (key, m) in roots {
        if !seen.insert(key.clone()) {
            continue;
        }
        n += 1;
        if m.height() == 0 {
            if let BlockRef::Data(id) = m.root {
                live.insert(id);
            }
            continue;
        }
        // A subtree met again is skipped before it is read, so walking many trees that
        // share most nodes costs what their distinct nodes cost.
        let mut data: Vec<BlockId> = Vec::new();
        manifest::visit_new_nodes(
            store,
            m,
            // Nodes seen are tracked apart from data blocks: a data block with the bytes
            // of a node must not hide that node's subtree.
            &mut |id| nodes.insert(id),
            &mut |node, level, kids| {
                data.push(node);
                if level == 1 {
                    data.extend(kids.iter().filter_map(|k| match k {
                        BlockRef::Data(b) => Some(*b),
                        _ => None,
                    }));
                }
                Ok(true)
            },
        )
        .map_err(|e| e.context(format!("walking {key}")))?;
        live.extend(data);
    }
    Ok(n)
}

/// Mark the base of every live delta ([`Codec::ZstdDelta`]) and the reference of every
/// live XOR member ([`Codec::ZstdFrameXor`]): such a block is read through it, so it
/// lives as long as the block. Every copy counts, in every pack of `copies`: a block
/// stored twice (by two sessions at once, or again after a plan masked it) may be
/// stored on two bases, and the copy [`decide`] keeps, or the one a reader's index
/// resolves to, need not be the one the index resolves to now. A base is never read
/// through a base itself, so one pass marks them all. A block whose base cannot be
/// read stops gc rather than guess.
fn mark_bases(store: &Store, copies: &[&Files], live: &mut IdSet) -> Result<()> {
    let mut reader = BaseReader::new(store);
    let mut bases = Vec::new();
    for files in copies {
        for (pid, entries) in &files.packs {
            for e in entries {
                if !e.codec.has_base() || !live.contains(&e.id) {
                    continue;
                }
                let base = reader
                    .base_at(&e.id, pid, &Location::of(0, e))
                    .map_err(|err| err.context("reading a live block's base"))?;
                bases.extend(base);
            }
        }
    }
    live.extend(bases);
    Ok(())
}

/// What to do with each pack.
#[derive(Debug, Default)]
struct Decision {
    delete: Vec<PackId>,
    repack: Vec<PackId>,
    /// For each repacked pack, the entries it owns (to copy).
    copy: HashMap<PackId, Vec<PackEntry>, FxBuildHasher>,
    /// Unreferenced blobs of removed packs.
    dead: Vec<BlockId>,
    /// Unreferenced blobs left in packs kept (above the repack threshold).
    dead_kept: u64,
    /// Live bytes (with entry overhead) the repack will copy.
    repack_live_bytes: u64,
    live_blobs: u64,
    live_bytes: u64,
}

/// A pack under this share of the target pack size is *small*: every create leaves
/// one or two, and gc merges them (else the number of packs, and the cost of listing
/// them, would follow the history).
const SMALL_PACK_SHARE: u64 = 8;

fn decide(files: &Files, live: &IdSet, repack_below: f64, pack_size: u64) -> Decision {
    let mut d = Decision::default();
    let small_limit = pack_size / SMALL_PACK_SHARE;
    // Small packs, by the kind of blob they hold (data and tree nodes live apart); a
    // kind with two or more merges them into one.
    let mut small_by_kind: HashMap<u8, Vec<&PackId>> = HashMap::new();
    for (p, es) in &files.packs {
        let bytes: u64 = pack::stored_shares(es).iter().map(|b| b + 56).sum();
        if bytes < small_limit {
            let kind = es.first().map(|e| e.kind as u8).unwrap_or(0);
            small_by_kind.entry(kind).or_default().push(p);
        }
    }
    let small: HashSet<&PackId> = small_by_kind
        .into_values()
        .filter(|v| v.len() >= 2)
        .flatten()
        .collect();
    // A block stored both whole and as a delta or XOR member (a create that started
    // after a plan masked it stores its own copy, while an earlier create's delta keeps
    // the old one live) is owned by a whole copy: a base must stay readable whole.
    let whole: IdSet = files
        .packs
        .values()
        .flatten()
        .filter(|e| !e.codec.has_base())
        .map(|e| e.id)
        .collect();
    let mut owned = IdSet::default();
    let mut dead = IdSet::default();
    for (pid, entries) in &files.packs {
        let mut mine = Vec::new();
        let mut not_mine = Vec::new();
        let (mut total, mut live_bytes) = (0u64, 0u64);
        // A frame's bytes are shared evenly by its members.
        let mut mine_stored = 0u64;
        for (e, share) in entries.iter().zip(pack::stored_shares(entries)) {
            let cost = share + 56;
            total += cost;
            let may_own = !e.codec.has_base() || !whole.contains(&e.id);
            if live.contains(&e.id) && may_own && owned.insert(e.id) {
                live_bytes += cost;
                mine_stored += share;
                mine.push(*e);
            } else {
                not_mine.push(e);
            }
        }
        d.live_blobs += mine.len() as u64;
        d.live_bytes += mine_stored;
        let removed = if mine.is_empty() {
            d.delete.push(*pid);
            true
        } else if (live_bytes as f64) < repack_below * total as f64 || small.contains(pid) {
            d.repack.push(*pid);
            d.repack_live_bytes += live_bytes;
            d.copy.insert(*pid, mine);
            true
        } else {
            d.dead_kept += not_mine.iter().filter(|e| !live.contains(&e.id)).count() as u64;
            false
        };
        if removed {
            // Copies of live blobs owned elsewhere are not dead: only unreferenced ids.
            dead.extend(
                not_mine
                    .iter()
                    .filter(|e| !live.contains(&e.id))
                    .map(|e| e.id),
            );
        }
    }
    d.dead = dead.into_iter().collect();
    d.dead.sort();
    d
}

/// Collect garbage. `roots` lists every manifest to keep, each under a stable key
/// (e.g. snapshot id and payload name); it is called twice (see the module docs).
pub fn collect(
    store: &Store,
    opts: &GcOptions,
    roots: &mut dyn FnMut() -> Result<Vec<(String, Manifest)>>,
    progress: &dyn Fn(Phase),
) -> Result<GcReport> {
    let backend = &**store.backend();
    let _maintenance = backend.locks().try_maintenance()?.ok_or_else(|| {
        Error::new(
            ErrorKind::Repository,
            "another gc or repair is running on this repository",
        )
    })?;
    let mut report = GcReport {
        dry_run: opts.dry_run,
        ..GcReport::default()
    };

    // Plans left by interrupted gcs (no gc can be running: we hold the lock).
    let stale: Vec<String> = backend
        .list(PLAN_PREFIX)?
        .into_iter()
        .map(|m| m.key)
        .collect();
    report.stale_plans = stale.len() as u64;
    if !opts.dry_run && !stale.is_empty() {
        for k in &stale {
            backend.delete(k)?;
        }
        backend.sync()?;
    }
    if !opts.dry_run {
        report.temporaries_removed = backend.remove_stale_temporaries()?;
    }

    // 1. Load.
    progress(Phase::Load);
    store.reload_index()?;
    let files = load_files(backend, &BTreeMap::new())?;
    let listed: BTreeMap<PackId, u64> = backend
        .list(keys::PACK_PREFIX)?
        .into_iter()
        .filter_map(|m| keys::pack_id_of_key(&m.key).map(|p| (p, m.size)))
        .collect();
    report.packs_before = listed.len() as u64;
    report.bytes_before = listed.values().sum();
    if let Some(missing) = files.packs.keys().find(|p| !listed.contains_key(*p)) {
        return Err(Error::new(
            ErrorKind::Corrupt,
            format!(
                "an index file names the missing pack {}; run `stasis verify --repair` first",
                keys::pack_key(missing)
            ),
        ));
    }
    let mut orphans: Vec<PackId> = listed
        .keys()
        .filter(|p| !files.packs.contains_key(*p))
        .copied()
        .collect();

    // 2. Mark.
    progress(Phase::Mark);
    let mut live = IdSet::default();
    let mut nodes = IdSet::default();
    let mut seen = HashSet::new();
    report.roots = mark(store, &roots()?, &mut seen, &mut live, &mut nodes)?;
    mark_bases(store, &[&files], &mut live)?;

    // 3. Plan.
    let pack_size = store.config().pack_size;
    let mut d = decide(&files, &live, opts.repack_below, pack_size);
    if opts.dry_run {
        let estimate = d.repack_live_bytes;
        fill(&mut report, &d, &orphans, &listed, estimate);
        return Ok(report);
    }
    if d.delete.is_empty() && d.repack.is_empty() && orphans.is_empty() {
        // Nothing to remove; merging many index files needs no plan (no pack goes).
        rewrite_index(
            backend,
            store.config().index_format(),
            &files,
            &HashSet::new(),
            &mut report,
        )?;
        store.reload_index()?;
        fill(&mut report, &d, &orphans, &listed, 0);
        return Ok(report);
    }

    // 4. Publish.
    let plan = Plan {
        dead: d.dead.clone(),
        packs: d
            .delete
            .iter()
            .chain(&d.repack)
            .chain(&orphans)
            .copied()
            .collect(),
    };
    let (plan_key, plan_bytes) = plan.encode();
    backend.put(&plan_key, &plan_bytes)?;
    backend.sync()?;

    // 5. Wait, mark again, re-plan.
    report.waited_sessions = backend
        .locks()
        .wait_for_sessions(&|n| progress(Phase::Wait(n)))? as u64;
    store.reload_index()?;
    report.roots += mark(store, &roots()?, &mut seen, &mut live, &mut nodes)?;
    // Index files committed meanwhile: their copies' bases are kept too.
    let newer = load_files(backend, &files.files)?;
    mark_bases(store, &[&files, &newer], &mut live)?;
    d = decide(&files, &live, opts.repack_below, pack_size);
    orphans.retain(|p| !newer.packs.contains_key(p));
    // A live blob that no index file names can only be in an orphan (an index file
    // lost to damage): keep any orphan holding one, for `verify --repair` to index.
    let indexed: IdSet = files
        .packs
        .values()
        .chain(newer.packs.values())
        .flatten()
        .map(|e| e.id)
        .collect();
    if live.iter().any(|id| !indexed.contains(id)) {
        let mut keep_orphans = Vec::new();
        for p in &orphans {
            let holds_live = pack::read_entries(backend, p)
                .map(|es| {
                    es.iter()
                        .any(|e| live.contains(&e.id) && !indexed.contains(&e.id))
                })
                .unwrap_or(true);
            if holds_live {
                report.kept.push(format!(
                    "{}: not indexed but holds live blobs; run `stasis verify --repair`",
                    keys::pack_key(p)
                ));
                keep_orphans.push(*p);
            }
        }
        orphans.retain(|p| !keep_orphans.contains(p));
    }

    // 6. Repack.
    progress(Phase::Repack);
    let mut written_bytes = 0u64;
    let mut keep: Vec<PackId> = Vec::new();
    if !d.repack.is_empty() {
        let mut w = store.maintenance_writer();
        let frames = FrameCache::new(frame::SCAN_CACHE_BYTES);
        for pid in &d.repack {
            let entries = d.copy.get(pid).map(Vec::as_slice).unwrap_or(&[]);
            // Check every blob before copying any; a bad one keeps its pack in place.
            let bad = entries.iter().find_map(|e| {
                read_located(backend, &frames, &e.id, pid, &Location::of(0, e), &|b| {
                    store.delta_base(b)
                })
                .err()
            });
            if let Some(err) = bad {
                report.kept.push(format!("{}: {err}", keys::pack_key(pid)));
                keep.push(*pid);
                continue;
            }
            w.copy_entries(pid, entries)?;
        }
        let committed = w.commit()?;
        written_bytes = committed.stats.pack_bytes;
        report.packs_written = committed.stats.packs;
    }
    d.repack.retain(|p| !keep.contains(p));

    // 7. Rewrite the index files that name removed packs.
    progress(Phase::Sweep);
    let removed: HashSet<PackId> = d.delete.iter().chain(&d.repack).copied().collect();
    rewrite_index(
        backend,
        store.config().index_format(),
        &files,
        &removed,
        &mut report,
    )?;

    // 8. Delete packs, then the plan.
    for p in removed.iter().chain(&orphans) {
        backend.delete(&keys::pack_key(p))?;
    }
    backend.sync()?;
    backend.delete(&plan_key)?;
    backend.sync()?;
    store.reload_index()?;
    fill(&mut report, &d, &orphans, &listed, written_bytes);
    Ok(report)
}

/// More index files than this and gc merges them all into one (every write session
/// adds one; loading thousands at every open would make cost follow history).
pub const COMPACT_INDEX_FILES: usize = 32;

/// Replace the index files that name `removed` packs (all of them when there are
/// many) by one file for their surviving packs: write it, sync, delete the old, sync.
fn rewrite_index(
    backend: &dyn Backend,
    format: u32,
    files: &Files,
    removed: &HashSet<PackId>,
    report: &mut GcReport,
) -> Result<()> {
    let compact = files.files.len() > COMPACT_INDEX_FILES;
    let affected: Vec<String> = files
        .files
        .iter()
        .filter(|(_, ps)| compact || ps.iter().any(|p| removed.contains(p)))
        .map(|(k, _)| k.clone())
        .collect();
    if !affected.is_empty() {
        let mut survivors: Vec<PackId> = affected
            .iter()
            .filter_map(|k| files.files.get(k))
            .flatten()
            .filter(|p| !removed.contains(p))
            .copied()
            .collect();
        survivors.sort();
        survivors.dedup();
        if !survivors.is_empty() {
            let table: Vec<(PackId, Vec<PackEntry>)> = survivors
                .iter()
                .map(|p| (*p, files.packs.get(p).cloned().unwrap_or_default()))
                .collect();
            let (key, bytes) = index_file::encode_file(&table, format);
            backend.put(&key, &bytes)?;
            backend.sync()?;
            // The new file may share its name with one of the old (same content).
            for k in affected.iter().filter(|k| **k != key) {
                backend.delete(k)?;
            }
        } else {
            for k in &affected {
                backend.delete(k)?;
            }
        }
        backend.sync()?;
        report.index_files_replaced = affected.len() as u64;
    }

    Ok(())
}

fn fill(
    r: &mut GcReport,
    d: &Decision,
    orphans: &[PackId],
    listed: &BTreeMap<PackId, u64>,
    written: u64,
) {
    r.live_blobs = d.live_blobs;
    r.live_bytes = d.live_bytes;
    r.dead_blobs = d.dead.len() as u64;
    r.dead_blobs_kept = d.dead_kept;
    r.packs_deleted = d.delete.len() as u64;
    r.packs_repacked = d.repack.len() as u64;
    r.orphans_deleted = orphans.len() as u64;
    let gone: u64 = d
        .delete
        .iter()
        .chain(&d.repack)
        .chain(orphans)
        .filter_map(|p| listed.get(p))
        .sum();
    r.bytes_freed = gone.saturating_sub(written);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::codec::Codec;
    use crate::id::Id;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_whole_copy_owns_a_block_stored_both_ways(delta_pack_first in any::<bool>()) {
            let id = Id::of(b"x");
            let whole = PackEntry {
                id,
                kind: pack::BlobKind::Data,
                codec: Codec::Zstd,
                offset: 32,
                stored_len: 100,
                raw_len: 4096,
                skip: 0,
                feature: 0,
            };
            let delta = PackEntry { codec: Codec::ZstdDelta, stored_len: 60, ..whole };
            let (p0, p1) = (Id([0; 32]), Id([1; 32]));
            let (dp, wp) = if delta_pack_first { (p0, p1) } else { (p1, p0) };
            let mut files = Files::default();
            files.packs.insert(dp, vec![delta]);
            files.packs.insert(wp, vec![whole]);
            let live: IdSet = [id].into_iter().collect();
            let d = decide(&files, &live, 0.9, 32 << 20);
            prop_assert!(d.delete.contains(&dp), "{:?}", d);
            prop_assert!(!d.delete.contains(&wp) && !d.dead.contains(&id));
        }
    }
}
