//! Verify (and repair) a repository: the store's packs and index, the catalog's
//! integrity, then every snapshot's trees and blocks. What is found goes on each
//! snapshot's timeline: one whose tree or blocks fail is marked `error`; a clean check
//! that read every block marks it verified.

use serde::Serialize;
use stasis_store::{
    Problem, RepairReport, StoreReport, rebuild_index, verify_manifest, verify_store,
};

use crate::error::Result;
use crate::repository::{DamagedIndex, Repository};

/// What to check.
#[derive(Clone, Copy, Debug, Default)]
pub struct VerifyOptions {
    /// Read every pack and check every block against its id.
    pub read_data: bool,
    /// Rebuild the index from the packs (implies `read_data`; corrupt blocks are left
    /// out so new snapshots store them afresh), then report what each snapshot lost.
    pub repair: bool,
}

/// Progress of a verify.
#[derive(Clone, Copy, Debug)]
pub enum VerifyProgress {
    /// This many pack bytes will be read (sent once, before any is).
    Total(u64),
    /// This many more were read.
    Read(u64),
}

/// What a verify found.
#[derive(Debug, Serialize)]
pub struct Verified {
    /// The store's check (its problems include the index files left out on opening and
    /// the catalog's own integrity check).
    pub store: StoreReport,
    /// Snapshots checked.
    pub snapshots: usize,
    /// Payloads checked.
    pub payloads: usize,
    /// With `repair`: what the rebuild did.
    pub repair: Option<RepairReport>,
    /// What is wrong now: everything found, or after a repair what the snapshots lost.
    pub problems: Vec<Problem>,
}

/// Verify `repo` (opened with [`crate::OpenOptions::damaged`], whose left-out index
/// files are `bad_index`), as `actor`.
pub fn verify(
    repo: &mut Repository,
    bad_index: &DamagedIndex,
    opts: VerifyOptions,
    actor: &str,
    progress: &(dyn Fn(VerifyProgress) + Sync),
) -> Result<Verified> {
    let read_data = opts.read_data || opts.repair;
    let store = repo.store();
    if read_data {
        progress(VerifyProgress::Total(store.space()?.pack_bytes));
    }
    let mut report = verify_store(store, read_data, &|n| progress(VerifyProgress::Read(n)))?;
    for (key, e) in bad_index {
        report.problems.push(Problem {
            object: key.clone(),
            message: e.to_string(),
        });
    }
    for line in repo.catalog().check_integrity()? {
        report.problems.push(Problem {
            object: repo.config().catalog.to_string(),
            message: line,
        });
    }
    let repaired = if opts.repair {
        Some(rebuild_index(
            store,
            &report.bad_blocks,
            &report.damaged_packs,
        )?)
    } else {
        None
    };
    // After a repair, what remains wrong is what the snapshots lost.
    let mut problems: Vec<Problem> = if repaired.is_some() {
        Vec::new()
    } else {
        report.problems.clone()
    };
    let snaps = repo.catalog().list(None)?;
    let mut payloads = 0;
    let (store, catalog) = repo.parts();
    for s in &snaps {
        let before = problems.len();
        for p in &s.payloads {
            payloads += 1;
            let what = format!(
                "{}/{} ({}) {}",
                s.source_instance_name, s.name, s.id, p.name
            );
            problems.extend(verify_manifest(
                store,
                &p.manifest,
                &what,
                &report.bad_blocks,
            ));
        }
        if let Some(first) = problems.get(before) {
            catalog.mark_error(&s.id, actor, &format!("verify: {}", first.message))?;
        } else if read_data && report.problems.is_empty() {
            catalog.mark_verified(
                &s.id,
                actor,
                "verify --read-data: every block read and checked",
            )?;
        }
    }
    Ok(Verified {
        store: report,
        snapshots: snaps.len(),
        payloads,
        repair: repaired,
        problems,
    })
}
