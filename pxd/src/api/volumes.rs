//! Volume and snapshot routes. Each change is checked here (every refusal names the field and
//! the limit), recorded in the cluster store, and then built by a reconcile pass that the
//! handler waits for; nothing here touches the kernel but to read it.
//!
//! | route | does |
//! |---|---|
//! | `GET /v1/volumes`, `POST /v1/volumes` `{options, secret_key?}` | list; create |
//! | `GET`/`PUT {size}`/`DELETE /v1/volumes/{vol}` | inspect (with use); grow; delete |
//! | `POST /v1/volumes/{vol}/mount` `{path?}`, `.../unmount` | mount under the data dir |
//! | `GET`/`POST {name} /v1/volumes/{vol}/snapshots`, `DELETE .../snapshots/{snap}` | snapshots ([`super::snapshots`]) |
//! | `POST /v1/volumes/{vol}/clone` `{name, snapshot?, read_only}` | clone a volume or snapshot |
//! | `POST /v1/volumes/{vol}/restore` `{snapshot}` | put a snapshot's data back |

use super::{ApiError, ApiResult, AppState, JsonBody, Path};
use crate::cluster::Op;
use crate::crypt::{new_salt, VolumeKey};
use crate::kernel::dm::node_path;
use crate::plan::placement::{self, Candidate};
use crate::store::state::{ClusterState, VolumeChange};
use crate::store::types::{
    BandwidthLimit, IopsLimit, NodeId, Phase, PlacementNote, Replica, ReplicaState, Volume,
};
use crate::store::Command;
use crate::volume::spec::{parse_size, Class, Fs, VolumeSpec};
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// The volume options: name, size, fs, repl, io_priority, max_iops, max_bandwidth,
    /// secure, label.
    pub options: BTreeMap<String, String>,
    /// A passphrase to derive the data key from, instead of a random key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Hidden from `Debug`, like every secret.
    pub secret_key: Option<crate::store::types::Secret>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeRequest {
    pub size: String,
}

#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MountRequest {
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SnapshotView {
    pub id: String,
    pub name: String,
    pub volume: String,
    pub time: u64,
    pub taken: bool,
    pub phase: Phase,
}

/// A volume as the API shows it. `list` leaves out `usage`, which moves with every write, so
/// two lists with no change in between are equal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VolumeView {
    pub id: String,
    pub name: String,
    pub size: u64,
    pub fs: Fs,
    pub repl: u8,
    pub io_priority: Class,
    pub encrypted: bool,
    pub read_only: bool,
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_iops: Option<IopsLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bandwidth: Option<BandwidthLimit>,
    pub node: Option<NodeId>,
    pub pool: Option<String>,
    pub thin_id: Option<u32>,
    /// dm devices, lowest first; the last is what is mounted or handed to a container.
    pub stack: Vec<String>,
    #[schema(value_type = Option<String>)]
    pub device: Option<PathBuf>,
    pub mountpoint: Option<String>,
    pub phase: Phase,
    pub snapshots: Vec<SnapshotView>,
    pub created: u64,
    /// Where each replica is: which node (and its name) and pool. A scheduler runs the
    /// container on one of these nodes to keep it next to its data.
    #[serde(default)]
    pub replicas: Vec<ReplicaView>,
    /// Why the replicas are there, and what a best-effort placement could not give.
    #[serde(default)]
    pub placement: Option<PlacementNote>,
    /// Where it is attached, at which epoch.
    #[serde(default)]
    pub attachment: Option<super::attach::AttachmentView>,
    /// Data losses an operator accepted with `attach --force`, newest last.
    #[serde(default)]
    pub accepted_losses: Vec<String>,
    /// The last leg lost while attached, with how long its writes were held.
    #[serde(default)]
    pub last_leg_loss: Option<crate::store::types::LegLoss>,
    /// The last raid check (`volume check`), running or finished.
    #[serde(default)]
    pub check: Option<crate::store::types::RaidCheck>,
    /// The raid as its attach node's last pass read it; inspect on the attach node only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raid: Option<RaidView>,
    /// Bytes the volume has mapped in its pool (thin status); inspect only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<u64>,
    /// A new leg being copied (`ha-update`), and how far the copy is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<crate::store::types::Build>,
    /// The last new leg's copy, once over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_build: Option<crate::store::types::Build>,
    /// The node whose leg is moved off a leaving drive: it stays until the new one is up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evacuating: Option<NodeId>,
    /// Its own replica timeout in seconds, when it has one (else the cluster's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_timeout_s: Option<u64>,
}

/// A replicated volume's raid on its attach node: each leg's health (`A` in sync, `a`
/// resyncing, `D` out) in replica order, and the resync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RaidView {
    pub health: String,
    /// Bytes in sync, of the whole.
    pub synced_bytes: u64,
    pub total_bytes: u64,
    /// `idle`, `resync`, `recover`, ...
    pub action: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplicaView {
    pub node: NodeId,
    pub node_name: String,
    pub pool: String,
    pub state: ReplicaState,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Deleted {
    pub deleted: String,
}

pub(super) fn bad(e: impl ToString) -> ApiError {
    ApiError::BadRequest(e.to_string())
}

pub(super) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The cluster key that wraps volume keys; a node that is in no cluster has none.
pub(super) fn cluster_key(
    s: &AppState,
) -> Result<std::sync::Arc<crate::crypt::ClusterKey>, ApiError> {
    s.reconciler.cluster_key().ok_or_else(|| {
        ApiError::Conflict(
            "this node has no cluster key yet: run `pxd cluster init` or `pxd cluster join`".into(),
        )
    })
}

/// A random object id: 16 lowercase hex digits, valid in dm names.
pub(super) fn new_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn require_cluster(s: &AppState) -> Result<(), ApiError> {
    if s.cluster.cluster_id().is_none() {
        return Err(crate::cluster::ClusterError::NotInCluster.into());
    }
    Ok(())
}

/// The live volume named (or with id) `key`.
pub(super) fn find(st: &ClusterState, key: &str) -> Result<Volume, ApiError> {
    st.volume_named(key)
        .or_else(|| st.volumes.get(key))
        .cloned()
        .ok_or_else(|| ApiError::NotFound(format!("volume: no volume called {key:?}")))
}

pub(super) fn view(st: &ClusterState, v: &Volume) -> VolumeView {
    let replica = v.replicas.first();
    let stack = crate::reconcile::derive::io_stack(st, v)
        .map(|(_, stack)| stack)
        .unwrap_or_default();
    let names: Vec<String> = stack.iter().map(|p| p.name.to_string()).collect();
    let mut snapshots: Vec<SnapshotView> = st
        .snapshots
        .values()
        .filter(|s| s.volume == v.id)
        .map(|s| SnapshotView {
            id: s.id.clone(),
            name: s.name.clone(),
            volume: v.name.clone(),
            time: s.time,
            taken: s.taken,
            phase: s.phase,
        })
        .collect();
    snapshots.sort_by(|a, b| (a.time, &a.name).cmp(&(b.time, &b.name)));
    VolumeView {
        id: v.id.clone(),
        name: v.name.clone(),
        size: v.size,
        fs: v.fs,
        repl: v.repl,
        io_priority: v.io_priority,
        encrypted: v.encrypted,
        read_only: v.read_only,
        labels: v.labels.clone(),
        max_iops: v.max_iops,
        max_bandwidth: v.max_bandwidth,
        node: replica.map(|r| r.node),
        pool: replica.map(|r| r.pool.clone()),
        thin_id: replica.map(|r| r.thin_id),
        device: stack.last().map(|p| node_path(&p.name.dm_name())),
        stack: names,
        mountpoint: v.mount_path.clone(),
        phase: v.phase,
        snapshots,
        created: v.created,
        replicas: v
            .replicas
            .iter()
            .map(|r| ReplicaView {
                node: r.node,
                node_name: st
                    .nodes
                    .get(&r.node)
                    .map(|n| n.name.clone())
                    .unwrap_or_default(),
                pool: r.pool.clone(),
                state: r.state,
            })
            .collect(),
        placement: v.placement.clone(),
        attachment: super::attach::attachment_view(st, v),
        accepted_losses: v.accepted_losses.clone(),
        last_leg_loss: v.last_leg_loss.clone(),
        check: v.check.clone(),
        raid: None,
        usage: None,
        build: v.build.clone(),
        last_build: v.last_build.clone(),
        evacuating: v.evacuating,
        replica_timeout_s: v.replica_timeout_s,
    }
}

/// Pools of this node with what placement needs to know.
pub(super) fn candidates(s: &AppState, st: &ClusterState) -> Vec<Candidate> {
    let me = s.cluster.id();
    let last = s.reconciler.last();
    st.pools
        .values()
        .filter(|p| p.node == me)
        .map(|p| {
            let used = last.pools.get(&p.id);
            Candidate {
                id: p.id.clone(),
                class: p.class,
                capacity: used.map_or(p.capacity, |u| u.data_total),
                provisioned: placement::provisioned_on(st, &p.id),
                near_full: used.and_then(|u| u.near_full(&s.reconciler.full)),
            }
        })
        .collect()
}

/// Records `cmd` (if there is one: a repeated call may have nothing new to record), then
/// waits for the reconcile pass that builds it. A refusal by the state machine is the
/// caller's error; a kernel failure of volume `volume` (or of its pool or node) is reported
/// about `what`, which stays recorded for the reconciler to finish.
pub(super) async fn record(
    s: &AppState,
    cmd: Option<Command>,
    volume: Option<&str>,
    what: &str,
) -> Result<(), ApiError> {
    if let Some(cmd) = cmd {
        match s.cluster.submit_and_apply(Op::Command(cmd)).await {
            Err(crate::cluster::ClusterError::Rejected(why)) => {
                return Err(ApiError::BadRequest(why))
            }
            other => other.map(drop)?,
        }
    }
    let not_yet = |e: &str| {
        ApiError::Node(format!(
            "{what} is recorded, but the node could not finish it yet: {e} (the reconciler keeps trying)"
        ))
    };
    let failures = s.reconciler.pass().await.map_err(|e| not_yet(&e))?;
    match failures
        .iter()
        .find(|f| f.volume.is_none() || volume.is_none() || f.volume.as_deref() == volume)
    {
        Some(f) => Err(not_yet(&f.error)),
        None => Ok(()),
    }
}

/// Records one change to volume `v`, builds it, and shows the volume as it is then.
pub(super) async fn update(
    s: AppState,
    v: &Volume,
    change: Option<VolumeChange>,
    what: &str,
) -> ApiResult<VolumeView> {
    let cmd = change.map(|change| Command::UpdateVolume {
        id: v.id.clone(),
        change,
    });
    record(&s, cmd, Some(&v.id), &format!("{what} of {}", v.name)).await?;
    inspect(State(s), Path(v.id.clone())).await
}

/// Refuses `what` of a replicated volume, which this release does not do yet: an option
/// that is accepted must be enforced.
pub(super) fn not_replicated(v: &Volume, what: &str) -> Result<(), ApiError> {
    if v.repl > 1 {
        return Err(bad(format!(
            "repl: volume {} has {} replicas; {what} a replicated volume is not supported yet (limit: repl 1)",
            v.name, v.repl
        )));
    }
    Ok(())
}

pub(super) fn this_node_volume(s: &AppState, v: &Volume) -> Result<(), ApiError> {
    let me = s.cluster.id();
    if v.replicas.iter().any(|r| r.node == me) {
        Ok(())
    } else {
        Err(bad(format!(
            "volume {} has no replica on this node; run the command on its node",
            v.name
        )))
    }
}

/// How many openers the volume's top device has (a mount counts as one), as a reconcile pass
/// run for this call saw it: the handler reads what the reconciler observed, never the
/// kernel itself.
pub(super) async fn open_count(s: &AppState, v: &Volume) -> Result<i32, ApiError> {
    s.reconciler.pass().await.map_err(ApiError::Node)?;
    Ok(s.reconciler
        .last()
        .volumes
        .get(&v.id)
        .map_or(0, |seen| seen.open_count))
}

#[utoipa::path(
    get,
    path = "/v1/volumes",
    operation_id = "volume_list",
    tag = "volumes",
    summary = "Every volume",
    responses((status = 200, description = "The volumes", body = Vec<VolumeView>))
)]
pub async fn list(State(s): State<AppState>) -> ApiResult<Vec<VolumeView>> {
    let mut out = s
        .cluster
        .state()
        .read(|st| st.volumes.values().map(|v| view(st, v)).collect::<Vec<_>>());
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(out))
}

#[utoipa::path(
    get,
    path = "/v1/volumes/{vol}",
    operation_id = "volume_inspect",
    tag = "volumes",
    summary = "One volume, with its raid and usage",
    params(("vol" = String, Path, description = "The volume's name or id")),
    responses((status = 200, description = "The volume as it is now", body = VolumeView))
)]
pub async fn inspect(State(s): State<AppState>, Path(key): Path<String>) -> ApiResult<VolumeView> {
    let mut v = s
        .cluster
        .state()
        .read(|st| find(st, &key).map(|v| view(st, &v)))?;
    // Usage and the raid as the last reconcile pass on this node read them.
    let last = s.reconciler.last();
    v.usage = last.volumes.get(&v.id).and_then(|seen| seen.mapped_bytes);
    v.raid = last.raids.get(&v.id).map(|r| RaidView {
        health: r
            .legs
            .iter()
            .map(|l| match l {
                crate::plan::raid::LegHealth::InSync => 'A',
                crate::plan::raid::LegHealth::Syncing => 'a',
                crate::plan::raid::LegHealth::Dead => 'D',
                crate::plan::raid::LegHealth::Absent => '-',
            })
            .collect(),
        synced_bytes: *r.synced * 512,
        total_bytes: *r.total * 512,
        action: r.action.clone(),
    });
    Ok(Json(v))
}

#[utoipa::path(
    post,
    path = "/v1/volumes",
    operation_id = "volume_create",
    tag = "volumes",
    summary = "Create a volume",
    request_body = CreateRequest,
    responses((status = 200, description = "The volume as it is now", body = VolumeView))
)]
pub async fn create(
    State(s): State<AppState>,
    JsonBody(req): JsonBody<CreateRequest>,
) -> ApiResult<VolumeView> {
    require_cluster(&s)?;
    let spec = VolumeSpec::from_options(req.options.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(bad)?;
    if let Some(p) = req.secret_key.as_ref().map(|k| k.expose()) {
        if p.is_empty() || p.len() > crate::crypt::MAX_PASSPHRASE {
            return Err(bad(format!(
                "secret_key: must be 1 to {} bytes, got {}",
                crate::crypt::MAX_PASSPHRASE,
                p.len()
            )));
        }
    }
    let (online, seen) = s.reconciler.liveness_and_pools();
    let (placed, exists) = s.cluster.state().read(|st| {
        let view = placement::ClusterView {
            state: st,
            online: &online,
            seen: &seen,
            overcommit: s.config.overcommit,
        };
        let placed = placement::place_volume(
            &view,
            spec.io_priority,
            spec.size,
            usize::from(spec.repl),
            &spec.placement,
            spec.best_effort,
        );
        (placed, st.volume_named(&spec.name).is_some())
    });
    if exists {
        return Err(bad(format!(
            "name: a volume called {:?} exists already",
            spec.name
        )));
    }
    let placed = placed.map_err(bad)?;
    let class = placed.class;
    let id = new_id();
    let encrypted = spec.secure || req.secret_key.is_some();
    let (wrapped_key, key_salt) = if encrypted {
        let secret = req.secret_key.clone();
        let key = tokio::task::spawn_blocking(move || match secret {
            Some(p) => {
                let salt = new_salt()?;
                Ok((
                    VolumeKey::from_passphrase(p.expose(), &salt)?,
                    Some(salt.to_vec()),
                ))
            }
            None => Ok::<_, crate::crypt::CryptError>((VolumeKey::generate()?, None)),
        })
        .await
        .map_err(|e| ApiError::Node(e.to_string()))?
        .map_err(|e| ApiError::Node(e.to_string()))?;
        let wrapped = cluster_key(&s)?
            .wrap(&key.0, &id)
            .map_err(|e| ApiError::Node(e.to_string()))?;
        (Some(wrapped), key.1)
    } else {
        (None, None)
    };
    let volume = Volume {
        id: id.clone(),
        name: spec.name.clone(),
        size: spec.size,
        fs: spec.fs,
        repl: spec.repl,
        io_priority: spec.io_priority.unwrap_or(class),
        max_iops: spec.max_iops,
        max_bandwidth: spec.max_bandwidth,
        encrypted,
        key_ref: encrypted.then(|| "cluster".to_owned()),
        labels: spec.labels.clone(),
        replicas: placed
            .replicas
            .iter()
            .map(|(node, pool)| Replica {
                node: *node,
                split: None,
                pool: pool.clone(),
                thin_id: 0,
                meta_thin_id: None,
                serving_epoch: 0,
                left_behind: false,
                state: ReplicaState::Up,
            })
            .collect(),
        attachment: None,
        epoch: 0,
        assembled: false,
        accepted_losses: vec![],
        last_leg_loss: None,
        snapshot_schedule: None,
        phase: Phase::Live,
        formatted: false,
        wrapped_key,
        key_salt,
        origin: None,
        read_only: false,
        mount_path: None,
        retired_thin_ids: vec![],
        created: now(),
        check: None,
        meta_slot: 0,
        dropped: Vec::new(),
        build: None,
        last_build: None,
        replacing: None,
        evacuating: None,
        last_split: None,
        replica_timeout_s: None,
        placement: Some(PlacementNote {
            explanation: placed.explanation.clone(),
            shortfall: placed.shortfall.clone(),
        }),
    };
    let what = format!("volume {}", spec.name);
    record(&s, Some(Command::CreateVolume { volume }), Some(&id), &what).await?;
    inspect(State(s), Path(id)).await
}

#[utoipa::path(
    put,
    path = "/v1/volumes/{vol}",
    operation_id = "volume_resize",
    tag = "volumes",
    summary = "Grow a volume",
    params(("vol" = String, Path, description = "The volume's name or id")),
    request_body = ResizeRequest,
    responses((status = 200, description = "The volume as it is now", body = VolumeView))
)]
pub async fn resize(
    State(s): State<AppState>,
    Path(key): Path<String>,
    JsonBody(req): JsonBody<ResizeRequest>,
) -> ApiResult<VolumeView> {
    let size = parse_size("size", &req.size).map_err(bad)?;
    let (v, pools) = s
        .cluster
        .state()
        .read(|st| find(st, &key).map(|v| (v, candidates(&s, st))))?;
    this_node_volume(&s, &v)?;
    not_replicated(&v, "growing")?;
    if size < v.size {
        return Err(bad(format!(
            "size: {} is smaller than the volume's {}; shrinking is not supported",
            crate::volume::spec::human(size),
            crate::volume::spec::human(v.size)
        )));
    }
    if v.read_only {
        return Err(bad(format!("volume {} is a read-only clone", v.name)));
    }
    if size > v.size {
        if let Some(p) = pools
            .iter()
            .find(|p| Some(&p.id) == v.replicas.first().map(|r| &r.pool))
        {
            placement::admit(p, size - v.size, s.config.overcommit).map_err(bad)?;
        }
    }
    let change = (size > v.size).then_some(VolumeChange::Resize { size });
    update(s, &v, change, "the new size").await
}

#[utoipa::path(
    delete,
    path = "/v1/volumes/{vol}",
    operation_id = "volume_delete",
    tag = "volumes",
    summary = "Delete a volume and its snapshots",
    params(("vol" = String, Path, description = "The volume's name or id")),
    responses((status = 200, description = "Deleted", body = Deleted))
)]
pub async fn delete(State(s): State<AppState>, Path(key): Path<String>) -> ApiResult<Deleted> {
    let v = s.cluster.state().read(|st| find(st, &key))?;
    if v.repl == 1 {
        this_node_volume(&s, &v)?;
    }
    if let Some(at) = &v.mount_path {
        return Err(ApiError::Conflict(format!(
            "volume {} is mounted at {at}; unmount it first (pxd volume unmount {})",
            v.name, v.name
        )));
    }
    let shown = s.cluster.state().read(|st| view(st, &v));
    // A replicated volume is opened on its attach node, and the store refuses to delete it
    // while it is attached; a leg here is held open by its export.
    let open = if v.repl > 1 {
        0
    } else {
        open_count(&s, &v).await?
    };
    if open > 0 {
        return Err(ApiError::Conflict(format!(
            "volume {} is in use ({open} opener(s) of {}); stop them first",
            v.name,
            shown
                .device
                .map(|d| d.display().to_string())
                .unwrap_or_default()
        )));
    }
    let cmd = Command::UpdateVolume {
        id: v.id.clone(),
        change: VolumeChange::Delete,
    };
    record(
        &s,
        Some(cmd),
        Some(&v.id),
        &format!("the delete of {}", v.name),
    )
    .await?;
    Ok(Json(Deleted { deleted: v.name }))
}

/// Checks a mount path: strictly inside the mount root (so the reconciler, which only ever
/// undoes mounts under it, can always find and undo it), spelled plainly (absolute, no `.`,
/// `..` or NUL), at most 1024 bytes, and neither inside nor above another volume's mount.
fn check_mount_path(
    p: &std::path::Path,
    root: &std::path::Path,
    others: &[String],
) -> Result<(), ApiError> {
    use std::os::unix::ffi::OsStrExt;
    use std::path::Component;
    let plain = p.is_absolute()
        && p.components()
            .skip(1)
            .all(|c| matches!(c, Component::Normal(_)))
        && !p.as_os_str().as_bytes().contains(&0)
        // Spelled as /proc/mounts will show it: no `//`, `/./` or trailing `/`.
        && p.components().collect::<PathBuf>().as_os_str() == p.as_os_str()
        && p.as_os_str().len() <= 1024;
    if !plain {
        return Err(bad(format!(
            "path: {:?} must be an absolute path of at most 1024 bytes without ., .., // or NUL",
            p
        )));
    }
    if !p.starts_with(root) || p == root {
        return Err(bad(format!(
            "path: {} is outside the mount root {}; pxd mounts volumes only below it (--mount-root)",
            p.display(),
            root.display()
        )));
    }
    for other in others {
        let other = std::path::Path::new(other);
        if p.starts_with(other) || other.starts_with(p) {
            return Err(ApiError::Conflict(format!(
                "path: {} overlaps {}, where another volume is mounted",
                p.display(),
                other.display()
            )));
        }
    }
    Ok(())
}

#[utoipa::path(
    post,
    path = "/v1/volumes/{vol}/mount",
    operation_id = "volume_mount",
    tag = "volumes",
    summary = "Attach here and mount",
    params(("vol" = String, Path, description = "The volume's name or id")),
    request_body = MountRequest,
    responses((status = 200, description = "The volume as it is now", body = VolumeView))
)]
pub async fn mount(
    State(s): State<AppState>,
    Path(key): Path<String>,
    JsonBody(req): JsonBody<MountRequest>,
) -> ApiResult<VolumeView> {
    let v = s.cluster.state().read(|st| find(st, &key))?;
    if v.repl == 1 {
        this_node_volume(&s, &v)?;
    }
    if v.fs == Fs::Raw {
        return Err(bad(format!(
            "fs: volume {} is raw; there is no filesystem to mount (use its device)",
            v.name
        )));
    }
    let path = req
        .path
        .unwrap_or_else(|| s.reconciler.mount_root().join(&v.name));
    let others: Vec<String> = s.cluster.state().read(|st| {
        st.volumes
            .values()
            .filter(|o| o.id != v.id)
            .filter_map(|o| o.mount_path.clone())
            .collect()
    });
    check_mount_path(&path, s.reconciler.mount_root(), &others)?;
    let path = path.display().to_string();
    if let Some(at) = v.mount_path.as_ref().filter(|at| **at != path) {
        return Err(ApiError::Conflict(format!(
            "volume {} is mounted at {at} already",
            v.name
        )));
    }
    let me = s.cluster.id();
    let change = v.mount_path.is_none().then_some(VolumeChange::Mount {
        node: me,
        path: Some(path),
    });
    if v.repl > 1 {
        // Mounting implies attaching here; the mount itself is part of the attach.
        if v.attachment.as_ref().is_none_or(|a| a.node != me) {
            let attach = VolumeChange::Attach {
                node: me,
                force: false,
                by_mount: true,
                lost: super::attach::out_of_reach(&s, &v),
            };
            super::attach::submit(&s, &v, attach).await?;
        }
        if let Some(change) = change {
            super::attach::submit(&s, &v, change).await?;
        }
        super::attach::wait_attached(&s, &v.id, me).await?;
        return update(s, &v, None, "the mount").await;
    }
    update(s, &v, change, "the mount").await
}

#[utoipa::path(
    post,
    path = "/v1/volumes/{vol}/unmount",
    operation_id = "volume_unmount",
    tag = "volumes",
    summary = "Unmount",
    params(("vol" = String, Path, description = "The volume's name or id")),
    responses((status = 200, description = "The volume as it is now", body = VolumeView))
)]
pub async fn unmount(State(s): State<AppState>, Path(key): Path<String>) -> ApiResult<VolumeView> {
    let v = s.cluster.state().read(|st| find(st, &key))?;
    let me = s.cluster.id();
    if v.repl > 1 {
        if let Some(a) = v.attachment.as_ref().filter(|a| a.node != me) {
            return Err(bad(format!(
                "volume {} is attached on node {}; unmount it there",
                v.name, a.node
            )));
        }
    } else {
        this_node_volume(&s, &v)?;
    }
    let change = v.mount_path.is_some().then_some(VolumeChange::Mount {
        node: me,
        path: None,
    });
    let detaches = v.repl > 1 && v.attachment.as_ref().is_some_and(|a| a.by_mount);
    if detaches {
        if let Some(change) = change {
            super::attach::submit(&s, &v, change).await?;
        }
        super::attach::wait_detached(&s, &v.id).await?;
        return update(s, &v, None, "the unmount").await;
    }
    update(s, &v, change, "the unmount").await
}

#[cfg(test)]
mod mount_path_tests {
    use super::*;
    use std::path::Path;

    fn check(p: &str) -> Result<(), String> {
        let others = ["/var/lib/pxd/mounts/db".to_string()];
        check_mount_path(Path::new(p), Path::new("/var/lib/pxd/mounts"), &others)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn mounts_stay_strictly_inside_the_root_and_apart() {
        assert!(check("/var/lib/pxd/mounts/web").is_ok());
        assert!(check("/var/lib/pxd/mounts/a/b").is_ok());
        for outside in ["/proc/x", "/var/lib/pxd", "/var/lib/pxd/mounts", "/etc"] {
            let e = check(outside).unwrap_err();
            assert!(
                e.contains("outside the mount root /var/lib/pxd/mounts") && e.contains("path:"),
                "{outside}: {e}"
            );
        }
        for odd in [
            "relative/x",
            "/var/lib/pxd/mounts/../x",
            "/var/lib/pxd/mounts/./x",
            "/var/lib/pxd/mounts/a\0b",
            "/var/lib/pxd/mounts//x",
            "/var/lib/pxd/mounts/x/",
        ] {
            let e = check(odd).unwrap_err();
            assert!(e.contains("without ., .., // or NUL"), "{odd:?}: {e}");
        }
        for overlap in ["/var/lib/pxd/mounts/db", "/var/lib/pxd/mounts/db/inner"] {
            let e = check(overlap).unwrap_err();
            assert!(e.contains("another volume is mounted"), "{overlap}: {e}");
        }
        let long = format!("/var/lib/pxd/mounts/{}", "x".repeat(1100));
        assert!(check(&long).is_err());
    }
}
