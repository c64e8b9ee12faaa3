//! An index file from arbitrary bytes: errors, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((packs, entries)) = stasis_store::fuzzing::decode_file(data) {
        for (p, _) in entries {
            assert!((p as usize) < packs.len());
        }
    }
});
