//! The REST API (DESIGN §8): JSON over a unix socket for the local CLI, and over TCP with a
//! bearer token for other nodes and tools. Handlers only read the applied state or submit
//! changes through the cluster, which forwards them to the leader.
//!
//! | route | does |
//! |---|---|
//! | `GET /v1/cluster/status` | cluster id, leader, term, members, quorum as this node sees them |
//! | `POST /v1/cluster/init` `{name}` | start a one-node cluster; answers a join token |
//! | `POST /v1/cluster/join` `{token}` | join the cluster the token names |
//! | `GET /v1/cluster/token`, `GET /v1/cluster/api-token` | a join token; the TCP bearer token |
//! | `POST /v1/cluster/remove` `{node}` | remove a member by id or name |
//! | `GET`, `PUT /v1/cluster/options` `{scrub_interval_s, replica_timeout_s}` | cluster-wide settings: the scrub schedule, the replica timeout |
//! | `GET /v1/nodes` | every node with role, liveness, stats and fault-domain labels |
//! | `GET /v1/topology[?node=N]` | each node's labels with the source of each |
//! | `POST /v1/topology/tag` `{node, set, clear}` | manual labels of any member, through Raft |
//! | `POST /v1/topology/refresh` | run this node's detection and read its topology file again |
//! | `GET /v1/kv/{ns}`, `PUT`/`GET`/`DELETE /v1/kv/{ns}/{key}` | small metadata |
//! | `GET /v1/drives`, `POST /v1/drives` `{path, force}` | this node's disks; add one to a pool |
//! | `POST /v1/drives/benchmark` `{path}` | re-measure a disk, read-only |
//! | `POST /v1/drives/remove` `{drive}` | a drive leaves: its replicas built elsewhere first |
//! | `POST /v1/drives/replace` `{old, new, force}` | the same, onto a new disk in its place |
//! | `GET /v1/pools` | pools with class, drives, use and chunk |
//! | `GET /v1/provision` | every pool's capacity, use, provisioned size and zone/rack |
//! | `/v1/volumes...` | volumes and snapshots (see [`volumes`]) |
//! | `GET /v1/stats`, `GET /v1/volumes/{vol}/stats` | volume I/O counted on this node (see [`stats`]) |
//! | `PUT /v1/volumes/{vol}/limits` | a live volume's IOPS and bandwidth limits (see [`limits`]) |
//! | `GET /metrics` | Prometheus text (no token needed over TCP) |
//!
//! | `GET /openapi.json` | this API's OpenAPI 3.1 document (no token needed over TCP) |
//!
//! Errors are `{code, message, field}` ([`error::ErrorBody`]); `code` is one of `no_quorum`
//! (503: a majority of the voters does not answer; never on a one-node cluster), `timeout`
//! (504: a change took too long for another reason, such as a busy node, and may still be
//! applied), `unknown_node`, `last_member`, `already_member`, `not_in_cluster`, `bad_token`,
//! `join_refused`, `unreachable`, `rejected`, `bad_request`, `not_found`, `conflict`,
//! `unauthorized`, `method_not_allowed`, `node`, `internal`; `field` names the request field at
//! fault when there is one.

pub mod attach;
pub mod client;
pub mod drive_leave;
pub mod error;
pub mod extract;
pub mod ha;
pub mod limits;
pub mod openapi;
pub mod plugin;
pub mod pools;
pub mod snapshots;
pub mod stats;
pub mod topology;
pub mod volumes;

use crate::cluster::{Cluster, ClusterError, Op};
use crate::store::state::{check_kv_name, MAX_KV_VALUE};
use crate::store::types::ClusterOptions;
use crate::store::Command;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, Method, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
pub use error::{ApiError, ErrorBody};
pub use extract::{JsonBody, Path, Query};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Largest request body, in bytes: a KV value at its limit plus room for the JSON around it.
pub const MAX_BODY: usize = MAX_KV_VALUE * 2 + 4096;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{op} {path}: {source}")]
    Socket {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("listen on {addr}: {source}")]
    Tcp {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// Storage limits the daemon was configured with.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// How many times its capacity a pool may have provisioned.
    pub overcommit: f64,
    /// Benchmark thresholds of the drive classes.
    pub thresholds: crate::pool::class::Thresholds,
    /// The attach lease: how long a forced attach waits for the node it took the volume
    /// from to have fenced itself.
    pub attach_lease: std::time::Duration,
}

/// What the handlers work with.
#[derive(Clone)]
pub struct AppState {
    pub cluster: Arc<Cluster>,
    pub reconciler: Arc<crate::reconcile::service::Reconciler>,
    pub config: Policy,
    /// Where this node sits, as it finds out itself.
    pub topology: Arc<crate::cluster::topology::NodeTopology>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InitRequest {
    pub name: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InitResponse {
    pub cluster_id: String,
    pub token: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// A join token is a credential: hidden from `Debug`.
    pub token: crate::store::types::Secret,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JoinResponse {
    pub cluster_id: String,
    pub leader: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoveRequest {
    /// Node id or name.
    pub node: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KvValue {
    pub value: String,
}

/// The answer to a write: it was committed and applied.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Applied {
    pub result: String,
}

impl Applied {
    fn new() -> Json<Applied> {
        Json(Applied {
            result: "applied".into(),
        })
    }
}

/// `PUT /v1/cluster/options`: every cluster-wide setting, replacing what is there.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OptionsRequest {
    /// Seconds between scheduled raid checks of each attached replicated volume (60 to
    /// 366 days); null or absent turns the schedule off.
    #[serde(default)]
    pub scrub_interval_s: Option<u64>,
    /// Seconds a leg may stay stale before a new one is built elsewhere (10 to 30 days);
    /// null or absent: 600.
    #[serde(default)]
    pub replica_timeout_s: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RemoveResponse {
    pub removed: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenResponse {
    pub token: String,
}

/// The routes with their OpenAPI operations, and the document they make.
fn documented() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    use utoipa::OpenApi;
    let (router, doc) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(status))
        .routes(routes!(init))
        .routes(routes!(join))
        .routes(routes!(token))
        .routes(routes!(api_token))
        .routes(routes!(remove))
        .routes(routes!(options, set_options))
        .routes(routes!(nodes))
        .routes(routes!(topology::show))
        .routes(routes!(topology::tag))
        .routes(routes!(topology::refresh))
        .routes(routes!(drives, pools::add))
        .routes(routes!(drive_benchmark))
        .routes(routes!(drive_leave::remove))
        .routes(routes!(drive_leave::replace))
        .routes(routes!(pools::list))
        .routes(routes!(pools::provision))
        .routes(routes!(volumes::list, volumes::create))
        .routes(routes!(volumes::inspect, volumes::resize, volumes::delete))
        .routes(routes!(volumes::mount))
        .routes(routes!(volumes::unmount))
        .routes(routes!(attach::attach))
        .routes(routes!(attach::detach))
        .routes(routes!(attach::check))
        .routes(routes!(ha::update))
        .routes(routes!(ha::set_replica_timeout))
        .routes(routes!(limits::set))
        .routes(routes!(stats::one))
        .routes(routes!(stats::all))
        .routes(routes!(snapshots::clone))
        .routes(routes!(snapshots::restore))
        .routes(routes!(snapshots::list, snapshots::create))
        .routes(routes!(snapshots::delete))
        .routes(routes!(kv_list))
        .routes(routes!(kv_put, kv_get, kv_delete))
        .routes(routes!(metrics))
        .split_for_parts();
    (router, openapi::document(doc))
}

/// The routes, without authentication (the unix socket's mode guards it).
fn routes(state: AppState) -> Router {
    let (router, doc) = documented();
    let doc: Arc<str> = doc
        .to_pretty_json()
        .expect("an OpenAPI document always serializes")
        .into();
    router
        .route(
            openapi::DOCUMENT,
            get(move || async move {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    doc.to_string(),
                )
            }),
        )
        .fallback(no_route)
        .method_not_allowed_fallback(no_method)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// A path no route has: a 404 in the error body, not an empty one.
async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route {method} {}", uri.path()))
}

/// A route asked with a method it does not have.
async fn no_method(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{} does not take {method}", uri.path()))
}

/// Serves the API on a unix socket with mode 0660, replacing a stale socket file.
pub async fn serve_unix(state: AppState, path: &FsPath) -> Result<(), ServeError> {
    let listener = bind_unix(path)?;
    let app = routes(state);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the unix socket API stopped");
        }
    });
    Ok(())
}

/// A unix socket listening at `path` with mode 0660, replacing a stale socket file.
pub(crate) fn bind_unix(path: &FsPath) -> Result<tokio::net::UnixListener, ServeError> {
    let err = |op, source| ServeError::Socket {
        op,
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err("create the directory of", e))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err("remove the old socket", e)),
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(|e| err("bind", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| err("set mode 0660 on", e))?;
    Ok(listener)
}

/// Serves the API on TCP; every route but `/metrics` and the OpenAPI document needs the
/// cluster's bearer token.
pub async fn serve_tcp(state: AppState, addr: std::net::SocketAddr) -> Result<(), ServeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Tcp { addr, source })?;
    let app = routes(state.clone()).layer(middleware::from_fn_with_state(state, require_token));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the TCP API stopped");
        }
    });
    Ok(())
}

async fn require_token(
    State(s): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if matches!(req.uri().path(), "/metrics" | openapi::DOCUMENT) {
        return Ok(next.run(req).await);
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match (given, s.cluster.api_token()) {
        (Some(g), Some(t)) if constant_time_eq(g.as_bytes(), t.as_bytes()) => {
            Ok(next.run(req).await)
        }
        _ => Err(ApiError::Unauthorized),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[utoipa::path(
    get,
    path = "/v1/cluster/status",
    operation_id = "cluster_status",
    tag = "cluster",
    summary = "The cluster as this node sees it: id, leader, term, members, quorum",
    responses((status = 200, description = "The status", body = crate::cluster::view::Status))
)]
async fn status(State(s): State<AppState>) -> ApiResult<crate::cluster::view::Status> {
    Ok(Json(s.cluster.status()))
}

#[utoipa::path(
    post,
    path = "/v1/cluster/init",
    operation_id = "cluster_init",
    tag = "cluster",
    summary = "Start a one-node cluster; answers a join token",
    request_body = InitRequest,
    responses((status = 200, description = "The new cluster and a join token", body = InitResponse))
)]
async fn init(
    State(s): State<AppState>,
    JsonBody(req): JsonBody<InitRequest>,
) -> ApiResult<InitResponse> {
    let token = s.cluster.init(&req.name).await?;
    let cluster_id = s.cluster.cluster_id().unwrap_or_default();
    Ok(Json(InitResponse { cluster_id, token }))
}

#[utoipa::path(
    post,
    path = "/v1/cluster/join",
    operation_id = "cluster_join",
    tag = "cluster",
    summary = "Join the cluster a token names",
    request_body = JoinRequest,
    responses((status = 200, description = "Joined", body = JoinResponse))
)]
async fn join(
    State(s): State<AppState>,
    JsonBody(req): JsonBody<JoinRequest>,
) -> ApiResult<JoinResponse> {
    let accepted = s.cluster.join(req.token.expose()).await?;
    Ok(Json(JoinResponse {
        cluster_id: accepted.cluster_id,
        leader: accepted.leader.to_string(),
    }))
}

/// `?ttl=SECS`: how long the join token is valid (default 24 h, at most 30 days).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TokenQuery {
    pub ttl: Option<u64>,
}

#[utoipa::path(
    get,
    path = "/v1/cluster/token",
    operation_id = "cluster_token",
    tag = "cluster",
    summary = "A join token",
    params(TokenQuery),
    responses((status = 200, description = "The token", body = TokenResponse))
)]
async fn token(State(s): State<AppState>, Query(q): Query<TokenQuery>) -> ApiResult<TokenResponse> {
    use crate::cluster::token::{DEFAULT_TTL_SECS, MAX_TTL_SECS};
    let ttl = q.ttl.unwrap_or(DEFAULT_TTL_SECS);
    if !(1..=MAX_TTL_SECS).contains(&ttl) {
        return Err(ApiError::BadRequest(format!(
            "ttl: {ttl} s is out of range; a join token is valid for 1 to {MAX_TTL_SECS} s (30 days)"
        )));
    }
    Ok(Json(TokenResponse {
        token: s.cluster.token_for(ttl)?,
    }))
}

/// The TCP API's bearer token. Over TCP only a caller that has it already gets it; the unix
/// socket's mode keeps it to root and the socket's group.
#[utoipa::path(
    get,
    path = "/v1/cluster/api-token",
    operation_id = "cluster_api_token",
    tag = "cluster",
    summary = "The TCP API bearer token",
    responses((status = 200, description = "The token", body = TokenResponse))
)]
async fn api_token(State(s): State<AppState>) -> ApiResult<TokenResponse> {
    let token = s.cluster.api_token().ok_or(ClusterError::NotInCluster)?;
    Ok(Json(TokenResponse { token }))
}

#[utoipa::path(
    post,
    path = "/v1/cluster/remove",
    operation_id = "cluster_remove",
    tag = "cluster",
    summary = "Remove a member by id or name",
    request_body = RemoveRequest,
    responses((status = 200, description = "Removed", body = RemoveResponse))
)]
async fn remove(
    State(s): State<AppState>,
    JsonBody(req): JsonBody<RemoveRequest>,
) -> ApiResult<RemoveResponse> {
    if s.cluster.cluster_id().is_none() {
        return Err(ClusterError::NotInCluster.into());
    }
    let id = s.cluster.resolve_node(&req.node)?;
    s.cluster.submit(Op::Remove(id)).await?;
    Ok(Json(RemoveResponse {
        removed: id.to_string(),
    }))
}

#[utoipa::path(
    get,
    path = "/v1/cluster/options",
    operation_id = "cluster_options",
    tag = "cluster",
    summary = "Cluster-wide settings",
    responses((status = 200, description = "The settings", body = ClusterOptions))
)]
async fn options(State(s): State<AppState>) -> ApiResult<ClusterOptions> {
    Ok(Json(s.cluster.state().read(|st| st.options.clone())))
}

/// Checked here too, so that bad input is a 400 naming the field even without a quorum.
#[utoipa::path(
    put,
    path = "/v1/cluster/options",
    operation_id = "cluster_set_options",
    tag = "cluster",
    summary = "Replace the cluster-wide settings",
    request_body = OptionsRequest,
    responses((status = 200, description = "The settings", body = ClusterOptions))
)]
async fn set_options(
    State(s): State<AppState>,
    JsonBody(req): JsonBody<OptionsRequest>,
) -> ApiResult<ClusterOptions> {
    if s.cluster.cluster_id().is_none() {
        return Err(ClusterError::NotInCluster.into());
    }
    let options = ClusterOptions {
        scrub_interval_s: req.scrub_interval_s,
        replica_timeout_s: req.replica_timeout_s,
    };
    options.validate().map_err(ApiError::BadRequest)?;
    let cmd = Command::SetOptions {
        options: options.clone(),
    };
    match s.cluster.submit_and_apply(Op::Command(cmd)).await {
        Err(ClusterError::Rejected(why)) => return Err(ApiError::BadRequest(why)),
        other => other.map(drop).map_err(ApiError::from)?,
    }
    Ok(Json(options))
}

#[utoipa::path(
    get,
    path = "/v1/nodes",
    operation_id = "node_list",
    tag = "nodes",
    summary = "Every node with role, liveness, stats and fault-domain labels",
    responses((status = 200, description = "The nodes", body = Vec<crate::cluster::view::NodeView>))
)]
async fn nodes(State(s): State<AppState>) -> ApiResult<Vec<crate::cluster::view::NodeView>> {
    Ok(Json(s.cluster.nodes()))
}

/// This node's whole disks and every labelled block device, probed off the async runtime
/// (sysfs, libblkid, labels, exclusive opens), each judged by its label against the store:
/// a member of which pool, unclaimed, foreign or damaged.
#[utoipa::path(
    get,
    path = "/v1/drives",
    operation_id = "drive_list",
    tag = "drives",
    summary = "This node's disks, each judged by its label",
    responses((status = 200, description = "The disks", body = Vec<crate::pool::drive::DriveView>))
)]
async fn drives(State(s): State<AppState>) -> ApiResult<Vec<crate::pool::drive::DriveView>> {
    let owner = crate::pool::drive::Owner {
        cluster: s.cluster.cluster_id().unwrap_or_default(),
        node: s.cluster.id(),
        members: s.cluster.state().read(pools::member_index),
    };
    tokio::task::spawn_blocking(move || crate::pool::drive::local_drives(&owner))
        .await
        .map_err(|e| ApiError::Node(format!("listing drives: {e}")))?
        .map(Json)
        .map_err(|e| ApiError::Node(format!("listing drives: {e}")))
}

/// Which drive to benchmark.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BenchmarkRequest {
    #[schema(value_type = String)]
    pub path: PathBuf,
}

/// Re-measures one of this node's disks (read-only; a few seconds), off the async runtime.
#[utoipa::path(
    post,
    path = "/v1/drives/benchmark",
    operation_id = "drive_benchmark",
    tag = "drives",
    summary = "Re-measure a disk, read-only",
    request_body = BenchmarkRequest,
    responses((status = 200, description = "The measurement", body = crate::pool::drive::DriveBenchmark))
)]
async fn drive_benchmark(
    JsonBody(req): JsonBody<BenchmarkRequest>,
) -> ApiResult<crate::pool::drive::DriveBenchmark> {
    let path = req.path;
    tokio::task::spawn_blocking(move || crate::pool::drive::benchmark_local(&path))
        .await
        .map_err(|e| ApiError::Node(format!("benchmark: {e}")))?
        .map(Json)
        // The disk named cannot be measured (too small, unreadable): the request's problem.
        .map_err(pools::drive_error)
}

fn check_kv(ns: &str, key: Option<&str>) -> Result<(), ApiError> {
    check_kv_name("namespace", ns).map_err(ApiError::BadRequest)?;
    if let Some(k) = key {
        check_kv_name("key", k).map_err(ApiError::BadRequest)?;
    }
    Ok(())
}

#[utoipa::path(
    put,
    path = "/v1/kv/{ns}/{key}",
    operation_id = "kv_put",
    tag = "kv",
    summary = "Set a key",
    params(
        ("ns" = String, Path, description = "The namespace: 1 to 64 of a-z A-Z 0-9 . _ -"),
        ("key" = String, Path, description = "The key: 1 to 64 of a-z A-Z 0-9 . _ -")
    ),
    request_body = KvValue,
    responses((status = 200, description = "Committed and applied", body = Applied))
)]
async fn kv_put(
    State(s): State<AppState>,
    Path((ns, key)): Path<(String, String)>,
    JsonBody(v): JsonBody<KvValue>,
) -> ApiResult<Applied> {
    check_kv(&ns, Some(&key))?;
    if v.value.len() > MAX_KV_VALUE {
        return Err(ApiError::BadRequest(format!(
            "value: {} bytes, the limit is {MAX_KV_VALUE}",
            v.value.len()
        )));
    }
    if s.cluster.cluster_id().is_none() {
        return Err(ClusterError::NotInCluster.into());
    }
    s.cluster
        .submit(Op::Command(Command::KvPut {
            ns,
            key,
            value: v.value,
        }))
        .await?;
    Ok(Applied::new())
}

#[utoipa::path(
    get,
    path = "/v1/kv/{ns}/{key}",
    operation_id = "kv_get",
    tag = "kv",
    summary = "Read a key",
    params(
        ("ns" = String, Path, description = "The namespace: 1 to 64 of a-z A-Z 0-9 . _ -"),
        ("key" = String, Path, description = "The key: 1 to 64 of a-z A-Z 0-9 . _ -")
    ),
    responses((status = 200, description = "The value", body = KvValue))
)]
async fn kv_get(
    State(s): State<AppState>,
    Path((ns, key)): Path<(String, String)>,
) -> ApiResult<KvValue> {
    check_kv(&ns, Some(&key))?;
    s.cluster
        .state()
        .read(|st| st.kv.get(&ns).and_then(|space| space.get(&key)).cloned())
        .map(|value| Json(KvValue { value }))
        .ok_or_else(|| ApiError::NotFound(format!("key {ns}/{key} does not exist")))
}

#[utoipa::path(
    get,
    path = "/v1/kv/{ns}",
    operation_id = "kv_list",
    tag = "kv",
    summary = "Every key of a namespace",
    params(("ns" = String, Path, description = "The namespace: 1 to 64 of a-z A-Z 0-9 . _ -")),
    responses((status = 200, description = "The keys and their values", body = BTreeMap<String, String>))
)]
async fn kv_list(
    State(s): State<AppState>,
    Path(ns): Path<String>,
) -> ApiResult<BTreeMap<String, String>> {
    check_kv(&ns, None)?;
    Ok(Json(
        s.cluster
            .state()
            .read(|st| st.kv.get(&ns).cloned().unwrap_or_default()),
    ))
}

#[utoipa::path(
    delete,
    path = "/v1/kv/{ns}/{key}",
    operation_id = "kv_delete",
    tag = "kv",
    summary = "Delete a key",
    params(
        ("ns" = String, Path, description = "The namespace: 1 to 64 of a-z A-Z 0-9 . _ -"),
        ("key" = String, Path, description = "The key: 1 to 64 of a-z A-Z 0-9 . _ -")
    ),
    responses((status = 200, description = "Committed and applied", body = Applied))
)]
async fn kv_delete(
    State(s): State<AppState>,
    Path((ns, key)): Path<(String, String)>,
) -> ApiResult<Applied> {
    check_kv(&ns, Some(&key))?;
    if s.cluster.cluster_id().is_none() {
        return Err(ClusterError::NotInCluster.into());
    }
    s.cluster
        .submit(Op::Command(Command::KvDelete { ns, key }))
        .await?;
    Ok(Applied::new())
}

#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "metrics",
    summary = "Prometheus text; no token needed over TCP",
    security(()),
    responses((status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain"))
)]
async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.cluster.metrics().render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::FromRequest;
    use axum::http::StatusCode;
    use serde::de::DeserializeOwned;

    /// What a handler taking `T` answers to `body`: taken, or the status and message.
    async fn read<T: DeserializeOwned>(body: &str) -> Result<T, (StatusCode, String)> {
        let req = Request::builder()
            .method("POST")
            .uri("/")
            .header(header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from(body.to_owned()))
            .unwrap();
        JsonBody::<T>::from_request(req, &())
            .await
            .map(|JsonBody(v)| v)
            .map_err(|e| (e.status_and_code().0, e.to_string()))
    }

    #[test]
    fn a_timeout_is_not_reported_as_no_quorum() {
        let code = |e: ClusterError| ApiError::Cluster(e).status_and_code();
        assert_eq!(
            code(ClusterError::Timeout("slow".into())),
            (StatusCode::GATEWAY_TIMEOUT, "timeout")
        );
        assert_eq!(
            code(ClusterError::NoQuorum("gone".into())),
            (StatusCode::SERVICE_UNAVAILABLE, "no_quorum")
        );
    }

    #[tokio::test]
    async fn unknown_fields_are_refused_by_name() {
        let ok = r#"{"options": {"name": "a", "size": "1G"}, "secret_key": "pw"}"#;
        assert!(read::<volumes::CreateRequest>(ok).await.is_ok());
        let typo = r#"{"options": {"name": "a", "size": "1G"}, "secret_kee": "pw"}"#;
        assert_eq!(
            read::<volumes::CreateRequest>(typo).await.err(),
            Some((
                StatusCode::BAD_REQUEST,
                "body: secret_kee: unknown field `secret_kee`, expected `options` or `secret_key` at line 1 column 53".into()
            ))
        );
        let typo = r#"{"name": "c", "readonly": true}"#;
        assert_eq!(
            read::<snapshots::CloneRequest>(typo).await.err(),
            Some((
                StatusCode::BAD_REQUEST,
                "body: readonly: unknown field `readonly`, expected one of `name`, `snapshot`, `read_only` at line 1 column 24".into()
            ))
        );
    }

    /// Every request body type refuses a field it does not have.
    #[tokio::test]
    async fn every_request_body_refuses_extra_fields() {
        async fn extra<T: DeserializeOwned>(body: &str) -> String {
            let with = format!("{}, \"x\": 1}}", &body[..body.len() - 1]);
            match read::<T>(&with).await {
                Ok(_) => format!("{with} was taken"),
                Err((status, msg)) => format!("{status} {}", &msg[..msg.find(',').unwrap_or(0)]),
            }
        }
        let want = "400 Bad Request body: x: unknown field `x`";
        assert_eq!(extra::<InitRequest>(r#"{"name":"a"}"#).await, want);
        assert_eq!(extra::<JoinRequest>(r#"{"token":"t"}"#).await, want);
        assert_eq!(extra::<RemoveRequest>(r#"{"node":"n"}"#).await, want);
        assert_eq!(extra::<KvValue>(r#"{"value":"v"}"#).await, want);
        assert_eq!(extra::<BenchmarkRequest>(r#"{"path":"/d"}"#).await, want);
        assert_eq!(
            extra::<pools::AddDriveRequest>(r#"{"path":"/d"}"#).await,
            want
        );
        assert_eq!(
            extra::<volumes::CreateRequest>(r#"{"options":{}}"#).await,
            want
        );
        assert_eq!(
            extra::<volumes::ResizeRequest>(r#"{"size":"1G"}"#).await,
            want
        );
        assert_eq!(
            extra::<volumes::MountRequest>(r#"{"path":null}"#).await,
            want
        );
        assert_eq!(
            extra::<snapshots::SnapshotRequest>(r#"{"name":"s"}"#).await,
            want
        );
        assert_eq!(
            extra::<snapshots::CloneRequest>(r#"{"name":"c"}"#).await,
            want
        );
        assert_eq!(
            extra::<snapshots::RestoreRequest>(r#"{"snapshot":"s"}"#).await,
            want
        );
        // Not JSON at all is a 400 with serde's words too.
        assert_eq!(
            read::<KvValue>("{").await.err(),
            Some((
                StatusCode::BAD_REQUEST,
                "body: EOF while parsing an object at line 1 column 1".into()
            ))
        );
    }
}
