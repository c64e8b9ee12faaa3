//! The schedule runner of `stasis serve`: a task that wakes when the next schedule is
//! due (or every [`POLL`] at most, so a schedule set through the API, or by another
//! server sharing a PostgreSQL catalog, is seen), and runs due schedules on the
//! blocking pool with [`stasis_repo::schedule::run_due`]. Schedules live in the
//! catalog, so a restarted server picks them up where they were; a run is claimed in
//! the catalog first, so servers sharing one never both run it. A failing run or
//! catalog is logged and retried at the next wake, never fatal to the server.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::state::AppState;

/// The longest the runner sleeps between looks at the schedules.
pub const POLL: Duration = Duration::from_secs(15);

/// Run schedules until `stop` turns true.
pub async fn run(state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    loop {
        let st = state.clone();
        let next = tokio::task::spawn_blocking(move || -> Result<_, String> {
            let mut cat = st.catalogs.get().map_err(|e| e.to_string())?;
            let now = jiff::Timestamp::now();
            let runs =
                stasis_repo::schedule::run_due(&st.store, &mut cat, Some(&st.config.roots), now)
                    .map_err(|e| e.to_string())?;
            for r in &runs {
                match &r.snapshot {
                    Ok(id) => tracing::info!(
                        vm = %r.vm,
                        snapshot = %id,
                        deleted = r.deleted.len(),
                        "scheduled snapshot made"
                    ),
                    Err(e) => tracing::warn!(vm = %r.vm, "scheduled snapshot failed: {e}"),
                }
            }
            stasis_repo::schedule::next_due(&cat).map_err(|e| e.to_string())
        })
        .await;
        let wait = match next {
            Ok(Ok(Some(t))) => {
                let d = jiff::Timestamp::now().duration_until(t);
                Duration::try_from(d).unwrap_or(Duration::ZERO).min(POLL)
            }
            Ok(Ok(None)) => POLL,
            Ok(Err(e)) => {
                tracing::warn!("running schedules: {e}");
                POLL
            }
            Err(e) => {
                tracing::error!("the schedule runner failed: {e}");
                POLL
            }
        };
        // Never spin: a schedule due now (its run just failed to claim) waits a beat.
        let wait = wait.max(Duration::from_millis(200));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
    }
}
