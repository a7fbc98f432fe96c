//! The effecting half of the reconciler: runs planned steps against the kernel and records in
//! the desired state what must not be done twice (a filesystem made, a snapshot taken, a
//! delete finished).
//!
//! Crash tests abort it at any kernel change through [`Faults`].

use crate::crypt::{ClusterKey, CryptError, VolumeKey};
use crate::kernel::dm::{node_path, DeviceMapper, DmOpError};
use crate::kernel::fs::{self, FsError};
use crate::kernel::legs;
use crate::plan::names::{DeviceName, Id, Kind};
use crate::pool::{self, Metadata, Pool, PoolError};
use crate::reconcile::desired::{CheckPhase, JoinPhase, NodeState};
use crate::reconcile::faults::{Faults, FaultyDm};
use crate::reconcile::joining;
use crate::reconcile::steps::Step;
use crate::volume::{self, VolumeError};
use devicemapper::ThinDevId;
use std::collections::HashMap;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error(transparent)]
    Dm(#[from] DmOpError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Crypt(#[from] CryptError),
    #[error("volume {0} is encrypted but no cluster key was given")]
    NoClusterKey(String),
    #[error("{0} is open (mounted or in use); pxd will not remove it")]
    InUse(String),
    #[error("pool {0} is not up")]
    PoolNotUp(String),
    #[error("recording the new state: {0}")]
    Persist(std::io::Error),
    #[error(transparent)]
    Nvmet(#[from] crate::kernel::nvmet::NvmetError),
    #[error(transparent)]
    Nvme(#[from] crate::kernel::nvme_host::NvmeError),
    #[error(transparent)]
    Connect(#[from] legs::ConnectError),
    #[error(transparent)]
    Stack(#[from] crate::kernel::stack::StackError),
    #[error(transparent)]
    Reassemble(#[from] crate::kernel::stack::ReassembleError),
    #[error("{0}")]
    Replication(String),
    /// A drive label could not be written.
    #[error("{0}")]
    Label(String),
}

/// What a step works on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Concern {
    Volume(String),
    Pool(String),
    /// A drive being added.
    Drive(String),
    Node,
}

impl Concern {
    pub fn of(step: &Step, state: &NodeState) -> Concern {
        let by_name = |n: &DeviceName| match n.kind {
            Kind::Pool => Concern::Pool(n.id.to_string()),
            _ => Concern::Volume(n.id.to_string()),
        };
        let by_thin_id = |pool: &Id, id: ThinDevId| {
            let id = u64::from(u32::from(id));
            state
                .volumes
                .iter()
                .find(|v| {
                    v.pool == pool.as_str()
                        && (v.thin_id == id
                            || v.retired.contains(&id)
                            || v.snapshots.iter().any(|s| s.thin_id == id))
                })
                .map_or(Concern::Pool(pool.to_string()), |v| {
                    Concern::Volume(v.id.clone())
                })
        };
        match step {
            Step::Resume(n) | Step::Deactivate(n) => by_name(n),
            Step::MeasureDrive { drive } | Step::LabelDrive { drive, .. } => {
                Concern::Drive(drive.clone())
            }
            Step::EnsurePool(spec)
            | Step::CreatePool(spec)
            | Step::GrowPool(spec)
            | Step::ReformPool(spec) => Concern::Pool(spec.pool.to_string()),
            Step::RetireDrive { pool, .. } => Concern::Pool(pool.clone()),
            Step::CreateThinId { pool, thin_id } | Step::DeleteThinId { pool, thin_id } => {
                by_thin_id(pool, *thin_id)
            }
            Step::Activate { volume, .. }
            | Step::Grow { volume, .. }
            | Step::Mkfs { volume, .. }
            | Step::Snapshot { volume, .. }
            | Step::Copy { volume, .. }
            | Step::ForgetRetired { volume }
            | Step::Forget { volume, .. }
            | Step::Export { volume, .. }
            | Step::Unexport { volume, .. }
            | Step::Unlink { volume, .. }
            | Step::Serve { volume, .. }
            | Step::Connect { volume, .. }
            | Step::Disconnect { volume, .. }
            | Step::Attached { volume }
            | Step::Detached { volume }
            | Step::ReAdd { volume, .. }
            | Step::Reassemble { volume, .. }
            | Step::Reassembled { volume, .. }
            | Step::LegUp { volume, .. }
            | Step::LegDown { volume, .. }
            | Step::StartCheck { volume, .. }
            | Step::CheckDone { volume, .. }
            | Step::CheckCutShort { volume }
            | Step::Fence { volume, .. }
            | Step::Unfence { volume, .. } => Concern::Volume(volume.clone()),
            Step::Mount { device, .. } => by_name(device),
            Step::Unmount(_) => Concern::Node,
        }
    }

    /// Whether this is what `failed` concerned, or lies on a pool that failed.
    fn is_within(&self, failed: &Concern, state: &NodeState) -> bool {
        match (self, failed) {
            (_, Concern::Node) => false,
            (a, b) if a == b => true,
            (Concern::Volume(v), Concern::Pool(p)) => state.volume(v).is_some_and(|v| &v.pool == p),
            _ => false,
        }
    }

    /// The pool it concerns, if it is one.
    pub fn pool(&self) -> Option<&str> {
        match self {
            Concern::Pool(p) => Some(p),
            _ => None,
        }
    }

    /// The volume it concerns, if it is one.
    pub fn volume(&self) -> Option<&str> {
        match self {
            Concern::Volume(v) => Some(v),
            _ => None,
        }
    }
}

/// A step that failed, and what it concerned.
#[derive(Debug)]
pub struct Failure {
    pub concerns: Concern,
    pub error: ExecError,
}

/// Runs steps; see the module doc.
pub struct Executor<'a> {
    dm: &'a dyn DeviceMapper,
    cluster_key: Option<&'a ClusterKey>,
    faults: Faults,
    pools: HashMap<String, Pool>,
    copy_last: Option<&'a CopyLast<'a>>,
}

/// Runs the last copy round of a new leg of volume `id` while its raid is suspended, on the
/// node the copy comes from; returns the bytes it copied.
pub type CopyLast<'a> = dyn Fn(&str) -> Result<u64, String> + Sync + 'a;

impl<'a> Executor<'a> {
    pub fn new(dm: &'a dyn DeviceMapper, cluster_key: Option<&'a ClusterKey>) -> Self {
        Executor {
            dm,
            cluster_key,
            faults: Faults::from_env(),
            pools: HashMap::new(),
            copy_last: None,
        }
    }

    /// How a re-assembly that takes a new leg copies the last round.
    pub fn with_copy_last(mut self, copy_last: Option<&'a CopyLast<'a>>) -> Self {
        self.copy_last = copy_last;
        self
    }

    /// Runs `steps` in order, updating `state` and calling `persist` after every change to it.
    /// A failed step skips the later steps of what it concerned (its volume, or every volume
    /// of its pool) and no others, so one stuck volume never holds up the rest; the failures
    /// are returned. Only a failure to record the state stops the run.
    pub fn run(
        &mut self,
        steps: &[Step],
        state: &mut NodeState,
        persist: &mut dyn FnMut(&NodeState) -> std::io::Result<()>,
    ) -> Result<Vec<Failure>, ExecError> {
        let mut failures: Vec<Failure> = Vec::new();
        for step in steps {
            let concerns = Concern::of(step, state);
            if failures
                .iter()
                .any(|f| concerns.is_within(&f.concerns, state))
            {
                continue;
            }
            match self.one(step, state) {
                Ok(true) => {
                    self.faults.tick(&"recording the new state");
                    persist(state).map_err(ExecError::Persist)?;
                }
                Ok(false) => {}
                Err(error) => failures.push(Failure { concerns, error }),
            }
        }
        Ok(failures)
    }

    fn key(&self, state: &NodeState, volume: &str) -> Result<Option<VolumeKey>, ExecError> {
        let wrapped = match state.attached(volume) {
            Some(a) => a.key.as_ref(),
            None => state.volume(volume).and_then(|v| v.key.as_ref()),
        };
        let Some(wrapped) = wrapped else {
            return Ok(None);
        };
        let ck = self
            .cluster_key
            .ok_or_else(|| ExecError::NoClusterKey(volume.to_owned()))?;
        Ok(Some(ck.unwrap(wrapped, volume)?))
    }

    fn pool(&self, id: &str) -> Result<&Pool, ExecError> {
        self.pools
            .get(id)
            .ok_or_else(|| ExecError::PoolNotUp(id.to_owned()))
    }

    /// Makes thin id `thin_id` a copy of `source` in `pool`, suspending whichever of
    /// `live_top_down` (the source's stack) is up around it.
    fn copy(
        &self,
        dm: &dyn DeviceMapper,
        pool: &Id,
        source: ThinDevId,
        thin_id: ThinDevId,
        live_top_down: &[DeviceName],
    ) -> Result<(), ExecError> {
        let mut live = Vec::new();
        for n in live_top_down {
            if dm.info(&n.dm_name())?.is_some() {
                live.push(n);
            }
        }
        pool::snapshot_thin_id(dm, self.pool(pool.as_str())?, source, thin_id, &live)?;
        Ok(())
    }

    /// Erases the label of `drive`, leaving `pool`, wherever the drive is now; a drive that
    /// cannot be read or written any more is left as it is when it failed. Then marks the
    /// leave done in `state`, for the record.
    fn retire_drive(
        &self,
        state: &mut NodeState,
        pool: &str,
        drive: &str,
    ) -> Result<(), ExecError> {
        let Some(p) = state.pools.iter_mut().find(|p| p.id == pool) else {
            return Ok(());
        };
        let ours = |l: &pool::label::Label| {
            l.cluster == state.cluster
                && l.node.to_string() == state.node
                && l.pool == pool
                && l.drive.to_string() == drive
        };
        for found in crate::kernel::label::scan(&[]) {
            let pool::label::Found::Labelled(l) = &found.found else {
                continue;
            };
            if !ours(l) {
                continue;
            }
            self.faults
                .tick(&format_args!("erase the label of {}", found.path.display()));
            match crate::kernel::label::erase(&found.path, l) {
                Ok(_) => {}
                Err(e) if p.dead => tracing::warn!(
                    drive,
                    path = %found.path.display(),
                    error = %e,
                    "the failed drive's label cannot be erased; it leaves as it is"
                ),
                Err(e) => {
                    return Err(ExecError::Label(format!(
                        "erase the label of drive {drive} at {}: {e}",
                        found.path.display()
                    )))
                }
            }
        }
        if let Some(r) = p.retire.as_mut() {
            r.done = true;
        }
        Ok(())
    }

    /// Runs one step; true if it changed `state`.
    fn one(&mut self, step: &Step, state: &mut NodeState) -> Result<bool, ExecError> {
        let faulty = FaultyDm {
            inner: self.dm,
            faults: &self.faults,
        };
        let dm: &dyn DeviceMapper = &faulty;
        match step {
            Step::Resume(name) => {
                dm.resume(&name.dm_name())?;
            }
            Step::MeasureDrive { drive } | Step::LabelDrive { drive, .. } => {
                let Some(j) = state.joining.iter().find(|j| &j.id == drive).cloned() else {
                    return Ok(false);
                };
                let phase = match step {
                    Step::LabelDrive { label, .. } => {
                        joining::write_label(&j, label, state, &self.faults)
                    }
                    _ => joining::measure(&j, state, &self.faults),
                };
                if let JoinPhase::Failed(why) = &phase {
                    tracing::warn!(drive = %j.path.display(), "the drive add failed: {why}");
                }
                if let Some(j) = state.joining.iter_mut().find(|j| &j.id == drive) {
                    j.phase = phase;
                }
                return Ok(true);
            }
            Step::EnsurePool(spec) => {
                let pool = pool::ensure_pool(dm, spec, Metadata::MustExist)?;
                self.pools.insert(spec.pool.to_string(), pool);
            }
            Step::RetireDrive { pool, drive } => {
                self.retire_drive(state, pool, drive)?;
                return Ok(true);
            }
            Step::CreatePool(spec) | Step::ReformPool(spec) => {
                let metadata = match step {
                    Step::ReformPool(_) => Metadata::Fresh,
                    _ => Metadata::MayBeNew,
                };
                let pool = pool::ensure_pool(dm, spec, metadata)?;
                self.pools.insert(spec.pool.to_string(), pool);
                if let Some(p) = state.pools.iter_mut().find(|p| p.id == spec.pool.as_str()) {
                    p.activated = true;
                }
                return Ok(true);
            }
            Step::GrowPool(spec) => {
                let pool = pool::grow_pool(dm, spec)?;
                self.pools.insert(spec.pool.to_string(), pool);
            }
            Step::CreateThinId { pool, thin_id } => {
                pool::create_thin_id(dm, self.pool(pool.as_str())?, *thin_id)?;
            }
            Step::Activate { volume, plans } => {
                let key = self.key(state, volume)?;
                let refs: Vec<_> = plans.iter().collect();
                volume::open(dm, &refs, key.as_ref())?;
            }
            Step::Grow { volume, plans, fs } => {
                let key = self.key(state, volume)?;
                let refs: Vec<_> = plans.iter().collect();
                volume::grow(dm, &refs, key.as_ref())?;
                if let Some(top) = plans.last() {
                    let name = top.name.dm_name();
                    if let Some(info) = dm.info(&name)? {
                        let dev = node_path(&name);
                        let mounted =
                            fs::mountpoints_of(info.dev.major, info.dev.minor).map_err(|e| {
                                FsError {
                                    op: "find mounts of",
                                    target: dev.display().to_string(),
                                    detail: e.to_string(),
                                }
                            })?;
                        if let Some(at) = mounted.first() {
                            fs::grow(&dev, at, *fs)?;
                        }
                    }
                }
            }
            Step::Mkfs { volume, device, fs } => {
                let dev = node_path(&device.dm_name());
                // A crash after mkfs but before it was recorded must not wipe a filesystem.
                let existing = crate::kernel::blkid::signature(&dev).map_err(|detail| FsError {
                    op: "probe",
                    target: dev.display().to_string(),
                    detail,
                })?;
                if existing.as_deref() != Some(&fs.to_string()) {
                    self.faults.tick(&format_args!("mkfs {device}"));
                    fs::mkfs(&dev, *fs)?;
                }
                if let Some(v) = state.volume_mut(volume) {
                    v.formatted = true;
                }
                if let Some(a) = state.attached_mut(volume) {
                    a.formatted = true;
                }
                return Ok(true);
            }
            Step::Snapshot {
                volume,
                snapshot,
                pool,
                source,
                thin_id,
                live_top_down,
            } => {
                self.copy(dm, pool, *source, *thin_id, live_top_down)?;
                if let Some(s) = state
                    .volume_mut(volume)
                    .and_then(|v| v.snapshots.iter_mut().find(|s| &s.id == snapshot))
                {
                    s.taken = true;
                }
                return Ok(true);
            }
            Step::Copy {
                volume,
                pool,
                source,
                thin_id,
                live_top_down,
            } => {
                self.copy(dm, pool, *source, *thin_id, live_top_down)?;
                if let Some(v) = state.volume_mut(volume) {
                    v.origin = None;
                }
                return Ok(true);
            }
            Step::Mount {
                device,
                path,
                fs: kind,
                read_only,
            } => {
                self.faults.tick(&format_args!("mount {device}"));
                let dev = node_path(&device.dm_name());
                fs::mount(&dev, path, *kind, *read_only)?;
                // A restore brings back a filesystem as small as it was when the snapshot was
                // taken: fill the volume it now sits on (a no-op when it already does).
                if !*read_only {
                    fs::grow(&dev, path, *kind)?;
                }
            }
            Step::Unmount(path) => {
                self.faults
                    .tick(&format_args!("unmount {}", path.display()));
                fs::unmount(path)?;
            }
            Step::ForgetRetired { volume } => {
                if let Some(v) = state.volume_mut(volume) {
                    v.retired.clear();
                }
                return Ok(true);
            }
            Step::Deactivate(name) => {
                let dmn = name.dm_name();
                if let Some(info) = dm.info(&dmn)? {
                    if info.open_count > 0 {
                        return Err(ExecError::InUse(name.to_string()));
                    }
                    dm.remove(&dmn)?;
                }
            }
            Step::DeleteThinId { pool, thin_id } => {
                pool::delete_thin_id(dm, self.pool(pool.as_str())?, *thin_id)?;
            }
            Step::Export {
                nqn,
                device,
                host,
                port,
                ..
            } => {
                self.faults.tick(&format_args!("export {nqn}"));
                legs::export(nqn, &node_path(&device.dm_name()), host, *port)?;
            }
            Step::Unexport { nqn, .. } => {
                self.faults.tick(&format_args!("unexport {nqn}"));
                legs::unexport(nqn)?;
            }
            Step::Unlink { nqn, .. } => {
                self.faults.tick(&format_args!("unlink {nqn}"));
                legs::unlink(nqn)?;
            }
            Step::Connect {
                nqn, addr, host, ..
            } => {
                self.faults.tick(&format_args!("connect {nqn}"));
                legs::connect(nqn, *addr, host)?;
            }
            Step::Disconnect { controller, .. } => {
                self.faults.tick(&format_args!("disconnect {controller}"));
                crate::kernel::nvme_host::delete(controller)?;
            }
            Step::Serve { volume, epoch } => {
                let node = state.node.clone();
                if let Some(leg) = state.volume_mut(volume).and_then(|v| v.leg.as_mut()) {
                    leg.serving = *epoch;
                }
                // This node's own leg of a volume attached here may now be used.
                if let Some(a) = state.attached_mut(volume).filter(|a| a.epoch == *epoch) {
                    for l in a.legs.iter_mut().filter(|l| l.node == node) {
                        l.serving = true;
                    }
                }
                return Ok(true);
            }
            Step::Attached { volume } => {
                if let Some(a) = state.attached_mut(volume) {
                    a.attached = true;
                    a.fresh = false;
                }
                return Ok(true);
            }
            Step::StartCheck { volume, raid } => {
                self.faults.tick(&format_args!("check {raid}"));
                dm.message(&raid.dm_name(), "check")?;
                // md may drop a request that lands as a resync is being reaped: running only
                // once the raid says so, or the next pass asks again.
                let status = dm.status(&raid.dm_name())?;
                let action = status
                    .first()
                    .and_then(|(.., params)| params.parse::<crate::plan::raid::RaidStatus>().ok())
                    .map(|s| s.action);
                if action.as_deref() != Some("check") {
                    // Not a failure: nothing else of the volume waits on it.
                    tracing::info!(%raid, ?action, "the raid did not take the check; asking again next pass");
                    return Ok(false);
                }
                if let Some(a) = state.attached_mut(volume) {
                    a.check = Some(CheckPhase::Running);
                }
                return Ok(true);
            }
            Step::CheckDone { volume, mismatches } => {
                if let Some(a) = state.attached_mut(volume) {
                    a.check = Some(CheckPhase::Done(*mismatches));
                }
                return Ok(true);
            }
            Step::CheckCutShort { volume } => {
                if let Some(a) = state.attached_mut(volume) {
                    a.check = Some(CheckPhase::Asked);
                }
                return Ok(true);
            }
            Step::ReAdd { splits, raid, .. } => {
                self.faults.tick(&format_args!("re-add into {}", raid.name));
                for split in splits {
                    // Split devices a raid made without this leg never had are made now.
                    if dm.info(&split.name.dm_name())?.is_some() {
                        crate::kernel::stack::replace(dm, split)?;
                    } else {
                        crate::kernel::stack::apply(dm, &[split])?;
                    }
                }
                if !crate::kernel::stack::reload(dm, raid, false)? {
                    crate::kernel::stack::cycle(dm, &raid.name)?;
                }
            }
            Step::Reassemble {
                volume,
                raid,
                fresh,
                slot,
                copy_last,
            } => {
                self.faults.tick(&format_args!("reassemble {}", raid.name));
                let fresh: Vec<&DeviceName> = fresh.iter().collect();
                let hook = self.copy_last.filter(|_| *copy_last);
                if *copy_last && hook.is_none() {
                    return Err(ExecError::Replication(format!(
                        "volume {volume}: a new leg joins only with its last copy round, which \
                         this pass cannot run"
                    )));
                }
                let mut in_pause = || match hook {
                    Some(copy) => copy(volume).map(|bytes| {
                        tracing::info!(volume, bytes, "copied the last round in the pause");
                    }),
                    None => Ok(()),
                };
                let pause = crate::kernel::stack::reassemble(dm, raid, &fresh, &mut in_pause)?;
                tracing::info!(raid = %raid.name, ?pause, "re-assembled on fresh metadata");
                // Recorded at once, with the pause; a crash before the record leaves it to
                // `Reassembled`, which finds the raid so.
                if let Some(a) = state.attached_mut(volume) {
                    a.pause_ms = Some(u64::try_from(pause.as_millis()).unwrap_or(u64::MAX));
                    a.reassembled(*slot);
                }
                return Ok(true);
            }
            Step::Fence { devices, .. } => {
                for d in devices {
                    self.faults.tick(&format_args!("fence {d}"));
                    crate::kernel::stack::fence(dm, d).map(drop)?;
                }
            }
            Step::Unfence { plans, .. } => {
                for p in plans {
                    crate::kernel::stack::replace(dm, p)?;
                }
            }
            Step::Reassembled { volume, slot } => {
                if let Some(a) = state.attached_mut(volume) {
                    a.reassembled(*slot);
                }
                return Ok(true);
            }
            Step::LegUp { volume, leg } | Step::LegDown { volume, leg } => {
                if let Some(l) = state
                    .attached_mut(volume)
                    .and_then(|a| a.legs.iter_mut().find(|l| &l.node == leg))
                {
                    l.in_sync = matches!(step, Step::LegUp { .. });
                }
                return Ok(true);
            }
            Step::Detached { volume } => {
                state.attached.retain(|a| &a.id != volume);
                return Ok(true);
            }
            Step::Forget { volume, snapshot } => {
                match snapshot {
                    None => state.volumes.retain(|v| &v.id != volume),
                    Some(s) => {
                        if let Some(v) = state.volume_mut(volume) {
                            v.snapshots.retain(|x| &x.id != s);
                        }
                    }
                }
                return Ok(true);
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::dm::fake::FakeDm;
    use crate::plan::thin::plan_thin;
    use crate::reconcile::desired::VolumeState;
    use devicemapper::Sectors;

    fn volume(id: &str, thin_id: u64) -> VolumeState {
        VolumeState {
            id: id.into(),
            pool: "p0".into(),
            thin_id,
            size_bytes: 1 << 20,
            ..Default::default()
        }
    }

    fn activate(id: &str, thin_id: u32) -> Step {
        let node = Id::node("n1").unwrap();
        let plan = plan_thin(
            &node,
            &Id::object("p0").unwrap(),
            &Id::object(id).unwrap(),
            ThinDevId::new_u64(u64::from(thin_id)).unwrap(),
            Sectors(2048),
        )
        .unwrap();
        Step::Activate {
            volume: id.into(),
            plans: vec![plan],
        }
    }

    #[test]
    fn a_failed_step_skips_the_rest_of_its_volume_and_nothing_else() {
        let dm = FakeDm {
            fail_create_of: Some("pxd-n1-thin-a".into()),
            ..FakeDm::default()
        };
        let pool_dev = devicemapper::Device {
            major: 253,
            minor: 99,
        };
        dm.devices
            .borrow_mut()
            .insert("pxd-n1-pool-p0".into(), (pool_dev, Vec::new()));
        let mut state = NodeState {
            node: "n1".into(),
            volumes: vec![volume("a", 1), volume("b", 2), volume("c", 3)],
            ..Default::default()
        };
        let steps = [
            activate("a", 1),
            Step::Mkfs {
                volume: "a".into(),
                device: DeviceName::new(
                    &Id::node("n1").unwrap(),
                    Kind::Thin,
                    &Id::object("a").unwrap(),
                    None,
                ),
                fs: volume::spec::Fs::Ext4,
            },
            // Pool p0 is not up in this executor: the thin id of c cannot be made.
            Step::CreateThinId {
                pool: Id::object("p0").unwrap(),
                thin_id: ThinDevId::new_u64(3).unwrap(),
            },
            activate("c", 3),
            activate("b", 2),
        ];
        let mut recorded = 0;
        let failures = Executor::new(&dm, None)
            .run(&steps, &mut state, &mut |_| {
                recorded += 1;
                Ok(())
            })
            .unwrap();
        let concerned: Vec<_> = failures.iter().map(|f| f.concerns.clone()).collect();
        assert_eq!(
            concerned,
            [Concern::Volume("a".into()), Concern::Volume("c".into())]
        );
        let devices = dm.devices.borrow();
        assert!(devices.contains_key("pxd-n1-thin-b"), "b was held up");
        assert!(
            !devices.contains_key("pxd-n1-thin-c"),
            "c ran past its failure"
        );
        assert_eq!(recorded, 0, "a's mkfs ran after its activation failed");
    }
}
