//! Restore a snapshot's files into a directory: each payload written as a sparse file
//! (holes and zero blocks are not written), byte-identical to what was snapshotted.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use serde::Serialize;
use stasis_catalog::Snapshot;
use stasis_store::{PayloadReader, RestoreStats, Store};

use crate::error::{Error, Result};

/// How to restore.
#[derive(Clone, Copy, Debug, Default)]
pub struct RestoreOptions {
    /// Replace files that exist (otherwise nothing is written when one does).
    pub force: bool,
    /// fsync each file once it is written.
    pub sync: bool,
}

/// What a restore reports as it goes.
#[derive(Clone, Copy, Debug)]
pub enum RestoreProgress {
    /// The data bytes it will write in all (once, first).
    Total(u64),
    /// Data bytes written since the last report.
    Written(u64),
}

/// One restored file.
#[derive(Clone, Debug, Serialize)]
pub struct Restored {
    /// The payload's name.
    pub name: String,
    /// Where it was written.
    pub path: PathBuf,
    /// Its size, and how many of its bytes were written (the rest is holes).
    #[serde(flatten)]
    pub stats: RestoreStats,
}

/// Restore every payload of `snap` into `dir` (created if missing), as `dir/<name>`.
/// Unless `opts.force`, refuses before writing anything if one of those files exists.
pub fn restore(
    store: &Store,
    snap: &Snapshot,
    dir: &Path,
    opts: RestoreOptions,
    progress: &(dyn Fn(RestoreProgress) + Sync),
) -> Result<Vec<Restored>> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    if !opts.force {
        for p in &snap.payloads {
            let target = dir.join(&p.name);
            if target.exists() {
                return Err(Error::Conflict(format!(
                    "{} exists; remove it or pass --force",
                    target.display()
                )));
            }
        }
    }
    progress(RestoreProgress::Total(
        snap.payloads.iter().map(|p| p.data_bytes).sum(),
    ));
    let written = |n| progress(RestoreProgress::Written(n));
    let mut out = Vec::with_capacity(snap.payloads.len());
    for p in &snap.payloads {
        let target = dir.join(&p.name);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&target)
            .map_err(|e| Error::io(format!("cannot write {}", target.display()), e))?;
        let stats = PayloadReader::new(store, p.manifest)
            .and_then(|r| r.restore(&file, &written))
            .map_err(|e| e.context(format!("restoring {} of {}", p.name, snap.id)))?;
        if opts.sync {
            file.sync_all()
                .map_err(|e| Error::io(format!("syncing {}", target.display()), e))?;
        }
        out.push(Restored {
            name: p.name.clone(),
            path: target,
            stats,
        });
    }
    Ok(out)
}
