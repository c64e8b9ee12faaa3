//! HTTP `Range: bytes=...` (RFC 9110 §14): one range is served as 206; a header that
//! does not parse is ignored (200, whole payload), as the RFC says; several ranges are
//! answered with the whole payload (which the RFC allows), unless none overlaps it.

/// What to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// 200 with every byte.
    Full,
    /// 206 with bytes `start..end` (end exclusive, never empty).
    Part {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// 416.
    Unsatisfiable,
}

#[derive(Clone, Copy, Debug)]
enum Spec {
    /// `first-` or `first-last`.
    Int(u64, Option<u64>),
    /// `-n`: the last n bytes.
    Suffix(u64),
}

fn parse_specs(value: &str) -> Option<Vec<Spec>> {
    let (unit, set) = value.trim().split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return None;
    }
    let mut out = Vec::new();
    for part in set.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let (a, b) = part.split_once('-')?;
        let (a, b) = (a.trim(), b.trim());
        let num = |s: &str| -> Option<u64> {
            if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
                None
            } else {
                s.parse().ok()
            }
        };
        out.push(if a.is_empty() {
            Spec::Suffix(num(b)?)
        } else {
            let first = num(a)?;
            let last = if b.is_empty() { None } else { Some(num(b)?) };
            if last.is_some_and(|l| l < first) {
                return None;
            }
            Spec::Int(first, last)
        });
    }
    if out.is_empty() { None } else { Some(out) }
}

fn resolve(spec: Spec, size: u64) -> Option<(u64, u64)> {
    match spec {
        Spec::Int(first, _) if first >= size => None,
        Spec::Int(first, last) => {
            Some((first, last.map_or(size, |l| l.saturating_add(1).min(size))))
        }
        Spec::Suffix(0) => None,
        Spec::Suffix(_) if size == 0 => None,
        Spec::Suffix(n) => Some((size.saturating_sub(n), size)),
    }
}

/// The plan for a `Range` header value (`None`: no header) on a payload of `size` bytes.
pub fn plan(header: Option<&str>, size: u64) -> Plan {
    let Some(specs) = header.and_then(parse_specs) else {
        return Plan::Full;
    };
    let ranges: Vec<(u64, u64)> = specs.iter().filter_map(|s| resolve(*s, size)).collect();
    match (specs.len(), ranges.as_slice()) {
        (_, []) => Plan::Unsatisfiable,
        (1, [(start, end)]) => Plan::Part {
            start: *start,
            end: *end,
        },
        _ => Plan::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(start: u64, end: u64) -> Plan {
        Plan::Part { start, end }
    }

    #[test]
    fn single_ranges() {
        assert_eq!(plan(Some("bytes=0-99"), 1000), part(0, 100));
        assert_eq!(plan(Some("bytes=10-10"), 1000), part(10, 11));
        assert_eq!(plan(Some("bytes=990-2000"), 1000), part(990, 1000));
        assert_eq!(plan(Some("bytes=500-"), 1000), part(500, 1000));
        assert_eq!(plan(Some("bytes=-100"), 1000), part(900, 1000));
        assert_eq!(plan(Some("bytes=-5000"), 1000), part(0, 1000));
        assert_eq!(plan(Some("BYTES = 1-2"), 1000), part(1, 3));
        assert_eq!(plan(Some("bytes=0-18446744073709551615"), 10), part(0, 10));
    }

    #[test]
    fn unsatisfiable() {
        assert_eq!(plan(Some("bytes=1000-"), 1000), Plan::Unsatisfiable);
        assert_eq!(plan(Some("bytes=1000-1001"), 1000), Plan::Unsatisfiable);
        assert_eq!(plan(Some("bytes=-0"), 1000), Plan::Unsatisfiable);
        assert_eq!(plan(Some("bytes=0-0"), 0), Plan::Unsatisfiable);
        assert_eq!(plan(Some("bytes=-1"), 0), Plan::Unsatisfiable);
        assert_eq!(
            plan(Some("bytes=2000-,3000-3001"), 1000),
            Plan::Unsatisfiable
        );
    }

    #[test]
    fn ignored_headers_mean_everything() {
        assert_eq!(plan(None, 1000), Plan::Full);
        for bad in [
            "",
            "bytes",
            "bytes=",
            "bytes=a-b",
            "bytes=5-1",
            "bytes=-",
            "bytes=1-2-3",
            "items=0-1",
            "bytes=+1-2",
            "bytes=0x10-",
            "bytes=99999999999999999999999-",
        ] {
            assert_eq!(plan(Some(bad), 1000), Plan::Full, "{bad:?}");
        }
        // Several ranges: the whole payload.
        assert_eq!(plan(Some("bytes=0-1,5-6"), 1000), Plan::Full);
        assert_eq!(plan(Some("bytes=0-1,5000-"), 1000), Plan::Full);
    }
}
