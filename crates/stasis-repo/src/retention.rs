//! Which snapshots to keep: restic's `forget` policy, and the retention of schedules.
//!
//! A [`Policy`] keeps the newest `last` snapshots, and for each of the newest `hourly`
//! (`daily`, `weekly`, `monthly`, `yearly`) hours (days, ISO weeks, months, years) that
//! hold a snapshot, the newest snapshot of it; a snapshot kept by any rule is kept, and
//! every other one is removed. Time buckets are in UTC. A policy that keeps nothing is
//! refused, as restic refuses it: forgetting everything is never what a missing flag
//! meant.
//!
//! [`forget`] applies a policy to a VM's live snapshots; each removed one is deleted as
//! [`crate::delete`] deletes (a snapshot with children is consolidated into them, so
//! no data a kept snapshot needs is lost).

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Serialize;
use stasis_catalog::{Catalog, Snapshot, Status};
use stasis_store::Store;

use crate::error::{Error, Result};

/// How many snapshots each rule keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// The newest this many.
    pub last: u32,
    /// The newest of each of this many hours.
    pub hourly: u32,
    /// The newest of each of this many days.
    pub daily: u32,
    /// The newest of each of this many ISO weeks.
    pub weekly: u32,
    /// The newest of each of this many months.
    pub monthly: u32,
    /// The newest of each of this many years.
    pub yearly: u32,
}

/// What a policy says of one snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The snapshot's id.
    pub id: String,
    /// When it was made.
    pub at: String,
    /// The rules that keep it (`last`, `hourly`, ...); empty: it is removed.
    pub kept_by: Vec<&'static str>,
}

impl Decision {
    /// Whether it is kept.
    pub fn kept(&self) -> bool {
        !self.kept_by.is_empty()
    }
}

impl Policy {
    /// Whether every rule is zero.
    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }

    /// Decide for `snapshots` (id and time, any order); answers them newest first.
    pub fn apply(&self, snapshots: &[(String, Timestamp)]) -> Result<Vec<Decision>> {
        if self.is_empty() {
            return Err(Error::Invalid(
                "no policy given: say what to keep (--keep-last, --keep-hourly, --keep-daily, \
                 --keep-weekly, --keep-monthly, --keep-yearly); nothing was removed"
                    .into(),
            ));
        }
        let mut sorted: Vec<&(String, Timestamp)> = snapshots.iter().collect();
        sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
        type Bucket = fn(Timestamp) -> (i32, i32, i32, i32);
        let rules: [(&'static str, u32, Bucket); 6] = [
            ("last", self.last, |_| (0, 0, 0, 0)),
            ("hourly", self.hourly, |t| {
                let d = t.to_zoned(TimeZone::UTC).datetime();
                (d.year().into(), d.day_of_year().into(), d.hour().into(), 0)
            }),
            ("daily", self.daily, |t| {
                let d = t.to_zoned(TimeZone::UTC).datetime();
                (d.year().into(), d.day_of_year().into(), 0, 0)
            }),
            ("weekly", self.weekly, |t| {
                let w = t.to_zoned(TimeZone::UTC).date().iso_week_date();
                (w.year().into(), w.week().into(), 0, 0)
            }),
            ("monthly", self.monthly, |t| {
                let d = t.to_zoned(TimeZone::UTC).date();
                (d.year().into(), d.month().into(), 0, 0)
            }),
            ("yearly", self.yearly, |t| {
                (t.to_zoned(TimeZone::UTC).date().year().into(), 0, 0, 0)
            }),
        ];
        let mut out: Vec<Decision> = sorted
            .iter()
            .map(|(id, at)| Decision {
                id: id.clone(),
                at: at.to_string(),
                kept_by: Vec::new(),
            })
            .collect();
        for (name, count, bucket) in rules {
            let mut left = count;
            let mut previous = None;
            for (i, (_, at)) in sorted.iter().enumerate() {
                if left == 0 {
                    break;
                }
                let b = bucket(*at);
                // `last` counts every snapshot; a time rule, each new bucket once.
                if name == "last" || previous != Some(b) {
                    out[i].kept_by.push(name);
                    left -= 1;
                    previous = Some(b);
                }
            }
        }
        Ok(out)
    }
}

fn parse_time(s: &Snapshot) -> Result<Timestamp> {
    s.created_at.parse().map_err(|e| {
        Error::Catalog(stasis_catalog::Error::corrupt(format!(
            "snapshot {} was created at {:?}, not a time: {e}",
            s.id, s.created_at
        )))
    })
}

/// What [`forget`] decided and did.
#[derive(Debug, Serialize)]
pub struct Forgotten {
    /// Every live snapshot of the VM, newest first, with the rules that keep it.
    pub decisions: Vec<Decision>,
    /// The ids deleted (none for a dry run).
    pub deleted: Vec<String>,
}

/// Apply `policy` to VM `vm`'s live snapshots; unless `dry_run`, delete the ones it
/// does not keep, oldest first.
pub fn forget(
    store: &Store,
    catalog: &mut Catalog,
    vm: &str,
    policy: &Policy,
    dry_run: bool,
    actor: &str,
) -> Result<Forgotten> {
    let v = catalog
        .vm(vm)?
        .ok_or_else(|| Error::NotFound(format!("no VM {vm:?}")))?;
    let snaps: Vec<Snapshot> = catalog
        .list(Some(&v.id))?
        .into_iter()
        .filter(|s| s.status == Status::Active)
        .collect();
    let times = snaps
        .iter()
        .map(|s| Ok((s.id.clone(), parse_time(s)?)))
        .collect::<Result<Vec<_>>>()?;
    let decisions = policy.apply(&times)?;
    let mut deleted = Vec::new();
    if !dry_run {
        for d in decisions.iter().rev().filter(|d| !d.kept()) {
            deleted.extend(crate::delete(store, catalog, &d.id, false, actor)?);
        }
    }
    Ok(Forgotten { decisions, deleted })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("time")
    }

    fn kept(p: Policy, snaps: &[(&str, &str)]) -> Vec<String> {
        let input: Vec<(String, Timestamp)> =
            snaps.iter().map(|(i, t)| (i.to_string(), at(t))).collect();
        let mut ids: Vec<String> = p
            .apply(&input)
            .expect("apply")
            .into_iter()
            .filter(Decision::kept)
            .map(|d| d.id)
            .collect();
        ids.sort();
        ids
    }

    const SNAPS: &[(&str, &str)] = &[
        ("a", "2026-11-02T10:00:00Z"), // Monday of ISO week 45
        ("b", "2026-11-02T10:30:00Z"),
        ("c", "2026-11-02T11:15:00Z"),
        ("d", "2026-11-03T09:00:00Z"),
        ("e", "2026-11-09T09:00:00Z"), // week 46
        ("f", "2026-12-01T08:00:00Z"), // December
        ("g", "2026-12-01T08:20:00Z"),
    ];

    #[test]
    fn keep_last_keeps_the_newest() {
        let p = Policy {
            last: 2,
            ..Policy::default()
        };
        assert_eq!(kept(p, SNAPS), ["f", "g"]);
    }

    #[test]
    fn time_rules_keep_the_newest_of_each_bucket_counting_buckets_that_hold_one() {
        let hourly = Policy {
            hourly: 3,
            ..Policy::default()
        };
        // Hours with snapshots, newest first: 12-01 08 (g), 11-09 09 (e), 11-03 09 (d).
        assert_eq!(kept(hourly, SNAPS), ["d", "e", "g"]);
        let daily = Policy {
            daily: 10,
            ..Policy::default()
        };
        assert_eq!(kept(daily, SNAPS), ["c", "d", "e", "g"]);
        let weekly = Policy {
            weekly: 2,
            ..Policy::default()
        };
        assert_eq!(kept(weekly, SNAPS), ["e", "g"]);
        let monthly = Policy {
            monthly: 2,
            ..Policy::default()
        };
        assert_eq!(kept(monthly, SNAPS), ["e", "g"]);
        let yearly = Policy {
            yearly: 5,
            ..Policy::default()
        };
        assert_eq!(kept(yearly, SNAPS), ["g"]);
    }

    #[test]
    fn rules_add_up_and_say_why() {
        let p = Policy {
            last: 1,
            weekly: 2,
            ..Policy::default()
        };
        let input: Vec<(String, Timestamp)> =
            SNAPS.iter().map(|(i, t)| (i.to_string(), at(t))).collect();
        let d = p.apply(&input).expect("apply");
        assert_eq!(d[0].id, "g");
        assert_eq!(d[0].kept_by, ["last", "weekly"]);
        let e = d.iter().find(|d| d.id == "e").expect("e");
        assert_eq!(e.kept_by, ["weekly"]);
        assert_eq!(d.iter().filter(|d| d.kept()).count(), 2);
    }

    #[test]
    fn iso_weeks_cross_the_year() {
        // 2026-12-31 (Thursday) and 2027-01-03 (Sunday) are both in ISO week 53 of 2026.
        let p = Policy {
            weekly: 1,
            ..Policy::default()
        };
        assert_eq!(
            kept(
                p,
                &[("x", "2026-12-31T12:00:00Z"), ("y", "2027-01-03T12:00:00Z")]
            ),
            ["y"]
        );
        let p2 = Policy {
            weekly: 2,
            ..Policy::default()
        };
        assert_eq!(
            kept(
                p2,
                &[("x", "2026-12-31T12:00:00Z"), ("y", "2027-01-04T12:00:00Z")]
            ),
            ["x", "y"]
        );
    }

    #[test]
    fn an_empty_policy_is_refused() {
        let e = Policy::default()
            .apply(&[("a".into(), at("2026-01-01T00:00:00Z"))])
            .expect_err("refused");
        assert!(e.to_string().contains("no policy"), "{e}");
    }
}
