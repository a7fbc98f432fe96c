//! The replicated desired state and the commands that change it. `apply` is pure and
//! deterministic: every member applies the same commands in the same order and ends in the
//! same state, and each change is reported as an object key and its new value so the state
//! machine can persist exactly what changed.

use super::types::{ClusterInfo, Drive, Node, NodeId, Origin, Phase, Pool, Snapshot, Volume};
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
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("stored object {key:?} cannot be decoded: {source}")]
    Decode {
        key: String,
        source: serde_json::Error,
    },
    #[error("stored object key {0:?} names no kind of object")]
    UnknownKey(String),
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

pub(super) fn encode<T: Serialize>(key: String, value: &T) -> Change {
    // Serializing these plain structs to JSON cannot fail (string keys, no custom errors).
    let value = serde_json::to_vec(value).unwrap_or_default();
    Change {
        key,
        value: Some(value),
    }
}

pub(super) fn removed(key: String) -> Change {
    Change { key, value: None }
}

impl ClusterState {
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
            Command::PutNode { node } => {
                self.nodes.insert(node.id, node.clone());
                encode(format!("node/{}", node.id), node)
            }
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
    pub fn next_thin_id(&self, node: NodeId, pool: &str) -> u32 {
        let mut top = 0;
        for v in self.volumes.values() {
            for r in v
                .replicas
                .iter()
                .filter(|r| r.node == node && r.pool == pool)
            {
                top = top.max(r.thin_id);
                top = v.retired_thin_ids.iter().fold(top, |t, x| t.max(*x));
                for s in self.snapshots.values().filter(|s| s.volume == v.id) {
                    top = top.max(s.thin_ids.get(&node).copied().unwrap_or(0));
                }
            }
        }
        top + 1
    }

    /// The live volume called `name`, if any.
    pub fn volume_named(&self, name: &str) -> Option<&Volume> {
        self.volumes
            .values()
            .find(|v| v.name == name && v.phase == Phase::Live)
    }

    fn create_volume(&mut self, volume: &Volume) -> Result<Vec<Change>, String> {
        if !(1..=3).contains(&volume.repl) {
            return Err(format!("repl must be 1 to 3, got {}", volume.repl));
        }
        if self.volumes.contains_key(&volume.id) {
            return Err(format!("volume id {} exists already", volume.id));
        }
        if self.volume_named(&volume.name).is_some() {
            return Err(format!(
                "name: a volume called {:?} exists already",
                volume.name
            ));
        }
        let mut v = volume.clone();
        for r in &mut v.replicas {
            self.known_node(r.node)?;
            match self.pools.get(&r.pool) {
                Some(p) if p.node == r.node => {}
                _ => return Err(format!("pool {} is not on node {}", r.pool, r.node)),
            }
            r.thin_id = self.next_thin_id(r.node, &r.pool);
        }
        self.volumes.insert(v.id.clone(), v.clone());
        Ok(vec![encode(format!("volume/{}", v.id), &v)])
    }

    fn update_volume(&mut self, id: &str, change: &VolumeChange) -> Result<Vec<Change>, String> {
        let current = self
            .volumes
            .get(id)
            .ok_or_else(|| format!("volume {id} does not exist"))?;
        let mut v = current.clone();
        let live = v.phase == Phase::Live;
        match change {
            VolumeChange::Resize { size } if live => {
                if *size < v.size {
                    return Err(format!(
                        "size: {size} bytes is smaller than the volume's {} bytes; shrinking is not supported",
                        v.size
                    ));
                }
                v.size = *size;
            }
            VolumeChange::Mount { node, path } if live => {
                self.known_node(*node)?;
                v.mount_path = path.clone();
                v.attachment = path.as_ref().map(|_| super::types::Attachment {
                    node: *node,
                    epoch: v.attachment.as_ref().map_or(1, |a| a.epoch + 1),
                });
            }
            VolumeChange::Restore { snapshot } if live => {
                let snap = self
                    .snapshots
                    .get(snapshot)
                    .filter(|s| s.volume == id && s.taken && s.phase == Phase::Live)
                    .ok_or_else(|| format!("snapshot {snapshot} of volume {id} is not ready"))?;
                let mut origin = None;
                for i in 0..v.replicas.len() {
                    let (node, pool) = (v.replicas[i].node, v.replicas[i].pool.clone());
                    let from = *snap
                        .thin_ids
                        .get(&node)
                        .ok_or_else(|| format!("snapshot {snapshot} has no copy on node {node}"))?;
                    let fresh = self
                        .next_thin_id(node, &pool)
                        .max(v.replicas[i].thin_id + 1);
                    v.retired_thin_ids.push(v.replicas[i].thin_id);
                    v.replicas[i].thin_id = fresh;
                    origin = Some(Origin {
                        thin_id: from,
                        volume: None,
                    });
                }
                v.origin = origin;
            }
            VolumeChange::Delete => {
                if v.mount_path.is_some() {
                    return Err(format!("volume {id} is mounted; unmount it first"));
                }
                v.phase = Phase::Deleting;
            }
            VolumeChange::Formatted => v.formatted = true,
            VolumeChange::OriginCopied => v.origin = None,
            VolumeChange::RetiredDeleted => v.retired_thin_ids.clear(),
            _ => return Err(format!("volume {id} is being deleted")),
        }
        let change = encode(format!("volume/{id}"), &v);
        self.volumes.insert(id.to_owned(), v);
        Ok(vec![change])
    }

    fn create_snapshot(&mut self, snapshot: &Snapshot) -> Result<Vec<Change>, String> {
        let v = self
            .volumes
            .get(&snapshot.volume)
            .filter(|v| v.phase == Phase::Live)
            .ok_or_else(|| format!("volume {} does not exist", snapshot.volume))?;
        if self.snapshots.contains_key(&snapshot.id) {
            return Err(format!("snapshot id {} exists already", snapshot.id));
        }
        if self.snapshots.values().any(|s| {
            s.volume == snapshot.volume && s.name == snapshot.name && s.phase == Phase::Live
        }) {
            return Err(format!(
                "name: volume {} has a snapshot called {:?} already",
                v.name, snapshot.name
            ));
        }
        let mut s = snapshot.clone();
        s.thin_ids = v
            .replicas
            .iter()
            .map(|r| (r.node, self.next_thin_id(r.node, &r.pool)))
            .collect();
        s.taken = false;
        self.snapshots.insert(s.id.clone(), s.clone());
        Ok(vec![encode(format!("snapshot/{}", s.id), &s)])
    }

    pub(super) fn known_node(&self, id: NodeId) -> Result<(), String> {
        if self.nodes.contains_key(&id) {
            Ok(())
        } else {
            Err(format!("node {id} is not a member"))
        }
    }

    /// Every object as (key, encoding): what a fresh store must hold for this state.
    pub fn objects(&self) -> Vec<Change> {
        let mut out = Vec::new();
        if let Some(c) = &self.cluster {
            out.push(encode("cluster".into(), c));
        }
        out.extend(
            self.nodes
                .values()
                .map(|n| encode(format!("node/{}", n.id), n)),
        );
        out.extend(
            self.pools
                .values()
                .map(|p| encode(format!("pool/{}", p.id), p)),
        );
        out.extend(
            self.drives
                .values()
                .map(|d| encode(format!("drive/{}", d.id), d)),
        );
        out.extend(
            self.volumes
                .values()
                .map(|v| encode(format!("volume/{}", v.id), v)),
        );
        out.extend(
            self.snapshots
                .values()
                .map(|s| encode(format!("snapshot/{}", s.id), s)),
        );
        for (ns, space) in &self.kv {
            out.extend(space.iter().map(|(k, v)| encode(format!("kv/{ns}/{k}"), v)));
        }
        out
    }

    /// Adds one stored object back into the state (the inverse of `objects`).
    pub fn load_object(&mut self, key: &str, value: &[u8]) -> Result<(), StateError> {
        fn de<T: for<'a> Deserialize<'a>>(key: &str, value: &[u8]) -> Result<T, StateError> {
            serde_json::from_slice(value).map_err(|source| StateError::Decode {
                key: key.to_owned(),
                source,
            })
        }
        let (kind, rest) = key.split_once('/').unwrap_or((key, ""));
        match kind {
            "cluster" => self.cluster = Some(de(key, value)?),
            "node" => {
                let n: Node = de(key, value)?;
                self.nodes.insert(n.id, n);
            }
            "pool" => {
                let p: Pool = de(key, value)?;
                self.pools.insert(p.id.clone(), p);
            }
            "drive" => {
                let d: Drive = de(key, value)?;
                self.drives.insert(d.id.clone(), d);
            }
            "volume" => {
                let v: Volume = de(key, value)?;
                self.volumes.insert(v.id.clone(), v);
            }
            "snapshot" => {
                let s: Snapshot = de(key, value)?;
                self.snapshots.insert(s.id.clone(), s);
            }
            "kv" => {
                let (ns, k) = rest
                    .split_once('/')
                    .ok_or_else(|| StateError::UnknownKey(key.to_owned()))?;
                let v: String = de(key, value)?;
                self.kv
                    .entry(ns.to_owned())
                    .or_default()
                    .insert(k.to_owned(), v);
            }
            _ => return Err(StateError::UnknownKey(key.to_owned())),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::types::*;

    fn node(id: u64) -> Node {
        Node {
            id: NodeId(id),
            name: format!("n{id}"),
            api_addr: "127.0.0.1:1".into(),
            data_addr: "tcp://127.0.0.1:2".into(),
            public_key: "k".into(),
            labels: Default::default(),
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
                    drive_paths: vec![],
                    generation: 0,
                    activated: false,
                    health: Default::default(),
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
            encrypted: false,
            key_ref: None,
            labels: Default::default(),
            replicas: vec![],
            attachment: None,
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
        };
        assert!(matches!(
            s.apply(&Command::PutVolume { volume: v.clone() }).0,
            Response::Rejected(r) if r.contains("repl must be 1 to 3")
        ));
        v.repl = 1;
        v.replicas.push(Replica {
            node: NodeId(1),
            pool: "p".into(),
            thin_id: 1,
            state: ReplicaState::Clean,
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
