//! The schema and its migrations, one list for both databases (see [`in_dialect`]).
//! SQLite's `PRAGMA user_version` counts the applied ones; on PostgreSQL the one row of
//! `stasis_schema` does.

use crate::error::{Error, Result};
use crate::sql::{Db, Dialect, Row, Value, args};

/// Migration `i` takes the schema from version `i` to `i + 1`. Never edit a released
/// one; append a new one.
const MIGRATIONS: &[&str] = &[
    r"
CREATE TABLE vms (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    current_id  TEXT,
    created_at  TEXT NOT NULL
);
CREATE TABLE snapshots (
    id                      TEXT PRIMARY KEY,
    vm_id                   TEXT NOT NULL REFERENCES vms(id),
    name                    TEXT NOT NULL,
    parent_id               TEXT REFERENCES snapshots(id),
    created_at              TEXT NOT NULL,
    status                  TEXT NOT NULL,
    created_by              TEXT NOT NULL,
    description             TEXT,
    compression             TEXT NOT NULL,
    size_bytes              INTEGER NOT NULL,
    uncompressed_size_bytes INTEGER NOT NULL,
    compressed_size_bytes   INTEGER NOT NULL,
    added_bytes             INTEGER NOT NULL,
    UNIQUE (vm_id, name)
);
CREATE INDEX snapshots_parent ON snapshots(parent_id);
CREATE TABLE payloads (
    snapshot_id TEXT NOT NULL REFERENCES snapshots(id),
    position    INTEGER NOT NULL,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL,
    size        INTEGER NOT NULL,
    allocated   INTEGER NOT NULL,
    data_bytes  INTEGER NOT NULL,
    block_size  INTEGER NOT NULL,
    fanout      INTEGER NOT NULL,
    root        TEXT NOT NULL,
    PRIMARY KEY (snapshot_id, name)
);
CREATE TABLE events (
    id          INTEGER PRIMARY KEY,
    snapshot_id TEXT NOT NULL,
    at          TEXT NOT NULL,
    action      TEXT NOT NULL,
    actor       TEXT NOT NULL,
    detail      TEXT NOT NULL
);
CREATE INDEX events_snapshot ON events(snapshot_id);
",
    r"
ALTER TABLE snapshots ADD COLUMN kind TEXT NOT NULL DEFAULT 'Stopped';
ALTER TABLE snapshots ADD COLUMN source_hypervisor TEXT;
ALTER TABLE snapshots ADD COLUMN includes_memory INTEGER NOT NULL DEFAULT 0;
ALTER TABLE snapshots ADD COLUMN quiesced INTEGER NOT NULL DEFAULT 0;
ALTER TABLE snapshots ADD COLUMN power_state TEXT;
ALTER TABLE snapshots ADD COLUMN datastore TEXT;
ALTER TABLE snapshots ADD COLUMN expires_at TEXT;
ALTER TABLE snapshots ADD COLUMN compression_state TEXT NOT NULL DEFAULT 'compressed';
ALTER TABLE snapshots ADD COLUMN compression_error TEXT;
ALTER TABLE vms ADD COLUMN forked_from TEXT;
CREATE TABLE tags (
    snapshot_id TEXT NOT NULL REFERENCES snapshots(id),
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (snapshot_id, key)
);
CREATE INDEX tags_kv ON tags(key, value);
CREATE INDEX snapshots_vm ON snapshots(vm_id, created_at);
CREATE INDEX snapshots_created ON snapshots(created_at);
CREATE INDEX snapshots_expires ON snapshots(expires_at) WHERE expires_at IS NOT NULL;
",
    // Tenants (every VM has one; VMs made before tenants belong to 'default') and the
    // API's bearer tokens (only a hash of each is kept).
    r"
ALTER TABLE vms ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
CREATE INDEX vms_tenant ON vms(tenant);
CREATE INDEX snapshots_name ON snapshots(name);
CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    hash        TEXT NOT NULL UNIQUE,
    tenant      TEXT NOT NULL,
    read_only   INTEGER NOT NULL,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
);
",
    // Admin tokens may also name files under the server-wide payload roots.
    r"
ALTER TABLE tokens ADD COLUMN admin INTEGER NOT NULL DEFAULT 0;
",
    // The stores whose catalog this is (a host joining a store in an object store
    // must find it here, or the store's catalog is another one).
    r"
CREATE TABLE stores (
    url         TEXT PRIMARY KEY,
    created_at  TEXT NOT NULL
);
",
    // Instances: VMs registered with their hypervisor, files and snapshot hooks.
    r"
CREATE TABLE instances (
    vm_id         TEXT PRIMARY KEY REFERENCES vms(id),
    hypervisor    TEXT NOT NULL,
    pre_snapshot  TEXT,
    post_snapshot TEXT,
    created_at    TEXT NOT NULL
);
CREATE TABLE instance_files (
    vm_id     TEXT NOT NULL REFERENCES vms(id),
    position  INTEGER NOT NULL,
    role      TEXT NOT NULL,
    name      TEXT NOT NULL,
    path      TEXT NOT NULL,
    PRIMARY KEY (vm_id, name)
);
",
    // Restore hooks of instances; snapshot schedules and the snapshots they made.
    r"
ALTER TABLE instances ADD COLUMN pre_restore TEXT;
ALTER TABLE instances ADD COLUMN post_restore TEXT;
CREATE TABLE schedules (
    vm_id             TEXT PRIMARY KEY REFERENCES vms(id),
    every             TEXT NOT NULL,
    max_count         INTEGER,
    max_age           TEXT,
    name_prefix       TEXT,
    metadata          TEXT NOT NULL,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    next_run_at       TEXT NOT NULL,
    last_run_at       TEXT,
    last_snapshot_id  TEXT,
    last_error        TEXT
);
CREATE TABLE scheduled_snapshots (
    snapshot_id  TEXT PRIMARY KEY REFERENCES snapshots(id),
    vm_id        TEXT NOT NULL REFERENCES vms(id),
    made_at      TEXT NOT NULL
);
CREATE INDEX scheduled_snapshots_vm ON scheduled_snapshots(vm_id);
",
];

/// Bring the database up to the current schema: nothing to do when it is current;
/// otherwise every missing migration, in one transaction under the write lock (so of
/// two connections opening an old catalog at once, one migrates and the other sees it
/// done).
pub(crate) fn migrate(db: &mut Db) -> Result<()> {
    if check(version(db)?)? == MIGRATIONS.len() {
        return Ok(());
    }
    db.write(|db| {
        if db.dialect() == Dialect::Postgres {
            db.batch(
                "creating the schema version table",
                "CREATE TABLE IF NOT EXISTS stasis_schema (version BIGINT NOT NULL)",
            )?;
        }
        let have = check(version(db)?)?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(have) {
            db.batch(
                &format!("migration {}", i + 1),
                &in_dialect(db.dialect(), sql),
            )?;
            set_version(db, i as i64 + 1)?;
        }
        Ok(())
    })
}

/// `version`, if this stasis knows it.
fn check(version: i64) -> Result<usize> {
    let v = usize::try_from(version).map_err(|_| Error::corrupt("negative schema version"))?;
    if v > MIGRATIONS.len() {
        return Err(Error::corrupt(format!(
            "the catalog has schema version {v}; this stasis knows up to {} (upgrade stasis)",
            MIGRATIONS.len()
        )));
    }
    Ok(v)
}

fn int(rows: &[Row], column: &str) -> Result<i64> {
    match rows.first().and_then(|r| r.get(column)) {
        Some(Value::Int(i)) => Ok(*i),
        other => Err(Error::corrupt(format!(
            "the schema version reads as {other:?}, not an integer"
        ))),
    }
}

/// The number of migrations applied.
fn version(db: &mut Db) -> Result<i64> {
    const WHAT: &str = "reading the schema version";
    match db.dialect() {
        Dialect::Sqlite => int(&db.rows(WHAT, "PRAGMA user_version", &[])?, "user_version"),
        Dialect::Postgres => {
            let present = db.rows(
                WHAT,
                "SELECT to_regclass('stasis_schema') IS NOT NULL AS present",
                &[],
            )?;
            if int(&present, "present")? == 0 {
                return Ok(0);
            }
            let rows = db.rows(WHAT, "SELECT version FROM stasis_schema", &[])?;
            if rows.is_empty() {
                return Ok(0);
            }
            int(&rows, "version")
        }
    }
}

fn set_version(db: &mut Db, v: i64) -> Result<()> {
    const WHAT: &str = "setting the schema version";
    match db.dialect() {
        Dialect::Sqlite => db.batch(WHAT, &format!("PRAGMA user_version = {v}")),
        Dialect::Postgres => {
            db.exec(WHAT, "DELETE FROM stasis_schema", &[])?;
            db.exec(
                WHAT,
                "INSERT INTO stasis_schema (version) VALUES (?1)",
                args![v],
            )?;
            Ok(())
        }
    }
}

/// A migration as `dialect` takes it. The migrations are written for SQLite; for
/// PostgreSQL an `INTEGER` is a `BIGINT` (SQLite's integers are 64-bit), an `INTEGER
/// PRIMARY KEY` is an identity column (SQLite's alias of the row id), and every other
/// table gets the `rowid` column SQLite gives it implicitly (it orders rows of equal
/// timestamps by insertion).
pub(crate) fn in_dialect(dialect: Dialect, sql: &str) -> String {
    if dialect == Dialect::Sqlite {
        return sql.to_owned();
    }
    let mut out = String::with_capacity(sql.len() + 128);
    for statement in sql.split(';') {
        let st = statement.trim();
        if st.is_empty() {
            continue;
        }
        let mut st = st.replace(
            "INTEGER PRIMARY KEY",
            "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
        );
        if st.starts_with("CREATE TABLE")
            && !st.contains("AS IDENTITY PRIMARY KEY")
            && let Some(open) = st.find('(')
        {
            st.insert_str(open + 1, "\n    rowid BIGINT GENERATED ALWAYS AS IDENTITY,");
        }
        out.push_str(&whole_word(&st, "INTEGER", "BIGINT"));
        out.push_str(";\n");
    }
    out
}

/// `text` with every `word` that stands alone (not inside a longer name) as `with`.
fn whole_word(text: &str, word: &str, with: &str) -> String {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(word) {
        let before = rest[..at].chars().next_back();
        let after = rest[at + word.len()..].chars().next();
        out.push_str(&rest[..at]);
        if before.is_some_and(ident) || after.is_some_and(ident) {
            out.push_str(word);
        } else {
            out.push_str(with);
        }
        rest = &rest[at + word.len()..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    /// Migrate a SQLite connection; the connection back.
    fn migrated(conn: Connection) -> (Result<()>, Db) {
        let mut db = Db::sqlite(conn);
        (migrate(&mut db), db)
    }

    #[test]
    fn a_version_1_database_migrates_and_keeps_its_rows() {
        let conn = Connection::open_in_memory().expect("open");
        conn.execute_batch(MIGRATIONS[0]).expect("v1");
        conn.pragma_update(None, "user_version", 1)
            .expect("version");
        conn.execute(
            "INSERT INTO vms (id, name, created_at) VALUES ('v', 'vm', 'now')",
            [],
        )
        .expect("vm");
        let (r, mut db) = migrated(conn);
        r.expect("migrate");
        let conn = db.as_sqlite().expect("sqlite");
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("version");
        assert_eq!(v as usize, MIGRATIONS.len());
        let n: i64 = conn
            .query_row(
                "SELECT count(*) FROM vms WHERE forked_from IS NULL",
                [],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(n, 1);
        // Migrating again is a no-op.
        migrate(&mut db).expect("again");
    }

    #[test]
    fn a_version_2_database_gets_tenants_and_tokens() {
        let conn = Connection::open_in_memory().expect("open");
        conn.execute_batch(MIGRATIONS[0]).expect("v1");
        conn.execute_batch(MIGRATIONS[1]).expect("v2");
        conn.pragma_update(None, "user_version", 2)
            .expect("version");
        conn.execute(
            "INSERT INTO vms (id, name, created_at) VALUES ('v', 'vm', 'now')",
            [],
        )
        .expect("vm");
        let (r, mut db) = migrated(conn);
        r.expect("migrate");
        let conn = db.as_sqlite().expect("sqlite");
        let tenant: String = conn
            .query_row("SELECT tenant FROM vms WHERE id = 'v'", [], |r| r.get(0))
            .expect("tenant");
        assert_eq!(
            tenant, "default",
            "VMs made before tenants are the default tenant's"
        );
        let tokens: i64 = conn
            .query_row("SELECT count(*) FROM tokens", [], |r| r.get(0))
            .expect("tokens table");
        assert_eq!(tokens, 0);
    }

    #[test]
    fn a_newer_database_is_refused() {
        let conn = Connection::open_in_memory().expect("open");
        conn.pragma_update(None, "user_version", 99)
            .expect("version");
        assert!(migrated(conn).0.is_err());
    }

    #[test]
    fn postgres_gets_bigints_identities_and_row_ids() {
        let pg = in_dialect(Dialect::Postgres, MIGRATIONS[0]);
        assert!(!pg.contains("INTEGER"), "{pg}");
        assert!(pg.contains("id          BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"));
        assert!(
            pg.contains("CREATE TABLE snapshots (\n    rowid BIGINT GENERATED ALWAYS AS IDENTITY,")
        );
        assert!(!pg.contains("CREATE TABLE events (\n    rowid"), "{pg}");
        assert_eq!(
            pg.matches("rowid").count(),
            3,
            "vms, snapshots, payloads: {pg}"
        );
        let later = in_dialect(Dialect::Postgres, MIGRATIONS[1]);
        assert!(
            later.contains("includes_memory BIGINT NOT NULL DEFAULT 0;"),
            "{later}"
        );
        assert_eq!(in_dialect(Dialect::Sqlite, MIGRATIONS[0]), MIGRATIONS[0]);
        assert_eq!(
            whole_word("INTEGERS INTEGER _INTEGER", "INTEGER", "X"),
            "INTEGERS X _INTEGER"
        );
    }
}
