//! The replicated desired state and the commands that change it. `apply` is pure and
//! deterministic: every member applies the same commands in the same order and ends in the
//! same state, and each change is reported as an object key and its new value so the state
//! machine can persist exactly what changed.

pub use super::codec::StateError;
pub(super) use super::codec::{encode, removed};
use super::types::{
    ClusterInfo, ClusterOptions, Drive, Node, NodeId, Phase, Pool, Snapshot, Volume,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Longest KV namespace or key, in bytes.
pub const MAX_KV_KEY: usize = 128;
/// Largest KV value, in bytes.
pub const MAX_KV_VALUE: usize = 64 * 1024;

/// A mutation of the desired state: the data of one Raft log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Names the cluster; the first command of every cluster.
    InitCluster {
        info: ClusterInfo,
    },
    /// Adds a node, or updates one with the same id.
    PutNode {
        node: Node,
    },
    RemoveNode {
        id: NodeId,
    },
    /// A manual tag, or what a node reported finding about its own place.
    ChangeTopology {
        node: NodeId,
        change: super::topology::TopologyChange,
    },
    PutPool {
        pool: Pool,
    },
    RemovePool {
        id: String,
    },
    PutDrive {
        drive: Drive,
    },
    /// Records the intent to add a drive: state `adding`, no pool yet. Refused while the
    /// same disk (path or hardware id) is being added.
    BeginDriveAdd {
        drive: Drive,
    },
    /// A step of a drive add, as the node's reconciler did it.
    UpdateDrive {
        id: String,
        change: super::pools::DriveChange,
    },
    UpdatePool {
        id: String,
        change: super::pools::PoolChange,
    },
    RemoveDrive {
        id: String,
    },
    /// `drive remove` (no replacement) or `drive replace`: the drive leaves its pool once
    /// the replicas there are built elsewhere. Refused while a repl 1 volume lives on the
    /// pool, or (for a remove) while the pool has other members.
    LeaveDrive {
        id: String,
        replacement: Option<Drive>,
    },
    PutVolume {
        volume: Volume,
    },
    RemoveVolume {
        id: String,
    },
    PutSnapshot {
        snapshot: Snapshot,
    },
    /// Adds a volume, giving each replica the next free thin id of its pool. Refused if the
    /// name is taken, so two racing creates of one name cannot both win.
    CreateVolume {
        volume: Volume,
    },
    /// One change to a volume, applied to the current record (never a whole-record write,
    /// which could undo a change made meanwhile by the reconciler or another call).
    UpdateVolume {
        id: String,
        change: VolumeChange,
    },
    /// Adds a snapshot of a live volume, with the next free thin id on each replica's pool.
    CreateSnapshot {
        snapshot: Snapshot,
    },
    UpdateSnapshot {
        id: String,
        change: SnapshotChange,
    },
    RemoveSnapshot {
        id: String,
    },
    /// Replaces the cluster-wide settings (refused when a value is out of range).
    SetOptions {
        options: ClusterOptions,
    },
    /// Small metadata: a value under a key in a namespace.
    KvPut {
        ns: String,
        key: String,
        value: String,
    },
    KvDelete {
        ns: String,
        key: String,
    },
}

/// A change to one volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum VolumeChange {
    /// A new size in bytes; never smaller.
    Resize { size: u64 },
    /// Mount it at `path` on `node`, or (`None`) unmount it.
    Mount { node: NodeId, path: Option<String> },
    /// Replace its data with snapshot `snapshot`'s: new thin ids copied from the snapshot's,
    /// the old ones retired.
    Restore { snapshot: String },
    /// Start deleting it (the reconciler tears it down, then removes the record).
    Delete,
    /// The reconciler made its filesystem.
    Formatted,
    /// The reconciler made the copy of its origin.
    OriginCopied,
    /// The reconciler deleted its retired thin ids.
    RetiredDeleted,
    /// Attach it on `node` under a new epoch. Refused while it is attached elsewhere unless
    /// `force` (the failover path). `by_mount`: a mount asked for it.
    Attach {
        node: NodeId,
        #[serde(default)]
        force: bool,
        #[serde(default)]
        by_mount: bool,
        /// Replica nodes the asking node sees offline: their legs miss this epoch (stale),
        /// and they do not count as legs in sync that the attach can read.
        #[serde(default)]
        lost: Vec<NodeId>,
    },
    /// Take it off its attach node; refused while mounted. `force` forgets the attachment
    /// at once, for an attach node that is gone.
    Detach {
        #[serde(default)]
        force: bool,
    },
    /// The replica on `node` serves epoch `epoch` only (older exports are gone).
    Serving { node: NodeId, epoch: u64 },
    /// The attach node's stack is up at `epoch`.
    Attached { epoch: u64 },
    /// The attach node's stack of `epoch` is down.
    Detached { epoch: u64 },
    /// Its raid was assembled for the first time.
    Assembled,
    /// The leg on `node` was lost during epoch `epoch`: it misses that epoch's writes from
    /// now on, and must be served and resynced again before it counts. Recorded before the
    /// raid may drop it; refused for the last leg in sync.
    LegStale {
        node: NodeId,
        epoch: u64,
        /// How long the leg's writes had been held when it was recorded stale.
        #[serde(default)]
        held_ms: u64,
    },
    /// The leg on `node` is resynced and in sync again at epoch `epoch`.
    LegUp { node: NodeId, epoch: u64 },
    /// Check the raid: its attach node reads every leg and counts what differs. Refused
    /// unless attached with every leg in sync; a check already under way is kept.
    Check {
        /// Unix seconds, chosen by the proposer.
        at: u64,
    },
    /// The attach node started the check asked for at `epoch`.
    CheckStarted { epoch: u64 },
    /// The check at `epoch` finished with `mismatches` sectors differing between legs.
    CheckDone { epoch: u64, mismatches: u64 },
    /// The check at `epoch` was cut short (a leg left or came back): it starts again.
    CheckCutShort { epoch: u64 },
    /// The replica on `node` of a volume being deleted is gone from its node; the last one
    /// gone removes the volume. Repeating it changes nothing. For a live volume: its dropped
    /// replica on `node` is freed.
    ReplicaRemoved { node: NodeId },
    /// One replica fewer (`ha-update`): the one on `drop` leaves once the attach node has
    /// re-assembled the raid without it. Refused unless attached, with every other replica
    /// in sync.
    Lower {
        drop: NodeId,
        /// A stale leg past the replica timeout: a new one is built elsewhere once it is
        /// gone (see [`Volume::replacing`](super::types::Volume::replacing)).
        #[serde(default)]
        replace: bool,
    },
    /// The attach node re-assembled the raid of `epoch` on metadata slot `slot`: without the
    /// leaving replicas, or with the one being built, after a pause of `pause_ms`.
    Reassembled {
        epoch: u64,
        slot: u8,
        #[serde(default)]
        pause_ms: Option<u64>,
    },
    /// One replica more (`ha-update`): a new leg on `node`'s pool `pool`, built thin-aware
    /// from a leg in sync while the volume runs. Refused unless attached, with every replica
    /// in sync. `at`: unix seconds, chosen by the proposer.
    Raise {
        node: NodeId,
        pool: String,
        at: u64,
        /// The replacement of a leg dropped past the replica timeout: the count stays.
        #[serde(default)]
        replace: bool,
        /// The move of the leg on this node off a drive leaving its pool: the new leg is
        /// built first, then that one dropped; the count stays.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        evacuate: Option<NodeId>,
    },
    /// The build's source finished a copy round; `ready` once what is left is small enough
    /// to copy while the raid is suspended.
    BuildRound {
        rounds: u32,
        allocated_bytes: u64,
        copied_bytes: u64,
        left_bytes: u64,
        rate: u64,
        ready: bool,
    },
    /// A copy round failed; the source tries again.
    BuildError { why: String },
    /// The build's source deleted its snapshots of a finished build: the record goes.
    BuildCleaned,
    /// This volume's own replica timeout in seconds; `None`: the cluster's.
    ReplicaTimeout { seconds: Option<u64> },
    /// Its I/O limits from now on (`volume update --max_iops/--max_bandwidth`); `None` is
    /// none. The node its device is on applies them within a second.
    Limits {
        max_iops: Option<super::types::IopsLimit>,
        max_bandwidth: Option<super::types::BandwidthLimit>,
    },
}

/// A change to one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum SnapshotChange {
    /// The reconciler took it in the kernel.
    Taken,
    /// Start deleting it.
    Delete,
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", content = "reason", rename_all = "snake_case")]
pub enum Response {
    Applied,
    /// The command was committed but changed nothing, for this reason (it is the same on
    /// every member).
    Rejected(String),
}

/// One persisted object that changed: its key, and its new encoding or `None` if removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    pub value: Option<Vec<u8>>,
}

/// The whole desired state. Snapshots of the state machine are this, serialized.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub cluster: Option<ClusterInfo>,
    pub nodes: BTreeMap<NodeId, Node>,
    pub pools: BTreeMap<String, Pool>,
    pub drives: BTreeMap<String, Drive>,
    pub volumes: BTreeMap<String, Volume>,
    pub snapshots: BTreeMap<String, Snapshot>,
    /// namespace → key → value.
    pub kv: BTreeMap<String, BTreeMap<String, String>>,
    pub options: ClusterOptions,
}

/// Checks a KV namespace or key: 1 to `MAX_KV_KEY` bytes of `[A-Za-z0-9._-]`, so it can be
/// part of an object key and a URL path without escaping; never `.` or `..`, which a URL or
/// path would read as a step rather than a name.
pub fn check_kv_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_KV_KEY {
        return Err(format!(
            "{what} must be 1 to {MAX_KV_KEY} bytes, got {}",
            name.len()
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!("{what} {name:?} may hold only A-Z a-z 0-9 . _ -"));
    }
    if name == "." || name == ".." {
        return Err(format!("{what} {name:?} may not be . or .."));
    }
    Ok(())
}

impl ClusterState {
    /// The volumes with a replica on pool `pool` (not counting dropped legs still being
    /// freed, which `volumes_on` does).
    pub fn volumes_placed_on<'a>(&'a self, pool: &'a str) -> impl Iterator<Item = &'a Volume> + 'a {
        self.volumes
            .values()
            .filter(move |v| v.replicas.iter().any(|r| r.pool == pool))
    }

    /// Applies one command. The same state and command give the same result everywhere.
    pub fn apply(&mut self, cmd: &Command) -> (Response, Vec<Change>) {
        match self.try_apply(cmd) {
            Ok(changes) => (Response::Applied, changes),
            Err(reason) => (Response::Rejected(reason), Vec::new()),
        }
    }

    fn try_apply(&mut self, cmd: &Command) -> Result<Vec<Change>, String> {
        let change = match cmd {
            Command::InitCluster { info } => {
                if let Some(c) = &self.cluster {
                    return Err(format!("the cluster is already initialized as {}", c.id));
                }
                self.cluster = Some(info.clone());
                encode("cluster".into(), info)
            }
            Command::SetOptions { options } => {
                options.validate()?;
                self.options = options.clone();
                encode("options".into(), options)
            }
            Command::PutNode { node } => {
                let mut node = node.clone();
                // A node's record is put again when it rejoins or restarts; where it sits
                // changes only through its own commands.
                if let Some(old) = self.nodes.get(&node.id) {
                    node.topology = old.topology.clone();
                }
                let change = encode(format!("node/{}", node.id), &node);
                self.nodes.insert(node.id, node);
                change
            }
            Command::ChangeTopology { node, change } => return self.change_topology(*node, change),
            Command::RemoveNode { id } => {
                self.nodes
                    .remove(id)
                    .ok_or_else(|| format!("node {id} is not a member"))?;
                removed(format!("node/{id}"))
            }
            Command::PutPool { pool } => {
                self.known_node(pool.node)?;
                self.pools.insert(pool.id.clone(), pool.clone());
                encode(format!("pool/{}", pool.id), pool)
            }
            Command::RemovePool { id } => {
                self.pools
                    .remove(id)
                    .ok_or_else(|| format!("pool {id} does not exist"))?;
                removed(format!("pool/{id}"))
            }
            Command::PutDrive { drive } => {
                self.known_node(drive.node)?;
                self.drives.insert(drive.id.clone(), drive.clone());
                encode(format!("drive/{}", drive.id), drive)
            }
            Command::BeginDriveAdd { drive } => return self.begin_drive_add(drive),
            Command::UpdateDrive { id, change } => return self.update_drive(id, change),
            Command::UpdatePool { id, change } => return self.update_pool(id, change),
            Command::RemoveDrive { id } => {
                self.drives
                    .remove(id)
                    .ok_or_else(|| format!("drive {id} does not exist"))?;
                removed(format!("drive/{id}"))
            }
            Command::LeaveDrive { id, replacement } => {
                return self.leave_drive(id, replacement.as_ref())
            }
            Command::PutVolume { volume } => {
                if !(1..=3).contains(&volume.repl) {
                    return Err(format!(
                        "volume {}: repl must be 1 to 3, got {}",
                        volume.id, volume.repl
                    ));
                }
                for r in &volume.replicas {
                    self.known_node(r.node)?;
                }
                self.volumes.insert(volume.id.clone(), volume.clone());
                encode(format!("volume/{}", volume.id), volume)
            }
            Command::RemoveVolume { id } => {
                self.volumes
                    .remove(id)
                    .ok_or_else(|| format!("volume {id} does not exist"))?;
                removed(format!("volume/{id}"))
            }
            Command::PutSnapshot { snapshot } => {
                if !self.volumes.contains_key(&snapshot.volume) {
                    return Err(format!(
                        "snapshot {}: volume {} does not exist",
                        snapshot.id, snapshot.volume
                    ));
                }
                self.snapshots.insert(snapshot.id.clone(), snapshot.clone());
                encode(format!("snapshot/{}", snapshot.id), snapshot)
            }
            Command::RemoveSnapshot { id } => {
                self.snapshots
                    .remove(id)
                    .ok_or_else(|| format!("snapshot {id} does not exist"))?;
                removed(format!("snapshot/{id}"))
            }
            Command::CreateVolume { volume } => return self.create_volume(volume),
            Command::UpdateVolume { id, change } => return self.update_volume(id, change),
            Command::CreateSnapshot { snapshot } => return self.create_snapshot(snapshot),
            Command::UpdateSnapshot { id, change } => {
                let s = self
                    .snapshots
                    .get_mut(id)
                    .ok_or_else(|| format!("snapshot {id} does not exist"))?;
                match change {
                    SnapshotChange::Taken => s.taken = true,
                    SnapshotChange::Delete => s.phase = Phase::Deleting,
                }
                encode(format!("snapshot/{id}"), s)
            }
            Command::KvPut { ns, key, value } => {
                check_kv_name("namespace", ns)?;
                check_kv_name("key", key)?;
                if value.len() > MAX_KV_VALUE {
                    return Err(format!(
                        "value of {ns}/{key} is {} bytes, the limit is {MAX_KV_VALUE}",
                        value.len()
                    ));
                }
                self.kv
                    .entry(ns.clone())
                    .or_default()
                    .insert(key.clone(), value.clone());
                encode(format!("kv/{ns}/{key}"), value)
            }
            Command::KvDelete { ns, key } => {
                let space = self
                    .kv
                    .get_mut(ns)
                    .ok_or_else(|| format!("key {ns}/{key} does not exist"))?;
                space
                    .remove(key)
                    .ok_or_else(|| format!("key {ns}/{key} does not exist"))?;
                if space.is_empty() {
                    self.kv.remove(ns);
                }
                removed(format!("kv/{ns}/{key}"))
            }
        };
        Ok(vec![change])
    }

    /// The next thin id of pool `pool` on `node`: one past the highest any volume, retired
    /// device or snapshot there holds. Deterministic, so every member allocates the same.
    pub(super) fn known_node(&self, id: NodeId) -> Result<(), String> {
        if self.nodes.contains_key(&id) {
            Ok(())
        } else {
            Err(format!("node {id} is not a member"))
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::types::*;

    /// A storage node `n{id}` for tests of the state machine.
    pub(crate) fn node(id: u64) -> Node {
        Node {
            id: NodeId(id),
            name: format!("n{id}"),
            api_addr: "127.0.0.1:1".into(),
            data_addr: "tcp://127.0.0.1:2".into(),
            public_key: "k".into(),
            topology: Default::default(),
            role: Role::Storage,
        }
    }

    fn rebuilt(state: &ClusterState) -> ClusterState {
        let mut again = ClusterState::default();
        for c in state.objects() {
            again.load_object(&c.key, &c.value.unwrap()).unwrap();
        }
        again
    }

    #[test]
    fn commands_change_state_and_report_each_change() {
        let mut s = ClusterState::default();
        let (r, ch) = s.apply(&Command::PutNode { node: node(1) });
        assert_eq!(r, Response::Applied);
        assert_eq!(ch[0].key, "node/0000000000000001");
        let put = Command::KvPut {
            ns: "bench".into(),
            key: "k1".into(),
            value: "v".into(),
        };
        assert_eq!(s.apply(&put).0, Response::Applied);
        assert_eq!(s.kv["bench"]["k1"], "v");
        assert_eq!(rebuilt(&s), s);
        let (r, ch) = s.apply(&Command::KvDelete {
            ns: "bench".into(),
            key: "k1".into(),
        });
        assert_eq!((r, ch[0].value.clone()), (Response::Applied, None));
        assert!(s.kv.is_empty());
    }

    #[test]
    fn kv_names_are_plain_segments() {
        assert_eq!(
            check_kv_name("key", ".."),
            Err("key \"..\" may not be . or ..".into())
        );
        assert_eq!(
            check_kv_name("namespace", "."),
            Err("namespace \".\" may not be . or ..".into())
        );
        for bad in ["a?b", "c#frag", "a/b", "a b"] {
            assert_eq!(
                check_kv_name("key", bad),
                Err(format!("key {bad:?} may hold only A-Z a-z 0-9 . _ -"))
            );
        }
        assert!(check_kv_name("key", "...").is_ok());
        assert!(check_kv_name("key", ".hidden").is_ok());
    }

    #[test]
    fn invalid_commands_are_rejected_without_change() {
        let mut s = ClusterState::default();
        s.apply(&Command::PutNode { node: node(1) });
        let before = s.clone();
        for cmd in [
            Command::RemoveNode { id: NodeId(9) },
            Command::KvPut {
                ns: "a/b".into(),
                key: "k".into(),
                value: String::new(),
            },
            Command::KvPut {
                ns: "a".into(),
                key: "..".into(),
                value: String::new(),
            },
            Command::KvPut {
                ns: "a".into(),
                key: "k".into(),
                value: "x".repeat(MAX_KV_VALUE + 1),
            },
            Command::PutPool {
                pool: Pool {
                    id: "p".into(),
                    node: NodeId(2),
                    class: Class::High,
                    drives: vec![],
                    capacity: 0,
                    used: 0,
                    benchmark: None,
                    chunk_sectors: 128,
                    zero_new_chunks: true,
                    discard_passdown: true,
                    drive_paths: vec![],
                    generation: 0,
                    activated: false,
                    health: Default::default(),
                    reformed: false,
                },
            },
        ] {
            let (r, ch) = s.apply(&cmd);
            assert!(matches!(r, Response::Rejected(_)), "{cmd:?} gave {r:?}");
            assert!(ch.is_empty());
            assert_eq!(s, before);
        }
    }

    #[test]
    fn volumes_need_a_valid_repl_and_known_replica_nodes() {
        let mut s = ClusterState::default();
        s.apply(&Command::PutNode { node: node(1) });
        let mut v = Volume {
            id: "v1".into(),
            name: "db".into(),
            size: 1 << 30,
            fs: Fs::Ext4,
            repl: 4,
            io_priority: Class::High,
            max_iops: None,
            max_bandwidth: None,
            encrypted: false,
            key_ref: None,
            labels: Default::default(),
            replicas: vec![],
            attachment: None,
            epoch: 0,
            assembled: false,
            accepted_losses: vec![],
            last_leg_loss: None,
            snapshot_schedule: None,
            phase: Phase::Live,
            formatted: false,
            wrapped_key: None,
            key_salt: None,
            origin: None,
            read_only: false,
            mount_path: None,
            retired_thin_ids: vec![],
            created: 0,
            placement: None,
            check: None,
            meta_slot: 0,
            dropped: Vec::new(),
            build: None,
            last_build: None,
            replacing: None,
            evacuating: None,
            last_split: None,
            replica_timeout_s: None,
        };
        assert!(matches!(
            s.apply(&Command::PutVolume { volume: v.clone() }).0,
            Response::Rejected(r) if r.contains("repl must be 1 to 3")
        ));
        v.repl = 1;
        v.replicas.push(Replica {
            node: NodeId(1),
            split: None,
            pool: "p".into(),
            thin_id: 1,
            meta_thin_id: None,
            serving_epoch: 0,
            left_behind: false,
            state: ReplicaState::Up,
        });
        assert_eq!(
            s.apply(&Command::PutVolume { volume: v }).0,
            Response::Applied
        );
        let snap = Snapshot {
            id: "s1".into(),
            volume: "v1".into(),
            name: "s".into(),
            time: 1,
            thin_ids: [(NodeId(1), 2)].into(),
            read_only: true,
            taken: false,
            phase: Phase::Live,
        };
        assert_eq!(
            s.apply(&Command::PutSnapshot { snapshot: snap }).0,
            Response::Applied
        );
        assert_eq!(rebuilt(&s), s);
    }
}
