//! A backend in memory, for tests and benchmarks.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Mutex, MutexGuard};

use super::{
    Backend, Buffered, Bytes, ObjectMeta, PartialObject, check_key, check_prefix, slice_range,
};
use crate::error::{Error, ErrorKind, Result};
use crate::lock::{Locks, MemoryLocks};

/// Objects kept in a map; `sync` does nothing.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    objects: Mutex<BTreeMap<String, Bytes>>,
    locks: MemoryLocks,
}

impl MemoryBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Bytes>> {
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replace an object's bytes (tests use it to corrupt data).
    pub fn overwrite(&self, key: &str, data: Vec<u8>) {
        self.lock().insert(key.to_string(), Bytes::from(data));
    }
}

impl Backend for MemoryBackend {
    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        check_key(key)?;
        self.lock()
            .insert(key.to_string(), Bytes::copy_from_slice(data));
        Ok(())
    }

    fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<Bytes> {
        let whole = self
            .lock()
            .get(key)
            .cloned()
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no object {key}")))?;
        slice_range(key, whole, range)
    }

    fn size(&self, key: &str) -> Result<u64> {
        self.lock()
            .get(key)
            .map(|b| b.len() as u64)
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no object {key}")))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        Ok(self
            .lock()
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| ObjectMeta {
                key: k.clone(),
                size: v.len() as u64,
            })
            .collect())
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.lock().remove(key);
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        Ok(())
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
    #[test]
    fn conformance() {
        super::super::conformance::conformance(&super::MemoryBackend::new());
    }
}
