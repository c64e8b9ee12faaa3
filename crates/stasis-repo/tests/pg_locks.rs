//! The store's locks on a real PostgreSQL server (tools/postgres.sh): the behaviour
//! every `Locks` has, across two "hosts" (two `PgLocks` of one repository), and a holder
//! whose connection dies releases what it held.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use postgres::{Client, NoTls};
use stasis_repo::PgLocks;
use stasis_store::Locks;

/// A PostgreSQL server in a temporary directory, stopped when dropped.
struct Postgres {
    dir: tempfile::TempDir,
    url: String,
}

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/postgres.sh")
}

impl Postgres {
    fn start() -> Option<Postgres> {
        if std::env::var_os("STASIS_SKIP_POSTGRES").is_some() {
            eprintln!("skipped: STASIS_SKIP_POSTGRES is set");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(dir.path())
            .output()
            .expect("running tools/postgres.sh");
        assert!(
            out.status.success(),
            "tools/postgres.sh start failed (apt-get install postgresql, as .ci/run does, \
             or set STASIS_SKIP_POSTGRES=1): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("STASIS_TEST_PG=").map(String::from))
            .expect("url");
        Some(Postgres { dir, url })
    }

    /// A connection that is not stasis's, to look and to kill.
    fn admin(&self) -> Client {
        let mut cfg: postgres::Config = self.url.parse().expect("url");
        cfg.application_name("test-admin");
        cfg.connect(NoTls).expect("connect")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

/// Kill every connection of stasis's (as a crashed host's would die), and wait (bounded,
/// by PostgreSQL) until each is gone, so what it held is released.
fn kill_stasis_connections(admin: &mut Client) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 30000))
             FROM pg_stat_activity
             WHERE application_name = 'stasis' AND pid <> pg_backend_pid()",
            &[],
        )
        .expect("terminate")
        .get(0)
}

#[test]
fn advisory_locks_hold_across_hosts_and_die_with_their_holder() {
    let Some(pg) = Postgres::start() else { return };
    let store = "s3://stasis/fleet";
    stasis_store::testing::locks_conformance(Arc::new(
        PgLocks::new(&pg.url, store).expect("locks"),
    ));

    let a = PgLocks::new(&pg.url, store).expect("host a");
    let b = Arc::new(PgLocks::new(&pg.url, store).expect("host b"));
    let other = PgLocks::new(&pg.url, "s3://stasis/other").expect("another repository");

    // The maintenance lock is one for both hosts, and not shared with another repository.
    let m = a.try_maintenance().expect("lock").expect("free");
    assert!(
        b.try_maintenance().expect("lock").is_none(),
        "two hosts ran gc at once"
    );
    assert!(other.try_maintenance().expect("lock").is_some());
    drop(m);
    assert!(b.try_maintenance().expect("lock").is_some());

    // gc on B waits for a create session of A.
    let s = a.register_session().expect("register");
    let (saw, seen) = mpsc::channel();
    let b2 = Arc::clone(&b);
    let waiter = std::thread::spawn(move || {
        b2.wait_for_sessions(&|n| {
            let _ = saw.send(n);
        })
        .expect("wait")
    });
    let n = seen
        .recv_timeout(Duration::from_secs(60))
        .expect("B saw A's session");
    assert_eq!(n, 1);
    drop(s);
    assert_eq!(waiter.join().expect("join"), 1);
    assert_eq!(b.wait_for_sessions(&|_| {}).expect("wait"), 0);

    // A host that dies (its connections killed) holding a session and the maintenance
    // lock blocks nobody: its session reads as ended and the lock is free.
    let mut admin = pg.admin();
    let s = a.register_session().expect("register");
    let m = a.try_maintenance().expect("lock").expect("free");
    assert!(kill_stasis_connections(&mut admin) >= 2);
    assert_eq!(b.wait_for_sessions(&|_| {}).expect("wait"), 0);
    assert!(b.try_maintenance().expect("lock").is_some());
    let rows: i64 = admin
        .query_one("SELECT count(*) FROM stasis_sessions", &[])
        .expect("count")
        .get(0);
    assert_eq!(rows, 0, "the dead session's row was left");
    // Dropping the dead holder's guards is harmless.
    drop((s, m));
}
