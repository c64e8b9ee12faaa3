//! The schema and its migrations (`PRAGMA user_version` counts the applied ones).

use rusqlite::Connection;

use crate::error::{Error, Result};

/// Migration `i` takes the schema from version `i` to `i + 1`. Never edit a released
/// one; append a new one.
const MIGRATIONS: &[&str] = &[r"
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
"];

/// Bring the database up to the current schema.
pub fn migrate(conn: &mut Connection) -> Result<()> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| Error::db("reading the schema version", e))?;
    let version =
        usize::try_from(version).map_err(|_| Error::corrupt("negative schema version"))?;
    if version > MIGRATIONS.len() {
        return Err(Error::corrupt(format!(
            "the catalog has schema version {version}; this stasis knows up to {} (upgrade stasis)",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn
            .transaction()
            .map_err(|e| Error::db("starting a migration", e))?;
        tx.execute_batch(sql)
            .map_err(|e| Error::db(format!("migration {}", i + 1), e))?;
        tx.pragma_update(None, "user_version", i as i64 + 1)
            .map_err(|e| Error::db("setting the schema version", e))?;
        tx.commit()
            .map_err(|e| Error::db("committing a migration", e))?;
    }
    Ok(())
}
