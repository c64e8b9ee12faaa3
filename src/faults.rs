//! A fault-injection hook for the crash tests (`tests/crash.rs`).
//!
//! With `STASIS_KILL_AT=N` in the environment, the process kills itself with SIGKILL
//! right before its N-th (from 0) step, so that a test can stop a real `create`, `gc`
//! or `delete` between any two steps of its write and fsync order. A step is a
//! mutating backend call (`put`, `delete`, `sync`), a row the catalog writes, or a
//! catalog commit; one count covers them all. `N` past the last step lets the command
//! finish. Nothing else changes.
//!
//! With `STASIS_STALL_AT=N:PATH` instead, the process stops before its N-th step: it
//! creates the file PATH and waits until someone removes it (at most ten minutes), so
//! that a test can act at that exact point (restart a server, stop a node) and let it
//! go on.
//!
//! Built only with the `faults` feature (the tests turn it on); a release binary has
//! none of it.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use stasis_repo::Hooks;
use stasis_store::{Backend, Bytes, Locks, ObjectMeta, PartialObject};

/// Steps taken so far, process-wide.
static COUNT: AtomicU64 = AtomicU64::new(0);

fn kill_at() -> Option<u64> {
    std::env::var("STASIS_KILL_AT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
}

fn stall_at() -> Option<(u64, std::path::PathBuf)> {
    let v = std::env::var("STASIS_STALL_AT").ok()?;
    let (n, path) = v.split_once(':')?;
    Some((n.parse().ok()?, path.into()))
}

/// One step; the process dies (or stalls) here if it is the chosen one.
fn step() {
    let n = COUNT.fetch_add(1, Ordering::SeqCst);
    if let Some((at, path)) = stall_at()
        && at == n
    {
        let _ = std::fs::write(&path, std::process::id().to_string());
        let until = std::time::Instant::now() + std::time::Duration::from_secs(600);
        while path.exists() && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    if Some(n) == kill_at() {
        // SAFETY: kill and getpid have no preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// The hooks that die or stall at the chosen step, when `STASIS_KILL_AT` or
/// `STASIS_STALL_AT` is set.
pub fn hooks() -> Option<Arc<dyn Hooks>> {
    (kill_at().is_some() || stall_at().is_some()).then(|| Arc::new(Steps) as Arc<dyn Hooks>)
}

/// Counts the backend's mutating calls and the catalog's row writes and commits.
#[derive(Debug)]
struct Steps;

impl Hooks for Steps {
    fn backend(&self, backend: Arc<dyn Backend>) -> Arc<dyn Backend> {
        Arc::new(KillAt { inner: backend })
    }

    fn catalog(&self, catalog: &mut stasis_catalog::Catalog) -> stasis_repo::Result<()> {
        Ok(catalog.on_write(Some(step))?)
    }
}

/// Wraps a backend and dies at the chosen step.
#[derive(Debug)]
struct KillAt {
    inner: Arc<dyn Backend>,
}

impl KillAt {
    fn step(&self) {
        step();
    }
}

impl Backend for KillAt {
    fn put(&self, key: &str, data: &[u8]) -> stasis_store::Result<()> {
        self.step();
        self.inner.put(key, data)
    }

    fn get(&self, key: &str, range: Option<Range<u64>>) -> stasis_store::Result<Bytes> {
        self.inner.get(key, range)
    }

    fn size(&self, key: &str) -> stasis_store::Result<u64> {
        self.inner.size(key)
    }

    fn list(&self, prefix: &str) -> stasis_store::Result<Vec<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn delete(&self, key: &str) -> stasis_store::Result<()> {
        self.step();
        self.inner.delete(key)
    }

    fn sync(&self) -> stasis_store::Result<()> {
        self.step();
        self.inner.sync()
    }

    fn locks(&self) -> &dyn Locks {
        self.inner.locks()
    }

    fn remove_stale_temporaries(&self) -> stasis_store::Result<u64> {
        self.inner.remove_stale_temporaries()
    }

    fn create(&self, prefix: &str) -> stasis_store::Result<Box<dyn PartialObject + '_>> {
        Ok(Box::new(KillAtPartial {
            inner: self.inner.create(prefix)?,
        }))
    }
}

/// An object written in pieces: naming it is the step, as a `put` is.
struct KillAtPartial<'a> {
    inner: Box<dyn PartialObject + 'a>,
}

impl PartialObject for KillAtPartial<'_> {
    fn write(&mut self, data: &[u8]) -> stasis_store::Result<()> {
        self.inner.write(data)
    }

    fn finish(self: Box<Self>, key: &str) -> stasis_store::Result<()> {
        step();
        self.inner.finish(key)
    }
}
