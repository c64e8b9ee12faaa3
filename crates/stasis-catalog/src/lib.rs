//! # stasis-catalog
//!
//! The record of every VM's snapshots, on SQLite (WAL mode, so one process can list
//! while another creates). The schema is versioned with `PRAGMA user_version` and
//! migrated forward on open.
//!
//! A snapshot exists once its row is committed: the store's blocks and manifests are
//! made durable before (see `stasis_store::store`), so the catalog never names a
//! manifest that is not on storage.

mod error;
mod ids;
mod record;
mod schema;

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use stasis_store::config::Role;
use stasis_store::manifest::Manifest;

pub use error::{Error, ErrorKind, Result};
pub use ids::{new_id, validate_name};
pub use record::{CompressionInfo, NewPayload, NewSnapshot, Payload, Snapshot, Status, Vm};

/// The catalog of a repository.
#[derive(Debug)]
pub struct Catalog {
    conn: Connection,
}

const SNAPSHOT_COLUMNS: &str = "s.id, s.name, s.vm_id, v.name, s.parent_id, s.created_at, s.status, \
     (v.current_id IS s.id), s.created_by, s.description, s.compression, s.size_bytes, \
     s.uncompressed_size_bytes, s.compressed_size_bytes, s.added_bytes";

fn snapshot_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Snapshot> {
    let compression: String = r.get(10)?;
    let status: String = r.get(6)?;
    Ok(Snapshot {
        id: r.get(0)?,
        name: r.get(1)?,
        source_instance_id: r.get(2)?,
        source_instance_name: r.get(3)?,
        parent_id: r.get(4)?,
        created_at: r.get(5)?,
        status: status.parse().unwrap_or(Status::Error),
        is_current: r.get(7)?,
        created_by: r.get(8)?,
        description: r.get(9)?,
        compression: serde_json::from_str(&compression).unwrap_or_default(),
        size_bytes: r.get::<_, i64>(11)? as u64,
        uncompressed_size_bytes: r.get::<_, i64>(12)? as u64,
        compressed_size_bytes: r.get::<_, i64>(13)? as u64,
        added_bytes: r.get::<_, i64>(14)? as u64,
        payloads: Vec::new(),
    })
}

fn root_to_text(m: &Manifest) -> String {
    use stasis_store::manifest::BlockRef;
    match m.root {
        BlockRef::Hole => "hole".into(),
        BlockRef::Zero => "zero".into(),
        BlockRef::Data(id) => id.to_hex(),
    }
}

fn root_from_text(s: &str) -> Result<stasis_store::manifest::BlockRef> {
    use stasis_store::manifest::BlockRef;
    Ok(match s {
        "hole" => BlockRef::Hole,
        "zero" => BlockRef::Zero,
        hex => BlockRef::Data(
            hex.parse()
                .map_err(|_| Error::corrupt(format!("bad manifest root {hex:?}")))?,
        ),
    })
}

impl Catalog {
    /// Open (creating if needed) the catalog database at `path` and migrate it.
    pub fn open(path: &Path) -> Result<Catalog> {
        let conn = Connection::open(path)
            .map_err(|e| Error::db(format!("opening {}", path.display()), e))?;
        conn.busy_timeout(Duration::from_secs(30))
            .map_err(|e| Error::db("busy timeout", e))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| Error::db("enabling WAL", e))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| Error::db("synchronous", e))?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(|e| Error::db("foreign keys", e))?;
        let mut cat = Catalog { conn };
        schema::migrate(&mut cat.conn)?;
        Ok(cat)
    }

    /// An in-memory catalog (tests).
    pub fn open_in_memory() -> Result<Catalog> {
        let conn = Connection::open_in_memory().map_err(|e| Error::db("opening in memory", e))?;
        let mut cat = Catalog { conn };
        schema::migrate(&mut cat.conn)?;
        Ok(cat)
    }

    /// A VM by name.
    pub fn vm(&self, name: &str) -> Result<Option<Vm>> {
        self.conn
            .query_row(
                "SELECT id, name, current_id, created_at FROM vms WHERE name = ?1 OR id = ?1",
                [name],
                |r| {
                    Ok(Vm {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        current_id: r.get(2)?,
                        created_at: r.get(3)?,
                    })
                },
            )
            .optional()
            .map_err(|e| Error::db("reading a VM", e))
    }

    /// Every VM, by name.
    pub fn vms(&self) -> Result<Vec<Vm>> {
        let mut st = self
            .conn
            .prepare("SELECT id, name, current_id, created_at FROM vms ORDER BY name")
            .map_err(|e| Error::db("listing VMs", e))?;
        let rows = st
            .query_map([], |r| {
                Ok(Vm {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    current_id: r.get(2)?,
                    created_at: r.get(3)?,
                })
            })
            .map_err(|e| Error::db("listing VMs", e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| Error::db("listing VMs", e))
    }

    fn snapshot_where(&self, clause: &str, p: impl rusqlite::Params) -> Result<Vec<Snapshot>> {
        let sql = format!(
            "SELECT {SNAPSHOT_COLUMNS} FROM snapshots s JOIN vms v ON v.id = s.vm_id {clause}"
        );
        let mut st = self
            .conn
            .prepare_cached(&sql)
            .map_err(|e| Error::db("reading snapshots", e))?;
        let rows = st
            .query_map(p, snapshot_from_row)
            .map_err(|e| Error::db("reading snapshots", e))?;
        let mut out: Vec<Snapshot> = rows
            .collect::<rusqlite::Result<_>>()
            .map_err(|e| Error::db("reading snapshots", e))?;
        for s in &mut out {
            s.payloads = self.payloads(&s.id)?;
        }
        Ok(out)
    }

    /// A snapshot by id.
    pub fn get(&self, id: &str) -> Result<Option<Snapshot>> {
        Ok(self.snapshot_where("WHERE s.id = ?1", [id])?.pop())
    }

    /// Resolve `spec`: a snapshot id, `VM/NAME`, or `VM` (its current snapshot).
    pub fn resolve(&self, spec: &str) -> Result<Snapshot> {
        if let Some(s) = self.get(spec)? {
            return Ok(s);
        }
        if let Some((vm, name)) = spec.split_once('/') {
            return self
                .snapshot_where(
                    "WHERE (v.name = ?1 OR v.id = ?1) AND s.name = ?2",
                    [vm, name],
                )?
                .pop()
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::NotFound,
                        format!("no snapshot {name:?} in VM {vm:?}"),
                    )
                });
        }
        match self.vm(spec)? {
            Some(vm) => match vm.current_id {
                Some(id) => self.get(&id)?.ok_or_else(|| {
                    Error::corrupt(format!("VM {spec}'s current snapshot {id} is missing"))
                }),
                None => Err(Error::new(
                    ErrorKind::NotFound,
                    format!("VM {spec:?} has no current snapshot"),
                )),
            },
            None => Err(Error::new(
                ErrorKind::NotFound,
                format!("no snapshot or VM named {spec:?}"),
            )),
        }
    }

    /// Snapshots, oldest first, of one VM or all.
    pub fn list(&self, vm: Option<&str>) -> Result<Vec<Snapshot>> {
        match vm {
            Some(vm) => self.snapshot_where(
                "WHERE v.name = ?1 OR v.id = ?1 ORDER BY s.created_at, s.rowid",
                [vm],
            ),
            None => self.snapshot_where("ORDER BY v.name, s.created_at, s.rowid", []),
        }
    }

    /// The payloads of a snapshot.
    pub fn payloads(&self, snapshot_id: &str) -> Result<Vec<Payload>> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT name, role, size, allocated, data_bytes, block_size, fanout, root \
                 FROM payloads WHERE snapshot_id = ?1 ORDER BY position",
            )
            .map_err(|e| Error::db("reading payloads", e))?;
        let rows = st
            .query_map([snapshot_id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, i64>(6)?,
                    r.get::<_, String>(7)?,
                ))
            })
            .map_err(|e| Error::db("reading payloads", e))?;
        let mut out = Vec::new();
        for row in rows {
            let (name, role, size, allocated, data_bytes, bs, fanout, root) =
                row.map_err(|e| Error::db("reading payloads", e))?;
            let bad = || {
                Error::corrupt(format!(
                    "payload {name} of {snapshot_id} has invalid fields"
                ))
            };
            let manifest = Manifest {
                size: u64::try_from(size).map_err(|_| bad())?,
                block_size: u32::try_from(bs).map_err(|_| bad())?,
                fanout: u32::try_from(fanout).map_err(|_| bad())?,
                root: root_from_text(&root)?,
            };
            out.push(Payload {
                role: role.parse::<Role>().map_err(|_| bad())?,
                allocated: u64::try_from(allocated).map_err(|_| bad())?,
                data_bytes: u64::try_from(data_bytes).map_err(|_| bad())?,
                name,
                manifest,
            });
        }
        Ok(out)
    }

    /// Check what [`Catalog::create`] would refuse, without changing anything.
    pub fn check_new(&self, new: &NewSnapshot) -> Result<()> {
        validate_name(&new.name)?;
        validate_name(&new.vm).map_err(|e| e.context("VM name"))?;
        if let Some(vm) = self.vm(&new.vm)? {
            let dup: bool = self
                .conn
                .query_row(
                    "SELECT EXISTS(SELECT 1 FROM snapshots WHERE vm_id = ?1 AND name = ?2)",
                    params![vm.id, new.name],
                    |r| r.get(0),
                )
                .map_err(|e| Error::db("checking the name", e))?;
            if dup {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!("VM {} already has a snapshot named {:?}", new.vm, new.name),
                ));
            }
        }
        if let Some(p) = &new.parent_id {
            let parent = self.get(p)?.ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("parent snapshot {p} does not exist"),
                )
            })?;
            if parent.source_instance_name != new.vm {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "parent {p} belongs to VM {}, not {}",
                        parent.source_instance_name, new.vm
                    ),
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for p in &new.payloads {
            ids::validate_file_name(&p.name)?;
            if !names.insert(&p.name) {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!("two payloads are named {:?}", p.name),
                ));
            }
        }
        Ok(())
    }

    /// Record a new snapshot (and its VM if new) in one transaction; it becomes the VM's
    /// current snapshot unless `new.make_current` is false.
    pub fn create(&mut self, new: &NewSnapshot) -> Result<Snapshot> {
        self.check_new(new)?;
        let id = new_id();
        let now = jiff::Timestamp::now().to_string();
        let tx = self
            .conn
            .transaction()
            .map_err(|e| Error::db("starting a transaction", e))?;
        let vm_id = ensure_vm(&tx, &new.vm, &now)?;
        let compression =
            serde_json::to_string(&new.compression).map_err(|e| Error::corrupt(e.to_string()))?;
        let size: u64 = new.payloads.iter().map(|p| p.manifest.size).sum();
        tx.execute(
            "INSERT INTO snapshots (id, vm_id, name, parent_id, created_at, status, created_by, description, \
             compression, size_bytes, uncompressed_size_bytes, compressed_size_bytes, added_bytes) \
             VALUES (?1, ?2, ?3, ?4, ?5, 'active', ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                id,
                vm_id,
                new.name,
                new.parent_id,
                now,
                new.created_by,
                new.description,
                compression,
                size as i64,
                new.uncompressed_size_bytes as i64,
                new.compressed_size_bytes as i64,
                new.added_bytes as i64
            ],
        )
        .map_err(|e| Error::db("inserting the snapshot", e))?;
        for (pos, p) in new.payloads.iter().enumerate() {
            tx.execute(
                "INSERT INTO payloads (snapshot_id, position, name, role, size, allocated, data_bytes, block_size, fanout, root) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    id,
                    pos as i64,
                    p.name,
                    p.role.name(),
                    p.manifest.size as i64,
                    p.allocated as i64,
                    p.data_bytes as i64,
                    i64::from(p.manifest.block_size),
                    i64::from(p.manifest.fanout),
                    root_to_text(&p.manifest)
                ],
            )
            .map_err(|e| Error::db("inserting a payload", e))?;
        }
        if new.make_current {
            tx.execute(
                "UPDATE vms SET current_id = ?1 WHERE id = ?2",
                params![id, vm_id],
            )
            .map_err(|e| Error::db("setting the current snapshot", e))?;
        }
        tx.execute(
            "INSERT INTO events (snapshot_id, at, action, actor, detail) VALUES (?1, ?2, 'created', ?3, ?4)",
            params![id, now, new.created_by, format!("{} payload(s), {size} bytes", new.payloads.len())],
        )
        .map_err(|e| Error::db("recording the event", e))?;
        tx.commit()
            .map_err(|e| Error::db("committing the snapshot", e))?;
        self.get(&id)?
            .ok_or_else(|| Error::corrupt("the new snapshot vanished"))
    }
}

fn ensure_vm(tx: &Transaction<'_>, name: &str, now: &str) -> Result<String> {
    let existing: Option<String> = tx
        .query_row("SELECT id FROM vms WHERE name = ?1", [name], |r| r.get(0))
        .optional()
        .map_err(|e| Error::db("reading a VM", e))?;
    if let Some(id) = existing {
        return Ok(id);
    }
    let id = new_id();
    tx.execute(
        "INSERT INTO vms (id, name, created_at) VALUES (?1, ?2, ?3)",
        params![id, name, now],
    )
    .map_err(|e| Error::db("creating the VM", e))?;
    Ok(id)
}

#[cfg(test)]
mod tests;
