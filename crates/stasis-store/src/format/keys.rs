//! Object keys: where each kind of object lives in a backend.
//!
//! - `config`: the [`super::config::StoreConfig`] (JSON).
//! - `packs/<2 hex>/<blake3 of the pack>.pack`: packs.
//! - `index/<blake3 of the file>`: index files.
//! - `gc/<blake3 of the plan>`: gc plans in progress.
//! - `quarantine/<pack>.pack`: packs repair moved aside.
//!
//! Every key but `config` names its content, so no key is ever written twice with
//! different bytes and nothing depends on a backend's conditional writes.

use crate::id::{Id, PackId};

/// The store's configuration object.
pub const CONFIG_KEY: &str = "config";
/// Where packs live.
pub const PACK_PREFIX: &str = "packs/";
/// Where index files live.
pub const INDEX_PREFIX: &str = "index/";
/// Where gc plans live.
pub const PLAN_PREFIX: &str = "gc/";
/// Where repair moves packs whose entry table is unreadable.
pub const QUARANTINE_PREFIX: &str = "quarantine/";

/// The object key of a pack.
pub fn pack_key(id: &PackId) -> String {
    let hex = id.to_hex();
    format!("{PACK_PREFIX}{}/{hex}.pack", &hex[..2])
}

/// The pack id in a pack key, if it is one.
pub fn pack_id_of_key(key: &str) -> Option<PackId> {
    let name = key
        .strip_prefix(PACK_PREFIX)?
        .split_once('/')?
        .1
        .strip_suffix(".pack")?;
    name.parse().ok()
}

/// The object key of an index file.
pub fn index_key(id: &Id) -> String {
    format!("{INDEX_PREFIX}{}", id.to_hex())
}

/// Whether `key` is the key of an index file holding `bytes` (its name is their hash).
pub fn index_key_names(key: &str, bytes: &[u8]) -> bool {
    key.strip_prefix(INDEX_PREFIX) == Some(Id::of(bytes).to_hex().as_str())
}

/// The object key of a gc plan.
pub fn plan_key(id: &Id) -> String {
    format!("{PLAN_PREFIX}{}", id.to_hex())
}

/// Where repair moves a pack.
pub fn quarantine_key(pack: &PackId) -> String {
    format!("{QUARANTINE_PREFIX}{}.pack", pack.to_hex())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_roundtrip() {
        let id = Id::of(b"k");
        assert_eq!(pack_id_of_key(&pack_key(&id)), Some(id));
        assert_eq!(pack_id_of_key("index/abc"), None);
        let k = index_key(&Id::of(b"body"));
        assert!(index_key_names(&k, b"body"));
        assert!(!index_key_names(&k, b"other"));
    }
}
