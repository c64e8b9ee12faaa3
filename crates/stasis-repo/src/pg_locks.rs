//! [`PgLocks`]: the store's [`Locks`] as PostgreSQL advisory locks, for a repository
//! whose hosts share a PostgreSQL catalog.
//!
//! The rules are those of `stasis_store`'s lock module; only where they live changes:
//! - A **session** is a connection of its own that holds the advisory lock
//!   `(namespace, key)` exclusively, `key` random, and a row `(namespace, key)` in
//!   `stasis_sessions`, written *after* the lock is taken. It ends by deleting its row
//!   and closing its connection. A holder that dies loses its connection, and PostgreSQL
//!   releases its lock with it: its row then reads as ended.
//! - **gc waits** for the sessions whose rows it sees: for each it takes the same lock
//!   shared, which it gets once the session has ended (at once for a dead one), then
//!   removes the row. A session whose row is not committed yet when gc lists them
//!   registered after gc's plan was published, and reads it, as on a local disk.
//! - The **maintenance lock** is `(namespace, 0)`, taken exclusively without waiting on
//!   a connection the guard keeps.
//!
//! The namespace is derived from the repository's store URL, so repositories that share
//! a database do not share locks.

use std::fmt;
use std::sync::Mutex;

use postgres::{Client, NoTls};
use stasis_store::{Error as StoreError, ErrorKind as StoreKind, Guard, Held, Locks, Result};

/// Locks in a PostgreSQL database (`postgres://USER[:PASSWORD]@HOST:PORT/DB`; `PGPASSWORD`
/// when the URL has no password).
pub struct PgLocks {
    config: postgres::Config,
    namespace: i32,
    /// Shown in messages (the URL without its password).
    name: String,
}

impl fmt::Debug for PgLocks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgLocks")
            .field("db", &self.name)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

fn pg_error(what: &str, e: postgres::Error) -> StoreError {
    StoreError::new(StoreKind::Io, format!("{what}: {e}"))
}

/// A session: its connection (holding the lock) and its row, removed on drop.
struct Session {
    client: Mutex<Client>,
    namespace: i32,
    key: i32,
}

impl Held for Session {
    /// The session's connection still answers and still holds its lock.
    fn still_held(&self) -> Result<()> {
        let mut c = self.client.lock().unwrap_or_else(|p| p.into_inner());
        let held: bool = c
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
                 AND pid = pg_backend_pid() AND granted AND classid::bigint = ($1::int4::bigint & 4294967295) \
                 AND objid::bigint = ($2::int4::bigint & 4294967295) AND objsubid = 2)",
                &[&self.namespace, &self.key],
            )
            .map_err(|e| {
                StoreError::new(
                    StoreKind::Io,
                    format!("the write session's connection to the catalog was lost ({e}); nothing was recorded"),
                )
            })?
            .get(0);
        if held {
            Ok(())
        } else {
            Err(StoreError::new(
                StoreKind::Io,
                "the write session lost its lock in the catalog; nothing was recorded",
            ))
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let mut c = self.client.lock().unwrap_or_else(|p| p.into_inner());
        // Row first, then the lock (closing the connection releases it in any case).
        let _ = c.execute(
            "DELETE FROM stasis_sessions WHERE namespace = $1 AND key = $2",
            &[&self.namespace, &self.key],
        );
        let _ = c.execute(
            "SELECT pg_advisory_unlock($1, $2)",
            &[&self.namespace, &self.key],
        );
    }
}

impl PgLocks {
    /// Locks of the repository whose store is `store_url`, in the database at `url`.
    pub fn new(url: &str, store_url: &str) -> Result<Self> {
        let mut config: postgres::Config = url.parse().map_err(|e| {
            StoreError::new(StoreKind::InvalidInput, format!("bad catalog URL: {e}"))
        })?;
        if config.get_password().is_none()
            && let Some(p) = std::env::var_os("PGPASSWORD")
        {
            config.password(p.as_encoded_bytes());
        }
        config.application_name("stasis");
        let h = blake3::hash(store_url.as_bytes());
        let b = h.as_bytes();
        let namespace = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let locks = PgLocks {
            config,
            namespace,
            name: stasis_catalog::redact_url(url),
        };
        locks.setup()?;
        Ok(locks)
    }

    fn connect(&self) -> Result<Client> {
        self.config
            .connect(NoTls)
            .map_err(|e| pg_error(&format!("connecting to {}", self.name), e))
    }

    /// The sessions table, made once (under a transaction lock: two hosts may start at
    /// once, and `CREATE TABLE IF NOT EXISTS` alone races).
    fn setup(&self) -> Result<()> {
        let mut c = self.connect()?;
        let mut tx = c
            .transaction()
            .map_err(|e| pg_error("starting a transaction", e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1, -1)", &[&self.namespace])
            .map_err(|e| pg_error("locking the sessions table's creation", e))?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS stasis_sessions (
                namespace INTEGER NOT NULL,
                key INTEGER NOT NULL,
                pid INTEGER NOT NULL,
                started TIMESTAMPTZ NOT NULL DEFAULT now(),
                PRIMARY KEY (namespace, key)
            )",
        )
        .map_err(|e| pg_error("creating stasis_sessions", e))?;
        tx.commit()
            .map_err(|e| pg_error("creating stasis_sessions", e))
    }

    fn random_key() -> Result<i32> {
        let mut b = [0u8; 4];
        getrandom::fill(&mut b)
            .map_err(|e| StoreError::new(StoreKind::Io, format!("random: {e}")))?;
        // Positive and never 0 (the maintenance lock).
        Ok((i32::from_le_bytes(b) & i32::MAX).max(1))
    }
}

impl Locks for PgLocks {
    fn register_session(&self) -> Result<Guard> {
        let mut c = self.connect()?;
        // A random key nobody holds (a collision only costs another try).
        for _ in 0..16 {
            let key = Self::random_key()?;
            let got: bool = c
                .query_one(
                    "SELECT pg_try_advisory_lock($1, $2)",
                    &[&self.namespace, &key],
                )
                .map_err(|e| pg_error("registering a session", e))?
                .get(0);
            if !got {
                continue;
            }
            let pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
            // A row left by a dead session with the same key is replaced.
            c.execute(
                "INSERT INTO stasis_sessions (namespace, key, pid) VALUES ($1, $2, $3)
                 ON CONFLICT (namespace, key) DO UPDATE SET pid = $3, started = now()",
                &[&self.namespace, &key, &pid],
            )
            .map_err(|e| pg_error("registering a session", e))?;
            return Ok(Guard::checked(Session {
                client: Mutex::new(c),
                namespace: self.namespace,
                key,
            }));
        }
        Err(StoreError::new(
            StoreKind::Io,
            "registering a session: no free session key after 16 tries",
        ))
    }

    fn wait_for_sessions(&self, waiting: &dyn Fn(usize)) -> Result<usize> {
        let mut c = self.connect()?;
        let keys: Vec<i32> = c
            .query(
                "SELECT key FROM stasis_sessions WHERE namespace = $1 ORDER BY key",
                &[&self.namespace],
            )
            .map_err(|e| pg_error("listing sessions", e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut running = Vec::new();
        for key in keys {
            let free: bool = c
                .query_one(
                    "SELECT pg_try_advisory_lock_shared($1, $2)",
                    &[&self.namespace, &key],
                )
                .map_err(|e| pg_error("checking a session", e))?
                .get(0);
            if free {
                // Ended, or its holder died: the row goes.
                self.forget(&mut c, key)?;
            } else {
                running.push(key);
            }
        }
        if !running.is_empty() {
            waiting(running.len());
        }
        for &key in &running {
            // Blocks until the session's connection lets go of its lock.
            c.execute(
                "SELECT pg_advisory_lock_shared($1, $2)",
                &[&self.namespace, &key],
            )
            .map_err(|e| pg_error("waiting for a session", e))?;
            self.forget(&mut c, key)?;
        }
        Ok(running.len())
    }

    fn try_maintenance(&self) -> Result<Option<Guard>> {
        let mut c = self.connect()?;
        let got: bool = c
            .query_one("SELECT pg_try_advisory_lock($1, 0)", &[&self.namespace])
            .map_err(|e| pg_error("taking the maintenance lock", e))?
            .get(0);
        // The lock lives as long as the connection the guard keeps.
        Ok(got.then(|| Guard::new(Mutex::new(c))))
    }
}

impl PgLocks {
    /// Remove session `key`'s row while holding its lock shared, then let go.
    fn forget(&self, c: &mut Client, key: i32) -> Result<()> {
        c.execute(
            "DELETE FROM stasis_sessions WHERE namespace = $1 AND key = $2",
            &[&self.namespace, &key],
        )
        .map_err(|e| pg_error("removing an ended session", e))?;
        c.execute(
            "SELECT pg_advisory_unlock_shared($1, $2)",
            &[&self.namespace, &key],
        )
        .map_err(|e| pg_error("removing an ended session", e))?;
        Ok(())
    }
}
