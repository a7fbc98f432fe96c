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
//! Errors are `{"error": message, "code": code}`; `code` is one of `no_quorum` (503: a
//! majority of the voters does not answer; never on a one-node cluster), `timeout` (504: a
//! change took too long for another reason, such as a busy node, and may still be applied),
//! `unknown_node`, `last_member`, `already_member`, `not_in_cluster`, `bad_token`,
//! `join_refused`, `unreachable`, `rejected`, `bad_request`, `not_found`, `unauthorized`,
//! `internal`.

pub mod attach;
pub mod client;
pub mod drive_leave;
pub mod ha;
pub mod limits;
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
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

/// Largest request body, in bytes: a KV value at its limit plus room for the JSON around it.
pub const MAX_BODY: usize = MAX_KV_VALUE * 2 + 4096;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("a valid bearer token is required (Authorization: Bearer TOKEN)")]
    Unauthorized,
    #[error("{0}")]
    Node(String),
}

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

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Node(_) => (StatusCode::INTERNAL_SERVER_ERROR, "node"),
            ApiError::Cluster(e) => match e {
                ClusterError::NoQuorum(_) => (StatusCode::SERVICE_UNAVAILABLE, "no_quorum"),
                // Not a quorum problem: the change may still be applied, so not a plain 503.
                ClusterError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
                ClusterError::UnknownNode(_) => (StatusCode::NOT_FOUND, "unknown_node"),
                ClusterError::LastMember(_) => (StatusCode::CONFLICT, "last_member"),
                ClusterError::AlreadyMember(_) => (StatusCode::CONFLICT, "already_member"),
                ClusterError::NotInCluster => (StatusCode::CONFLICT, "not_in_cluster"),
                ClusterError::Token(_) => (StatusCode::BAD_REQUEST, "bad_token"),
                ClusterError::JoinRefused(_) => (StatusCode::FORBIDDEN, "join_refused"),
                ClusterError::MemberUnreachable { .. } => (StatusCode::BAD_GATEWAY, "unreachable"),
                ClusterError::Invalid { .. } | ClusterError::Rejected(_) => {
                    (StatusCode::BAD_REQUEST, "rejected")
                }
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        (
            status,
            Json(json!({ "error": self.to_string(), "code": code })),
        )
            .into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// A JSON request body. axum's own `Json` answers a body it cannot read with a plain-text
/// 415/422; this answers 400 `bad_request` with serde's words, led by the path of the unknown,
/// missing or mistyped field, like every other refusal.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(e) => Err(ApiError::BadRequest(format!("body: {}", body_error(&e)))),
        }
    }
}

fn body_error(e: &JsonRejection) -> String {
    use std::error::Error;
    let serde = match e {
        JsonRejection::JsonDataError(d) => d.source(),
        JsonRejection::JsonSyntaxError(d) => d.source(),
        _ => None,
    };
    serde.map_or_else(|| e.body_text(), ToString::to_string)
}

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

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitRequest {
    pub name: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct InitResponse {
    pub cluster_id: String,
    pub token: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// A join token is a credential: hidden from `Debug`.
    pub token: crate::store::types::Secret,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct JoinResponse {
    pub cluster_id: String,
    pub leader: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveRequest {
    /// Node id or name.
    pub node: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvValue {
    pub value: String,
}

/// The answer to a write: it was committed and applied.
#[derive(Debug, Serialize, Deserialize)]
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
#[derive(Debug, Serialize, Deserialize)]
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

#[derive(Debug, Serialize, Deserialize)]
pub struct RemoveResponse {
    pub removed: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TokenResponse {
    pub token: String,
}

/// The routes, without authentication (the unix socket's mode guards it).
fn routes(state: AppState) -> Router {
    Router::new()
        .route("/v1/cluster/status", get(status))
        .route("/v1/cluster/init", post(init))
        .route("/v1/cluster/join", post(join))
        .route("/v1/cluster/token", get(token))
        .route("/v1/cluster/api-token", get(api_token))
        .route("/v1/cluster/remove", post(remove))
        .route("/v1/cluster/options", get(options).put(set_options))
        .route("/v1/nodes", get(nodes))
        .route("/v1/topology", get(topology::show))
        .route("/v1/topology/tag", post(topology::tag))
        .route("/v1/topology/refresh", post(topology::refresh))
        .route("/v1/drives", get(drives).post(pools::add))
        .route("/v1/pools", get(pools::list))
        .route("/v1/provision", get(pools::provision))
        .route("/v1/volumes", get(volumes::list).post(volumes::create))
        .route(
            "/v1/volumes/{vol}",
            get(volumes::inspect)
                .put(volumes::resize)
                .delete(volumes::delete),
        )
        .route("/v1/volumes/{vol}/mount", post(volumes::mount))
        .route("/v1/volumes/{vol}/stats", get(stats::one))
        .route("/v1/volumes/{vol}/limits", put(limits::set))
        .route("/v1/stats", get(stats::all))
        .route("/v1/volumes/{vol}/unmount", post(volumes::unmount))
        .route("/v1/volumes/{vol}/attach", post(attach::attach))
        .route("/v1/volumes/{vol}/detach", post(attach::detach))
        .route("/v1/volumes/{vol}/check", post(attach::check))
        .route("/v1/volumes/{vol}/ha", post(ha::update))
        .route(
            "/v1/volumes/{vol}/replica-timeout",
            put(ha::set_replica_timeout),
        )
        .route("/v1/volumes/{vol}/clone", post(snapshots::clone))
        .route("/v1/volumes/{vol}/restore", post(snapshots::restore))
        .route(
            "/v1/volumes/{vol}/snapshots",
            get(snapshots::list).post(snapshots::create),
        )
        .route(
            "/v1/volumes/{vol}/snapshots/{snap}",
            axum::routing::delete(snapshots::delete),
        )
        .route("/v1/drives/benchmark", post(drive_benchmark))
        .route("/v1/drives/remove", post(drive_leave::remove))
        .route("/v1/drives/replace", post(drive_leave::replace))
        .route("/v1/kv/{ns}", get(kv_list))
        .route(
            "/v1/kv/{ns}/{key}",
            put(kv_put).get(kv_get).delete(kv_delete),
        )
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
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

/// Serves the API on TCP; every route but `/metrics` needs the cluster's bearer token.
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
    if req.uri().path() == "/metrics" {
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

async fn status(State(s): State<AppState>) -> ApiResult<crate::cluster::view::Status> {
    Ok(Json(s.cluster.status()))
}

async fn init(
    State(s): State<AppState>,
    JsonBody(req): JsonBody<InitRequest>,
) -> ApiResult<InitResponse> {
    let token = s.cluster.init(&req.name).await?;
    let cluster_id = s.cluster.cluster_id().unwrap_or_default();
    Ok(Json(InitResponse { cluster_id, token }))
}

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
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenQuery {
    pub ttl: Option<u64>,
}

async fn token(
    State(s): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<TokenQuery>,
) -> ApiResult<TokenResponse> {
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
async fn api_token(State(s): State<AppState>) -> ApiResult<TokenResponse> {
    let token = s.cluster.api_token().ok_or(ClusterError::NotInCluster)?;
    Ok(Json(TokenResponse { token }))
}

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

async fn options(State(s): State<AppState>) -> ApiResult<ClusterOptions> {
    Ok(Json(s.cluster.state().read(|st| st.options.clone())))
}

/// Checked here too, so that bad input is a 400 naming the field even without a quorum.
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

async fn nodes(State(s): State<AppState>) -> ApiResult<Vec<crate::cluster::view::NodeView>> {
    Ok(Json(s.cluster.nodes()))
}

/// This node's whole disks and every labelled block device, probed off the async runtime
/// (sysfs, libblkid, labels, exclusive opens), each judged by its label against the store:
/// a member of which pool, unclaimed, foreign or damaged.
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
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchmarkRequest {
    pub path: PathBuf,
}

/// Re-measures one of this node's disks (read-only; a few seconds), off the async runtime.
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

async fn kv_put(
    State(s): State<AppState>,
    Path((ns, key)): Path<(String, String)>,
    JsonBody(v): JsonBody<KvValue>,
) -> ApiResult<Applied> {
    check_kv(&ns, Some(&key))?;
    if v.value.len() > MAX_KV_VALUE {
        return Err(ApiError::BadRequest(format!(
            "value is {} bytes, the limit is {MAX_KV_VALUE}",
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

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.cluster.metrics().render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
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
