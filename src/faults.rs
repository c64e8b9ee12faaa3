//! A fault-injection hook for the crash tests (`tests/crash.rs`).
//!
//! With `STASIS_KILL_AT=N` in the environment, the process kills itself with SIGKILL
//! right before its N-th (from 0) mutating backend call (`put`, `delete`, `sync`), so
//! that a test can stop a real `create` or `gc` between any two steps of its write and
//! fsync order. `N` past the last call lets the command finish. Nothing else changes.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use stasis_store::backend::{Backend, Bytes, ObjectMeta};
use stasis_store::lock::Locks;

/// Wraps a backend and dies at the chosen step.
#[derive(Debug)]
pub struct KillAt {
    inner: Arc<dyn Backend>,
    at: u64,
    count: AtomicU64,
}

impl KillAt {
    /// `backend` as is, or wrapped when `STASIS_KILL_AT` is set.
    pub fn wrap(backend: Arc<dyn Backend>) -> Arc<dyn Backend> {
        match std::env::var("STASIS_KILL_AT")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            Some(at) => Arc::new(KillAt {
                inner: backend,
                at,
                count: AtomicU64::new(0),
            }),
            None => backend,
        }
    }

    fn step(&self) {
        if self.count.fetch_add(1, Ordering::SeqCst) == self.at {
            // SAFETY: kill and getpid have no preconditions.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
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
}
