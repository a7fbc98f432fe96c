//! Snapshot, clone and restore routes: snapshots of a live volume (crash-consistent: the
//! stack is suspended around the kernel's snapshot), clones of a volume or of a snapshot,
//! and putting a snapshot's data back into its volume.

use super::volumes::{
    bad, candidates, find, inspect, new_id, not_replicated, now, open_count, record,
    this_node_volume, update, view, Deleted, SnapshotView, VolumeView,
};
use super::{ApiError, ApiResult, AppState, JsonBody, Path};
use crate::plan::placement;
use crate::store::state::{ClusterState, SnapshotChange, VolumeChange};
use crate::store::types::{Origin, Phase, Replica, Snapshot, Volume};
use crate::store::Command;
use crate::volume::spec::check_name;
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    pub name: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloneRequest {
    pub name: String,
    /// Clone this snapshot of the volume instead of the volume itself.
    #[serde(default)]
    pub snapshot: Option<String>,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    pub snapshot: String,
}

#[utoipa::path(
    get,
    path = "/v1/volumes/{vol}/snapshots",
    operation_id = "snapshot_list",
    tag = "snapshots",
    summary = "A volume's snapshots",
    params(("vol" = String, Path, description = "The volume's name or id")),
    responses((status = 200, description = "The snapshots", body = Vec<SnapshotView>))
)]
pub async fn list(
    State(s): State<AppState>,
    Path(key): Path<String>,
) -> ApiResult<Vec<SnapshotView>> {
    let v = s
        .cluster
        .state()
        .read(|st| find(st, &key).map(|v| view(st, &v)))?;
    Ok(Json(v.snapshots))
}

#[utoipa::path(
    post,
    path = "/v1/volumes/{vol}/snapshots",
    operation_id = "snapshot_create",
    tag = "snapshots",
    summary = "Take a snapshot",
    params(("vol" = String, Path, description = "The volume's name or id")),
    request_body = SnapshotRequest,
    responses((status = 200, description = "The snapshot", body = SnapshotView))
)]
pub async fn create(
    State(s): State<AppState>,
    Path(key): Path<String>,
    JsonBody(req): JsonBody<SnapshotRequest>,
) -> ApiResult<SnapshotView> {
    check_name(&req.name).map_err(bad)?;
    let (v, pools) = s
        .cluster
        .state()
        .read(|st| find(st, &key).map(|v| (v, candidates(&s, st))))?;
    this_node_volume(&s, &v)?;
    not_replicated(&v, "snapshotting")?;
    if let Some(p) = pools
        .iter()
        .find(|p| Some(&p.id) == v.replicas.first().map(|r| &r.pool))
    {
        if let Some(why) = &p.near_full {
            return Err(bad(format!("pool {} is near full: {why}", p.id)));
        }
    }
    let id = new_id();
    let snapshot = Snapshot {
        id: id.clone(),
        volume: v.id.clone(),
        name: req.name.clone(),
        time: now(),
        thin_ids: BTreeMap::new(),
        read_only: true,
        taken: false,
        phase: Phase::Live,
    };
    let what = format!("snapshot {} of {}", req.name, v.name);
    record(
        &s,
        Some(Command::CreateSnapshot { snapshot }),
        Some(&v.id),
        &what,
    )
    .await?;
    let shown = s.cluster.state().read(|st| view(st, &v));
    shown
        .snapshots
        .into_iter()
        .find(|x| x.id == id)
        .map(Json)
        .ok_or_else(|| ApiError::Node(format!("snapshot {} vanished", req.name)))
}

fn find_snapshot(st: &ClusterState, v: &Volume, key: &str) -> Result<Snapshot, ApiError> {
    st.snapshots
        .values()
        .find(|x| x.volume == v.id && (x.name == key || x.id == key) && x.phase == Phase::Live)
        .cloned()
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "snapshot: volume {} has no snapshot {key:?}",
                v.name
            ))
        })
}

#[utoipa::path(
    delete,
    path = "/v1/volumes/{vol}/snapshots/{snap}",
    operation_id = "snapshot_delete",
    tag = "snapshots",
    summary = "Delete a snapshot",
    params(
        ("vol" = String, Path, description = "The volume's name or id"),
        ("snap" = String, Path, description = "The snapshot's name or id")
    ),
    responses((status = 200, description = "Deleted", body = Deleted))
)]
pub async fn delete(
    State(s): State<AppState>,
    Path((key, snap)): Path<(String, String)>,
) -> ApiResult<Deleted> {
    let (v, sn) = s.cluster.state().read(|st| {
        let v = find(st, &key)?;
        let sn = find_snapshot(st, &v, &snap)?;
        Ok::<_, ApiError>((v, sn))
    })?;
    this_node_volume(&s, &v)?;
    let used_by = s.cluster.state().read(|st| {
        st.volumes
            .values()
            .filter(|c| {
                c.origin.as_ref().is_some_and(|o| {
                    o.volume.is_none() && sn.thin_ids.values().any(|t| *t == o.thin_id)
                })
            })
            .map(|c| c.name.clone())
            .collect::<Vec<_>>()
    });
    if !used_by.is_empty() {
        return Err(ApiError::Conflict(format!(
            "snapshot {} is being copied into {}; try again when that is done",
            sn.name,
            used_by.join(", ")
        )));
    }
    let cmd = Command::UpdateSnapshot {
        id: sn.id.clone(),
        change: SnapshotChange::Delete,
    };
    let what = format!("the delete of snapshot {}", sn.name);
    record(&s, Some(cmd), Some(&v.id), &what).await?;
    Ok(Json(Deleted { deleted: sn.name }))
}

#[utoipa::path(
    post,
    path = "/v1/volumes/{vol}/clone",
    operation_id = "volume_clone",
    tag = "snapshots",
    summary = "A new volume from a snapshot or the live volume",
    params(("vol" = String, Path, description = "The volume's name or id")),
    request_body = CloneRequest,
    responses((status = 200, description = "The volume as it is now", body = VolumeView))
)]
pub async fn clone(
    State(s): State<AppState>,
    Path(key): Path<String>,
    JsonBody(req): JsonBody<CloneRequest>,
) -> ApiResult<VolumeView> {
    check_name(&req.name).map_err(bad)?;
    let me = s.cluster.id();
    let (src, origin, pools, exists) = s.cluster.state().read(|st| {
        let src = find(st, &key)?;
        not_replicated(&src, "cloning")?;
        let replica = src
            .replicas
            .iter()
            .find(|r| r.node == me)
            .cloned()
            .ok_or_else(|| bad(format!("volume {} has no replica on this node", src.name)))?;
        let origin = match &req.snapshot {
            Some(name) => {
                let sn = find_snapshot(st, &src, name)?;
                if !sn.taken {
                    return Err(bad(format!("snapshot: {name:?} is not taken yet")));
                }
                Origin {
                    thin_id: *sn.thin_ids.get(&me).ok_or_else(|| {
                        bad(format!("snapshot: {name:?} has no copy on this node"))
                    })?,
                    volume: None,
                }
            }
            None => Origin {
                thin_id: replica.thin_id,
                volume: Some(src.id.clone()),
            },
        };
        Ok::<_, ApiError>((
            (src.clone(), replica),
            origin,
            candidates(&s, st),
            st.volume_named(&req.name).is_some(),
        ))
    })?;
    let (src, replica) = src;
    if exists {
        return Err(bad(format!(
            "name: a volume called {:?} exists already",
            req.name
        )));
    }
    if let Some(p) = pools.iter().find(|p| p.id == replica.pool) {
        placement::admit(p, src.size, s.config.overcommit).map_err(bad)?;
    }
    let id = new_id();
    // The clone shares its source's blocks, so it shares its data key, sealed for its own id.
    let wrapped_key = match &src.wrapped_key {
        Some(w) => {
            let ck = super::volumes::cluster_key(&s)?;
            let key = ck
                .unwrap(w, &src.id)
                .map_err(|e| ApiError::Node(e.to_string()))?;
            Some(
                ck.wrap(&key, &id)
                    .map_err(|e| ApiError::Node(e.to_string()))?,
            )
        }
        None => None,
    };
    let volume = Volume {
        id: id.clone(),
        name: req.name.clone(),
        replicas: vec![Replica {
            thin_id: 0,
            ..replica
        }],
        attachment: None,
        epoch: 0,
        assembled: false,
        accepted_losses: vec![],
        last_leg_loss: None,
        phase: Phase::Live,
        wrapped_key,
        origin: Some(origin),
        read_only: req.read_only,
        mount_path: None,
        retired_thin_ids: vec![],
        created: now(),
        placement: None,
        ..src.clone()
    };
    let what = format!("clone {}", req.name);
    record(&s, Some(Command::CreateVolume { volume }), Some(&id), &what).await?;
    inspect(State(s), Path(id)).await
}

#[utoipa::path(
    post,
    path = "/v1/volumes/{vol}/restore",
    operation_id = "volume_restore",
    tag = "snapshots",
    summary = "Roll a volume back to a snapshot",
    params(("vol" = String, Path, description = "The volume's name or id")),
    request_body = RestoreRequest,
    responses((status = 200, description = "The volume as it is now", body = VolumeView))
)]
pub async fn restore(
    State(s): State<AppState>,
    Path(key): Path<String>,
    JsonBody(req): JsonBody<RestoreRequest>,
) -> ApiResult<VolumeView> {
    let (v, sn) = s.cluster.state().read(|st| {
        let v = find(st, &key)?;
        let sn = find_snapshot(st, &v, &req.snapshot)?;
        Ok::<_, ApiError>((v, sn))
    })?;
    this_node_volume(&s, &v)?;
    not_replicated(&v, "restoring")?;
    if let Some(at) = &v.mount_path {
        return Err(ApiError::Conflict(format!(
            "volume {} is mounted at {at}; unmount it before restoring",
            v.name
        )));
    }
    if open_count(&s, &v).await? > 0 {
        return Err(ApiError::Conflict(format!(
            "volume {} is in use; stop its users before restoring",
            v.name
        )));
    }
    let change = VolumeChange::Restore {
        snapshot: sn.id.clone(),
    };
    update(s, &v, Some(change), "the restore").await
}
