//! A manifest tree node from arbitrary bytes: errors, never panics, and an accepted node
//! has exactly the expected shape.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&shape, rest)) = data.split_first() else {
        return;
    };
    let level = u32::from(shape & 3) + 1;
    let count = usize::from(shape >> 2);
    if let Ok(refs) = stasis_store::fuzzing::decode_node(rest, level, count) {
        assert_eq!(refs.len(), count);
    }
});
