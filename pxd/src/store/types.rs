//! The desired state of DESIGN §3: what the cluster has decided, as plain serde data. The
//! reconcilers compare it with what the kernel reports; nothing here touches the host.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// A node's id: random at first start, shown as 16 lowercase hex digits, which also makes it a
/// valid node id in dm names (`plan::names`, at most 32 lowercase alphanumerics).
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<u64> for NodeId {
    fn from(v: u64) -> Self {
        NodeId(v)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node id {0:?} is not 1 to 16 hex digits")]
pub struct BadNodeId(pub String);

impl FromStr for NodeId {
    type Err = BadNodeId;
    fn from_str(s: &str) -> Result<Self, BadNodeId> {
        let ok = !s.is_empty() && s.len() <= 16 && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !ok {
            return Err(BadNodeId(s.chars().take(40).collect()));
        }
        u64::from_str_radix(s, 16)
            .map(NodeId)
            .map_err(|_| BadNodeId(s.to_owned()))
    }
}

// Node ids travel as hex strings, the same spelling the CLI shows and takes.
impl Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

// In the API's schema a node id is the hex string it travels as.
impl utoipa::PartialSchema for NodeId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^[0-9a-fA-F]{1,16}$"))
            .description(Some("A node id: 1 to 16 hex digits"))
            .into()
    }
}

impl utoipa::ToSchema for NodeId {}

/// A secret shared by the members (the join-token key, the TCP API token). Its `Debug` never
/// shows the value, so a logged state or command cannot leak it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// A new random 256-bit secret, hex encoded.
    pub fn random() -> Secret {
        let bytes: [u8; 32] = rand::random();
        Secret(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// A secret with the given value (a key received from another member).
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

// A secret is a string the schema marks as a password, so that tools do not show it.
impl utoipa::PartialSchema for Secret {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::Password,
            )))
            .into()
    }
}

impl utoipa::ToSchema for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The cluster itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// 32 hex digits, random at `pxd cluster init`.
    pub id: String,
    pub name: String,
    /// Key of the MAC that join tokens carry: only a member can mint a token that verifies.
    pub join_secret: Secret,
    /// Bearer token of the TCP API, for other nodes and tools.
    pub api_token: Secret,
}

/// What a node is for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Holds pools and replicas.
    #[default]
    Storage,
    /// Compute only: runs containers and attaches volumes whose replicas live elsewhere.
    Storageless,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Storage => "storage",
            Role::Storageless => "storageless",
        })
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "storage" => Ok(Role::Storage),
            "storageless" => Ok(Role::Storageless),
            other => Err(format!(
                "role {other:?} is neither \"storage\" nor \"storageless\""
            )),
        }
    }
}

/// A member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: NodeId,
    pub name: String,
    /// `IP:PORT` of the TCP REST API.
    pub api_addr: String,
    /// ZeroMQ endpoint (`tcp://IP:PORT`) of Raft, gossip and replica traffic.
    pub data_addr: String,
    /// The node's CURVE public key, Z85 encoded.
    pub public_key: String,
    /// Where it sits (manual tags and what it reported); placement spreads over these.
    #[serde(default)]
    pub topology: super::topology::NodeTopology,
    pub role: Role,
}

/// Performance class of a drive, pool or volume (DESIGN §6), and a volume's filesystem: the
/// same types the volume spec parses, so a request and the stored object cannot disagree.
pub use crate::volume::spec::{Class, Fs};

/// The result of benchmarking a drive or pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Benchmark {
    pub read_iops: u64,
    pub write_iops: u64,
    pub read_p99_us: u64,
    pub write_p99_us: u64,
    pub seq_mb_per_s: u64,
    #[serde(default)]
    pub read_p50_us: u64,
    #[serde(default)]
    pub write_p50_us: u64,
}

impl From<&crate::pool::benchmark::BenchResult> for Benchmark {
    /// Whole IOPS and MiB/s: the store keeps integers, so applying stays exact everywhere.
    fn from(r: &crate::pool::benchmark::BenchResult) -> Benchmark {
        let w = r.random_write.unwrap_or(r.random_read);
        Benchmark {
            read_iops: r.random_read.iops as u64,
            write_iops: w.iops as u64,
            read_p99_us: r.random_read.p99_us,
            write_p99_us: w.p99_us,
            seq_mb_per_s: r.sequential_read_mib_s as u64,
            read_p50_us: r.random_read.p50_us,
            write_p50_us: w.p50_us,
        }
    }
}

impl Benchmark {
    /// The benchmark as the API reports it.
    pub fn to_result(&self) -> crate::pool::benchmark::BenchResult {
        use crate::pool::benchmark::{BenchResult, Measured};
        BenchResult {
            random_read: Measured {
                iops: self.read_iops as f64,
                p50_us: self.read_p50_us,
                p99_us: self.read_p99_us,
            },
            random_write: Some(Measured {
                iops: self.write_iops as f64,
                p50_us: self.write_p50_us,
                p99_us: self.write_p99_us,
            }),
            sequential_read_mib_s: self.seq_mb_per_s as f64,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub id: String,
    pub node: NodeId,
    pub class: Class,
    /// Label uuids of its drives (`pool::label`), in concatenation order: the member index
    /// of each is its place here. The list only grows.
    pub drives: Vec<String>,
    pub capacity: u64,
    pub used: u64,
    pub benchmark: Option<Benchmark>,
    /// Allocation chunk, in 512-byte sectors (DESIGN §6: 64 KiB to 1 MiB).
    #[serde(default = "default_chunk_sectors")]
    pub chunk_sectors: u64,
    /// dm-thin zeroes a new chunk before a partial write lands in it (fixed when the pool
    /// is made; pools recorded before the field were made with the kernel's default, on).
    #[serde(default = "kernel_default_on")]
    pub zero_new_chunks: bool,
    /// dm-thin passes discards down to the drives (the same).
    #[serde(default = "kernel_default_on")]
    pub discard_passdown: bool,
    /// Drive paths on the pool's node when they were added, in the order of `drives`: hints
    /// for an operator, never what the pool is assembled from.
    #[serde(default)]
    pub drive_paths: Vec<String>,
    /// Bumped by every member added; written into each new member's label.
    #[serde(default)]
    pub generation: u64,
    /// Whether its thin metadata was ever activated. Only a pool never activated may get
    /// fresh metadata; a pool stored before this field existed was, hence the default.
    #[serde(default = "activated_before_the_record")]
    pub activated: bool,
    /// What the pool's node last found it to be.
    #[serde(default)]
    pub health: PoolHealth,
    /// A member was replaced: the old metadata, whatever it holds, is made fresh when the
    /// pool is next brought up (it held no replica when its devices came down).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reformed: bool,
}

impl Pool {
    /// The dm-thin features the pool was made with.
    pub fn thin_features(&self) -> crate::plan::pool::ThinFeatures {
        crate::plan::pool::ThinFeatures {
            zero_new_chunks: self.zero_new_chunks,
            discard_passdown: self.discard_passdown,
        }
    }

    /// An online, activated pool of 1 GiB with no drives, for tests of placement and the
    /// state machine.
    #[cfg(test)]
    pub(crate) fn for_tests(id: &str, node: NodeId, class: Class) -> Pool {
        Pool {
            id: id.into(),
            node,
            class,
            drives: vec![],
            capacity: 1 << 30,
            used: 0,
            benchmark: None,
            chunk_sectors: 128,
            zero_new_chunks: true,
            discard_passdown: true,
            drive_paths: vec![],
            generation: 1,
            activated: true,
            health: PoolHealth::Online,
            reformed: false,
        }
    }
}

fn default_chunk_sectors() -> u64 {
    128
}

pub(crate) fn kernel_default_on() -> bool {
    true
}

/// How this node makes a new pool: the daemon's `--thin-*` flags, carried in the command that
/// records a drive's class, because the pool the drive founds is made by every member's
/// state machine alike. A pool keeps these for its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewPool {
    pub chunk_sectors: u64,
    #[serde(flatten)]
    pub features: crate::plan::pool::ThinFeatures,
}

impl Default for NewPool {
    fn default() -> NewPool {
        NewPool {
            chunk_sectors: *crate::plan::pool::DEFAULT_CHUNK,
            features: crate::plan::pool::ThinFeatures::DEFAULT,
        }
    }
}

fn activated_before_the_record() -> bool {
    true
}

/// A pool's condition as its node last found it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "state", content = "reason", rename_all = "lowercase")]
pub enum PoolHealth {
    /// Every member present and the pool up.
    #[default]
    Online,
    /// A member is missing or failed; the reason names it. Whatever is up stays up.
    Degraded(String),
    /// Its metadata failed a check; its bytes are left as they are until an operator repairs
    /// it. The reason names the drive and the check.
    Damaged(String),
}

impl PoolHealth {
    pub fn name(&self) -> &'static str {
        match self {
            PoolHealth::Online => "online",
            PoolHealth::Degraded(_) => "degraded",
            PoolHealth::Damaged(_) => "damaged",
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            PoolHealth::Online => None,
            PoolHealth::Degraded(r) | PoolHealth::Damaged(r) => Some(r),
        }
    }
}

/// Where an object is in its life. `Deleting` is recorded before anything is torn down, so a
/// delete interrupted half-way is finished by the reconciler, never forgotten.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    #[default]
    Live,
    Deleting,
}

/// The thin device a new one is copied from (a clone, or a restore from a snapshot). Cleared
/// once the copy is made, so it is never made twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Origin {
    pub thin_id: u32,
    /// The live volume that owns `thin_id`, suspended around the copy; none for a snapshot.
    pub volume: Option<String>,
}

/// Where a drive is in its life. A drive add is recorded first (`adding`), then the node's
/// reconciler measures it (`labelling`, once it has a class, a pool and a member slot),
/// writes its label, and it is `online`: a member the pool is assembled from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DriveState {
    Online,
    Failed,
    Adding,
    Labelling,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drive {
    /// The uuid in the drive's pxd label: its identity.
    pub id: String,
    pub node: NodeId,
    /// Where it was when added: a hint.
    pub path: String,
    /// The WWN or serial the device reported, if any: a hint.
    #[serde(default)]
    pub hardware_id: Option<String>,
    /// The pool it is a member of; empty until it is measured.
    #[serde(default)]
    pub pool: String,
    pub size: u64,
    /// What its benchmark earned; none until it is measured.
    pub class: Option<Class>,
    pub state: DriveState,
    /// The add may take a drive with a signature or a foreign or damaged label.
    #[serde(default)]
    pub force: bool,
    #[serde(default)]
    pub benchmark: Option<Benchmark>,
    /// Why the add failed, or the drive did, when it did.
    #[serde(default)]
    pub note: Option<String>,
    /// Set by `drive remove` or `drive replace`: the replicas on its pool are built
    /// elsewhere, then the pool's devices come down and the drive leaves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaving: Option<Leaving>,
    /// The drive whose place in its pool this one takes (`drive replace`): its add waits
    /// until that drive has left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
}

/// Why a drive leaves its pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "for", rename_all = "snake_case")]
pub enum Leaving {
    /// `drive remove`: the pool goes with it (it is the pool's only member).
    Remove,
    /// `drive replace`: drive `by` takes its place, and the pool is made anew.
    Replace { by: String },
}

impl Drive {
    /// A drive whose add is recorded and not started: no pool, no class yet.
    pub fn adding(
        id: String,
        node: NodeId,
        path: String,
        hardware_id: Option<String>,
        size: u64,
        force: bool,
    ) -> Drive {
        Drive {
            id,
            node,
            path,
            hardware_id,
            pool: String::new(),
            size,
            class: None,
            state: DriveState::Adding,
            force,
            benchmark: None,
            note: None,
            leaving: None,
            replaces: None,
        }
    }

    /// Whether its pool may hold no replica: the drive fails I/O or is leaving.
    pub fn out_of_service(&self) -> bool {
        self.state == DriveState::Failed || self.leaving.is_some()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaState {
    /// In sync with the others: a write is acknowledged only once it is on every `up` leg.
    #[serde(alias = "clean")]
    Up,
    /// Missed the writes of attach epoch `missed_epoch` on; never read from, and resynced
    /// (from its bitmap) before it counts again.
    Stale { missed_epoch: u64 },
    /// Being built from another replica.
    Building,
    /// Lost (its drive or node); to be replaced.
    Failed,
    /// Dropped by `ha-update`: still in the raid, until the attach node re-assembles it
    /// without this leg.
    Leaving,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    pub node: NodeId,
    /// The number of this leg's split devices on the attach node, once a leg has left the
    /// volume (until then, its place among the replicas): a leg keeps its devices while
    /// the others' places change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<u8>,
    pub pool: String,
    pub thin_id: u32,
    /// The thin device holding this leg's raid superblock and write-intent bitmap; only
    /// replicated volumes (repl 2 or 3) have one.
    #[serde(default)]
    pub meta_thin_id: Option<u32>,
    pub state: ReplicaState,
    /// The attach epoch this replica serves, as its node recorded it: its node exports this
    /// epoch's leg only and has unexported every older one, so an attach acknowledged at
    /// this epoch can no longer be written by an older attach node through it.
    #[serde(default)]
    pub serving_epoch: u64,
    /// Dropped (`leaving`) while out of sync: no member of the raid while it leaves.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub left_behind: bool,
}

/// A raid `check` of a replicated volume (a scrub): asked for through the API, run by the
/// attach node's raid, which reads every leg and counts what differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RaidCheck {
    /// Unix seconds, chosen by the proposer: which request this is.
    pub requested: u64,
    /// The attach epoch it runs under; a new attach takes an unfinished one along.
    pub epoch: u64,
    /// The attach node has started it.
    pub started: bool,
    /// Once finished: the raid's `mismatch_cnt`, in sectors whose legs differ. 0 is clean.
    pub mismatches: Option<u64>,
}

impl RaidCheck {
    pub fn done(&self) -> bool {
        self.mismatches.is_some()
    }
}

/// Settings that hold for the whole cluster, changed through Raft by any member.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterOptions {
    /// Seconds between scheduled raid checks of each attached replicated volume; `None`
    /// (the default) runs none. A volume's attach node asks for its check once this long
    /// has passed since its last one was asked for, one volume at a time per node.
    #[serde(default)]
    pub scrub_interval_s: Option<u64>,
    /// Seconds a leg may stay stale before it is replaced by a new one built elsewhere;
    /// `None`: [`REPLICA_TIMEOUT_DEFAULT_S`]. A node back sooner keeps its leg.
    #[serde(default)]
    pub replica_timeout_s: Option<u64>,
}

/// Refuses a replica timeout out of range, naming the field and its limits.
pub fn check_replica_timeout(s: u64) -> Result<(), String> {
    if (REPLICA_TIMEOUT_MIN_S..=REPLICA_TIMEOUT_MAX_S).contains(&s) {
        return Ok(());
    }
    Err(format!(
        "replica_timeout_s must be {REPLICA_TIMEOUT_MIN_S} to {REPLICA_TIMEOUT_MAX_S} seconds (10 seconds to 30 days), got {s}"
    ))
}

/// How long a stale leg waits for its node by default: a reboot takes less.
pub const REPLICA_TIMEOUT_DEFAULT_S: u64 = 600;
/// The shortest and longest replica timeouts taken.
pub const REPLICA_TIMEOUT_MIN_S: u64 = 10;
pub const REPLICA_TIMEOUT_MAX_S: u64 = 30 * 86400;

/// The shortest and longest scrub intervals taken: a check reads every leg in full.
pub const SCRUB_INTERVAL_MIN_S: u64 = 60;
pub const SCRUB_INTERVAL_MAX_S: u64 = 366 * 86400;

impl ClusterOptions {
    /// Refuses values out of range, naming the field and its limits.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(s) = self.replica_timeout_s {
            check_replica_timeout(s)?;
        }
        if let Some(s) = self.scrub_interval_s {
            if !(SCRUB_INTERVAL_MIN_S..=SCRUB_INTERVAL_MAX_S).contains(&s) {
                return Err(format!(
                    "scrub_interval_s must be {SCRUB_INTERVAL_MIN_S} to {SCRUB_INTERVAL_MAX_S} seconds (1 minute to 366 days), got {s}"
                ));
            }
        }
        Ok(())
    }

    /// How long a stale leg waits before it is replaced.
    pub fn replica_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.replica_timeout_s.unwrap_or(REPLICA_TIMEOUT_DEFAULT_S))
    }
}

/// A leg lost while its volume was attached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LegLoss {
    pub node: NodeId,
    pub epoch: u64,
    /// Milliseconds the writes were held (the controller down) before the leg was recorded
    /// stale; the raid drops it and writes flow again right after.
    pub held_ms: u64,
}

/// Where a volume is attached, with the fencing epoch issued for it (DESIGN §5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub node: NodeId,
    pub epoch: u64,
    /// Made by a mount rather than an attach: the unmount detaches it too.
    #[serde(default)]
    pub by_mount: bool,
    #[serde(default)]
    pub state: AttachState,
}

/// How far an attachment has come. A single-replica volume's device is always up on its
/// node, so its attachment is `attached` from the start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttachState {
    /// Recorded; the replicas fence older epochs and the attach node builds the raid.
    Attaching,
    /// The attach node's stack is up at this epoch.
    #[default]
    Attached,
    /// The attach node takes its stack down, then the attachment is removed.
    Detaching,
}

pub use crate::volume::limits::{BandwidthLimit, IopsLimit};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub id: String,
    pub name: String,
    pub size: u64,
    pub fs: Fs,
    /// 1 to 3.
    pub repl: u8,
    pub io_priority: Class,
    /// IOPS limits held for the volume as a whole, on the node its device is on.
    pub max_iops: Option<IopsLimit>,
    /// Bandwidth limits, bytes a second, held the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bandwidth: Option<BandwidthLimit>,
    pub encrypted: bool,
    /// Which wrapped key unlocks it, when encrypted.
    pub key_ref: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub replicas: Vec<Replica>,
    pub attachment: Option<Attachment>,
    /// The last attach epoch issued; the next attach gets the one above it, so an epoch is
    /// never reused even across detaches.
    #[serde(default)]
    pub epoch: u64,
    /// Its raid was assembled once: its legs carry superblocks, and a later assembly must
    /// never be told `nosync`.
    #[serde(default)]
    pub assembled: bool,
    /// Data losses an operator accepted (`attach --force` from stale legs), newest last.
    #[serde(default)]
    pub accepted_losses: Vec<String>,
    /// The last leg lost while attached, and how long its writes were held before the raid
    /// went on without it.
    #[serde(default)]
    pub last_leg_loss: Option<LegLoss>,
    pub snapshot_schedule: Option<String>,
    #[serde(default)]
    pub phase: Phase,
    /// Set once the filesystem exists, so a crash after mkfs never makes it twice.
    #[serde(default)]
    pub formatted: bool,
    /// The data key, sealed under the cluster key (`crypt`); never the key itself.
    #[serde(default)]
    pub wrapped_key: Option<crate::crypt::WrappedKey>,
    /// Salt of a passphrase-derived key (`--secret_key`): the passphrase is never stored.
    #[serde(default)]
    pub key_salt: Option<Vec<u8>>,
    #[serde(default)]
    pub origin: Option<Origin>,
    /// A read-only clone: its device is activated read-only and mounted so.
    #[serde(default)]
    pub read_only: bool,
    /// Where the attachment node keeps it mounted; none when it is not to be mounted.
    #[serde(default)]
    pub mount_path: Option<String>,
    /// Thin ids replaced by a restore, deleted once the restored device is up.
    #[serde(default)]
    pub retired_thin_ids: Vec<u32>,
    /// Unix seconds, chosen by the proposer.
    #[serde(default)]
    pub created: u64,
    /// How placement chose the replicas, and what a best-effort placement could not give.
    #[serde(default)]
    pub placement: Option<PlacementNote>,
    /// The last raid check asked for, running or finished.
    #[serde(default)]
    pub check: Option<RaidCheck>,
    /// The metadata slot (0 or 1) of every leg that the raid was last assembled on; a
    /// re-assembly over another set of legs moves to the other one (DESIGN §5).
    #[serde(default)]
    pub meta_slot: u8,
    /// Replicas `ha-update` dropped, for their nodes to free.
    #[serde(default)]
    pub dropped: Vec<Replica>,
    /// The new replica being built, thin-aware, while the volume runs (DESIGN §5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,
    /// The node whose stale leg was dropped to be replaced (the replica timeout): a new leg
    /// is placed away from its fault domain and built, as a raise, once the drop is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacing: Option<NodeId>,
    /// The node whose leg sits on a drive leaving its pool (`drive remove`/`replace`) and is
    /// moved make-before-break: a new leg is built elsewhere first, with one leg more than
    /// the count meanwhile, and only once it is up does this one leave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evacuating: Option<NodeId>,
    /// The split number the last leg added was given: the next is taken after it, round
    /// the [`MAX_LEGS`](crate::plan::names::MAX_LEGS), so that the number of a leg just
    /// dropped (whose split devices its attach node may not have taken down yet) is never
    /// the next one given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_split: Option<u8>,
    /// This volume's own replica timeout, in seconds, over the cluster's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_timeout_s: Option<u64>,
    /// The last build, once over: what it copied and how long its cut-over paused I/O.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_build: Option<Build>,
}

/// A new leg copied from a leg in sync while the volume runs: only the blocks the source's
/// thin device maps travel, in rounds of snapshots compared with `thin_delta`, and the last
/// round runs while the attach node's raid is suspended, just before the raid is
/// re-assembled with the new leg (DESIGN §5, "A new replica").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Build {
    /// The node whose leg in sync is copied.
    pub source: NodeId,
    /// The node of the new leg (the volume's `Building` replica).
    pub target: NodeId,
    /// The attach epoch it runs under: the raid it joins. Another attach stops it.
    pub epoch: u64,
    /// Two thin ids on the source's pool for the snapshots that successive rounds compare,
    /// reserved here so that a crash never leaks one: the source deletes both when done.
    pub snap_ids: [u32; 2],
    pub phase: BuildPhase,
    /// Copy rounds finished.
    pub rounds: u32,
    /// Bytes the source's leg mapped when the copy began.
    pub allocated_bytes: u64,
    /// Bytes sent so far, over every round.
    pub copied_bytes: u64,
    /// What the last round found changed: the bytes left to copy.
    pub left_bytes: u64,
    /// Bytes a second of the last round.
    pub rate: u64,
    /// Unix seconds the build was asked for, chosen by the proposer.
    pub started: u64,
    /// The last cut-over's pause, in milliseconds, once joined.
    #[serde(default)]
    pub pause_ms: Option<u64>,
    /// Why the build stopped, when it did.
    #[serde(default)]
    pub error: Option<String>,
}

/// How far a build has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BuildPhase {
    /// The source copies rounds until the remainder is small.
    Copying,
    /// The remainder is small: the attach node may cut over (suspend, last round, load).
    Ready,
    /// The raid runs with the new leg; a check must find the legs equal before it is up.
    Joined,
    /// The new leg is up; the source deletes its snapshots, then the record goes.
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: String,
    pub volume: String,
    pub name: String,
    /// Unix seconds, chosen by the proposer so that applying stays deterministic.
    pub time: u64,
    /// Thin device id of the snapshot in each replica's pool.
    pub thin_ids: BTreeMap<NodeId, u32>,
    pub read_only: bool,
    /// False until the kernel snapshot is known to exist; only then is it skipped.
    #[serde(default)]
    pub taken: bool,
    #[serde(default)]
    pub phase: Phase,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_round_trip_as_hex() {
        let id = NodeId(0xdead_beef);
        assert_eq!(id.to_string(), "00000000deadbeef");
        assert_eq!("00000000deadbeef".parse::<NodeId>(), Ok(id));
        assert_eq!("deadbeef".parse::<NodeId>(), Ok(id));
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"00000000deadbeef\"");
        assert!("xyz".parse::<NodeId>().is_err());
        assert!("12345678901234567".parse::<NodeId>().is_err());
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let s = Secret::random();
        assert!(!format!("{s:?}").contains(s.expose()));
        assert_eq!(s.expose().len(), 64);
    }
}

/// Why a volume's replicas are where they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlacementNote {
    /// "1 replica over 1 node in 1 rack".
    pub explanation: String,
    /// Set when `best_effort` placed less than was asked.
    #[serde(default)]
    pub shortfall: Option<String>,
}
