//! What one node should have: its pools and the volumes (with snapshots) placed on it. The
//! daemon derives this from the cluster store; it is plain data, so the planner is pure.

use crate::crypt::WrappedKey;
use crate::volume::spec::Fs;
use std::path::PathBuf;

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NodeState {
    pub node: String,
    /// The cluster's id: a drive's label must name it to be assembled.
    #[serde(default)]
    pub cluster: String,
    pub pools: Vec<PoolState>,
    pub volumes: Vec<VolumeState>,
    /// Where pxd mounts volumes; only mounts under it are pxd's to undo.
    #[serde(default)]
    pub mount_root: Option<PathBuf>,
    /// Drives being added to this node's pools.
    #[serde(default)]
    pub joining: Vec<JoiningDrive>,
    /// How a measured drive is classed.
    #[serde(default)]
    pub thresholds: crate::pool::class::Thresholds,
    /// How long each random pattern of a joining drive's benchmark runs (the benchmark's
    /// own default when none is given).
    #[serde(default)]
    pub drive_bench: Option<std::time::Duration>,
    /// The dm-crypt workqueues this node's new crypt tables bypass (daemon flags).
    #[serde(default)]
    pub crypt_workqueues: crate::plan::crypt::Workqueues,
    /// How a pool a joining drive founds is made (daemon flags).
    #[serde(default)]
    pub new_pool: crate::store::types::NewPool,
    /// Where this node's NVMe/TCP target serves its legs.
    #[serde(default)]
    pub nvme_addr: Option<std::net::SocketAddr>,
    /// Replicated volumes attached on this node: their raid and what sits on it.
    #[serde(default)]
    pub attached: Vec<AttachedVolume>,
    /// Volumes whose attachment was taken from a node that holds a leg (forced, or lost)
    /// less than a lease and a half ago, as this node's reconciler saw it: this node's older
    /// exports of them stay linked, and the new epoch is not served yet. The old attach node
    /// may still be writing until its lease runs out. Cut off sooner, it would hold writes
    /// already on its own leg, and failing them there would acknowledge them from that leg
    /// alone (raid1 completes a write that one leg took).
    #[serde(default)]
    pub takeover_holds: std::collections::BTreeSet<String>,
}

/// This node's replica of a replicated volume: a leg (metadata and data thins), exported to
/// the attach node when that is another node.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LegState {
    /// The thin id of the leg's metadata (raid superblock and bitmap).
    pub meta_thin_id: u64,
    /// The attach epoch this leg is to serve; 0 while the volume is not attached.
    pub epoch: u64,
    /// The attach node to export to (its id), when the volume is attached on another node.
    pub export_to: Option<String>,
    /// The epoch the store records this replica as serving.
    pub serving: u64,
}

/// A replicated volume attached on this node: its legs joined by raid1, then crypt,
/// filesystem and mount as for any volume.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AttachedVolume {
    pub id: String,
    pub size_bytes: u64,
    pub fs: Fs,
    pub formatted: bool,
    pub key: Option<WrappedKey>,
    pub mount: Option<PathBuf>,
    pub epoch: u64,
    /// Every leg, in the volume's replica order (a leg's place in the raid).
    pub legs: Vec<AttachLeg>,
    /// No raid was ever assembled from these legs: they are fresh thin devices, all zeros,
    /// so the first assembly skips the initial sync.
    pub fresh: bool,
    /// The metadata slot (0 or 1) of every leg that the raid runs on; a re-assembly without
    /// the leaving legs moves to the other one.
    #[serde(default)]
    pub meta_slot: u8,
    /// The store records this epoch's stack as up.
    pub attached: bool,
    /// The attachment is being taken down.
    pub detaching: bool,
    /// A raid check asked for at this epoch, and how far it is.
    #[serde(default)]
    pub check: Option<CheckPhase>,
    /// A new leg being built for this raid (`ha-update`), not a member yet.
    #[serde(default)]
    pub building: Option<BuildingLeg>,
    /// How long the last re-assembly held I/O, in milliseconds (recorded with it).
    #[serde(default)]
    pub pause_ms: Option<u64>,
}

impl AttachedVolume {
    /// The raid runs over its new set of legs on metadata slot `slot`: without the leaving
    /// legs, with the new one.
    pub fn reassembled(&mut self, slot: u8) {
        self.meta_slot = slot;
        self.legs.retain(|l| !l.leaving);
        self.legs.extend(self.building.take().map(|b| b.leg));
    }
}

/// A new leg being copied for a raid: it joins once the copy is `ready`, by a re-assembly
/// during which the copy's last round runs (the raid suspended, so nothing changes under it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BuildingLeg {
    pub leg: AttachLeg,
    pub ready: bool,
}

/// Where a raid check stands on the attach node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CheckPhase {
    /// Asked for; starts once the raid is idle with every leg in sync.
    Asked,
    /// `check` was sent to the raid.
    Running,
    /// Finished, with this many sectors differing between legs.
    Done(u64),
}

/// One leg as the attach node reaches it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AttachLeg {
    /// The replica's node id.
    pub node: String,
    /// The number of its split devices here (`m<n>`, `n<n>`, `d<n>`).
    #[serde(default)]
    pub split: u8,
    /// This node's own replica, used directly; otherwise reached over NVMe/TCP at `addr`.
    pub local: bool,
    /// The replica node's NVMe/TCP address.
    pub addr: Option<std::net::SocketAddr>,
    /// Its node serves this epoch (older exports are gone): it may be connected.
    pub serving: bool,
    /// In sync: a member of the raid. A leg out of sync is left out.
    pub in_sync: bool,
    /// Out of sync but may rejoin by a bitmap resync once its node serves it again (a stale
    /// leg); a failed one never does.
    #[serde(default)]
    pub may_rejoin: bool,
    /// Dropped by `ha-update`: in the raid until it is re-assembled without it.
    #[serde(default)]
    pub leaving: bool,
}

/// A drive whose add is recorded but not finished.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JoiningDrive {
    /// Its label uuid to be.
    pub id: String,
    /// Where it was when the add was asked for; checked again (size, hardware id, use,
    /// label) before anything is written.
    pub path: PathBuf,
    pub size_bytes: u64,
    pub hardware_id: Option<String>,
    /// The add may take a disk with a signature, or a foreign or damaged label.
    pub force: bool,
    pub phase: JoinPhase,
}

/// How far an add has come. `Measure` and `Label` come from the store; the others are what
/// the executor did, for the store to record.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum JoinPhase {
    /// To be benchmarked and classed.
    Measure,
    /// Benchmarked: class and result, to be recorded (which picks its pool and slot).
    Measured {
        class: crate::volume::spec::Class,
        benchmark: crate::store::types::Benchmark,
    },
    /// To be labelled as this member of its pool.
    Label(crate::pool::label::LabelSpec),
    /// Labelled: to be recorded online.
    Labelled,
    /// Cannot be finished, for this reason.
    Failed(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PoolState {
    pub id: String,
    /// Label uuids of its drives in placement order (metadata on the first): what it is
    /// assembled from.
    #[serde(default)]
    pub members: Vec<String>,
    /// Where the drives were when added, in the same order: hints for messages only.
    pub drives: Vec<PathBuf>,
    /// Whether its metadata was ever activated; only a pool never activated is made fresh.
    #[serde(default)]
    pub activated: bool,
    /// Allocation chunk, in 512-byte sectors.
    pub chunk_sectors: u64,
    /// Block zeroing and discard passdown, as the pool was made.
    #[serde(default)]
    pub thin: crate::plan::pool::ThinFeatures,
    /// A member was replaced: its metadata is made fresh even over an old superblock.
    #[serde(default)]
    pub reformed: bool,
    /// A member fails I/O: nothing is deleted from its metadata any more (the pool's
    /// replacement or removal discards it whole); dropped legs on it are only torn down.
    #[serde(default)]
    pub dead: bool,
    /// A member is leaving and no replica is left on the pool: its devices come down,
    /// then the member's label is erased and the leave recorded.
    #[serde(default)]
    pub retire: Option<Retire>,
}

/// The member drive leaving a pool with nothing left on it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Retire {
    pub drive: String,
    /// Set once its devices are down and its label erased (or unreadable on a failed
    /// drive): the leave is then recorded.
    pub done: bool,
}

pub use crate::store::types::Phase;

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VolumeState {
    pub id: String,
    pub pool: String,
    pub thin_id: u64,
    pub size_bytes: u64,
    pub fs: Fs,
    /// Set once the filesystem exists, so a crash after mkfs never makes it twice.
    pub formatted: bool,
    /// The wrapped data key of an encrypted volume.
    pub key: Option<WrappedKey>,
    pub snapshots: Vec<SnapshotState>,
    pub phase: Phase,
    /// The thin id this volume's is copied from when it is made (clone, restore); cleared
    /// once the copy exists.
    #[serde(default)]
    pub origin: Option<OriginState>,
    /// Activated read-only (a read-only clone).
    #[serde(default)]
    pub read_only: bool,
    /// Where it is to be mounted on this node.
    #[serde(default)]
    pub mount: Option<PathBuf>,
    /// Thin ids a restore replaced, to delete once the new device is up.
    #[serde(default)]
    pub retired: Vec<u64>,
    /// Set when the volume is replicated: this replica is a leg, and its filesystem, crypt
    /// and mount live on the attach node instead.
    #[serde(default)]
    pub leg: Option<LegState>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OriginState {
    pub thin_id: u64,
    /// The live volume that owns `thin_id`, suspended around the copy.
    pub volume: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotState {
    pub id: String,
    pub thin_id: u64,
    /// False until `create_snap` is known to have happened; only then is it skipped.
    pub taken: bool,
    pub phase: Phase,
}

impl NodeState {
    pub fn volume(&self, id: &str) -> Option<&VolumeState> {
        self.volumes.iter().find(|v| v.id == id)
    }

    pub fn volume_mut(&mut self, id: &str) -> Option<&mut VolumeState> {
        self.volumes.iter_mut().find(|v| v.id == id)
    }

    pub fn attached(&self, id: &str) -> Option<&AttachedVolume> {
        self.attached.iter().find(|v| v.id == id)
    }

    pub fn attached_mut(&mut self, id: &str) -> Option<&mut AttachedVolume> {
        self.attached.iter_mut().find(|v| v.id == id)
    }
}
