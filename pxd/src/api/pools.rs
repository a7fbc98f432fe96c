//! Drive and pool routes: `POST /v1/drives` `{path, force}` benchmarks a drive, sorts it into
//! a class and adds it to this node's pool of that class (made on first use, grown online
//! after); `GET /v1/pools` lists the pools with their use.

use super::{ApiError, ApiResult, AppState, JsonBody};
use crate::kernel::block;
use crate::plan::names::Id;
use crate::plan::pool::{plan_pool, Drive as PlanDrive, PoolSpec, DEFAULT_CHUNK};
use crate::pool::benchmark::{self, BenchConfig, BenchResult};
use crate::pool::drive::{check_addable, inspect, label_standing, DriveError, DriveInfo};
use crate::pool::label::{DriveUuid, Label};
use crate::reconcile::service::PoolUse;
use crate::store::state::ClusterState;
use crate::store::types::{Benchmark, Class, Drive, DriveState, NodeId, Pool, PoolHealth};
use axum::extract::State;
use axum::Json;
use devicemapper::Sectors;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Bytes zeroed at the head of an added drive: its label and any old pool metadata there, so
/// a reused disk is never mistaken for a pool to adopt.
const WIPE_BYTES: usize = 4 << 20;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddDriveRequest {
    pub path: PathBuf,
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DriveAdded {
    pub path: PathBuf,
    pub id: String,
    pub class: Class,
    pub pool: String,
    pub benchmark: BenchResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub uuid: String,
    pub path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    pub capacity: u64,
    /// From the last reconcile pass on the pool's node; none elsewhere.
    pub usage: Option<PoolUse>,
    pub near_full: Option<String>,
    pub volumes: usize,
}

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
                    capacity: usage.map_or(p.capacity, |u| u.data_total),
                    near_full: usage.and_then(|u| u.near_full(&s.reconciler.full)),
                    usage,
                    volumes: st
                        .volumes
                        .values()
                        .filter(|v| v.replicas.iter().any(|r| r.pool == p.id))
                        .count(),
                }
            })
            .collect()
    })))
}

fn drive_error(e: DriveError) -> ApiError {
    match e {
        DriveError::Inspect { .. } => ApiError::BadRequest(format!("path: {e}")),
        DriveError::Member { .. } => ApiError::Conflict(e.to_string()),
        other => ApiError::BadRequest(other.to_string()),
    }
}

/// One drive add at a time on a node: the second of two adds of one disk then finds the
/// first one's label (or its pool holding the disk) and is refused, rather than
/// benchmarking a disk that was just pooled.
static ADDING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Adds a drive: checks it (in use, signatures, labels), benchmarks it into a class, wipes its
/// head and writes its label as the next member of this node's pool of that class, then
/// records it through Raft, where `apply` refuses a member slot or drive taken meanwhile.
/// A crash after the label but before the record leaves the drive "unclaimed": adding it
/// again takes it without `--force`.
pub async fn add(
    State(s): State<AppState>,
    JsonBody(req): JsonBody<AddDriveRequest>,
) -> ApiResult<DriveAdded> {
    let Some(cluster) = s.cluster.cluster_id() else {
        return Err(crate::cluster::ClusterError::NotInCluster.into());
    };
    let me = s.cluster.id();
    let path = req.path.clone();
    if !path.is_absolute() {
        return Err(ApiError::BadRequest(format!(
            "path: {} must be an absolute device path",
            path.display()
        )));
    }
    let _one = ADDING.lock().await;
    let shown = path.display().to_string();
    let members = s.cluster.state().read(member_index);
    let thresholds = s.config.thresholds;
    let force = req.force;
    let (cluster_id, node) = (cluster.clone(), me);
    // Inspect and measure (writes are fine: the drive is about to be pooled).
    let (info, result, class) = tokio::task::spawn_blocking(move || {
        let info = inspect(&path).map_err(drive_error)?;
        let standing = label_standing(&info, &cluster_id, node, &members);
        check_addable(&info, &standing, force).map_err(drive_error)?;
        let cfg = BenchConfig {
            destructive: true,
            ..BenchConfig::default()
        };
        let result = benchmark::run(&path, &cfg)
            .map_err(|e| ApiError::Node(format!("benchmark {}: {e}", path.display())))?;
        let class = crate::pool::class::classify(&result, &thresholds);
        Ok::<_, ApiError>((info, result, class))
    })
    .await
    .map_err(|e| ApiError::Node(e.to_string()))??;

    let existing = s.cluster.state().read(|st| {
        st.pools
            .values()
            .find(|p| p.node == me && p.class == class)
            .cloned()
    });
    let new_pool = match existing {
        Some(_) => None,
        None => Some(Pool {
            id: format!("{:016x}", rand::random::<u64>()),
            node: me,
            class,
            drives: vec![],
            capacity: 0,
            used: 0,
            benchmark: Some(stored_benchmark(&result)),
            chunk_sectors: *DEFAULT_CHUNK,
            drive_paths: vec![],
            generation: 0,
            activated: false,
            health: PoolHealth::Online,
        }),
    };
    let Some(pool) = existing.or_else(|| new_pool.clone()) else {
        return Err(ApiError::Node("no pool to add the drive to".into()));
    };
    let uuid = DriveUuid::random();
    let member = u32::try_from(pool.drives.len())
        .map_err(|_| ApiError::Conflict(format!("pool {} has too many drives", pool.id)))?;
    let label = Label {
        cluster: cluster.clone(),
        node: me,
        pool: pool.id.clone(),
        drive: uuid,
        member,
        generation: pool.generation + 1,
    };
    let (dev_path, written) = (req.path.clone(), label);
    tokio::task::spawn_blocking(move || {
        block::zero_direct(&dev_path, 0, WIPE_BYTES)
            .and_then(|()| crate::kernel::label::write(&dev_path, &written))
            .map_err(|e| ApiError::Node(format!("label {}: {e}", dev_path.display())))
    })
    .await
    .map_err(|e| ApiError::Node(e.to_string()))??;

    let capacity = capacity(&s, &pool, &info).unwrap_or(pool.capacity + info.size_bytes);
    let drive = Drive {
        id: uuid.to_string(),
        node: me,
        path: shown.clone(),
        hardware_id: info.hardware_id.clone(),
        pool: pool.id.clone(),
        size: info.size_bytes,
        class,
        state: DriveState::Online,
    };
    let what = format!("drive {shown} in pool {}", pool.id);
    let cmd = crate::store::pools::add_drive(drive, member, capacity, new_pool);
    super::volumes::record(&s, Some(cmd), None, &what).await?;
    Ok(Json(DriveAdded {
        path: req.path,
        id: uuid.to_string(),
        class,
        pool: pool.id,
        benchmark: result,
    }))
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

fn stored_benchmark(r: &BenchResult) -> Benchmark {
    let w = r.random_write.unwrap_or(r.random_read);
    Benchmark {
        read_iops: r.random_read.iops as u64,
        write_iops: w.iops as u64,
        read_p99_us: r.random_read.p99_us,
        write_p99_us: w.p99_us,
        seq_mb_per_s: r.sequential_read_mib_s as u64,
    }
}

/// The pool's data bytes as planned over its drives and the new one. The members count by
/// their recorded sizes: the plan needs sizes only, not where the drives are now.
fn capacity(s: &AppState, pool: &Pool, added: &DriveInfo) -> Option<u64> {
    let sizes: Vec<u64> = s.cluster.state().read(|st| {
        pool.drives
            .iter()
            .filter_map(|d| st.drives.get(d).map(|d| d.size))
            .collect()
    });
    if sizes.len() != pool.drives.len() {
        return None;
    }
    let drives = sizes
        .iter()
        .chain(std::iter::once(&added.size_bytes))
        .map(|b| PlanDrive {
            dev: added.dev,
            size: Sectors(b / 512),
        })
        .collect();
    let spec = PoolSpec {
        node: Id::node(&pool.node.to_string()).ok()?,
        pool: Id::object(&pool.id).ok()?,
        drives,
        chunk: Sectors(pool.chunk_sectors),
    };
    Some(*plan_pool(&spec).ok()?.data.length() * 512)
}
