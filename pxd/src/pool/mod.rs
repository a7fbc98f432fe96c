//! Thin pools on one node: bring a pool's devices up (new or existing metadata), make and
//! delete thin devices in it, and read its use.

pub mod benchmark;
pub mod class;
pub mod drive;
pub mod label;
pub mod superblock;

use crate::kernel::block;
use crate::kernel::dm::{node_path, DeviceMapper, DmOpError};
use crate::kernel::stack::{self, AppliedStack, Outcome, StackError};
use crate::plan::names::{DeviceName, Id};
use crate::plan::pool::{plan_pool, PoolPlan, PoolPlanError, PoolSpec};
use crate::plan::thin::{plan_thin, ThinPlanError};
use devicemapper::{Device, Sectors, ThinDevId, ThinPoolStatus};
use std::fmt;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Plan(#[from] PoolPlanError),
    #[error(transparent)]
    ThinPlan(#[from] ThinPlanError),
    #[error(transparent)]
    Stack(#[from] StackError),
    #[error(transparent)]
    Dm(#[from] DmOpError),
    #[error("{op} {device}: {source}")]
    Io {
        op: &'static str,
        device: String,
        source: std::io::Error,
    },
    #[error("pool {pool}: status {status:?} cannot be read: {reason}")]
    Status {
        pool: String,
        status: String,
        reason: String,
    },
    #[error("pool {pool} is {state}; pxd will not use it until it is repaired")]
    Unusable { pool: String, state: String },
    /// The metadata of a pool that was activated before is missing or fails its check. Its
    /// bytes are left exactly as they are.
    #[error("pool {pool} is damaged: its metadata on drive {drive} {check}; pxd leaves it as it is until an operator repairs it (thin_check, thin_repair)")]
    Damaged {
        pool: String,
        drive: Device,
        check: String,
    },
}

/// What bringing up a pool whose devices are down may do to its metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metadata {
    /// The pool was never activated: metadata without a thin superblock is made fresh.
    MayBeNew,
    /// The pool was activated before: its metadata must be there and pass `thin_check`,
    /// or the pool is refused and left as it is.
    MustExist,
    /// A member of the pool was replaced while nothing was on it: what its old metadata
    /// holds describes a layout that is gone, so it is zeroed and made fresh.
    Fresh,
}

/// A pool that is up.
#[derive(Debug)]
pub struct Pool {
    pub plan: PoolPlan,
    pub spec: PoolSpec,
    /// What bringing it up did to each device.
    pub applied: AppliedStack,
    /// True if the metadata was new (zeroed and formatted by the kernel on first activation).
    pub fresh_metadata: bool,
}

impl Pool {
    pub fn name(&self) -> &DeviceName {
        &self.plan.pool.name
    }
}

/// Brings a pool up: its meta and data devices, then the thin-pool over them. When the pool
/// is not up yet, its metadata is checked first: without a thin superblock it is zeroed and
/// made fresh only for [`Metadata::MayBeNew`]; otherwise the pool is refused as damaged, and
/// so it is when `thin_check` fails. Re-running on a live pool adopts it. On failure, what
/// this call made is removed, and nothing on the drives has changed.
pub fn ensure_pool(
    dm: &dyn DeviceMapper,
    spec: &PoolSpec,
    metadata: Metadata,
) -> Result<Pool, PoolError> {
    let plan = plan_pool(spec)?;
    let lower = stack::apply(dm, &[&plan.meta, &plan.data])?;
    let upper = (|| {
        let pool_exists = dm.info(&plan.pool.name.dm_name())?.is_some();
        let mut fresh = false;
        if !pool_exists {
            let meta = node_path(&plan.meta.name.dm_name());
            let io = |op, source| PoolError::Io {
                op,
                device: plan.meta.name.to_string(),
                source,
            };
            let damaged = |check: String| PoolError::Damaged {
                pool: spec.pool.to_string(),
                drive: spec.drives[0].dev,
                check,
            };
            let head = block::read_direct(&meta, 0, superblock::HEAD_LEN)
                .map_err(|e| io("read metadata superblock of", e))?;
            if metadata == Metadata::Fresh {
                block::zero_direct(&meta, 0, superblock::HEAD_LEN)
                    .map_err(|e| io("clear metadata of", e))?;
                fresh = true;
            } else if superblock::has_thin_superblock(&head) {
                crate::kernel::thin_tools::thin_check(&meta).map_err(damaged)?;
            } else if metadata == Metadata::MayBeNew {
                block::zero_direct(&meta, 0, superblock::HEAD_LEN)
                    .map_err(|e| io("clear metadata of", e))?;
                fresh = true;
            } else {
                return Err(damaged("has no thin superblock".into()));
            }
        }
        let top = stack::apply(dm, &[&plan.pool])?;
        Ok::<_, PoolError>((top, fresh))
    })();
    match upper {
        Ok((top, fresh_metadata)) => {
            let mut applied = lower;
            applied.devices.extend(top.devices);
            let pool = Pool {
                plan,
                spec: spec.clone(),
                applied,
                fresh_metadata,
            };
            check_usable(dm, &pool)?;
            Ok(pool)
        }
        Err(err) => {
            if let Err(rb) = lower.rollback(dm) {
                tracing::error!(error = %rb, "rollback of pool devices failed");
            }
            Err(err)
        }
    }
}

/// Grows a live pool onto the drives of `spec`, which lists the pool's drives in their old
/// order with new ones appended: the data device gains segments and the thin-pool its new
/// length, lowest first, while volumes on it keep their I/O. Running it again once done
/// changes nothing.
pub fn grow_pool(dm: &dyn DeviceMapper, spec: &PoolSpec) -> Result<Pool, PoolError> {
    let plan = plan_pool(spec)?;
    stack::grow(dm, &[&plan.data, &plan.pool])?;
    ensure_pool(dm, spec, Metadata::MustExist)
}

fn check_usable(dm: &dyn DeviceMapper, pool: &Pool) -> Result<(), PoolError> {
    match status(dm, pool.name())? {
        ThinPoolStatus::Working(w) => {
            let state = format!("{:?}", w.summary);
            if state.contains("ReadOnly") || state.contains("OutOfSpace") || w.needs_check {
                // A needs_check or read-only pool wants thin_check/thin_repair by an operator.
                return Err(PoolError::Unusable {
                    pool: pool.name().to_string(),
                    state: if w.needs_check {
                        "flagged needs_check".into()
                    } else {
                        state
                    },
                });
            }
            Ok(())
        }
        ThinPoolStatus::Error => Err(PoolError::Unusable {
            pool: pool.name().to_string(),
            state: "in error".into(),
        }),
        ThinPoolStatus::Fail => Err(PoolError::Unusable {
            pool: pool.name().to_string(),
            state: "failed".into(),
        }),
    }
}

fn status(dm: &dyn DeviceMapper, pool: &DeviceName) -> Result<ThinPoolStatus, PoolError> {
    let lines = dm.status(&pool.dm_name())?;
    let bad = |status: String, reason: String| PoolError::Status {
        pool: pool.to_string(),
        status,
        reason,
    };
    let line = lines
        .first()
        .ok_or_else(|| bad(String::new(), "no status line".into()))?;
    line.3
        .parse::<ThinPoolStatus>()
        .map_err(|e| bad(line.3.clone(), e.to_string()))
}

/// Data and metadata use of a pool, from its kernel status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolUsage {
    pub chunk: Sectors,
    pub data_used_chunks: u64,
    pub data_total_chunks: u64,
    pub meta_used_blocks: u64,
    pub meta_total_blocks: u64,
}

impl PoolUsage {
    pub fn data_used_bytes(&self) -> u64 {
        self.data_used_chunks * *self.chunk * 512
    }
    pub fn data_total_bytes(&self) -> u64 {
        self.data_total_chunks * *self.chunk * 512
    }
}

impl fmt::Display for PoolUsage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MIB: f64 = 1024.0 * 1024.0;
        write!(
            f,
            "data {:.1} MiB of {:.1} MiB ({}/{} chunks), metadata {}/{} blocks",
            self.data_used_bytes() as f64 / MIB,
            self.data_total_bytes() as f64 / MIB,
            self.data_used_chunks,
            self.data_total_chunks,
            self.meta_used_blocks,
            self.meta_total_blocks
        )
    }
}

/// Reads the pool's use.
pub fn usage(dm: &dyn DeviceMapper, pool: &Pool) -> Result<PoolUsage, PoolError> {
    usage_of(dm, pool.name(), pool.spec.chunk)
}

/// Reads the use of the thin-pool device `name`, whose chunk is `chunk`.
pub fn usage_of(
    dm: &dyn DeviceMapper,
    name: &DeviceName,
    chunk: Sectors,
) -> Result<PoolUsage, PoolError> {
    match status(dm, name)? {
        ThinPoolStatus::Working(w) => Ok(PoolUsage {
            chunk,
            data_used_chunks: *w.usage.used_data,
            data_total_chunks: *w.usage.total_data,
            meta_used_blocks: *w.usage.used_meta,
            meta_total_blocks: *w.usage.total_meta,
        }),
        other => Err(PoolError::Unusable {
            pool: name.to_string(),
            state: format!("{other:?}"),
        }),
    }
}

/// Bytes a thin device has mapped in its pool, from its status (`<mapped sectors> <highest>`);
/// none if the device is not up or says something else.
pub fn thin_mapped_bytes(dm: &dyn DeviceMapper, name: &DeviceName) -> Option<u64> {
    let status = dm.status(&name.dm_name()).ok()?;
    let sectors: u64 = status.first()?.3.split_whitespace().next()?.parse().ok()?;
    Some(sectors * 512)
}

/// Makes thin device `thin_id` in the pool's metadata; an id that exists already is adopted.
pub fn create_thin_id(
    dm: &dyn DeviceMapper,
    pool: &Pool,
    thin_id: ThinDevId,
) -> Result<Outcome, PoolError> {
    match dm.message(&pool.name().dm_name(), &format!("create_thin {thin_id}")) {
        Ok(()) => Ok(Outcome::Created),
        Err(e) if e.errno == Some(libc::EEXIST) => Ok(Outcome::AlreadyExists),
        Err(e) => Err(e.into()),
    }
}

/// Deletes thin device `thin_id` from the pool's metadata, freeing its chunks. An id that is
/// not there (a delete already done) is fine.
pub fn delete_thin_id(
    dm: &dyn DeviceMapper,
    pool: &Pool,
    thin_id: ThinDevId,
) -> Result<(), PoolError> {
    delete_thin_id_in(dm, pool.name(), thin_id)
}

/// [`delete_thin_id`] in the thin-pool device `pool`.
pub fn delete_thin_id_in(
    dm: &dyn DeviceMapper,
    pool: &DeviceName,
    thin_id: ThinDevId,
) -> Result<(), PoolError> {
    match dm.message(&pool.dm_name(), &format!("delete {thin_id}")) {
        Err(e) if e.errno == Some(libc::ENODATA) => Ok(()),
        other => Ok(other?),
    }
}

/// A thin volume that is up.
#[derive(Debug)]
pub struct ThinVolume {
    pub name: DeviceName,
    pub thin_id: ThinDevId,
    /// Whether the thin id (the volume's blocks) was made now or already in the pool.
    pub id_outcome: Outcome,
    /// Whether the dm device was made now (e.g. after a restart) or already active.
    pub device_outcome: Outcome,
}

impl ThinVolume {
    pub fn path(&self) -> std::path::PathBuf {
        node_path(&self.name.dm_name())
    }
}

/// Makes (or adopts) thin id `thin_id` and its dm device of `size` sectors. If the dm device
/// cannot be made, a thin id this call created is deleted again.
pub fn ensure_thin(
    dm: &dyn DeviceMapper,
    pool: &Pool,
    volume: &Id,
    thin_id: ThinDevId,
    size: Sectors,
) -> Result<ThinVolume, PoolError> {
    let plan = plan_thin(&pool.spec.node, &pool.spec.pool, volume, thin_id, size)?;
    let id_outcome = create_thin_id(dm, pool, thin_id)?;
    match stack::apply(dm, &[&plan]) {
        Ok(applied) => Ok(ThinVolume {
            name: plan.name,
            thin_id,
            id_outcome,
            device_outcome: applied.devices[0].outcome,
        }),
        Err(err) => {
            if id_outcome == Outcome::Created {
                if let Err(rb) = delete_thin_id(dm, pool, thin_id) {
                    tracing::error!(error = %rb, "could not delete thin id after a failed create");
                }
            }
            Err(err.into())
        }
    }
}

/// Deactivates a pool: the thin-pool, then its data and meta devices. Thin devices on it must
/// be deactivated first. Nothing on disk changes.
pub fn deactivate_pool(dm: &dyn DeviceMapper, pool: &Pool) -> Result<(), PoolError> {
    let [meta, data, top] = pool.plan.devices().map(|p| &p.name);
    stack::teardown(dm, &[top, data, meta])?;
    Ok(())
}

/// Records thin id `snap_id` as a snapshot of thin id `source_id`: a snapshot of a volume, or a
/// clone of a snapshot. While the source is live, its device stack (`live_top_down`, top first:
/// crypt, then thin) is suspended around the message, which flushes in-flight writes and
/// freezes a filesystem on top, so the snapshot is crash-consistent. The stack is resumed
/// whatever happens. An id that exists already is adopted.
pub fn snapshot_thin_id(
    dm: &dyn DeviceMapper,
    pool: &Pool,
    source_id: ThinDevId,
    snap_id: ThinDevId,
    live_top_down: &[&DeviceName],
) -> Result<Outcome, PoolError> {
    snapshot_thin_id_in(dm, pool.name(), source_id, snap_id, live_top_down)
}

/// [`snapshot_thin_id`] in the thin-pool device `pool`.
pub fn snapshot_thin_id_in(
    dm: &dyn DeviceMapper,
    pool: &DeviceName,
    source_id: ThinDevId,
    snap_id: ThinDevId,
    live_top_down: &[&DeviceName],
) -> Result<Outcome, PoolError> {
    let mut suspended: Vec<&DeviceName> = Vec::new();
    let mut result = Ok(Outcome::Created);
    for dev in live_top_down {
        match dm.suspend(&dev.dm_name()) {
            Ok(()) => suspended.push(dev),
            Err(e) => {
                result = Err(e.into());
                break;
            }
        }
    }
    if result.is_ok() {
        let msg = format!("create_snap {snap_id} {source_id}");
        result = match dm.message(&pool.dm_name(), &msg) {
            Ok(()) => Ok(Outcome::Created),
            Err(e) if e.errno == Some(libc::EEXIST) => Ok(Outcome::AlreadyExists),
            Err(e) => Err(e.into()),
        };
    }
    for dev in suspended.iter().rev() {
        if let Err(e) = dm.resume(&dev.dm_name()) {
            // I/O stays frozen on this device: the most urgent thing to report.
            tracing::error!(device = %dev, error = %e, "could not resume after a snapshot");
            if result.is_ok() {
                result = Err(e.into());
            }
        }
    }
    result
}
