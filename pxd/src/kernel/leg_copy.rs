//! The kernel side of copying a leg to a new replica (DESIGN §5, "A new replica"), on the
//! node the copy comes from: snapshots of its leg's data thin, read-only devices over them,
//! what one maps and what changed between two, and their removal.
//!
//! A copy keeps at most two snapshots, in two slots: the last round's (what the new leg
//! holds) and the current one's. Their thin ids are reserved in the store, so a crash leaves
//! nothing that a later round or the clean-up does not remove.

use crate::kernel::dm::{node_path, DeviceMapper, DmOpError};
use crate::kernel::stack::{self, StackError};
use crate::kernel::thin_tools::{self, MappingError};
use crate::plan::names::{pool_devices, DeviceName, Id, Kind, Role};
use crate::plan::replica::leg_thins;
use crate::plan::thin::{plan_thin_read_only, ThinPlanError};
use crate::plan::thin_map::{Delta, Mapping};
use crate::pool::{delete_thin_id_in, snapshot_thin_id_in, PoolError};
use devicemapper::{Sectors, ThinDevId};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Dm(#[from] DmOpError),
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Plan(#[from] ThinPlanError),
    #[error(transparent)]
    Stack(#[from] StackError),
    #[error(transparent)]
    Mapping(#[from] MappingError),
    #[error("the leg's data thin {0} is not up on this node")]
    LegDown(String),
}

/// This node's leg of a volume, as a copy reads it.
#[derive(Debug, Clone)]
pub struct LegSource {
    pub node: Id,
    pub pool: Id,
    pub volume: Id,
    /// The leg's data thin.
    pub thin_id: ThinDevId,
    pub size: Sectors,
}

impl LegSource {
    fn pool_device(&self) -> DeviceName {
        let [_, _, top] = pool_devices(&self.node, &self.pool);
        top
    }

    fn pool_meta(&self) -> PathBuf {
        let [meta, _, _] = pool_devices(&self.node, &self.pool);
        node_path(&meta.dm_name())
    }

    /// The read-only device over the snapshot in `slot`.
    pub fn copy_device(&self, slot: u8) -> DeviceName {
        DeviceName::new(&self.node, Kind::Thin, &self.volume, Some(Role::Copy(slot)))
    }

    /// Takes thin `snap` as a snapshot of the leg, in `slot`, replacing whatever that slot
    /// held; the leg's data thin is suspended around it, so every write it acknowledged is
    /// in. Returns the path of a read-only device over the snapshot.
    pub fn snapshot(
        &self,
        dm: &dyn DeviceMapper,
        slot: u8,
        snap: ThinDevId,
    ) -> Result<PathBuf, CopyError> {
        self.drop_snapshot(dm, slot, snap)?;
        let (_, data) = leg_thins(&self.node, &self.volume);
        if dm.info(&data.dm_name())?.is_none() {
            return Err(CopyError::LegDown(data.to_string()));
        }
        snapshot_thin_id_in(dm, &self.pool_device(), self.thin_id, snap, &[&data])?;
        let mut plan = plan_thin_read_only(&self.node, &self.pool, &self.volume, snap, self.size)?;
        plan.name = self.copy_device(slot);
        stack::apply(dm, &[&plan])?;
        Ok(node_path(&plan.name.dm_name()))
    }

    /// Removes the snapshot in `slot` (thin `snap`) and its device; one already gone is fine.
    pub fn drop_snapshot(
        &self,
        dm: &dyn DeviceMapper,
        slot: u8,
        snap: ThinDevId,
    ) -> Result<(), CopyError> {
        stack::teardown(dm, &[&self.copy_device(slot)])?;
        delete_thin_id_in(dm, &self.pool_device(), snap)?;
        Ok(())
    }

    /// The blocks snapshot `snap` maps.
    pub fn mapped(&self, dm: &dyn DeviceMapper, snap: ThinDevId) -> Result<Mapping, CopyError> {
        let pool = self.pool_device().dm_name();
        Ok(thin_tools::mapped(
            dm,
            &pool,
            &self.pool_meta(),
            u32::from(snap),
        )?)
    }

    /// What changed from snapshot `older` to snapshot `newer`.
    pub fn delta(
        &self,
        dm: &dyn DeviceMapper,
        older: ThinDevId,
        newer: ThinDevId,
    ) -> Result<Delta, CopyError> {
        let pool = self.pool_device().dm_name();
        Ok(thin_tools::delta(
            dm,
            &pool,
            &self.pool_meta(),
            u32::from(older),
            u32::from(newer),
        )?)
    }
}
