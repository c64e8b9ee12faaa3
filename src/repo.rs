//! Finding and opening the repository.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use stasis_catalog::Catalog;
use stasis_store::backend::{Backend, LocalBackend};
use stasis_store::config::RepoConfig;
use stasis_store::store::Store;

/// Global options.
#[derive(Debug)]
pub struct Context {
    /// `--repo`/`STASIS_REPO`.
    pub repo: Option<PathBuf>,
    /// `--json`.
    pub json: bool,
}

/// An open repository.
#[derive(Debug)]
pub struct Repo {
    /// Where it is.
    pub path: PathBuf,
    /// Blocks.
    pub store: Store,
    /// Snapshots.
    pub catalog: Catalog,
}

/// The embedded default repository: `$XDG_DATA_HOME/stasis` or `~/.local/share/stasis`.
pub fn default_path() -> Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("stasis"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("neither $HOME nor $XDG_DATA_HOME is set; use --repo")?;
    Ok(PathBuf::from(home).join(".local/share/stasis"))
}

fn store_dir(path: &Path) -> PathBuf {
    path.join("store")
}

/// Create a repository at `path` with `config`.
pub fn init(path: &Path, config: RepoConfig) -> Result<Repo> {
    if store_dir(path).join("config").exists() {
        bail!("a repository already exists at {}", path.display());
    }
    std::fs::create_dir_all(store_dir(path))
        .with_context(|| format!("cannot create {}", path.display()))?;
    let backend: Arc<dyn Backend> = Arc::new(LocalBackend::open(store_dir(path))?);
    let store = Store::init(backend, config)?;
    let catalog = Catalog::open(&path.join("catalog.db"))?;
    Ok(Repo {
        path: path.to_path_buf(),
        store,
        catalog,
    })
}

impl Context {
    /// Open the repository; the default one is created on first use.
    pub fn open(&self) -> Result<Repo> {
        self.open_with(false).map(|(r, _)| r)
    }

    /// Open a possibly damaged repository (verify, repair): index files that fail
    /// their checks are left out and returned.
    pub fn open_damaged(&self) -> Result<(Repo, Vec<(String, stasis_store::Error)>)> {
        self.open_with(true)
    }

    fn open_with(&self, damaged: bool) -> Result<(Repo, Vec<(String, stasis_store::Error)>)> {
        let (path, explicit) = match &self.repo {
            Some(p) => (p.clone(), true),
            None => (default_path()?, false),
        };
        if !store_dir(&path).join("config").exists() {
            if explicit {
                bail!(
                    "no repository at {} (create one with `stasis --repo {} init`)",
                    path.display(),
                    path.display()
                );
            }
            return Ok((init(&path, RepoConfig::default())?, Vec::new()));
        }
        let backend: Arc<dyn Backend> = Arc::new(LocalBackend::open(store_dir(&path))?);
        let backend = crate::faults::KillAt::wrap(backend);
        let (store, bad) = if damaged {
            Store::open_damaged(backend)
        } else {
            Store::open(backend).map(|s| (s, Vec::new()))
        }
        .with_context(|| format!("opening the repository at {}", path.display()))?;
        let mut catalog = Catalog::open(&path.join("catalog.db"))?;
        crate::faults::hook_catalog(&mut catalog)?;
        Ok((
            Repo {
                path,
                store,
                catalog,
            },
            bad,
        ))
    }

    /// The repository path that `open` would use.
    pub fn path(&self) -> Result<PathBuf> {
        match &self.repo {
            Some(p) => Ok(p.clone()),
            None => default_path(),
        }
    }
}

/// Who is acting: `$USER`, `$LOGNAME`, or the numeric uid.
pub fn actor() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        // SAFETY: getuid has no preconditions and cannot fail.
        .unwrap_or_else(|| format!("uid:{}", unsafe { libc::getuid() }))
}
