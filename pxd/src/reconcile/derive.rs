//! The bridge between the cluster store and the reconciler: what one node should have, read
//! from the replicated state, and the store commands that record what a reconcile pass did.
//! Both directions are pure.

use crate::pool::label::LabelSpec;
use crate::reconcile::desired::VolumeState;
use crate::reconcile::desired::{AttachLeg, AttachedVolume, BuildingLeg, CheckPhase, LegState};
use crate::reconcile::desired::{JoinPhase, JoiningDrive};
use crate::reconcile::desired::{NodeState, OriginState, PoolState, Retire, SnapshotState};
use crate::store::pools::{DriveChange, PoolChange};
use crate::store::state::{ClusterState, Command, SnapshotChange, VolumeChange};
use crate::store::types::AttachState;
use crate::store::types::DriveState;
use crate::store::types::{NodeId, Volume};
use std::path::PathBuf;

/// The pools and volume replicas the store places on `node`.
pub fn node_state(cluster: &ClusterState, node: NodeId, mount_root: Option<PathBuf>) -> NodeState {
    let pools = cluster
        .pools
        .values()
        .filter(|p| p.node == node)
        .map(|p| {
            // Members still being added are not assembled yet: their labels may not exist.
            // A failed member stays in its place: the pool's layout still counts it.
            let (members, drives) =
                p.drives
                    .iter()
                    .zip(p.drive_paths.iter().map(PathBuf::from))
                    .filter(|(d, _)| {
                        cluster.drives.get(*d).is_none_or(|d| {
                            matches!(d.state, DriveState::Online | DriveState::Failed)
                        })
                    })
                    .map(|(d, path)| (d.clone(), path))
                    .unzip();
            let of_pool = || cluster.drives.values().filter(|d| d.pool == p.id);
            let empty = cluster.volumes_on(&p.id).is_empty();
            PoolState {
                id: p.id.clone(),
                members,
                drives,
                activated: p.activated,
                chunk_sectors: p.chunk_sectors,
                thin: p.thin_features(),
                reformed: p.reformed,
                dead: of_pool().any(|d| d.state == DriveState::Failed),
                retire: of_pool()
                    .find(|d| d.leaving.is_some())
                    .filter(|_| empty)
                    .map(|d| Retire {
                        drive: d.id.clone(),
                        done: false,
                    }),
            }
        })
        .collect();
    let cluster_id = cluster
        .cluster
        .as_ref()
        .map(|c| c.id.clone())
        .unwrap_or_default();
    let joining = cluster
        .drives
        .values()
        .filter(|d| d.node == node)
        // A replacement waits until the drive it replaces has left.
        .filter(|d| {
            d.replaces
                .as_ref()
                .is_none_or(|r| !cluster.drives.contains_key(r))
        })
        .filter_map(|d| {
            let phase = match d.state {
                DriveState::Adding => JoinPhase::Measure,
                DriveState::Labelling => {
                    let pool = cluster.pools.get(&d.pool)?;
                    let member = pool.drives.iter().position(|m| *m == d.id)?;
                    let member = u32::try_from(member).ok()?;
                    JoinPhase::Label(LabelSpec {
                        cluster: cluster_id.clone(),
                        node,
                        pool: d.pool.clone(),
                        drive: d.id.clone(),
                        member,
                        // The pool's generation when this member joined it.
                        generation: u64::from(member) + 1,
                    })
                }
                DriveState::Online | DriveState::Failed => return None,
            };
            Some(JoiningDrive {
                id: d.id.clone(),
                path: PathBuf::from(&d.path),
                size_bytes: d.size,
                hardware_id: d.hardware_id.clone(),
                force: d.force,
                phase,
            })
        })
        .collect();
    let volumes = cluster
        .volumes
        .values()
        .filter_map(|v| volume_state(cluster, v, node))
        .collect();
    let attached = cluster
        .volumes
        .values()
        .filter_map(|v| attached_volume(cluster, v, node))
        .collect();
    NodeState {
        node: node.to_string(),
        cluster: cluster_id,
        joining,
        thresholds: Default::default(),
        // The daemon's choice, set by the reconciler like the thresholds.
        crypt_workqueues: Default::default(),
        new_pool: Default::default(),
        pools,
        volumes,
        mount_root,
        attached,
        nvme_addr: cluster
            .nodes
            .get(&node)
            .and_then(|n| crate::plan::replica::nvme_addr(&n.data_addr)),
        // Timed by the reconciler, which alone knows since when it sees each epoch.
        takeover_holds: Default::default(),
        // The daemon's own setting, not the store's.
        drive_bench: None,
    }
}

/// What `node` should have of volume `v`: none unless a replica of it is there.
pub fn volume_state(cluster: &ClusterState, v: &Volume, node: NodeId) -> Option<VolumeState> {
    if let Some(dropped) = v.dropped.iter().find(|r| r.node == node) {
        // Dropped by `ha-update` and out of the raid: torn down and freed as in a delete.
        let mut leg = leg_state(v, dropped, node, Vec::new());
        leg.phase = crate::store::types::Phase::Deleting;
        return Some(leg);
    }
    let replica = v.replicas.iter().find(|r| r.node == node)?;
    let snapshots = cluster
        .snapshots
        .values()
        .filter(|s| s.volume == v.id)
        .filter_map(|s| {
            Some(SnapshotState {
                id: s.id.clone(),
                thin_id: u64::from(*s.thin_ids.get(&node)?),
                taken: s.taken,
                phase: s.phase,
            })
        })
        .collect();
    let attached_here = v.attachment.as_ref().is_some_and(|a| a.node == node);
    if v.repl > 1 {
        return Some(leg_state(v, replica, node, snapshots));
    }
    Some(VolumeState {
        id: v.id.clone(),
        pool: replica.pool.clone(),
        thin_id: u64::from(replica.thin_id),
        size_bytes: v.size,
        fs: v.fs,
        formatted: v.formatted,
        key: v.wrapped_key.clone(),
        snapshots,
        phase: v.phase,
        origin: v.origin.as_ref().map(|o| OriginState {
            thin_id: u64::from(o.thin_id),
            volume: o.volume.clone(),
        }),
        read_only: v.read_only,
        mount: v
            .mount_path
            .as_ref()
            .filter(|_| attached_here)
            .map(PathBuf::from),
        retired: v.retired_thin_ids.iter().map(|x| u64::from(*x)).collect(),
        leg: None,
    })
}

/// A replica of replicated volume `v` on `node`: a leg, exported while another node has
/// the volume attached. Crypt, filesystem and mount belong to the attach node.
fn leg_state(
    v: &Volume,
    replica: &crate::store::types::Replica,
    node: NodeId,
    snapshots: Vec<SnapshotState>,
) -> VolumeState {
    let epoch = v.attachment.as_ref().map_or(0, |a| a.epoch);
    VolumeState {
        id: v.id.clone(),
        pool: replica.pool.clone(),
        thin_id: u64::from(replica.thin_id),
        size_bytes: v.size,
        fs: v.fs,
        // Made on the attach node, never on a leg.
        formatted: true,
        key: None,
        snapshots,
        phase: v.phase,
        origin: None,
        read_only: v.read_only,
        mount: None,
        retired: v.retired_thin_ids.iter().map(|x| u64::from(*x)).collect(),
        leg: Some(LegState {
            meta_thin_id: u64::from(replica.meta_thin_id.unwrap_or(replica.thin_id + 1)),
            epoch,
            export_to: v
                .attachment
                .as_ref()
                .filter(|a| a.node != node)
                .map(|a| a.node.to_string()),
            serving: replica.serving_epoch,
        }),
    }
}

/// What `node` should have of replicated volume `v` as its attach node: none unless it is
/// attached (or being detached) there.
pub fn attached_volume(cluster: &ClusterState, v: &Volume, node: NodeId) -> Option<AttachedVolume> {
    let a = v.attachment.as_ref().filter(|a| a.node == node)?;
    if v.repl < 2 || v.phase != crate::store::types::Phase::Live {
        return None;
    }
    use crate::store::types::{BuildPhase, ReplicaState};
    // A new leg is a member of the raid once it joined; until then it is only copied to.
    let copying = |r: &crate::store::types::Replica| {
        v.build.as_ref().is_some_and(|b| {
            b.target == r.node && matches!(b.phase, BuildPhase::Copying | BuildPhase::Ready)
        })
    };
    let leg = |i: usize, r: &crate::store::types::Replica| AttachLeg {
        node: r.node.to_string(),
        split: r.split.unwrap_or(u8::try_from(i).unwrap_or(u8::MAX)),
        local: r.node == node,
        addr: cluster
            .nodes
            .get(&r.node)
            .and_then(|n| crate::plan::replica::nvme_addr(&n.data_addr)),
        serving: r.serving_epoch == a.epoch,
        // A leaving leg stays a member of the raid until it is re-assembled without it
        // (unless it was out of sync when dropped); a joined new one holds what the
        // others do (a check is to confirm it).
        in_sync: match r.state {
            ReplicaState::Up | ReplicaState::Building => true,
            ReplicaState::Leaving => !r.left_behind,
            _ => false,
        },
        may_rejoin: matches!(r.state, ReplicaState::Stale { .. }),
        leaving: r.state == ReplicaState::Leaving,
    };
    let legs = v
        .replicas
        .iter()
        .enumerate()
        .filter(|(_, r)| !copying(r))
        .map(|(i, r)| leg(i, r))
        .collect();
    let building = v
        .replicas
        .iter()
        .enumerate()
        .find(|(_, r)| copying(r))
        .map(|(i, r)| BuildingLeg {
            leg: leg(i, r),
            ready: v
                .build
                .as_ref()
                .is_some_and(|b| b.phase == BuildPhase::Ready),
        });
    Some(AttachedVolume {
        id: v.id.clone(),
        size_bytes: v.size,
        fs: v.fs,
        formatted: v.formatted,
        key: v.wrapped_key.clone(),
        mount: v.mount_path.as_ref().map(PathBuf::from),
        epoch: a.epoch,
        legs,
        fresh: !v.assembled,
        meta_slot: v.meta_slot,
        attached: a.state == AttachState::Attached,
        detaching: a.state == AttachState::Detaching,
        check: v
            .check
            .as_ref()
            .filter(|c| c.epoch == a.epoch)
            .map(|c| match c.mismatches {
                Some(m) => CheckPhase::Done(m),
                None if c.started => CheckPhase::Running,
                None => CheckPhase::Asked,
            }),
        building,
        pause_ms: None,
    })
}

/// What the reconciler did for replicated volumes: epochs served, stacks up or down.
fn replication_records(before: &NodeState, after: &NodeState) -> Vec<Command> {
    let mut out = Vec::new();
    let change = |id: &str, change| Command::UpdateVolume {
        id: id.to_owned(),
        change,
    };
    if let Ok(node) = before.node.parse::<NodeId>() {
        for b in &before.volumes {
            let (Some(bl), Some(al)) = (
                b.leg.as_ref(),
                after.volume(&b.id).and_then(|a| a.leg.as_ref()),
            ) else {
                continue;
            };
            if al.serving > bl.serving {
                out.push(change(
                    &b.id,
                    VolumeChange::Serving {
                        node,
                        epoch: al.serving,
                    },
                ));
            }
        }
    }
    for b in &before.attached {
        let Some(a) = after.attached(&b.id) else {
            out.push(change(&b.id, VolumeChange::Detached { epoch: b.epoch }));
            continue;
        };
        if b.fresh && !a.fresh {
            out.push(change(&b.id, VolumeChange::Assembled));
        }
        if !b.attached && a.attached {
            out.push(change(&b.id, VolumeChange::Attached { epoch: a.epoch }));
        }
        if !b.formatted && a.formatted {
            out.push(change(&b.id, VolumeChange::Formatted));
        }
        if b.meta_slot != a.meta_slot {
            out.push(change(
                &b.id,
                VolumeChange::Reassembled {
                    epoch: a.epoch,
                    slot: a.meta_slot,
                    pause_ms: a.pause_ms,
                },
            ));
        }
        match (b.check, a.check) {
            (Some(CheckPhase::Asked), Some(CheckPhase::Running)) => {
                out.push(change(&b.id, VolumeChange::CheckStarted { epoch: a.epoch }))
            }
            (Some(CheckPhase::Running), Some(CheckPhase::Asked)) => out.push(change(
                &b.id,
                VolumeChange::CheckCutShort { epoch: a.epoch },
            )),
            (Some(CheckPhase::Running), Some(CheckPhase::Done(mismatches))) => out.push(change(
                &b.id,
                VolumeChange::CheckDone {
                    epoch: a.epoch,
                    mismatches,
                },
            )),
            _ => {}
        }
        for (bl, al) in b.legs.iter().zip(&a.legs) {
            let Ok(node) = al.node.parse() else { continue };
            let epoch = a.epoch;
            match (bl.in_sync, al.in_sync) {
                (false, true) => out.push(change(&b.id, VolumeChange::LegUp { node, epoch })),
                // Dead in the raid: nothing was held, the raid dropped it at the error.
                (true, false) => out.push(change(
                    &b.id,
                    VolumeChange::LegStale {
                        node,
                        epoch,
                        held_ms: 0,
                    },
                )),
                _ => {}
            }
        }
    }
    out
}

/// The commands that record, in the store, what the reconciler changed between `before` and
/// `after`: filesystems made, copies and snapshots taken, retired ids and deletes finished.
pub fn records(before: &NodeState, after: &NodeState) -> Vec<Command> {
    let mut out = Vec::new();
    for b in &before.joining {
        let Some(a) = after.joining.iter().find(|a| a.id == b.id) else {
            continue;
        };
        let change = match &a.phase {
            _ if a.phase == b.phase => continue,
            JoinPhase::Measured { class, benchmark } => DriveChange::Measured {
                class: *class,
                benchmark: benchmark.clone(),
                new_pool: Some(after.new_pool),
            },
            JoinPhase::Labelled => DriveChange::Labelled,
            JoinPhase::Failed(reason) => DriveChange::Failed {
                reason: reason.clone(),
            },
            JoinPhase::Measure | JoinPhase::Label(_) => continue,
        };
        out.push(Command::UpdateDrive {
            id: b.id.clone(),
            change,
        });
    }
    for b in &before.pools {
        let retired = |p: &PoolState| p.retire.clone().filter(|r| r.done).map(|r| r.drive);
        let now = after.pools.iter().find(|a| a.id == b.id).and_then(retired);
        if let (None, Some(drive)) = (retired(b), now) {
            out.push(Command::UpdateDrive {
                id: drive,
                change: DriveChange::Retired,
            });
        }
        if !b.activated && after.pools.iter().any(|a| a.id == b.id && a.activated) {
            out.push(Command::UpdatePool {
                id: b.id.clone(),
                change: PoolChange::Activated,
            });
        }
    }
    out.extend(replication_records(before, after));
    for b in &before.volumes {
        let Some(a) = after.volume(&b.id) else {
            if b.leg.is_some() {
                // One replica of several: the volume goes when the last one is gone.
                if let Ok(node) = before.node.parse() {
                    out.push(Command::UpdateVolume {
                        id: b.id.clone(),
                        change: VolumeChange::ReplicaRemoved { node },
                    });
                }
                continue;
            }
            out.extend(
                b.snapshots
                    .iter()
                    .map(|s| Command::RemoveSnapshot { id: s.id.clone() }),
            );
            out.push(Command::RemoveVolume { id: b.id.clone() });
            continue;
        };
        let mut change = |change| {
            out.push(Command::UpdateVolume {
                id: b.id.clone(),
                change,
            })
        };
        if !b.formatted && a.formatted {
            change(VolumeChange::Formatted);
        }
        if b.origin.is_some() && a.origin.is_none() {
            change(VolumeChange::OriginCopied);
        }
        if !b.retired.is_empty() && a.retired.is_empty() {
            change(VolumeChange::RetiredDeleted);
        }
        for s in &b.snapshots {
            match a.snapshots.iter().find(|x| x.id == s.id) {
                None => out.push(Command::RemoveSnapshot { id: s.id.clone() }),
                Some(x) if x.taken && !s.taken => out.push(Command::UpdateSnapshot {
                    id: s.id.clone(),
                    change: SnapshotChange::Taken,
                }),
                Some(_) => {}
            }
        }
    }
    out
}

/// The device stack a volume's application I/O goes through, and the node it is on: a
/// replicated volume's raid (and crypt) on its attach node, once attached; a single-replica
/// volume's thin (and crypt) on its replica's node, whenever it is live. Its last device is
/// the one applications use, and the one its I/O is counted on.
pub fn io_stack(
    st: &ClusterState,
    v: &Volume,
) -> Option<(NodeId, Vec<crate::plan::table::DevicePlan>)> {
    if v.repl > 1 {
        return attached_stack(v);
    }
    let r = v.replicas.first()?;
    let node = crate::plan::names::Id::node(&r.node.to_string()).ok()?;
    let vs = volume_state(st, v, r.node)?;
    // Only the devices' names matter here, not their flags.
    let stack = super::steps::volume_stack(&node, &vs, Default::default()).ok()?;
    Some((r.node, stack))
}

/// A replicated volume's stack on its attach node, once attached there: raid, then crypt.
fn attached_stack(v: &Volume) -> Option<(NodeId, Vec<crate::plan::table::DevicePlan>)> {
    let a = v
        .attachment
        .as_ref()
        .filter(|a| a.state == AttachState::Attached)?;
    let node = crate::plan::names::Id::node(&a.node.to_string()).ok()?;
    let vid = crate::plan::names::Id::object(&v.id).ok()?;
    let size = devicemapper::Sectors(v.size / 512);
    let raid = crate::plan::replica::plan_raid(&node, &vid, Vec::new(), size, false);
    let mut plans = Vec::new();
    if v.wrapped_key.is_some() {
        plans.push(crate::plan::crypt::plan_crypt(
            &node,
            &vid,
            size,
            raid.name.clone(),
            Default::default(),
        ));
    }
    plans.insert(0, raid);
    Some((a.node, plans))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::types::*;

    fn cluster() -> ClusterState {
        let mut c = ClusterState::default();
        for id in [1, 2] {
            c.nodes.insert(
                NodeId(id),
                Node {
                    id: NodeId(id),
                    name: format!("n{id}"),
                    api_addr: String::new(),
                    data_addr: String::new(),
                    public_key: String::new(),
                    topology: Default::default(),
                    role: Role::Storage,
                },
            );
        }
        c.pools.insert(
            "p1".into(),
            Pool {
                id: "p1".into(),
                node: NodeId(1),
                class: Class::High,
                drives: vec!["d1".into()],
                capacity: 1 << 30,
                used: 0,
                benchmark: None,
                chunk_sectors: 128,
                zero_new_chunks: true,
                discard_passdown: true,
                drive_paths: vec!["/dev/vdb".into()],
                generation: 1,
                activated: true,
                health: PoolHealth::Online,
                reformed: false,
            },
        );
        c
    }

    fn volume(id: &str, name: &str) -> Volume {
        Volume {
            id: id.into(),
            name: name.into(),
            size: 1 << 30,
            fs: Fs::Ext4,
            repl: 1,
            io_priority: Class::High,
            max_iops: None,
            max_bandwidth: None,
            encrypted: false,
            key_ref: None,
            labels: Default::default(),
            replicas: vec![Replica {
                node: NodeId(1),
                split: None,
                pool: "p1".into(),
                thin_id: 0,
                meta_thin_id: None,
                serving_epoch: 0,
                left_behind: false,
                state: ReplicaState::Up,
            }],
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
        }
    }

    fn apply(c: &mut ClusterState, cmd: Command) {
        let (r, _) = c.apply(&cmd);
        assert_eq!(r, crate::store::state::Response::Applied, "{cmd:?}");
    }

    #[test]
    fn thin_ids_are_allocated_per_pool_and_names_are_unique() {
        let mut c = cluster();
        apply(
            &mut c,
            Command::CreateVolume {
                volume: volume("a", "db"),
            },
        );
        apply(
            &mut c,
            Command::CreateVolume {
                volume: volume("b", "web"),
            },
        );
        assert_eq!(c.volumes["a"].replicas[0].thin_id, 1);
        assert_eq!(c.volumes["b"].replicas[0].thin_id, 2);
        let snap = Snapshot {
            id: "s".into(),
            volume: "a".into(),
            name: "before".into(),
            time: 0,
            thin_ids: Default::default(),
            read_only: true,
            taken: false,
            phase: Phase::Live,
        };
        apply(
            &mut c,
            Command::CreateSnapshot {
                snapshot: snap.clone(),
            },
        );
        assert_eq!(c.snapshots["s"].thin_ids[&NodeId(1)], 3);
        let (r, _) = c.apply(&Command::CreateVolume {
            volume: volume("c", "db"),
        });
        assert!(matches!(r, crate::store::state::Response::Rejected(m) if m.contains("name")));
        let (r, _) = c.apply(&Command::CreateSnapshot {
            snapshot: Snapshot {
                id: "t".into(),
                ..snap
            },
        });
        assert!(matches!(r, crate::store::state::Response::Rejected(m) if m.contains("called")));
    }

    #[test]
    fn restore_retires_the_old_id_and_copies_from_the_snapshot() {
        let mut c = cluster();
        apply(
            &mut c,
            Command::CreateVolume {
                volume: volume("a", "db"),
            },
        );
        let snap = Snapshot {
            id: "s".into(),
            volume: "a".into(),
            name: "x".into(),
            time: 0,
            thin_ids: Default::default(),
            read_only: true,
            taken: false,
            phase: Phase::Live,
        };
        apply(&mut c, Command::CreateSnapshot { snapshot: snap });
        let restore = Command::UpdateVolume {
            id: "a".into(),
            change: VolumeChange::Restore {
                snapshot: "s".into(),
            },
        };
        assert!(matches!(
            c.apply(&restore).0,
            crate::store::state::Response::Rejected(_)
        ));
        apply(
            &mut c,
            Command::UpdateSnapshot {
                id: "s".into(),
                change: SnapshotChange::Taken,
            },
        );
        apply(&mut c, restore);
        let v = &c.volumes["a"];
        assert_eq!(
            (v.replicas[0].thin_id, v.retired_thin_ids.clone()),
            (3, vec![1])
        );
        assert_eq!(v.origin.as_ref().map(|o| o.thin_id), Some(2));
        let shrink = Command::UpdateVolume {
            id: "a".into(),
            change: VolumeChange::Resize { size: 1 << 20 },
        };
        assert!(
            matches!(c.apply(&shrink).0, crate::store::state::Response::Rejected(m) if m.contains("shrinking"))
        );
    }

    #[test]
    fn a_node_gets_its_replicas_and_its_records_round_trip_to_commands() {
        let mut c = cluster();
        let mut v = volume("a", "db");
        v.mount_path = Some("/m/db".into());
        v.attachment = Some(Attachment {
            node: NodeId(1),
            epoch: 1,
            by_mount: true,
            state: AttachState::Attached,
        });
        apply(&mut c, Command::CreateVolume { volume: v });
        let before = node_state(&c, NodeId(1), None);
        assert_eq!(before.pools[0].drives, [PathBuf::from("/dev/vdb")]);
        assert_eq!(before.volumes[0].thin_id, 1);
        assert_eq!(before.volumes[0].mount, Some(PathBuf::from("/m/db")));
        assert!(node_state(&c, NodeId(2), None).volumes.is_empty());

        let mut after = before.clone();
        after.volumes[0].formatted = true;
        let cmds = records(&before, &after);
        assert_eq!(
            cmds,
            [Command::UpdateVolume {
                id: "a".into(),
                change: VolumeChange::Formatted
            }]
        );
        for cmd in cmds {
            apply(&mut c, cmd);
        }
        assert_eq!(node_state(&c, NodeId(1), None), after);
        after.volumes.clear();
        assert_eq!(
            records(&node_state(&c, NodeId(1), None), &after),
            [Command::RemoveVolume { id: "a".into() }]
        );
    }

    #[test]
    fn a_leaving_drive_s_pool_is_retired_once_empty_and_its_replacement_waits_for_it() {
        use crate::store::pools::DriveChange;
        use crate::store::types::{DriveState, Leaving};
        let mut c = cluster();
        let pool = "p1".to_string();
        let v = volume("a", "a");
        c.volumes.insert(v.id.clone(), v);
        let mut old = Drive::adding("d1".into(), NodeId(1), "/dev/vdb".into(), None, 1, false);
        (old.pool, old.state) = (pool.clone(), DriveState::Failed);
        old.leaving = Some(Leaving::Replace { by: "d2".into() });
        let mut new = Drive::adding("d2".into(), NodeId(1), "/dev/vdc".into(), None, 1, false);
        new.replaces = Some("d1".into());
        c.drives.insert("d1".into(), old);
        c.drives.insert("d2".into(), new);
        let before = node_state(&c, NodeId(1), None);
        let p = before.pools.iter().find(|p| p.id == pool).unwrap();
        assert!(
            p.dead && p.retire.is_none(),
            "volume a is still on it: {p:?}"
        );
        assert!(before.joining.is_empty(), "the replacement waits");
        c.volumes.clear();
        let before = node_state(&c, NodeId(1), None);
        let mut after = before.clone();
        let p = after.pools.iter_mut().find(|p| p.id == pool).unwrap();
        p.retire.as_mut().unwrap().done = true;
        assert_eq!(
            records(&before, &after),
            [Command::UpdateDrive {
                id: "d1".into(),
                change: DriveChange::Retired
            }]
        );
        c.drives.remove("d1");
        assert_eq!(node_state(&c, NodeId(1), None).joining.len(), 1);
    }

    #[test]
    fn a_drive_add_is_finished_by_the_node_that_has_the_drive() {
        use crate::store::pools::DriveChange;
        let mut c = cluster();
        c.cluster = Some(ClusterInfo {
            id: "c1".into(),
            name: "c".into(),
            join_secret: Secret::random(),
            api_token: Secret::random(),
        });
        let uuid = crate::pool::label::DriveUuid([3; 16]).to_string();
        apply(
            &mut c,
            Command::BeginDriveAdd {
                drive: Drive::adding(
                    uuid.clone(),
                    NodeId(1),
                    "/dev/vdc".into(),
                    None,
                    1 << 30,
                    false,
                ),
            },
        );
        assert!(node_state(&c, NodeId(2), None).joining.is_empty());
        let before = node_state(&c, NodeId(1), None);
        assert_eq!(before.joining.len(), 1);
        assert_eq!(before.joining[0].phase, JoinPhase::Measure);

        // What the executor did becomes the store's record.
        let bench = Benchmark {
            read_iops: 10,
            write_iops: 10,
            read_p99_us: 1,
            write_p99_us: 1,
            seq_mb_per_s: 1,
            read_p50_us: 1,
            write_p50_us: 1,
        };
        let mut after = before.clone();
        after.joining[0].phase = JoinPhase::Measured {
            class: Class::High,
            benchmark: bench.clone(),
        };
        let cmds = records(&before, &after);
        assert_eq!(
            cmds,
            [Command::UpdateDrive {
                id: uuid.clone(),
                change: DriveChange::Measured {
                    class: Class::High,
                    benchmark: bench,
                    new_pool: Some(NewPool::default()),
                }
            }]
        );
        for cmd in cmds {
            apply(&mut c, cmd);
        }
        // It joined pool p1 (the node's high pool) as member 1, but is not assembled yet.
        let labelling = node_state(&c, NodeId(1), None);
        assert_eq!(labelling.pools[0].members, ["d1"]);
        match &labelling.joining[0].phase {
            JoinPhase::Label(spec) => {
                assert_eq!(
                    (spec.pool.as_str(), spec.member, spec.generation),
                    ("p1", 1, 2)
                );
                assert_eq!(spec.cluster, "c1");
            }
            other => panic!("{other:?}"),
        }
        let mut done = labelling.clone();
        done.joining[0].phase = JoinPhase::Labelled;
        for cmd in records(&labelling, &done) {
            apply(&mut c, cmd);
        }
        let online = node_state(&c, NodeId(1), None);
        assert!(online.joining.is_empty());
        assert_eq!(online.pools[0].members, ["d1".to_string(), uuid.clone()]);
        // A member that fails I/O keeps its place: the pool's layout still counts it.
        c.drives.get_mut(&uuid).unwrap().state = DriveState::Failed;
        let failed = node_state(&c, NodeId(1), None);
        assert_eq!(failed.pools[0].members, ["d1".to_string(), uuid]);
    }
}
