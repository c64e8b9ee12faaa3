//! The front door: a [`Repository`] is opened from a [`RepoConfig`], and this module is
//! the only code that names a backend type, a catalog file or a directory of the
//! repository. A new kind of store or catalog is one more arm of [`StoreUrl`] or
//! [`CatalogUrl`] and of the two functions that open them.
//!
//! The embedded default, [`RepoConfig::embedded`], is a directory:
//!
//! ```text
//! DIR/store/          the block store (config, packs/, index/, locks/)   store  file://DIR/store
//! DIR/catalog.db      the catalog (SQLite, WAL)                          catalog sqlite://DIR/catalog.db
//! DIR/mounts/         running `stasis mount`s (crate::mounts)
//! DIR/instances/      the server's forks, by tenant (default of --instances-dir)
//! ```
//!
//! A repository whose blocks are in an object store (`stasis init --store
//! s3://BUCKET/PREFIX`) keeps its choice in `DIR/repository.json` ([`RepoConfig::load`]),
//! and on this host only that, its catalog (until the shared one), `DIR/locks/` and the
//! cache of object pieces (`DIR/cache/` unless `--cache-dir`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use stasis_catalog::Catalog;
use stasis_s3::{CacheStats, PIECE_SIZE, PieceCache, RemoteBackend, S3Location};
use stasis_store::{Backend, FileLocks, LocalBackend, Store, StoreConfig};

use crate::error::{Error, Result};

/// Where a repository keeps its blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreUrl {
    /// A local directory: `file:///path`, or a bare path.
    Dir(PathBuf),
    /// An S3-compatible object store: `s3://BUCKET/PREFIX` (endpoint and credentials
    /// from the `AWS_*` variables).
    S3(S3Location),
}

/// Where a repository keeps its catalog.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CatalogUrl {
    /// A SQLite database file: `sqlite:///path`, or a bare path.
    Sqlite(PathBuf),
    /// A PostgreSQL database every host of a fleet shares:
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DB` (`PGPASSWORD` when it has none).
    Postgres(String),
}

impl fmt::Debug for CatalogUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Through Display: never a password.
        write!(f, "CatalogUrl({self})")
    }
}

fn scheme(s: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = s.split_once("://")?;
    let plain = !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.');
    plain.then_some((scheme, rest))
}

impl FromStr for StoreUrl {
    type Err = Error;

    fn from_str(s: &str) -> Result<StoreUrl> {
        match scheme(s) {
            Some(("file", path)) if !path.is_empty() => Ok(StoreUrl::Dir(PathBuf::from(path))),
            Some(("s3", _)) => Ok(StoreUrl::S3(s.parse()?)),
            Some((other, _)) => Err(Error::Invalid(format!(
                "store {s:?}: blocks go in a local directory (file://PATH) or an S3 bucket \
                 (s3://BUCKET/PREFIX), not {other}://"
            ))),
            None if !s.is_empty() => Ok(StoreUrl::Dir(PathBuf::from(s))),
            None => Err(Error::Invalid("the store URL is empty".into())),
        }
    }
}

impl FromStr for CatalogUrl {
    type Err = Error;

    fn from_str(s: &str) -> Result<CatalogUrl> {
        match scheme(s) {
            Some(("sqlite", path)) if !path.is_empty() => {
                Ok(CatalogUrl::Sqlite(PathBuf::from(path)))
            }
            Some(("postgres" | "postgresql", rest)) if !rest.is_empty() => {
                Ok(CatalogUrl::Postgres(s.to_owned()))
            }
            Some((other, _)) => Err(Error::Invalid(format!(
                "catalog {}: the catalog is a SQLite file (sqlite://PATH) or a PostgreSQL \
                 database (postgres://USER@HOST:PORT/DB), not {other}://",
                stasis_catalog::redact_url(s)
            ))),
            None if !s.is_empty() => Ok(CatalogUrl::Sqlite(PathBuf::from(s))),
            None => Err(Error::Invalid("the catalog URL is empty".into())),
        }
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Dir(p) => write!(f, "file://{}", p.display()),
            StoreUrl::S3(l) => l.fmt(f),
        }
    }
}

impl fmt::Display for CatalogUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CatalogUrl::Sqlite(p) => write!(f, "sqlite://{}", p.display()),
            CatalogUrl::Postgres(url) => f.write_str(&stasis_catalog::redact_url(url)),
        }
    }
}

impl CatalogUrl {
    /// Open a connection (and migrate the schema forward).
    fn connect(&self) -> Result<Catalog> {
        match self {
            CatalogUrl::Sqlite(p) => Ok(Catalog::open(p)?),
            CatalogUrl::Postgres(url) => Ok(Catalog::open_postgres(url)?),
        }
    }

    /// The URL as `repository.json` keeps it (with a password if it was given one).
    fn saved(&self) -> String {
        match self {
            CatalogUrl::Sqlite(_) => self.to_string(),
            CatalogUrl::Postgres(url) => url.clone(),
        }
    }

    /// Whether every host of a fleet may share it.
    pub fn is_shared(&self) -> bool {
        matches!(self, CatalogUrl::Postgres(_))
    }

    /// Bytes the catalog takes where this host can see them (the database and its log).
    fn bytes(&self) -> u64 {
        match self {
            CatalogUrl::Sqlite(p) => {
                let mut wal = p.clone().into_os_string();
                wal.push("-wal");
                [p.clone(), PathBuf::from(wal)]
                    .iter()
                    .filter_map(|f| std::fs::metadata(f).ok())
                    .map(|m| m.len())
                    .sum()
            }
            // On its server, not on this host.
            CatalogUrl::Postgres(_) => 0,
        }
    }
}

impl StoreUrl {
    /// Whether a store is there.
    fn exists(&self, config: &RepoConfig) -> Result<bool> {
        match self {
            StoreUrl::Dir(p) if !p.is_dir() => Ok(false),
            _ => Ok(Store::exists(&*self.backend(config, false)?)?),
        }
    }

    /// The backend, created where it does not exist yet when `create`.
    fn backend(&self, config: &RepoConfig, create: bool) -> Result<Arc<dyn Backend>> {
        match self {
            StoreUrl::Dir(p) => {
                if create {
                    std::fs::create_dir_all(p)
                        .map_err(|e| Error::io(format!("creating {}", p.display()), e))?;
                }
                Ok(Arc::new(LocalBackend::open(p)?))
            }
            StoreUrl::S3(l) => Ok(Arc::new(config.remote(l)?)),
        }
    }
}

/// The host's cache of an object store's pieces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheConfig {
    /// Its directory (default `DIR/cache`).
    pub dir: PathBuf,
    /// Its budget in bytes (default [`DEFAULT_CACHE_BYTES`]).
    pub size: u64,
}

/// The cache budget unless `--cache-size` says otherwise: 10 GiB.
pub const DEFAULT_CACHE_BYTES: u64 = 10 << 30;

/// Which repository to open: its directory on this host (mounts, forks) and where its
/// blocks and catalog are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoConfig {
    /// The repository's directory on this host.
    pub dir: PathBuf,
    /// The blocks.
    pub store: StoreUrl,
    /// The catalog.
    pub catalog: CatalogUrl,
    /// The cache, for a store that is not a local directory.
    pub cache: Option<CacheConfig>,
}

/// `DIR/repository.json`: what a repository that is not the embedded default is made of.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    store: String,
    catalog: String,
    #[serde(default)]
    cache: Option<CacheConfig>,
}

const CONFIG_FILE: &str = "repository.json";

impl RepoConfig {
    /// The embedded default: blocks in `DIR/store`, the catalog in `DIR/catalog.db`.
    pub fn embedded(dir: &Path) -> RepoConfig {
        RepoConfig {
            dir: dir.to_path_buf(),
            store: StoreUrl::Dir(dir.join("store")),
            catalog: CatalogUrl::Sqlite(dir.join("catalog.db")),
            cache: None,
        }
    }

    /// A repository in `dir` with its blocks at `store` and its catalog at `catalog`
    /// (default: `DIR/catalog.db`); a store that is not a local directory gets a cache
    /// (default `DIR/cache`, [`DEFAULT_CACHE_BYTES`]).
    pub fn new(
        dir: &Path,
        store: StoreUrl,
        catalog: Option<CatalogUrl>,
        cache_dir: Option<PathBuf>,
        cache_size: Option<u64>,
    ) -> Result<RepoConfig> {
        let remote = !matches!(store, StoreUrl::Dir(_));
        if !remote && (cache_dir.is_some() || cache_size.is_some()) {
            return Err(Error::Invalid(
                "--cache-dir and --cache-size are for a store in an object store (s3://)".into(),
            ));
        }
        let cache = remote.then(|| CacheConfig {
            dir: cache_dir.unwrap_or_else(|| dir.join("cache")),
            size: cache_size.unwrap_or(DEFAULT_CACHE_BYTES),
        });
        Ok(RepoConfig {
            dir: dir.to_path_buf(),
            store,
            catalog: catalog.unwrap_or_else(|| CatalogUrl::Sqlite(dir.join("catalog.db"))),
            cache,
        })
    }

    /// The repository in `dir`: as its `repository.json` says, or the embedded default.
    pub fn load(dir: &Path) -> Result<RepoConfig> {
        let path = dir.join(CONFIG_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(RepoConfig::embedded(dir));
            }
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        let f: ConfigFile = serde_json::from_str(&text)
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        let mut c = RepoConfig::new(dir, f.store.parse()?, Some(f.catalog.parse()?), None, None)?;
        if f.cache.is_some() {
            c.cache = f.cache;
        }
        Ok(c)
    }

    /// Write `repository.json` (not for the embedded default, which needs none).
    fn save(&self) -> Result<()> {
        if *self == RepoConfig::embedded(&self.dir) {
            return Ok(());
        }
        let f = ConfigFile {
            store: self.store.to_string(),
            catalog: self.catalog.saved(),
            cache: self.cache.clone(),
        };
        let path = self.dir.join(CONFIG_FILE);
        let tmp = self.dir.join(format!("{CONFIG_FILE}.tmp"));
        let text = serde_json::to_string_pretty(&f)
            .map_err(|e| Error::Invalid(format!("encoding {}: {e}", path.display())))?;
        // It may hold the catalog's password: for this host's administrator only.
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()
        };
        write()
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }

    /// The registry of running mounts ([`crate::mounts`]).
    pub fn mounts_dir(&self) -> PathBuf {
        self.dir.join("mounts")
    }

    /// Where forks are written by default (`INSTANCES/TENANT/NAME/`).
    pub fn instances_dir(&self) -> PathBuf {
        self.dir.join("instances")
    }

    /// Whether a repository is there.
    pub fn exists(&self) -> Result<bool> {
        self.store.exists(self)
    }

    /// The backend on object store `l`, with this host's cache and locks.
    fn remote(&self, l: &S3Location) -> Result<RemoteBackend> {
        let cache = self.cache.clone().unwrap_or_else(|| CacheConfig {
            dir: self.dir.join("cache"),
            size: DEFAULT_CACHE_BYTES,
        });
        let pieces = PieceCache::open(&cache.dir, cache.size, PIECE_SIZE)?;
        // With a shared catalog, the locks are in its database, where every host sees
        // them; with a catalog of this host's own, the store is this host's alone (init
        // refuses to join one), so its locks are this host's too.
        let locks: Arc<dyn stasis_store::Locks> = match &self.catalog {
            CatalogUrl::Postgres(url) => Arc::new(crate::PgLocks::new(url, &l.to_string())?),
            CatalogUrl::Sqlite(_) => Arc::new(FileLocks::new(self.dir.join("locks"))),
        };
        Ok(RemoteBackend::new(
            l.client()?,
            l.to_string(),
            &l.prefix,
            pieces,
            locks,
        )?)
    }

    /// The cache's figures, for a repository with one.
    pub fn cache_stats(&self) -> Result<Option<CacheStats>> {
        match &self.store {
            StoreUrl::S3(l) => Ok(Some(self.remote(l)?.cache_stats()?)),
            StoreUrl::Dir(_) => Ok(None),
        }
    }

    /// Empty the cache; false when the repository has none.
    pub fn clear_cache(&self) -> Result<bool> {
        match &self.store {
            StoreUrl::S3(l) => {
                self.remote(l)?.clear_cache()?;
                Ok(true)
            }
            StoreUrl::Dir(_) => Ok(false),
        }
    }
}

/// What to change while opening: the crash tests' fault injection wraps the backend and
/// counts the catalog's writes.
pub trait Hooks: fmt::Debug + Send + Sync {
    /// The backend to use instead of `backend`.
    fn backend(&self, backend: Arc<dyn Backend>) -> Arc<dyn Backend> {
        backend
    }

    /// Called on every catalog connection opened.
    fn catalog(&self, _catalog: &mut Catalog) -> Result<()> {
        Ok(())
    }
}

/// How to open.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// Leave out index files that fail their checks (verify, repair) instead of failing.
    pub damaged: bool,
    /// See [`Hooks`].
    pub hooks: Option<Arc<dyn Hooks>>,
}

/// Opens more connections to a repository's catalog (a server's pool).
#[derive(Clone, Debug)]
pub struct CatalogOpener {
    url: CatalogUrl,
    hooks: Option<Arc<dyn Hooks>>,
}

impl CatalogOpener {
    /// A new connection.
    pub fn open(&self) -> Result<Catalog> {
        let mut c = self.url.connect()?;
        if let Some(h) = &self.hooks {
            h.catalog(&mut c)?;
        }
        Ok(c)
    }
}

/// An open repository: its store and a connection to its catalog.
#[derive(Debug)]
pub struct Repository {
    config: RepoConfig,
    store: Arc<Store>,
    catalog: Catalog,
    opener: CatalogOpener,
}

/// What [`Repository::init_or_join`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Initialised {
    /// Made a new repository.
    Created,
    /// Joined the one another host made in a shared store.
    Joined,
}

/// A store's settings in a message.
fn describe_settings(c: &StoreConfig) -> String {
    format!(
        "blocks disk {} memory {} state {}, compression {}, packs {}, frames {}",
        c.block_sizes.disk,
        c.block_sizes.memory,
        c.block_sizes.state,
        c.compression,
        c.pack_size,
        c.frame_size
    )
}

/// Index files left out when opening with [`OpenOptions::damaged`], with why.
pub type DamagedIndex = Vec<(String, stasis_store::Error)>;

impl Repository {
    /// Create a repository where `config` says, with the store's `store_config`.
    pub fn init(config: &RepoConfig, store_config: StoreConfig) -> Result<Repository> {
        Repository::init_with(config, store_config, &OpenOptions::default())
    }

    /// [`Repository::init`] with options.
    pub fn init_with(
        config: &RepoConfig,
        store_config: StoreConfig,
        opts: &OpenOptions,
    ) -> Result<Repository> {
        Repository::init_or_join(config, Some(store_config), opts).map(|(r, _)| r)
    }

    /// Create the repository `config` names, or join it when its store already holds
    /// one and its catalog is shared (another host made it): the host then takes the
    /// store's settings as they are, and refuses `store_config` if it says otherwise.
    /// A store whose catalog does not know it (its hosts keep their catalog elsewhere)
    /// is never joined. `None` takes the defaults for a new store.
    pub fn init_or_join(
        config: &RepoConfig,
        store_config: Option<StoreConfig>,
        opts: &OpenOptions,
    ) -> Result<(Repository, Initialised)> {
        let taken = || {
            Error::Conflict(format!(
                "a repository already exists at {}",
                config.dir.display()
            ))
        };
        if config.dir.join(CONFIG_FILE).exists() {
            return Err(taken());
        }
        let exists = config.exists()?;
        if exists && !config.catalog.is_shared() {
            if matches!(config.store, StoreUrl::Dir(_)) {
                return Err(taken());
            }
            // Another host's repository: joining it needs a catalog every host shares,
            // or one host's gc would remove the blocks of the other's snapshots.
            return Err(Error::Conflict(format!(
                "{} already holds a repository; this host can join it only with a shared \
                 catalog (--catalog postgres://...), not a catalog of its own ({})",
                config.store, config.catalog
            )));
        }
        std::fs::create_dir_all(&config.dir)
            .map_err(|e| Error::io(format!("creating {}", config.dir.display()), e))?;
        let backend = config.store.backend(config, !exists)?;
        let backend = match &opts.hooks {
            Some(h) => h.backend(backend),
            None => backend,
        };
        let opener = CatalogOpener {
            url: config.catalog.clone(),
            hooks: opts.hooks.clone(),
        };
        let mut catalog = opener.open()?;
        let store_url = config.store.to_string();
        let (store, how) = if exists {
            let store = Store::open(backend)?;
            if let Some(want) = &store_config
                && want != store.config()
            {
                return Err(Error::Conflict(format!(
                    "{store_url} holds a repository with other settings ({}); leave out the \
                     store options (--block-size, --compression, --level, --pack-size, \
                     --frame-size) to join it as it is",
                    describe_settings(store.config())
                )));
            }
            if !catalog.knows_store(&store_url)? {
                return Err(Error::Conflict(format!(
                    "{store_url} holds a repository that the catalog {} does not know: its \
                     hosts keep their catalog elsewhere",
                    config.catalog
                )));
            }
            (store, Initialised::Joined)
        } else {
            // The catalog learns of the store first: a store it does not know is never
            // joined, so an init stopped in between is done again, not joined.
            if config.catalog.is_shared() {
                catalog.claim_store(&store_url)?;
            }
            let store = Store::init(backend, store_config.unwrap_or_default())?;
            (store, Initialised::Created)
        };
        config.save()?;
        Ok((
            Repository {
                config: config.clone(),
                store: Arc::new(store),
                catalog,
                opener,
            },
            how,
        ))
    }

    /// Open the repository `config` names.
    pub fn open(config: &RepoConfig) -> Result<Repository> {
        Repository::open_with(config, &OpenOptions::default()).map(|(r, _)| r)
    }

    /// Open with options; with [`OpenOptions::damaged`], the index files left out.
    pub fn open_with(
        config: &RepoConfig,
        opts: &OpenOptions,
    ) -> Result<(Repository, DamagedIndex)> {
        let missing = || Error::NotFound(format!("no repository at {}", config.dir.display()));
        if matches!(&config.store, StoreUrl::Dir(p) if !p.is_dir()) {
            return Err(missing());
        }
        // One backend for the check and the store (a remote one is a client and a cache).
        let backend = config.store.backend(config, false)?;
        if !Store::exists(&*backend)? {
            return Err(missing());
        }
        let backend = match &opts.hooks {
            Some(h) => h.backend(backend),
            None => backend,
        };
        let context = |e: stasis_store::Error| {
            e.context(format!(
                "opening the repository at {}",
                config.dir.display()
            ))
        };
        let (store, bad) = if opts.damaged {
            Store::open_damaged(backend).map_err(context)?
        } else {
            (Store::open(backend).map_err(context)?, Vec::new())
        };
        Ok((Repository::with(config, store, opts)?, bad))
    }

    fn with(config: &RepoConfig, store: Store, opts: &OpenOptions) -> Result<Repository> {
        let opener = CatalogOpener {
            url: config.catalog.clone(),
            hooks: opts.hooks.clone(),
        };
        Ok(Repository {
            config: config.clone(),
            store: Arc::new(store),
            catalog: opener.open()?,
            opener,
        })
    }

    /// Where it is.
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// The block store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The block store, to share with threads (a server).
    pub fn shared_store(&self) -> Arc<Store> {
        self.store.clone()
    }

    /// The catalog connection.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The catalog connection, to write.
    pub fn catalog_mut(&mut self) -> &mut Catalog {
        &mut self.catalog
    }

    /// The store and the catalog, to write both (create, fork, delete).
    pub fn parts(&mut self) -> (&Store, &mut Catalog) {
        (&self.store, &mut self.catalog)
    }

    /// The store and the catalog connection, to hand to a long-lived reader (a mount).
    pub fn into_parts(self) -> (Arc<Store>, Catalog) {
        (self.store, self.catalog)
    }

    /// Opens more catalog connections.
    pub fn catalog_opener(&self) -> CatalogOpener {
        self.opener.clone()
    }

    /// Bytes the catalog takes where this host sees them.
    pub fn catalog_bytes(&self) -> u64 {
        self.config.catalog.bytes()
    }

    /// Store a snapshot ([`crate::create::create`]).
    pub fn create(
        &mut self,
        req: crate::create::Request,
        progress: &(dyn Fn(crate::create::Progress) + Sync),
    ) -> Result<crate::create::Created> {
        crate::create::create(&self.store, &mut self.catalog, req, progress)
    }

    /// Fork snapshot `spec` into a new VM `new_vm`, its files in `dir`
    /// ([`crate::fork::fork`]).
    pub fn fork(
        &mut self,
        spec: &str,
        new_vm: &str,
        dir: &Path,
        files: &crate::fork::Files,
        actor: &str,
    ) -> Result<(stasis_catalog::Snapshot, crate::fork::Forked)> {
        let snap = self.catalog.resolve(spec)?;
        let forked = crate::fork::fork(
            &self.store,
            &mut self.catalog,
            &snap,
            new_vm,
            dir,
            files,
            actor,
        )?;
        Ok((snap, forked))
    }

    /// Restore instance `vm` to its snapshot `spec` ([`crate::instance::restore`]):
    /// `spec` may also be a snapshot name of the instance's VM.
    pub fn restore_instance(
        &mut self,
        vm: &str,
        spec: &str,
        req: &crate::instance::RestoreRequest<'_>,
    ) -> Result<(stasis_catalog::Snapshot, crate::instance::Restored)> {
        let instance = self
            .catalog
            .instance(vm)?
            .ok_or_else(|| Error::NotFound(format!("no instance {vm:?} (stasis instance add)")))?;
        let snap = match self.catalog.get(spec)? {
            Some(s) => s,
            None if !spec.contains('/') => self
                .catalog
                .resolve(&format!("{}/{spec}", instance.vm.name))?,
            None => self.catalog.resolve(spec)?,
        };
        let restored =
            crate::instance::restore(&self.store, &mut self.catalog, &instance, &snap, req)?;
        Ok((snap, restored))
    }

    /// Restore snapshot `spec`'s files into `dir` ([`crate::restore::restore`]).
    pub fn restore(
        &self,
        spec: &str,
        dir: &Path,
        opts: crate::restore::RestoreOptions,
        progress: &(dyn Fn(crate::restore::RestoreProgress) + Sync),
    ) -> Result<(stasis_catalog::Snapshot, Vec<crate::restore::Restored>)> {
        let snap = self.catalog.resolve(spec)?;
        let files = crate::restore::restore(&self.store, &snap, dir, opts, progress)?;
        Ok((snap, files))
    }

    /// Delete a snapshot or its subtree ([`crate::delete`]).
    pub fn delete(&mut self, spec: &str, recursive: bool, actor: &str) -> Result<Vec<String>> {
        crate::delete(&self.store, &mut self.catalog, spec, recursive, actor)
    }

    /// Collect garbage ([`crate::gc::collect`]).
    pub fn gc(
        &self,
        opts: &stasis_store::GcOptions,
        progress: &dyn Fn(stasis_store::Phase),
    ) -> Result<stasis_store::GcReport> {
        crate::gc::collect(&self.store, &self.catalog, opts, progress)
    }

    /// The space of the whole repository ([`crate::usage::repository_usage`]).
    pub fn usage(&self) -> Result<crate::usage::RepoSpace> {
        let mut u =
            crate::usage::repository_usage(&self.store, &self.catalog, self.catalog_bytes())?;
        u.cache = self.config.cache_stats()?;
        Ok(u)
    }

    /// The space of one snapshot ([`crate::usage::snapshot_usage`]).
    pub fn snapshot_usage(&self, spec: &str) -> Result<crate::usage::SnapshotSpace> {
        crate::usage::snapshot_usage(&self.store, &self.catalog, spec)
    }

    /// Register a mount of this repository at `mountpoint`, so forks find it; the entry
    /// goes when the registration is dropped.
    pub fn register_mount(&self, mountpoint: &Path) -> Result<crate::mounts::Registration> {
        crate::mounts::register(&self.config.mounts_dir(), mountpoint)
    }

    /// The mountpoint of a running `stasis mount` of this repository, if any.
    pub fn running_mount(&self) -> Option<PathBuf> {
        crate::mounts::running_mount(&self.config.mounts_dir())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let s: StoreUrl = "file:///srv/r/store".parse().expect("file url");
        assert_eq!(s, StoreUrl::Dir(PathBuf::from("/srv/r/store")));
        assert_eq!(s.to_string(), "file:///srv/r/store");
        let s: StoreUrl = "/srv/r/store".parse().expect("path");
        assert_eq!(s, StoreUrl::Dir(PathBuf::from("/srv/r/store")));
        let c: CatalogUrl = "sqlite:///srv/r/catalog.db".parse().expect("sqlite url");
        assert_eq!(c.to_string(), "sqlite:///srv/r/catalog.db");
        let s: StoreUrl = "s3://bucket/prefix".parse().expect("s3 url");
        assert_eq!(s.to_string(), "s3://bucket/prefix");
        for bad in ["", "s3://B", "gs://bucket", "file://"] {
            assert!(bad.parse::<StoreUrl>().is_err(), "{bad:?}");
        }
        for bad in ["", "mysql://u@h/db", "sqlite://", "postgres://"] {
            assert!(bad.parse::<CatalogUrl>().is_err(), "{bad:?}");
        }
        // A shared catalog: kept as given (password too), shown without its password.
        let c: CatalogUrl = "postgres://u:secret@h:5432/db"
            .parse()
            .expect("postgres url");
        assert_eq!(
            c,
            CatalogUrl::Postgres("postgres://u:secret@h:5432/db".into())
        );
        assert!(c.is_shared());
        assert_eq!(c.to_string(), "postgres://u:***@h:5432/db");
        assert!(!format!("{c:?}").contains("secret"));
        assert_eq!(c.saved(), "postgres://u:secret@h:5432/db");
        let e = "mysql://u:secret@h/db"
            .parse::<CatalogUrl>()
            .expect_err("refused");
        assert!(!e.to_string().contains("secret"), "{e}");
        let e = RepoConfig::embedded(Path::new("/r"));
        assert_eq!(e.store.to_string(), "file:///r/store");
        assert_eq!(e.catalog.to_string(), "sqlite:///r/catalog.db");
    }

    #[test]
    fn init_open_and_refuse_twice() {
        let d = tempfile::tempdir().expect("tempdir");
        let cfg = RepoConfig::embedded(&d.path().join("repo"));
        assert!(matches!(
            Repository::open(&cfg).map(|_| ()),
            Err(Error::NotFound(_))
        ));
        Repository::init(&cfg, StoreConfig::default()).expect("init");
        assert!(matches!(
            Repository::init(&cfg, StoreConfig::default()).map(|_| ()),
            Err(Error::Conflict(_))
        ));
        let r = Repository::open(&cfg).expect("open");
        assert_eq!(r.catalog().list(None).expect("list").len(), 0);
        assert!(r.catalog_bytes() > 0);
        assert!(r.running_mount().is_none());
    }
}
