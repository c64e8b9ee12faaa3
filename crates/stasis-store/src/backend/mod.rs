//! The I/O seam: where objects (packs, index files, the config) live.
//!
//! The operations fit an object store: put a whole immutable object, read a byte range,
//! list by prefix, delete, and `sync` (make every earlier put and delete durable).
//! Committing never needs a rename or an in-place edit, so an S3 backend can implement
//! the same trait. Keys are `/`-separated relative paths of `[a-z0-9._-]` segments.
//!
//! An object named by the hash of its bytes (a pack) can also be written piece by piece
//! while it is built and named when it is complete ([`Backend::create`]): it is whole
//! or absent after a crash, exactly like a `put` of the same bytes. A backend with
//! nothing better to do buffers the pieces and puts them at the end ([`Buffered`]).

mod crash;
mod local;
mod memory;

use std::fmt::Debug;
use std::ops::Range;

pub use bytes::Bytes;
pub use crash::CrashBackend;
pub use local::LocalBackend;
pub use memory::MemoryBackend;

use crate::error::{Error, ErrorKind, Result};
use crate::lock::Locks;

/// An object's key and size, as `list` returns them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The object's key.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Storage for immutable objects.
pub trait Backend: Send + Sync + Debug {
    /// Store `data` under `key`, replacing nothing that differs: keys name their content
    /// or are written once. The object is whole or absent after a crash; it is durable
    /// after the next successful [`Backend::sync`].
    fn put(&self, key: &str, data: &[u8]) -> Result<()>;

    /// Read `range` of the object (all of it with `None`). A range past the end is an
    /// error ([`ErrorKind::Corrupt`]: the object is shorter than its references say).
    fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<Bytes>;

    /// The size of an object.
    fn size(&self, key: &str) -> Result<u64>;

    /// Every object whose key starts with `prefix`, sorted by key.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;

    /// Remove an object (no error if it is already gone).
    fn delete(&self, key: &str) -> Result<()>;

    /// Make every earlier `put` and `delete` durable.
    fn sync(&self) -> Result<()>;

    /// How processes sharing this backend coordinate (see `crate::lock`).
    fn locks(&self) -> &dyn Locks;

    /// Remove what crashed writers left behind and no running writer can still use
    /// (the local backend: temporary files whose writer's `flock` is gone, of
    /// processes that are gone, untouched for a while). Returns how many were removed.
    /// By default there is nothing to remove.
    fn remove_stale_temporaries(&self) -> Result<u64> {
        Ok(0)
    }

    /// Start an object to be written in pieces and named at the end
    /// ([`PartialObject::finish`]), under a key that starts with `prefix`. Until then
    /// it is invisible, and dropping it unfinished leaves nothing behind (or a
    /// temporary that gc removes, after a crash).
    fn create(&self, prefix: &str) -> Result<Box<dyn PartialObject + '_>>;

    /// Forget every copy of object `key` this backend keeps besides the storage itself
    /// (a cache): what was read of it failed its check against its name or its block
    /// ids. Returns whether a read may now give other bytes (so one more read is worth
    /// it; see `read_again_if_damaged`). By default there is no copy: false.
    fn evict(&self, _key: &str) -> bool {
        false
    }

    /// A hint that `ranges` (sorted) of object `key` will be read soon: a backend may
    /// start fetching them so the reads that follow find them in memory. It changes
    /// nothing a read returns; by default it does nothing.
    fn prefetch(&self, key: &str, ranges: &[Range<u64>]) {
        let _ = (key, ranges);
    }
}

/// An object being written in pieces ([`Backend::create`]).
pub trait PartialObject: Send {
    /// Append `data`.
    fn write(&mut self, data: &[u8]) -> Result<()>;

    /// Name the object `key` with everything written so far. Afterwards it is what a
    /// `put(key, bytes)` of those bytes would have made: whole or absent after a crash,
    /// and durable after the next [`Backend::sync`].
    fn finish(self: Box<Self>, key: &str) -> Result<()>;
}

/// A [`PartialObject`] kept in memory and put whole at the end.
#[derive(Debug)]
pub struct Buffered<'a> {
    backend: &'a dyn Backend,
    buf: Vec<u8>,
}

impl<'a> Buffered<'a> {
    /// An empty object, to be put into `backend`.
    pub fn new(backend: &'a dyn Backend) -> Self {
        Buffered {
            backend,
            buf: Vec::new(),
        }
    }
}

impl PartialObject for Buffered<'_> {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(data);
        Ok(())
    }

    fn finish(self: Box<Self>, key: &str) -> Result<()> {
        self.backend.put(key, &self.buf)
    }
}

/// Check that `key` is a well-formed relative object key.
pub fn check_key(key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && key.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidInput,
            format!("bad object key {key:?}"),
        ))
    }
}

/// Check a key prefix that names a directory (`packs/`) or nothing (`""`).
pub fn check_prefix(prefix: &str) -> Result<()> {
    match prefix.strip_suffix('/') {
        Some(dir) => check_key(dir),
        None if prefix.is_empty() => Ok(()),
        None => Err(Error::new(
            ErrorKind::InvalidInput,
            format!("bad object key prefix {prefix:?}: not a directory"),
        )),
    }
}

/// `read()`, and when it fails as damage ([`ErrorKind::Corrupt`]: bytes of object `key`
/// did not match their checks), once more after the backend evicted its copy of the
/// object: a damaged cache entry is dropped and the object read from storage, never
/// served. Damage in storage itself fails both times.
pub fn read_again_if_damaged<T>(
    backend: &dyn Backend,
    key: &str,
    mut read: impl FnMut() -> Result<T>,
) -> Result<T> {
    match read() {
        Err(e) if e.kind() == ErrorKind::Corrupt && backend.evict(key) => {
            tracing::warn!(key, "read again from storage after a failed check: {e}");
            read()
        }
        r => r,
    }
}

/// Slice `whole` (object `key`) by `range`, or fail as a short object: what every
/// backend's `get` does with a range.
pub fn slice_range(key: &str, whole: Bytes, range: Option<Range<u64>>) -> Result<Bytes> {
    let Some(r) = range else { return Ok(whole) };
    let len = whole.len() as u64;
    if r.start > r.end || r.end > len {
        return Err(Error::corrupt(format!(
            "object {key} is {len} bytes, wanted range {}..{}",
            r.start, r.end
        )));
    }
    // Both ends are <= len, which is a usize.
    Ok(whole.slice(r.start as usize..r.end as usize))
}

/// The behaviour every backend shares, as a check that a backend's own tests call
/// (here, and with the `testing` feature in other crates).
#[cfg(any(test, feature = "testing"))]
#[allow(clippy::unwrap_used)]
pub mod conformance {
    use super::*;

    /// The behaviour every backend shares.
    pub fn conformance(b: &dyn Backend) {
        assert!(b.list("").expect("list").is_empty());
        b.put("packs/ab/x.pack", b"hello world").expect("put");
        b.put("index/one", b"idx").expect("put");
        b.sync().expect("sync");
        assert_eq!(
            &b.get("packs/ab/x.pack", None).expect("get")[..],
            b"hello world"
        );
        assert_eq!(
            &b.get("packs/ab/x.pack", Some(6..11)).expect("get")[..],
            b"world"
        );
        assert_eq!(
            b.get("packs/ab/x.pack", Some(6..12))
                .map_err(|e| e.kind())
                .err(),
            Some(ErrorKind::Corrupt)
        );
        assert_eq!(
            b.get("nope", None).map_err(|e| e.kind()).err(),
            Some(ErrorKind::NotFound)
        );
        assert_eq!(b.size("index/one").expect("size"), 3);
        let keys: Vec<String> = b
            .list("packs/")
            .expect("list")
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(keys, vec!["packs/ab/x.pack".to_string()]);
        assert_eq!(b.list("").expect("list").len(), 2);
        b.delete("index/one").expect("delete");
        b.delete("index/one").expect("delete twice");
        assert_eq!(b.list("index/").expect("list").len(), 0);
        assert!(b.put("../evil", b"x").is_err());
        assert!(b.put("a//b", b"x").is_err());

        // An object written in pieces is invisible until named, then reads as the
        // pieces in order; one dropped unnamed leaves nothing.
        let before = b.list("").expect("list");
        let mut o = b.create("packs/").expect("create");
        o.write(b"one ").expect("write");
        o.write(&[]).expect("write nothing");
        o.write(b"two").expect("write");
        assert_eq!(b.list("").expect("list"), before);
        o.finish("packs/cd/y.pack").expect("finish");
        b.sync().expect("sync");
        assert_eq!(
            &b.get("packs/cd/y.pack", None).expect("get")[..],
            b"one two"
        );
        let mut dropped = b.create("packs/").expect("create");
        dropped.write(b"lost").expect("write");
        drop(dropped);
        assert_eq!(b.list("").expect("list").len(), before.len() + 1);
        assert!(b.create("../evil/").is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert!(check_key("packs/00/abc.pack").is_ok());
        assert!(check_key("").is_err());
        assert!(check_key("/abs").is_err());
        assert!(check_key("A").is_err());
        assert!(check_key("a/../b").is_err());
    }
}
