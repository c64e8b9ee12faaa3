//! Snapshot schedules: at most one per instance, as hypeman has them. A schedule is a
//! row of `schedules` (interval and retention as Go durations, the prefix and tags of
//! the snapshots it makes, when it runs next and what its last run did); each snapshot
//! a run made is a row of `scheduled_snapshots`, so retention deletes only those.
//!
//! Runs are claimed, not assumed: [`Catalog::claim_run`] moves `next_run_at` on only if
//! it still holds the value the runner read, so two servers sharing one catalog never
//! both run the same tick. The clock is the caller's (`now` arguments): the catalog
//! never reads time for a schedule, which keeps the runner testable without waiting.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::decode;
use crate::error::{Error, ErrorKind, Result};
use crate::fields::{parse_go_duration, validate_tags};
use crate::sql::{Db, args};
use crate::{Catalog, Vm};

/// The shortest interval a schedule may have (hypeman's).
pub const MIN_INTERVAL: Duration = Duration::from_secs(60);
/// The longest `name_prefix` (hypeman's): a run names its snapshot
/// `PREFIX-YYYYMMDD-HHMMSS`, at most 63 characters.
pub const MAX_NAME_PREFIX: usize = 47;

/// What a schedule is asked to be (see [`Schedule`] for the fields).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewSchedule {
    /// How often, a Go duration of at least [`MIN_INTERVAL`].
    pub interval: String,
    /// Keep at most this many scheduled snapshots (0 or none: no limit by count).
    pub max_count: Option<u32>,
    /// Delete scheduled snapshots older than this Go duration.
    pub max_age: Option<String>,
    /// Names of the snapshots it makes start with this.
    pub name_prefix: Option<String>,
    /// Tags of the snapshots it makes.
    pub metadata: BTreeMap<String, String>,
}

/// A schedule of an instance.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Schedule {
    /// The instance's VM.
    pub vm: Vm,
    /// How often it runs, as given.
    pub interval: String,
    /// Retention by count (0 or none: none).
    pub max_count: Option<u32>,
    /// Retention by age, as given.
    pub max_age: Option<String>,
    /// The prefix of its snapshots' names.
    pub name_prefix: Option<String>,
    /// The tags of its snapshots.
    pub metadata: BTreeMap<String, String>,
    /// When it was first set.
    pub created_at: String,
    /// When it was last set.
    pub updated_at: String,
    /// When it runs next.
    pub next_run_at: String,
    /// When it last ran.
    pub last_run_at: Option<String>,
    /// The snapshot its last successful run made.
    pub last_snapshot_id: Option<String>,
    /// Why its last run failed (none after a success).
    pub last_error: Option<String>,
}

impl Schedule {
    /// Its interval.
    pub fn every(&self) -> Result<Duration> {
        parse_go_duration(&self.interval)
    }

    /// Its retention by age, if any.
    pub fn max_age(&self) -> Result<Option<Duration>> {
        self.max_age.as_deref().map(parse_go_duration).transpose()
    }

    /// When it runs next.
    pub fn next_run(&self) -> Result<jiff::Timestamp> {
        parse_ts("next_run_at", &self.next_run_at)
    }
}

/// A snapshot a schedule made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduledSnapshot {
    /// Its id.
    pub snapshot_id: String,
    /// The scheduler's time when it was made (retention by age counts from it).
    pub made_at: String,
}

fn parse_ts(what: &str, s: &str) -> Result<jiff::Timestamp> {
    s.parse()
        .map_err(|e| Error::corrupt(format!("{what} {s:?} is not a timestamp: {e}")))
}

/// `at` plus `d`, refused past the end of time jiff knows.
pub fn after(at: jiff::Timestamp, d: Duration) -> Result<jiff::Timestamp> {
    let span = jiff::SignedDuration::try_from(d)
        .map_err(|_| Error::new(ErrorKind::InvalidInput, "the interval is too long"))?;
    at.checked_add(span)
        .map_err(|_| Error::new(ErrorKind::InvalidInput, "the interval is too long"))
}

fn check_new(new: &NewSchedule) -> Result<Duration> {
    let bad = |m: String| Error::new(ErrorKind::InvalidInput, m);
    let every = parse_go_duration(&new.interval)?;
    if every < MIN_INTERVAL {
        return Err(bad(format!(
            "interval {:?} is shorter than the minimum of 1m",
            new.interval
        )));
    }
    let age = new.max_age.as_deref().map(parse_go_duration).transpose()?;
    let by_count = new.max_count.is_some_and(|n| n > 0);
    let by_age = age.is_some_and(|a| !a.is_zero());
    if !by_count && !by_age {
        return Err(bad(
            "a schedule's retention needs max_count (> 0) or max_age (> 0)".into(),
        ));
    }
    if let Some(p) = &new.name_prefix {
        if p.len() > MAX_NAME_PREFIX {
            return Err(bad(format!(
                "name_prefix is {} bytes long; at most {MAX_NAME_PREFIX} are allowed",
                p.len()
            )));
        }
        // The prefix starts a snapshot name: the same characters, checked on a sample.
        crate::validate_name(&format!("{p}-20260101-000000"))
            .map_err(|e| bad(format!("name_prefix {p:?}: {e}")))?;
    }
    validate_tags(&new.metadata)?;
    Ok(every)
}

impl Catalog {
    /// Set the schedule of instance `vm` (name or id), replacing one it has. A new
    /// schedule, or one whose interval changed, runs first at `now` plus the interval;
    /// otherwise the next run stays where it was.
    pub fn set_schedule(
        &mut self,
        vm: &str,
        new: &NewSchedule,
        now: jiff::Timestamp,
    ) -> Result<Schedule> {
        let every = check_new(new)?;
        let instance = self
            .instance(vm)?
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no instance {vm:?}")))?;
        let vm_id = instance.vm.id.clone();
        let at = now.to_string();
        let next = after(now, every)?.to_string();
        let metadata = serde_json::to_string(&new.metadata)
            .map_err(|e| Error::corrupt(format!("schedule metadata as JSON: {e}")))?;
        let max_count = new.max_count.map(i64::from);
        self.write(|db| {
            match schedule_row(db, &vm_id)? {
                Some(old) => {
                    let next = if old.interval == new.interval {
                        old.next_run_at
                    } else {
                        next.clone()
                    };
                    db.exec(
                        "changing the schedule",
                        "UPDATE schedules SET every = ?1, max_count = ?2, max_age = ?3, \
                         name_prefix = ?4, metadata = ?5, updated_at = ?6, next_run_at = ?7 \
                         WHERE vm_id = ?8",
                        args![
                            &new.interval,
                            max_count,
                            &new.max_age,
                            &new.name_prefix,
                            &metadata,
                            &at,
                            &next,
                            &vm_id
                        ],
                    )?;
                }
                None => {
                    db.exec(
                        "setting the schedule",
                        "INSERT INTO schedules (vm_id, every, max_count, max_age, name_prefix, \
                         metadata, created_at, updated_at, next_run_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8)",
                        args![
                            &vm_id,
                            &new.interval,
                            max_count,
                            &new.max_age,
                            &new.name_prefix,
                            &metadata,
                            &at,
                            &next
                        ],
                    )?;
                }
            }
            Ok(())
        })?;
        self.schedule(&vm_id)?
            .ok_or_else(|| Error::corrupt("the new schedule vanished"))
    }

    /// The schedule of VM `vm` (name or id), if it has one.
    pub fn schedule(&self, vm: &str) -> Result<Option<Schedule>> {
        let Some(v) = self.vm(vm)? else {
            return Ok(None);
        };
        let mut db = self.db()?;
        Ok(schedule_row(&mut db, &v.id)?.map(|r| r.into_schedule(v)))
    }

    /// Every schedule, by VM name.
    pub fn schedules(&self) -> Result<Vec<Schedule>> {
        let ids: Vec<String> = {
            let rows = self.db()?.rows(
                "listing schedules",
                "SELECT v.id AS id FROM schedules s JOIN vms v ON v.id = s.vm_id ORDER BY v.name",
                &[],
            )?;
            decode::all(&rows, decode::snapshot_id)?
        };
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(s) = self.schedule(&id)? {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// Remove the schedule of `vm`; the snapshots it made stay.
    pub fn remove_schedule(&mut self, vm: &str) -> Result<()> {
        let none = || Error::new(ErrorKind::NotFound, format!("no schedule for {vm:?}"));
        let v = self.vm(vm)?.ok_or_else(none)?;
        let n = self.write(|db| {
            db.exec(
                "removing the schedule",
                "DELETE FROM schedules WHERE vm_id = ?1",
                args![&v.id],
            )
        })?;
        if n == 0 {
            return Err(none());
        }
        Ok(())
    }

    /// Claim the run of `vm_id`'s schedule due at `due` (its `next_run_at` as read),
    /// moving its next run to `next`. False when another runner claimed it first, or
    /// the schedule changed or went meanwhile: then this runner does nothing.
    pub fn claim_run(&mut self, vm_id: &str, due: &str, next: jiff::Timestamp) -> Result<bool> {
        let next = next.to_string();
        let n = self.write(|db| {
            db.exec(
                "claiming a scheduled run",
                "UPDATE schedules SET next_run_at = ?1 WHERE vm_id = ?2 AND next_run_at = ?3",
                args![&next, vm_id, due],
            )
        })?;
        Ok(n == 1)
    }

    /// Record how the run of `vm_id`'s schedule at `at` went: the snapshot it made (if
    /// it made one) and what failed (if anything did: the snapshot, or retention after
    /// it). A schedule removed meanwhile is left removed.
    pub fn finish_run(
        &mut self,
        vm_id: &str,
        at: jiff::Timestamp,
        snapshot: Option<&str>,
        error: Option<&str>,
    ) -> Result<()> {
        let at = at.to_string();
        self.write(|db| {
            // A run that made nothing keeps the last snapshot a run made.
            db.exec(
                "recording a scheduled run",
                "UPDATE schedules SET last_run_at = ?1, \
                 last_snapshot_id = COALESCE(?2, last_snapshot_id), last_error = ?3 \
                 WHERE vm_id = ?4",
                args![&at, snapshot, error, vm_id],
            )
        })?;
        Ok(())
    }

    /// Record that a schedule of `vm_id` made snapshot `snapshot_id` at `made_at`.
    pub fn mark_scheduled(
        &mut self,
        snapshot_id: &str,
        vm_id: &str,
        made_at: jiff::Timestamp,
    ) -> Result<()> {
        let at = made_at.to_string();
        self.write(|db| {
            db.exec(
                "marking a scheduled snapshot",
                "INSERT INTO scheduled_snapshots (snapshot_id, vm_id, made_at) VALUES (?1, ?2, ?3)",
                args![snapshot_id, vm_id, &at],
            )
        })?;
        Ok(())
    }

    /// The snapshots of `vm_id` that schedules made and that are not deleted, oldest
    /// first.
    pub fn scheduled_snapshots(&self, vm_id: &str) -> Result<Vec<ScheduledSnapshot>> {
        let rows = self.db()?.rows(
            "listing scheduled snapshots",
            "SELECT m.snapshot_id AS id, m.made_at AS made_at FROM scheduled_snapshots m \
             JOIN snapshots s ON s.id = m.snapshot_id \
             WHERE m.vm_id = ?1 AND s.status != 'deleted'",
            args![vm_id],
        )?;
        let mut out = decode::all(&rows, decode::scheduled_snapshot)?;
        // Ordered here by the instant, not in SQL by the text (RFC 3339 texts of
        // different precision do not sort as their instants do).
        let mut keyed = Vec::with_capacity(out.len());
        for s in out.drain(..) {
            keyed.push((parse_ts("made_at", &s.made_at)?, s));
        }
        keyed.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| a.1.snapshot_id.cmp(&b.1.snapshot_id))
        });
        Ok(keyed.into_iter().map(|(_, s)| s).collect())
    }
}

/// The `schedules` row of VM `vm_id`.
fn schedule_row(db: &mut Db, vm_id: &str) -> Result<Option<decode::ScheduleRow>> {
    let rows = db.rows(
        "reading a schedule",
        &format!(
            "SELECT {} FROM schedules WHERE vm_id = ?1",
            decode::select(decode::SCHEDULE_COLUMNS)
        ),
        args![vm_id],
    )?;
    decode::first(&rows, decode::schedule)
}

impl decode::ScheduleRow {
    fn into_schedule(self, vm: Vm) -> Schedule {
        Schedule {
            vm,
            interval: self.interval,
            max_count: self.max_count,
            max_age: self.max_age,
            name_prefix: self.name_prefix,
            metadata: self.metadata,
            created_at: self.created_at,
            updated_at: self.updated_at,
            next_run_at: self.next_run_at,
            last_run_at: self.last_run_at,
            last_snapshot_id: self.last_snapshot_id,
            last_error: self.last_error,
        }
    }
}
