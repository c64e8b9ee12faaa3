//! Checking a repository: packs, index and manifests.

use std::collections::{HashMap, HashSet};

use rayon::prelude::*;
use rustc_hash::FxBuildHasher;
use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::format::keys;
use crate::frame::{self, FrameCache};
use crate::id::{BlockId, Id, PackId};
use crate::index::Location;
use crate::manifest::{self, BlockRef, Manifest};
use crate::pack::{self, PackEntry};
use crate::store::{Store, read_located};

/// One thing found wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// What it concerns (an object key, a block, a snapshot payload).
    pub object: String,
    /// What is wrong.
    pub message: String,
}

/// The outcome of [`verify_store`].
#[derive(Clone, Debug, Default, Serialize)]
pub struct StoreReport {
    /// Packs checked.
    pub packs: u64,
    /// Blobs listed in packs.
    pub blobs: u64,
    /// Bytes read and hashed (with `read_data`).
    pub bytes_read: u64,
    /// Packs that no index file names: left by an interrupted write, removable by gc.
    pub unindexed_packs: Vec<String>,
    /// Everything wrong.
    pub problems: Vec<Problem>,
    /// Blocks whose stored bytes failed their check (for [`verify_manifest`]).
    #[serde(skip)]
    pub bad_blocks: BadBlocks,
    /// Packs whose bytes do not match their name (readable table; some blocks may be
    /// fine): `verify --repair` copies their good blocks out and removes them.
    #[serde(skip)]
    pub damaged_packs: HashSet<PackId, FxBuildHasher>,
}

/// Stored copies that failed their check: (blob, the pack holding the bad copy).
pub type BadBlocks = HashSet<(BlockId, PackId), FxBuildHasher>;

/// Whether the copy the index points at is a bad one (another copy may be good).
fn is_bad(store: &Store, bad: &BadBlocks, id: &BlockId) -> bool {
    !bad.is_empty()
        && store
            .locate(id)
            .is_some_and(|(pack, _)| bad.contains(&(*id, pack)))
}

fn problem(object: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        object: object.into(),
        message: message.into(),
    }
}

/// Check every pack's entry table, that the index agrees with the packs, and with
/// `read_data`, every pack's bytes against its name and every block against its id.
pub fn verify_store(
    store: &Store,
    read_data: bool,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<StoreReport> {
    let backend = &**store.backend();
    let mut report = StoreReport::default();
    let frames = FrameCache::new(frame::SCAN_CACHE_BYTES);
    let mut tables: HashMap<PackId, Vec<PackEntry>, FxBuildHasher> = HashMap::default();
    let listed = backend.list(keys::PACK_PREFIX)?;
    for meta in &listed {
        let Some(pid) = keys::pack_id_of_key(&meta.key) else {
            report
                .problems
                .push(problem(&meta.key, "unexpected object among the packs"));
            continue;
        };
        report.packs += 1;
        let entries = match pack::read_entries(backend, &pid) {
            Ok(e) => e,
            Err(e) => {
                report.problems.push(problem(&meta.key, e.to_string()));
                continue;
            }
        };
        report.blobs += entries.len() as u64;
        if read_data {
            let read = || {
                let bytes = backend.get(&meta.key, None)?;
                let n = bytes.len() as u64;
                if Id::of(&bytes) == pid {
                    Ok(n)
                } else {
                    Err(Error::corrupt("pack bytes do not match the pack's name"))
                }
            };
            match crate::backend::read_again_if_damaged(backend, &meta.key, read) {
                Ok(n) => report.bytes_read += n,
                Err(e) if e.kind() == ErrorKind::Corrupt => {
                    report.damaged_packs.insert(pid);
                    report.problems.push(problem(&meta.key, e.to_string()));
                }
                Err(e) => report.problems.push(problem(&meta.key, e.to_string())),
            }
            let bad: Vec<(BlockId, Problem)> = entries
                .par_iter()
                .filter_map(|e| {
                    let loc = Location::of(0, e);
                    let err = read_located(backend, &frames, &e.id, &pid, &loc, &|b| {
                        store.delta_base(b)
                    })
                    .err()?;
                    // A block whose base is no longer indexed at all: gc removed the
                    // base, so the block is dead (gc keeps the base of every copy of a
                    // live block) and was left in a pack gc kept. Not damage; a live
                    // block's missing base is reported by the snapshots' check
                    // ([`verify_manifest`]).
                    if e.codec.has_base()
                        && err.kind() == ErrorKind::NotFound
                        && let Ok(Some(b)) = store.base_at(&e.id, &pid, &loc)
                        && store.locate(&b).is_none()
                    {
                        return None;
                    }
                    Some((e.id, problem(format!("block {}", e.id), err.to_string())))
                })
                .collect();
            for (id, p) in bad {
                report.bad_blocks.insert((id, pid));
                report.problems.push(p);
            }
            progress(meta.size);
        }
        tables.insert(pid, entries);
    }
    // The index must point at real entries.
    let idx = store.index();
    let mut indexed_packs: HashSet<PackId, FxBuildHasher> = HashSet::default();
    for (id, loc) in idx.iter() {
        let pid = idx.pack_id(loc);
        indexed_packs.insert(pid);
        let Some(entries) = tables.get(&pid) else {
            if !report
                .problems
                .iter()
                .any(|p| p.object == keys::pack_key(&pid))
            {
                report.problems.push(problem(
                    format!("block {id}"),
                    format!("its pack {} is missing", keys::pack_key(&pid)),
                ));
            }
            continue;
        };
        let ok = entries.iter().any(|e| {
            e.id == *id
                && e.offset == loc.offset
                && e.stored_len == loc.stored_len
                && e.codec == loc.codec
                && e.skip == loc.skip
        });
        if !ok {
            report.problems.push(problem(
                format!("block {id}"),
                "the index and its pack disagree",
            ));
        }
    }
    for pid in tables.keys() {
        if !indexed_packs.contains(pid) {
            report.unindexed_packs.push(keys::pack_key(pid));
        }
    }
    report.unindexed_packs.sort();
    Ok(report)
}

/// Check one payload's tree: every node decodes with the right shape and every
/// referenced block is in the index and not among `bad` (blocks that failed their check
/// in [`verify_store`]). Returns the problems found.
pub fn verify_manifest(store: &Store, m: &Manifest, what: &str, bad: &BadBlocks) -> Vec<Problem> {
    let mut out = Vec::new();
    if let Err(e) = m.validate() {
        out.push(problem(what, e.to_string()));
        return out;
    }
    let mut missing: Vec<BlockId> = Vec::new();
    let mut corrupt: Vec<BlockId> = Vec::new();
    let mut missing_bases: Vec<(BlockId, BlockId)> = Vec::new();
    // Each frame's reference table read once for all its XOR members.
    let mut reader = crate::store::BaseReader::new(store);
    let mut base_of = |id: &BlockId| match store.locate(id) {
        Some((pack, loc)) => reader.base_at(id, &pack, &loc),
        None => Ok(None),
    };
    let r = manifest::visit_nodes(store, m, &mut |node, level, refs| {
        if is_bad(store, bad, &node) {
            corrupt.push(node);
        }
        if level == 1 {
            for r in refs {
                if let BlockRef::Data(id) = r {
                    if store.locate(id).is_none() {
                        missing.push(*id);
                    } else if is_bad(store, bad, id) {
                        corrupt.push(*id);
                    } else {
                        // A delta or XOR member needs its base too.
                        match base_of(id) {
                            Ok(None) => {}
                            Ok(Some(b)) if store.locate(&b).is_none() => {
                                missing_bases.push((*id, b))
                            }
                            Ok(Some(b)) if is_bad(store, bad, &b) => corrupt.push(b),
                            Ok(Some(_)) => {}
                            Err(_) => corrupt.push(*id),
                        }
                    }
                }
            }
        }
        Ok(true)
    });
    if let Err(e) = r {
        out.push(problem(what, e.to_string()));
    }
    for id in missing {
        out.push(problem(what, format!("block {id} is missing")));
    }
    for (id, b) in missing_bases {
        out.push(problem(
            what,
            format!("block {id} is read through block {b}, which is missing"),
        ));
    }
    for id in corrupt {
        out.push(problem(what, format!("block {id} is corrupt")));
    }
    out
}

/// Stored bytes of every blob reachable from `m` that is not in `seen`; adds them to
/// `seen`. Subtrees already in `seen` are skipped, so a child that shares most of its
/// parent's tree costs O(changed blocks * height).
pub fn new_stored_bytes(
    store: &Store,
    m: &Manifest,
    seen: &mut HashSet<BlockId, FxBuildHasher>,
) -> Result<(u64, u64)> {
    let mut fresh: Vec<BlockId> = Vec::new();
    manifest::visit_new_nodes(
        store,
        m,
        &mut |id| !seen.contains(&id),
        &mut |id, level, refs| {
            fresh.push(id);
            if level == 1 {
                fresh.extend(refs.iter().filter_map(|r| match r {
                    BlockRef::Data(b) => Some(*b),
                    _ => None,
                }));
            }
            Ok(true)
        },
    )?;
    // Looked up after the walk, which may reload the index, under one lock.
    let (mut stored, mut raw) = (0u64, 0u64);
    let idx = store.index();
    for id in &fresh {
        if seen.insert(*id)
            && let Some(l) = idx.get(id)
        {
            stored += idx.stored_share(l);
            raw += u64::from(l.raw_len);
        }
    }
    Ok((stored, raw))
}
