//! Generated ids and name rules.

use crate::error::{Error, ErrorKind, Result};

const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A new id: 24 lowercase alphanumerics starting with a letter (cuid2-like).
pub fn new_id() -> String {
    let mut bytes = [0u8; 24];
    // Without an OS random source the time stands in; ids still differ per call.
    if getrandom::fill(&mut bytes).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (t >> ((i % 16) * 8)) as u8 ^ (i as u8).wrapping_mul(97);
        }
    }
    bytes
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let n = if i == 0 { 26 } else { 36 };
            char::from(ALPHABET[usize::from(*b) % n])
        })
        .collect()
}

/// A snapshot or VM name: `^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`, at most 63 characters.
pub fn validate_name(name: &str) -> Result<()> {
    let b = name.as_bytes();
    let ok_char = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let ok = !b.is_empty()
        && b.len() <= 63
        && b.first().is_some_and(ok_char)
        && b.last().is_some_and(ok_char)
        && b.iter().all(|c| ok_char(c) || *c == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "invalid name {name:?}: use 1-63 of a-z, 0-9 and '-', starting and ending with a letter or digit"
            ),
        ))
    }
}

/// A payload's file name: what a snapshot directory shows it as.
pub fn validate_file_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !crate::layout::is_reserved_in_snapshot(name)
        && !name.contains(['/', '\0']);
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidInput,
            format!("invalid payload file name {name:?}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids_have_the_shape() {
        for _ in 0..100 {
            let id = new_id();
            assert_eq!(id.len(), 24);
            assert!(id.as_bytes()[0].is_ascii_lowercase());
            assert!(
                id.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            );
        }
        assert_ne!(new_id(), new_id());
    }

    #[test]
    fn names() {
        for good in ["a", "web-1", "0", "a-b-c"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a/b", &"a".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        assert!(validate_file_name("rootfs.ext4").is_ok());
        assert!(validate_file_name("a/b").is_err());
        assert!(validate_file_name("..").is_err());
    }

    proptest! {
        #[test]
        fn name_rule_matches_the_pattern(s in "[a-z0-9-]{0,70}") {
            let want = !s.is_empty() && s.len() <= 63 && !s.starts_with('-') && !s.ends_with('-');
            prop_assert_eq!(validate_name(&s).is_ok(), want);
        }
    }
}
