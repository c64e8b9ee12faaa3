//! The schema and its migrations (`PRAGMA user_version` counts the applied ones).

use rusqlite::Connection;

use crate::error::{Error, Result};

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
];

/// Bring the database up to the current schema.
pub fn migrate(conn: &mut Connection) -> Result<()> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get("user_version"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_1_database_migrates_and_keeps_its_rows() {
        let mut conn = Connection::open_in_memory().expect("open");
        conn.execute_batch(MIGRATIONS[0]).expect("v1");
        conn.pragma_update(None, "user_version", 1)
            .expect("version");
        conn.execute(
            "INSERT INTO vms (id, name, created_at) VALUES ('v', 'vm', 'now')",
            [],
        )
        .expect("vm");
        migrate(&mut conn).expect("migrate");
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
        migrate(&mut conn).expect("again");
    }

    #[test]
    fn a_version_2_database_gets_tenants_and_tokens() {
        let mut conn = Connection::open_in_memory().expect("open");
        conn.execute_batch(MIGRATIONS[0]).expect("v1");
        conn.execute_batch(MIGRATIONS[1]).expect("v2");
        conn.pragma_update(None, "user_version", 2)
            .expect("version");
        conn.execute(
            "INSERT INTO vms (id, name, created_at) VALUES ('v', 'vm', 'now')",
            [],
        )
        .expect("vm");
        migrate(&mut conn).expect("migrate");
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
        let mut conn = Connection::open_in_memory().expect("open");
        conn.pragma_update(None, "user_version", 99)
            .expect("version");
        assert!(migrate(&mut conn).is_err());
    }
}
