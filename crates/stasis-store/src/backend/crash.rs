//! A backend that simulates crashes and power loss, for tests.
//!
//! Puts and deletes are volatile until `sync`. [`CrashBackend::fail_after`] makes the
//! n-th mutating call (put, delete or sync) and every call after it fail, like a process
//! killed at that point. [`CrashBackend::power_loss`] then keeps each volatile change
//! or drops it, chosen by a seed (an unsynced rename may or may not have reached the
//! disk), and clears the failure so the "rebooted" repository can be opened again.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Mutex, MutexGuard};

use super::{
    Backend, Buffered, Bytes, ObjectMeta, PartialObject, check_key, check_prefix, slice_range,
};
use crate::error::{Error, ErrorKind, Result};
use crate::lock::{Locks, MemoryLocks};

#[derive(Debug, Default)]
struct State {
    durable: BTreeMap<String, Bytes>,
    /// Unsynced changes in order: `None` is a delete.
    volatile: Vec<(String, Option<Bytes>)>,
    mutations: u64,
    fail_at: Option<u64>,
    dead: bool,
}

impl State {
    fn view(&self) -> BTreeMap<String, Bytes> {
        let mut v = self.durable.clone();
        for (k, val) in &self.volatile {
            match val {
                Some(b) => v.insert(k.clone(), b.clone()),
                None => v.remove(k),
            };
        }
        v
    }

    fn lookup(&self, key: &str) -> Option<Bytes> {
        for (k, val) in self.volatile.iter().rev() {
            if k == key {
                return val.clone();
            }
        }
        self.durable.get(key).cloned()
    }
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct CrashBackend {
    state: Mutex<State>,
    locks: MemoryLocks,
}

fn crashed() -> Error {
    Error::new(ErrorKind::Io, "simulated crash: the backend is gone")
}

impl CrashBackend {
    /// An empty backend that never fails until told to.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fail the `n`-th mutating call from now (0 = the next one) and all calls after it.
    pub fn fail_after(&self, n: u64) {
        let mut s = self.lock();
        s.fail_at = Some(s.mutations + n);
    }

    /// How many mutating calls were made so far.
    pub fn mutations(&self) -> u64 {
        self.lock().mutations
    }

    /// Simulate a power loss: each unsynced change survives or not, independently, as
    /// `seed` decides (like separate files whose renames were not yet synced), then the
    /// backend works again.
    pub fn power_loss(&self, seed: u64) {
        let mut s = self.lock();
        let mut x = seed ^ 0x9e37_79b9_7f4a_7c15;
        let volatile = std::mem::take(&mut s.volatile);
        for (k, val) in volatile {
            // xorshift64*: a tiny deterministic coin.
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            if x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 63 == 1 {
                match val {
                    Some(b) => s.durable.insert(k, b),
                    None => s.durable.remove(&k),
                };
            }
        }
        s.fail_at = None;
        s.dead = false;
    }

    /// A process crash with the OS still up: every change (synced or not) survives.
    pub fn process_crash(&self) {
        let mut s = self.lock();
        let volatile = std::mem::take(&mut s.volatile);
        for (k, val) in volatile {
            match val {
                Some(b) => s.durable.insert(k, b),
                None => s.durable.remove(&k),
            };
        }
        s.fail_at = None;
        s.dead = false;
    }

    fn mutate(&self, f: impl FnOnce(&mut State)) -> Result<()> {
        let mut s = self.lock();
        if s.dead {
            return Err(crashed());
        }
        if s.fail_at.is_some_and(|at| s.mutations >= at) {
            s.dead = true;
            return Err(crashed());
        }
        s.mutations += 1;
        f(&mut s);
        Ok(())
    }
}

impl Backend for CrashBackend {
    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        check_key(key)?;
        let b = Bytes::copy_from_slice(data);
        self.mutate(|s| s.volatile.push((key.to_string(), Some(b))))
    }

    fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<Bytes> {
        let s = self.lock();
        if s.dead {
            return Err(crashed());
        }
        let whole = s
            .lookup(key)
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no object {key}")))?;
        slice_range(key, whole, range)
    }

    fn size(&self, key: &str) -> Result<u64> {
        Ok(self.get(key, None)?.len() as u64)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let s = self.lock();
        if s.dead {
            return Err(crashed());
        }
        Ok(s.view()
            .into_iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| ObjectMeta {
                key: k,
                size: v.len() as u64,
            })
            .collect())
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.mutate(|s| s.volatile.push((key.to_string(), None)))
    }

    fn sync(&self) -> Result<()> {
        self.mutate(|s| {
            let volatile = std::mem::take(&mut s.volatile);
            for (k, val) in volatile {
                match val {
                    Some(b) => s.durable.insert(k, b),
                    None => s.durable.remove(&k),
                };
            }
        })
    }

    fn locks(&self) -> &dyn Locks {
        &self.locks
    }

    fn create(&self, prefix: &str) -> Result<Box<dyn PartialObject + '_>> {
        check_prefix(prefix)?;
        Ok(Box::new(Buffered::new(self)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformance() {
        super::super::conformance::conformance(&CrashBackend::new());
    }

    #[test]
    fn unsynced_may_vanish_synced_stays() {
        let b = CrashBackend::new();
        b.put("a", b"1").expect("put");
        b.sync().expect("sync");
        for i in 0..20 {
            b.put(&format!("v{i}"), b"2").expect("put");
        }
        b.power_loss(7);
        assert!(b.get("a", None).is_ok());
        let left = b.list("v").expect("list").len();
        assert!(
            left > 0 && left < 20,
            "some unsynced puts survive, some do not: {left}"
        );
    }

    #[test]
    fn fail_after_kills_everything_later() {
        let b = CrashBackend::new();
        b.fail_after(1);
        b.put("a", b"1").expect("first put works");
        assert!(b.put("b", b"2").is_err());
        assert!(b.sync().is_err());
        assert!(b.get("a", None).is_err());
        b.process_crash();
        assert!(b.get("a", None).is_ok());
        assert!(b.get("b", None).is_err());
    }
}
