//! Stored block bytes under every codec: errors, never panics, never a wrong length;
//! shared frames, which never decode past their bound, with or without a reference
//! table; and deltas, against a base made from the input's own bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stasis_store::fuzzing::{decompress_delta, decompress_frame, decompress_into, split_delta};
use stasis_store::{Codec, MAX_FRAME_BYTES, decompress};

fuzz_target!(|data: &[u8]| {
    let Some((&c, rest)) = data.split_first() else {
        return;
    };
    let Ok(codec) = Codec::from_u8(c % 7) else {
        return;
    };
    let raw_len = usize::from(c) * 97;
    let mut out = Vec::new();
    if decompress(codec, rest, raw_len, &mut out).is_ok() {
        assert_eq!(out.len(), raw_len);
    }
    let mut into = vec![0u8; raw_len];
    let _ = decompress_into(codec, rest, &mut into);
    if decompress_frame(rest, &mut out).is_ok() {
        assert!(out.len() <= MAX_FRAME_BYTES);
    }
    if let Ok((refs, frame)) = stasis_store::fuzzing::split_refs(rest) {
        assert!(refs.windows(2).all(|w| w[0].0 < w[1].0));
        if decompress_frame(frame, &mut out).is_ok() {
            assert!(out.len() <= MAX_FRAME_BYTES);
        }
    }
    if let Ok((base_id, frame)) = split_delta(rest) {
        if decompress_delta(frame, &base_id, raw_len, &mut out).is_ok() {
            assert_eq!(out.len(), raw_len);
        }
    }
});
