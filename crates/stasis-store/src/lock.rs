//! Coordination between processes sharing a repository: write sessions and the
//! maintenance lock.
//!
//! ## The rules
//! - Every write session (a `create`, or anything else that may deduplicate against
//!   stored blocks) holds a **session registration** from before it first consults the
//!   index until after the catalog has recorded what it wrote. Registration never waits.
//! - gc and repair hold the **maintenance lock**, which is exclusive and never waits
//!   (a second gc is refused with a clear message).
//! - gc publishes a plan naming the blocks it is about to remove, then **waits for every
//!   session registered before that moment** ([`Locks::wait_for_sessions`]). A session
//!   registered later reads the plan after registering and treats those blocks as
//!   unknown, so it stores its own copy instead of deduplicating against them. See
//!   [`crate::gc`] for the whole protocol.
//!
//! Locks held by a process that dies are released by the kernel (`flock`), so a crashed
//! holder never blocks anyone: its registration reads as ended, and its maintenance lock
//! is free.
//!
//! ## On disk ([`FileLocks`])
//! - `<dir>/maintenance`: an empty file, `flock(LOCK_EX | LOCK_NB)` by gc and repair.
//! - `<dir>/sessions/<random>`: one file per session, `flock(LOCK_EX)` by its owner. It is
//!   created under a temporary name and locked *before* it is renamed into `sessions/`,
//!   so a file seen there is either locked by a live session or left by a dead one. The
//!   owner removes it when it ends; gc removes files whose lock it could take.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

use rustix::fs::{FlockOperation, flock};

use crate::error::{Error, ErrorKind, IoContext, Result};

/// Something held until dropped (a session registration or the maintenance lock).
pub struct Guard(Box<dyn Held>);

/// What a [`Guard`] holds: released when dropped.
pub trait Held: Send + Sync {
    /// Whether it is still held. A lock on a local file is held until it is dropped;
    /// one held through a connection (a database's) is lost with the connection, and
    /// a session that lost its lock must not record what it wrote.
    fn still_held(&self) -> Result<()> {
        Ok(())
    }
}

/// Anything kept until dropped, held as long as it exists.
struct Kept<T>(#[allow(dead_code)] T);

impl<T: Send + Sync> Held for Kept<T> {}

impl Guard {
    /// A guard that holds `held` (a lock, a connection, a file) until it drops: for
    /// [`Locks`] implementations outside this crate.
    pub fn new(held: impl Send + Sync + 'static) -> Self {
        Guard(Box::new(Kept(held)))
    }

    /// A guard over `held`, which can tell whether it is still held.
    pub fn checked(held: impl Held + 'static) -> Self {
        Guard(Box::new(held))
    }

    /// An error if what it guards was lost (see [`Held::still_held`]).
    pub fn still_held(&self) -> Result<()> {
        self.0.still_held()
    }
}

impl Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Guard")
    }
}

/// How processes sharing a repository coordinate.
pub trait Locks: Send + Sync + Debug {
    /// Register a write session; it ends when the guard drops.
    fn register_session(&self) -> Result<Guard>;

    /// Wait until every session registered before this call has ended. Returns how many
    /// were still running when it was called.
    fn wait_for_sessions(&self, waiting: &dyn Fn(usize)) -> Result<usize>;

    /// Take the exclusive maintenance lock, or `None` if someone else holds it.
    fn try_maintenance(&self) -> Result<Option<Guard>>;
}

/// Locks as `flock`ed files in a local directory.
#[derive(Debug)]
pub struct FileLocks {
    dir: PathBuf,
}

struct SessionFile {
    path: PathBuf,
    _file: File,
}

impl Drop for SessionFile {
    fn drop(&mut self) {
        // Remove the name first, then unlock by closing: a waiter either cannot open the
        // file any more or gets the lock once we close it.
        let _ = fs::remove_file(&self.path);
    }
}

fn random_name() -> Result<String> {
    let mut b = [0u8; 12];
    getrandom::fill(&mut b).map_err(|e| Error::new(ErrorKind::Io, format!("random: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

impl FileLocks {
    /// Locks in `dir` (created on first use).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileLocks { dir: dir.into() }
    }

    /// The sessions directory, created if missing.
    fn sessions(&self) -> Result<PathBuf> {
        let d = self.dir.join("sessions");
        fs::create_dir_all(&d).ctx(|| format!("creating {}", d.display()))?;
        Ok(d)
    }
}

impl Locks for FileLocks {
    fn register_session(&self) -> Result<Guard> {
        let name = random_name()?;
        let path = self.sessions()?.join(&name);
        let tmp = self.dir.join(format!("new-{name}"));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .ctx(|| format!("creating {}", tmp.display()))?;
        let locked = flock(&file, FlockOperation::LockExclusive)
            .map_err(|e| Error::io(format!("locking {}", tmp.display()), e.into()))
            .and_then(|()| {
                fs::rename(&tmp, &path).ctx(|| format!("registering {}", path.display()))
            });
        if let Err(e) = locked {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(Guard::new(SessionFile { path, _file: file }))
    }

    fn wait_for_sessions(&self, waiting: &dyn Fn(usize)) -> Result<usize> {
        let dir = self.sessions()?;
        let mut names: Vec<PathBuf> = Vec::new();
        for entry in fs::read_dir(&dir).ctx(|| format!("listing {}", dir.display()))? {
            let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
            names.push(entry.path());
        }
        let mut running = 0;
        let mut opened = Vec::new();
        for path in names {
            let file = match File::open(&path) {
                Ok(f) => f,
                // Ended between the listing and now.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(format!("opening {}", path.display()), e)),
            };
            match flock(&file, FlockOperation::NonBlockingLockShared) {
                Ok(()) => {
                    // Its owner died without removing it.
                    let _ = fs::remove_file(&path);
                }
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    running += 1;
                    opened.push((path, file));
                }
                Err(e) => {
                    return Err(Error::io(format!("locking {}", path.display()), e.into()));
                }
            }
        }
        if running > 0 {
            waiting(running);
        }
        for (path, file) in opened {
            flock(&file, FlockOperation::LockShared)
                .map_err(|e| Error::io(format!("waiting for {}", path.display()), e.into()))?;
            // Normally its owner removed it already; if it died, we do.
            let _ = fs::remove_file(&path);
        }
        // Temporary names of sessions that died before registering.
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let p = entry.path();
                let stale = entry.file_name().to_string_lossy().starts_with("new-")
                    && File::open(&p)
                        .map(|f| flock(&f, FlockOperation::NonBlockingLockShared).is_ok())
                        .unwrap_or(false);
                if stale {
                    let _ = fs::remove_file(&p);
                }
            }
        }
        Ok(running)
    }

    fn try_maintenance(&self) -> Result<Option<Guard>> {
        let path = self.sessions().map(|_| self.dir.join("maintenance"))?;
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .ctx(|| format!("opening {}", path.display()))?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(Guard::new(file))),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(Error::io(format!("locking {}", path.display()), e.into())),
        }
    }
}

#[derive(Debug, Default)]
struct MemState {
    next: u64,
    sessions: BTreeSet<u64>,
    maintenance: bool,
}

/// Locks within one process (for in-memory backends).
#[derive(Debug, Default, Clone)]
pub struct MemoryLocks {
    inner: Arc<(Mutex<MemState>, Condvar)>,
}

impl MemoryLocks {
    fn state(&self) -> std::sync::MutexGuard<'_, MemState> {
        self.inner.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct MemRelease {
    locks: MemoryLocks,
    session: Option<u64>,
}

impl Drop for MemRelease {
    fn drop(&mut self) {
        let mut s = self.locks.state();
        match self.session {
            Some(n) => {
                s.sessions.remove(&n);
            }
            None => s.maintenance = false,
        }
        drop(s);
        self.locks.inner.1.notify_all();
    }
}

impl Locks for MemoryLocks {
    fn register_session(&self) -> Result<Guard> {
        let mut s = self.state();
        let n = s.next;
        s.next += 1;
        s.sessions.insert(n);
        Ok(Guard::new(MemRelease {
            locks: self.clone(),
            session: Some(n),
        }))
    }

    fn wait_for_sessions(&self, waiting: &dyn Fn(usize)) -> Result<usize> {
        let mut s = self.state();
        let before: Vec<u64> = s.sessions.iter().copied().collect();
        if !before.is_empty() {
            waiting(before.len());
        }
        while before.iter().any(|n| s.sessions.contains(n)) {
            s = self.inner.1.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        Ok(before.len())
    }

    fn try_maintenance(&self) -> Result<Option<Guard>> {
        let mut s = self.state();
        if s.maintenance {
            return Ok(None);
        }
        s.maintenance = true;
        Ok(Some(Guard::new(MemRelease {
            locks: self.clone(),
            session: None,
        })))
    }
}

/// The behaviour every [`Locks`] must have, as a check that implementations' tests call
/// (here, and with the `testing` feature in other crates).
#[cfg(any(test, feature = "testing"))]
pub mod conformance {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// The maintenance lock is exclusive and released on drop; a wait with no sessions
    /// returns at once; a wait waits for a session registered before it.
    pub fn conformance(l: Arc<dyn Locks>) {
        behaves(&*l);
        waits_for_earlier_sessions(l);
    }

    fn behaves(l: &dyn Locks) {
        let m = l.try_maintenance().expect("lock").expect("free");
        assert!(l.try_maintenance().expect("lock").is_none(), "exclusive");
        drop(m);
        assert!(l.try_maintenance().expect("lock").is_some(), "released");
        assert_eq!(l.wait_for_sessions(&|_| {}).expect("wait"), 0);
    }

    fn waits_for_earlier_sessions(l: Arc<dyn Locks>) {
        let g = l.register_session().expect("register");
        let ended = Arc::new(AtomicBool::new(false));
        let (e2, l2) = (Arc::clone(&ended), Arc::clone(&l));
        // The waiter says when it has seen the session and is about to wait for it, so
        // the session ends only after that, however the threads are scheduled.
        let (saw, seen) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let n = l2
                .wait_for_sessions(&|n| {
                    let _ = saw.send(n);
                })
                .expect("wait");
            // The session must have ended before the wait returned.
            assert!(e2.load(Ordering::SeqCst));
            n
        });
        let n = seen
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("the waiter saw the session");
        assert_eq!(n, 1);
        ended.store(true, Ordering::SeqCst);
        drop(g);
        assert_eq!(t.join().expect("join"), 1);
    }
}

#[cfg(test)]
mod tests {
    use super::conformance::*;
    use super::*;

    #[test]
    fn memory_locks() {
        conformance(Arc::new(MemoryLocks::default()));
    }

    #[test]
    fn file_locks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let l = FileLocks::new(dir.path().join("locks"));
        conformance(Arc::new(FileLocks::new(dir.path().join("locks"))));
        // A registration whose owner died (no lock on it) does not block, and goes.
        let stale = dir.path().join("locks/sessions/deadbeef");
        fs::create_dir_all(dir.path().join("locks/sessions")).expect("mkdir");
        fs::write(&stale, b"").expect("write");
        assert_eq!(l.wait_for_sessions(&|_| {}).expect("wait"), 0);
        assert!(!stale.exists());
        // A live one is counted and its file removed by its owner.
        let g = l.register_session().expect("register");
        assert_eq!(
            fs::read_dir(dir.path().join("locks/sessions"))
                .expect("ls")
                .count(),
            1
        );
        drop(g);
        assert_eq!(
            fs::read_dir(dir.path().join("locks/sessions"))
                .expect("ls")
                .count(),
            0
        );
    }
}
