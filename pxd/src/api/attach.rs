//! Attach and detach (DESIGN §5). An attach of a replicated volume is recorded with a new
//! epoch; it is acknowledged once every replica serves that epoch only and the attach node
//! has built the raid, which the nodes record in the store. The handler waits for that
//! record, so the answer is the same whichever node was asked.
//!
//! | route | does |
//! |---|---|
//! | `POST /v1/volumes/{vol}/attach` `{node?, force}` | attach (on this node by default) |
//! | `POST /v1/volumes/{vol}/detach` `{force}` | detach from wherever it is attached |
//! | `POST /v1/volumes/{vol}/check` | check the raid: answered once recorded; `check` in the volume shows the result |

use super::volumes::{find, inspect, VolumeView};
use super::{ApiError, ApiResult, AppState, JsonBody, Path};
use crate::cluster::Op;
use crate::store::state::VolumeChange;
use crate::store::types::{AttachState, NodeId, Volume};
use crate::store::Command;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// How long an attach or detach call waits for the nodes to finish it. Under emulation an
/// attach (export, connect, raid, mkfs) takes seconds; this leaves room for a slow node.
/// Past it the call fails, saying what is still pending; the nodes keep at it.
pub const ATTACH_WAIT: Duration = Duration::from_secs(100);

#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachRequest {
    /// A member's name or id; this node when absent.
    #[serde(default)]
    pub node: Option<String>,
    /// Take the volume from the node it is attached on (failover).
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DetachRequest {
    /// Forget the attachment at once, for an attach node that is gone.
    #[serde(default)]
    pub force: bool,
}

/// Records `change` to `v`, refusing what the state machine refuses.
pub(super) async fn submit(s: &AppState, v: &Volume, change: VolumeChange) -> Result<(), ApiError> {
    let cmd = Command::UpdateVolume {
        id: v.id.clone(),
        change,
    };
    match s.cluster.submit_and_apply(Op::Command(cmd)).await {
        Err(crate::cluster::ClusterError::Rejected(why)) => Err(ApiError::BadRequest(why)),
        other => other.map(drop).map_err(ApiError::from),
    }
}

/// The nodes of `v`'s replicas that this node sees offline: their legs cannot serve the
/// new epoch, so the attach marks them stale rather than waiting for them.
pub(super) fn out_of_reach(s: &AppState, v: &Volume) -> Vec<NodeId> {
    let online: std::collections::BTreeSet<NodeId> = s
        .cluster
        .nodes()
        .into_iter()
        .filter(|n| n.liveness == crate::cluster::gossip::Liveness::Online)
        .map(|n| n.id)
        .collect();
    let me = s.cluster.id();
    v.replicas
        .iter()
        .map(|r| r.node)
        .filter(|n| *n != me && !online.contains(n))
        .collect()
}

/// What is still missing for `v` to be attached on `node`, or `None` when it is.
fn attach_pending(v: &Volume, node: NodeId) -> Option<String> {
    let Some(a) = v.attachment.as_ref().filter(|a| a.node == node) else {
        return Some(format!(
            "volume {} is no longer attached on node {node}",
            v.name
        ));
    };
    if a.state == AttachState::Attached {
        return None;
    }
    let waiting: Vec<String> = v
        .replicas
        .iter()
        .filter(|r| r.serving_epoch < a.epoch)
        .map(|r| r.node.to_string())
        .collect();
    Some(if waiting.is_empty() {
        format!(
            "node {node} has not built the raid of epoch {} yet",
            a.epoch
        )
    } else {
        format!(
            "node(s) {} have not served epoch {} yet",
            waiting.join(", "),
            a.epoch
        )
    })
}

/// Waits until `done` finds nothing pending for volume `id`, running this node's passes
/// meanwhile (the other nodes run theirs as the store changes).
pub(super) async fn wait_for(
    s: &AppState,
    id: &str,
    what: &str,
    done: impl Fn(&Volume) -> Option<String>,
) -> Result<(), ApiError> {
    let deadline = Instant::now() + ATTACH_WAIT;
    loop {
        let pending = s
            .cluster
            .state()
            .read(|st| st.volumes.get(id).cloned())
            .and_then(|v| done(&v));
        let Some(pending) = pending else {
            return Ok(());
        };
        if Instant::now() > deadline {
            return Err(ApiError::Node(format!(
                "{what} is recorded, but not finished after {ATTACH_WAIT:?}: {pending} (the nodes keep trying)"
            )));
        }
        if let Err(e) = s.reconciler.pass().await {
            tracing::warn!(error = %e, "a reconcile pass failed while waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits for the attach of volume `id` on `node`.
pub(super) async fn wait_attached(s: &AppState, id: &str, node: NodeId) -> Result<(), ApiError> {
    wait_for(s, id, "the attach", |v| attach_pending(v, node)).await
}

/// Waits until volume `id` is no longer attached (its attach node took its stack down).
pub(super) async fn wait_detached(s: &AppState, id: &str) -> Result<(), ApiError> {
    wait_for(s, id, "the detach", |v| {
        v.attachment.as_ref().map(|a| {
            format!(
                "node {} has not taken its stack of epoch {} down yet",
                a.node, a.epoch
            )
        })
    })
    .await
}

#[utoipa::path(
    post,
    path = "/v1/volumes/{vol}/attach",
    operation_id = "volume_attach",
    tag = "volumes",
    summary = "Attach on this node",
    params(("vol" = String, Path, description = "The volume's name or id")),
    request_body = AttachRequest,
    responses((status = 200, description = "The volume as it is now", body = VolumeView))
)]
pub async fn attach(
    State(s): State<AppState>,
    Path(key): Path<String>,
    JsonBody(req): JsonBody<AttachRequest>,
) -> ApiResult<VolumeView> {
    let v = s.cluster.state().read(|st| find(st, &key))?;
    let node = match &req.node {
        Some(n) => s.cluster.resolve_node(n)?,
        None => s.cluster.id(),
    };
    let recorded = Instant::now();
    submit(
        &s,
        &v,
        VolumeChange::Attach {
            node,
            force: req.force,
            by_mount: false,
            lost: out_of_reach(&s, &v),
        },
    )
    .await?;
    wait_attached(&s, &v.id, node).await?;
    // Taken from another node: that node may still hold a local leg, and fences itself
    // only when its lease runs out. Not acknowledged before then.
    if v.attachment.as_ref().is_some_and(|a| a.node != node) {
        // The old node fences within a lease of its last confirmation plus a tick or two
        // of its watch: wait half a lease more.
        let wait = s.config.attach_lease + s.config.attach_lease / 2;
        let left = wait.saturating_sub(recorded.elapsed());
        tracing::info!(volume = %v.name, wait = ?left, "forced attach: waiting out the old attach node's lease");
        tokio::time::sleep(left).await;
    }
    inspect(State(s), Path(v.id)).await
}

#[utoipa::path(
    post,
    path = "/v1/volumes/{vol}/detach",
    operation_id = "volume_detach",
    tag = "volumes",
    summary = "Detach",
    params(("vol" = String, Path, description = "The volume's name or id")),
    request_body = DetachRequest,
    responses((status = 200, description = "The volume as it is now", body = VolumeView))
)]
pub async fn detach(
    State(s): State<AppState>,
    Path(key): Path<String>,
    JsonBody(req): JsonBody<DetachRequest>,
) -> ApiResult<VolumeView> {
    let v = s.cluster.state().read(|st| find(st, &key))?;
    submit(&s, &v, VolumeChange::Detach { force: req.force }).await?;
    wait_detached(&s, &v.id).await?;
    inspect(State(s), Path(v.id)).await
}

/// Asks the attach node to check the volume's raid (md reads every leg and counts the
/// sectors that differ). Answers at once with the check recorded; the volume's `check`
/// shows the mismatch count when it is done.
#[utoipa::path(
    post,
    path = "/v1/volumes/{vol}/check",
    operation_id = "volume_check",
    tag = "volumes",
    summary = "Compare a replicated volume's legs",
    params(("vol" = String, Path, description = "The volume's name or id")),
    responses((status = 200, description = "The volume as it is now", body = VolumeView))
)]
pub async fn check(State(s): State<AppState>, Path(key): Path<String>) -> ApiResult<VolumeView> {
    let v = s.cluster.state().read(|st| find(st, &key))?;
    submit(
        &s,
        &v,
        VolumeChange::Check {
            at: super::volumes::now(),
        },
    )
    .await?;
    inspect(State(s), Path(v.id)).await
}

/// A replicated volume's attachment as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttachmentView {
    pub node: NodeId,
    pub node_name: String,
    pub epoch: u64,
    pub state: AttachState,
}

/// For [`super::volumes::view`].
pub(super) fn attachment_view(
    st: &crate::store::state::ClusterState,
    v: &Volume,
) -> Option<AttachmentView> {
    v.attachment.as_ref().map(|a| AttachmentView {
        node: a.node,
        node_name: st
            .nodes
            .get(&a.node)
            .map(|n| n.name.clone())
            .unwrap_or_default(),
        epoch: a.epoch,
        state: a.state,
    })
}
