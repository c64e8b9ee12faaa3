//! The handlers. Each checks the caller first (401, then 403 for a write with a
//! read-only token), then finds the snapshot or VM within the caller's tenant (another
//! tenant's is answered exactly as a missing one), then does the work on the blocking
//! pool.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use stasis_catalog::{Catalog, Hypervisor, Kind, ListFilter, Snapshot, Status, validate_name};
use stasis_repo::create::{self, CreateSpec, InputSpec, Paths, Progress};
use stasis_repo::fork::{self, Files};
use stasis_repo::instance;
use stasis_store::PayloadReader;

use crate::api::{
    ApiSchedule, ApiSnapshot, CreateSnapshotRequest, ForkSnapshotRequest, Health, Instance,
    InstanceFile, RestoreSnapshotRequest, SetScheduleRequest, Tags,
};
use crate::error::{ApiError, ErrorBody};
use crate::range::{self, Plan};
use crate::state::{AppState, Principal, blocking};

type AppStateRef = State<Arc<AppState>>;

/// JSON bodies whose rejections are API errors: 400 for bad JSON or fields, 413 for
/// too large, 415 without a JSON content type.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(e) => Err(json_rejection(e)),
        }
    }
}

fn json_rejection(e: JsonRejection) -> ApiError {
    let text = e.body_text();
    match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as Content-Type: application/json",
        ),
        _ => {
            ApiError::bad_request(text).detail("invalid_json", "the body is not the expected JSON")
        }
    }
}

/// A snapshot of the caller's tenant, by id; 404 for a missing or foreign one.
fn own_snapshot(cat: &Catalog, p: &Principal, id: &str) -> Result<Snapshot, ApiError> {
    match cat.get(id)? {
        Some(s) if s.tenant == p.tenant => Ok(s),
        _ => Err(ApiError::no_snapshot(id)),
    }
}

fn location(uri: &str) -> [(header::HeaderName, HeaderValue); 1] {
    [(
        header::LOCATION,
        HeaderValue::from_str(uri).unwrap_or_else(|_| HeaderValue::from_static("/")),
    )]
}

/// Liveness; needs no token.
#[utoipa::path(get, path = "/health", tag = "meta",
    responses((status = 200, description = "The server is up", body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

/// This API's OpenAPI 3.1 document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta", security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object),
        (status = 401, description = "No or bad token", body = ErrorBody),
    ))]
pub async fn openapi(_p: Principal, State(st): AppStateRef) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        st.openapi.clone(),
    )
        .into_response()
}

/// The filters of `GET /snapshots`, from the raw query (so `tags[K]=V` deepObject
/// parameters and repeats can be read and checked).
fn list_filter(query: Option<&str>, p: &Principal) -> Result<ListFilter, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("the query string does not parse: {e}")))?;
    let mut f = ListFilter {
        tenant: Some(p.tenant.clone()),
        ..ListFilter::default()
    };
    let mut seen = std::collections::HashSet::new();
    for (k, v) in pairs {
        if let Some(tag) = k.strip_prefix("tags[").and_then(|t| t.strip_suffix(']')) {
            stasis_catalog::fields::validate_tag(tag, &v)
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            f.tags.push((tag.to_string(), v));
            continue;
        }
        if !seen.insert(k.clone()) {
            return Err(ApiError::bad_request(format!(
                "query parameter {k:?} is given twice"
            )));
        }
        let bad = |e: &dyn std::fmt::Display| ApiError::bad_request(format!("{k}: {e}"));
        match k.as_str() {
            "source_instance_id" => f.vm = Some(v),
            "name" => f.name = Some(v),
            "parent_id" => f.parent_id = Some(v),
            "kind" => f.kind = Some(v.parse::<Kind>().map_err(|e| bad(&e))?),
            "status" => f.status = Some(v.parse::<Status>().map_err(|e| bad(&e))?),
            "expired" => {
                f.expired = match v.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(bad(&"expected true or false")),
                }
            }
            "cursor" => f.after = Some(v),
            "limit" => {
                let n: u64 = v
                    .parse()
                    .map_err(|_| bad(&"expected a whole number from 0 to 1000000"))?;
                if n > 1_000_000 {
                    return Err(bad(&"at most 1000000"));
                }
                f.limit = Some(n);
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {k:?}"
                )));
            }
        }
    }
    Ok(f)
}

/// List the caller's snapshots (a plain JSON array, oldest first). Deleted snapshots
/// are listed only with `status=deleted`.
#[utoipa::path(get, path = "/snapshots", tag = "snapshots", security(("bearerAuth" = [])),
    params(
        ("source_instance_id" = Option<String>, Query, description = "Only this VM's (id or name)"),
        ("kind" = Option<crate::api::KindName>, Query, description = "Only this kind"),
        ("name" = Option<String>, Query, description = "Only snapshots with this name"),
        ("tags" = Option<Tags>, Query, style = DeepObject, explode, description = "Only snapshots with all these tags: `tags[K]=V`, repeatable"),
        ("status" = Option<crate::api::StatusName>, Query, description = "Only this status (stasis)"),
        ("parent_id" = Option<String>, Query, description = "Only children of this snapshot (stasis)"),
        ("expired" = Option<bool>, Query, description = "Only expired snapshots (stasis)"),
        ("limit" = Option<u32>, Query, minimum = 0, maximum = 1000000, description = "At most this many; when a page is full, a `Link` header (`rel=\"next\"`) names the next"),
        ("cursor" = Option<String>, Query, description = "Where the page starts: the opaque value of the previous page's `Link rel=\"next\"`"),
    ),
    responses(
        (status = 200, description = "Matching snapshots, oldest first (ties in creation order)", body = Vec<ApiSnapshot>,
            headers(("Link" = String, description = "`<URL>; rel=\"next\"` when `limit` filled the page"))),
        (status = 400, description = "Bad filter", body = ErrorBody),
        (status = 401, description = "No or bad token", body = ErrorBody),
    ))]
pub async fn list_snapshots(
    p: Principal,
    State(st): AppStateRef,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let f = list_filter(q.as_deref(), &p)?;
    let limit = f.limit;
    let snaps = blocking(move || {
        let cat = st.catalogs.get()?;
        if let Some(c) = &f.after {
            // Another tenant's snapshot is no place to continue from.
            own_snapshot(&cat, &p, c)
                .map_err(|_| ApiError::bad_request("cursor: not one this list gave"))?;
        }
        Ok(cat.list_filtered(&f)?)
    })
    .await?;
    let mut headers = HeaderMap::new();
    if let (Some(n), Some(last)) = (limit, snaps.last())
        && n > 0
        && snaps.len() as u64 == n
    {
        let mut pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(q.as_deref().unwrap_or("")).unwrap_or_default();
        pairs.retain(|(k, _)| k != "cursor");
        pairs.push(("cursor".into(), last.id.clone()));
        let query = serde_urlencoded::to_string(&pairs).unwrap_or_default();
        if let Ok(v) = HeaderValue::from_str(&format!("</snapshots?{query}>; rel=\"next\"")) {
            headers.insert(header::LINK, v);
        }
    }
    Ok((
        headers,
        Json(snaps.iter().map(ApiSnapshot::from).collect::<Vec<_>>()),
    )
        .into_response())
}

/// `GET /snapshots/{id}`'s query.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
pub struct GetQuery {
    /// Answer a deleted snapshot (kept until gc, with `status: deleted`) instead of 404.
    #[serde(default)]
    pub include_deleted: bool,
}

/// One snapshot. A deleted one is gone (404), as hypeman's clients expect, unless
/// `include_deleted=true` asks for it (kept until gc, with `status: deleted`).
#[utoipa::path(get, path = "/snapshots/{id}", tag = "snapshots", security(("bearerAuth" = [])),
    params(("id" = String, Path, description = "Snapshot id"), GetQuery),
    responses(
        (status = 200, description = "The snapshot", body = ApiSnapshot),
        (status = 400, description = "A bad query", body = ErrorBody),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 404, description = "No such snapshot in the caller's tenant (or deleted)", body = ErrorBody),
    ))]
pub async fn get_snapshot(
    p: Principal,
    State(st): AppStateRef,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<ApiSnapshot>, ApiError> {
    let q: GetQuery = serde_urlencoded::from_str(q.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("query: {e}")))?;
    let s = blocking(move || {
        let s = own_snapshot(&*st.catalogs.get()?, &p, &id)?;
        if s.status == stasis_catalog::Status::Deleted && !q.include_deleted {
            return Err(ApiError::no_snapshot(&id));
        }
        Ok(s)
    })
    .await?;
    Ok(Json(ApiSnapshot::from(&s)))
}

/// Delete a snapshot. One with children is consolidated: its children are re-parented
/// to its parent (no data moves) and it is marked deleted.
#[utoipa::path(delete, path = "/snapshots/{id}", tag = "snapshots", security(("bearerAuth" = [])),
    params(("id" = String, Path, description = "Snapshot id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 403, description = "Read-only token", body = ErrorBody),
        (status = 404, description = "No such live snapshot in the caller's tenant", body = ErrorBody),
    ))]
pub async fn delete_snapshot(
    p: Principal,
    State(st): AppStateRef,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    p.require_write()?;
    blocking(move || {
        let mut cat = st.catalogs.get()?;
        let s = own_snapshot(&cat, &p, &id)?;
        if s.status == Status::Deleted {
            return Err(ApiError::no_snapshot(&id));
        }
        stasis_repo::delete(&st.store, &mut cat, &s.id, false, &actor(&p))?;
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn actor(p: &Principal) -> String {
    format!("token:{}", p.token_id)
}

fn parse_opt<T: std::str::FromStr>(what: &str, v: Option<&str>) -> Result<Option<T>, ApiError>
where
    T::Err: std::fmt::Display,
{
    v.map(|s| {
        s.parse::<T>()
            .map_err(|e| ApiError::bad_request(format!("{what}: {e}")))
    })
    .transpose()
}

/// hypeman's compression object as the spec's text: `enabled: false` is `none`; an
/// enabled one without an algorithm is zstd. The algorithm itself must be zstd or lz4
/// (`none` is said with `enabled: false`).
fn compression(
    c: Option<&crate::api::CompressionConfig>,
) -> Result<(Option<String>, Option<i32>), ApiError> {
    let Some(c) = c else { return Ok((None, None)) };
    if !c.enabled {
        return Ok((Some("none".into()), None));
    }
    match c.algorithm.as_deref() {
        None => Ok((Some("zstd".into()), c.level)),
        Some(a @ ("zstd" | "lz4")) => Ok((Some(a.into()), c.level)),
        Some(a) => Err(ApiError::bad_request(format!(
            "compression.algorithm {a:?}: expected zstd or lz4"
        ))),
    }
}

/// The request as a [`CreateSpec`] (its payloads, if any, still paths).
fn create_spec(
    st: &AppState,
    p: &Principal,
    vm: &str,
    r: CreateSnapshotRequest,
) -> Result<CreateSpec, ApiError> {
    let (algorithm, level) = compression(r.compression.as_ref())?;
    let inputs = r
        .payloads
        .into_iter()
        .enumerate()
        .map(|(i, ps)| InputSpec {
            label: format!("payloads[{i}]"),
            role: ps.role,
            name: Some(ps.name),
            path: ps.path.into(),
            format: ps.format,
        })
        .collect();
    let spec = CreateSpec {
        vm: vm.to_string(),
        name: r.name,
        kind: Some(r.kind),
        hypervisor: r.source_hypervisor,
        power_state: r.power_state,
        quiesced: r.quiesced.unwrap_or(false),
        description: r.description,
        created_by: actor(p),
        make_current: r.make_current.unwrap_or(true),
        datastore: r
            .datastore
            .or_else(|| Some(st.config.repo.dir.display().to_string())),
        expires: r.expires_at,
        tags: r.tags.map(|t| t.0).unwrap_or_default(),
        compression: algorithm,
        level,
        parent: r.parent_id,
        diff: r.diff.unwrap_or(false),
        tenant: Some(p.tenant.clone()),
        inputs,
    };
    Ok(spec)
}

fn too_many() -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_ingests",
        "as many snapshot creates and forks as this server allows are running; retry",
    )
}

/// Create a snapshot of an instance (VM, by id or name). With hypeman's body alone (no
/// `payloads`), of a registered instance (`stasis instance add`): its files, between its
/// hooks. With `payloads`, of those files on the server's host (a new name makes a VM
/// of the caller's tenant). Every file is opened beneath the caller's roots.
#[utoipa::path(post, path = "/instances/{id}/snapshots", tag = "snapshots", security(("bearerAuth" = [])),
    params(("id" = String, Path, description = "VM id or name")),
    request_body = CreateSnapshotRequest,
    responses(
        (status = 201, description = "Created", body = ApiSnapshot),
        (status = 400, description = "Bad input: JSON, name, enum, tag, path", body = ErrorBody),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 403, description = "Read-only token (forbidden), or a payload path this token may not use (path_refused)", body = ErrorBody),
        (status = 404, description = "The VM (an instance, without payloads) or the parent is not the caller's", body = ErrorBody),
        (status = 500, description = "An instance's snapshot hook failed (nothing recorded)", body = ErrorBody),
        (status = 409, description = "The VM already has a snapshot of that name", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 429, description = "Too many creates and forks running", body = ErrorBody),
    ))]
pub async fn create_snapshot(
    p: Principal,
    State(st): AppStateRef,
    Path(vm): Path<String>,
    body: Result<ApiJson<CreateSnapshotRequest>, ApiError>,
) -> Result<Response, ApiError> {
    p.require_write()?;
    let ApiJson(body) = body?;
    let permit = st
        .ingests
        .clone()
        .try_acquire_owned()
        .map_err(|_| too_many())?;
    let snap = blocking(move || {
        let _permit = permit;
        let mut cat = st.catalogs.get()?;
        let roots = Paths::Roots(&st.config.roots, p.scope());
        if body.payloads.is_empty() {
            // hypeman's body: the server knows the instance's files.
            let Some(instance) = cat.instance_of(&vm, Some(&p.tenant))? else {
                return Err(match cat.vm(&vm)? {
                    Some(v) if v.tenant == p.tenant => ApiError::bad_request(format!(
                        "VM {vm} has no registered files and the request names no payloads"
                    )),
                    _ => ApiError::no_instance(&vm),
                });
            };
            let spec = create_spec(&st, &p, &instance.vm.name, body)?;
            if let Some(pid) = &spec.parent {
                own_snapshot(&cat, &p, pid)?;
            }
            let (store, cat) = (&st.store, &mut *cat);
            let created =
                instance::snapshot(store, cat, &instance, spec, roots, &|_: Progress| {})?;
            return Ok(created.snapshot);
        }
        // The VM: the caller's (by id or name), or a new one named `vm`.
        let vm_name = match cat.vm(&vm)? {
            Some(v) if v.tenant == p.tenant => v.name,
            Some(_) => return Err(ApiError::no_instance(&vm)),
            None => {
                validate_name(&vm).map_err(|e| ApiError::bad_request(e.to_string()))?;
                vm.clone()
            }
        };
        let req = create_spec(&st, &p, &vm_name, body)?.into_request(st.store.config(), roots)?;
        if let Some(pid) = &req.parent {
            own_snapshot(&cat, &p, pid)?;
        }
        let created = create::create(&st.store, &mut cat, req, &|_: Progress| {})?;
        Ok(created.snapshot)
    })
    .await?;
    let uri = format!("/snapshots/{}", snap.id);
    Ok((
        StatusCode::CREATED,
        location(&uri),
        Json(ApiSnapshot::from(&snap)),
    )
        .into_response())
}

/// Fork a new instance from a snapshot, as `stasis fork` does: with a running `stasis
/// mount`, disks are qcow2 overlays on it and other files links into it; otherwise
/// sparse copies. Files go to the server's instances directory.
#[utoipa::path(post, path = "/snapshots/{id}/fork", tag = "snapshots", security(("bearerAuth" = [])),
    params(("id" = String, Path, description = "Snapshot id")),
    request_body = ForkSnapshotRequest,
    responses(
        (status = 201, description = "Forked", body = Instance),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 403, description = "Read-only token", body = ErrorBody),
        (status = 404, description = "No such snapshot in the caller's tenant", body = ErrorBody),
        (status = 409, description = "Name taken, or a target state or hypervisor this snapshot cannot have", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 429, description = "Too many creates and forks running", body = ErrorBody),
    ))]
pub async fn fork_snapshot(
    p: Principal,
    State(st): AppStateRef,
    Path(id): Path<String>,
    body: Result<ApiJson<ForkSnapshotRequest>, ApiError>,
) -> Result<Response, ApiError> {
    p.require_write()?;
    let ApiJson(body) = body?;
    validate_name(&body.name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let target_hypervisor =
        parse_opt::<Hypervisor>("target_hypervisor", body.target_hypervisor.as_deref())?;
    let target_state = match body.target_state.as_deref() {
        None => None,
        Some(s @ ("Stopped" | "Standby" | "Running")) => Some(s.to_string()),
        Some(s) => {
            return Err(ApiError::bad_request(format!(
                "target_state {s:?}: expected Stopped, Standby or Running"
            )));
        }
    };
    let permit = st
        .ingests
        .clone()
        .try_acquire_owned()
        .map_err(|_| too_many())?;
    let inst = blocking(move || {
        let _permit = permit;
        let mut cat = st.catalogs.get()?;
        let snap = own_snapshot(&cat, &p, &id)?;
        if snap.status == Status::Deleted {
            return Err(ApiError::no_snapshot(&id));
        }
        let state = match (target_state.as_deref(), snap.kind) {
            (Some("Running"), _) => {
                return Err(ApiError::conflict(
                    "stasis prepares an instance's files and starts no VM: target_state Running is not possible here; fork Stopped or Standby and start it with the hypervisor",
                ));
            }
            (Some("Standby"), Kind::Stopped) => {
                return Err(ApiError::conflict(
                    "a Stopped snapshot holds no memory: it cannot give a Standby instance",
                ));
            }
            (Some(s), _) => s.to_string(),
            (None, k) => k.as_str().to_string(),
        };
        let hypervisor = match (target_hypervisor, snap.kind) {
            (Some(h), Kind::Standby) if Some(h) != snap.source_hypervisor => {
                return Err(ApiError::conflict(
                    "a Standby snapshot resumes only on the hypervisor that wrote it",
                ));
            }
            (Some(h), _) => Some(h),
            (None, _) => snap.source_hypervisor,
        };
        // Each tenant's forks go to its own directory, which only it can name files in.
        let dir = st.config.roots.instance_dir(&p.tenant).join(&body.name);
        let files = match stasis_repo::mounts::running_mount(&st.config.repo.mounts_dir()) {
            Some(m) => Files::Mount(m),
            None => Files::Copy,
        };
        let forked = fork::fork(
            &st.store,
            &mut cat,
            &snap,
            &body.name,
            &dir,
            &files,
            &actor(&p),
        )?;
        Ok(Instance {
            id: forked.vm.id,
            name: forked.vm.name,
            image: format!("stasis:snapshots/{}", snap.id),
            state,
            created_at: forked.vm.created_at,
            hypervisor: hypervisor.map(|h| h.as_str().to_string()),
            tags: Tags(BTreeMap::new()),
            forked_from: Some(snap.id),
            restored_from: None,
            dir: Some(dir.display().to_string()),
            files: instance_files(forked.files),
        })
    })
    .await?;
    Ok((StatusCode::CREATED, Json(inst)).into_response())
}

fn instance_files(files: Vec<fork::Prepared>) -> Vec<InstanceFile> {
    files
        .into_iter()
        .map(|f| InstanceFile {
            name: f.name,
            role: f.role.name().into(),
            path: f.path.display().to_string(),
            how: f.how.into(),
            backing: f.backing.map(|b| b.display().to_string()),
        })
        .collect()
}

/// Restore a registered instance (`stasis instance add`) to one of its snapshots, as
/// hypeman's: its files are put back at its paths (disks as qcow2 overlays on a running
/// `stasis mount` when its disk is qcow2, otherwise sparse copies; memory and state as
/// copies its hypervisor restores from), between its pre- and post-restore hooks, and
/// the snapshot becomes its current one.
#[utoipa::path(post, path = "/instances/{id}/snapshots/{snapshot_id}/restore", tag = "snapshots", security(("bearerAuth" = [])),
    params(
        ("id" = String, Path, description = "Instance (VM) id or name"),
        ("snapshot_id" = String, Path, description = "Snapshot id"),
    ),
    request_body = RestoreSnapshotRequest,
    responses(
        (status = 200, description = "Restored", body = Instance),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 403, description = "Read-only token, or an instance path outside the caller's roots (path_refused)", body = ErrorBody),
        (status = 404, description = "No such instance or snapshot in the caller's tenant", body = ErrorBody),
        (status = 409, description = "Not this instance's snapshot, or a target state or hypervisor it cannot have", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 429, description = "Too many creates, forks and restores running", body = ErrorBody),
        (status = 500, description = "A restore hook failed (the pre-restore hook: nothing changed; the post-restore hook: the files are restored)", body = ErrorBody),
    ))]
pub async fn restore_instance(
    p: Principal,
    State(st): AppStateRef,
    Path((vm, id)): Path<(String, String)>,
    body: Result<ApiJson<RestoreSnapshotRequest>, ApiError>,
) -> Result<Json<Instance>, ApiError> {
    p.require_write()?;
    let ApiJson(body) = body?;
    let target_state =
        parse_opt::<instance::TargetState>("target_state", body.target_state.as_deref())?;
    let target_hypervisor =
        parse_opt::<Hypervisor>("target_hypervisor", body.target_hypervisor.as_deref())?;
    let permit = st
        .ingests
        .clone()
        .try_acquire_owned()
        .map_err(|_| too_many())?;
    let inst = blocking(move || {
        let _permit = permit;
        let mut cat = st.catalogs.get()?;
        let i = own_instance(&cat, &p, &vm)?;
        let snap = own_snapshot(&cat, &p, &id)?;
        if snap.status == Status::Deleted {
            return Err(ApiError::no_snapshot(&id));
        }
        let files = match stasis_repo::mounts::running_mount(&st.config.repo.mounts_dir()) {
            Some(m) => Files::Mount(m),
            None => Files::Copy,
        };
        let who = actor(&p);
        let req = instance::RestoreRequest {
            target_state,
            target_hypervisor,
            files: &files,
            paths: Paths::Roots(&st.config.roots, p.scope()),
            actor: &who,
        };
        let r = instance::restore(&st.store, &mut cat, &i, &snap, &req)?;
        if let Some(why) = &r.post_restore_error {
            tracing::warn!(vm = %i.vm.name, snapshot = %snap.id, "{why}");
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "hook_failed",
                "the instance's files are restored, but its post-restore hook failed (the server's log says why)",
            ));
        }
        Ok(Instance {
            id: i.vm.id,
            name: i.vm.name,
            image: format!("stasis:snapshots/{}", snap.id),
            state: r.state.to_string(),
            created_at: i.vm.created_at,
            hypervisor: Some(r.hypervisor.as_str().to_string()),
            tags: Tags(BTreeMap::new()),
            forked_from: None,
            restored_from: Some(snap.id),
            dir: None,
            files: instance_files(r.files),
        })
    })
    .await?;
    Ok(Json(inst))
}

/// The instance `vm` of the caller's tenant; 404 for a missing or foreign one.
fn own_instance(
    cat: &Catalog,
    p: &Principal,
    vm: &str,
) -> Result<stasis_catalog::Instance, ApiError> {
    cat.instance_of(vm, Some(&p.tenant))?
        .ok_or_else(|| ApiError::no_instance(vm))
}

/// Set an instance's snapshot schedule (replacing one it has), as hypeman's. `stasis
/// serve` runs it: each run snapshots the instance as `POST /instances/{id}/snapshots`
/// does, then deletes the scheduled snapshots its retention no longer keeps (never one
/// made otherwise; one with children is consolidated into them).
#[utoipa::path(put, path = "/instances/{id}/snapshot-schedule", tag = "schedules", security(("bearerAuth" = [])),
    params(("id" = String, Path, description = "Instance (VM) id or name")),
    request_body = SetScheduleRequest,
    responses(
        (status = 200, description = "The schedule", body = ApiSchedule),
        (status = 400, description = "Bad interval, retention, prefix or metadata", body = ErrorBody),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 403, description = "Read-only token", body = ErrorBody),
        (status = 404, description = "No such instance in the caller's tenant", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
    ))]
pub async fn put_schedule(
    p: Principal,
    State(st): AppStateRef,
    Path(vm): Path<String>,
    body: Result<ApiJson<SetScheduleRequest>, ApiError>,
) -> Result<Json<ApiSchedule>, ApiError> {
    p.require_write()?;
    let ApiJson(body) = body?;
    let new = stasis_catalog::NewSchedule {
        interval: body.interval,
        max_count: body.retention.max_count,
        max_age: body.retention.max_age,
        name_prefix: body.name_prefix,
        metadata: body.metadata.map(|t| t.0).unwrap_or_default(),
    };
    let s = blocking(move || {
        let mut cat = st.catalogs.get()?;
        let i = own_instance(&cat, &p, &vm)?;
        Ok(cat.set_schedule(&i.vm.id, &new, jiff::Timestamp::now())?)
    })
    .await?;
    Ok(Json(ApiSchedule::from(&s)))
}

/// An instance's snapshot schedule.
#[utoipa::path(get, path = "/instances/{id}/snapshot-schedule", tag = "schedules", security(("bearerAuth" = [])),
    params(("id" = String, Path, description = "Instance (VM) id or name")),
    responses(
        (status = 200, description = "The schedule", body = ApiSchedule),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 404, description = "No such instance in the caller's tenant, or it has no schedule", body = ErrorBody),
    ))]
pub async fn get_schedule(
    p: Principal,
    State(st): AppStateRef,
    Path(vm): Path<String>,
) -> Result<Json<ApiSchedule>, ApiError> {
    let s = blocking(move || {
        let cat = st.catalogs.get()?;
        let i = own_instance(&cat, &p, &vm)?;
        cat.schedule(&i.vm.id)?
            .ok_or_else(|| ApiError::not_found(format!("instance {vm:?} has no snapshot schedule")))
    })
    .await?;
    Ok(Json(ApiSchedule::from(&s)))
}

/// Remove an instance's snapshot schedule; the snapshots it made stay.
#[utoipa::path(delete, path = "/instances/{id}/snapshot-schedule", tag = "schedules", security(("bearerAuth" = [])),
    params(("id" = String, Path, description = "Instance (VM) id or name")),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 403, description = "Read-only token", body = ErrorBody),
        (status = 404, description = "No such instance in the caller's tenant, or it has no schedule", body = ErrorBody),
    ))]
pub async fn delete_schedule(
    p: Principal,
    State(st): AppStateRef,
    Path(vm): Path<String>,
) -> Result<StatusCode, ApiError> {
    p.require_write()?;
    blocking(move || {
        let mut cat = st.catalogs.get()?;
        let i = own_instance(&cat, &p, &vm)?;
        cat.remove_schedule(&i.vm.id).map_err(|e| match e.kind() {
            stasis_catalog::ErrorKind::NotFound => {
                ApiError::not_found(format!("instance {vm:?} has no snapshot schedule"))
            }
            _ => e.into(),
        })
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Ranges at most this long are read in one piece; longer ones are streamed.
const ONE_PIECE: u64 = 4 << 20;
const CHUNK: usize = 1 << 20;

/// Read `buf.len()` bytes at `offset` (the reader finds blocks stored since startup
/// and reads ahead of a streamed body).
fn read_exact(r: &PayloadReader, offset: u64, buf: &mut [u8]) -> Result<(), ApiError> {
    let n = r.read_at(offset, buf)?;
    if n != buf.len() {
        return Err(ApiError::internal(
            "the payload is shorter than its manifest says",
        ));
    }
    Ok(())
}

fn payload_headers(h: &mut HeaderMap, size: u64, etag: &str) {
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=31536000, immutable"),
    );
}

/// A payload's manifest and entity tag, checked to be the caller's.
fn find_payload(
    st: &AppState,
    p: &Principal,
    id: &str,
    name: &str,
) -> Result<(stasis_store::Manifest, String), ApiError> {
    let cat = st.catalogs.get()?;
    let s = own_snapshot(&cat, p, id)?;
    let pl = s
        .payloads
        .iter()
        .find(|pl| pl.name == name)
        .ok_or_else(|| ApiError::not_found(format!("snapshot {id:?} has no payload {name:?}")))?;
    let root = match pl.manifest.root {
        stasis_store::BlockRef::Data(b) => b.to_hex(),
        stasis_store::BlockRef::Hole => "hole".into(),
        stasis_store::BlockRef::Zero => "zero".into(),
    };
    // Payloads never change: the manifest root and size name the bytes.
    let etag = format!("\"{root}-{}\"", pl.manifest.size);
    Ok((pl.manifest, etag))
}

/// A payload's bytes; `Range: bytes=...` gives a part (206), so another host can read
/// a disk or memory file lazily.
#[utoipa::path(get, path = "/snapshots/{id}/payloads/{name}", tag = "payloads", security(("bearerAuth" = [])),
    params(
        ("id" = String, Path, description = "Snapshot id"),
        ("name" = String, Path, description = "Payload file name"),
        ("Range" = Option<String>, Header, description = "`bytes=FIRST-LAST`, `bytes=FIRST-` or `bytes=-SUFFIX`"),
        ("If-Range" = Option<String>, Header, description = "Honour Range only if the ETag still matches"),
    ),
    responses(
        (status = 200, description = "The whole payload", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "The requested range", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 401, description = "No or bad token", body = ErrorBody),
        (status = 404, description = "No such snapshot in the caller's tenant, or no such payload", body = ErrorBody),
        (status = 416, description = "The range lies outside the payload", body = ErrorBody),
    ))]
pub async fn get_payload(
    p: Principal,
    State(st): AppStateRef,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let st2 = st.clone();
    let (manifest, etag) = blocking(move || find_payload(&st2, &p, &id, &name)).await?;
    let size = manifest.size;
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .is_none_or(|v| v.to_str().is_ok_and(|v| v == etag));
    let range_hdr = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .filter(|_| if_range_ok);
    let (status, start, end) = match range::plan(range_hdr, size) {
        Plan::Full => (StatusCode::OK, 0, size),
        Plan::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end),
        Plan::Unsatisfiable => return Err(ApiError::range_not_satisfiable(size)),
    };
    let len = end - start;
    let body = if len <= ONE_PIECE {
        let store = st.store.clone();
        let bytes = blocking(move || {
            let r = PayloadReader::new(store, manifest)?;
            let mut buf = vec![0u8; len as usize];
            read_exact(&r, start, &mut buf)?;
            Ok(Bytes::from(buf))
        })
        .await?;
        Body::from(bytes)
    } else {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        let store = st.store.clone();
        tokio::task::spawn_blocking(move || {
            let r = match PayloadReader::new(store, manifest) {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                    return;
                }
            };
            let mut pos = start;
            while pos < end {
                let n = (end - pos).min(CHUNK as u64) as usize;
                let mut buf = vec![0u8; n];
                let item = read_exact(&r, pos, &mut buf)
                    .map(|()| Bytes::from(buf))
                    .map_err(|e| std::io::Error::other(e.to_string()));
                let failed = item.is_err();
                // A closed channel: the client went away.
                if tx.blocking_send(item).is_err() || failed {
                    return;
                }
                pos += n as u64;
            }
        });
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    payload_headers(resp.headers_mut(), len, &etag);
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1))
    {
        resp.headers_mut().insert(header::CONTENT_RANGE, v);
    }
    Ok(resp)
}

/// A payload's size (`Content-Length`) and entity tag, without its bytes.
#[utoipa::path(head, path = "/snapshots/{id}/payloads/{name}", tag = "payloads", security(("bearerAuth" = [])),
    params(
        ("id" = String, Path, description = "Snapshot id"),
        ("name" = String, Path, description = "Payload file name"),
    ),
    responses(
        (status = 200, description = "Headers only: Content-Length is the payload's size"),
        (status = 401, description = "No or bad token"),
        (status = 404, description = "No such snapshot in the caller's tenant, or no such payload"),
    ))]
pub async fn head_payload(
    p: Principal,
    State(st): AppStateRef,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (manifest, etag) = blocking(move || find_payload(&st, &p, &id, &name)).await?;
    let mut resp = Response::new(Body::empty());
    payload_headers(resp.headers_mut(), manifest.size, &etag);
    Ok(resp)
}

/// Unknown paths.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

/// A known path with another method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}
