//! Stored block bytes under every codec: errors, never panics, never a wrong length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stasis_store::codec::{Codec, decompress};

fuzz_target!(|data: &[u8]| {
    let Some((&c, rest)) = data.split_first() else { return };
    let Ok(codec) = Codec::from_u8(c % 3) else { return };
    let raw_len = usize::from(c) * 97;
    let mut out = Vec::new();
    if decompress(codec, rest, raw_len, &mut out).is_ok() {
        assert_eq!(out.len(), raw_len);
    }
});
