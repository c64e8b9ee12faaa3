//! The registry of running `stasis mount`s of a repository: `<registry>/<pid>.mount`
//! holds each mountpoint (the registry is [`crate::RepoConfig::mounts_dir`]), so
//! `stasis fork` (and the server's fork) can find one.

use std::path::{Path, PathBuf};

/// The mountpoint of a running `stasis mount` registered in `registry`, if any.
/// Registrations whose process is gone or whose mount is not there are removed.
pub fn running_mount(registry: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(registry).ok()?;
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
            Some(p) if alive && stasis_catalog::layout::looks_mounted(&p) => return Some(p),
            _ => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    None
}

/// A running mount's entry in the registry, removed when dropped.
#[derive(Debug)]
pub struct Registration {
    entry: PathBuf,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.entry);
    }
}

/// Register this process's mount at `mountpoint` in `registry`.
pub fn register(registry: &Path, mountpoint: &Path) -> crate::Result<Registration> {
    let io = |e| {
        crate::Error::io(
            format!("registering the mount in {}", registry.display()),
            e,
        )
    };
    std::fs::create_dir_all(registry).map_err(io)?;
    let entry = registry.join(format!("{}.mount", std::process::id()));
    std::fs::write(&entry, mountpoint.as_os_str().as_encoded_bytes()).map_err(io)?;
    Ok(Registration { entry })
}
