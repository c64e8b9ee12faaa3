//! The catalog's record fields from arbitrary text and JSON: every enum the catalog
//! reads back (status, kind, hypervisor, power and compression state, payload role) and
//! the compression record. Errors, never panics; whatever parses prints back to text
//! that parses to the same value.
#![no_main]

use std::str::FromStr;

use libfuzzer_sys::fuzz_target;
use stasis_catalog::{CompressionInfo, CompressionState, Hypervisor, Kind, PowerState, Status};
use stasis_store::Role;

fn round_trip<T: FromStr + ToString + PartialEq + std::fmt::Debug>(s: &str) {
    if let Ok(v) = s.parse::<T>() {
        let again = v.to_string().parse::<T>();
        assert!(
            again.is_ok_and(|a| a == v),
            "{s:?} -> {v:?} does not round-trip"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        round_trip::<Status>(s);
        round_trip::<Kind>(s);
        round_trip::<Hypervisor>(s);
        round_trip::<PowerState>(s);
        round_trip::<CompressionState>(s);
        round_trip::<Role>(s);
    }
    if let Ok(c) = serde_json::from_slice::<CompressionInfo>(data) {
        let json = serde_json::to_vec(&c).expect("serialize");
        let back: CompressionInfo = serde_json::from_slice(&json).expect("reparse");
        assert_eq!(back, c);
    }
});
