//! The pure half of the reconciler: from what a node should have ([`NodeState`]) and what
//! the kernel shows ([`Observed`]), the ordered steps that close the gap. Every step is
//! idempotent, so a pass interrupted anywhere is completed by the next one.

use crate::plan::names::{DeviceName, Id, Kind, NameError, Role};
use crate::plan::pool::{Drive, PoolSpec};
use crate::plan::table::DevicePlan;
use crate::plan::thin::ThinPlanError;
use crate::pool::label::Label;
use crate::reconcile::desired::{NodeState, Phase};
use crate::reconcile::plan_pools::{joining_steps, pool_steps};
use crate::reconcile::plan_replicated::{
    attach_steps, fence_steps, leg_steps, orphan_controllers, orphan_exports, unexport_steps,
    zombies,
};
use crate::reconcile::plan_volumes::{deleting_steps, live_volume_steps};
use crate::volume::spec::Fs;
use devicemapper::{Device, Sectors, ThinDevId};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

pub use crate::reconcile::plan_pools::assemble;
pub use crate::reconcile::plan_volumes::volume_stack;

/// A block device whose pxd label could be read and is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledDrive {
    pub path: PathBuf,
    pub drive: Drive,
    pub label: Label,
}

/// What the kernel shows for this node.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Every block device with a valid pxd label, whoever's it is and wherever it sits now.
    pub labelled: Vec<LabelledDrive>,
    /// This node's dm devices: name -> (dev_t, total length in sectors).
    pub devices: BTreeMap<String, (Device, Sectors)>,
    /// Those of them that are suspended (a crash between suspend and resume leaves them so).
    pub suspended: BTreeSet<String>,
    /// The dm-crypt workqueues new crypt tables bypass: the daemon's choice, as far as this
    /// kernel has the flags.
    pub crypt_workqueues: crate::plan::crypt::Workqueues,
    /// The thin id each of this node's thin devices maps: name -> id.
    pub thin_ids: BTreeMap<String, u64>,
    /// Where each of this node's devices is mounted: name -> mount points.
    pub mounts: BTreeMap<String, Vec<PathBuf>>,
    /// This node's leg exports: the nvmet subsystems whose NQN names this node.
    pub exports: Vec<ExportSeen>,
    /// The NVMe/TCP controllers this node connected (under its host NQN).
    pub controllers: Vec<ControllerSeen>,
    /// The block device of each connected subsystem's namespace, by NQN.
    pub namespaces: BTreeMap<String, Device>,
    /// The raid status of each replicated volume attached here, by volume id.
    pub raids: BTreeMap<String, crate::plan::raid::RaidStatus>,
    /// This node's devices whose table is `error`: legs fenced under a lost attachment.
    pub fenced: BTreeSet<String>,
    /// The members of each live pool (by place) that fail a read, with the error, by pool id.
    pub failing: BTreeMap<String, Vec<(usize, String)>>,
    /// The devices each of this node's dm devices maps, from its table.
    pub lower: BTreeMap<String, Vec<Device>>,
}

/// A leg export as nvmet shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSeen {
    pub nqn: String,
    pub device: PathBuf,
    pub enabled: bool,
    /// Host NQNs allowed to connect.
    pub hosts: Vec<String>,
    /// Where it is reachable: the addresses of the ports it is linked to.
    pub ports: Vec<std::net::SocketAddr>,
}

/// An NVMe controller of this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerSeen {
    /// `nvme3`.
    pub name: String,
    pub nqn: String,
    /// `live`, `connecting`, ...
    pub state: String,
}

/// One idempotent change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Resume a device left suspended, so its I/O flows again. Comes before anything else.
    Resume(DeviceName),
    /// Benchmark a drive being added, to class it (then recorded).
    MeasureDrive { drive: String },
    /// Wipe the head of a drive being added and write its label (then recorded).
    LabelDrive { drive: String, label: Label },
    /// Bring a pool's devices up (adopting them if they are). Its metadata must be there:
    /// a pool whose metadata is missing or fails `thin_check` is refused, never rewritten.
    EnsurePool(PoolSpec),
    /// Bring up a pool that was never activated, with fresh metadata, then record that it
    /// was activated.
    CreatePool(PoolSpec),
    /// Grow a live pool onto drives added to it.
    GrowPool(PoolSpec),
    /// Bring up a pool whose member was replaced while nothing was on it: its metadata is
    /// made fresh even where the first member holds an old superblock; then record it.
    ReformPool(PoolSpec),
    /// Erase the label of a drive leaving pool `pool` (its devices are down, nothing was on
    /// it), so that the disk is free; then record the leave.
    RetireDrive { pool: String, drive: String },
    /// Record thin id `thin_id` in the pool's metadata.
    CreateThinId { pool: Id, thin_id: ThinDevId },
    /// Activate a volume's stack, lowest first (`volume` names the key to use, if any).
    Activate {
        volume: String,
        plans: Vec<DevicePlan>,
    },
    /// Grow a volume's live stack, lowest first, then its filesystem.
    Grow {
        volume: String,
        plans: Vec<DevicePlan>,
        fs: Fs,
    },
    /// Make the volume's filesystem on its top device, then record it.
    Mkfs {
        volume: String,
        device: DeviceName,
        fs: Fs,
    },
    /// Snapshot a volume's thin id (suspending `live_top_down` around it), then record it.
    Snapshot {
        volume: String,
        snapshot: String,
        pool: Id,
        source: ThinDevId,
        thin_id: ThinDevId,
        live_top_down: Vec<DeviceName>,
    },
    /// Record thin id `thin_id` as a copy of `source` (a clone, or a restore), suspending
    /// `live_top_down` (the source volume's live stack) around it, then record it done.
    Copy {
        volume: String,
        pool: Id,
        source: ThinDevId,
        thin_id: ThinDevId,
        live_top_down: Vec<DeviceName>,
    },
    /// Mount a volume's top device at `path` (made if missing).
    Mount {
        device: DeviceName,
        path: PathBuf,
        fs: Fs,
        read_only: bool,
    },
    /// Unmount `path`, where pxd mounted a volume that is no longer to be mounted there.
    Unmount(PathBuf),
    /// Record that a volume's retired thin ids are deleted.
    ForgetRetired { volume: String },
    /// Remove a dm device (refused while it is open).
    Deactivate(DeviceName),
    /// Delete a thin id from the pool's metadata, freeing its chunks.
    DeleteThinId { pool: Id, thin_id: ThinDevId },
    /// Drop a deleted volume (or one snapshot of it) from the desired state.
    Forget {
        volume: String,
        snapshot: Option<String>,
    },
    /// Export a leg device through nvmet as subsystem `nqn`, to host `host` only, on the
    /// port at `port`.
    Export {
        volume: String,
        nqn: String,
        device: DeviceName,
        host: String,
        port: std::net::SocketAddr,
    },
    /// Remove a leg export whole (its volume is going).
    Unexport { volume: String, nqn: String },
    /// Unlink a leg export from its ports: its controllers are torn down and reconnects
    /// refused, which fences whoever was connected through it.
    Unlink { volume: String, nqn: String },
    /// Record that this node's replica serves `epoch` only.
    Serve { volume: String, epoch: u64 },
    /// Connect to a remote leg over NVMe/TCP and wait for its namespace.
    Connect {
        volume: String,
        nqn: String,
        addr: std::net::SocketAddr,
        host: String,
    },
    /// Delete an NVMe controller (a leg no raid here uses any more).
    Disconnect { volume: String, controller: String },
    /// Record that the attached stack is up at this epoch.
    Attached { volume: String },
    /// Record that the attached stack is down.
    Detached { volume: String },
    /// Take a returning leg back into a live raid: its split devices loaded onto the
    /// namespace the reconnect brought, the raid reloaded with it (or cycled), so that
    /// dm-raid resyncs what its bitmap marks dirty.
    ReAdd {
        volume: String,
        splits: Vec<DevicePlan>,
        raid: DevicePlan,
    },
    /// Re-assemble a live raid over another set of legs (`ha-update`): suspended, `fresh`
    /// (every leg's other metadata slot) zeroed, `raid` loaded with nosync, resumed. With
    /// `copy_last`, a new leg joins: the copy's last round runs while the raid is suspended.
    Reassemble {
        volume: String,
        raid: DevicePlan,
        fresh: Vec<DeviceName>,
        /// The metadata slot `fresh` is in: the raid runs on it from now on.
        slot: u8,
        copy_last: bool,
    },
    /// Record that the raid runs over its new set of legs, on metadata slot `slot`.
    Reassembled { volume: String, slot: u8 },
    /// Record that leg `leg` (its node's id) is in sync again.
    LegUp { volume: String, leg: String },
    /// Record that leg `leg`, in sync as far as the store knows, is dead in the raid (an I/O
    /// error took it out): stale, so that no attach starts from it.
    LegDown { volume: String, leg: String },
    /// Send `check` to a raid: md reads every leg and counts the sectors that differ.
    StartCheck { volume: String, raid: DeviceName },
    /// Record that the raid's check finished, with its mismatch count.
    CheckDone { volume: String, mismatches: u64 },
    /// Record that the raid's check was cut short (a leg left or came back): it is asked
    /// again, to start once the raid is clean.
    CheckCutShort { volume: String },
    /// Load `error` under devices (this node's leg under a stack that lost its attachment),
    /// so nothing written through that stack completes on them.
    Fence {
        volume: String,
        devices: Vec<DeviceName>,
    },
    /// Load a fenced leg's thin tables back, once the stack that was fenced is gone.
    Unfence {
        volume: String,
        plans: Vec<DevicePlan>,
    },
}

impl Step {
    /// Steps that read and compare only, never changing the kernel when all is in place.
    pub fn is_check(&self) -> bool {
        matches!(self, Step::EnsurePool(_))
    }

    /// Steps after which the same pass plans again: what they made possible (a leg that now
    /// serves, a namespace that now exists) is built at once rather than a pass later.
    pub fn unblocks(&self) -> bool {
        matches!(self, Step::Serve { .. } | Step::Connect { .. })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("node state: {0}")]
    Name(#[from] NameError),
    #[error("volume {volume}: {source}")]
    Thin {
        volume: String,
        source: ThinPlanError,
    },
    #[error("volume {volume}: thin id {thin_id} is out of range")]
    ThinId { volume: String, thin_id: u64 },
    #[error("volume {volume} is on pool {pool}, which this node does not have")]
    NoPool { volume: String, pool: String },
    #[error("volume {volume}: {reason}")]
    Replication { volume: String, reason: String },
}

/// The steps that bring the kernel to `desired`.
pub fn plan(desired: &NodeState, observed: &Observed) -> Result<Vec<Step>, PlanError> {
    let node = Id::node(&desired.node)?;
    let mut steps = Vec::new();
    let mut expected: BTreeSet<String> = BTreeSet::new();
    // Lowest first, so a device above resumes onto one that already takes I/O.
    let mut frozen: Vec<DeviceName> = observed
        .suspended
        .iter()
        .filter_map(|n| n.parse::<DeviceName>().ok())
        .filter(|n| n.node == node)
        .collect();
    frozen.sort_by_key(|n| std::cmp::Reverse(layer(n)));
    steps.extend(frozen.into_iter().map(Step::Resume));
    let zombies = zombies(&node, desired, observed);
    steps.extend(fence_steps(&node, &zombies, observed)?);
    steps.extend(joining_steps(desired));
    let pools_up = pool_steps(desired, observed, &node, &mut steps, &mut expected)?;

    for v in &desired.volumes {
        if !desired.pools.iter().any(|p| p.id == v.pool) {
            return Err(PlanError::NoPool {
                volume: v.id.clone(),
                pool: v.pool.clone(),
            });
        }
        let pool = Id::object(&v.pool)?;
        let stack = volume_stack(&node, v, observed.crypt_workqueues)?;
        // A leg dropped from a dead pool is taken down all the same: nothing it needs is
        // written to the pool.
        let dead = desired.pools.iter().any(|p| p.id == v.pool && p.dead);
        let teardown = dead && v.phase == Phase::Deleting;
        if !(pools_up.contains(v.pool.as_str()) || teardown) {
            // Its pool lacks a drive: whatever of its stack is up stays up, untouched.
            expected.extend(stack.iter().map(|p| p.name.to_string()));
            continue;
        }
        match (v.phase, &v.leg) {
            (Phase::Live, Some(leg)) => {
                expected.extend(stack.iter().map(|p| p.name.to_string()));
                leg_steps(&mut steps, desired, v, leg, &stack, observed)?;
            }
            (Phase::Live, None) => {
                for plan in &stack {
                    expected.insert(plan.name.to_string());
                }
                live_volume_steps(&mut steps, desired, v, &pool, stack, observed)?;
            }
            (Phase::Deleting, _) => {
                unexport_steps(&mut steps, &node, v, None, true, observed)?;
                deleting_steps(&mut steps, desired, v, pool, &stack, observed)?
            }
        }
    }
    attach_steps(&mut steps, &mut expected, desired, observed)?;
    steps.extend(orphan_exports(&node, desired, observed));

    // Orphans: this node's devices nothing asks for, from the top of any stack down.
    let mut orphans: Vec<DeviceName> = observed
        .devices
        .keys()
        .filter(|n| !expected.contains(*n))
        .filter_map(|n| n.parse::<DeviceName>().ok())
        .filter(|n| n.node == node)
        .filter(|n| !matches!(n.role, Some(Role::Copy(_))))
        .filter(|n| !steps.contains(&Step::Deactivate(n.clone())))
        .collect();
    orphans.sort_by_key(|n| (layer(n), n.to_string()));
    steps.extend(orphan_controllers(desired, observed));
    steps.extend(orphans.into_iter().map(Step::Deactivate));
    Ok(steps)
}

/// How high in a stack a device sits: 0 is the top (crypt), 5 the bottom (pool meta/data).
/// A leg is a raid's remote half (split from its namespace) or a replica's export (joining
/// its thin devices): below the raid, above the thins either way.
fn layer(n: &DeviceName) -> u8 {
    match (n.kind, n.role) {
        (Kind::Crypt, _) => 0,
        (Kind::Raid, _) => 1,
        (Kind::Leg, _) => 2,
        (Kind::Thin, _) => 3,
        (Kind::Pool, None) => 4,
        (Kind::Pool, Some(_)) => 5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::pool::plan_pool;
    use crate::reconcile::desired::{PoolState, SnapshotState, VolumeState};
    use crate::store::types::NodeId;

    const CLUSTER: &str = "c0ffee";

    fn uuid(n: u8) -> String {
        crate::pool::label::DriveUuid([n; 16]).to_string()
    }

    fn state() -> NodeState {
        NodeState {
            node: "a1".into(),
            cluster: CLUSTER.into(),
            pools: vec![PoolState {
                id: "p0".into(),
                members: vec![uuid(1)],
                drives: vec!["/dev/vda".into()],
                activated: true,
                chunk_sectors: 512,
                ..Default::default()
            }],
            volumes: vec![VolumeState {
                id: "v1".into(),
                pool: "p0".into(),
                thin_id: 1,
                size_bytes: 64 << 20,
                fs: Fs::Ext4,
                formatted: false,
                key: None,
                snapshots: vec![],
                phase: Phase::Live,
                ..Default::default()
            }],
            mount_root: None,
            ..Default::default()
        }
    }

    /// A drive labelled as member `member` of pool p0 on node 1, at `path`.
    fn labelled(path: &str, n: u8, member: u32) -> LabelledDrive {
        LabelledDrive {
            path: path.into(),
            drive: Drive {
                dev: Device {
                    major: 254,
                    minor: 16 * u32::from(n),
                },
                size: Sectors(4 << 21),
            },
            label: Label {
                cluster: CLUSTER.into(),
                node: NodeId(0xa1),
                pool: "p0".into(),
                drive: crate::pool::label::DriveUuid([n; 16]),
                member,
                generation: 1,
            },
        }
    }

    fn observed(devices: &[(&str, u64)]) -> Observed {
        Observed {
            labelled: vec![labelled("/dev/vda", 1, 0)],
            devices: devices
                .iter()
                .enumerate()
                .map(|(i, (n, len))| {
                    let dev = Device {
                        major: 253,
                        minor: i as u32,
                    };
                    (n.to_string(), (dev, Sectors(*len)))
                })
                .collect(),
            suspended: BTreeSet::new(),
            crypt_workqueues: crate::plan::crypt::Workqueues::DEFAULT,
            ..Default::default()
        }
    }

    fn kinds(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .map(|s| match s {
                Step::Resume(n) => format!("resume {n}"),
                Step::MeasureDrive { drive } => format!("measure {drive}"),
                Step::LabelDrive { drive, .. } => format!("label {drive}"),
                Step::EnsurePool(p) => format!("pool {}", p.pool),
                Step::CreatePool(p) => format!("new pool {}", p.pool),
                Step::GrowPool(p) => format!("grow pool {}", p.pool),
                Step::ReformPool(p) => format!("reform pool {}", p.pool),
                Step::RetireDrive { drive, .. } => format!("retire {drive}"),
                Step::CreateThinId { thin_id, .. } => format!("thin-id {thin_id}"),
                Step::Activate { plans, .. } => format!("activate {}", plans.len()),
                Step::Grow { .. } => "grow".into(),
                Step::Mkfs { device, .. } => format!("mkfs {device}"),
                Step::Snapshot { thin_id, .. } => format!("snapshot {thin_id}"),
                Step::Deactivate(n) => format!("deactivate {n}"),
                Step::DeleteThinId { thin_id, .. } => format!("delete-id {thin_id}"),
                Step::Forget { volume, snapshot } => format!("forget {volume} {snapshot:?}"),
                Step::Copy {
                    thin_id, source, ..
                } => format!("copy {source} to {thin_id}"),
                Step::Mount { path, .. } => format!("mount {}", path.display()),
                Step::Unmount(path) => format!("unmount {}", path.display()),
                Step::ForgetRetired { volume } => format!("forget retired of {volume}"),
                Step::Export { nqn, .. } => format!("export {nqn}"),
                Step::Unexport { nqn, .. } => format!("unexport {nqn}"),
                Step::Unlink { nqn, .. } => format!("unlink {nqn}"),
                Step::Serve { epoch, .. } => format!("serve {epoch}"),
                Step::Connect { nqn, .. } => format!("connect {nqn}"),
                Step::Disconnect { controller, .. } => format!("disconnect {controller}"),
                Step::Attached { .. } => "attached".into(),
                Step::Detached { .. } => "detached".into(),
                Step::ReAdd { splits, raid, .. } => {
                    format!("re-add {}", splits.first().map_or(&raid.name, |s| &s.name))
                }
                Step::Reassemble { fresh, .. } => format!("reassemble {}", fresh.len()),
                Step::Reassembled { slot, .. } => format!("reassembled on slot {slot}"),
                Step::LegUp { leg, .. } => format!("leg {leg} up"),
                Step::LegDown { leg, .. } => format!("leg {leg} down"),
                Step::StartCheck { raid, .. } => format!("check {raid}"),
                Step::CheckDone { mismatches, .. } => format!("checked: {mismatches}"),
                Step::CheckCutShort { .. } => "check cut short".into(),
                Step::Fence { devices, .. } => format!("fence {}", devices.len()),
                Step::Unfence { plans, .. } => format!("unfence {}", plans.len()),
            })
            .collect()
    }

    /// The pool's devices at their planned sizes, as a live pool shows them.
    fn pool_devs() -> Vec<(&'static str, u64)> {
        let o = observed(&[]);
        let spec = PoolSpec {
            node: Id::node("a1").unwrap(),
            pool: Id::object("p0").unwrap(),
            drives: vec![o.labelled[0].drive],
            chunk: Sectors(512),
            features: crate::plan::pool::ThinFeatures::DEFAULT,
        };
        let plan = plan_pool(&spec).unwrap();
        vec![
            ("pxd-a1-pool-p0", *plan.pool.length()),
            ("pxd-a1-pool-p0-data", *plan.data.length()),
            ("pxd-a1-pool-p0-meta", *plan.meta.length()),
        ]
    }

    #[test]
    fn a_new_volume_gets_an_id_a_device_and_a_filesystem() {
        let steps = plan(&state(), &observed(&[])).unwrap();
        assert_eq!(
            kinds(&steps),
            ["pool p0", "thin-id 1", "activate 1", "mkfs pxd-a1-thin-v1"]
        );
    }

    #[test]
    fn a_converged_node_plans_only_checks() {
        let mut s = state();
        s.volumes[0].formatted = true;
        let mut devs = pool_devs();
        devs.push(("pxd-a1-thin-v1", (64 << 20) / 512));
        let steps = plan(&s, &observed(&devs)).unwrap();
        assert!(steps.iter().all(Step::is_check), "{:?}", kinds(&steps));
    }

    #[test]
    fn a_bigger_desired_size_grows_and_an_encrypted_stack_has_two_layers() {
        let mut s = state();
        s.volumes[0].formatted = true;
        s.volumes[0].size_bytes = 128 << 20;
        let mut devs = pool_devs();
        devs.push(("pxd-a1-thin-v1", (64 << 20) / 512));
        assert_eq!(kinds(&plan(&s, &observed(&devs)).unwrap())[1..], ["grow"]);

        s.volumes[0].key = Some(crate::crypt::WrappedKey {
            nonce: [0; 12],
            sealed: vec![],
        });
        let steps = plan(&s, &observed(&devs)).unwrap();
        assert_eq!(
            kinds(&steps)[1..],
            ["activate 2"],
            "crypt missing: activate adopts thin"
        );
    }

    #[test]
    fn snapshots_are_taken_once_and_deletes_go_top_down_then_forget() {
        let mut s = state();
        s.volumes[0].formatted = true;
        s.volumes[0].snapshots.push(SnapshotState {
            id: "s1".into(),
            thin_id: 2,
            taken: false,
            phase: Phase::Live,
        });
        let mut devs = pool_devs();
        devs.push(("pxd-a1-thin-v1", (64 << 20) / 512));
        assert_eq!(
            kinds(&plan(&s, &observed(&devs)).unwrap())[1..],
            ["snapshot 2"]
        );
        s.volumes[0].snapshots[0].taken = true;
        assert_eq!(plan(&s, &observed(&devs)).unwrap().len(), 1);

        s.volumes[0].phase = Phase::Deleting;
        assert_eq!(
            kinds(&plan(&s, &observed(&devs)).unwrap())[1..],
            [
                "deactivate pxd-a1-thin-v1",
                "delete-id 2",
                "delete-id 1",
                "forget v1 None"
            ]
        );
    }

    #[test]
    fn orphans_of_this_node_go_top_down_and_others_are_left_alone() {
        let mut devs = pool_devs();
        devs.extend([
            ("pxd-a1-thin-gone", 8),
            ("pxd-a1-crypt-gone", 8),
            ("pxd-a2-thin-x", 8),
            ("vg0-root", 8),
        ]);
        let mut s = state();
        s.volumes.clear();
        let steps = plan(&s, &observed(&devs)).unwrap();
        assert_eq!(
            kinds(&steps)[1..],
            [
                "deactivate pxd-a1-crypt-gone",
                "deactivate pxd-a1-thin-gone"
            ]
        );
        s.pools.clear();
        let steps = plan(&s, &observed(&devs)).unwrap();
        assert_eq!(
            kinds(&steps),
            [
                "deactivate pxd-a1-crypt-gone",
                "deactivate pxd-a1-thin-gone",
                "deactivate pxd-a1-pool-p0",
                "deactivate pxd-a1-pool-p0-data",
                "deactivate pxd-a1-pool-p0-meta"
            ]
        );
    }

    #[test]
    fn suspended_devices_resume_first_lowest_first() {
        let mut s = state();
        s.volumes[0].formatted = true;
        let mut devs = pool_devs();
        devs.push(("pxd-a1-thin-v1", (64 << 20) / 512));
        let mut o = observed(&devs);
        o.suspended.insert("pxd-a1-thin-v1".into());
        o.suspended.insert("pxd-a1-pool-p0".into());
        o.suspended.insert("pxd-a2-thin-v9".into());
        assert_eq!(
            kinds(&plan(&s, &o).unwrap()),
            ["resume pxd-a1-pool-p0", "resume pxd-a1-thin-v1", "pool p0"]
        );
    }

    #[test]
    fn a_leaving_drive_takes_its_empty_pool_down_top_first_then_its_label() {
        let mut s = state();
        s.volumes.clear();
        s.pools[0].retire = Some(crate::reconcile::desired::Retire {
            drive: uuid(1),
            done: false,
        });
        assert_eq!(
            kinds(&plan(&s, &observed(&pool_devs())).unwrap()),
            [
                "deactivate pxd-a1-pool-p0",
                "deactivate pxd-a1-pool-p0-data",
                "deactivate pxd-a1-pool-p0-meta"
            ]
        );
        assert_eq!(
            kinds(&plan(&s, &observed(&[])).unwrap()),
            [format!("retire {}", uuid(1))]
        );
        s.pools[0].retire.as_mut().unwrap().done = true;
        assert!(plan(&s, &observed(&[])).unwrap().is_empty());
    }

    #[test]
    fn a_pool_with_a_replaced_member_is_made_anew_and_a_dead_pool_is_never_written() {
        let mut s = state();
        s.volumes.clear();
        (s.pools[0].activated, s.pools[0].reformed) = (false, true);
        assert_eq!(
            kinds(&plan(&s, &observed(&[])).unwrap()),
            ["reform pool p0"]
        );

        // A dead pool is not brought up nor checked; a leg dropped from it is torn down and
        // forgotten, its ids left; a live volume on it is left as the kernel has it.
        let mut s = state();
        s.pools[0].dead = true;
        let mut devs = pool_devs();
        devs.push(("pxd-a1-thin-v1", (64 << 20) / 512));
        assert!(plan(&s, &observed(&devs)).unwrap().is_empty());
        s.volumes[0].phase = Phase::Deleting;
        assert_eq!(
            kinds(&plan(&s, &observed(&devs)).unwrap()),
            ["deactivate pxd-a1-thin-v1", "forget v1 None"]
        );
    }

    #[test]
    fn an_added_drive_grows_the_live_pool() {
        let mut s = state();
        s.volumes.clear();
        s.pools[0].members.push(uuid(2));
        s.pools[0].drives.push("/dev/vdb".into());
        let mut o = observed(&pool_devs());
        o.labelled.push(labelled("/dev/vdc", 2, 1));
        assert_eq!(kinds(&plan(&s, &o).unwrap()), ["grow pool p0"]);
    }

    #[test]
    fn pools_are_assembled_by_label_whatever_the_paths() {
        let mut s = state();
        s.pools[0].members.push(uuid(2));
        s.pools[0].drives.push("/dev/vdb".into());
        // Renumbered: member 1 is now /dev/vda, member 0 /dev/vdc; a blank disk and another
        // node's labelled disk sit beside them.
        let mut o = observed(&[]);
        o.labelled = vec![labelled("/dev/vdc", 1, 0), labelled("/dev/vda", 2, 1)];
        let mut other = labelled("/dev/vdd", 3, 2);
        other.label.node = NodeId(2);
        o.labelled.push(other);
        let steps = plan(&s, &o).unwrap();
        match &steps[0] {
            Step::EnsurePool(spec) => assert_eq!(
                spec.drives,
                [o.labelled[0].drive, o.labelled[1].drive],
                "in member order, by label"
            ),
            other => panic!("{other:?}"),
        }
        // A label in the wrong slot, pool, node or cluster is no member.
        for spoil in [
            |l: &mut Label| l.member = 5,
            |l: &mut Label| l.pool = "p9".into(),
            |l: &mut Label| l.node = NodeId(7),
            |l: &mut Label| l.cluster = "another".into(),
        ] {
            let mut o2 = o.clone();
            spoil(&mut o2.labelled[1].label);
            let missing = assemble(CLUSTER, &Id::node("a1").unwrap(), &s.pools[0], &o2);
            assert_eq!(
                missing,
                Err(vec![format!(
                    "member 1 (drive {}, last at /dev/vdb)",
                    uuid(2)
                )])
            );
        }
    }

    #[test]
    fn a_label_found_on_two_disks_is_used_on_neither() {
        let s = state();
        let mut o = observed(&[]);
        let mut twin = labelled("/dev/vdq", 1, 0);
        twin.drive.dev.minor = 99;
        o.labelled.push(twin);
        let missing = assemble(CLUSTER, &Id::node("a1").unwrap(), &s.pools[0], &o).unwrap_err();
        assert_eq!(
            missing,
            [format!(
                "member 0 (drive {}, found on 2 disks at once: /dev/vda and /dev/vdq)",
                uuid(1)
            )]
        );
        assert!(plan(&s, &o).unwrap().is_empty(), "nothing is built on it");
    }

    #[test]
    fn only_a_pool_never_activated_is_made_fresh() {
        let mut s = state();
        s.volumes.clear();
        assert_eq!(kinds(&plan(&s, &observed(&[])).unwrap()), ["pool p0"]);
        s.pools[0].activated = false;
        assert_eq!(kinds(&plan(&s, &observed(&[])).unwrap()), ["new pool p0"]);
    }

    #[test]
    fn a_missing_drive_leaves_its_pool_and_volumes_as_they_are() {
        let mut s = state();
        s.volumes[0].formatted = true;
        let mut devs = pool_devs();
        devs.push(("pxd-a1-thin-v1", (64 << 20) / 512));
        let mut o = observed(&devs);
        o.labelled.clear();
        let steps = plan(&s, &o).unwrap();
        assert!(steps.is_empty(), "{:?}", kinds(&steps));
    }

    #[test]
    fn a_restore_replaces_the_stack_then_deletes_the_retired_id() {
        let mut s = state();
        s.volumes[0].formatted = true;
        s.volumes[0].thin_id = 3;
        s.volumes[0].retired = vec![1];
        s.volumes[0].origin = Some(crate::reconcile::desired::OriginState {
            thin_id: 2,
            volume: None,
        });
        let mut devs = pool_devs();
        devs.push(("pxd-a1-thin-v1", (64 << 20) / 512));
        let mut o = observed(&devs);
        o.thin_ids.insert("pxd-a1-thin-v1".into(), 1);
        assert_eq!(
            kinds(&plan(&s, &o).unwrap())[1..],
            [
                "deactivate pxd-a1-thin-v1",
                "copy 2 to 3",
                "activate 1",
                "delete-id 1",
                "forget retired of v1"
            ]
        );
    }

    #[test]
    fn mounts_follow_the_desired_path_and_only_pxd_mounts_are_undone() {
        let mut s = state();
        s.volumes[0].formatted = true;
        s.mount_root = Some("/var/lib/pxd/mounts".into());
        s.volumes[0].mount = Some("/var/lib/pxd/mounts/db".into());
        let mut devs = pool_devs();
        devs.push(("pxd-a1-thin-v1", (64 << 20) / 512));
        let mut o = observed(&devs);
        assert_eq!(
            kinds(&plan(&s, &o).unwrap())[1..],
            ["mount /var/lib/pxd/mounts/db"]
        );
        o.mounts.insert(
            "pxd-a1-thin-v1".into(),
            vec!["/var/lib/pxd/mounts/db".into(), "/mnt/mine".into()],
        );
        assert_eq!(plan(&s, &o).unwrap().len(), 1);
        s.volumes[0].mount = None;
        assert_eq!(
            kinds(&plan(&s, &o).unwrap())[1..],
            ["unmount /var/lib/pxd/mounts/db"]
        );
    }

    const NQN: &str = "nqn.2026-11.io.pxd:leg";

    /// Node a1's leg of replicated volume v1, attached on node b2 at `epoch`.
    fn leg_state(epoch: u64, serving: u64) -> NodeState {
        let mut s = state();
        s.nvme_addr = Some("10.0.0.1:4420".parse().unwrap());
        s.volumes[0].formatted = true;
        s.volumes[0].leg = Some(crate::reconcile::desired::LegState {
            meta_thin_id: 2,
            epoch,
            export_to: Some("b2".into()),
            serving,
        });
        s
    }

    fn export_seen(nqn: &str) -> ExportSeen {
        ExportSeen {
            nqn: nqn.into(),
            device: "/dev/mapper/pxd-a1-leg-v1".into(),
            enabled: true,
            hosts: vec!["nqn.2026-11.io.pxd:host:b2".into()],
            ports: vec!["10.0.0.1:4420".parse().unwrap()],
        }
    }

    #[test]
    fn a_leg_is_built_exported_to_the_attach_node_and_older_epochs_are_fenced_first() {
        let mut o = observed(&pool_devs());
        o.exports.push(export_seen(&format!("{NQN}:a1:v1:e1")));
        assert_eq!(
            kinds(&plan(&leg_state(2, 1), &o).unwrap())[1..],
            [
                "thin-id 2",
                "thin-id 1",
                "activate 3",
                &format!("unlink {NQN}:a1:v1:e1"),
                &format!("export {NQN}:a1:v1:e2"),
                "serve 2"
            ]
        );
        // Built, exported and served: only the pool check is left.
        let mut devs = pool_devs();
        devs.extend([
            ("pxd-a1-thin-v1-meta", 8192),
            ("pxd-a1-thin-v1", (64 << 20) / 512),
            ("pxd-a1-leg-v1", 8192 + (64 << 20) / 512),
        ]);
        let mut o = observed(&devs);
        o.exports.push(export_seen(&format!("{NQN}:a1:v1:e2")));
        assert_eq!(plan(&leg_state(2, 2), &o).unwrap().len(), 1);
        // Detached: the export is unlinked (unreachable), never disabled under a host that
        // may still be connected; the devices stay.
        let steps = plan(&leg_state(0, 2), &o).unwrap();
        assert_eq!(kinds(&steps)[1..], [format!("unlink {NQN}:a1:v1:e2")]);
        o.exports[0].ports.clear();
        assert_eq!(plan(&leg_state(0, 2), &o).unwrap().len(), 1);
        // The volume gone from this node: its export goes before its devices.
        let mut s = leg_state(2, 2);
        s.volumes.clear();
        assert_eq!(
            kinds(&plan(&s, &o).unwrap())[1..4],
            [
                &format!("unexport {NQN}:a1:v1:e2"),
                "deactivate pxd-a1-leg-v1",
                "deactivate pxd-a1-thin-v1"
            ]
        );
    }

    /// The built leg of [`leg_state`]: its pool, metadata and data thins, and export device.
    fn built_leg() -> Observed {
        let mut devs = pool_devs();
        devs.extend([
            ("pxd-a1-thin-v1-meta", 8192),
            ("pxd-a1-thin-v1", (64 << 20) / 512),
            ("pxd-a1-leg-v1", 8192 + (64 << 20) / 512),
        ]);
        observed(&devs)
    }

    #[test]
    fn a_fenced_stack_fences_only_the_leg_thins_it_sits_on() {
        // A raid of v1 up here that is attached nowhere here: a zombie.
        let mut o = built_leg();
        o.devices.insert(
            "pxd-a1-raid-v1".into(),
            (
                Device {
                    major: 253,
                    minor: 40,
                },
                Sectors(8),
            ),
        );
        let dev = |o: &Observed, n: &str| o.devices[n].0;
        let fences = |o: &Observed| {
            plan(&leg_state(2, 2), o)
                .unwrap()
                .into_iter()
                .filter_map(|s| match s {
                    Step::Fence { devices, .. } => Some(devices.len()),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        // The leg here was made after the stack went (a new replica): it is left alone.
        assert!(fences(&o).is_empty());
        // The stack's raid and split sit on this node's leg thins: both are fenced.
        let (data, meta) = (dev(&o, "pxd-a1-thin-v1"), dev(&o, "pxd-a1-thin-v1-meta"));
        o.lower.insert("pxd-a1-raid-v1".into(), [data].into());
        o.lower.insert("pxd-a1-leg-v1-m0".into(), [meta].into());
        // The leg's own export device maps them too, and does not count.
        o.lower.insert("pxd-a1-leg-v1".into(), [data, meta].into());
        assert_eq!(fences(&o), [2]);
        o.lower.remove("pxd-a1-raid-v1");
        o.lower.remove("pxd-a1-leg-v1-m0");
        assert!(fences(&o).is_empty());
    }

    #[test]
    fn a_takeover_leaves_the_old_epoch_reachable_while_the_old_attach_node_may_write() {
        let mut o = built_leg();
        o.exports.push(export_seen(&format!("{NQN}:a1:v1:e1")));
        let mut s = leg_state(2, 1);
        s.takeover_holds.insert("v1".into());
        assert_eq!(
            plan(&s, &o).unwrap().len(),
            1,
            "neither unlinked nor the new epoch served"
        );
        s.takeover_holds.clear();
        assert_eq!(
            kinds(&plan(&s, &o).unwrap())[1..],
            [
                format!("unlink {NQN}:a1:v1:e1"),
                format!("export {NQN}:a1:v1:e2"),
                "serve 2".into()
            ]
        );
        // Nothing older reachable: a hold has nothing to wait for.
        o.exports[0].ports.clear();
        s.takeover_holds.insert("v1".into());
        assert_eq!(
            kinds(&plan(&s, &o).unwrap())[1..],
            [format!("export {NQN}:a1:v1:e2"), "serve 2".into()]
        );
    }

    #[test]
    fn a_lost_legs_controller_is_left_holding_writes_this_nodes_leg_may_have_taken() {
        let mut o = built_leg();
        o.exports.push(export_seen(&format!("{NQN}:a1:v1:e2")));
        for (name, nqn, state) in [
            ("nvme3", format!("{NQN}:b2:v1:e1"), "connecting"),
            ("nvme4", format!("{NQN}:c3:v1:e1"), "live"),
            ("nvme5", format!("{NQN}:b2:gone:e1"), "connecting"),
        ] {
            o.controllers.push(ControllerSeen {
                name: name.into(),
                nqn,
                state: state.into(),
            });
        }
        // v1 is no longer attached here, and this node holds a leg of it: the controller
        // that is not live keeps its writes; the live one completes them and goes, and so
        // does any controller of a volume without a leg here.
        let steps = kinds(&plan(&leg_state(2, 2), &o).unwrap());
        assert!(!steps.contains(&"disconnect nvme3".to_owned()), "{steps:?}");
        assert!(steps.contains(&"disconnect nvme4".to_owned()), "{steps:?}");
        assert!(steps.contains(&"disconnect nvme5".to_owned()), "{steps:?}");
    }

    fn attached_state(legs_serving: bool) -> NodeState {
        use crate::reconcile::desired::{AttachLeg, AttachedVolume};
        let mut s = state();
        s.volumes.clear();
        s.pools.clear();
        let leg = |node: &str, ip: &str| AttachLeg {
            node: node.into(),
            split: if node == "b2" { 0 } else { 1 },
            leaving: false,
            local: false,
            addr: Some(format!("{ip}:4420").parse().unwrap()),
            serving: legs_serving,
            in_sync: true,
            may_rejoin: false,
        };
        s.attached.push(AttachedVolume {
            id: "v1".into(),
            size_bytes: 64 << 20,
            fs: Fs::Ext4,
            epoch: 3,
            legs: vec![leg("b2", "10.0.0.2"), leg("c3", "10.0.0.3")],
            fresh: true,
            ..Default::default()
        });
        s
    }

    #[test]
    fn an_attach_node_waits_for_served_legs_connects_then_builds_the_raid_and_its_filesystem() {
        let o = observed(&[]);
        assert!(
            plan(&attached_state(false), &o).unwrap().is_empty(),
            "no leg is connected before its node serves the epoch"
        );
        assert_eq!(
            kinds(&plan(&attached_state(true), &o).unwrap()),
            [
                format!("connect {NQN}:b2:v1:e3"),
                format!("connect {NQN}:c3:v1:e3")
            ]
        );
        let mut o = observed(&[]);
        for (i, n) in ["b2", "c3"].iter().enumerate() {
            let nqn = format!("{NQN}:{n}:v1:e3");
            o.controllers.push(ControllerSeen {
                name: format!("nvme{i}"),
                nqn: nqn.clone(),
                state: "live".into(),
            });
            o.namespaces.insert(
                nqn,
                Device {
                    major: 259,
                    minor: i as u32,
                },
            );
        }
        // An older epoch's controller of the same volume, and one of a volume not here.
        o.controllers.push(ControllerSeen {
            name: "nvme7".into(),
            nqn: format!("{NQN}:b2:v1:e2"),
            state: "connecting".into(),
        });
        o.controllers.push(ControllerSeen {
            name: "nvme8".into(),
            nqn: format!("{NQN}:b2:gone:e1"),
            state: "live".into(),
        });
        let steps = plan(&attached_state(true), &o).unwrap();
        assert_eq!(
            kinds(&steps),
            [
                "activate 7",
                "attached",
                "mkfs pxd-a1-raid-v1",
                "disconnect nvme7",
                "disconnect nvme8"
            ]
        );
        match &steps[0] {
            Step::Activate { plans, .. } => match &plans[6].segments[0].target {
                crate::plan::table::TargetSpec::Raid { legs, nosync } => {
                    assert_eq!(legs.len(), 2);
                    assert!(*nosync, "fresh legs skip the initial sync");
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
        // Detaching: the stack comes down top first, then its controllers, then the record.
        let mut s = attached_state(true);
        s.attached[0].detaching = true;
        let mut o2 = observed(&[("pxd-a1-raid-v1", 8), ("pxd-a1-leg-v1-d0", 8)]);
        o2.controllers = o.controllers[..1].to_vec();
        assert_eq!(
            kinds(&plan(&s, &o2).unwrap()),
            [
                "deactivate pxd-a1-raid-v1",
                "deactivate pxd-a1-leg-v1-d0",
                "disconnect nvme0",
                "detached"
            ]
        );
    }

    /// Live controllers and namespaces, at epoch 3 of volume v1, for the legs on `nodes`.
    fn connected(o: &mut Observed, nodes: &[&str]) {
        for (i, n) in nodes.iter().enumerate() {
            let nqn = format!("{NQN}:{n}:v1:e3");
            o.controllers.push(ControllerSeen {
                name: format!("nvme{i}"),
                nqn: nqn.clone(),
                state: "live".into(),
            });
            let minor = u32::try_from(i).unwrap();
            o.namespaces.insert(nqn, Device { major: 259, minor });
        }
    }

    /// A repl-2 volume attached here, its raid up and clean over two live legs.
    fn live_raid() -> (NodeState, Observed) {
        use crate::plan::raid::{LegHealth, RaidStatus};
        let mut s = attached_state(true);
        let v = &mut s.attached[0];
        (v.attached, v.formatted, v.fresh, v.fs) = (true, true, false, Fs::Raw);
        let mut o = observed(&[
            ("pxd-a1-leg-v1-m0", 8192),
            ("pxd-a1-leg-v1-n0", 8192),
            ("pxd-a1-leg-v1-d0", 131072),
            ("pxd-a1-leg-v1-m1", 8192),
            ("pxd-a1-leg-v1-n1", 8192),
            ("pxd-a1-leg-v1-d1", 131072),
            ("pxd-a1-raid-v1", 131072),
        ]);
        connected(&mut o, &["b2", "c3"]);
        let status = RaidStatus {
            legs: vec![LegHealth::InSync, LegHealth::InSync],
            synced: Sectors(131072),
            total: Sectors(131072),
            action: "idle".into(),
            mismatches: 0,
        };
        o.raids.insert("v1".into(), status);
        (s, o)
    }

    #[test]
    fn a_leg_in_sync_that_the_raid_shows_dead_is_recorded_stale() {
        use crate::plan::raid::LegHealth;
        use crate::store::state::{Command, VolumeChange};
        let (mut s, mut o) = live_raid();
        assert!(plan(&s, &o).unwrap().is_empty());
        let mut status = o.raids["v1"].clone();
        // c3's namespace failed a write: the raid dropped it at once, the store must know.
        status.legs[1] = LegHealth::Dead;
        o.raids.insert("v1".into(), status);
        let steps = plan(&s, &o).unwrap();
        assert_eq!(kinds(&steps), ["leg c3 down"]);
        let mut after = s.clone();
        after.attached[0].legs[1].in_sync = false;
        assert_eq!(
            crate::reconcile::derive::records(&s, &after),
            [Command::UpdateVolume {
                id: "v1".into(),
                change: VolumeChange::LegStale {
                    node: "c3".parse().unwrap(),
                    epoch: 3,
                    held_ms: 0
                }
            }]
        );
        // The last leg in sync is never recorded stale, even dead: the store would refuse it.
        let mut alone = s.clone();
        alone.attached[0].legs[0].in_sync = false;
        alone.attached[0].legs[0].serving = false;
        assert!(
            !kinds(&plan(&alone, &o).unwrap()).contains(&"leg c3 down".to_owned()),
            "{:?}",
            kinds(&plan(&alone, &o).unwrap())
        );
        // Once recorded, it is the stale leg's path: dropped and fenced, never re-recorded.
        s.attached[0].legs[1].in_sync = false;
        s.attached[0].legs[1].serving = false;
        assert_eq!(
            kinds(&plan(&s, &o).unwrap()),
            ["disconnect nvme1", "fence 3"]
        );
    }

    #[test]
    fn a_leaving_leg_is_reassembled_out_on_the_other_slot_then_recorded_and_let_go() {
        use crate::plan::raid::LegHealth;
        use crate::plan::table::TargetSpec;
        let (mut s, mut o) = live_raid();
        s.attached[0].legs[1].leaving = true;
        let steps = plan(&s, &o).unwrap();
        assert_eq!(kinds(&steps), ["reassemble 1"]);
        match &steps[0] {
            Step::Reassemble { raid, fresh, .. } => {
                assert_eq!(fresh[0].to_string(), "pxd-a1-leg-v1-n0");
                match &raid.segments[0].target {
                    TargetSpec::Raid { legs, nosync } => {
                        assert!(*nosync, "the legs left hold the same data");
                        assert_eq!(legs.len(), 1);
                    }
                    other => panic!("{other:?}"),
                }
            }
            other => panic!("{other:?}"),
        }
        // Not while md is busy, nor while a leg that stays is out of sync.
        let mut status = o.raids["v1"].clone();
        status.action = "check".into();
        o.raids.insert("v1".into(), status.clone());
        assert!(plan(&s, &o).unwrap().is_empty());
        status.action = "idle".into();
        status.legs[0] = LegHealth::Dead;
        o.raids.insert("v1".into(), status.clone());
        assert!(!kinds(&plan(&s, &o).unwrap()).contains(&"reassemble 1".to_owned()));
        // Re-assembled: recorded, and nothing else planned from the old places.
        status.legs = vec![LegHealth::InSync];
        o.raids.insert("v1".into(), status);
        assert_eq!(kinds(&plan(&s, &o).unwrap()), ["reassembled on slot 1"]);
        // Recorded: the leg that left loses its controller and split devices here.
        s.attached[0].legs.remove(1);
        s.attached[0].meta_slot = 1;
        let steps = kinds(&plan(&s, &o).unwrap());
        for k in [
            "disconnect nvme1",
            "deactivate pxd-a1-leg-v1-d1",
            "deactivate pxd-a1-leg-v1-m1",
            "deactivate pxd-a1-leg-v1-n1",
        ] {
            assert!(steps.contains(&k.to_owned()), "{k}: {steps:?}");
        }
        assert!(
            !steps
                .iter()
                .any(|k| k.contains("leg-v1-d0") || k.contains("leg-v1-n0")),
            "{steps:?}"
        );
    }

    #[test]
    fn a_new_leg_is_connected_and_split_while_copied_and_joins_once_ready() {
        use crate::plan::raid::LegHealth;
        use crate::plan::table::TargetSpec;
        use crate::reconcile::desired::BuildingLeg;
        let (mut s, mut o) = live_raid();
        let mut new = s.attached[0].legs[1].clone();
        (new.node, new.split, new.addr) = ("d4".into(), 2, Some("10.0.0.4:4420".parse().unwrap()));
        s.attached[0].building = Some(BuildingLeg {
            leg: new,
            ready: false,
        });
        // Reached first: its controller is no orphan, and the raid is left as it is.
        assert_eq!(
            kinds(&plan(&s, &o).unwrap()),
            [format!("connect {NQN}:d4:v1:e3")]
        );
        connected(&mut o, &["b2", "c3", "d4"]);
        let steps = plan(&s, &o).unwrap();
        assert!(
            matches!(&steps[..], [Step::Activate { plans, .. }] if plans.len() == 3),
            "{:?}",
            kinds(&steps)
        );
        for n in ["m2", "n2", "d2"] {
            o.devices.insert(
                format!("pxd-a1-leg-v1-{n}"),
                (
                    Device {
                        major: 253,
                        minor: 99,
                    },
                    Sectors(8192),
                ),
            );
        }
        assert!(
            plan(&s, &o).unwrap().is_empty(),
            "copying: nothing to do here"
        );
        // Ready: re-assembled with it, on the other slot, the last round in the pause.
        s.attached[0].building.as_mut().unwrap().ready = true;
        let steps = plan(&s, &o).unwrap();
        match &steps[..] {
            [Step::Reassemble {
                raid,
                fresh,
                slot,
                copy_last,
                ..
            }] => {
                assert!(*copy_last);
                assert_eq!(*slot, 1);
                assert_eq!(fresh.len(), 3);
                assert_eq!(fresh[2].to_string(), "pxd-a1-leg-v1-n2");
                match &raid.segments[0].target {
                    TargetSpec::Raid { legs, nosync } => assert!(*nosync && legs.len() == 3),
                    other => panic!("{other:?}"),
                }
            }
            other => panic!("{other:?}"),
        }
        // Never over a raid that is resyncing.
        o.raids.get_mut("v1").unwrap().action = "resync".into();
        assert!(plan(&s, &o).unwrap().is_empty());
        // The raid runs with it: recorded.
        let raid = o.raids.get_mut("v1").unwrap();
        raid.action = "idle".into();
        raid.legs = vec![LegHealth::InSync; 3];
        assert_eq!(kinds(&plan(&s, &o).unwrap()), ["reassembled on slot 1"]);
    }

    #[test]
    fn a_raid_check_starts_on_a_clean_idle_raid_and_is_recorded_when_md_goes_idle() {
        use crate::reconcile::desired::CheckPhase;
        use crate::store::state::{Command, VolumeChange};
        let (mut s, mut o) = live_raid();
        s.attached[0].check = Some(CheckPhase::Asked);
        let raid = o.raids.get_mut("v1").unwrap();
        raid.action = "recover".into();
        raid.synced = Sectors(10);
        assert!(plan(&s, &o).unwrap().is_empty(), "never over a resync");
        let raid = o.raids.get_mut("v1").unwrap();
        (raid.action, raid.synced) = ("idle".into(), raid.total);
        assert_eq!(kinds(&plan(&s, &o).unwrap()), ["check pxd-a1-raid-v1"]);
        let mut after = s.clone();
        after.attached[0].check = Some(CheckPhase::Running);
        let record = |before: &NodeState, after: &NodeState| {
            crate::reconcile::derive::records(before, after)
        };
        let change = |change| Command::UpdateVolume {
            id: "v1".into(),
            change,
        };
        assert_eq!(
            record(&s, &after),
            [change(VolumeChange::CheckStarted { epoch: 3 })]
        );
        s = after;
        // Running, md shows its progress in the sync ratio: not cut short by that.
        let raid = o.raids.get_mut("v1").unwrap();
        (raid.action, raid.synced) = ("check".into(), Sectors(10));
        assert!(plan(&s, &o).unwrap().is_empty(), "running");
        let raid = o.raids.get_mut("v1").unwrap();
        (raid.action, raid.synced, raid.mismatches) = ("idle".into(), raid.total, 128);
        assert_eq!(kinds(&plan(&s, &o).unwrap()), ["checked: 128"]);
        let mut after = s.clone();
        after.attached[0].check = Some(CheckPhase::Done(128));
        assert_eq!(
            record(&s, &after),
            [change(VolumeChange::CheckDone {
                epoch: 3,
                mismatches: 128
            })]
        );
        assert!(plan(&after, &o).unwrap().is_empty(), "done is done");

        // A leg leaving mid-check cuts it short: asked again, never recorded as a result.
        let mut s = live_raid().0;
        s.attached[0].check = Some(CheckPhase::Running);
        s.attached[0].legs[1].in_sync = false;
        let steps = plan(&s, &o).unwrap();
        assert!(
            kinds(&steps).contains(&"check cut short".to_owned()),
            "{:?}",
            kinds(&steps)
        );
        let mut after = s.clone();
        after.attached[0].check = Some(CheckPhase::Asked);
        assert_eq!(
            record(&s, &after),
            [change(VolumeChange::CheckCutShort { epoch: 3 })]
        );
    }

    #[test]
    fn a_stale_leg_is_dropped_and_fenced_then_taken_back_only_by_a_re_add() {
        use crate::plan::raid::{LegHealth, RaidStatus};
        let mut s = attached_state(true);
        let v = &mut s.attached[0];
        (v.attached, v.formatted, v.fresh, v.fs) = (true, true, false, Fs::Raw);
        // c3's leg is recorded stale: out of sync, no longer served.
        let c3 = &mut v.legs[1];
        (c3.in_sync, c3.serving, c3.may_rejoin) = (false, false, true);
        let mut o = observed(&[
            ("pxd-a1-leg-v1-m0", 8192),
            ("pxd-a1-leg-v1-n0", 8192),
            ("pxd-a1-leg-v1-d0", 131072),
            ("pxd-a1-leg-v1-m1", 8192),
            ("pxd-a1-leg-v1-n1", 8192),
            ("pxd-a1-leg-v1-d1", 131072),
            ("pxd-a1-raid-v1", 131072),
        ]);
        for (i, (n, state)) in [("b2", "live"), ("c3", "connecting")].iter().enumerate() {
            let nqn = format!("{NQN}:{n}:v1:e3");
            o.controllers.push(ControllerSeen {
                name: format!("nvme{i}"),
                nqn: nqn.clone(),
                state: state.to_string(),
            });
            let dev = Device {
                major: 259,
                minor: i as u32,
            };
            o.namespaces.insert(nqn, dev);
        }
        assert_eq!(
            kinds(&plan(&s, &o).unwrap()),
            ["disconnect nvme1", "fence 3"],
            "its held writes fail, then nothing reaches it"
        );
        // Served again and reconnected: re-added, unless a leg in sync holds writes.
        s.attached[0].legs[1].serving = true;
        o.fenced
            .extend(["m1", "n1", "d1"].map(|r| format!("pxd-a1-leg-v1-{r}")));
        o.controllers[1].state = "live".into();
        assert_eq!(kinds(&plan(&s, &o).unwrap()), ["re-add pxd-a1-leg-v1-m1"]);
        o.controllers[0].state = "connecting".into();
        assert!(
            plan(&s, &o).unwrap().is_empty(),
            "a re-add would wait on held writes"
        );
        // Re-added: up once in sync, not before.
        o.controllers[0].state = "live".into();
        o.fenced.clear();
        let mut status = RaidStatus {
            legs: vec![LegHealth::InSync, LegHealth::Syncing],
            synced: Sectors(10),
            total: Sectors(131072),
            action: "recover".into(),
            mismatches: 0,
        };
        o.raids.insert("v1".into(), status.clone());
        assert!(plan(&s, &o).unwrap().is_empty());
        status.legs[1] = LegHealth::InSync;
        status.synced = status.total;
        o.raids.insert("v1".into(), status);
        assert_eq!(kinds(&plan(&s, &o).unwrap()), ["leg c3 up"]);
        // A failed leg never comes back by resync.
        s.attached[0].legs[1].may_rejoin = false;
        o.fenced
            .extend(["m1", "n1", "d1"].map(|r| format!("pxd-a1-leg-v1-{r}")));
        assert!(plan(&s, &o).unwrap().is_empty());
    }

    #[test]
    fn stale_legs_coming_back_together_join_one_table_that_keeps_every_other() {
        use crate::plan::raid::{LegHealth, RaidStatus};
        use crate::plan::table::TargetSpec;
        let mut s = attached_state(true);
        let v = &mut s.attached[0];
        (v.attached, v.formatted, v.fresh, v.fs) = (true, true, false, Fs::Raw);
        let mut d4 = v.legs[1].clone();
        d4.node = "d4".into();
        d4.split = 2;
        v.legs.push(d4);
        for l in &mut v.legs[1..] {
            (l.in_sync, l.serving, l.may_rejoin) = (false, true, true);
        }
        let mut o = observed(&[
            ("pxd-a1-leg-v1-m0", 8192),
            ("pxd-a1-leg-v1-n0", 8192),
            ("pxd-a1-leg-v1-d0", 131072),
            ("pxd-a1-raid-v1", 131072),
        ]);
        connected(&mut o, &["b2", "c3", "d4"]);
        let mut status = RaidStatus {
            legs: vec![LegHealth::InSync, LegHealth::Absent, LegHealth::Absent],
            synced: Sectors(131072),
            total: Sectors(131072),
            action: "idle".into(),
            mismatches: 0,
        };
        o.raids.insert("v1".into(), status.clone());
        let members = |steps: &[Step]| match &steps[0] {
            Step::ReAdd { splits, raid, .. } => match &raid.segments[0].target {
                TargetSpec::Raid { legs, .. } => (
                    splits.len(),
                    legs.iter().map(Option::is_some).collect::<Vec<_>>(),
                ),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        };
        let steps = plan(&s, &o).unwrap();
        assert_eq!(steps.len(), 1, "{:?}", kinds(&steps));
        assert_eq!(members(&steps), (6, vec![true, true, true]));
        // c3 back and resyncing, d4 dropped again: d4 rejoins, and c3 stays in the table.
        for split in ["m1", "n1", "d1"] {
            o.devices.insert(
                format!("pxd-a1-leg-v1-{split}"),
                (
                    Device {
                        major: 253,
                        minor: 9,
                    },
                    Sectors(8),
                ),
            );
        }
        status.legs = vec![LegHealth::InSync, LegHealth::Syncing, LegHealth::Dead];
        o.raids.insert("v1".into(), status);
        let steps = plan(&s, &o).unwrap();
        assert_eq!(members(&steps), (3, vec![true, true, true]));
    }

    #[test]
    fn a_missing_drive_builds_nothing_and_tears_nothing_down() {
        let mut o = observed(&pool_devs());
        o.labelled.clear();
        let steps = plan(&state(), &o).unwrap();
        assert!(steps.is_empty(), "{:?}", kinds(&steps));
    }
}
