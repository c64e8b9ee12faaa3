//! A pack's header, entry table and trailer from arbitrary bytes: errors, never panics,
//! and every accepted entry lies inside the pack's data area.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stasis_store::{Backend, Id, MemoryBackend, pack_key, read_entries};

fuzz_target!(|data: &[u8]| {
    let be = MemoryBackend::new();
    let id = Id::of(b"fuzz");
    if be.put(&pack_key(&id), data).is_err() {
        return;
    }
    if let Ok(entries) = read_entries(&be, &id) {
        for e in entries {
            assert!(e.offset + u64::from(e.stored_len) <= data.len() as u64);
        }
    }
});
