//! Drive and pool routes: `POST /v1/drives` `{path, force}` benchmarks a drive, sorts it into
//! a class and adds it to this node's pool of that class (made on first use, grown online
//! after); `GET /v1/pools` lists the pools with their use; `GET /v1/provision` sets each
//! pool's capacity against what was provisioned out of it.

use super::{ApiError, ApiResult, AppState, JsonBody};
use crate::cluster::Op;
use crate::plan::placement::{provision_status, ClusterView, Provision};
use crate::pool::benchmark::BenchResult;
use crate::pool::drive::{check_addable, inspect, label_standing, DriveError};
use crate::pool::label::DriveUuid;
use crate::reconcile::service::PoolUse;
use crate::store::state::{ClusterState, Command};
use crate::store::types::{Class, Drive, DriveState, NodeId, PoolHealth};
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddDriveRequest {
    #[schema(value_type = String)]
    pub path: PathBuf,
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DriveAdded {
    #[schema(value_type = String)]
    pub path: PathBuf,
    pub id: String,
    pub class: Class,
    pub pool: String,
    pub benchmark: BenchResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemberView {
    pub uuid: String,
    pub path: Option<String>,
    /// online, or failed (it fails I/O; its replicas are built elsewhere), as recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<DriveState>,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Set while it leaves the pool (`drive remove`, `drive replace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaving: Option<crate::store::types::Leaving>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoolView {
    pub id: String,
    pub node: NodeId,
    pub class: Class,
    /// Where its drives were when added (hints).
    pub drives: Vec<String>,
    /// Its members in order: label uuid and, on the pool's node, the path each was last
    /// found at.
    #[serde(default)]
    pub members: Vec<MemberView>,
    /// online, degraded or damaged, as its node last found it.
    #[serde(default)]
    pub health: PoolHealth,
    pub chunk_bytes: u64,
    /// dm-thin zeroes a new chunk before a partial write (fixed when the pool was made).
    #[serde(default = "crate::store::types::kernel_default_on")]
    pub zero_new_chunks: bool,
    /// dm-thin passes discards down to the drives (the same).
    #[serde(default = "crate::store::types::kernel_default_on")]
    pub discard_passdown: bool,
    pub capacity: u64,
    /// From the last reconcile pass on the pool's node; none elsewhere.
    pub usage: Option<PoolUse>,
    pub near_full: Option<String>,
    pub volumes: usize,
}

/// `GET /v1/provision`: every pool of the cluster with what it holds, what was promised out
/// of it and where it sits (`pxd cluster provision-status`).
#[utoipa::path(
    get,
    path = "/v1/provision",
    operation_id = "provision_status",
    tag = "pools",
    summary = "Every pool's capacity, use, provisioned size and zone/rack",
    responses((status = 200, description = "Every pool", body = Vec<Provision>))
)]
pub async fn provision(State(s): State<AppState>) -> ApiResult<Vec<Provision>> {
    let (online, seen) = s.reconciler.liveness_and_pools();
    Ok(Json(s.cluster.state().read(|st| {
        provision_status(&ClusterView {
            state: st,
            online: &online,
            seen: &seen,
            overcommit: s.config.overcommit,
        })
    })))
}

#[utoipa::path(
    get,
    path = "/v1/pools",
    operation_id = "pool_list",
    tag = "pools",
    summary = "Pools with class, drives, use and chunk",
    responses((status = 200, description = "The pools", body = Vec<PoolView>))
)]
pub async fn list(State(s): State<AppState>) -> ApiResult<Vec<PoolView>> {
    let last = s.reconciler.last();
    let me = s.cluster.id();
    Ok(Json(s.cluster.state().read(|st| {
        st.pools
            .values()
            .map(|p| {
                let usage = last.pools.get(&p.id).copied().filter(|_| p.node == me);
                PoolView {
                    id: p.id.clone(),
                    node: p.node,
                    class: p.class,
                    drives: p.drive_paths.clone(),
                    members: p
                        .drives
                        .iter()
                        .map(|d| MemberView {
                            state: st.drives.get(d).map(|x| x.state),
                            note: st.drives.get(d).and_then(|x| x.note.clone()),
                            leaving: st.drives.get(d).and_then(|x| x.leaving.clone()),
                            uuid: d.clone(),
                            path: last
                                .members
                                .get(d)
                                .filter(|_| p.node == me)
                                .map(|path| path.display().to_string()),
                        })
                        .collect(),
                    health: p.health.clone(),
                    chunk_bytes: p.chunk_sectors * 512,
                    zero_new_chunks: p.zero_new_chunks,
                    discard_passdown: p.discard_passdown,
                    capacity: usage.map_or(p.capacity, |u| u.data_total),
                    near_full: usage.and_then(|u| u.near_full(&s.reconciler.full)),
                    usage,
                    volumes: st.volumes_placed_on(&p.id).count(),
                }
            })
            .collect()
    })))
}

/// A drive the request names that cannot be taken or measured: 409 if it is a member of a
/// pool already, else 400 naming the path.
pub(super) fn drive_error(e: DriveError) -> ApiError {
    match e {
        DriveError::Inspect { .. } => ApiError::BadRequest(format!("path: {e}")),
        DriveError::Member { .. } => ApiError::Conflict(e.to_string()),
        other => ApiError::BadRequest(other.to_string()),
    }
}

/// The smallest drive pxd takes: its label area, the smallest metadata and some data.
pub const MIN_DRIVE_BYTES: u64 = 64 << 20;

/// One drive add at a time on a node: the second of two adds of one disk then finds the
/// first one recorded (or its label) and is refused with the reason.
pub(super) static ADDING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long an add may take: a benchmark of a few seconds and a few reconcile passes, with a
/// wide margin for a slow host.
const ADD_DEADLINE: std::time::Duration = std::time::Duration::from_secs(600);

/// Adds a drive. The checks that can refuse it read the disk only (in use, signatures,
/// labels, size), so a refused add records nothing. The add is then recorded, and this
/// node's reconciler finishes it: measures the drive into a class (which gives it the next
/// member slot of the node's pool of that class), wipes its head, writes its label and grows
/// the pool onto it. A crash at any point is finished by the next pass.
#[utoipa::path(
    post,
    path = "/v1/drives",
    operation_id = "drive_add",
    tag = "drives",
    summary = "Add a disk to a pool",
    request_body = AddDriveRequest,
    responses((status = 200, description = "The add, recorded", body = DriveAdded))
)]
pub async fn add(
    State(s): State<AppState>,
    JsonBody(req): JsonBody<AddDriveRequest>,
) -> ApiResult<DriveAdded> {
    let Some(cluster) = s.cluster.cluster_id() else {
        return Err(crate::cluster::ClusterError::NotInCluster.into());
    };
    let path = req.path.clone();
    let _one = ADDING.lock().await;
    let shown = path.display().to_string();
    let drive = new_drive(&s, &cluster, &path, req.force).await?;
    let id = drive.id.clone();
    match s
        .cluster
        .submit_and_apply(Op::Command(Command::BeginDriveAdd { drive }))
        .await
    {
        Err(crate::cluster::ClusterError::Rejected(why)) => return Err(ApiError::Conflict(why)),
        other => other.map(drop)?,
    }
    let started = std::time::Instant::now();
    let added = loop {
        let failures = s.reconciler.pass().await.map_err(ApiError::Node)?;
        let d = s.cluster.state().read(|st| st.drives.get(&id).cloned());
        match d {
            Some(d) if d.state == DriveState::Online => break d,
            Some(d) if d.state == DriveState::Failed => {
                let why = d.note.unwrap_or_default();
                return Err(ApiError::Conflict(format!("drive {shown}: {why}")));
            }
            None => {
                return Err(ApiError::Node(format!(
                    "drive {id} vanished from the store"
                )))
            }
            Some(_) if started.elapsed() > ADD_DEADLINE => {
                let why: Vec<String> = failures.into_iter().map(|f| f.error).collect();
                return Err(ApiError::Node(format!(
                    "the add of drive {shown} is recorded, but not finished after {} s: {} (the reconciler keeps trying)",
                    ADD_DEADLINE.as_secs(),
                    why.join("; ")
                )));
            }
            Some(_) => {}
        }
    };
    // One more pass grows (or first brings up) the pool onto the new member.
    super::volumes::record(&s, None, None, &format!("drive {shown}")).await?;
    Ok(Json(DriveAdded {
        path: req.path,
        id,
        class: added
            .class
            .ok_or_else(|| ApiError::Node("the drive was recorded without its class".into()))?,
        pool: added.pool,
        benchmark: added
            .benchmark
            .map(|b| b.to_result())
            .ok_or_else(|| ApiError::Node("the drive was recorded without its benchmark".into()))?,
    }))
}

/// The disk at `path` checked as a new drive of this node (reading it only: in use,
/// signatures, labels, size), and its add record, not yet submitted.
pub(super) async fn new_drive(
    s: &AppState,
    cluster: &str,
    path: &std::path::Path,
    force: bool,
) -> Result<Drive, ApiError> {
    let me = s.cluster.id();
    if !path.is_absolute() {
        return Err(ApiError::BadRequest(format!(
            "path: {} must be an absolute device path",
            path.display()
        )));
    }
    let shown = path.display().to_string();
    let members = s.cluster.state().read(member_index);
    let (cluster, at) = (cluster.to_owned(), path.to_owned());
    let info = tokio::task::spawn_blocking(move || {
        let info = inspect(&at).map_err(drive_error)?;
        let standing = label_standing(&info, &cluster, me, &members);
        check_addable(&info, &standing, force).map_err(drive_error)?;
        Ok::<_, ApiError>(info)
    })
    .await
    .map_err(|e| ApiError::Node(e.to_string()))??;
    if info.size_bytes < MIN_DRIVE_BYTES {
        return Err(ApiError::BadRequest(format!(
            "path: {shown} has {} bytes; a drive needs at least {MIN_DRIVE_BYTES} (64 MiB)",
            info.size_bytes
        )));
    }
    Ok(Drive::adding(
        DriveUuid::random().to_string(),
        me,
        shown,
        info.hardware_id.clone(),
        info.size_bytes,
        force,
    ))
}

/// Every pool member of the store: drive uuid -> (pool, class).
pub fn member_index(st: &ClusterState) -> BTreeMap<String, (String, Class)> {
    st.pools
        .values()
        .flat_map(|p| {
            p.drives
                .iter()
                .map(|d| (d.clone(), (p.id.clone(), p.class)))
        })
        .collect()
}
