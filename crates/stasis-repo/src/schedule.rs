//! Running snapshot schedules ([`stasis_catalog::Schedule`]): each due schedule is
//! claimed, its instance snapshotted as [`crate::instance::snapshot`] does (hooks and
//! all), the snapshot marked as the schedule's, then the schedule's retention applied
//! to the snapshots schedules made, and the run recorded on the schedule.
//!
//! The clock is the caller's: [`run_due`] takes `now`, so tests run four ticks in no
//! time and `stasis serve` passes the wall clock. A schedule that fell behind (the
//! server was down) runs once, not once per missed tick, and next runs one interval
//! after now. Retention deletes only snapshots schedules made, each as
//! [`crate::delete`] does: a snapshot with children is consolidated into them.
//!
//! A crash between a run's snapshot and its mark leaves a snapshot that retention never
//! deletes (it is not known to be the schedule's): an extra snapshot, never a lost one.

use std::time::Duration;

use jiff::Timestamp;
use stasis_catalog::{Catalog, Schedule, time_after};
use stasis_store::Store;

use crate::create::{CreateSpec, Paths, Progress};
use crate::error::{Error, Result};
use crate::roots::{Roots, Scope};

/// The prefix of a scheduled snapshot's name when its schedule gives none.
pub const DEFAULT_PREFIX: &str = "scheduled";

/// What one run did.
#[derive(Debug)]
pub struct Run {
    /// The instance's VM name.
    pub vm: String,
    /// The snapshot made, or why none was.
    pub snapshot: std::result::Result<String, String>,
    /// Scheduled snapshots retention deleted.
    pub deleted: Vec<String>,
    /// Why retention failed, if it did.
    pub retention_error: Option<String>,
}

/// The name of the snapshot a run at `at` makes.
pub fn snapshot_name(schedule: &Schedule, at: Timestamp) -> String {
    let prefix = schedule.name_prefix.as_deref().unwrap_or(DEFAULT_PREFIX);
    format!("{prefix}-{}", at.strftime("%Y%m%d-%H%M%S"))
}

/// When a schedule due at `due` runs next, after a run at `now`.
fn next_after(due: Timestamp, now: Timestamp, every: Duration) -> Result<Timestamp> {
    let next = time_after(due, every)?;
    Ok(if next > now {
        next
    } else {
        time_after(now, every)?
    })
}

/// When the next schedule is due (none: no schedules).
pub fn next_due(catalog: &Catalog) -> Result<Option<Timestamp>> {
    let mut next: Option<Timestamp> = None;
    for s in catalog.schedules()? {
        let t = s.next_run()?;
        next = Some(next.map_or(t, |n| n.min(t)));
    }
    Ok(next)
}

/// Run every schedule due at `now`. Its instance's files are opened beneath `roots`
/// for the instance's tenant (as that tenant's own create would open them), or, with
/// no roots (the CLI), as any file of this process. A failed run is recorded on its
/// schedule (`last_error`) and reported, never an error of this call; only the
/// catalog failing is.
pub fn run_due(
    store: &Store,
    catalog: &mut Catalog,
    roots: Option<&Roots>,
    now: Timestamp,
) -> Result<Vec<Run>> {
    let mut runs = Vec::new();
    for s in catalog.schedules()? {
        let due = s.next_run()?;
        if due > now {
            continue;
        }
        let every = s.every()?;
        if !catalog.claim_run(&s.vm.id, &s.next_run_at, next_after(due, now, every)?)? {
            continue;
        }
        let scope = Scope {
            tenant: &s.vm.tenant,
            admin: false,
        };
        let paths = match roots {
            Some(r) => Paths::Roots(r, scope),
            None => Paths::Host,
        };
        runs.push(run_one(store, catalog, paths, &s, now)?);
    }
    Ok(runs)
}

fn run_one(
    store: &Store,
    catalog: &mut Catalog,
    paths: Paths<'_>,
    s: &Schedule,
    now: Timestamp,
) -> Result<Run> {
    let made = snapshot(store, catalog, paths, s, now);
    let mut run = Run {
        vm: s.vm.name.clone(),
        snapshot: made.as_ref().map(Clone::clone).map_err(ToString::to_string),
        deleted: Vec::new(),
        retention_error: None,
    };
    if let Err(e) = &made {
        tracing::warn!(vm = %s.vm.name, "scheduled snapshot failed: {e}");
    }
    // Retention runs after a failed run too: max_age keeps ageing.
    match retain(store, catalog, s, now, &mut run.deleted) {
        Ok(()) => {}
        Err(e) => {
            tracing::warn!(vm = %s.vm.name, "schedule retention failed: {e}");
            run.retention_error = Some(e.to_string());
        }
    }
    let error = match (&run.snapshot, &run.retention_error) {
        (Err(e), _) => Some(format!("snapshot: {e}")),
        (Ok(_), Some(e)) => Some(format!("retention: {e}")),
        (Ok(_), None) => None,
    };
    catalog.finish_run(
        &s.vm.id,
        now,
        run.snapshot.as_ref().ok().map(String::as_str),
        error.as_deref(),
    )?;
    Ok(run)
}

fn snapshot(
    store: &Store,
    catalog: &mut Catalog,
    paths: Paths<'_>,
    s: &Schedule,
    now: Timestamp,
) -> Result<String> {
    let instance = catalog
        .instance(&s.vm.id)?
        .ok_or_else(|| Error::NotFound(format!("VM {} is no longer an instance", s.vm.name)))?;
    let spec = CreateSpec {
        name: Some(snapshot_name(s, now)),
        created_by: "schedule".into(),
        make_current: true,
        tags: s.metadata.clone(),
        tenant: Some(instance.vm.tenant.clone()),
        ..CreateSpec::default()
    };
    let created =
        crate::instance::snapshot(store, catalog, &instance, spec, paths, &|_: Progress| {})?;
    catalog.mark_scheduled(&created.snapshot.id, &s.vm.id, now)?;
    Ok(created.snapshot.id)
}

/// Delete the scheduled snapshots of `s`'s VM that its retention no longer keeps: all
/// but the newest `max_count`, and those made longer than `max_age` before `now`.
fn retain(
    store: &Store,
    catalog: &mut Catalog,
    s: &Schedule,
    now: Timestamp,
    deleted: &mut Vec<String>,
) -> Result<()> {
    let made = catalog.scheduled_snapshots(&s.vm.id)?;
    let oldest_kept = match s.max_age()? {
        Some(age) if !age.is_zero() => {
            let span = jiff::SignedDuration::try_from(age)
                .map_err(|_| Error::Invalid("max_age is too long".into()))?;
            now.checked_sub(span).ok()
        }
        _ => None,
    };
    let by_count = s.max_count.filter(|n| *n > 0).map(|n| n as usize);
    let surplus = by_count.map_or(0, |n| made.len().saturating_sub(n));
    for (i, m) in made.iter().enumerate() {
        let at: Timestamp = m.made_at.parse().map_err(|e| {
            Error::Catalog(stasis_catalog::Error::corrupt(format!(
                "scheduled snapshot {} made at {:?}: {e}",
                m.snapshot_id, m.made_at
            )))
        })?;
        let too_old = oldest_kept.is_some_and(|o| at < o);
        if i < surplus || too_old {
            deleted.extend(crate::delete(
                store,
                catalog,
                &m.snapshot_id,
                false,
                "schedule",
            )?);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use stasis_catalog::{Hypervisor, InstanceFile, NewInstance, NewSchedule};
    use stasis_store::{Role, StoreConfig};

    use super::*;
    use crate::{RepoConfig, Repository};

    /// An instance of one disk at `disk`, without hooks.
    fn disk_instance(vm: &str, hypervisor: Hypervisor, disk: &std::path::Path) -> NewInstance {
        NewInstance {
            vm: vm.into(),
            tenant: None,
            hypervisor,
            files: vec![InstanceFile {
                role: Role::Disk,
                name: "root.img".into(),
                path: disk.display().to_string(),
            }],
            pre_snapshot: None,
            post_snapshot: None,
            pre_restore: None,
            post_restore: None,
        }
    }

    fn minutes(t0: Timestamp, n: i64) -> Timestamp {
        t0 + jiff::SignedDuration::from_mins(n)
    }

    /// interval 1m, max_count 2: after four runs (a clock moved by hand), exactly the two
    /// newest scheduled snapshots are left, and a snapshot made by hand is never touched.
    #[test]
    fn four_runs_keep_the_newest_two_and_nothing_else() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut repo = Repository::init(
            &RepoConfig::embedded(&d.path().join("repo")),
            StoreConfig::default(),
        )
        .expect("init");
        let disk = d.path().join("root.img");
        std::fs::write(&disk, vec![7u8; 200_000]).expect("disk");
        let (store, cat) = repo.parts();
        cat.register_instance(&disk_instance("web", Hypervisor::Qemu, &disk))
            .expect("instance");
        let t0: Timestamp = "2026-12-01T10:00:00Z".parse().expect("t0");
        let s = cat
            .set_schedule(
                "web",
                &NewSchedule {
                    interval: "1m".into(),
                    max_count: Some(2),
                    name_prefix: Some("tick".into()),
                    metadata: [("by".to_string(), "schedule".to_string())].into(),
                    ..NewSchedule::default()
                },
                t0,
            )
            .expect("schedule");
        // Not due yet: nothing runs.
        assert!(run_due(store, cat, None, t0).expect("early").is_empty());
        let by_hand = crate::instance::snapshot(
            store,
            cat,
            &cat.instance("web").expect("read").expect("instance"),
            CreateSpec {
                name: Some("by-hand".into()),
                created_by: "test".into(),
                make_current: true,
                ..CreateSpec::default()
            },
            Paths::Host,
            &|_: Progress| {},
        )
        .expect("by hand");
        let mut made = Vec::new();
        for tick in 1..=4 {
            std::fs::write(&disk, vec![tick as u8; 200_000]).expect("change disk");
            let now = minutes(t0, tick);
            let runs = run_due(store, cat, None, now).expect("run");
            assert_eq!(runs.len(), 1, "tick {tick}: one run");
            let id = runs[0].snapshot.clone().expect("snapshot made");
            made.push(id);
            // The same tick again: claimed already, nothing runs twice.
            assert!(run_due(store, cat, None, now).expect("again").is_empty());
        }
        let left: Vec<String> = cat
            .scheduled_snapshots(&s.vm.id)
            .expect("scheduled")
            .into_iter()
            .map(|m| m.snapshot_id)
            .collect();
        assert_eq!(
            left,
            made[2..],
            "exactly the newest two scheduled snapshots"
        );
        let live = cat.list(Some("web")).expect("list");
        assert_eq!(live.len(), 3, "the two, plus the one made by hand");
        assert!(live.iter().any(|x| x.id == by_hand.snapshot.id));
        let newest = live.iter().find(|x| x.id == made[3]).expect("newest");
        assert_eq!(newest.name, "tick-20261201-100400");
        assert_eq!(newest.tags.get("by").map(String::as_str), Some("schedule"));
        let s = cat.schedule("web").expect("read").expect("schedule");
        assert_eq!(s.last_snapshot_id.as_deref(), Some(made[3].as_str()));
        assert_eq!(s.last_error, None);
        assert_eq!(s.next_run().expect("next"), minutes(t0, 5));
        // Each kept snapshot still reads back as the disk was at its tick.
        for (i, id) in made[2..].iter().enumerate() {
            let snap = cat.get(id).expect("get").expect("snap");
            let r =
                stasis_store::PayloadReader::new(store, snap.payloads[0].manifest).expect("reader");
            let mut buf = vec![0u8; 200_000];
            assert_eq!(r.read_at(0, &mut buf).expect("read"), buf.len());
            assert!(buf.iter().all(|b| *b == (i + 3) as u8), "snapshot {id}");
        }
    }

    /// A server that was down runs a late schedule once, then one interval after now; a
    /// failing run is recorded, and max_age deletes by the scheduler's clock.
    #[test]
    fn late_runs_once_failures_are_recorded_and_max_age_ages() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut repo = Repository::init(
            &RepoConfig::embedded(&d.path().join("repo")),
            StoreConfig::default(),
        )
        .expect("init");
        let disk = d.path().join("root.img");
        std::fs::write(&disk, b"disk").expect("disk");
        let (store, cat) = repo.parts();
        cat.register_instance(&disk_instance("db", Hypervisor::Firecracker, &disk))
            .expect("instance");
        let t0: Timestamp = "2026-12-01T10:00:00Z".parse().expect("t0");
        cat.set_schedule(
            "db",
            &NewSchedule {
                interval: "1h".into(),
                max_age: Some("90m".into()),
                ..NewSchedule::default()
            },
            t0,
        )
        .expect("schedule");
        let late = minutes(t0, 60 * 5 + 7);
        let runs = run_due(store, cat, None, late).expect("late");
        assert_eq!(runs.len(), 1, "one run for five missed ticks");
        let first = runs[0].snapshot.clone().expect("made");
        let s = cat.schedule("db").expect("read").expect("s");
        assert_eq!(s.next_run().expect("next"), minutes(late, 60));
        // The disk goes away: the run fails, says why, and keeps the last snapshot.
        std::fs::remove_file(&disk).expect("rm");
        let runs = run_due(store, cat, None, minutes(late, 60)).expect("fails");
        assert!(runs[0].snapshot.is_err());
        let s = cat.schedule("db").expect("read").expect("s");
        assert!(
            s.last_error
                .as_deref()
                .is_some_and(|e| e.starts_with("snapshot:")),
            "{s:?}"
        );
        assert_eq!(s.last_snapshot_id.as_deref(), Some(first.as_str()));
        // Two hours after the first snapshot, max_age 90m has deleted it.
        let runs = run_due(store, cat, None, minutes(late, 120)).expect("ages");
        assert_eq!(runs[0].deleted, std::slice::from_ref(&first));
        assert!(cat.scheduled_snapshots(&s.vm.id).expect("none").is_empty());
    }
}
