//! # stasis-catalog
//!
//! The record of every VM's snapshot tree, in SQLite (the embedded default: one file,
//! WAL mode, so one process can list while another creates) or in PostgreSQL (a fleet's
//! catalog, shared by every host). Both speak through one query layer (`sql`): every
//! statement and migration is written once. The schema is versioned (SQLite's
//! `PRAGMA user_version`; on PostgreSQL the table `stasis_schema`) and migrated forward
//! on open, under the write lock, so two hosts opening at once migrate once.
//!
//! A snapshot exists once its row is committed: the store's blocks and manifests are
//! made durable before (see `stasis_store::store`), so the catalog never names a
//! manifest that is not on storage. Every change appends to the snapshot's timeline in
//! the same transaction.
//!
//! **Writers** are serialised: each write is one transaction holding the database's
//! write lock from its start (SQLite's `BEGIN IMMEDIATE` and busy timeout; on PostgreSQL
//! a transaction-scoped advisory lock, which a writer that dies releases with its
//! connection), and everything a write depends on (the name is free, the parent and the
//! snapshot are still live, a deleted snapshot's children are the ones it re-parents)
//! is checked again under that lock. Of two hosts that create, delete or revert in one
//! VM at once, the loser gets an error of kind [`ErrorKind::Conflict`] and changes
//! nothing.
//!
//! Tree rules: at most one current snapshot per VM; deleting a snapshot with children
//! re-parents them to its parent (their manifests are complete trees of their own, so
//! no data moves: only their `added_bytes` is recomputed) while it shows
//! `consolidating` (no snapshot may take it as a parent then); deleted rows stay
//! listable with `all` until gc removes them. No operation recurses: chains of any
//! depth work.

mod decode;
mod error;
pub mod fields;
mod filter;
mod ids;
mod instances;
pub mod layout;
mod record;
mod schedules;
mod schema;
mod sql;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod tokens;

use std::cell::{RefCell, RefMut};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use stasis_store::{BlockRef, Manifest, Role};

use crate::sql::{Db, Dialect, Row, Value, args};

pub use error::{Error, ErrorKind, Result};
pub use fields::{
    CompressionState, Hypervisor, Kind, PowerState, now, parse_expiry, parse_go_duration, parse_tag,
};
pub use filter::{ListFilter, SortField};
pub use ids::{new_id, validate_file_name, validate_name};
pub use instances::{Instance, InstanceFile, NewInstance};
pub use record::{
    CompressionInfo, Event, NewPayload, NewSnapshot, Payload, Snapshot, Status, Token, TokenMode,
    Vm,
};
pub use schedules::{
    MAX_NAME_PREFIX, MIN_INTERVAL, NewSchedule, Schedule, ScheduledSnapshot, after as time_after,
};
pub use sql::redact as redact_url;

/// The tenant of VMs made without one (by the CLI, and every VM from before tenants).
pub const DEFAULT_TENANT: &str = "default";

/// The catalog of a repository: one connection to its database.
#[derive(Debug)]
pub struct Catalog {
    db: RefCell<Db>,
}

/// New sizes of a re-parented child, computed by the caller from the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddedSizes {
    /// See [`Snapshot::added_bytes`].
    pub added_bytes: u64,
    /// See [`Snapshot::uncompressed_size_bytes`].
    pub uncompressed_size_bytes: u64,
    /// See [`Snapshot::compressed_size_bytes`].
    pub compressed_size_bytes: u64,
}

fn root_to_text(m: &Manifest) -> String {
    match m.root {
        BlockRef::Hole => "hole".into(),
        BlockRef::Zero => "zero".into(),
        BlockRef::Data(id) => id.to_hex(),
    }
}

/// The check stored with a payload row (after `#` in its `root` column): the first 64
/// bits of a blake3 over every field of the row. SQLite has no page checksums; this
/// makes a damaged payload row an error instead of a wrong size or root.
#[allow(clippy::too_many_arguments)]
fn payload_check(
    snapshot_id: &str,
    name: &str,
    role: &str,
    size: i64,
    allocated: i64,
    data_bytes: i64,
    block_size: i64,
    fanout: i64,
    root: &str,
) -> String {
    let text = format!(
        "{snapshot_id}\0{name}\0{role}\0{size}\0{allocated}\0{data_bytes}\0{block_size}\0{fanout}\0{root}"
    );
    let mut hex = stasis_store::Id::of(text.as_bytes()).to_hex();
    hex.truncate(16);
    hex
}

fn event(db: &mut Db, id: &str, action: &str, actor: &str, detail: &str) -> Result<()> {
    db.exec(
        "recording an event",
        "INSERT INTO events (snapshot_id, at, action, actor, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        args![id, now(), action, actor, detail],
    )?;
    Ok(())
}

/// A conflict with a write another connection made meanwhile.
fn conflict(what: impl Into<String>) -> Error {
    Error::new(ErrorKind::Conflict, what)
}

impl Catalog {
    /// Call `hook` before every row this connection writes and before every commit
    /// (fault injection: the crash tests kill the process from it, so that a catalog
    /// write is interrupted at each of its steps). On PostgreSQL a step is a write
    /// statement rather than a row. `None` removes it.
    pub fn on_write(&mut self, hook: Option<fn()>) -> Result<()> {
        let db = self.db.get_mut();
        let Some(conn) = db.as_sqlite() else {
            db.set_hook(hook);
            return Ok(());
        };
        let e = |what: &'static str| move |e| Error::db(what, e);
        match hook {
            Some(f) => {
                conn.update_hook(Some(
                    move |_: rusqlite::hooks::Action, _: &str, _: &str, _: i64| f(),
                ))
                .map_err(e("installing the write hook"))?;
                conn.commit_hook(Some(move || {
                    f();
                    false
                }))
                .map_err(e("installing the commit hook"))?;
            }
            None => {
                conn.update_hook(None::<fn(rusqlite::hooks::Action, &str, &str, i64)>)
                    .map_err(e("removing the write hook"))?;
                conn.commit_hook(None::<fn() -> bool>)
                    .map_err(e("removing the commit hook"))?;
            }
        }
        Ok(())
    }

    /// Open (creating if needed) the SQLite catalog at `path` and migrate it.
    pub fn open(path: &Path) -> Result<Catalog> {
        let conn = rusqlite::Connection::open(path)
            .map_err(|e| Error::db(format!("opening {}", path.display()), e))?;
        Self::setup_sqlite(conn, true)
    }

    /// An in-memory SQLite catalog (tests).
    pub fn open_in_memory() -> Result<Catalog> {
        let conn = rusqlite::Connection::open_in_memory()
            .map_err(|e| Error::db("opening in memory", e))?;
        Self::setup_sqlite(conn, false)
    }

    /// Connect to the PostgreSQL catalog at `url`
    /// (`postgres://USER[:PASSWORD]@HOST[:PORT]/DB`, `PGPASSWORD` when the URL has no
    /// password; the database must exist) and migrate it. A connection the server
    /// closes (a restart) is opened again by the next call that finds it closed.
    pub fn open_postgres(url: &str) -> Result<Catalog> {
        let mut db = Db::postgres(url)?;
        schema::migrate(&mut db)?;
        Ok(Catalog {
            db: RefCell::new(db),
        })
    }

    fn setup_sqlite(conn: rusqlite::Connection, file: bool) -> Result<Catalog> {
        let e = |what: &'static str| move |e| Error::db(what, e);
        conn.busy_timeout(sql::LOCK_WAIT)
            .map_err(e("busy timeout"))?;
        if file {
            conn.pragma_update(None, "journal_mode", "WAL")
                .map_err(e("enabling WAL"))?;
            conn.pragma_update(None, "synchronous", "FULL")
                .map_err(e("synchronous"))?;
        }
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(e("foreign keys"))?;
        let mut db = Db::sqlite(conn);
        schema::migrate(&mut db)?;
        Ok(Catalog {
            db: RefCell::new(db),
        })
    }

    /// The connection. Calls never nest (none holds it while calling another), so
    /// this fails only on a bug of this crate.
    fn db(&self) -> Result<RefMut<'_, Db>> {
        self.db.try_borrow_mut().map_err(|_| {
            Error::new(
                ErrorKind::Database,
                "the catalog connection is already in use by this thread",
            )
        })
    }

    /// The rows of a read, decoded.
    fn read<T>(
        &self,
        what: &str,
        sql: &str,
        args: &[Value],
        decode: impl Fn(&Row) -> Result<T>,
    ) -> Result<Vec<T>> {
        let rows = self.db()?.rows(what, sql, args)?;
        decode::all(&rows, decode)
    }

    /// The first row of a read, decoded.
    fn read_one<T>(
        &self,
        what: &str,
        sql: &str,
        args: &[Value],
        decode: impl Fn(&Row) -> Result<T>,
    ) -> Result<Option<T>> {
        let rows = self.db()?.rows(what, sql, args)?;
        decode::first(&rows, decode)
    }

    /// Run `f` as one transaction under the write lock (see the crate doc).
    fn write<T>(&self, f: impl FnOnce(&mut Db) -> Result<T>) -> Result<T> {
        self.db()?.write(f)
    }

    /// Stop waiting for commits to be durable (SQLite `synchronous = OFF`, PostgreSQL
    /// `synchronous_commit = off` for this connection), for bulk loads and benchmarks
    /// only: a crash may then lose the latest commits (never corrupt the database).
    pub fn relax_durability(&self) -> Result<()> {
        let mut db = self.db()?;
        match db.dialect() {
            Dialect::Sqlite => db.batch("synchronous", "PRAGMA synchronous = OFF"),
            Dialect::Postgres => db.batch("synchronous_commit", "SET synchronous_commit = off"),
        }
    }

    /// Refresh the statistics the database plans queries with (PostgreSQL `ANALYZE`,
    /// SQLite `PRAGMA optimize`): after loading many rows at once, before autovacuum
    /// would get to it.
    pub fn optimize(&self) -> Result<()> {
        let mut db = self.db()?;
        match db.dialect() {
            Dialect::Sqlite => db.batch("optimizing", "PRAGMA optimize"),
            Dialect::Postgres => db.batch(
                "analyzing",
                "ANALYZE vms, snapshots, payloads, tags, events, tokens",
            ),
        }
    }

    /// A VM by name or id.
    pub fn vm(&self, name: &str) -> Result<Option<Vm>> {
        let sql = format!(
            "SELECT {} FROM vms WHERE name = ?1 OR id = ?1",
            decode::select(decode::VM_COLUMNS)
        );
        self.read_one("reading a VM", &sql, args![name], decode::vm)
    }

    /// Every VM, by name.
    pub fn vms(&self) -> Result<Vec<Vm>> {
        let sql = format!(
            "SELECT {} FROM vms ORDER BY name",
            decode::select(decode::VM_COLUMNS)
        );
        self.read("listing VMs", &sql, &[], decode::vm)
    }

    fn snapshots_where(&self, clause: &str, args: &[Value]) -> Result<Vec<Snapshot>> {
        let sql = format!(
            "SELECT {} FROM snapshots s JOIN vms v ON v.id = s.vm_id {clause}",
            decode::select(decode::SNAPSHOT_COLUMNS)
        );
        let mut out = self.read("reading snapshots", &sql, args, decode::snapshot)?;
        if out.is_empty() {
            return Ok(out);
        }
        // Payloads and tags of every selected snapshot in one query each (not two per
        // snapshot: a 10,000-snapshot list was 20,000 queries), by the selected ids.
        let ids = serde_json::to_string(&out.iter().map(|s| s.id.as_str()).collect::<Vec<_>>())
            .map_err(|e| Error::corrupt(format!("listing snapshot ids: {e}")))?;
        let selected = self.db()?.dialect().in_json_array("snapshot_id", "?1");
        let mut payloads: HashMap<String, Vec<Payload>> = HashMap::new();
        for (id, p) in self.payloads_where(&selected, args![&ids])? {
            payloads.entry(id).or_default().push(p);
        }
        let mut tags: HashMap<String, BTreeMap<String, String>> = HashMap::new();
        let sql = format!(
            "SELECT {} FROM tags WHERE {selected}",
            decode::select(decode::TAG_COLUMNS)
        );
        for (id, k, v) in self.read("reading tags", &sql, args![&ids], decode::tag)? {
            tags.entry(id).or_default().insert(k, v);
        }
        for s in &mut out {
            s.payloads = payloads.remove(&s.id).unwrap_or_default();
            s.tags = tags.remove(&s.id).unwrap_or_default();
        }
        Ok(out)
    }

    /// A snapshot by id.
    pub fn get(&self, id: &str) -> Result<Option<Snapshot>> {
        Ok(self.snapshots_where("WHERE s.id = ?1", args![id])?.pop())
    }

    /// Resolve `spec`: a snapshot id, `VM/NAME`, or `VM` (its current snapshot).
    /// Deleted snapshots resolve only by id.
    pub fn resolve(&self, spec: &str) -> Result<Snapshot> {
        if let Some(s) = self.get(spec)? {
            return Ok(s);
        }
        if let Some((vm, name)) = spec.split_once('/') {
            return self
                .snapshots_where(
                    "WHERE (v.name = ?1 OR v.id = ?1) AND s.name = ?2 AND s.status != 'deleted'",
                    args![vm, name],
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

    /// Snapshots matching `f`.
    pub fn list_filtered(&self, f: &ListFilter) -> Result<Vec<Snapshot>> {
        let mut clauses: Vec<String> = Vec::new();
        let mut args: Vec<Value> = Vec::new();
        let arg = |v: String, args: &mut Vec<Value>| {
            args.push(Value::Text(v));
            format!("?{}", args.len())
        };
        if let Some(vm) = &f.vm {
            let a = arg(vm.clone(), &mut args);
            clauses.push(format!("(v.name = {a} OR v.id = {a})"));
        }
        if let Some(t) = &f.tenant {
            clauses.push(format!("v.tenant = {}", arg(t.clone(), &mut args)));
        }
        if let Some(n) = &f.name {
            clauses.push(format!("s.name = {}", arg(n.clone(), &mut args)));
        }
        for (k, v) in &f.tags {
            let (ka, va) = (arg(k.clone(), &mut args), arg(v.clone(), &mut args));
            clauses.push(format!("EXISTS (SELECT 1 FROM tags t WHERE t.snapshot_id = s.id AND t.key = {ka} AND t.value = {va})"));
        }
        match f.status {
            Some(st) => clauses.push(format!("s.status = {}", arg(st.to_string(), &mut args))),
            None if !f.all => clauses.push("s.status != 'deleted'".into()),
            None => {}
        }
        if let Some(k) = f.kind {
            clauses.push(format!("s.kind = {}", arg(k.to_string(), &mut args)));
        }
        if let Some(h) = f.hypervisor {
            clauses.push(format!(
                "s.source_hypervisor = {}",
                arg(h.to_string(), &mut args)
            ));
        }
        if let Some(p) = &f.parent_id {
            clauses.push(format!("s.parent_id = {}", arg(p.clone(), &mut args)));
        }
        if f.expired {
            clauses.push(format!(
                "s.expires_at IS NOT NULL AND s.expires_at <= {}",
                arg(now(), &mut args)
            ));
        }
        if let Some(after) = &f.after {
            if f.sort != SortField::CreatedAt {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    "a list continues after a snapshot only in the order of creation",
                ));
            }
            if self.get(after)?.is_none() {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    "the list's cursor names no snapshot (it was purged): start again",
                ));
            }
            let a = arg(after.clone(), &mut args);
            clauses.push(format!(
                "(s.created_at > (SELECT created_at FROM snapshots WHERE id = {a}) \
                 OR (s.created_at = (SELECT created_at FROM snapshots WHERE id = {a}) \
                 AND s.rowid > (SELECT rowid FROM snapshots WHERE id = {a})))"
            ));
        }
        let mut sql = String::new();
        if !clauses.is_empty() {
            sql.push_str("WHERE ");
            sql.push_str(&clauses.join(" AND "));
        }
        sql.push_str(" ORDER BY ");
        sql.push_str(f.sort.order_by());
        if let Some(n) = f.limit {
            sql.push_str(&format!(" LIMIT {n}"));
        }
        self.snapshots_where(&sql, &args)
    }

    /// Live (not deleted) snapshots, oldest first, of one VM or all.
    pub fn list(&self, vm: Option<&str>) -> Result<Vec<Snapshot>> {
        self.list_filtered(&ListFilter {
            vm: vm.map(String::from),
            ..ListFilter::default()
        })
    }

    /// Ids of the live children of a snapshot.
    pub fn children(&self, id: &str) -> Result<Vec<String>> {
        live_children(&mut *self.db()?, id)
    }

    /// Tags of a snapshot.
    pub fn tags(&self, id: &str) -> Result<BTreeMap<String, String>> {
        tags_of(&mut *self.db()?, id)
    }

    /// The payloads of a snapshot.
    pub fn payloads(&self, snapshot_id: &str) -> Result<Vec<Payload>> {
        Ok(self
            .payloads_where("snapshot_id = ?1", args![snapshot_id])?
            .into_iter()
            .map(|(_, p)| p)
            .collect())
    }

    /// Payload rows matching `filter` (an SQL condition on the payloads table), in
    /// order, with their snapshot ids; each row is checked against its stored check.
    fn payloads_where(&self, filter: &str, args: &[Value]) -> Result<Vec<(String, Payload)>> {
        let sql = format!(
            "SELECT {} FROM payloads WHERE {filter} ORDER BY snapshot_id, position",
            decode::select(decode::PAYLOAD_COLUMNS)
        );
        self.read("reading payloads", &sql, args, decode::payload)
    }

    /// The problems found in the catalog, empty when there are none: on SQLite its own
    /// structural check of the file (`PRAGMA quick_check`), and on both the tree's own
    /// rules (a current snapshot that is live and of its VM, parents that exist).
    pub fn check_integrity(&self) -> Result<Vec<String>> {
        let mut db = self.db()?;
        let mut out = Vec::new();
        if db.dialect() == Dialect::Sqlite {
            for r in db.rows("checking the database", "PRAGMA quick_check", &[])? {
                match r.get("quick_check") {
                    Some(Value::Text(line)) if line == "ok" => {}
                    Some(Value::Text(line)) => out.push(line.clone()),
                    other => out.push(format!("quick_check answered {other:?}")),
                }
            }
        }
        let rules = [
            (
                "SELECT v.name AS problem FROM vms v LEFT JOIN snapshots s ON s.id = v.current_id \
                 WHERE v.current_id IS NOT NULL AND (s.id IS NULL OR s.status = 'deleted' OR s.vm_id != v.id)",
                "VM {}: its current snapshot is missing, deleted or another VM's",
            ),
            (
                "SELECT s.id AS problem FROM snapshots s LEFT JOIN snapshots p ON p.id = s.parent_id \
                 WHERE s.parent_id IS NOT NULL AND s.status != 'deleted' AND (p.id IS NULL OR p.status = 'deleted')",
                "snapshot {}: its parent is missing or deleted",
            ),
        ];
        for (sql, says) in rules {
            for r in db.rows("checking the tree", sql, &[])? {
                let who = match r.get("problem") {
                    Some(Value::Text(t)) => t.clone(),
                    other => format!("{other:?}"),
                };
                out.push(says.replace("{}", &who));
            }
        }
        Ok(out)
    }

    /// The timeline of a snapshot, oldest first.
    pub fn events(&self, id: &str) -> Result<Vec<Event>> {
        let sql = format!(
            "SELECT {} FROM events WHERE snapshot_id = ?1 ORDER BY id",
            decode::select(decode::EVENT_COLUMNS)
        );
        self.read("reading events", &sql, args![id], decode::event)
    }

    /// Append to a snapshot's timeline (e.g. `verified`).
    pub fn record_event(&self, id: &str, action: &str, actor: &str, detail: &str) -> Result<()> {
        event(&mut *self.db()?, id, action, actor, detail)
    }

    /// Check what [`Catalog::create`] would refuse, without changing anything.
    pub fn check_new(&self, new: &NewSnapshot) -> Result<()> {
        validate_name(&new.name)?;
        validate_name(&new.vm).map_err(|e| e.context("VM name"))?;
        fields::validate_tags(&new.tags)?;
        let vm = self.vm(&new.vm)?;
        if let Some(vm) = &vm {
            check_tenant(vm, new.tenant.as_deref())?;
            check_name_free(&mut *self.db()?, &vm.id, new)?;
        }
        if let Some(p) = &new.parent_id {
            let parent = self.get(p)?.ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("parent snapshot {p} does not exist"),
                )
            })?;
            if parent.status == Status::Deleted {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!("parent snapshot {p} is deleted"),
                ));
            }
            let forked_from_it =
                vm.as_ref().and_then(|v| v.forked_from.as_deref()) == Some(p.as_str());
            if parent.source_instance_name != new.vm && !forked_from_it {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "parent {p} belongs to VM {}, not {} (only a VM forked from it may branch from it)",
                        parent.source_instance_name, new.vm
                    ),
                ));
            }
        }
        check_payload_names(new.payloads.iter().map(|p| p.name.as_str()))
    }

    /// Record a new snapshot (and its VM if new) in one transaction; it becomes the VM's
    /// current snapshot unless `new.make_current` is false.
    pub fn create(&mut self, new: &NewSnapshot) -> Result<Snapshot> {
        self.check_new(new)?;
        let id = new_id();
        let now = now();
        let compression =
            serde_json::to_string(&new.compression).map_err(|e| Error::corrupt(e.to_string()))?;
        let cstate = if new.compression.enabled {
            CompressionState::Compressed
        } else {
            CompressionState::None
        };
        let size: u64 = new.payloads.iter().map(|p| p.manifest.size).sum();
        let includes_memory = new.payloads.iter().any(|p| p.role == Role::Memory);
        self.write(|db| {
            let vm_id = ensure_vm(db, &new.vm, &now, None, new.tenant.as_deref())?;
            // What another connection may have changed since `check_new`, checked again
            // under the write lock: the name and the parent.
            check_name_free(db, &vm_id, new)?;
            if let Some(p) = &new.parent_id {
                match status_of(db, p)? {
                    None | Some(Status::Deleted) => {
                        return Err(Error::new(
                            ErrorKind::NotFound,
                            format!("parent snapshot {p} was deleted meanwhile"),
                        ));
                    }
                    Some(Status::Consolidating) => {
                        return Err(conflict(format!(
                            "parent snapshot {p} is being deleted; create from its parent or a child"
                        )));
                    }
                    Some(_) => {}
                }
            }
            db.exec(
                "inserting the snapshot",
                "INSERT INTO snapshots (id, vm_id, name, parent_id, created_at, status, created_by, description, \
                 compression, size_bytes, uncompressed_size_bytes, compressed_size_bytes, added_bytes, kind, \
                 source_hypervisor, includes_memory, quiesced, power_state, datastore, expires_at, compression_state) \
                 VALUES (?1, ?2, ?3, ?4, ?5, 'active', ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)",
                args![
                    &id,
                    &vm_id,
                    &new.name,
                    &new.parent_id,
                    &now,
                    &new.created_by,
                    &new.description,
                    &compression,
                    size as i64,
                    new.uncompressed_size_bytes as i64,
                    new.compressed_size_bytes as i64,
                    new.added_bytes as i64,
                    new.kind.as_str(),
                    new.source_hypervisor.map(|h| h.as_str()),
                    includes_memory,
                    new.quiesced,
                    new.power_state.map(|p| p.as_str()),
                    &new.datastore,
                    &new.expires_at,
                    cstate.as_str(),
                ],
            )?;
            for (pos, p) in new.payloads.iter().enumerate() {
                let root = root_to_text(&p.manifest);
                let check = payload_check(
                    &id,
                    &p.name,
                    p.role.name(),
                    p.manifest.size as i64,
                    p.allocated as i64,
                    p.data_bytes as i64,
                    i64::from(p.manifest.block_size),
                    i64::from(p.manifest.fanout),
                    &root,
                );
                db.exec(
                    "inserting a payload",
                    "INSERT INTO payloads (snapshot_id, position, name, role, size, allocated, data_bytes, block_size, fanout, root) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    args![
                        &id,
                        pos as i64,
                        &p.name,
                        p.role.name(),
                        p.manifest.size as i64,
                        p.allocated as i64,
                        p.data_bytes as i64,
                        i64::from(p.manifest.block_size),
                        i64::from(p.manifest.fanout),
                        format!("{root}#{check}")
                    ],
                )?;
            }
            for (k, v) in &new.tags {
                db.exec(
                    "inserting a tag",
                    "INSERT INTO tags (snapshot_id, key, value) VALUES (?1, ?2, ?3)",
                    args![&id, k, v],
                )?;
            }
            event(
                db,
                &id,
                "created",
                &new.created_by,
                &format!("{} payload(s), {size} bytes", new.payloads.len()),
            )?;
            if new.make_current {
                db.exec(
                    "setting the current snapshot",
                    "UPDATE vms SET current_id = ?1 WHERE id = ?2",
                    args![&id, &vm_id],
                )?;
                event(db, &id, "became_current", &new.created_by, "created as current")?;
            }
            Ok(())
        })?;
        self.get(&id)?
            .ok_or_else(|| Error::corrupt("the new snapshot vanished"))
    }

    fn live(&self, spec: &str) -> Result<Snapshot> {
        let s = self.resolve(spec)?;
        match s.status {
            Status::Deleted => Err(Error::new(
                ErrorKind::InvalidInput,
                format!("snapshot {} is deleted", s.id),
            )),
            _ => Ok(s),
        }
    }

    /// Make `spec` its VM's current snapshot: the next create branches from it.
    pub fn revert(&mut self, spec: &str, actor: &str) -> Result<Snapshot> {
        let s = self.live(spec)?;
        if s.status != Status::Active {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("snapshot {} is {}, not active", s.id, s.status),
            ));
        }
        self.write(|db| {
            let n = db.exec(
                "setting the current snapshot",
                "UPDATE vms SET current_id = ?1 WHERE id = ?2 \
                 AND EXISTS (SELECT 1 FROM snapshots WHERE id = ?1 AND status = 'active')",
                args![&s.id, &s.source_instance_id],
            )?;
            if n == 0 {
                return Err(conflict(format!(
                    "snapshot {} was deleted or changed meanwhile",
                    s.id
                )));
            }
            event(db, &s.id, "became_current", actor, "reverted to")
        })?;
        self.get(&s.id)?
            .ok_or_else(|| Error::corrupt("the snapshot vanished"))
    }

    /// Add or replace tags and remove keys, keeping at most [`fields::MAX_TAGS`].
    pub fn tag(
        &mut self,
        spec: &str,
        set: &[(String, String)],
        remove: &[String],
        actor: &str,
    ) -> Result<Snapshot> {
        let s = self.live(spec)?;
        for (k, v) in set {
            fields::validate_tag(k, v)?;
        }
        let detail = format!(
            "set {}; removed {}",
            if set.is_empty() {
                "-".to_string()
            } else {
                set.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            },
            if remove.is_empty() {
                "-".to_string()
            } else {
                remove.join(",")
            }
        );
        self.write(|db| {
            // From the tags as they are under the lock, so another host's tags stay.
            if matches!(status_of(db, &s.id)?, None | Some(Status::Deleted)) {
                return Err(conflict(format!("snapshot {} was deleted meanwhile", s.id)));
            }
            let mut tags = tags_of(db, &s.id)?;
            for k in remove {
                tags.remove(k);
            }
            for (k, v) in set {
                tags.insert(k.clone(), v.clone());
            }
            fields::validate_tags(&tags)?;
            db.exec(
                "updating tags",
                "DELETE FROM tags WHERE snapshot_id = ?1",
                args![&s.id],
            )?;
            for (k, v) in &tags {
                db.exec(
                    "updating tags",
                    "INSERT INTO tags (snapshot_id, key, value) VALUES (?1, ?2, ?3)",
                    args![&s.id, k, v],
                )?;
            }
            event(db, &s.id, "tagged", actor, &detail)
        })?;
        self.get(&s.id)?
            .ok_or_else(|| Error::corrupt("the snapshot vanished"))
    }

    /// Delete a snapshot. A leaf is marked deleted. One with children is marked
    /// `consolidating`, its children are re-parented to its parent (`recompute` gives
    /// each child's sizes against its new parent), then it is marked deleted. With
    /// `recursive`, the whole subtree is deleted. If it was its VM's current snapshot,
    /// its parent becomes current. Returns the ids deleted.
    pub fn delete(
        &mut self,
        spec: &str,
        recursive: bool,
        actor: &str,
        recompute: &mut dyn FnMut(&Snapshot, Option<&Snapshot>) -> Result<AddedSizes>,
    ) -> Result<Vec<String>> {
        let s = self.live(spec)?;
        if recursive {
            return self.write(|db| {
                // Every live descendant as they are under the lock, found without
                // recursion.
                let mut order = vec![s.id.clone()];
                let mut i = 0;
                while i < order.len() {
                    let kids = live_children(db, &order[i])?;
                    order.extend(kids);
                    i += 1;
                }
                for id in order.iter().rev() {
                    mark_deleted(
                        db,
                        id,
                        actor,
                        if *id == s.id {
                            "deleted with its subtree"
                        } else {
                            "deleted with an ancestor"
                        },
                    )?;
                }
                Ok(order)
            });
        }
        // A leaf, if it still is one under the lock.
        let children = self.write(|db| {
            let children = live_children(db, &s.id)?;
            if children.is_empty() {
                mark_deleted(db, &s.id, actor, "deleted")?;
                return Ok(None);
            }
            // No child can be added from now on (create refuses a consolidating
            // parent), so these are all the children to re-parent. A delete that
            // stopped here is taken up again by the next one.
            let n = db.exec(
                "marking consolidating",
                "UPDATE snapshots SET status = 'consolidating' WHERE id = ?1 AND status != 'deleted'",
                args![&s.id],
            )?;
            if n == 0 {
                return Err(conflict(format!("snapshot {} was deleted meanwhile", s.id)));
            }
            event(
                db,
                &s.id,
                "consolidating",
                actor,
                &format!("re-parenting {} child(ren)", children.len()),
            )?;
            Ok(Some(children))
        })?;
        let Some(children) = children else {
            return Ok(vec![s.id]);
        };
        let parent = match &s.parent_id {
            Some(p) => self.get(p)?,
            None => None,
        };
        let mut updates = Vec::new();
        for c in &children {
            let child = self
                .get(c)?
                .ok_or_else(|| Error::corrupt(format!("child {c} vanished")))?;
            updates.push((c.clone(), recompute(&child, parent.as_ref())?));
        }
        self.write(|db| {
            if live_children(db, &s.id)? != children {
                return Err(conflict(format!(
                    "the children of snapshot {} changed meanwhile; delete it again",
                    s.id
                )));
            }
            for (c, sz) in &updates {
                db.exec(
                    "re-parenting a child",
                    "UPDATE snapshots SET parent_id = ?1, added_bytes = ?2, uncompressed_size_bytes = ?3, compressed_size_bytes = ?4 WHERE id = ?5",
                    args![&s.parent_id, sz.added_bytes as i64, sz.uncompressed_size_bytes as i64, sz.compressed_size_bytes as i64, c],
                )?;
                let to = s.parent_id.as_deref().unwrap_or("no parent");
                event(
                    db,
                    c,
                    "reparented",
                    actor,
                    &format!("parent {} deleted; now {to}", s.id),
                )?;
            }
            mark_deleted(db, &s.id, actor, "consolidated into its children")
        })?;
        Ok(vec![s.id])
    }

    /// Live snapshots that are expired and have no live children.
    pub fn expired_leaves(&self) -> Result<Vec<Snapshot>> {
        let f = ListFilter {
            expired: true,
            ..ListFilter::default()
        };
        let mut out = Vec::new();
        for s in self.list_filtered(&f)? {
            if self.children(&s.id)?.is_empty() {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// Mark a live snapshot failed, with why (it stays listable). No change (and no
    /// event) if it is already in error.
    pub fn mark_error(&mut self, id: &str, actor: &str, why: &str) -> Result<()> {
        self.write(|db| {
            let n = db.exec(
                "marking error",
                "UPDATE snapshots SET status = 'error' WHERE id = ?1 AND status = 'active'",
                args![id],
            )?;
            if n > 0 {
                event(db, id, "error", actor, why)?;
            }
            Ok(())
        })
    }

    /// Record a clean full check; a snapshot in error becomes active again.
    pub fn mark_verified(&mut self, id: &str, actor: &str, detail: &str) -> Result<()> {
        self.write(|db| {
            db.exec(
                "marking verified",
                "UPDATE snapshots SET status = 'active' WHERE id = ?1 AND status = 'error'",
                args![id],
            )?;
            event(db, id, "verified", actor, detail)
        })
    }

    /// Record `new_vm` as forked from snapshot `spec` (created if new); it may then use
    /// that snapshot as a parent. Appends `forked` to the snapshot's timeline.
    pub fn fork_vm(&mut self, spec: &str, new_vm: &str, actor: &str) -> Result<Vm> {
        validate_name(new_vm).map_err(|e| e.context("VM name"))?;
        let s = self.live(spec)?;
        let exists = || conflict(format!("VM {new_vm} already exists"));
        if self.vm(new_vm)?.is_some() {
            return Err(exists());
        }
        self.write(|db| {
            if vm_named(db, new_vm)?.is_some() {
                return Err(exists());
            }
            if matches!(status_of(db, &s.id)?, None | Some(Status::Deleted)) {
                return Err(conflict(format!("snapshot {} was deleted meanwhile", s.id)));
            }
            // A fork belongs to the tenant of the VM it was forked from.
            ensure_vm(db, new_vm, &now(), Some(&s.id), Some(&s.tenant))?;
            event(
                db,
                &s.id,
                "forked",
                actor,
                &format!("VM {new_vm} forked from it"),
            )
        })?;
        self.vm(new_vm)?
            .ok_or_else(|| Error::corrupt("the new VM vanished"))
    }

    /// Record that this is the catalog of the store at `url` (when the store is made).
    pub fn claim_store(&mut self, url: &str) -> Result<()> {
        self.db()?.exec(
            "recording the store",
            "INSERT INTO stores (url, created_at) VALUES (?1, ?2) ON CONFLICT (url) DO NOTHING",
            args![url, now()],
        )?;
        Ok(())
    }

    /// Whether this is the catalog of the store at `url` ([`Catalog::claim_store`]).
    pub fn knows_store(&self, url: &str) -> Result<bool> {
        let rows = self.db()?.rows(
            "reading the stores",
            "SELECT url FROM stores WHERE url = ?1",
            args![url],
        )?;
        Ok(!rows.is_empty())
    }

    /// The SQLite connection itself (tests that damage rows behind the catalog's back).
    #[cfg(test)]
    pub(crate) fn raw_sqlite(&self) -> RefMut<'_, rusqlite::Connection> {
        RefMut::map(self.db.borrow_mut(), |db| {
            db.as_sqlite().expect("a SQLite catalog")
        })
    }
}

/// Check the file names of a snapshot's payloads: valid, and no two alike.
pub fn check_payload_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for name in names {
        ids::validate_file_name(name)?;
        if !seen.insert(name) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("two payloads are named {name:?}"),
            ));
        }
    }
    Ok(())
}

/// Ids of the live children of snapshot `id`, oldest first.
fn live_children(db: &mut Db, id: &str) -> Result<Vec<String>> {
    let rows = db.rows(
        "reading children",
        "SELECT id FROM snapshots WHERE parent_id = ?1 AND status != 'deleted' ORDER BY created_at, rowid",
        args![id],
    )?;
    decode::all(&rows, decode::snapshot_id)
}

/// The tags of snapshot `id`.
fn tags_of(db: &mut Db, id: &str) -> Result<BTreeMap<String, String>> {
    let sql = format!(
        "SELECT {} FROM tags WHERE snapshot_id = ?1",
        decode::select(decode::TAG_COLUMNS)
    );
    let rows = db.rows("reading tags", &sql, args![id])?;
    Ok(decode::all(&rows, decode::tag)?
        .into_iter()
        .map(|(_, k, v)| (k, v))
        .collect())
}

/// The status of snapshot `id`, if it exists.
fn status_of(db: &mut Db, id: &str) -> Result<Option<Status>> {
    let rows = db.rows(
        "reading a snapshot's status",
        "SELECT id, status FROM snapshots WHERE id = ?1",
        args![id],
    )?;
    decode::first(&rows, decode::status)
}

/// The VM named `name`.
fn vm_named(db: &mut Db, name: &str) -> Result<Option<Vm>> {
    let sql = format!(
        "SELECT {} FROM vms WHERE name = ?1",
        decode::select(decode::VM_COLUMNS)
    );
    let rows = db.rows("reading a VM", &sql, args![name])?;
    decode::first(&rows, decode::vm)
}

/// Refuse a snapshot name its VM already uses (deleted snapshots keep theirs until gc).
fn check_name_free(db: &mut Db, vm_id: &str, new: &NewSnapshot) -> Result<()> {
    let rows = db.rows(
        "checking the name",
        "SELECT id FROM snapshots WHERE vm_id = ?1 AND name = ?2",
        args![vm_id, &new.name],
    )?;
    if !rows.is_empty() {
        return Err(conflict(format!(
            "VM {} already has a snapshot named {:?}",
            new.vm, new.name
        )));
    }
    Ok(())
}

fn mark_deleted(db: &mut Db, id: &str, actor: &str, detail: &str) -> Result<()> {
    let n = db.exec(
        "marking deleted",
        "UPDATE snapshots SET status = 'deleted' WHERE id = ?1 AND status != 'deleted'",
        args![id],
    )?;
    if n == 0 {
        return Err(conflict(format!("snapshot {id} was deleted meanwhile")));
    }
    // The current snapshot moves to the parent (or none).
    db.exec(
        "moving the current snapshot",
        "UPDATE vms SET current_id = (SELECT parent_id FROM snapshots WHERE id = ?1) WHERE current_id = ?1",
        args![id],
    )?;
    // A parent that is itself deleted (recursive deletes) cannot be current.
    db.exec(
        "moving the current snapshot",
        "UPDATE vms SET current_id = NULL WHERE current_id IN (SELECT id FROM snapshots WHERE status = 'deleted')",
        &[],
    )?;
    event(db, id, "deleted", actor, detail)
}

/// A VM of another tenant is, to this one, a VM that does not exist.
fn check_tenant(vm: &Vm, tenant: Option<&str>) -> Result<()> {
    match tenant {
        Some(t) if t != vm.tenant => Err(Error::new(
            ErrorKind::NotFound,
            format!("no VM {:?} in tenant {t:?}", vm.name),
        )),
        _ => Ok(()),
    }
}

fn ensure_vm(
    db: &mut Db,
    name: &str,
    now: &str,
    forked_from: Option<&str>,
    tenant: Option<&str>,
) -> Result<String> {
    if let Some(vm) = vm_named(db, name)? {
        check_tenant(&vm, tenant)?;
        return Ok(vm.id);
    }
    let tenant = tenant.unwrap_or(DEFAULT_TENANT);
    validate_name(tenant).map_err(|e| e.context("tenant"))?;
    let id = new_id();
    db.exec(
        "creating the VM",
        "INSERT INTO vms (id, name, created_at, forked_from, tenant) VALUES (?1, ?2, ?3, ?4, ?5)",
        args![&id, name, now, forked_from, tenant],
    )?;
    Ok(id)
}

#[cfg(test)]
mod tests;
