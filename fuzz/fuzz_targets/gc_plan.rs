//! A gc plan from arbitrary bytes: an error, or a plan that encodes back to the same
//! bytes (the format has one encoding per plan).
#![no_main]

use libfuzzer_sys::fuzz_target;
use stasis_store::fuzzing::Plan;

fuzz_target!(|data: &[u8]| {
    if let Ok(plan) = Plan::decode(data) {
        let (_, bytes) = plan.encode();
        assert_eq!(bytes, data, "decode then encode must round-trip");
    }
});
