//! # stasis-server
//!
//! The hypeman-compatible Snapshots HTTP API over a stasis repository (axum on tokio;
//! the store and catalog stay synchronous and run on tokio's blocking pool).
//!
//! - `GET /snapshots` (filters `source_instance_id`, `kind`, `name`, `tags[K]=V`,
//!   `status`, `parent_id`, `expired`, `limit`), `GET`/`DELETE /snapshots/{id}`,
//!   `POST /instances/{id}/snapshots` (hypeman's body alone: a registered instance's
//!   files, between its hooks, [`stasis_repo::instance`]; or `payloads`, files on the
//!   server's host; either way opened under the caller's tenant's roots:
//!   [`stasis_repo::roots`]), `POST /snapshots/{id}/fork`
//!   (into `INSTANCES/TENANT/NAME/`), `GET`/`HEAD
//!   /snapshots/{id}/payloads/{name}` with `Range`, `GET /health`, `GET /openapi.json`
//!   (OpenAPI 3.1, generated from the handlers and types in this crate).
//! - `PUT`/`GET`/`DELETE /instances/{id}/snapshot-schedule`: hypeman's schedules, run
//!   by the server itself (a task that wakes when one is due; the schedules and their
//!   next runs live in the catalog, so they survive a restart).
//! - Every route but `/health` needs `Authorization: Bearer <token>` (see
//!   `stasis token`). A token sees only its tenant's VMs and snapshots: another
//!   tenant's are answered exactly as missing ones (404). A read-only token gets 403 on
//!   writes. A payload path the caller may not use, for whatever reason, gets one
//!   answer: 403 `path_refused`, "payload path refused".
//! - Errors are `{code, message, details}`; client mistakes are 4xx, never 500. A failed
//!   snapshot hook is 500 `hook_failed`, its output in the server's log only.
//! - SIGTERM or SIGINT stops accepting connections and lets running requests finish;
//!   a snapshot exists only once its catalog row commits, so an interrupted one is
//!   never half-made.

pub mod api;
mod error;
pub mod range;
mod routes;
mod scheduler;
mod state;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use stasis_repo::Repository;
use tokio::sync::Semaphore;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;
use utoipa::OpenApi;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};

pub use error::{ApiError, ErrorBody, ErrorDetail};
pub use state::{AppState, CatalogPool, Config, Principal};

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The repository cannot be opened.
    #[error("opening the repository at {path}: {source}")]
    Repository {
        /// Where.
        path: String,
        /// Why.
        #[source]
        source: stasis_repo::Error,
    },
    /// The address cannot be bound, or serving failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The OpenAPI document.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "stasis Snapshots API",
        description = "The hypeman Snapshots API over a stasis repository, plus what stasis adds: payload reads by range, tenants, filters by status, parent and expiry."
    ),
    paths(
        routes::health,
        routes::openapi,
        routes::list_snapshots,
        routes::get_snapshot,
        routes::delete_snapshot,
        routes::create_snapshot,
        routes::fork_snapshot,
        routes::restore_instance,
        routes::put_schedule,
        routes::get_schedule,
        routes::delete_schedule,
        routes::get_payload,
        routes::head_payload,
    ),
    components(schemas(api::KindName, api::StatusName, api::Tags)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearerAuth",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The OpenAPI document as JSON.
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// The state for serving `repo` (opened by the caller) as `config` says.
pub fn open(config: Config, repo: Repository) -> Result<Arc<AppState>, Error> {
    let opener = repo.catalog_opener();
    let (store, first) = repo.into_parts();
    Ok(Arc::new(AppState {
        ingests: Arc::new(Semaphore::new(config.max_ingests)),
        config,
        store,
        catalogs: CatalogPool::new(opener, first, 16),
        openapi: openapi_json(),
    }))
}

/// The routes, with request logs and the body limit.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/health", get(routes::health))
        .route("/openapi.json", get(routes::openapi))
        .route("/snapshots", get(routes::list_snapshots))
        .route(
            "/snapshots/{id}",
            get(routes::get_snapshot).delete(routes::delete_snapshot),
        )
        .route("/snapshots/{id}/fork", post(routes::fork_snapshot))
        .route("/instances/{id}/snapshots", post(routes::create_snapshot))
        .route(
            "/instances/{id}/snapshots/{snapshot_id}/restore",
            post(routes::restore_instance),
        )
        .route(
            "/instances/{id}/snapshot-schedule",
            get(routes::get_schedule)
                .put(routes::put_schedule)
                .delete(routes::delete_schedule),
        )
        .route(
            "/snapshots/{id}/payloads/{name}",
            get(routes::get_payload).head(routes::head_payload),
        )
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                refuse_oversized(limit, req, next)
            },
        ))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &axum::http::Request<_>| {
                    tracing::info_span!(
                        "request",
                        method = %req.method(),
                        uri = %req.uri(),
                        tenant = tracing::field::Empty,
                    )
                })
                .on_request(|_: &axum::http::Request<_>, _: &tracing::Span| {
                    tracing::info!("started");
                })
                .on_response(
                    DefaultOnResponse::new()
                        .level(Level::INFO)
                        .latency_unit(tower_http::LatencyUnit::Micros),
                ),
        )
        .with_state(state)
}

/// A body whose declared Content-Length is over `limit` gets its 413 at once, before
/// it is read (the body-limit layer only notices while reading, so a client that sends
/// the head and waits for an answer would wait forever).
async fn refuse_oversized(
    limit: usize,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return ApiError::too_large().into_response();
    }
    next.run(req).await
}

/// Serve on `listener` until `shutdown` completes; then stop accepting and let running
/// requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let schedules = tokio::spawn(scheduler::run(state.clone(), stopped));
    let served = axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stop.send(true);
        })
        .await;
    // A run under way finishes (its blocking work is never cut); the loop then ends.
    if let Err(e) = schedules.await {
        tracing::error!("the schedule runner failed: {e}");
    }
    served.map_err(|source| Error::Io {
        context: "serving".into(),
        source,
    })
}

async fn signalled() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot watch for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = term => {}
        r = tokio::signal::ctrl_c() => {
            if let Err(e) = r {
                tracing::error!("cannot watch for SIGINT: {e}");
                std::future::pending::<()>().await;
            }
        }
    }
    tracing::info!("shutting down: no new connections; running requests finish");
}

/// Run the server until SIGTERM or SIGINT (the `stasis serve` command). Logs the bound
/// address as `listening on ADDR`.
pub fn run(config: Config, repo: Repository) -> Result<(), Error> {
    let state = open(config, repo)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            context: "starting the runtime".into(),
            source,
        })?;
    let listen = state.config.listen;
    let result = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| Error::Io {
                context: format!("binding {listen}"),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Io {
            context: "reading the bound address".into(),
            source,
        })?;
        tracing::info!("listening on {addr}");
        eprintln!("stasis: listening on http://{addr}");
        serve(listener, state, signalled()).await
    });
    // Blocking work still running (an ingest whose client left) finishes first.
    rt.shutdown_timeout(Duration::from_secs(3600));
    tracing::info!("stopped");
    result
}
