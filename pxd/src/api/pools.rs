//! Drive and pool routes: `POST /v1/drives` `{path, force}` benchmarks a drive, sorts it into
//! a class and adds it to this node's pool of that class (made on first use, grown online
//! after); `GET /v1/pools` lists the pools with their use.

use super::{ApiError, ApiResult, AppState};
use crate::cluster::Op;
use crate::kernel::block;
use crate::plan::names::Id;
use crate::plan::pool::{plan_pool, Drive as PlanDrive, PoolSpec, DEFAULT_CHUNK};
use crate::pool::benchmark::{self, BenchConfig, BenchResult};
use crate::pool::drive::{check_addable, inspect, DriveError};
use crate::reconcile::service::PoolUse;
use crate::store::types::{Benchmark, Class, Drive, DriveState, NodeId, Pool};
use crate::store::Command;
use axum::extract::State;
use axum::Json;
use devicemapper::Sectors;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Bytes zeroed at the head of an added drive: its label and any old pool metadata there, so
/// a reused disk is never mistaken for a pool to adopt.
const WIPE_BYTES: usize = 4 << 20;

#[derive(Debug, Serialize, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolView {
    pub id: String,
    pub node: NodeId,
    pub class: Class,
    pub drives: Vec<String>,
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
        other => ApiError::BadRequest(other.to_string()),
    }
}

pub async fn add(
    State(s): State<AppState>,
    Json(req): Json<AddDriveRequest>,
) -> ApiResult<DriveAdded> {
    if s.cluster.cluster_id().is_none() {
        return Err(crate::cluster::ClusterError::NotInCluster.into());
    }
    let me = s.cluster.id();
    let path = req.path.clone();
    if !path.is_absolute() {
        return Err(ApiError::BadRequest(format!(
            "path: {} must be an absolute device path",
            path.display()
        )));
    }
    let shown = path.display().to_string();
    let pooled = s.cluster.state().read(|st| {
        st.pools
            .values()
            .find(|p| p.node == me && p.drive_paths.contains(&shown))
            .map(|p| p.id.clone())
    });
    if let Some(pool) = pooled {
        return Err(ApiError::Conflict(format!(
            "drive {shown} is in pool {pool} already"
        )));
    }
    let thresholds = s.config.thresholds;
    let force = req.force;
    // Inspect, measure (writes are fine: the drive is about to be pooled) and wipe its head.
    let (info, result, class) = tokio::task::spawn_blocking(move || {
        let info = inspect(&path).map_err(drive_error)?;
        check_addable(&info, force).map_err(drive_error)?;
        let cfg = BenchConfig {
            destructive: true,
            ..BenchConfig::default()
        };
        let result = benchmark::run(&path, &cfg)
            .map_err(|e| ApiError::Node(format!("benchmark {}: {e}", path.display())))?;
        let class = crate::pool::class::classify(&result, &thresholds);
        block::zero_direct(&path, 0, WIPE_BYTES)
            .map_err(|e| ApiError::Node(format!("wipe the head of {}: {e}", path.display())))?;
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
    let mut pool = existing.unwrap_or_else(|| Pool {
        id: format!("{:016x}", rand::random::<u64>()),
        node: me,
        class,
        drives: vec![],
        capacity: 0,
        used: 0,
        benchmark: Some(stored_benchmark(&result)),
        chunk_sectors: *DEFAULT_CHUNK,
        drive_paths: vec![],
    });
    pool.drives.push(info.id.clone());
    pool.drive_paths.push(shown.clone());
    pool.capacity = capacity(&pool).unwrap_or(pool.capacity + info.size_bytes);
    let drive = Drive {
        id: info.id.clone(),
        node: me,
        path: shown.clone(),
        size: info.size_bytes,
        class,
        state: DriveState::Online,
    };
    // The pool first: it is what the reconciler builds from.
    s.cluster
        .submit_and_apply(Op::Command(Command::PutPool { pool: pool.clone() }))
        .await?;
    let what = format!("drive {shown} in pool {}", pool.id);
    super::volumes::record(&s, Some(Command::PutDrive { drive }), None, &what).await?;
    Ok(Json(DriveAdded {
        path: req.path,
        id: info.id,
        class,
        pool: pool.id,
        benchmark: result,
    }))
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

/// The pool's data bytes as planned over its drives.
fn capacity(pool: &Pool) -> Option<u64> {
    let drives = pool
        .drive_paths
        .iter()
        .map(|p| {
            let p = std::path::Path::new(p);
            Some(PlanDrive {
                dev: block::device_of(p).ok()?,
                size: Sectors(block::size_bytes(p).ok()? / 512),
            })
        })
        .collect::<Option<Vec<_>>>()?;
    let spec = PoolSpec {
        node: Id::node(&pool.node.to_string()).ok()?,
        pool: Id::object(&pool.id).ok()?,
        drives,
        chunk: Sectors(pool.chunk_sectors),
    };
    Some(*plan_pool(&spec).ok()?.data.length() * 512)
}
