//! The mount's layout: where a stasis mount shows the catalog's VMs and snapshots.
//!
//! ```text
//! vms/<vm>/<snapshot>/<payload>       each payload file under its exact name and size
//! vms/<vm>/<snapshot>/snapshot.json   the record
//! vms/<vm>/<snapshot>/parent          symlink to ../../../snapshots/<parent id>
//! vms/<vm>/current                    symlink to the current snapshot's directory
//! snapshots/<id>/...                  the same directories by id (parent: ../<parent id>)
//! ```
//!
//! This is a contract between two parts: `stasis-fuse` builds its tree from these names,
//! and the repository's operations match paths against them (a fork's qcow2 overlays name
//! their backing file by its path in a mount, and committing the fork back recognises it
//! as the parent's payload). Both use this module, so changing the layout is one edit.

use std::path::{Path, PathBuf};

use crate::Snapshot;

/// The directory of VMs, by name.
pub const VMS: &str = "vms";
/// The directory of snapshots, by id.
pub const SNAPSHOTS: &str = "snapshots";
/// In a VM's directory: the symlink to its current snapshot.
pub const CURRENT: &str = "current";
/// In a snapshot's directory: the symlink to its parent's directory.
pub const PARENT: &str = "parent";
/// In a snapshot's directory: the record as JSON.
pub const RECORD: &str = "snapshot.json";

/// The layout in a few words, for help texts.
pub const SUMMARY: &str = "vms/<vm>/<snapshot>/ and snapshots/<id>/";

/// Whether `name` is one of the entries a snapshot directory holds besides its
/// payloads (so no payload may take it).
pub fn is_reserved_in_snapshot(name: &str) -> bool {
    name == PARENT || name == RECORD
}

/// `snapshots/<id>`, relative to a mountpoint.
pub fn snapshot_dir(id: &str) -> PathBuf {
    Path::new(SNAPSHOTS).join(id)
}

/// `vms/<vm>/<snapshot>`, relative to a mountpoint.
pub fn vm_snapshot_dir(vm: &str, snapshot: &str) -> PathBuf {
    Path::new(VMS).join(vm).join(snapshot)
}

/// Where a snapshot directory's `parent` symlink points: from `vms/<vm>/<snap>/` (when
/// `by_vm`) or from `snapshots/<id>/`.
pub fn parent_target(parent_id: &str, by_vm: bool) -> String {
    if by_vm {
        format!("../../../{SNAPSHOTS}/{parent_id}")
    } else {
        format!("../{parent_id}")
    }
}

/// Whether `dir` looks like a mount of a repository (it has the VMs directory).
pub fn looks_mounted(dir: &Path) -> bool {
    dir.join(VMS).is_dir()
}

/// Whether `path` (absolute, as a qcow2 overlay names its backing file) is payload
/// `payload` of `snap` seen through some mount, by id or by VM and name.
pub fn names_payload(path: &str, snap: &Snapshot, payload: &str) -> bool {
    let by_id = format!("/{SNAPSHOTS}/{}/{payload}", snap.id);
    let by_name = format!(
        "/{VMS}/{}/{}/{payload}",
        snap.source_instance_name, snap.name
    );
    path.ends_with(&by_id) || path.ends_with(&by_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_the_layout() {
        assert!(SUMMARY.starts_with(&format!("{VMS}/")));
        assert!(SUMMARY.contains(&format!(" {SNAPSHOTS}/")));
    }

    #[test]
    fn paths_and_links_agree() {
        // The parent link from either directory lands on the parent's directory by id.
        let from_vm = Path::new("/m").join(vm_snapshot_dir("web", "day2"));
        let from_id = Path::new("/m").join(snapshot_dir("child"));
        let resolve = |dir: &Path, target: &str| {
            let mut p = dir.to_path_buf();
            for c in Path::new(target).components() {
                match c {
                    std::path::Component::ParentDir => {
                        p.pop();
                    }
                    c => p.push(c),
                }
            }
            p
        };
        let want = Path::new("/m").join(snapshot_dir("base"));
        assert_eq!(resolve(&from_vm, &parent_target("base", true)), want);
        assert_eq!(resolve(&from_id, &parent_target("base", false)), want);
        assert!(is_reserved_in_snapshot(RECORD) && is_reserved_in_snapshot(PARENT));
        assert!(!is_reserved_in_snapshot("root"));
    }
}
