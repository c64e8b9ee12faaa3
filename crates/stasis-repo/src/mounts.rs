//! The registry of running `stasis mount`s of a repository: `<repo>/mounts/<pid>.mount`
//! holds each mountpoint, so `stasis fork` (and the server's fork) can find one.

use std::path::{Path, PathBuf};

/// The registry directory of the repository at `repo`.
pub fn registry(repo: &Path) -> PathBuf {
    repo.join("mounts")
}

/// The mountpoint of a running `stasis mount` of the repository at `repo`, if any.
/// Registrations whose process is gone or whose mount is not there are removed.
pub fn running_mount(repo: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(registry(repo)).ok()?;
    for e in entries.flatten() {
        let path = e.path();
        let pid = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<i32>().ok());
        let point = std::fs::read_to_string(&path)
            .ok()
            .map(|s| PathBuf::from(s.trim_end()));
        // SAFETY: kill with signal 0 only checks that the process exists.
        let alive = pid.is_some_and(|p| unsafe { libc::kill(p, 0) } == 0);
        match point {
            Some(p) if alive && p.join("vms").is_dir() => return Some(p),
            _ => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    None
}
