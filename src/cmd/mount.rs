//! `stasis mount` and `stasis umount`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use stasis_fuse::SnapshotFs;

use crate::repo::Context;

/// `stasis mount --help`: the layout comes from the one place that defines it.
pub fn about() -> String {
    format!(
        "Mount the repository read-only (FUSE): {}",
        stasis_catalog::layout::SUMMARY
    )
}

/// Mount the repository read-only.
#[derive(Debug, clap::Args)]
pub struct MountArgs {
    /// An existing, empty directory.
    mountpoint: PathBuf,
}

/// Unmount a stasis mount.
#[derive(Debug, clap::Args)]
pub struct UmountArgs {
    /// Where it is mounted.
    mountpoint: PathBuf,
}

fn stale(p: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "{} is a stale mount left by a process that died; run `stasis umount {}` first",
        p.display(),
        p.display()
    )
}

fn check_mountpoint(p: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let is_stale = |e: &std::io::Error| e.raw_os_error() == Some(libc::ENOTCONN);
    let m = match std::fs::metadata(p) {
        Ok(m) => m,
        Err(e) if is_stale(&e) => return Err(stale(p)),
        Err(e) => return Err(e).with_context(|| format!("mountpoint {}", p.display())),
    };
    if !m.is_dir() {
        bail!("{} is not a directory", p.display());
    }
    // The kernel may answer stat of a dead FUSE mount's root from its cache; listing
    // it reaches the (gone) server.
    let mut entries = match std::fs::read_dir(p) {
        Ok(entries) => entries,
        Err(e) if is_stale(&e) => return Err(stale(p)),
        Err(e) => return Err(e).with_context(|| format!("mountpoint {}", p.display())),
    };
    // A directory on another device than its parent is a mount point already.
    if std::fs::metadata(p.join("..")).is_ok_and(|pm| pm.dev() != m.dev()) {
        bail!(
            "{} is busy: something is mounted there already (`stasis umount {}` if it is a stasis mount)",
            p.display(),
            p.display()
        );
    }
    let first = match entries.next() {
        Some(Err(e)) if is_stale(&e) => return Err(stale(p)),
        other => other,
    };
    if first.is_some() {
        bail!(
            "{} is not empty; a mount would hide what is in it",
            p.display()
        );
    }
    Ok(())
}

/// Block SIGINT and SIGTERM in this and every later thread, and unmount when one comes.
fn unmount_on_signal(mountpoint: PathBuf) -> Result<()> {
    // SAFETY: plain libc signal-set manipulation on locals; no memory is shared.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            bail!("cannot block signals");
        }
        std::thread::spawn(move || {
            let mut sig: libc::c_int = 0;
            if libc::sigwait(&set, &mut sig) == 0 {
                let _ = stasis_fuse::unmount(&mountpoint);
            }
        });
    }
    Ok(())
}

/// Run `mount`: serves until unmounted (Ctrl-C, SIGTERM or `stasis umount`).
pub fn mount(ctx: &Context, a: MountArgs) -> Result<()> {
    check_mountpoint(&a.mountpoint)?;
    let repo = ctx.open()?;
    let mountpoint = std::fs::canonicalize(&a.mountpoint)?;
    unmount_on_signal(mountpoint.clone())?;
    eprintln!(
        "stasis: {} mounted at {} (Ctrl-C or `stasis umount {}` to unmount)",
        repo.config().dir.display(),
        mountpoint.display(),
        mountpoint.display()
    );
    // Registered with the repository so `stasis fork` finds this mount.
    let registration = repo.register_mount(&mountpoint)?;
    let (store, catalog) = repo.into_parts();
    let fs = SnapshotFs::new(store, catalog);
    let served = stasis_fuse::serve(fs, &mountpoint);
    drop(registration);
    served.with_context(|| format!("mounting at {}", mountpoint.display()))?;
    eprintln!("stasis: unmounted {}", mountpoint.display());
    Ok(())
}

/// Run `umount`.
pub fn umount(_ctx: &Context, a: UmountArgs) -> Result<()> {
    stasis_fuse::unmount(&a.mountpoint)
        .with_context(|| format!("unmounting {}", a.mountpoint.display()))
}
