//! # stasis-catalog
//!
//! The record of every VM's snapshot tree, on SQLite (WAL mode, so one process can list
//! while another creates; a busy timeout serialises writers). The schema is versioned
//! with `PRAGMA user_version` and migrated forward on open.
//!
//! A snapshot exists once its row is committed: the store's blocks and manifests are
//! made durable before (see `stasis_store::store`), so the catalog never names a
//! manifest that is not on storage. Every change appends to the snapshot's timeline in
//! the same transaction.
//!
//! Tree rules: at most one current snapshot per VM; deleting a snapshot with children
//! re-parents them to its parent (their manifests are complete trees of their own, so
//! no data moves: only their `added_bytes` is recomputed) while it shows
//! `consolidating`; deleted rows stay listable with `all` until gc removes them. No
//! operation recurses: chains of any depth work.

mod decode;
mod error;
pub mod fields;
mod filter;
mod ids;
pub mod layout;
mod record;
mod schema;
mod tokens;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use stasis_store::{BlockRef, Manifest, Role};

pub use error::{Error, ErrorKind, Result};
pub use fields::{CompressionState, Hypervisor, Kind, PowerState, now, parse_expiry, parse_tag};
pub use filter::{ListFilter, SortField};
pub use ids::{new_id, validate_file_name, validate_name};
pub use record::{
    CompressionInfo, Event, NewPayload, NewSnapshot, Payload, Snapshot, Status, Token, TokenMode,
    Vm,
};

/// The tenant of VMs made without one (by the CLI, and every VM from before tenants).
pub const DEFAULT_TENANT: &str = "default";

/// The catalog of a repository.
#[derive(Debug)]
pub struct Catalog {
    conn: Connection,
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

fn event(tx: &Connection, id: &str, action: &str, actor: &str, detail: &str) -> Result<()> {
    tx.execute(
        "INSERT INTO events (snapshot_id, at, action, actor, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id, now(), action, actor, detail],
    )
    .map_err(|e| Error::db("recording an event", e))?;
    Ok(())
}

fn db(what: &'static str) -> impl FnOnce(rusqlite::Error) -> Error {
    move |e| Error::db(what, e)
}

impl Catalog {
    /// Call `hook` before every row this connection writes and before every commit
    /// (fault injection: the crash tests kill the process from it, so that a catalog
    /// write is interrupted at each of its steps). `None` removes it.
    pub fn on_write(&mut self, hook: Option<fn()>) -> Result<()> {
        match hook {
            Some(f) => {
                self.conn
                    .update_hook(Some(
                        move |_: rusqlite::hooks::Action, _: &str, _: &str, _: i64| f(),
                    ))
                    .map_err(db("installing the write hook"))?;
                self.conn
                    .commit_hook(Some(move || {
                        f();
                        false
                    }))
                    .map_err(db("installing the commit hook"))?;
            }
            None => {
                self.conn
                    .update_hook(None::<fn(rusqlite::hooks::Action, &str, &str, i64)>)
                    .map_err(db("removing the write hook"))?;
                self.conn
                    .commit_hook(None::<fn() -> bool>)
                    .map_err(db("removing the commit hook"))?;
            }
        }
        Ok(())
    }

    /// Open (creating if needed) the catalog database at `path` and migrate it.
    pub fn open(path: &Path) -> Result<Catalog> {
        let conn = Connection::open(path)
            .map_err(|e| Error::db(format!("opening {}", path.display()), e))?;
        Self::setup(conn, true)
    }

    /// An in-memory catalog (tests).
    pub fn open_in_memory() -> Result<Catalog> {
        let conn = Connection::open_in_memory().map_err(db("opening in memory"))?;
        Self::setup(conn, false)
    }

    fn setup(conn: Connection, file: bool) -> Result<Catalog> {
        conn.busy_timeout(Duration::from_secs(60))
            .map_err(db("busy timeout"))?;
        if file {
            conn.pragma_update(None, "journal_mode", "WAL")
                .map_err(db("enabling WAL"))?;
            conn.pragma_update(None, "synchronous", "FULL")
                .map_err(db("synchronous"))?;
        }
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(db("foreign keys"))?;
        let mut cat = Catalog { conn };
        schema::migrate(&mut cat.conn)?;
        Ok(cat)
    }

    /// Stop fsyncing commits (`synchronous = OFF`), for bulk loads and benchmarks only:
    /// a crash may then lose the latest commits (never corrupt the database).
    pub fn relax_durability(&self) -> Result<()> {
        self.conn
            .pragma_update(None, "synchronous", "OFF")
            .map_err(db("synchronous"))
    }

    /// A VM by name or id.
    pub fn vm(&self, name: &str) -> Result<Option<Vm>> {
        let sql = format!(
            "SELECT {} FROM vms WHERE name = ?1 OR id = ?1",
            decode::select(decode::VM_COLUMNS)
        );
        let mut st = self.conn.prepare_cached(&sql).map_err(db("reading a VM"))?;
        let rows = st.query([name]).map_err(db("reading a VM"))?;
        decode::first(rows, "reading a VM", decode::vm)
    }

    /// Every VM, by name.
    pub fn vms(&self) -> Result<Vec<Vm>> {
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT {} FROM vms ORDER BY name",
                decode::select(decode::VM_COLUMNS)
            ))
            .map_err(db("listing VMs"))?;
        let rows = st.query([]).map_err(db("listing VMs"))?;
        decode::all(rows, "listing VMs", decode::vm)
    }

    fn snapshots_where(&self, clause: &str, p: &[&dyn rusqlite::ToSql]) -> Result<Vec<Snapshot>> {
        let sql = format!(
            "SELECT {} FROM snapshots s JOIN vms v ON v.id = s.vm_id {clause}",
            decode::select(decode::SNAPSHOT_COLUMNS)
        );
        let mut st = self
            .conn
            .prepare_cached(&sql)
            .map_err(db("reading snapshots"))?;
        let rows = st.query(p).map_err(db("reading snapshots"))?;
        let mut out = decode::all(rows, "reading snapshots", decode::snapshot)?;
        drop(st);
        if out.is_empty() {
            return Ok(out);
        }
        // Payloads and tags of every selected snapshot in one query each (not two per
        // snapshot: a 10,000-snapshot list was 20,000 queries), by the selected ids.
        let ids = serde_json::to_string(&out.iter().map(|s| s.id.as_str()).collect::<Vec<_>>())
            .map_err(|e| Error::corrupt(format!("listing snapshot ids: {e}")))?;
        let selected = "SELECT value FROM json_each(?1)";
        let mut payloads: HashMap<String, Vec<Payload>> = HashMap::new();
        for (id, p) in self.payloads_where(&format!("snapshot_id IN ({selected})"), [&ids])? {
            payloads.entry(id).or_default().push(p);
        }
        let mut tags: HashMap<String, BTreeMap<String, String>> = HashMap::new();
        {
            let mut st = self
                .conn
                .prepare_cached(&format!(
                    "SELECT {} FROM tags WHERE snapshot_id IN ({selected})",
                    decode::select(decode::TAG_COLUMNS)
                ))
                .map_err(db("reading tags"))?;
            let rows = st.query([&ids]).map_err(db("reading tags"))?;
            for (id, k, v) in decode::all(rows, "reading tags", decode::tag)? {
                tags.entry(id).or_default().insert(k, v);
            }
        }
        for s in &mut out {
            s.payloads = payloads.remove(&s.id).unwrap_or_default();
            s.tags = tags.remove(&s.id).unwrap_or_default();
        }
        Ok(out)
    }

    /// A snapshot by id.
    pub fn get(&self, id: &str) -> Result<Option<Snapshot>> {
        Ok(self.snapshots_where("WHERE s.id = ?1", &[&id])?.pop())
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
                    &[&vm, &name],
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
        let mut args: Vec<String> = Vec::new();
        let arg = |v: String, args: &mut Vec<String>| {
            args.push(v);
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
        let refs: Vec<&dyn rusqlite::ToSql> =
            args.iter().map(|a| a as &dyn rusqlite::ToSql).collect();
        self.snapshots_where(&sql, &refs)
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
        let mut st = self
            .conn
            .prepare_cached("SELECT id FROM snapshots WHERE parent_id = ?1 AND status != 'deleted' ORDER BY created_at, rowid")
            .map_err(db("reading children"))?;
        let rows = st.query([id]).map_err(db("reading children"))?;
        decode::all(rows, "reading children", decode::snapshot_id)
    }

    /// Tags of a snapshot.
    pub fn tags(&self, id: &str) -> Result<BTreeMap<String, String>> {
        let mut st = self
            .conn
            .prepare_cached(&format!(
                "SELECT {} FROM tags WHERE snapshot_id = ?1",
                decode::select(decode::TAG_COLUMNS)
            ))
            .map_err(db("reading tags"))?;
        let rows = st.query([id]).map_err(db("reading tags"))?;
        Ok(decode::all(rows, "reading tags", decode::tag)?
            .into_iter()
            .map(|(_, k, v)| (k, v))
            .collect())
    }

    /// The payloads of a snapshot.
    pub fn payloads(&self, snapshot_id: &str) -> Result<Vec<Payload>> {
        Ok(self
            .payloads_where("snapshot_id = ?1", [snapshot_id])?
            .into_iter()
            .map(|(_, p)| p)
            .collect())
    }

    /// Payload rows matching `filter` (an SQL condition on the payloads table), in
    /// order, with their snapshot ids; each row is checked against its stored check.
    fn payloads_where(
        &self,
        filter: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<(String, Payload)>> {
        let mut st = self
            .conn
            .prepare_cached(&format!(
                "SELECT {} FROM payloads WHERE {filter} ORDER BY snapshot_id, position",
                decode::select(decode::PAYLOAD_COLUMNS)
            ))
            .map_err(db("reading payloads"))?;
        let rows = st.query(params).map_err(db("reading payloads"))?;
        decode::all(rows, "reading payloads", decode::payload)
    }

    /// SQLite's own structural check of the database file (`PRAGMA quick_check`):
    /// the problems it names, empty when it finds none.
    pub fn check_integrity(&self) -> Result<Vec<String>> {
        let mut st = self
            .conn
            .prepare("PRAGMA quick_check")
            .map_err(db("checking the database"))?;
        let rows = st
            .query_map([], |r| r.get::<_, String>("quick_check"))
            .map_err(db("checking the database"))?;
        let mut out = Vec::new();
        for r in rows {
            let line = r.map_err(db("checking the database"))?;
            if line != "ok" {
                out.push(line);
            }
        }
        Ok(out)
    }

    /// The timeline of a snapshot, oldest first.
    pub fn events(&self, id: &str) -> Result<Vec<Event>> {
        let mut st = self
            .conn
            .prepare_cached(&format!(
                "SELECT {} FROM events WHERE snapshot_id = ?1 ORDER BY id",
                decode::select(decode::EVENT_COLUMNS)
            ))
            .map_err(db("reading events"))?;
        let rows = st.query([id]).map_err(db("reading events"))?;
        decode::all(rows, "reading events", decode::event)
    }

    /// Append to a snapshot's timeline (e.g. `verified`).
    pub fn record_event(&self, id: &str, action: &str, actor: &str, detail: &str) -> Result<()> {
        event(&self.conn, id, action, actor, detail)
    }

    /// Check what [`Catalog::create`] would refuse, without changing anything.
    pub fn check_new(&self, new: &NewSnapshot) -> Result<()> {
        validate_name(&new.name)?;
        validate_name(&new.vm).map_err(|e| e.context("VM name"))?;
        fields::validate_tags(&new.tags)?;
        let vm = self.vm(&new.vm)?;
        if let Some(vm) = &vm {
            check_tenant(vm, new.tenant.as_deref())?;
            check_name_free(&self.conn, &vm.id, new)?;
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
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("starting a transaction"))?;
        let vm_id = ensure_vm(&tx, &new.vm, &now, None, new.tenant.as_deref())?;
        // What another process may have changed since `check_new`, checked again under
        // the write lock: the name and the parent.
        check_name_free(&tx, &vm_id, new)?;
        if let Some(p) = &new.parent_id {
            let status: Option<String> = tx
                .query_row("SELECT status FROM snapshots WHERE id = ?1", [p], |r| {
                    r.get("status")
                })
                .optional()
                .map_err(db("checking the parent"))?;
            if status.as_deref().is_none_or(|s| s == "deleted") {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("parent snapshot {p} was deleted meanwhile"),
                ));
            }
        }
        let compression =
            serde_json::to_string(&new.compression).map_err(|e| Error::corrupt(e.to_string()))?;
        let cstate = if new.compression.enabled {
            CompressionState::Compressed
        } else {
            CompressionState::None
        };
        let size: u64 = new.payloads.iter().map(|p| p.manifest.size).sum();
        let includes_memory = new.payloads.iter().any(|p| p.role == Role::Memory);
        tx.execute(
            "INSERT INTO snapshots (id, vm_id, name, parent_id, created_at, status, created_by, description, \
             compression, size_bytes, uncompressed_size_bytes, compressed_size_bytes, added_bytes, kind, \
             source_hypervisor, includes_memory, quiesced, power_state, datastore, expires_at, compression_state) \
             VALUES (?1, ?2, ?3, ?4, ?5, 'active', ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)",
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
                new.added_bytes as i64,
                new.kind.as_str(),
                new.source_hypervisor.map(|h| h.as_str()),
                includes_memory,
                new.quiesced,
                new.power_state.map(|p| p.as_str()),
                new.datastore,
                new.expires_at,
                cstate.as_str(),
            ],
        )
        .map_err(db("inserting the snapshot"))?;
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
                    format!("{root}#{check}")
                ],
            )
            .map_err(db("inserting a payload"))?;
        }
        for (k, v) in &new.tags {
            tx.execute(
                "INSERT INTO tags (snapshot_id, key, value) VALUES (?1, ?2, ?3)",
                params![id, k, v],
            )
            .map_err(db("inserting a tag"))?;
        }
        event(
            &tx,
            &id,
            "created",
            &new.created_by,
            &format!("{} payload(s), {size} bytes", new.payloads.len()),
        )?;
        if new.make_current {
            tx.execute(
                "UPDATE vms SET current_id = ?1 WHERE id = ?2",
                params![id, vm_id],
            )
            .map_err(db("setting the current snapshot"))?;
            event(
                &tx,
                &id,
                "became_current",
                &new.created_by,
                "created as current",
            )?;
        }
        tx.commit().map_err(db("committing the snapshot"))?;
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
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("starting a transaction"))?;
        tx.execute(
            "UPDATE vms SET current_id = ?1 WHERE id = ?2",
            params![s.id, s.source_instance_id],
        )
        .map_err(db("setting the current snapshot"))?;
        event(&tx, &s.id, "became_current", actor, "reverted to")?;
        tx.commit().map_err(db("committing the revert"))?;
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
        let mut tags = s.tags.clone();
        for k in remove {
            tags.remove(k);
        }
        for (k, v) in set {
            fields::validate_tag(k, v)?;
            tags.insert(k.clone(), v.clone());
        }
        fields::validate_tags(&tags)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("starting a transaction"))?;
        tx.execute("DELETE FROM tags WHERE snapshot_id = ?1", [&s.id])
            .map_err(db("updating tags"))?;
        for (k, v) in &tags {
            tx.execute(
                "INSERT INTO tags (snapshot_id, key, value) VALUES (?1, ?2, ?3)",
                params![s.id, k, v],
            )
            .map_err(db("updating tags"))?;
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
        event(&tx, &s.id, "tagged", actor, &detail)?;
        tx.commit().map_err(db("committing tags"))?;
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
        let children = self.children(&s.id)?;
        if recursive {
            // Every live descendant, found without recursion.
            let mut order = vec![s.id.clone()];
            let mut i = 0;
            while i < order.len() {
                let kids = self.children(&order[i])?;
                order.extend(kids);
                i += 1;
            }
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db("starting a transaction"))?;
            for id in order.iter().rev() {
                mark_deleted(
                    &tx,
                    id,
                    actor,
                    if *id == s.id {
                        "deleted with its subtree"
                    } else {
                        "deleted with an ancestor"
                    },
                )?;
            }
            tx.commit().map_err(db("committing the delete"))?;
            return Ok(order);
        }
        if !children.is_empty() {
            self.conn
                .execute(
                    "UPDATE snapshots SET status = 'consolidating' WHERE id = ?1",
                    [&s.id],
                )
                .map_err(db("marking consolidating"))?;
            event(
                &self.conn,
                &s.id,
                "consolidating",
                actor,
                &format!("re-parenting {} child(ren)", children.len()),
            )?;
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
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db("starting a transaction"))?;
            for (c, sz) in &updates {
                tx.execute(
                    "UPDATE snapshots SET parent_id = ?1, added_bytes = ?2, uncompressed_size_bytes = ?3, compressed_size_bytes = ?4 WHERE id = ?5",
                    params![s.parent_id, sz.added_bytes as i64, sz.uncompressed_size_bytes as i64, sz.compressed_size_bytes as i64, c],
                )
                .map_err(db("re-parenting a child"))?;
                let to = s.parent_id.as_deref().unwrap_or("no parent");
                event(
                    &tx,
                    c,
                    "reparented",
                    actor,
                    &format!("parent {} deleted; now {to}", s.id),
                )?;
            }
            mark_deleted(&tx, &s.id, actor, "consolidated into its children")?;
            tx.commit().map_err(db("committing the delete"))?;
            return Ok(vec![s.id]);
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("starting a transaction"))?;
        mark_deleted(&tx, &s.id, actor, "deleted")?;
        tx.commit().map_err(db("committing the delete"))?;
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
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("starting a transaction"))?;
        let n = tx
            .execute(
                "UPDATE snapshots SET status = 'error' WHERE id = ?1 AND status = 'active'",
                [id],
            )
            .map_err(db("marking error"))?;
        if n > 0 {
            event(&tx, id, "error", actor, why)?;
        }
        tx.commit().map_err(db("committing"))
    }

    /// Record a clean full check; a snapshot in error becomes active again.
    pub fn mark_verified(&mut self, id: &str, actor: &str, detail: &str) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("starting a transaction"))?;
        tx.execute(
            "UPDATE snapshots SET status = 'active' WHERE id = ?1 AND status = 'error'",
            [id],
        )
        .map_err(db("marking verified"))?;
        event(&tx, id, "verified", actor, detail)?;
        tx.commit().map_err(db("committing"))
    }

    /// Record `new_vm` as forked from snapshot `spec` (created if new); it may then use
    /// that snapshot as a parent. Appends `forked` to the snapshot's timeline.
    pub fn fork_vm(&mut self, spec: &str, new_vm: &str, actor: &str) -> Result<Vm> {
        validate_name(new_vm).map_err(|e| e.context("VM name"))?;
        let s = self.live(spec)?;
        if self.vm(new_vm)?.is_some() {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("VM {new_vm} already exists"),
            ));
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("starting a transaction"))?;
        // A fork belongs to the tenant of the VM it was forked from.
        ensure_vm(&tx, new_vm, &now(), Some(&s.id), Some(&s.tenant))?;
        event(
            &tx,
            &s.id,
            "forked",
            actor,
            &format!("VM {new_vm} forked from it"),
        )?;
        tx.commit().map_err(db("committing the fork"))?;
        self.vm(new_vm)?
            .ok_or_else(|| Error::corrupt("the new VM vanished"))
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

/// Refuse a snapshot name its VM already uses (deleted snapshots keep theirs until gc).
fn check_name_free(conn: &Connection, vm_id: &str, new: &NewSnapshot) -> Result<()> {
    let taken: bool = conn
        .query_row(
            "SELECT EXISTS(SELECT 1 FROM snapshots WHERE vm_id = ?1 AND name = ?2) AS taken",
            params![vm_id, new.name],
            |r| r.get("taken"),
        )
        .map_err(db("checking the name"))?;
    if taken {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!("VM {} already has a snapshot named {:?}", new.vm, new.name),
        ));
    }
    Ok(())
}

fn mark_deleted(tx: &Transaction<'_>, id: &str, actor: &str, detail: &str) -> Result<()> {
    tx.execute(
        "UPDATE snapshots SET status = 'deleted' WHERE id = ?1",
        [id],
    )
    .map_err(db("marking deleted"))?;
    // The current snapshot moves to the parent (or none).
    tx.execute(
        "UPDATE vms SET current_id = (SELECT parent_id FROM snapshots WHERE id = ?1) WHERE current_id = ?1",
        [id],
    )
    .map_err(db("moving the current snapshot"))?;
    // A parent that is itself deleted (recursive deletes) cannot be current.
    tx.execute(
        "UPDATE vms SET current_id = NULL WHERE current_id IN (SELECT id FROM snapshots WHERE status = 'deleted')",
        [],
    )
    .map_err(db("moving the current snapshot"))?;
    event(tx, id, "deleted", actor, detail)
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
    tx: &Transaction<'_>,
    name: &str,
    now: &str,
    forked_from: Option<&str>,
    tenant: Option<&str>,
) -> Result<String> {
    let mut st = tx
        .prepare_cached(&format!(
            "SELECT {} FROM vms WHERE name = ?1",
            decode::select(decode::VM_COLUMNS)
        ))
        .map_err(db("reading a VM"))?;
    let rows = st.query([name]).map_err(db("reading a VM"))?;
    let existing = decode::first(rows, "reading a VM", decode::vm)?;
    if let Some(vm) = existing {
        check_tenant(&vm, tenant)?;
        return Ok(vm.id);
    }
    let tenant = tenant.unwrap_or(DEFAULT_TENANT);
    validate_name(tenant).map_err(|e| e.context("tenant"))?;
    let id = new_id();
    tx.execute(
        "INSERT INTO vms (id, name, created_at, forked_from, tenant) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id, name, now, forked_from, tenant],
    )
    .map_err(db("creating the VM"))?;
    Ok(id)
}

#[cfg(test)]
mod tests;
