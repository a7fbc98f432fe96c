//! Volume and snapshot commands of the state machine: thin ids allocated per pool, names
//! unique, one change at a time applied to the current record.

use super::state::{encode, Change, ClusterState, VolumeChange};
use super::types::{NodeId, Origin, Phase, Snapshot, Volume};

impl ClusterState {
    /// The next free thin id of pool `pool` on `node`: above every id a volume, retired id
    /// or snapshot there holds.
    pub fn next_thin_id(&self, node: NodeId, pool: &str) -> u32 {
        let mut top = 0;
        for v in self.volumes.values() {
            if let Some(b) = v.build.as_ref().filter(|b| b.source == node) {
                top = b.snap_ids.iter().fold(top, |t, x| t.max(*x));
            }
            for r in v
                .replicas
                .iter()
                .chain(&v.dropped)
                .filter(|r| r.node == node && r.pool == pool)
            {
                top = top.max(r.thin_id).max(r.meta_thin_id.unwrap_or(0));
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

    pub(super) fn create_volume(&mut self, volume: &Volume) -> Result<Vec<Change>, String> {
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
        // Best effort may place fewer replicas than asked, never more, and never two on one
        // node: a node's loss must cost at most one leg.
        let n = volume.replicas.len();
        if n == 0 || n > usize::from(volume.repl) {
            return Err(format!(
                "volume {} has {n} replicas for repl {}",
                volume.id, volume.repl
            ));
        }
        let nodes: std::collections::BTreeSet<NodeId> =
            volume.replicas.iter().map(|r| r.node).collect();
        if nodes.len() != n {
            return Err(format!("volume {} has two replicas on one node", volume.id));
        }
        let mut v = volume.clone();
        for r in &mut v.replicas {
            self.known_node(r.node)?;
            match self.pools.get(&r.pool) {
                Some(p) if p.node == r.node => {}
                _ => return Err(format!("pool {} is not on node {}", r.pool, r.node)),
            }
            r.thin_id = self.next_thin_id(r.node, &r.pool);
            // A replicated volume's legs carry their raid metadata in a thin of their own.
            r.meta_thin_id = (v.repl > 1).then_some(r.thin_id + 1);
        }
        self.volumes.insert(v.id.clone(), v.clone());
        Ok(vec![encode(format!("volume/{}", v.id), &v)])
    }

    pub(super) fn update_volume(
        &mut self,
        id: &str,
        change: &VolumeChange,
    ) -> Result<Vec<Change>, String> {
        if let VolumeChange::ReplicaRemoved { node } = change {
            return Ok(self.replica_removed(id, *node));
        }
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
            VolumeChange::Attach { node, .. } if live => {
                self.known_node(*node)?;
                super::attach::apply(&mut v, change)?;
            }
            VolumeChange::Mount { node, .. } if live && v.repl > 1 => {
                self.known_node(*node)?;
                super::attach::apply(&mut v, change)?;
            }
            VolumeChange::Detach { .. }
            | VolumeChange::Serving { .. }
            | VolumeChange::Attached { .. }
            | VolumeChange::Detached { .. }
            | VolumeChange::Assembled
            | VolumeChange::LegStale { .. }
            | VolumeChange::LegUp { .. } => {
                super::attach::apply(&mut v, change)?;
            }
            VolumeChange::Check { .. }
            | VolumeChange::CheckStarted { .. }
            | VolumeChange::CheckDone { .. }
            | VolumeChange::CheckCutShort { .. } => {
                super::check::apply(&mut v, change)?;
                if let Some(m) = v.check.as_ref().and_then(|c| c.mismatches) {
                    super::ha::checked(&mut v, m);
                }
            }
            VolumeChange::Lower { drop, .. } if live => {
                self.known_node(*drop)?;
                super::ha::apply(&mut v, change)?;
            }
            VolumeChange::Raise {
                node,
                pool,
                at,
                replace,
                evacuate,
            } if live => {
                if *replace != v.replacing.is_some() {
                    return Err(format!(
                        "volume {}: {}",
                        v.name,
                        if *replace {
                            "no leg of it is waiting to be replaced"
                        } else {
                            "a lost leg is being replaced; wait for it to finish"
                        }
                    ));
                }
                self.known_node(*node)?;
                if self.pools.get(pool).is_none_or(|p| p.node != *node) {
                    return Err(format!("pool: node {node} has no pool {pool}"));
                }
                let source = super::ha::build_source(&v)
                    .map(|r| (r.node, r.pool.clone()))
                    .ok_or_else(|| format!("volume {} has no replica in sync to copy", v.name))?;
                let leg = super::ha::NewLeg {
                    node: *node,
                    pool: pool.clone(),
                    thin_id: self.next_thin_id(*node, pool),
                    at: *at,
                };
                let snap = self.next_thin_id(source.0, &source.1);
                super::ha::raise(&mut v, leg, [snap, snap + 1], *evacuate)?;
            }
            VolumeChange::Reassembled { .. }
            | VolumeChange::BuildRound { .. }
            | VolumeChange::BuildError { .. }
            | VolumeChange::BuildCleaned => {
                super::ha::apply(&mut v, change)?;
            }
            VolumeChange::Limits {
                max_iops,
                max_bandwidth,
            } if live => {
                v.max_iops = *max_iops;
                v.max_bandwidth = *max_bandwidth;
            }
            VolumeChange::Mount { node, path } if live => {
                self.known_node(*node)?;
                v.mount_path = path.clone();
                if path.is_some() {
                    v.epoch += 1;
                }
                v.attachment = path.as_ref().map(|_| super::types::Attachment {
                    node: *node,
                    epoch: v.epoch,
                    by_mount: true,
                    state: super::types::AttachState::Attached,
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
                if let Some(a) = v.attachment.as_ref().filter(|_| v.repl > 1) {
                    return Err(format!(
                        "volume {} is attached on node {}; detach it first",
                        v.name, a.node
                    ));
                }
                // Dropped replicas not freed yet go with the others.
                let dropped = std::mem::take(&mut v.dropped);
                v.replicas.extend(dropped);
                v.phase = Phase::Deleting;
            }
            VolumeChange::ReplicaTimeout { seconds } if live => {
                if let Some(s) = seconds {
                    super::types::check_replica_timeout(*s)?;
                }
                v.replica_timeout_s = *seconds;
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

    /// A deleted volume's replica on `node` is torn down, or a live volume's dropped one
    /// (`ha-update`) is freed; see [`VolumeChange::ReplicaRemoved`].
    fn replica_removed(&mut self, id: &str, node: NodeId) -> Vec<Change> {
        let Some(v) = self.volumes.get_mut(id) else {
            return Vec::new();
        };
        if v.phase == Phase::Live {
            if !v.dropped.iter().any(|r| r.node == node) {
                return Vec::new();
            }
            v.dropped.retain(|r| r.node != node);
            let v = v.clone();
            return vec![encode(format!("volume/{id}"), &v)];
        }
        v.replicas.retain(|r| r.node != node);
        if v.replicas.is_empty() {
            self.volumes.remove(id);
            return vec![super::state::removed(format!("volume/{id}"))];
        }
        let v = v.clone();
        vec![encode(format!("volume/{id}"), &v)]
    }

    pub(super) fn create_snapshot(&mut self, snapshot: &Snapshot) -> Result<Vec<Change>, String> {
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
}

#[cfg(test)]
mod tests {
    use crate::store::state::tests::node;
    use crate::store::state::{ClusterState, Command, Response};
    use crate::store::types::*;

    fn volume(id: &str, repl: u8, on: &[(u64, &str)]) -> Volume {
        serde_json::from_value(serde_json::json!({
            "id": id, "name": id, "size": 1 << 30, "fs": "raw", "repl": repl,
            "io_priority": "high", "max_iops": null, "encrypted": false, "key_ref": null,
            "labels": {}, "attachment": null, "snapshot_schedule": null, "phase": "live",
            "formatted": false,
            "replicas": on.iter().map(|(n, p)| serde_json::json!({
                "node": NodeId(*n).to_string(), "pool": p, "thin_id": 0, "state": "clean"
            })).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    #[test]
    fn replicated_volumes_get_a_metadata_thin_per_leg_on_distinct_nodes() {
        let mut s = ClusterState::default();
        for n in 1..=2 {
            s.apply(&Command::PutNode { node: node(n) });
            s.apply(&Command::PutPool {
                pool: Pool::for_tests(&format!("p{n}"), NodeId(n), Class::High),
            });
        }
        let create = |v| Command::CreateVolume { volume: v };
        assert_eq!(
            s.apply(&create(volume("v1", 2, &[(1, "p1"), (2, "p2")]))).0,
            Response::Applied
        );
        let v1 = &s.volumes["v1"];
        // Stored "clean" reads as up; each leg has data thin 1 and metadata thin 2.
        for r in &v1.replicas {
            assert_eq!(r.state, ReplicaState::Up);
            assert_eq!((r.thin_id, r.meta_thin_id), (1, Some(2)));
        }
        // The next volume's thin ids step over the metadata thins; repl 1 has none.
        s.apply(&create(volume("v2", 1, &[(1, "p1")])));
        assert_eq!(
            (
                s.volumes["v2"].replicas[0].thin_id,
                s.volumes["v2"].replicas[0].meta_thin_id
            ),
            (3, None)
        );
        for (bad, why) in [
            (
                volume("v3", 2, &[(1, "p1"), (1, "p1")]),
                "two replicas on one node",
            ),
            (
                volume("v4", 1, &[(1, "p1"), (2, "p2")]),
                "2 replicas for repl 1",
            ),
            (volume("v5", 2, &[]), "0 replicas for repl 2"),
        ] {
            let (r, _) = s.apply(&create(bad));
            assert!(
                matches!(&r, Response::Rejected(m) if m.contains(why)),
                "{r:?}"
            );
        }
        // Best effort: fewer replicas than asked are taken.
        assert_eq!(
            s.apply(&create(volume("v6", 3, &[(1, "p1"), (2, "p2")]))).0,
            Response::Applied
        );
        let stale = serde_json::to_string(&ReplicaState::Stale { missed_epoch: 4 }).unwrap();
        assert_eq!(stale, r#"{"stale":{"missed_epoch":4}}"#);
    }
}
