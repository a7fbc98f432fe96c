//! `POST /v1/drives/remove` `{drive}` and `POST /v1/drives/replace` `{old, new, force}`: a
//! drive leaves its pool. The leave is recorded and the call returns; the replicas on the
//! pool are then built elsewhere (by each volume's attach node), the pool's devices come
//! down and the drive's label is erased, and a replacement takes its place in a pool made
//! anew. `GET /v1/pools` shows the progress.

use super::pools::{new_drive, ADDING};
use super::{ApiError, ApiResult, AppState, JsonBody};
use crate::cluster::{ClusterError, Op};
use crate::pool::label::Found;
use crate::store::state::{ClusterState, Command};
use crate::store::types::NodeId;
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoveDriveRequest {
    /// The drive's uuid (as `pxd pool list` shows it), or its device path on this node.
    pub drive: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplaceDriveRequest {
    /// The drive leaving: its uuid, or its device path on this node.
    pub old: String,
    /// The disk taking its place, on this node.
    #[schema(value_type = String)]
    pub new: PathBuf,
    /// Take a new disk that carries a signature (its data is lost).
    #[serde(default)]
    pub force: bool,
}

/// What was recorded.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DriveLeaving {
    pub drive: String,
    pub pool: String,
    /// The volumes with a replica on the pool, to be built elsewhere first.
    pub volumes: Vec<String>,
    /// The replacement's uuid, for a replace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement: Option<String>,
}

#[utoipa::path(
    post,
    path = "/v1/drives/remove",
    operation_id = "drive_remove",
    tag = "drives",
    summary = "A drive leaves: its replicas are built elsewhere first",
    request_body = RemoveDriveRequest,
    responses((status = 200, description = "The drive, leaving", body = DriveLeaving))
)]
pub async fn remove(
    State(s): State<AppState>,
    JsonBody(req): JsonBody<RemoveDriveRequest>,
) -> ApiResult<DriveLeaving> {
    let id = resolve(&s, "drive", &req.drive).await?;
    leave(&s, id, None).await
}

#[utoipa::path(
    post,
    path = "/v1/drives/replace",
    operation_id = "drive_replace",
    tag = "drives",
    summary = "A drive leaves for a new disk in its place",
    request_body = ReplaceDriveRequest,
    responses((status = 200, description = "The drive, leaving", body = DriveLeaving))
)]
pub async fn replace(
    State(s): State<AppState>,
    JsonBody(req): JsonBody<ReplaceDriveRequest>,
) -> ApiResult<DriveLeaving> {
    let Some(cluster) = s.cluster.cluster_id() else {
        return Err(ClusterError::NotInCluster.into());
    };
    let id = resolve(&s, "old", &req.old).await?;
    let node = s
        .cluster
        .state()
        .read(|st| st.drives.get(&id).map(|d| d.node));
    if node != Some(s.cluster.id()) {
        return Err(ApiError::BadRequest(format!(
            "old: drive {id} is on node {}; run the replace there, where its new disk is",
            node.map_or("?".into(), |n| n.to_string())
        )));
    }
    let _one = ADDING.lock().await;
    // The new disk's checks name their field `path`, as in an add: here it is `new`.
    let named = |m: String| format!("new: {}", m.strip_prefix("path: ").unwrap_or(&m));
    let new = new_drive(&s, &cluster, &req.new, req.force)
        .await
        .map_err(|e| match e {
            ApiError::BadRequest(m) => ApiError::BadRequest(named(m)),
            ApiError::Conflict(m) => ApiError::Conflict(named(m)),
            other => other,
        })?;
    leave(&s, id, Some(new)).await
}

async fn leave(
    s: &AppState,
    id: String,
    replacement: Option<crate::store::types::Drive>,
) -> ApiResult<DriveLeaving> {
    let by = replacement.as_ref().map(|d| d.id.clone());
    let cmd = Command::LeaveDrive {
        id: id.clone(),
        replacement,
    };
    match s.cluster.submit_and_apply(Op::Command(cmd)).await {
        Err(ClusterError::Rejected(why)) => return Err(ApiError::Conflict(why)),
        other => other.map(drop)?,
    }
    let (pool, volumes) = s.cluster.state().read(|st| on_pool_of(st, &id));
    tracing::info!(drive = %id, %pool, replacement = ?by, "drive leaving its pool");
    Ok(Json(DriveLeaving {
        drive: id,
        pool,
        volumes,
        replacement: by,
    }))
}

/// The pool of drive `id` and the volumes with a replica on it.
fn on_pool_of(st: &ClusterState, id: &str) -> (String, Vec<String>) {
    let pool = st
        .drives
        .get(id)
        .map(|d| d.pool.clone())
        .unwrap_or_default();
    let volumes = st
        .volumes_placed_on(&pool)
        .map(|v| v.name.clone())
        .collect();
    (pool, volumes)
}

/// The uuid of the drive `given` names: a recorded uuid, or the label on the device at a
/// path of this node (a drive is known by what is on it, never by where it is).
async fn resolve(s: &AppState, field: &str, given: &str) -> Result<String, ApiError> {
    if !given.starts_with('/') {
        let known = s.cluster.state().read(|st| st.drives.contains_key(given));
        return if known {
            Ok(given.to_owned())
        } else {
            Err(ApiError::NotFound(format!(
                "{field}: no drive {given} is recorded (name it by its uuid from `pxd pool \
                 list`, or by its device path)"
            )))
        };
    }
    let path = PathBuf::from(given);
    let read = tokio::task::spawn_blocking(move || crate::kernel::label::read(&path))
        .await
        .map_err(|e| ApiError::Node(e.to_string()))?;
    let me: NodeId = s.cluster.id();
    match read {
        Ok(Found::Labelled(l)) if l.node == me => {
            let id = l.drive.to_string();
            if s.cluster.state().read(|st| st.drives.contains_key(&id)) {
                Ok(id)
            } else {
                Err(ApiError::NotFound(format!(
                    "{field}: {given} carries the label of drive {id}, which is not recorded"
                )))
            }
        }
        Ok(Found::Labelled(l)) => Err(ApiError::BadRequest(format!(
            "{field}: {given} is drive {} of node {}, not of this node",
            l.drive, l.node
        ))),
        Ok(_) => Err(ApiError::BadRequest(format!(
            "{field}: {given} carries no pxd label: it is no pool member"
        ))),
        Err(e) => Err(ApiError::BadRequest(format!(
            "{field}: the label at {given} cannot be read ({e}); name the drive by its uuid \
             from `pxd pool list`"
        ))),
    }
}
