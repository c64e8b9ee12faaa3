//! Which repository the command works on: `--repo`/`STASIS_REPO`, or the embedded
//! default. Opening it is [`stasis_repo::Repository`]'s job.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use stasis_repo::{DamagedIndex, Initialised, OpenOptions, RepoConfig, Repository};
use stasis_store::StoreConfig;

/// Global options.
#[derive(Debug)]
pub struct Context {
    /// `--repo`/`STASIS_REPO`.
    pub repo: Option<PathBuf>,
    /// `--json`.
    pub json: bool,
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

/// The hooks of the crash tests' fault injection, when built in and asked for.
fn options(damaged: bool) -> OpenOptions {
    #[cfg(feature = "faults")]
    let hooks = crate::faults::hooks();
    #[cfg(not(feature = "faults"))]
    let hooks = None;
    OpenOptions { damaged, hooks }
}

impl Context {
    /// The repository's configuration (its directory resolved, once it exists, so
    /// that paths derived from it compare as the kernel sees them).
    pub fn config(&self) -> Result<RepoConfig> {
        let path = self.path()?;
        let path = std::fs::canonicalize(&path).unwrap_or(path);
        Ok(RepoConfig::load(&path)?)
    }

    /// Create the embedded default repository with `store`.
    pub fn init(&self, store: StoreConfig) -> Result<Repository> {
        let path = self.path()?;
        let path = std::fs::canonicalize(&path).unwrap_or(path);
        Ok(Repository::init_with(
            &RepoConfig::embedded(&path),
            store,
            &options(false),
        )?)
    }

    /// Create the repository `config` describes with `store` (the defaults when
    /// `None`), or join it when another host made it in a shared store.
    pub fn init_at(
        &self,
        config: &RepoConfig,
        store: Option<StoreConfig>,
    ) -> Result<(Repository, Initialised)> {
        Ok(Repository::init_or_join(config, store, &options(false))?)
    }

    /// Open the repository; the default one is created on first use.
    pub fn open(&self) -> Result<Repository> {
        self.open_with(false).map(|(r, _)| r)
    }

    /// Open a possibly damaged repository (verify, repair): index files that fail
    /// their checks are left out and returned.
    pub fn open_damaged(&self) -> Result<(Repository, DamagedIndex)> {
        self.open_with(true)
    }

    fn open_with(&self, damaged: bool) -> Result<(Repository, DamagedIndex)> {
        let config = self.config()?;
        // Opened at once (one look for the store, not two: on an object store each is
        // a client and requests).
        match Repository::open_with(&config, &options(damaged)) {
            Err(stasis_repo::Error::NotFound(_)) if self.repo.is_some() => {
                let p = config.dir.display();
                bail!("no repository at {p} (create one with `stasis --repo {p} init`)");
            }
            Err(stasis_repo::Error::NotFound(_)) => {
                Ok((self.init(StoreConfig::default())?, Vec::new()))
            }
            r => Ok(r?),
        }
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
