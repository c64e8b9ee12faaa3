//! The record's enumerations, tags and dates, with the exact names and values of the
//! hypeman Snapshots API and the VMSNAPSHOT definition, and their validation.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

fn bad(what: &str, value: &str, allowed: &[&str]) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        format!(
            "invalid {what} {value:?} (expected one of: {})",
            allowed.join(", ")
        ),
    )
}

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident, $what:literal, case_insensitive = $ci:literal, { $($(#[$vm:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every value.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The value as the API writes it.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                for v in Self::ALL {
                    let t = v.as_str();
                    if t == s || ($ci && t.eq_ignore_ascii_case(s)) {
                        return Ok(*v);
                    }
                }
                Err(bad($what, s, &[$($text),+]))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(
    /// What state the VM was captured in (hypeman `kind`).
    Kind, "kind", case_insensitive = true, {
        /// Memory and devices captured: resumes where it was.
        Standby = "Standby",
        /// Disks only: boots fresh.
        Stopped = "Stopped",
    }
);

string_enum!(
    /// The hypervisor that wrote the snapshot (hypeman `source_hypervisor`).
    Hypervisor, "hypervisor", case_insensitive = true, {
        /// Cloud Hypervisor.
        CloudHypervisor = "cloud-hypervisor",
        /// Firecracker.
        Firecracker = "firecracker",
        /// QEMU.
        Qemu = "qemu",
        /// QEMU's microvm machine.
        QemuMicrovm = "qemu-microvm",
        /// Apple Virtualization.framework.
        Vz = "vz",
    }
);

string_enum!(
    /// The VM's power state when captured (VMSNAPSHOT `power_state`).
    PowerState, "power state", case_insensitive = true, {
        /// Running.
        PoweredOn = "powered_on",
        /// Off.
        PoweredOff = "powered_off",
        /// Paused or saved.
        Suspended = "suspended",
    }
);

string_enum!(
    /// Where compression of a snapshot stands (hypeman `compression_state`).
    CompressionState, "compression state", case_insensitive = false, {
        /// Stored uncompressed.
        None = "none",
        /// Being compressed.
        Compressing = "compressing",
        /// Compressed.
        Compressed = "compressed",
        /// Compression failed (see `compression_error`).
        Error = "error",
    }
);

/// At most this many tags per snapshot.
pub const MAX_TAGS: usize = 50;

fn tag_chars_ok(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b" _.:/=+@-".contains(&b))
}

/// Check one tag: key 1-128 and value 0-256 characters of `[A-Za-z0-9 _.:/=+@-]`.
pub fn validate_tag(key: &str, value: &str) -> Result<()> {
    validate_tag_key(key)?;
    validate_tag_value(key, value)
}

/// The key half of [`validate_tag`] (reading a stored tag checks each column alone).
pub(crate) fn validate_tag_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > 128 || !tag_chars_ok(key) {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "invalid tag key {key:?}: 1-128 characters of A-Z a-z 0-9 space _ . : / = + @ -"
            ),
        ));
    }
    Ok(())
}

/// The value half of [`validate_tag`]; `key` only names the tag in the error.
pub(crate) fn validate_tag_value(key: &str, value: &str) -> Result<()> {
    if value.len() > 256 || !tag_chars_ok(value) {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "invalid value for tag {key:?}: at most 256 characters of A-Z a-z 0-9 space _ . : / = + @ -"
            ),
        ));
    }
    Ok(())
}

/// Parse `K=V` (split at the first `=`; a key cannot contain one on the command line).
pub fn parse_tag(spec: &str) -> Result<(String, String)> {
    let (k, v) = spec.split_once('=').ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("tag {spec:?} is not KEY=VALUE"),
        )
    })?;
    validate_tag(k, v)?;
    Ok((k.to_string(), v.to_string()))
}

/// Check a whole tag set.
pub fn validate_tags(tags: &BTreeMap<String, String>) -> Result<()> {
    if tags.len() > MAX_TAGS {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("{} tags given; at most {MAX_TAGS} are allowed", tags.len()),
        ));
    }
    tags.iter().try_for_each(|(k, v)| validate_tag(k, v))
}

/// Parse a Go duration (`time.ParseDuration`, as hypeman's schedules take them): a
/// sequence of decimal numbers, each with an optional fraction and a unit of `ns`,
/// `us` (or `µs`, `μs`), `ms`, `s`, `m`, `h`, such as `1h30m` or `1.5h`. No sign (a
/// schedule's durations are never negative); `0` alone is zero.
pub fn parse_go_duration(text: &str) -> Result<std::time::Duration> {
    let bad = |why: &str| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("invalid duration {text:?}: {why} (a Go duration such as 90s, 15m, 1h30m)"),
        )
    };
    if text == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    if text.is_empty() {
        return Err(bad("empty"));
    }
    let mut rest = text;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(|| bad("a number without a unit"))?;
        let (number, tail) = rest.split_at(digits);
        let (whole, frac) = match number.split_once('.') {
            Some((w, f)) => (w, f),
            None => (number, ""),
        };
        if (whole.is_empty() && frac.is_empty()) || frac.contains('.') {
            return Err(bad("expected a number"));
        }
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let nanos: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(bad("a number without a unit")),
            _ => return Err(bad(&format!("unknown unit {unit:?}"))),
        };
        let too_long = || bad("too long");
        let w: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| too_long())?
        };
        let mut part = w.checked_mul(nanos).ok_or_else(too_long)?;
        // The fraction, to the nanosecond (further digits are dropped, as Go does).
        let mut scale = nanos;
        for d in frac.bytes() {
            scale /= 10;
            if scale == 0 {
                break;
            }
            part += u128::from(d - b'0') * scale;
        }
        total = total.checked_add(part).ok_or_else(too_long)?;
        rest = next;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| bad("too long"))?;
    // Go's durations end at about 290 years.
    if total > i64::MAX as u128 {
        return Err(bad("too long"));
    }
    Ok(std::time::Duration::new(
        secs,
        (total % 1_000_000_000) as u32,
    ))
}

/// Parse an expiry: an RFC 3339 date-time (`2026-12-01T10:00:00Z`, any offset), a
/// date-time without offset (taken as UTC), or a date (midnight UTC). Returns RFC 3339
/// in UTC.
pub fn parse_expiry(s: &str) -> Result<String> {
    let t = s.trim();
    let ts = t
        .parse::<jiff::Timestamp>()
        .ok()
        .or_else(|| t.parse::<jiff::civil::DateTime>().ok().and_then(|dt| dt.to_zoned(jiff::tz::TimeZone::UTC).ok()).map(|z| z.timestamp()))
        .or_else(|| {
            t.parse::<jiff::civil::Date>()
                .ok()
                .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
                .map(|z| z.timestamp())
        })
        .ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("invalid date {s:?}: use YYYY-MM-DD, YYYY-MM-DDTHH:MM:SS (UTC) or RFC 3339 with an offset"),
            )
        })?;
    Ok(ts.to_string())
}

/// Now, RFC 3339 UTC.
pub fn now() -> String {
    jiff::Timestamp::now().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn go_durations_parse_as_go_does() {
        use std::time::Duration;
        let ok = |s: &str| parse_go_duration(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(ok("1m"), Duration::from_secs(60));
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(ok("1.5h"), Duration::from_secs(5400));
        assert_eq!(ok("90s"), Duration::from_secs(90));
        assert_eq!(ok("2h45m0.5s"), Duration::from_millis(9_900_500));
        assert_eq!(ok("300ms"), Duration::from_millis(300));
        assert_eq!(ok("1us"), Duration::from_micros(1));
        assert_eq!(ok("1\u{b5}s"), Duration::from_micros(1));
        assert_eq!(ok(".5m"), Duration::from_secs(30));
        assert_eq!(ok("0"), Duration::ZERO);
        for bad in [
            "",
            "1",
            "1d",
            "h",
            "-1h",
            "+1h",
            "1.2.3s",
            ".s",
            "1h 30m",
            "99999999999999999999h",
            "3000000h",
        ] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn enums_use_the_api_values() {
        assert_eq!("standby".parse::<Kind>().ok(), Some(Kind::Standby));
        assert_eq!("STOPPED".parse::<Kind>().ok(), Some(Kind::Stopped));
        assert_eq!(
            "cloud-hypervisor".parse::<Hypervisor>().ok(),
            Some(Hypervisor::CloudHypervisor)
        );
        assert_eq!(
            serde_json::to_string(&Hypervisor::QemuMicrovm)
                .ok()
                .as_deref(),
            Some("\"qemu-microvm\"")
        );
        assert_eq!(
            serde_json::to_string(&Kind::Standby).ok().as_deref(),
            Some("\"Standby\"")
        );
        assert_eq!(
            serde_json::to_string(&PowerState::PoweredOff)
                .ok()
                .as_deref(),
            Some("\"powered_off\"")
        );
        assert!("xen".parse::<Hypervisor>().is_err());
        assert!("Compressed".parse::<CompressionState>().is_err());
    }

    #[test]
    fn tags() {
        assert!(parse_tag("env=prod").is_ok());
        assert!(parse_tag("team:owner=a@b.c/d+e").is_ok());
        assert!(parse_tag("empty=").is_ok());
        assert!(parse_tag("=v").is_err());
        assert!(parse_tag("novalue").is_err());
        assert!(parse_tag("k=semi;colon").is_err());
        assert!(parse_tag(&format!("{}=v", "k".repeat(129))).is_err());
        assert!(parse_tag(&format!("k={}", "v".repeat(257))).is_err());
        let many: BTreeMap<String, String> =
            (0..51).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(validate_tags(&many).is_err());
    }

    #[test]
    fn dates() {
        assert_eq!(
            parse_expiry("2026-12-01").ok().as_deref(),
            Some("2026-12-01T00:00:00Z")
        );
        assert_eq!(
            parse_expiry("2026-12-01T10:30:00").ok().as_deref(),
            Some("2026-12-01T10:30:00Z")
        );
        assert_eq!(
            parse_expiry("2026-12-01T10:30:00+02:00").ok().as_deref(),
            Some("2026-12-01T08:30:00Z")
        );
        assert!(
            parse_expiry("2000-01-01").is_ok(),
            "past dates are accepted"
        );
        for bad in ["", "tomorrow", "2026-13-01", "2026-02-30", "12/01/2026"] {
            assert!(parse_expiry(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn tag_parsing_never_panics(s in ".{0,300}") {
            let _ = parse_tag(&s);
        }

        #[test]
        fn expiry_parsing_never_panics(s in ".{0,40}") {
            let _ = parse_expiry(&s);
        }
    }
}
