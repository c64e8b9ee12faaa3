//! Catalog rows into records.
//!
//! Every column is read by its name, and every value is checked as it is read: text
//! where text is stored, 0 or 1 for a flag, a size that is not negative, a known value
//! of an enumeration, a valid name, tag or timestamp, JSON that parses. A value that
//! fails is an error of kind [`ErrorKind::Corrupt`](crate::ErrorKind::Corrupt) whose
//! message names the table, the row, the column and the value; a default never stands
//! in for it.
//!
//! The column lists below are the only place the read columns are named: SELECTs are
//! built from them with [`select`], and the decoders read the same names.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use stasis_store::{BlockRef, Manifest};

use crate::error::{Error, Result};
use crate::fields::{validate_tag_key, validate_tag_value};
use crate::ids::{validate_file_name, validate_name};
use crate::record::{Event, Payload, Snapshot, Token, Vm};
use crate::sql::{Row, Value};

/// A column of a SELECT: the SQL that yields it and the name it is read by.
#[derive(Debug)]
pub(crate) struct Column {
    sql: &'static str,
    name: &'static str,
}

/// A column read under its own name.
const fn col(name: &'static str) -> Column {
    Column { sql: name, name }
}

/// A column read as `name`, yielded by `sql`.
const fn expr(sql: &'static str, name: &'static str) -> Column {
    Column { sql, name }
}

/// The select list of `columns`: `a, b AS c, ...`.
pub(crate) fn select(columns: &[Column]) -> String {
    let mut out = String::new();
    for (i, c) in columns.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(c.sql);
        if c.sql != c.name {
            out.push_str(" AS ");
            out.push_str(c.name);
        }
    }
    out
}

/// A snapshot row: `snapshots s JOIN vms v ON v.id = s.vm_id` (see [`snapshot`]).
pub(crate) const SNAPSHOT_COLUMNS: &[Column] = &[
    expr("s.id", "id"),
    expr("s.name", "name"),
    expr("s.vm_id", "vm_id"),
    expr("v.name", "vm_name"),
    expr("s.parent_id", "parent_id"),
    expr("s.created_at", "created_at"),
    expr("s.status", "status"),
    expr("(v.current_id IS NOT DISTINCT FROM s.id)", "is_current"),
    expr("s.created_by", "created_by"),
    expr("s.description", "description"),
    expr("s.compression", "compression"),
    expr("s.size_bytes", "size_bytes"),
    expr("s.uncompressed_size_bytes", "uncompressed_size_bytes"),
    expr("s.compressed_size_bytes", "compressed_size_bytes"),
    expr("s.added_bytes", "added_bytes"),
    expr("s.kind", "kind"),
    expr("s.source_hypervisor", "source_hypervisor"),
    expr("s.includes_memory", "includes_memory"),
    expr("s.quiesced", "quiesced"),
    expr("s.power_state", "power_state"),
    expr("s.datastore", "datastore"),
    expr("s.expires_at", "expires_at"),
    expr("s.compression_state", "compression_state"),
    expr("s.compression_error", "compression_error"),
    expr("v.tenant", "tenant"),
];

/// A row of `vms` (see [`vm`]).
pub(crate) const VM_COLUMNS: &[Column] = &[
    col("id"),
    col("name"),
    col("current_id"),
    col("created_at"),
    col("forked_from"),
    col("tenant"),
];

/// A row of `payloads` (see [`payload`]).
pub(crate) const PAYLOAD_COLUMNS: &[Column] = &[
    col("snapshot_id"),
    col("name"),
    col("role"),
    col("size"),
    col("allocated"),
    col("data_bytes"),
    col("block_size"),
    col("fanout"),
    col("root"),
];

/// A row of `tags` (see [`tag`]).
pub(crate) const TAG_COLUMNS: &[Column] = &[col("snapshot_id"), col("key"), col("value")];

/// A row of `events` (see [`event`]).
pub(crate) const EVENT_COLUMNS: &[Column] = &[
    col("id"),
    col("at"),
    col("action"),
    col("actor"),
    col("detail"),
];

/// A row of `tokens` (see [`token`]).
pub(crate) const TOKEN_COLUMNS: &[Column] = &[
    col("id"),
    col("tenant"),
    col("read_only"),
    col("admin"),
    col("created_at"),
    col("revoked_at"),
];

/// A row of `instances` (see [`instance`]).
pub(crate) const INSTANCE_COLUMNS: &[Column] = &[
    col("vm_id"),
    col("hypervisor"),
    col("pre_snapshot"),
    col("post_snapshot"),
    col("pre_restore"),
    col("post_restore"),
    col("created_at"),
];

/// A row of `instance_files` (see [`instance_file`]).
pub(crate) const INSTANCE_FILE_COLUMNS: &[Column] =
    &[col("vm_id"), col("role"), col("name"), col("path")];

/// A row of `schedules` (see [`schedule`]).
pub(crate) const SCHEDULE_COLUMNS: &[Column] = &[
    col("vm_id"),
    col("every"),
    col("max_count"),
    col("max_age"),
    col("name_prefix"),
    col("metadata"),
    col("created_at"),
    col("updated_at"),
    col("next_run_at"),
    col("last_run_at"),
    col("last_snapshot_id"),
    col("last_error"),
];

/// Every row of `rows`, decoded by `decode`.
pub(crate) fn all<T>(rows: &[Row], decode: impl Fn(&Row) -> Result<T>) -> Result<Vec<T>> {
    rows.iter().map(decode).collect()
}

/// The first row of `rows`, if any, decoded by `decode`.
pub(crate) fn first<T>(rows: &[Row], decode: impl Fn(&Row) -> Result<T>) -> Result<Option<T>> {
    rows.first().map(decode).transpose()
}

/// A value as an error message shows it: text quoted (and cut short), a blob by size.
fn describe(v: &Value) -> String {
    const MAX_CHARS: usize = 80;
    let text = |s: &str| match s.char_indices().nth(MAX_CHARS) {
        Some((end, _)) => format!("{:?}...", &s[..end]),
        None => format!("{s:?}"),
    };
    match v {
        Value::Null => "NULL".into(),
        Value::Int(i) => i.to_string(),
        Value::Real(f) => format!("{f:?}"),
        Value::Text(s) => text(s),
        Value::NotUtf8(t) => text(&String::from_utf8_lossy(t)),
        Value::Blob(b) => format!("a {}-byte blob", b.len()),
    }
}

/// The columns of one row of `table`, read by name. Every error names the table, the
/// row's key (its id, or the columns of its primary key joined by `/`) and the column.
pub(crate) struct Fields<'r> {
    table: &'static str,
    key: String,
    row: &'r Row,
}

impl<'r> Fields<'r> {
    /// The row of `table` whose key is in the columns `key`.
    pub(crate) fn new(table: &'static str, row: &'r Row, key: &[&str]) -> Result<Self> {
        let mut f = Fields {
            table,
            key: "?".into(),
            row,
        };
        let mut parts = Vec::with_capacity(key.len());
        for k in key {
            parts.push(match f.value(k)? {
                Value::Int(i) => i.to_string(),
                _ => f.text(k)?,
            });
        }
        f.key = parts.join("/");
        Ok(f)
    }

    /// The raw value of `column`. A column the query did not select is a bug of this
    /// crate, not damage on disk: a database error, not a corruption.
    fn value(&self, column: &str) -> Result<&'r Value> {
        self.row.get(column).ok_or_else(|| {
            Error::new(
                crate::ErrorKind::Database,
                format!(
                    "reading {}.{column}: the query did not select it",
                    self.table
                ),
            )
        })
    }

    /// `column` holds `v`, which is not what it should hold: `why`.
    fn bad(&self, column: &str, v: &Value, why: impl fmt::Display) -> Error {
        Error::corrupt(format!(
            "table {}, row {}, column {column}: {} {why}",
            self.table,
            self.key,
            describe(v)
        ))
    }

    /// Text (valid UTF-8); NULL and other types are refused.
    pub(crate) fn text(&self, column: &str) -> Result<String> {
        let v = self.value(column)?;
        match v {
            Value::Text(s) => Ok(s.clone()),
            Value::NotUtf8(_) => Err(self.bad(column, v, "is not UTF-8")),
            _ => Err(self.bad(column, v, "is not text")),
        }
    }

    /// NULL, or text.
    pub(crate) fn opt_text(&self, column: &str) -> Result<Option<String>> {
        match self.value(column)? {
            Value::Null => Ok(None),
            _ => self.text(column).map(Some),
        }
    }

    /// Text that passes `check`.
    pub(crate) fn checked(
        &self,
        column: &str,
        check: impl FnOnce(&str) -> Result<()>,
    ) -> Result<String> {
        let s = self.text(column)?;
        match check(&s) {
            Ok(()) => Ok(s),
            Err(e) => Err(self.bad(
                column,
                &Value::Text(s.clone()),
                format_args!("is invalid: {e}"),
            )),
        }
    }

    /// Text that parses as a `T` (an enumeration's value, a role).
    pub(crate) fn parsed<T>(&self, column: &str) -> Result<T>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        let s = self.text(column)?;
        s.parse().map_err(|e| {
            self.bad(
                column,
                &Value::Text(s.clone()),
                format_args!("is invalid: {e}"),
            )
        })
    }

    /// NULL, or text that parses as a `T`.
    pub(crate) fn opt_parsed<T>(&self, column: &str) -> Result<Option<T>>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.value(column)? {
            Value::Null => Ok(None),
            _ => self.parsed(column).map(Some),
        }
    }

    /// An RFC 3339 timestamp, returned as stored.
    pub(crate) fn timestamp(&self, column: &str) -> Result<String> {
        let s = self.text(column)?;
        match s.parse::<jiff::Timestamp>() {
            Ok(_) => Ok(s),
            Err(e) => Err(self.bad(
                column,
                &Value::Text(s.clone()),
                format_args!("is not an RFC 3339 timestamp ({e})"),
            )),
        }
    }

    /// NULL, or an RFC 3339 timestamp.
    pub(crate) fn opt_timestamp(&self, column: &str) -> Result<Option<String>> {
        match self.value(column)? {
            Value::Null => Ok(None),
            _ => self.timestamp(column).map(Some),
        }
    }

    /// Text holding the JSON of a `T`.
    pub(crate) fn json<T: serde::de::DeserializeOwned>(&self, column: &str) -> Result<T> {
        let s = self.text(column)?;
        serde_json::from_str(&s).map_err(|e| {
            self.bad(
                column,
                &Value::Text(s.clone()),
                format_args!("is not valid JSON for this column ({e})"),
            )
        })
    }

    /// An integer.
    pub(crate) fn int(&self, column: &str) -> Result<i64> {
        match self.value(column)? {
            Value::Int(i) => Ok(*i),
            v => Err(self.bad(column, v, "is not an integer")),
        }
    }

    /// A size or count: an integer that is not negative.
    pub(crate) fn size(&self, column: &str) -> Result<u64> {
        let i = self.int(column)?;
        u64::try_from(i).map_err(|_| self.bad(column, &Value::Int(i), "is negative"))
    }

    /// An integer from 0 to `u32::MAX`.
    pub(crate) fn u32(&self, column: &str) -> Result<u32> {
        let i = self.int(column)?;
        u32::try_from(i).map_err(|_| {
            self.bad(
                column,
                &Value::Int(i),
                format_args!("is not in 0..={}", u32::MAX),
            )
        })
    }

    /// A flag: 0 or 1, nothing else.
    pub(crate) fn flag(&self, column: &str) -> Result<bool> {
        match self.value(column)? {
            Value::Int(0) => Ok(false),
            Value::Int(1) => Ok(true),
            v => Err(self.bad(column, v, "is not 0 or 1")),
        }
    }

    /// An error about this row as a whole.
    fn row_error(&self, why: impl fmt::Display) -> Error {
        Error::corrupt(format!("table {}, row {}: {why}", self.table, self.key))
    }
}

/// A row of [`VM_COLUMNS`].
pub(crate) fn vm(row: &Row) -> Result<Vm> {
    let f = Fields::new("vms", row, &["id"])?;
    Ok(Vm {
        id: f.text("id")?,
        name: f.checked("name", validate_name)?,
        current_id: f.opt_text("current_id")?,
        created_at: f.timestamp("created_at")?,
        forked_from: f.opt_text("forked_from")?,
        tenant: f.checked("tenant", validate_name)?,
    })
}

/// A row of [`SNAPSHOT_COLUMNS`], without its payloads and tags (read separately).
pub(crate) fn snapshot(row: &Row) -> Result<Snapshot> {
    let f = Fields::new("snapshots", row, &["id"])?;
    Ok(Snapshot {
        id: f.text("id")?,
        name: f.checked("name", validate_name)?,
        kind: f.parsed("kind")?,
        source_instance_id: f.text("vm_id")?,
        source_instance_name: f.checked("vm_name", validate_name)?,
        source_hypervisor: f.opt_parsed("source_hypervisor")?,
        created_at: f.timestamp("created_at")?,
        size_bytes: f.size("size_bytes")?,
        uncompressed_size_bytes: f.size("uncompressed_size_bytes")?,
        compressed_size_bytes: f.size("compressed_size_bytes")?,
        compression: f.json("compression")?,
        compression_state: f.parsed("compression_state")?,
        compression_error: f.opt_text("compression_error")?,
        tags: BTreeMap::new(),
        description: f.opt_text("description")?,
        parent_id: f.opt_text("parent_id")?,
        status: f.parsed("status")?,
        is_current: f.flag("is_current")?,
        created_by: f.text("created_by")?,
        includes_memory: f.flag("includes_memory")?,
        quiesced: f.flag("quiesced")?,
        power_state: f.opt_parsed("power_state")?,
        datastore: f.opt_text("datastore")?,
        expires_at: f.opt_timestamp("expires_at")?,
        added_bytes: f.size("added_bytes")?,
        payloads: Vec::new(),
        tenant: f.checked("tenant", validate_name)?,
    })
}

/// The `id` of a snapshot row (any query selecting it).
pub(crate) fn snapshot_id(row: &Row) -> Result<String> {
    Fields::new("snapshots", row, &["id"])?.text("id")
}

/// The `status` of a snapshot row selecting `id` and `status`.
pub(crate) fn status(row: &Row) -> Result<crate::Status> {
    Fields::new("snapshots", row, &["id"])?.parsed("status")
}

/// The manifest root `text`, the part before any `#check` of the `stored` value of
/// the `root` column.
fn root(f: &Fields<'_>, stored: &str, text: &str) -> Result<BlockRef> {
    Ok(match text {
        "hole" => BlockRef::Hole,
        "zero" => BlockRef::Zero,
        hex => BlockRef::Data(hex.parse().map_err(|_| {
            f.bad(
                "root",
                &Value::Text(stored.to_owned()),
                format_args!(
                    "does not hold a manifest root: {text:?} is not hole, zero or a block id"
                ),
            )
        })?),
    })
}

/// A row of [`PAYLOAD_COLUMNS`], with its snapshot's id; checked against the check
/// stored after `#` in its `root` column (see `payload_check`).
pub(crate) fn payload(row: &Row) -> Result<(String, Payload)> {
    let f = Fields::new("payloads", row, &["snapshot_id", "name"])?;
    let snapshot_id = f.text("snapshot_id")?;
    let name = f.checked("name", validate_file_name)?;
    // The check covers the role as stored, so keep its text as well as its value.
    let role_text = f.text("role")?;
    let role = f.parsed("role")?;
    let size = f.size("size")?;
    let allocated = f.size("allocated")?;
    let data_bytes = f.size("data_bytes")?;
    let block_size = f.u32("block_size")?;
    let fanout = f.u32("fanout")?;
    let stored = f.text("root")?;
    // Rows written before checks existed have none.
    let (root_text, check) = stored.split_once('#').unwrap_or((&stored, ""));
    let root = root(&f, &stored, root_text)?;
    // Every size came from a non-negative i64, so `as i64` gives back what is stored.
    if !check.is_empty()
        && check
            != crate::payload_check(
                &snapshot_id,
                &name,
                &role_text,
                size as i64,
                allocated as i64,
                data_bytes as i64,
                i64::from(block_size),
                i64::from(fanout),
                root_text,
            )
    {
        return Err(f.row_error("the row fails its check (damaged database)"));
    }
    let payload = Payload {
        name,
        role,
        allocated,
        data_bytes,
        manifest: Manifest {
            size,
            block_size,
            fanout,
            root,
        },
    };
    Ok((snapshot_id, payload))
}

/// A row of [`TAG_COLUMNS`]: snapshot id, key, value.
pub(crate) fn tag(row: &Row) -> Result<(String, String, String)> {
    let f = Fields::new("tags", row, &["snapshot_id", "key"])?;
    let key = f.checked("key", validate_tag_key)?;
    let value = f.checked("value", |v| validate_tag_value(&key, v))?;
    Ok((f.text("snapshot_id")?, key, value))
}

/// A row of [`EVENT_COLUMNS`].
pub(crate) fn event(row: &Row) -> Result<Event> {
    let f = Fields::new("events", row, &["id"])?;
    Ok(Event {
        at: f.timestamp("at")?,
        action: f.text("action")?,
        actor: f.text("actor")?,
        detail: f.text("detail")?,
    })
}

/// The `instances` row of a VM.
pub(crate) struct InstanceRow {
    pub(crate) hypervisor: crate::Hypervisor,
    pub(crate) pre_snapshot: Option<String>,
    pub(crate) post_snapshot: Option<String>,
    pub(crate) pre_restore: Option<String>,
    pub(crate) post_restore: Option<String>,
    pub(crate) created_at: String,
}

/// A row of [`INSTANCE_COLUMNS`].
pub(crate) fn instance(row: &Row) -> Result<InstanceRow> {
    let f = Fields::new("instances", row, &["vm_id"])?;
    Ok(InstanceRow {
        hypervisor: f.parsed("hypervisor")?,
        pre_snapshot: f.opt_text("pre_snapshot")?,
        post_snapshot: f.opt_text("post_snapshot")?,
        pre_restore: f.opt_text("pre_restore")?,
        post_restore: f.opt_text("post_restore")?,
        created_at: f.timestamp("created_at")?,
    })
}

/// A row of [`INSTANCE_FILE_COLUMNS`].
pub(crate) fn instance_file(row: &Row) -> Result<crate::InstanceFile> {
    let f = Fields::new("instance_files", row, &["vm_id", "name"])?;
    let path = f.text("path")?;
    if !path.starts_with('/') {
        return Err(f.row_error(format_args!("path {path:?} is not absolute")));
    }
    Ok(crate::InstanceFile {
        role: f.parsed("role")?,
        name: f.checked("name", validate_file_name)?,
        path,
    })
}

/// The `schedules` row of a VM.
pub(crate) struct ScheduleRow {
    pub(crate) interval: String,
    pub(crate) max_count: Option<u32>,
    pub(crate) max_age: Option<String>,
    pub(crate) name_prefix: Option<String>,
    pub(crate) metadata: BTreeMap<String, String>,
    pub(crate) created_at: String,
    pub(crate) updated_at: String,
    pub(crate) next_run_at: String,
    pub(crate) last_run_at: Option<String>,
    pub(crate) last_snapshot_id: Option<String>,
    pub(crate) last_error: Option<String>,
}

/// A row of [`SCHEDULE_COLUMNS`].
pub(crate) fn schedule(row: &Row) -> Result<ScheduleRow> {
    let f = Fields::new("schedules", row, &["vm_id"])?;
    let duration = |column: &str| -> Result<Option<String>> {
        match f.opt_text(column)? {
            Some(d) => match crate::fields::parse_go_duration(&d) {
                Ok(_) => Ok(Some(d)),
                Err(e) => Err(f.bad(column, &Value::Text(d.clone()), format_args!("{e}"))),
            },
            None => Ok(None),
        }
    };
    let interval = duration("every")?.ok_or_else(|| f.row_error("its interval is NULL"))?;
    let metadata: BTreeMap<String, String> = f.json("metadata")?;
    if let Err(e) = crate::fields::validate_tags(&metadata) {
        return Err(f.row_error(format_args!("metadata: {e}")));
    }
    let max_count = match f.value("max_count")? {
        Value::Null => None,
        _ => Some(f.u32("max_count")?),
    };
    Ok(ScheduleRow {
        interval,
        max_count,
        max_age: duration("max_age")?,
        name_prefix: f.opt_text("name_prefix")?,
        metadata,
        created_at: f.timestamp("created_at")?,
        updated_at: f.timestamp("updated_at")?,
        next_run_at: f.timestamp("next_run_at")?,
        last_run_at: f.opt_timestamp("last_run_at")?,
        last_snapshot_id: f.opt_text("last_snapshot_id")?,
        last_error: f.opt_text("last_error")?,
    })
}

/// A row of `scheduled_snapshots` selected as `id` and `made_at`.
pub(crate) fn scheduled_snapshot(row: &Row) -> Result<crate::ScheduledSnapshot> {
    let f = Fields::new("scheduled_snapshots", row, &["id"])?;
    Ok(crate::ScheduledSnapshot {
        snapshot_id: f.text("id")?,
        made_at: f.timestamp("made_at")?,
    })
}

/// A row of [`TOKEN_COLUMNS`].
pub(crate) fn token(row: &Row) -> Result<Token> {
    let f = Fields::new("tokens", row, &["id"])?;
    Ok(Token {
        id: f.text("id")?,
        tenant: f.checked("tenant", validate_name)?,
        read_only: f.flag("read_only")?,
        admin: f.flag("admin")?,
        created_at: f.timestamp("created_at")?,
        revoked_at: f.opt_timestamp("revoked_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::{Hypervisor, Kind, PowerState, parse_expiry};
    use crate::{Catalog, ErrorKind, NewPayload, NewSnapshot, TokenMode};
    use stasis_store::{Compression, Role};

    /// A snapshot with every optional column filled, a payload and a tag.
    fn full(vm: &str, name: &str) -> NewSnapshot {
        let payload = NewPayload {
            name: "root".into(),
            role: Role::Disk,
            allocated: 10,
            data_bytes: 10,
            manifest: Manifest {
                size: 123,
                block_size: 65536,
                fanout: 64,
                root: BlockRef::Zero,
            },
        };
        let mut n = NewSnapshot::new(vm, name, "test", vec![payload]);
        n.compression = Compression::default().into();
        n.description = Some("described".into());
        n.kind = Kind::Standby;
        n.source_hypervisor = Some(Hypervisor::Qemu);
        n.power_state = Some(PowerState::PoweredOn);
        n.quiesced = true;
        n.datastore = Some("ds1".into());
        n.expires_at = Some(parse_expiry("2030-01-01").expect("date"));
        n.tags.insert("env".into(), "prod".into());
        n
    }

    /// A catalog holding a good snapshot and a victim one, each in its own VM.
    fn two() -> (Catalog, Snapshot, Snapshot) {
        let mut c = Catalog::open_in_memory().expect("open");
        let good = c.create(&full("good-vm", "good")).expect("good");
        let victim = c.create(&full("victim-vm", "victim")).expect("victim");
        (c, good, victim)
    }

    type Read<'a> = &'a dyn Fn(&Catalog) -> Result<()>;

    /// Damage the catalog with `sql` (its `?1` is `key`). Then `bad` fails as corrupt
    /// with a message holding each of `expect`, and `good` still reads. Undone after.
    fn damaged(c: &Catalog, sql: &str, key: &str, expect: &[&str], bad: Read<'_>, good: Read<'_>) {
        c.raw_sqlite()
            .execute_batch("SAVEPOINT d")
            .expect("savepoint");
        let n = c.raw_sqlite().execute(sql, [key]).expect(sql);
        assert_eq!(n, 1, "{sql} changes one row");
        let err = bad(c).expect_err(sql);
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{sql}: {err}");
        let msg = err.to_string();
        for e in expect {
            assert!(msg.contains(e), "{sql}: {msg:?} does not say {e:?}");
        }
        good(c).unwrap_or_else(|e| panic!("{sql}: the good row no longer reads: {e}"));
        c.raw_sqlite()
            .execute_batch("ROLLBACK TO d; RELEASE d")
            .expect("undo");
        bad(c).unwrap_or_else(|e| panic!("{sql}: undone, it still fails: {e}"));
    }

    #[test]
    fn bad_snapshot_columns_are_corrupt_and_named() {
        let (c, good, victim) = two();
        // (column, the bad value in SQL, how the message shows the value)
        let cases = [
            // Unknown enumeration text.
            ("kind", "'Paused'", "\"Paused\""),
            ("status", "'gone'", "\"gone\""),
            ("compression_state", "'Compressed'", "\"Compressed\""),
            ("source_hypervisor", "'xen'", "\"xen\""),
            ("power_state", "'on'", "\"on\""),
            // Flags that are not 0 or 1.
            ("includes_memory", "2", "2"),
            ("quiesced", "-1", "-1"),
            ("quiesced", "'yes'", "\"yes\""),
            // Sizes: negative, fractional, not a number.
            ("size_bytes", "-1", "-1"),
            ("uncompressed_size_bytes", "-2", "-2"),
            ("compressed_size_bytes", "1.5", "1.5"),
            ("added_bytes", "'many'", "\"many\""),
            // JSON that does not parse, or not as compression settings.
            ("compression", "'{\"enabled\": tru'", "tru"),
            ("compression", "'[1]'", "\"[1]\""),
            // Timestamps.
            ("created_at", "'yesterday'", "\"yesterday\""),
            (
                "expires_at",
                "'2030-13-01T00:00:00Z'",
                "\"2030-13-01T00:00:00Z\"",
            ),
            // Names, and text that is not text.
            ("name", "'no/such/name'", "\"no/such/name\""),
            ("description", "X'00ff'", "a 2-byte blob"),
            ("created_by", "CAST(X'ff' AS TEXT)", "not UTF-8"),
            ("datastore", "X'01'", "a 1-byte blob"),
        ];
        let get_bad = |c: &Catalog| {
            c.get(&victim.id)
                .map(|s| assert_eq!(s.as_ref(), Some(&victim)))
        };
        let list = |c: &Catalog| c.list(None).map(drop);
        let get_good = |c: &Catalog| c.get(&good.id).map(|s| assert_eq!(s.as_ref(), Some(&good)));
        for (column, value, shown) in cases {
            let sql = format!("UPDATE snapshots SET {column} = {value} WHERE id = ?1");
            let expect = [
                "table snapshots",
                &format!("row {}", victim.id),
                &format!("column {column}:"),
                shown,
            ];
            damaged(&c, &sql, &victim.id, &expect, &get_bad, &get_good);
            // A list holding the row fails alike: it does not skip or default it.
            damaged(&c, &sql, &victim.id, &expect, &list, &get_good);
        }
    }

    #[test]
    fn bad_vm_columns_are_corrupt_and_named() {
        let (c, good, victim) = two();
        let vm_id = victim.source_instance_id.clone();
        let get_snapshot = |c: &Catalog| c.get(&victim.id).map(drop);
        let get_vm = |c: &Catalog| c.vm(&vm_id).map(|v| assert!(v.is_some()));
        let vms = |c: &Catalog| c.vms().map(drop);
        let get_good = |c: &Catalog| {
            c.get(&good.id)?;
            c.vm("good-vm").map(|v| assert!(v.is_some()))
        };
        // Columns a snapshot row reads from its VM, named as that row reads them.
        for (sql, column, shown) in [
            (
                "UPDATE vms SET tenant = 'Not A Name' WHERE id = ?1",
                "tenant",
                "\"Not A Name\"",
            ),
            (
                "UPDATE vms SET name = 'UPPER' WHERE id = ?1",
                "vm_name",
                "\"UPPER\"",
            ),
        ] {
            let expect = [
                "table snapshots",
                &format!("row {}", victim.id),
                &format!("column {column}:"),
                shown,
            ];
            damaged(&c, sql, &vm_id, &expect, &get_snapshot, &get_good);
        }
        for (column, value, shown) in [
            ("tenant", "'Not A Name'", "\"Not A Name\""),
            ("name", "'UPPER'", "\"UPPER\""),
            ("created_at", "'now'", "\"now\""),
            ("forked_from", "X'01'", "a 1-byte blob"),
        ] {
            let sql = format!("UPDATE vms SET {column} = {value} WHERE id = ?1");
            let expect = [
                "table vms",
                &format!("row {vm_id}"),
                &format!("column {column}:"),
                shown,
            ];
            damaged(&c, &sql, &vm_id, &expect, &get_vm, &get_good);
            damaged(&c, &sql, &vm_id, &expect, &vms, &get_good);
        }
    }

    #[test]
    fn bad_payload_columns_are_corrupt_and_named() {
        let (c, good, victim) = two();
        let payloads = |c: &Catalog| {
            c.payloads(&victim.id)
                .map(|p| assert_eq!(p, victim.payloads))
        };
        let get_snapshot = |c: &Catalog| c.get(&victim.id).map(drop);
        let get_good = |c: &Catalog| c.payloads(&good.id).map(|p| assert_eq!(p, good.payloads));
        for (column, value, shown) in [
            ("role", "'swap'", "\"swap\""),
            ("size", "-1", "-1"),
            ("allocated", "'ten'", "\"ten\""),
            ("data_bytes", "1.5", "1.5"),
            ("block_size", "4294967296", "4294967296"),
            ("fanout", "-64", "-64"),
            ("root", "'nothex#' || substr(root, 6)", "\"nothex#"),
            ("name", "'a/b'", "\"a/b\""),
        ] {
            let sql = format!("UPDATE payloads SET {column} = {value} WHERE snapshot_id = ?1");
            let expect = [
                "table payloads",
                &format!("row {}/", victim.id),
                &format!("column {column}:"),
                shown,
            ];
            damaged(&c, &sql, &victim.id, &expect, &payloads, &get_good);
            damaged(&c, &sql, &victim.id, &expect, &get_snapshot, &get_good);
        }
    }

    #[test]
    fn bad_tags_are_corrupt_and_named() {
        let (c, good, victim) = two();
        let tags = |c: &Catalog| c.tags(&victim.id).map(|t| assert_eq!(t, victim.tags));
        let get_snapshot = |c: &Catalog| c.get(&victim.id).map(drop);
        let get_good = |c: &Catalog| c.get(&good.id).map(|s| assert_eq!(s.as_ref(), Some(&good)));
        for (column, value, shown) in [
            ("key", "'bad;key'", "\"bad;key\""),
            ("key", "''", "\"\""),
            ("value", "'semi;colon'", "\"semi;colon\""),
            ("value", "X'70726f64'", "a 4-byte blob"),
        ] {
            let sql = format!("UPDATE tags SET {column} = {value} WHERE snapshot_id = ?1");
            let expect = [
                "table tags",
                &format!("row {}/", victim.id),
                &format!("column {column}:"),
                shown,
            ];
            damaged(&c, &sql, &victim.id, &expect, &tags, &get_good);
            damaged(&c, &sql, &victim.id, &expect, &get_snapshot, &get_good);
        }
    }

    #[test]
    fn bad_instance_columns_are_corrupt_and_named() {
        use crate::{Hypervisor, InstanceFile, NewInstance};
        let (mut c, _, _) = two();
        let new = |vm: &str| NewInstance {
            vm: vm.into(),
            tenant: None,
            hypervisor: Hypervisor::Qemu,
            files: vec![InstanceFile {
                role: stasis_store::Role::Disk,
                name: "root".into(),
                path: format!("/srv/{vm}/root"),
            }],
            pre_snapshot: None,
            post_snapshot: None,
            pre_restore: None,
            post_restore: None,
        };
        let good = c.register_instance(&new("good-vm")).expect("good");
        let victim = c.register_instance(&new("victim-vm")).expect("victim");
        let read = |c: &Catalog| c.instance("victim-vm").map(drop);
        let get_good = |c: &Catalog| {
            c.instance("good-vm")
                .map(|i| assert_eq!(i.as_ref(), Some(&good)))
        };
        for (table, column, value, shown) in [
            ("instances", "hypervisor", "'hyperv'", "\"hyperv\""),
            ("instances", "created_at", "'yesterday'", "\"yesterday\""),
            ("instance_files", "role", "'swap'", "\"swap\""),
            ("instance_files", "name", "'a/b'", "\"a/b\""),
            ("instance_files", "path", "'relative'", "relative"),
        ] {
            let sql = format!("UPDATE {table} SET {column} = {value} WHERE vm_id = ?1");
            let expect = [
                &format!("table {table}"),
                &format!("row {}", victim.vm.id),
                shown,
            ];
            damaged(&c, &sql, &victim.vm.id, &expect, &read, &get_good);
        }
    }

    #[test]
    fn bad_event_columns_are_corrupt_and_named() {
        let (c, good, victim) = two();
        let events = |c: &Catalog| c.events(&victim.id).map(|e| assert_eq!(e.len(), 2));
        let get_good = |c: &Catalog| c.events(&good.id).map(|e| assert_eq!(e.len(), 2));
        let first: i64 = c
            .raw_sqlite()
            .query_row(
                "SELECT min(id) AS id FROM events WHERE snapshot_id = ?1",
                [&victim.id],
                |r| r.get("id"),
            )
            .expect("event id");
        for (column, value, shown) in [
            ("at", "'never'", "\"never\""),
            ("actor", "X'00'", "a 1-byte blob"),
        ] {
            let sql = format!(
                "UPDATE events SET {column} = {value} WHERE id = (SELECT min(id) FROM events WHERE snapshot_id = ?1)"
            );
            let expect = [
                "table events",
                &format!("row {first}"),
                &format!("column {column}:"),
                shown,
            ];
            damaged(&c, &sql, &victim.id, &expect, &events, &get_good);
        }
    }

    #[test]
    fn bad_token_columns_are_corrupt_and_named() {
        let mut c = Catalog::open_in_memory().expect("open");
        let (good, good_secret) = c.create_token("acme", TokenMode::ReadWrite).expect("good");
        let (victim, victim_secret) = c.create_token("acme", TokenMode::Admin).expect("victim");
        let tokens = |c: &Catalog| c.tokens().map(|t| assert_eq!(t.len(), 2));
        let auth = |c: &Catalog| {
            c.authenticate(&victim_secret)
                .map(|t| assert_eq!(t.as_ref(), Some(&victim)))
        };
        let get_good = |c: &Catalog| {
            c.authenticate(&good_secret)
                .map(|t| assert_eq!(t.as_ref(), Some(&good)))
        };
        for (column, value, shown) in [
            ("read_only", "2", "2"),
            ("admin", "'yes'", "\"yes\""),
            ("tenant", "'Acme Corp'", "\"Acme Corp\""),
            ("created_at", "'today'", "\"today\""),
        ] {
            let sql = format!("UPDATE tokens SET {column} = {value} WHERE id = ?1");
            let expect = [
                "table tokens",
                &format!("row {}", victim.id),
                &format!("column {column}:"),
                shown,
            ];
            damaged(&c, &sql, &victim.id, &expect, &tokens, &get_good);
            damaged(&c, &sql, &victim.id, &expect, &auth, &get_good);
        }
        // A revoked token's revocation time is checked too.
        c.revoke_token(&victim.id).expect("revoke");
        let listed = |c: &Catalog| c.tokens().map(|t| assert_eq!(t.len(), 2));
        let sql = "UPDATE tokens SET revoked_at = 'later' WHERE id = ?1";
        let expect = [
            "table tokens",
            &format!("row {}", victim.id),
            "column revoked_at:",
            "\"later\"",
        ];
        damaged(&c, sql, &victim.id, &expect, &listed, &get_good);
    }

    /// Text columns refuse NULL and other types; a column the query did not select is
    /// this crate's bug, a database error, not corruption.
    #[test]
    fn fields_refuse_wrong_types_and_name_the_row() {
        let c = Catalog::open_in_memory().expect("open");
        let rows = c
            .db()
            .expect("db")
            .rows(
                "test",
                "SELECT 'k1' AS id, NULL AS t, 3 AS n, 'x' AS s, 0 AS f, '2026-01-01T00:00:00Z' AS at",
                &[],
            )
            .expect("query");
        let f = Fields::new("things", &rows[0], &["id"]).expect("fields");
        let err = f.text("t").expect_err("NULL is not text");
        assert_eq!(err.kind(), ErrorKind::Corrupt);
        assert_eq!(
            err.to_string(),
            "table things, row k1, column t: NULL is not text"
        );
        assert_eq!(f.opt_text("t").expect("NULL is no text"), None);
        assert_eq!(
            f.text("n").map_err(|e| e.kind()).err(),
            Some(ErrorKind::Corrupt)
        );
        assert_eq!(
            f.int("s").map_err(|e| e.kind()).err(),
            Some(ErrorKind::Corrupt)
        );
        assert_eq!(
            f.int("t").map_err(|e| e.kind()).err(),
            Some(ErrorKind::Corrupt)
        );
        assert_eq!(
            f.flag("t").map_err(|e| e.kind()).err(),
            Some(ErrorKind::Corrupt)
        );
        assert_eq!(f.size("n").expect("size"), 3);
        assert!(!f.flag("f").expect("flag"));
        assert_eq!(
            f.opt_timestamp("at").expect("at").as_deref(),
            Some("2026-01-01T00:00:00Z")
        );
        assert_eq!(f.opt_timestamp("t").expect("NULL"), None);
        assert_eq!(
            f.text("absent").map_err(|e| e.kind()).err(),
            Some(ErrorKind::Database)
        );
    }

    #[test]
    fn a_long_bad_value_is_cut_short_in_the_message() {
        let long = "é".repeat(500);
        let shown = describe(&Value::Text(long.clone()));
        assert!(shown.ends_with("..."), "{shown}");
        assert!(shown.chars().count() < 100, "{shown}");
        assert_eq!(describe(&Value::Null), "NULL");
        assert_eq!(describe(&Value::Blob(vec![1, 2, 3])), "a 3-byte blob");
    }

    /// Each list names a column once; the select list reads every column by its name.
    #[test]
    fn column_lists_are_unique_and_select_by_name() {
        for cols in [
            SNAPSHOT_COLUMNS,
            VM_COLUMNS,
            PAYLOAD_COLUMNS,
            TAG_COLUMNS,
            EVENT_COLUMNS,
            TOKEN_COLUMNS,
        ] {
            let mut names: Vec<&str> = cols.iter().map(|c| c.name).collect();
            names.sort_unstable();
            let n = names.len();
            names.dedup();
            assert_eq!(names.len(), n, "a name repeats in {cols:?}");
        }
        assert!(select(SNAPSHOT_COLUMNS).starts_with("s.id AS id, s.name AS name, "));
        assert!(
            select(SNAPSHOT_COLUMNS)
                .contains("(v.current_id IS NOT DISTINCT FROM s.id) AS is_current")
        );
        assert_eq!(select(TAG_COLUMNS), "snapshot_id, key, value");
    }
}
