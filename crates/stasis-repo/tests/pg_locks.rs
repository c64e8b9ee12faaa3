//! The store's locks on a real PostgreSQL server (tools/postgres.sh): the behaviour
//! every `Locks` has, across two "hosts" (two `PgLocks` of one repository), and a holder
//! whose connection dies releases what it held.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use stasis_catalog::testing::Postgres;
use stasis_repo::PgLocks;
use stasis_store::Locks;

#[test]
fn advisory_locks_hold_across_hosts_and_die_with_their_holder() {
    let Some(pg) = Postgres::start() else { return };
    let store = "s3://stasis/fleet";
    stasis_store::testing::locks_conformance(Arc::new(
        PgLocks::new(pg.url(), store).expect("locks"),
    ));

    let a = PgLocks::new(pg.url(), store).expect("host a");
    let b = Arc::new(PgLocks::new(pg.url(), store).expect("host b"));
    let other = PgLocks::new(pg.url(), "s3://stasis/other").expect("another repository");

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
    s.still_held().expect("a live session is held");
    let m = a.try_maintenance().expect("lock").expect("free");
    assert!(pg.kill_stasis_connections() >= 2);
    // The holder learns it lost the session, so it records nothing.
    let lost = s
        .still_held()
        .expect_err("the session's connection was killed");
    assert!(lost.to_string().contains("nothing was recorded"), "{lost}");
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
