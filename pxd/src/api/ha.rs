//! Replica count changes of a live volume (pxctl's `volume ha-update`).
//!
//! | route | does |
//! |---|---|
//! | `POST /v1/volumes/{vol}/ha` `{repl, node?}` | raise or lower the replica count by one |
//! | `PUT /v1/volumes/{vol}/replica-timeout` `{replica_timeout_s}` | its own replica timeout (null: the cluster's) |
//!
//! Lowering is recorded, the attach node re-assembles the raid without the dropped leg, and
//! the call answers once that is recorded; the dropped leg's node then frees it.
//! Raising places a new leg (on `node` when given), records it `building`, and answers at
//! once: the copy runs while the volume does, and `volume rebuild-status` follows it.

use super::attach::{submit, wait_for};
use super::volumes::{bad, find, inspect, VolumeView};
use super::{ApiResult, AppState, JsonBody, Path};
use crate::plan::placement;
use crate::store::state::VolumeChange;
use crate::store::types::{NodeId, ReplicaState, Volume};
use axum::extract::State;
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HaRequest {
    /// The replica count wanted: one less than now.
    pub repl: u8,
    /// The node whose replica goes (a member's name or id). By default a replica that is
    /// not in sync, else one not on the attach node.
    #[serde(default)]
    pub node: Option<String>,
}

#[utoipa::path(
    post,
    path = "/v1/volumes/{vol}/ha",
    operation_id = "volume_ha_update",
    tag = "volumes",
    summary = "Change the number of replicas",
    params(("vol" = String, Path, description = "The volume's name or id")),
    request_body = HaRequest,
    responses((status = 200, description = "The volume as it is now", body = VolumeView))
)]
pub async fn update(
    State(s): State<AppState>,
    Path(key): Path<String>,
    JsonBody(req): JsonBody<HaRequest>,
) -> ApiResult<VolumeView> {
    let v = s.cluster.state().read(|st| find(st, &key))?;
    if !(1..=3).contains(&req.repl) {
        return Err(bad(format!(
            "repl: {} is out of range (limit: 1 to 3)",
            req.repl
        )));
    }
    if req.repl == v.repl {
        return inspect(State(s), Path(v.id)).await;
    }
    if req.repl > v.repl + 1 || req.repl + 1 < v.repl {
        return Err(bad(format!(
            "repl: volume {} has {} replicas; ha-update changes the count by one at a time",
            v.name, v.repl
        )));
    }
    if req.repl > v.repl {
        return raise(s, v, req.node.as_deref()).await;
    }
    if req.repl < 2 {
        return Err(bad(format!(
            "repl: lowering volume {} to 1 replica is not supported yet: a repl 1 volume has \
             no raid (limit: 2 or 3)",
            v.name
        )));
    }
    let drop = match &req.node {
        Some(n) => s.cluster.resolve_node(n)?,
        None => default_drop(&v)
            .ok_or_else(|| bad(format!("volume {} has no replica that can go", v.name)))?,
    };
    submit(
        &s,
        &v,
        VolumeChange::Lower {
            drop,
            replace: false,
        },
    )
    .await?;
    wait_for(&s, &v.id, "the replica count change", |v| {
        v.replicas
            .iter()
            .find(|r| r.state == ReplicaState::Leaving)
            .map(|r| {
                format!(
                    "the attach node has not re-assembled the raid without node {} yet",
                    r.node
                )
            })
    })
    .await?;
    inspect(State(s), Path(v.id)).await
}

/// One leg more: placed by topology (on `node` when given), recorded `building`; the copy
/// runs on its own from there.
async fn raise(s: AppState, v: Volume, node: Option<&str>) -> ApiResult<VolumeView> {
    let only = node.map(|n| s.cluster.resolve_node(n)).transpose()?;
    let (online, seen) = s.reconciler.liveness_and_pools();
    let placed = s.cluster.state().read(|st| {
        let view = placement::ClusterView {
            state: st,
            online: &online,
            seen: &seen,
            overcommit: s.config.overcommit,
        };
        placement::place_replacement(&view, &v, None, only, false)
    });
    let (node, pool, _) = placed.map_err(|why| {
        bad(format!(
            "node: no node can take a new leg of volume {}: {why}",
            v.name
        ))
    })?;
    let at = crate::cluster::rpc::now_ms() / 1000;
    let raise = VolumeChange::Raise {
        node,
        pool,
        at,
        replace: false,
        evacuate: None,
    };
    submit(&s, &v, raise).await?;
    // The new leg's node builds it and the copy starts with the next passes.
    if let Err(e) = s.reconciler.pass().await {
        tracing::warn!(error = %e, "a reconcile pass failed after a raise");
    }
    inspect(State(s), Path(v.id)).await
}

#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplicaTimeoutRequest {
    /// Seconds a leg of this volume may stay stale before it is replaced (10 to 30 days);
    /// null or absent: the cluster's.
    #[serde(default)]
    pub replica_timeout_s: Option<u64>,
}

/// `PUT /v1/volumes/{vol}/replica-timeout`: this volume's own replica timeout.
#[utoipa::path(
    put,
    path = "/v1/volumes/{vol}/replica-timeout",
    operation_id = "volume_set_replica_timeout",
    tag = "volumes",
    summary = "Set the volume's own replica timeout",
    params(("vol" = String, Path, description = "The volume's name or id")),
    request_body = ReplicaTimeoutRequest,
    responses((status = 200, description = "The volume as it is now", body = VolumeView))
)]
pub async fn set_replica_timeout(
    State(s): State<AppState>,
    Path(key): Path<String>,
    JsonBody(req): JsonBody<ReplicaTimeoutRequest>,
) -> ApiResult<VolumeView> {
    let v = s.cluster.state().read(|st| find(st, &key))?;
    if let Some(t) = req.replica_timeout_s {
        crate::store::types::check_replica_timeout(t).map_err(bad)?;
    }
    let change = VolumeChange::ReplicaTimeout {
        seconds: req.replica_timeout_s,
    };
    submit(&s, &v, change).await?;
    inspect(State(s), Path(v.id)).await
}

/// The replica a lowering drops by default: one not in sync (last first), else the last
/// one not on the attach node.
fn default_drop(v: &Volume) -> Option<NodeId> {
    let attach = v.attachment.as_ref().map(|a| a.node);
    let not_up = v
        .replicas
        .iter()
        .rev()
        .find(|r| r.state != ReplicaState::Up);
    not_up
        .or_else(|| v.replicas.iter().rev().find(|r| Some(r.node) != attach))
        .map(|r| r.node)
}
