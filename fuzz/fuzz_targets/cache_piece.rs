//! A cache file of `stasis-s3` from arbitrary bytes: an error, never a panic, and a
//! piece that decodes lies inside its object.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let piece_size = 1 << 20;
    if let Ok(p) = stasis_s3::fuzzing::decode_piece(bytes::Bytes::copy_from_slice(data), piece_size)
    {
        let start = p.index * piece_size;
        assert!(start < p.object_size);
        assert!(start + p.data.len() as u64 <= p.object_size);
    }
});
