//! The replica timeout: a leg stale for longer than the cluster's `replica_timeout_s` is
//! replaced. Its volume's attach node drops it (a lowering recorded with `replace`), then
//! places a new leg away from the lost node's fault domain and has it built, as a raise.
//!
//! A node back before the timeout keeps its leg, which resyncs from its bitmap: a reboot is
//! no reason to copy a whole leg. The clock starts when the attach node first sees the leg
//! stale, so a restart of the attach node only ever makes it wait longer, never less.
//!
//! A leg on a pool with a failed drive (one that fails reads) is dropped at once, stale or
//! not: a failed drive does not come back by waiting. A leg on a pool whose drive is
//! leaving it (`drive remove`, `drive replace`) is moved make-before-break: a new leg is
//! built elsewhere while it stays a member, and it is dropped once the new one is up. Only
//! when no other node can take one more leg is it dropped first, then replaced (an
//! in-place `drive replace` on a cluster with no spare node).

use crate::cluster::{Cluster, Op};
use crate::plan::placement;
use crate::store::state::{ClusterState, Command, VolumeChange};
use crate::store::types::{AttachState, DriveState, NodeId, ReplicaState, Volume};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What the attach node does next for one volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Drop the stale leg on this node, to be replaced.
    Drop(NodeId),
    /// Place and build the replacement of the leg dropped from this node.
    Replace(NodeId),
    /// Build a new leg elsewhere for the one on this node's leaving drive, keeping it.
    Evacuate(NodeId),
    /// Drop the evacuated leg on this node: its successor is up.
    DropEvacuated(NodeId),
}

/// Since when this node has seen each (volume, node) leg stale.
#[derive(Default)]
pub struct StaleClock {
    since: Mutex<BTreeMap<(String, NodeId), Instant>>,
}

impl StaleClock {
    /// What is due for the volumes attached on `me`, now, with the legs' clocks updated.
    pub fn due(&self, st: &ClusterState, me: NodeId, now: Instant) -> Vec<(String, Next)> {
        let mut since = self.since.lock().unwrap_or_else(|p| p.into_inner());
        let stale = |v: &Volume, node: NodeId| {
            v.replicas
                .iter()
                .any(|r| r.node == node && matches!(r.state, ReplicaState::Stale { .. }))
        };
        // A leg back in sync (or gone) starts from nothing at its next loss.
        since.retain(|(id, node), _| st.volumes.get(id).is_some_and(|v| stale(v, *node)));
        let pools = PoolsOut::of(st);
        let mut out = Vec::new();
        for v in st.volumes.values().filter(|v| attached_on(v, me)) {
            for r in v.replicas.iter().filter(|r| stale(v, r.node)) {
                since.entry((v.id.clone(), r.node)).or_insert(now);
            }
            let timeout = v
                .replica_timeout_s
                .map_or(st.options.replica_timeout(), Duration::from_secs);
            if let Some(next) = next_for(v, &since, now, timeout, &pools) {
                out.push((v.id.clone(), next));
            }
        }
        out
    }
}

/// The pools out of service: with a member drive recorded failed, or with one leaving
/// (`drive remove`/`replace`) that still reads and so can be copied from.
#[derive(Debug, Default)]
struct PoolsOut {
    failed: BTreeSet<String>,
    leaving: BTreeSet<String>,
}

impl PoolsOut {
    fn of(st: &ClusterState) -> Self {
        let mut out = Self::default();
        for d in st.drives.values().filter(|d| !d.pool.is_empty()) {
            if d.state == DriveState::Failed {
                out.failed.insert(d.pool.clone());
            } else if d.leaving.is_some() {
                out.leaving.insert(d.pool.clone());
            }
        }
        // A pool with one member failed and another leaving cannot be read whole.
        out.leaving.retain(|p| !out.failed.contains(p));
        out
    }
}

fn attached_on(v: &Volume, me: NodeId) -> bool {
    v.repl > 1
        && v.attachment
            .as_ref()
            .is_some_and(|a| a.node == me && a.state == AttachState::Attached)
}

/// The step due for `v`: nothing while a change is under way; the replacement of a dropped
/// leg, or the drop of an evacuated one; the drop of a leg on a `failed` pool, or stale
/// past `timeout`; with every leg in sync, the move of one off a leaving drive.
fn next_for(
    v: &Volume,
    since: &BTreeMap<(String, NodeId), Instant>,
    now: Instant,
    timeout: Duration,
    pools: &PoolsOut,
) -> Option<Next> {
    let busy = v.build.is_some() || v.replicas.iter().any(|r| r.state == ReplicaState::Leaving);
    if busy {
        return None;
    }
    if let Some(lost) = v.replacing {
        return Some(Next::Replace(lost));
    }
    if let Some(from) = v.evacuating {
        return Some(Next::DropEvacuated(from));
    }
    // Only with every other leg in sync: a drop re-assembles the raid over them. A leg out
    // of sync on a leaving drive has nothing to be copied from: it goes at once too.
    let bad: Vec<(NodeId, bool)> = v
        .replicas
        .iter()
        .filter(|r| pools.failed.contains(&r.pool) || r.state != ReplicaState::Up)
        .map(|r| {
            let out = pools.failed.contains(&r.pool) || pools.leaving.contains(&r.pool);
            (r.node, out)
        })
        .collect();
    if bad.is_empty() {
        let on_leaving = v.replicas.iter().find(|r| pools.leaving.contains(&r.pool));
        return on_leaving.map(|r| Next::Evacuate(r.node));
    }
    let [(node, on_failed)] = bad[..] else {
        return None;
    };
    if on_failed {
        return Some(Next::Drop(node));
    }
    let at = since.get(&(v.id.clone(), node))?;
    (now.duration_since(*at) >= timeout).then_some(Next::Drop(node))
}

/// Carries out what is due, recording each step through Raft; a refusal or a failed
/// placement is logged and tried again after the next pass.
pub async fn act(
    cluster: &Cluster,
    due: Vec<(String, Next)>,
    view: impl Fn(&ClusterState, &Volume, NodeId) -> Result<(NodeId, String), String>,
) {
    for (id, next) in due {
        let change = match next {
            Next::Drop(node) => {
                tracing::warn!(volume = %id, %node, "a leg stayed stale past the replica timeout: dropping it, to build a new one elsewhere");
                VolumeChange::Lower {
                    drop: node,
                    replace: true,
                }
            }
            Next::Replace(lost) => {
                let placed = cluster.state().read(|st| {
                    let v = st.volumes.get(&id).ok_or("gone")?;
                    view(st, v, lost)
                });
                match placed {
                    Ok((node, pool)) => {
                        tracing::info!(volume = %id, %node, %lost, "building a new leg to replace the one lost");
                        raise(node, pool, true, None)
                    }
                    Err(why) => {
                        tracing::warn!(volume = %id, %lost, error = %why, "no node can take the replacement leg yet");
                        continue;
                    }
                }
            }
            Next::Evacuate(from) => {
                let placed = cluster.state().read(|st| {
                    let v = st.volumes.get(&id).ok_or("gone")?;
                    let (node, pool) = view(st, v, from)?;
                    // One node holds one leg of a volume: its other pool is no way out.
                    if v.replicas.iter().any(|r| r.node == node) {
                        return Err(format!("only node {node}, which holds a leg already"));
                    }
                    Ok((node, pool))
                });
                match placed {
                    Ok((node, pool)) => {
                        tracing::info!(volume = %id, %node, %from, "its drive is leaving: building a new leg before the old one goes");
                        raise(node, pool, false, Some(from))
                    }
                    Err(why) => {
                        tracing::warn!(volume = %id, %from, error = %why, "its drive is leaving and no other node can take one more leg: dropping the leg first, to build it anew");
                        VolumeChange::Lower {
                            drop: from,
                            replace: true,
                        }
                    }
                }
            }
            Next::DropEvacuated(from) => {
                tracing::info!(volume = %id, %from, "the new leg is up: dropping the one on the leaving drive");
                VolumeChange::Lower {
                    drop: from,
                    replace: false,
                }
            }
        };
        let cmd = Command::UpdateVolume {
            id: id.clone(),
            change,
        };
        if let Err(e) = cluster.submit_and_apply(Op::Command(cmd)).await {
            tracing::warn!(volume = %id, error = %e, "could not record a replica replacement step");
        }
    }
}

fn raise(node: NodeId, pool: String, replace: bool, evacuate: Option<NodeId>) -> VolumeChange {
    VolumeChange::Raise {
        node,
        pool,
        at: crate::cluster::rpc::now_ms() / 1000,
        replace,
        evacuate,
    }
}

/// Where the replacement of the leg lost on `lost` goes: away from its fault domain.
pub fn place(
    view: &placement::ClusterView<'_>,
    v: &Volume,
    lost: NodeId,
) -> Result<(NodeId, String), String> {
    placement::place_replacement(view, v, Some(lost), None, false).map(|(n, p, _)| (n, p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::attach::tests::volume;
    use crate::store::types::{Attachment, DriveState};

    fn state_with(v: Volume) -> ClusterState {
        let mut st = ClusterState::default();
        st.volumes.insert(v.id.clone(), v);
        st
    }

    fn attached_two() -> Volume {
        let mut v = volume(2);
        v.attachment = Some(Attachment {
            node: NodeId(1),
            epoch: 2,
            by_mount: false,
            state: AttachState::Attached,
        });
        v
    }

    #[test]
    fn a_stale_leg_is_dropped_only_past_the_timeout_then_replaced() {
        let clock = StaleClock::default();
        let t0 = Instant::now();
        let mut v = attached_two();
        v.replicas[1].state = ReplicaState::Stale { missed_epoch: 2 };
        let mut st = state_with(v.clone());
        st.options.replica_timeout_s = Some(30);
        assert!(clock.due(&st, NodeId(1), t0).is_empty());
        assert!(clock
            .due(&st, NodeId(1), t0 + Duration::from_secs(29))
            .is_empty());
        // Only the attach node acts.
        assert!(clock
            .due(&st, NodeId(2), t0 + Duration::from_secs(60))
            .is_empty());
        assert_eq!(
            clock.due(&st, NodeId(1), t0 + Duration::from_secs(30)),
            [("v1".to_owned(), Next::Drop(NodeId(2)))]
        );
        // Back in sync before it: the clock forgets it, and starts again at the next loss.
        st.volumes.get_mut("v1").unwrap().replicas[1].state = ReplicaState::Up;
        assert!(clock
            .due(&st, NodeId(1), t0 + Duration::from_secs(40))
            .is_empty());
        st.volumes.get_mut("v1").unwrap().replicas[1].state =
            ReplicaState::Stale { missed_epoch: 3 };
        assert!(clock
            .due(&st, NodeId(1), t0 + Duration::from_secs(41))
            .is_empty());
        assert!(clock
            .due(&st, NodeId(1), t0 + Duration::from_secs(70))
            .is_empty());
        assert_eq!(
            clock
                .due(&st, NodeId(1), t0 + Duration::from_secs(71))
                .len(),
            1
        );
        // Dropped: nothing while it leaves, then its replacement.
        let v = st.volumes.get_mut("v1").unwrap();
        v.replicas[1].state = ReplicaState::Leaving;
        assert!(clock
            .due(&st, NodeId(1), t0 + Duration::from_secs(80))
            .is_empty());
        let v = st.volumes.get_mut("v1").unwrap();
        v.replicas.truncate(1);
        v.replacing = Some(NodeId(2));
        assert_eq!(
            clock.due(&st, NodeId(1), t0 + Duration::from_secs(81)),
            [("v1".to_owned(), Next::Replace(NodeId(2)))]
        );
    }

    #[test]
    fn a_leg_on_a_failed_drive_is_dropped_at_once() {
        let clock = StaleClock::default();
        let t0 = Instant::now();
        let v = attached_two();
        let pool = v.replicas[1].pool.clone();
        let mut st = state_with(v);
        let mut drive = crate::store::types::Drive::adding(
            "d1".into(),
            NodeId(2),
            "/dev/vdb".into(),
            None,
            1 << 30,
            false,
        );
        drive.pool = pool;
        drive.state = DriveState::Online;
        st.drives.insert(drive.id.clone(), drive.clone());
        assert!(clock.due(&st, NodeId(1), t0).is_empty());
        drive.state = DriveState::Failed;
        st.drives.insert(drive.id.clone(), drive);
        // Up or stale, at once, whatever the timeout.
        assert_eq!(
            clock.due(&st, NodeId(1), t0),
            [("v1".to_owned(), Next::Drop(NodeId(2)))]
        );
        st.volumes.get_mut("v1").unwrap().replicas[1].state =
            ReplicaState::Stale { missed_epoch: 2 };
        assert_eq!(clock.due(&st, NodeId(1), t0).len(), 1);
        // Not while another leg is out too: the drop re-assembles over the legs in sync.
        st.volumes.get_mut("v1").unwrap().replicas[0].state =
            ReplicaState::Stale { missed_epoch: 2 };
        assert!(clock.due(&st, NodeId(1), t0).is_empty());
        // A drive leaving its pool (`drive remove`): its leg in sync is moved
        // make-before-break, a new leg built first.
        for r in &mut st.volumes.get_mut("v1").unwrap().replicas {
            r.state = ReplicaState::Up;
        }
        let d = st.drives.get_mut("d1").unwrap();
        (d.state, d.leaving) = (
            DriveState::Online,
            Some(crate::store::types::Leaving::Remove),
        );
        assert_eq!(
            clock.due(&st, NodeId(1), t0),
            [("v1".to_owned(), Next::Evacuate(NodeId(2)))]
        );
        // Out of sync, it has nothing to copy from: dropped at once.
        st.volumes.get_mut("v1").unwrap().replicas[1].state =
            ReplicaState::Stale { missed_epoch: 2 };
        assert_eq!(
            clock.due(&st, NodeId(1), t0),
            [("v1".to_owned(), Next::Drop(NodeId(2)))]
        );
        // While the new leg builds nothing is due; once it is up, the old one is dropped.
        let v = st.volumes.get_mut("v1").unwrap();
        v.replicas[1].state = ReplicaState::Up;
        v.evacuating = Some(NodeId(2));
        v.build = Some(crate::store::types::Build {
            source: NodeId(1),
            target: NodeId(3),
            epoch: 2,
            snap_ids: [8, 9],
            phase: crate::store::types::BuildPhase::Copying,
            rounds: 0,
            allocated_bytes: 0,
            copied_bytes: 0,
            left_bytes: 0,
            rate: 0,
            started: 0,
            pause_ms: None,
            error: None,
        });
        assert!(clock.due(&st, NodeId(1), t0).is_empty());
        st.volumes.get_mut("v1").unwrap().build = None;
        assert_eq!(
            clock.due(&st, NodeId(1), t0),
            [("v1".to_owned(), Next::DropEvacuated(NodeId(2)))]
        );
    }

    #[test]
    fn a_volume_s_own_timeout_wins_over_the_cluster_s() {
        let clock = StaleClock::default();
        let t0 = Instant::now();
        let mut v = attached_two();
        v.replicas[1].state = ReplicaState::Stale { missed_epoch: 2 };
        v.replica_timeout_s = Some(3600);
        let mut st = state_with(v);
        st.options.replica_timeout_s = Some(30);
        assert!(clock.due(&st, NodeId(1), t0).is_empty());
        assert!(clock
            .due(&st, NodeId(1), t0 + Duration::from_secs(3599))
            .is_empty());
        assert_eq!(
            clock
                .due(&st, NodeId(1), t0 + Duration::from_secs(3600))
                .len(),
            1
        );
    }

    #[test]
    fn the_default_timeout_is_ten_minutes() {
        let clock = StaleClock::default();
        let t0 = Instant::now();
        let mut v = attached_two();
        v.replicas[1].state = ReplicaState::Stale { missed_epoch: 2 };
        let st = state_with(v);
        assert!(clock.due(&st, NodeId(1), t0).is_empty());
        assert!(clock
            .due(&st, NodeId(1), t0 + Duration::from_secs(599))
            .is_empty());
        assert_eq!(
            clock
                .due(&st, NodeId(1), t0 + Duration::from_secs(600))
                .len(),
            1
        );
    }
}
