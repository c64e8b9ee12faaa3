//! What every request shares: the store, a pool of catalog connections, the limits,
//! and the caller's identity.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use stasis_catalog::Catalog;
use stasis_repo::roots::{Roots, Scope};
use stasis_repo::{CatalogOpener, RepoConfig};
use stasis_store::Store;
use tokio::sync::Semaphore;

use crate::error::ApiError;

/// How the server runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// The repository served.
    pub repo: RepoConfig,
    /// Where to listen (port 0: any free port; the bound address is logged).
    pub listen: SocketAddr,
    /// Where each tenant may name files from, and where its forks go
    /// (`<instances>/<tenant>/<name>/`).
    pub roots: Arc<Roots>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Snapshot creates and forks running at once; more are answered 429.
    pub max_ingests: usize,
}

/// A pool of catalog connections (WAL: readers run in parallel; writers queue on
/// SQLite's lock).
#[derive(Debug)]
pub struct CatalogPool {
    opener: CatalogOpener,
    idle: Mutex<Vec<Catalog>>,
    max_idle: usize,
}

/// A catalog connection borrowed from the pool.
#[derive(Debug)]
pub struct Pooled<'a> {
    pool: &'a CatalogPool,
    cat: Option<Catalog>,
}

impl std::ops::Deref for Pooled<'_> {
    type Target = Catalog;
    fn deref(&self) -> &Catalog {
        // Present from construction until drop.
        self.cat.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl std::ops::DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut Catalog {
        self.cat.as_mut().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.cat.take() {
            let mut idle = self.pool.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < self.pool.max_idle {
                idle.push(c);
            }
        }
    }
}

impl CatalogPool {
    /// A pool that opens connections with `opener`, starting with `first`.
    pub fn new(opener: CatalogOpener, first: Catalog, max_idle: usize) -> CatalogPool {
        CatalogPool {
            opener,
            idle: Mutex::new(vec![first]),
            max_idle,
        }
    }

    /// A connection: an idle one, or a new one.
    pub fn get(&self) -> stasis_repo::Result<Pooled<'_>> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let cat = match idle {
            Some(c) => c,
            None => self.opener.open()?,
        };
        Ok(Pooled {
            pool: self,
            cat: Some(cat),
        })
    }
}

/// The server's shared state.
#[derive(Debug)]
pub struct AppState {
    /// The configuration.
    pub config: Config,
    /// The block store.
    pub store: Arc<Store>,
    /// Catalog connections.
    pub catalogs: CatalogPool,
    /// Permits for creates and forks.
    pub ingests: Arc<Semaphore>,
    /// The OpenAPI document, rendered once.
    pub openapi: String,
}

/// Run `f` on the blocking pool (the store and catalog are synchronous).
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("a worker failed: {e}")))?
}

/// The authenticated caller: a live token's tenant and mode.
#[derive(Clone, Debug)]
pub struct Principal {
    /// The token's id.
    pub token_id: String,
    /// Its tenant.
    pub tenant: String,
    /// Whether it may only read.
    pub read_only: bool,
    /// Whether it may also name files under the server-wide roots.
    pub admin: bool,
}

impl Principal {
    /// What it may name files from.
    pub fn scope(&self) -> Scope<'_> {
        Scope {
            tenant: &self.tenant,
            admin: self.admin,
        }
    }

    /// 403 for a read-only token.
    pub fn require_write(&self) -> Result<(), ApiError> {
        if self.read_only {
            return Err(ApiError::forbidden(
                "this token is read-only; the request changes the repository",
            ));
        }
        Ok(())
    }
}

impl FromRequestParts<Arc<AppState>> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let value = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("no Authorization: Bearer token"))?;
        let value = value
            .to_str()
            .map_err(|_| ApiError::unauthorized("the Authorization header is not text"))?;
        let secret = match value.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim().to_string(),
            _ => {
                return Err(ApiError::unauthorized(
                    "the Authorization header is not Bearer",
                ));
            }
        };
        let st = state.clone();
        let token = blocking(move || Ok(st.catalogs.get()?.authenticate(&secret)?))
            .await?
            .ok_or_else(|| ApiError::unauthorized("unknown or revoked token"))?;
        tracing::Span::current().record("tenant", token.tenant.as_str());
        Ok(Principal {
            token_id: token.id,
            tenant: token.tenant,
            read_only: token.read_only,
            admin: token.admin,
        })
    }
}
