//! The query layer: one connection type over SQLite and PostgreSQL, so every statement
//! of the catalog is written once.
//!
//! Statements are written in the SQL the two share, with numbered parameters `?1`,
//! `?2`, ... (rewritten to `$1`, `$2`, ... for PostgreSQL). The few places where the
//! dialects differ are methods of [`Dialect`] ([`Dialect::in_json_array`]) or of
//! [`Db`] (the schema version, the database's own check). Values travel as
//! [`Value`]s both ways: integers are 64-bit on both sides (the migrations'
//! `INTEGER` is PostgreSQL's `BIGINT`), flags are 0 or 1, a PostgreSQL boolean result
//! reads as 0 or 1.
//!
//! Writers are serialised on both: [`Db::write`] runs a transaction that holds the
//! database's one write lock from its start (SQLite's `BEGIN IMMEDIATE`; on PostgreSQL
//! a transaction-scoped advisory lock, released with the transaction or the
//! connection), so what a write checks under it still holds when it commits, and the
//! loser of two conflicting writes sees the winner's rows.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};

/// A parameter or a column's value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    /// NULL.
    Null,
    /// An integer (also a flag, 0 or 1).
    Int(i64),
    /// A floating-point number (never written by the catalog; read to be refused).
    Real(f64),
    /// Text.
    Text(String),
    /// Text that is not UTF-8 (SQLite stores what it is given).
    NotUtf8(Vec<u8>),
    /// A blob.
    Blob(Vec<u8>),
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Text(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Text(s)
    }
}

impl From<&String> for Value {
    fn from(s: &String) -> Value {
        Value::Text(s.clone())
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Int(i)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Int(i64::from(b))
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

impl<T: Clone + Into<Value>> From<&Option<T>> for Value {
    fn from(v: &Option<T>) -> Value {
        v.clone().map_or(Value::Null, Into::into)
    }
}

/// The parameters of a statement: `args![a, b, ...]`.
macro_rules! args {
    ($($v:expr),* $(,)?) => {
        &[$($crate::sql::Value::from($v)),*][..]
    };
}
pub(crate) use args;

/// A result row: its values, found by column name.
#[derive(Debug)]
pub(crate) struct Row {
    names: Arc<[String]>,
    values: Vec<Value>,
}

impl Row {
    /// The value of column `name`, if the query selected it.
    pub(crate) fn get(&self, name: &str) -> Option<&Value> {
        self.names
            .iter()
            .position(|n| n == name)
            .and_then(|i| self.values.get(i))
    }
}

/// Which SQL a connection speaks, for the few statements that differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The condition "`column` is one of the texts of the JSON array in parameter
    /// `param`". On PostgreSQL an array (`= ANY`), which the planner matches against an
    /// index whatever its statistics say, where a subquery was a hash join over a
    /// sequential scan of a table not analysed yet.
    pub(crate) fn in_json_array(self, column: &str, param: &str) -> String {
        match self {
            Dialect::Sqlite => format!("{column} IN (SELECT value FROM json_each({param}))"),
            Dialect::Postgres => format!(
                "{column} = ANY (ARRAY(SELECT json_array_elements_text(CAST({param} AS text)::json)))"
            ),
        }
    }
}

/// The one key of the catalog's write lock on PostgreSQL (the single-key form of
/// advisory locks, a space of its own apart from the two-key locks of sessions).
pub(crate) const WRITE_LOCK: i64 = 0x5354_4153_4341_5431; // "STASCAT1"

/// How long a writer waits for the write lock before giving up (SQLite's busy timeout,
/// PostgreSQL's `lock_timeout`).
pub(crate) const LOCK_WAIT: Duration = Duration::from_secs(60);

/// A connection.
pub(crate) struct Db {
    inner: Inner,
    /// Called before every write statement and every commit (PostgreSQL; SQLite uses
    /// its own per-row hooks, see `Catalog::on_write`).
    hook: Option<fn()>,
    in_tx: bool,
}

enum Inner {
    Sqlite(rusqlite::Connection),
    Postgres(Box<Pg>),
}

struct Pg {
    config: postgres::Config,
    client: postgres::Client,
    /// Prepared statements by their text as written (before `?N` became `$N`).
    statements: HashMap<String, (postgres::Statement, Arc<[String]>)>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Inner::Sqlite(c) => f.debug_tuple("Db::Sqlite").field(c).finish(),
            Inner::Postgres(pg) => f
                .debug_struct("Db::Postgres")
                .field("host", &pg.config.get_hosts())
                .field("db", &pg.config.get_dbname())
                .finish_non_exhaustive(),
        }
    }
}

/// `sql` with `?N` written `$N`, outside quoted text.
pub(crate) fn numbered_dollars(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    for c in sql.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted => out.push('$'),
            _ => out.push(c),
        }
    }
    out
}

fn from_sqlite(v: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => match std::str::from_utf8(t) {
            Ok(s) => Value::Text(s.to_owned()),
            Err(_) => Value::NotUtf8(t.to_vec()),
        },
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::NotUtf8(b) => ValueRef::Text(b),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

impl postgres::types::ToSql for Value {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>>
    {
        use postgres::types::{IsNull, Type};
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) if *ty == Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
            Value::Int(i) if *ty == Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
            Value::Int(i) if *ty == Type::BOOL => (*i != 0).to_sql(ty, out),
            Value::Int(i) => i.to_sql(ty, out),
            Value::Real(f) => f.to_sql(ty, out),
            Value::Text(s) => s.as_str().to_sql(ty, out),
            Value::NotUtf8(b) | Value::Blob(b) => b.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &postgres::types::Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

fn from_postgres(row: &postgres::Row, i: usize) -> std::result::Result<Value, postgres::Error> {
    use postgres::types::Type;
    let ty = row.columns().get(i).map(|c| c.type_().clone());
    Ok(match ty {
        Some(Type::INT8) => row.try_get::<_, Option<i64>>(i)?.into(),
        Some(Type::INT4) => row.try_get::<_, Option<i32>>(i)?.map(i64::from).into(),
        Some(Type::INT2) => row.try_get::<_, Option<i16>>(i)?.map(i64::from).into(),
        Some(Type::BOOL) => row.try_get::<_, Option<bool>>(i)?.into(),
        Some(Type::FLOAT8) => row
            .try_get::<_, Option<f64>>(i)?
            .map_or(Value::Null, Value::Real),
        Some(Type::BYTEA) => row
            .try_get::<_, Option<Vec<u8>>>(i)?
            .map_or(Value::Null, Value::Blob),
        _ => row.try_get::<_, Option<String>>(i)?.into(),
    })
}

/// A database error while doing `what`; a broken uniqueness rule is a conflict.
fn sqlite_error(what: &str, e: rusqlite::Error) -> Error {
    let unique = matches!(
        &e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    );
    let err = Error::db(what.to_owned(), e);
    if unique {
        err.with_kind(ErrorKind::Conflict)
    } else {
        err
    }
}

fn pg_error(what: &str, e: postgres::Error) -> Error {
    let unique = e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION);
    let err = Error::db(what.to_owned(), e);
    if unique {
        err.with_kind(ErrorKind::Conflict)
    } else {
        err
    }
}

impl Pg {
    fn connect(config: postgres::Config) -> Result<Pg> {
        let client = config
            .connect(postgres::NoTls)
            .map_err(|e| pg_error("connecting to the PostgreSQL catalog", e))?;
        Ok(Pg {
            config,
            client,
            statements: HashMap::new(),
        })
    }

    /// The prepared form of `sql`, preparing it once per connection.
    fn statement(&mut self, what: &str, sql: &str) -> Result<(postgres::Statement, Arc<[String]>)> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let st = self
            .client
            .prepare(&numbered_dollars(sql))
            .map_err(|e| pg_error(what, e))?;
        let names: Arc<[String]> = st.columns().iter().map(|c| c.name().to_owned()).collect();
        self.statements
            .insert(sql.to_owned(), (st.clone(), names.clone()));
        Ok((st, names))
    }
}

impl Pg {
    fn rows(&mut self, what: &str, sql: &str, args: &[Value]) -> Result<Vec<Row>> {
        let (st, names) = self.statement(what, sql)?;
        let rows = self
            .client
            .query(&st, &pg_params(args))
            .map_err(|e| pg_error(what, e))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let mut values = Vec::with_capacity(names.len());
            for i in 0..names.len() {
                values.push(from_postgres(r, i).map_err(|e| pg_error(what, e))?);
            }
            out.push(Row {
                names: names.clone(),
                values,
            });
        }
        Ok(out)
    }
}

fn pg_params(args: &[Value]) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
    args.iter()
        .map(|a| a as &(dyn postgres::types::ToSql + Sync))
        .collect()
}

impl Db {
    /// A SQLite connection.
    pub(crate) fn sqlite(conn: rusqlite::Connection) -> Db {
        Db {
            inner: Inner::Sqlite(conn),
            hook: None,
            in_tx: false,
        }
    }

    /// A PostgreSQL connection to `url` (`postgres://USER[:PASSWORD]@HOST[:PORT]/DB`;
    /// `PGPASSWORD` when the URL has no password).
    pub(crate) fn postgres(url: &str) -> Result<Db> {
        let mut config: postgres::Config = url.parse().map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("catalog URL {}: {e}", redact(url)),
            )
        })?;
        if config.get_password().is_none()
            && let Some(p) = std::env::var_os("PGPASSWORD")
        {
            config.password(p.as_encoded_bytes());
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        config.application_name("stasis");
        config.options(&format!("-c lock_timeout={}s", LOCK_WAIT.as_secs()));
        Ok(Db {
            inner: Inner::Postgres(Box::new(Pg::connect(config)?)),
            hook: None,
            in_tx: false,
        })
    }

    pub(crate) fn dialect(&self) -> Dialect {
        match self.inner {
            Inner::Sqlite(_) => Dialect::Sqlite,
            Inner::Postgres(_) => Dialect::Postgres,
        }
    }

    /// The SQLite connection, for what only SQLite has (pragmas, hooks).
    pub(crate) fn as_sqlite(&mut self) -> Option<&mut rusqlite::Connection> {
        match &mut self.inner {
            Inner::Sqlite(c) => Some(c),
            Inner::Postgres(_) => None,
        }
    }

    /// Set the write hook of PostgreSQL connections (see the field).
    pub(crate) fn set_hook(&mut self, hook: Option<fn()>) {
        self.hook = hook;
    }

    /// The PostgreSQL connection, connected again if the server closed the last one
    /// (a restarted server) while no transaction was open.
    fn pg(&mut self) -> Result<Option<&mut Pg>> {
        let in_tx = self.in_tx;
        match &mut self.inner {
            Inner::Sqlite(_) => Ok(None),
            Inner::Postgres(pg) => {
                if pg.client.is_closed() && !in_tx {
                    **pg = Pg::connect(pg.config.clone())?;
                }
                Ok(Some(pg))
            }
        }
    }

    /// The rows `sql` yields with `args`; `what` names the read in errors. A read
    /// outside a transaction that finds the connection closed by the server is tried
    /// once more on a new one.
    pub(crate) fn rows(&mut self, what: &str, sql: &str, args: &[Value]) -> Result<Vec<Row>> {
        let in_tx = self.in_tx;
        if let Some(pg) = self.pg()? {
            return match pg.rows(what, sql, args) {
                Err(_) if !in_tx && pg.client.is_closed() => {
                    *pg = Pg::connect(pg.config.clone())?;
                    pg.rows(what, sql, args)
                }
                r => r,
            };
        }
        let Inner::Sqlite(c) = &mut self.inner else {
            unreachable!("pg() answers for PostgreSQL")
        };
        let mut st = c.prepare_cached(sql).map_err(|e| sqlite_error(what, e))?;
        let names: Arc<[String]> = st.column_names().map(String::from).collect();
        let mut rows = st
            .query(rusqlite::params_from_iter(args.iter()))
            .map_err(|e| sqlite_error(what, e))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(|e| sqlite_error(what, e))? {
            let mut values = Vec::with_capacity(names.len());
            for i in 0..names.len() {
                values.push(from_sqlite(
                    r.get_ref(i).map_err(|e| sqlite_error(what, e))?,
                ));
            }
            out.push(Row {
                names: names.clone(),
                values,
            });
        }
        Ok(out)
    }

    /// Run a statement that changes rows; the number changed.
    pub(crate) fn exec(&mut self, what: &str, sql: &str, args: &[Value]) -> Result<u64> {
        let hook = self.hook;
        if let Some(pg) = self.pg()? {
            if let Some(h) = hook {
                h();
            }
            let (st, _) = pg.statement(what, sql)?;
            return pg
                .client
                .execute(&st, &pg_params(args))
                .map_err(|e| pg_error(what, e));
        }
        let Inner::Sqlite(c) = &mut self.inner else {
            unreachable!("pg() answers for PostgreSQL")
        };
        let mut st = c.prepare_cached(sql).map_err(|e| sqlite_error(what, e))?;
        let n = st
            .execute(rusqlite::params_from_iter(args.iter()))
            .map_err(|e| sqlite_error(what, e))?;
        Ok(n as u64)
    }

    /// Run several statements without parameters (migrations).
    pub(crate) fn batch(&mut self, what: &str, sql: &str) -> Result<()> {
        let in_tx = self.in_tx;
        if let Some(pg) = self.pg()? {
            return match pg.client.batch_execute(sql) {
                // Outside a transaction (a BEGIN): nothing was done, try a new connection.
                Err(_) if !in_tx && pg.client.is_closed() => {
                    *pg = Pg::connect(pg.config.clone())?;
                    pg.client.batch_execute(sql).map_err(|e| pg_error(what, e))
                }
                r => r.map_err(|e| pg_error(what, e)),
            };
        }
        let Inner::Sqlite(c) = &mut self.inner else {
            unreachable!("pg() answers for PostgreSQL")
        };
        c.execute_batch(sql).map_err(|e| sqlite_error(what, e))
    }

    /// Run `f` in a transaction holding the write lock; commit if it succeeds, roll
    /// back if it fails (or panics).
    pub(crate) fn write<T>(&mut self, f: impl FnOnce(&mut Db) -> Result<T>) -> Result<T> {
        if self.in_tx {
            return f(self);
        }
        match self.dialect() {
            Dialect::Sqlite => self.batch("starting a transaction", "BEGIN IMMEDIATE")?,
            Dialect::Postgres => {
                self.batch("starting a transaction", "BEGIN")?;
                self.in_tx = true;
                let locked = self.rows(
                    "taking the catalog's write lock",
                    "SELECT pg_advisory_xact_lock(?1) IS NULL AS locked",
                    args![WRITE_LOCK],
                );
                if let Err(e) = locked {
                    self.in_tx = false;
                    let _ = self.batch("rolling back", "ROLLBACK");
                    return Err(e);
                }
            }
        }
        self.in_tx = true;
        let open = Open { db: self };
        let out = f(open.db)?;
        if let Some(h) = open.db.hook {
            h();
        }
        open.db.batch("committing", "COMMIT")?;
        open.db.in_tx = false;
        Ok(out)
    }
}

/// An open transaction, rolled back when dropped before its commit.
struct Open<'a> {
    db: &'a mut Db,
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        if self.db.in_tx {
            self.db.in_tx = false;
            let _ = self.db.batch("rolling back", "ROLLBACK");
        }
    }
}

/// `url` as messages show it: without its password.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let user = &url[s + 3..at];
            match user.split_once(':') {
                Some((u, _)) => format!("{}{u}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_renumbered_outside_quotes() {
        assert_eq!(
            numbered_dollars("SELECT a FROM t WHERE b = ?1 AND c = '?2' OR d = ?12"),
            "SELECT a FROM t WHERE b = $1 AND c = '?2' OR d = $12"
        );
    }

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("postgres://u:secret@h:5/db"),
            "postgres://u:***@h:5/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("nonsense"), "nonsense");
    }

    #[test]
    fn a_failed_write_rolls_back() {
        let mut db = Db::sqlite(rusqlite::Connection::open_in_memory().expect("open"));
        db.batch("t", "CREATE TABLE t (a INTEGER)").expect("table");
        let r: Result<()> = db.write(|db| {
            db.exec("t", "INSERT INTO t (a) VALUES (?1)", args![1i64])?;
            Err(Error::new(ErrorKind::Conflict, "no"))
        });
        assert!(r.is_err());
        let rows = db
            .rows("t", "SELECT count(*) AS n FROM t", &[])
            .expect("count");
        assert_eq!(rows[0].get("n"), Some(&Value::Int(0)));
        db.write(|db| db.exec("t", "INSERT INTO t (a) VALUES (?1)", args![2i64]))
            .expect("write");
        let rows = db.rows("t", "SELECT a FROM t", &[]).expect("rows");
        assert_eq!(rows[0].get("a"), Some(&Value::Int(2)));
        assert_eq!(rows[0].get("b"), None);
    }
}
