//! Rebuilding the index from the packs, after damage.
//!
//! Under the maintenance lock ([`crate::lock`]): every pack's own entry table is read
//! (packs whose table is damaged contribute nothing), blobs known to be corrupt are
//! left out, so that later writes store fresh copies instead of deduplicating against
//! them, and the result is written as one index file. Only then are the index files
//! that existed before removed; index files written meanwhile by running sessions stay.
//! Pack tables hold no similarity features ([`crate::similarity`]): the rebuilt index
//! takes them from the old index files that are still intact, and blocks only a
//! damaged one listed lose theirs (a hint: later pages find fewer references).

use std::collections::{BTreeMap, HashMap, HashSet};

use rustc_hash::FxBuildHasher;
use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::format::index_file;
use crate::format::keys;
use crate::frame::{self, FrameCache};
use crate::id::{BlockId, PackId};
use crate::index::Location;
use crate::pack::{self, PackEntry};
use crate::store::{Store, read_located};
use crate::verify::BadBlocks;

pub use crate::format::keys::quarantine_key;

/// What a repair did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RepairReport {
    /// Packs whose tables were read.
    pub packs: u64,
    /// Blobs now indexed.
    pub blobs: u64,
    /// Packs whose table could not be read, and why: their blobs are lost and the packs
    /// were moved to `quarantine/`.
    pub unreadable_packs: Vec<String>,
    /// Blobs left out because they failed their check.
    pub dropped_blobs: u64,
    /// Index files replaced.
    pub index_files_replaced: u64,
    /// Damaged packs whose good blobs were copied to new packs, then removed.
    pub packs_rewritten: u64,
}

/// Rebuild the index from the packs, leaving out `bad` blobs. The good blobs of
/// `damaged` packs are copied (checked) into new packs and the damaged packs removed.
pub fn rebuild_index(
    store: &Store,
    bad: &BadBlocks,
    damaged: &HashSet<PackId, FxBuildHasher>,
) -> Result<RepairReport> {
    let backend = &**store.backend();
    let _maintenance = backend.locks().try_maintenance()?.ok_or_else(|| {
        Error::new(
            ErrorKind::Repository,
            "a gc or another repair is running on this repository",
        )
    })?;
    let old: Vec<String> = backend
        .list(keys::INDEX_PREFIX)?
        .into_iter()
        .map(|m| m.key)
        .collect();
    let mut features: HashMap<BlockId, u32, FxBuildHasher> = HashMap::default();
    for key in &old {
        let Ok(bytes) = backend.get(key, None) else {
            continue;
        };
        if !keys::index_key_names(key, &bytes) {
            continue;
        }
        if let Ok((_, entries)) = index_file::decode_file(&bytes) {
            for (_, e) in entries.iter().filter(|(_, e)| e.feature != 0) {
                features.insert(e.id, e.feature);
            }
        }
    }
    let mut report = RepairReport::default();
    let mut table: BTreeMap<PackId, Vec<PackEntry>> = BTreeMap::new();
    let mut unreadable: Vec<(PackId, String)> = Vec::new();
    for meta in backend.list(keys::PACK_PREFIX)? {
        let Some(pid) = keys::pack_id_of_key(&meta.key) else {
            continue;
        };
        let entries = match pack::read_entries(backend, &pid) {
            Ok(e) => e,
            Err(e) => {
                report.unreadable_packs.push(format!("{}: {e}", meta.key));
                unreadable.push((pid, meta.key));
                continue;
            }
        };
        report.packs += 1;
        let before = entries.len();
        let kept: Vec<PackEntry> = entries
            .into_iter()
            .filter(|e| !bad.contains(&(e.id, pid)))
            .map(|e| match features.get(&e.id) {
                Some(&feature) if !e.codec.has_base() => PackEntry { feature, ..e },
                _ => e,
            })
            .collect();
        report.dropped_blobs += (before - kept.len()) as u64;
        report.blobs += kept.len() as u64;
        table.insert(pid, kept);
    }
    // Copy the good blobs out of damaged packs (a blob whose check fails now stays
    // behind: it was bad).
    let damaged: Vec<PackId> = table
        .keys()
        .filter(|p| damaged.contains(*p) || bad.iter().any(|(_, bp)| bp == *p))
        .copied()
        .collect();
    if !damaged.is_empty() {
        let mut w = store.maintenance_writer();
        let frames = FrameCache::new(frame::SCAN_CACHE_BYTES);
        for pid in &damaged {
            let mut good = Vec::new();
            for e in table.remove(pid).unwrap_or_default() {
                let base = |b: &crate::id::BlockId| store.delta_base(b);
                if read_located(backend, &frames, &e.id, pid, &Location::of(0, &e), &base).is_err()
                {
                    report.dropped_blobs += 1;
                    report.blobs -= 1;
                    continue;
                }
                good.push(e);
            }
            w.copy_entries(pid, &good)?;
        }
        // Commits the copies with their own index file.
        w.commit()?;
        report.packs_rewritten = damaged.len() as u64;
    }
    let table: Vec<(PackId, Vec<PackEntry>)> = table.into_iter().collect();
    let (key, bytes) = index_file::encode_file(&table, store.config().index_format());
    backend.put(&key, &bytes)?;
    backend.sync()?;
    for k in old.iter().filter(|k| **k != key) {
        backend.delete(k)?;
        report.index_files_replaced += 1;
    }
    backend.sync()?;
    for pid in &damaged {
        backend.delete(&keys::pack_key(pid))?;
    }
    // Packs whose table is unreadable move aside, kept for inspection.
    for (pid, key) in &unreadable {
        let bytes = backend.get(key, None)?;
        backend.put(&quarantine_key(pid), &bytes)?;
    }
    backend.sync()?;
    for (_, key) in &unreadable {
        backend.delete(key)?;
    }
    backend.sync()?;
    store.reload_index()?;
    Ok(report)
}
