//! What the CLI parses from users: sizes (the same `parse-size` configuration as
//! `src/output.rs`, which the fuzz crate cannot import from the binary), tags, expiry
//! dates, VM/snapshot names and payload file names. Errors, never panics; a parsed tag
//! passes tag validation; a valid name stays valid.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_size::Config::new().with_binary().parse_size(s.trim());
    if let Ok((k, v)) = stasis_catalog::parse_tag(s) {
        assert!(
            stasis_catalog::fields::validate_tag(&k, &v).is_ok(),
            "{s:?}"
        );
    }
    if let Ok(t) = stasis_catalog::parse_expiry(s) {
        // The normalised form parses again.
        assert!(stasis_catalog::parse_expiry(&t).is_ok(), "{s:?} -> {t:?}");
    }
    let _ = stasis_catalog::validate_name(s);
    let _ = stasis_catalog::validate_file_name(s);
});
