use super::*;
use crate::testing::new_snap;

#[test]
fn reopen_keeps_everything() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path().join("catalog.db");
    let id = {
        let mut c = Catalog::open(&p).expect("open");
        c.create(&new_snap("vm1", "base", None)).expect("create").id
    };
    let c = Catalog::open(&p).expect("reopen");
    assert_eq!(c.resolve("vm1/base").expect("resolve").id, id);
}

/// The behaviour every catalog has, on SQLite files (two connections where a scenario
/// needs them: two processes of one host).
#[test]
fn sqlite_conformance() {
    let dirs = std::sync::Mutex::new(Vec::new());
    testing::conformance(&|| {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("catalog.db");
        dirs.lock().expect("dirs").push(dir);
        std::sync::Arc::new(move || Catalog::open(&path).expect("open"))
    });
}

/// ... and in memory, one connection.
#[test]
fn in_memory_scenarios() {
    let mut c = Catalog::open_in_memory().expect("open");
    let a = c.create(&new_snap("vm1", "base", None)).expect("create");
    assert_eq!(c.resolve("vm1").expect("resolve").id, a.id);
}

/// A damaged payload row (a size, a root, a name changed behind the catalog's back) is
/// a corruption error, never a wrong manifest; the database's own check runs clean.
#[test]
fn damaged_payload_rows_fail_their_check() {
    let mut c = Catalog::open_in_memory().expect("open");
    let a = c.create(&new_snap("vm1", "base", None)).expect("create");
    assert!(c.check_integrity().expect("check").is_empty());
    for damage in [
        "UPDATE payloads SET size = size + 1",
        "UPDATE payloads SET block_size = 4096",
        "UPDATE payloads SET name = 'rooT'",
        "UPDATE payloads SET root = 'hole' || substr(root, 5)",
    ] {
        c.raw_sqlite()
            .execute_batch("SAVEPOINT d")
            .expect("savepoint");
        c.raw_sqlite().execute_batch(damage).expect("damage");
        let err = c.payloads(&a.id).expect_err(damage);
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{damage}");
        c.raw_sqlite()
            .execute_batch("ROLLBACK TO d; RELEASE d")
            .expect("undo");
        assert_eq!(c.payloads(&a.id).expect("intact again").len(), 1);
    }
}

/// The same behaviour on a real PostgreSQL server (tools/postgres.sh), a new database
/// per scenario.
#[test]
fn postgres_conformance() {
    let Some(pg) = testing::Postgres::start() else {
        return;
    };
    testing::conformance(&|| pg.fresh());
}

/// A restarted server: the write it cuts fails with a database error and leaves nothing
/// (no half snapshot); the next call connects again and works; the schema is migrated
/// once however many connections open it.
#[test]
fn postgres_restart_fails_cleanly_and_reconnects() {
    let Some(pg) = testing::Postgres::start() else {
        return;
    };
    let url = pg.database();
    let open = testing::Postgres::opener(url.clone());
    let mut c = open();
    let a = c.create(&new_snap("vm", "a", None)).expect("a");
    let versions = || -> i64 {
        let mut cfg: postgres::Config = url.parse().expect("url");
        cfg.user("postgres");
        let mut admin = cfg.connect(postgres::NoTls).expect("admin");
        admin
            .query_one("SELECT count(*) FROM stasis_schema", &[])
            .expect("versions")
            .get(0)
    };
    let _again = open();
    assert_eq!(versions(), 1, "one row of schema version");

    // Cut the connection in the middle of a write: the hook runs before each write
    // statement, and restarts the server before the payload row.
    static STEP: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let _ = DIR.set(pg.dir().to_path_buf());
    fn cut() {
        if STEP.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1
            && let Some(d) = DIR.get()
        {
            testing::Postgres::restart_in(d);
        }
    }
    c.on_write(Some(cut)).expect("hook");
    let err = c
        .create(&new_snap("vm", "b", Some(&a.id)))
        .expect_err("the server went away mid-write");
    assert_eq!(err.kind(), ErrorKind::Database, "{err}");
    c.on_write(None).expect("unhook");
    // The same connection works again, and nothing of b was committed.
    let names: Vec<String> = c
        .list_filtered(&ListFilter {
            all: true,
            ..ListFilter::default()
        })
        .expect("list after the restart")
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["a"]);
    assert!(c.check_integrity().expect("check").is_empty());
    let b = c
        .create(&new_snap("vm", "b", Some(&a.id)))
        .expect("b again");
    assert!(b.is_current);
}

/// A writer waits for the write lock, and a holder that dies (its connection cut)
/// releases it.
#[test]
fn postgres_write_lock_dies_with_its_holder() {
    let Some(pg) = testing::Postgres::start() else {
        return;
    };
    let url = pg.database();
    let open = testing::Postgres::opener(url.clone());
    drop(open());
    let mut cfg: postgres::Config = url.parse().expect("url");
    cfg.application_name("stasis");
    let mut holder = cfg.connect(postgres::NoTls).expect("holder");
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&sql::WRITE_LOCK])
        .expect("take the write lock");
    let writer = {
        let open = open.clone();
        std::thread::spawn(move || {
            let mut c = open();
            c.create(&new_snap("vm", "waited", None)).map(|s| s.id)
        })
    };
    // Bounded: until the writer is seen waiting for the lock.
    let mut admin = pg.admin();
    let mut waiting = false;
    for _ in 0..600 {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                &[],
            )
            .expect("pg_locks")
            .get(0);
        if n > 0 {
            waiting = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(waiting, "the writer never waited for the lock");
    assert!(!writer.is_finished(), "the writer went past a held lock");
    // The holder dies: its connection goes, and the lock with it.
    let killed: i64 = admin
        .query_one(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 30000)) FROM pg_stat_activity \
             WHERE pid IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted)",
            &[],
        )
        .expect("terminate")
        .get(0);
    assert_eq!(killed, 1);
    drop(holder);
    let id = writer
        .join()
        .expect("writer")
        .expect("created once the holder died");
    assert_eq!(open().resolve("vm").expect("resolve").id, id);
}
