//! Attach and detach in the state machine (DESIGN §5): every attach of a replicated volume
//! gets a new epoch, a second attach elsewhere is refused unless forced, and an attach that
//! could read only stale legs is refused unless forced. The replicas and the attach node
//! record their progress here, so any node can tell when an attach is acknowledged.

use super::state::VolumeChange;
use super::types::{AttachState, Attachment, NodeId, ReplicaState, Volume};

/// Applies an attach, detach or progress change to `v`; `Ok(false)` for one this module
/// does not handle.
pub(super) fn apply(v: &mut Volume, change: &VolumeChange) -> Result<bool, String> {
    match change {
        VolumeChange::Attach {
            node,
            force,
            by_mount,
            lost,
        } => attach(v, *node, *force, *by_mount, lost)?,
        VolumeChange::Detach { force } => detach(v, *force)?,
        VolumeChange::Mount { node, path } => {
            match path {
                Some(_) if v.attachment.as_ref().is_none_or(|a| a.node != *node) => {
                    attach(v, *node, false, true, &[])?
                }
                Some(_) => {}
                None => {
                    if v.attachment.as_ref().is_some_and(|a| a.by_mount) {
                        v.mount_path = None;
                        detach(v, false)?;
                    }
                }
            }
            v.mount_path = path.clone();
        }
        VolumeChange::Serving { node, epoch } => {
            let r = v
                .replicas
                .iter_mut()
                .find(|r| r.node == *node)
                .ok_or_else(|| format!("volume {} has no replica on node {node}", v.id))?;
            r.serving_epoch = r.serving_epoch.max(*epoch);
        }
        VolumeChange::Attached { epoch } => {
            if let Some(a) = v.attachment.as_mut().filter(|a| a.epoch == *epoch) {
                if a.state == AttachState::Attaching {
                    a.state = AttachState::Attached;
                }
            }
        }
        VolumeChange::Detached { epoch } => {
            if v.attachment
                .as_ref()
                .is_some_and(|a| a.epoch == *epoch && a.state == AttachState::Detaching)
            {
                v.attachment = None;
            }
        }
        VolumeChange::Assembled => v.assembled = true,
        VolumeChange::LegStale {
            node,
            epoch,
            held_ms,
        } => {
            if leg_stale(v, *node, *epoch)? {
                v.last_leg_loss = Some(super::types::LegLoss {
                    node: *node,
                    epoch: *epoch,
                    held_ms: *held_ms,
                });
            }
        }
        VolumeChange::LegUp { node, epoch } => {
            let current = v.attachment.as_ref().is_some_and(|a| a.epoch == *epoch);
            if let Some(r) = v
                .replicas
                .iter_mut()
                .find(|r| r.node == *node && r.serving_epoch == *epoch)
                .filter(|_| current)
            {
                r.state = ReplicaState::Up;
            }
        }
        _ => return Ok(false),
    }
    super::check::follow_attachment(v);
    super::ha::follow_attachment(v);
    Ok(true)
}

fn attach(
    v: &mut Volume,
    node: NodeId,
    force: bool,
    by_mount: bool,
    lost: &[NodeId],
) -> Result<(), String> {
    if v.repl == 1 {
        let home = v.replicas.first().map(|r| r.node);
        if home != Some(node) {
            return Err(format!(
                "node: volume {} has 1 replica, on node {}; a repl 1 volume attaches only on its replica's node",
                v.name,
                home.map_or_else(|| "?".to_owned(), |n| n.to_string())
            ));
        }
    }
    if let Some(a) = v.attachment.as_mut() {
        if a.node == node && a.state != AttachState::Detaching {
            // Attached here already: an explicit attach keeps it past the unmount.
            a.by_mount &= by_mount;
            return Ok(());
        }
        if !force {
            return Err(format!(
                "volume {} is attached on node {} (epoch {}); detach it there first, or attach with --force to fail over",
                v.name, a.node, a.epoch
            ));
        }
    }
    // Records from before the counter existed carry their epoch in the attachment only.
    v.epoch = v.epoch.max(v.attachment.as_ref().map_or(0, |a| a.epoch));
    let epoch = v.epoch + 1;
    // Taken by force from a node that holds a leg itself: until that node fenced itself
    // (its lease), writes it never acknowledged may have reached its leg alone. That leg
    // may hold what the new truth lacks: it is rebuilt, never resynced back.
    let taken_from = v.attachment.as_ref().map(|a| a.node).filter(|n| *n != node);
    if let Some(old) = taken_from.filter(|_| v.repl > 1) {
        let others_up = v
            .replicas
            .iter()
            .any(|r| r.node != old && r.state == ReplicaState::Up && !lost.contains(&r.node));
        if let Some(r) = v.replicas.iter_mut().find(|r| r.node == old) {
            if others_up && r.state == ReplicaState::Up {
                r.state = ReplicaState::Failed;
                r.serving_epoch = 0;
            }
        }
    }
    if v.repl > 1 {
        let readable =
            |r: &&super::types::Replica| r.state == ReplicaState::Up && !lost.contains(&r.node);
        let accepted_loss = !v.replicas.iter().any(|r| readable(&r));
        if accepted_loss {
            let legs: Vec<String> = v.replicas.iter().map(|r| describe(r, lost)).collect();
            if !force {
                return Err(format!(
                    "volume {} has no leg in sync that can be reached: {}; attaching would serve stale data (attach --force accepts the loss)",
                    v.name,
                    legs.join(", ")
                ));
            }
            // The operator takes what the reachable legs hold as the truth.
            let promoted: Vec<String> = v
                .replicas
                .iter_mut()
                .filter(|r| !lost.contains(&r.node) && r.state != ReplicaState::Failed)
                .map(|r| {
                    r.state = ReplicaState::Up;
                    r.node.to_string()
                })
                .collect();
            if promoted.is_empty() {
                return Err(format!(
                    "volume {} has no leg that can be reached at all: {}",
                    v.name,
                    legs.join(", ")
                ));
            }
            v.accepted_losses.push(format!(
                "epoch {epoch}: attached with --force from the legs on node(s) {}; whatever only {} held is lost",
                promoted.join(", "),
                legs.join(", ")
            ));
        }
        // Legs on nodes out of reach miss this epoch's writes from its first one. A leg that
        // was in sync but is passed over by an accepted loss or a forced takeover may hold
        // writes the new truth lacks (the old attach node may reach it until its lease
        // runs out), and one never assembled has no superblock: neither may rejoin by
        // resync; they are rebuilt.
        let diverges = accepted_loss || taken_from.is_some() || !v.assembled;
        for r in v.replicas.iter_mut().filter(|r| lost.contains(&r.node)) {
            if r.state == ReplicaState::Up {
                r.state = if diverges {
                    ReplicaState::Failed
                } else {
                    ReplicaState::Stale {
                        missed_epoch: epoch,
                    }
                };
                r.serving_epoch = 0;
            }
        }
    }
    v.epoch = epoch;
    if v.attachment.is_some() {
        // Forced away from another node: its mount is gone with it.
        v.mount_path = None;
    }
    v.attachment = Some(Attachment {
        node,
        epoch,
        by_mount,
        state: if v.repl > 1 {
            AttachState::Attaching
        } else {
            AttachState::Attached
        },
    });
    Ok(())
}

/// A leg for a message: its node and how it stands.
pub(super) fn describe(r: &super::types::Replica, lost: &[NodeId]) -> String {
    let state = match r.state {
        ReplicaState::Stale { missed_epoch } => format!("stale since epoch {missed_epoch}"),
        ReplicaState::Up => "in sync".to_owned(),
        ReplicaState::Building => "being built".to_owned(),
        ReplicaState::Failed => "failed".to_owned(),
        ReplicaState::Leaving => "leaving".to_owned(),
    };
    let reach = if lost.contains(&r.node) {
        ", offline"
    } else {
        ""
    };
    format!("node {} ({state}{reach})", r.node)
}

/// Records the leg on `node` stale; true if it was in sync until now.
fn leg_stale(v: &mut Volume, node: NodeId, epoch: u64) -> Result<bool, String> {
    if let Some(a) = v.attachment.as_ref().filter(|a| a.epoch != epoch) {
        // A loss seen by an older attach. Refused, not ignored: that node must keep its
        // writes held (and fail them when fenced), never complete them on its other legs.
        return Err(format!(
            "epoch {epoch} of volume {} is over (it is attached at epoch {}); the leg stays held",
            v.name, a.epoch
        ));
    }
    if v.attachment.is_none() {
        return Err(format!(
            "volume {} is not attached; the leg stays held",
            v.name
        ));
    }
    let others_up = v
        .replicas
        .iter()
        .filter(|r| r.node != node && r.state == ReplicaState::Up)
        .count();
    let r = v
        .replicas
        .iter_mut()
        .find(|r| r.node == node)
        .ok_or_else(|| format!("volume {} has no replica on node {node}", v.name))?;
    if r.state != ReplicaState::Up {
        return Ok(false);
    }
    if others_up == 0 {
        return Err(format!(
            "the leg of volume {} on node {node} is its last leg in sync; its writes stay held until it returns",
            v.name
        ));
    }
    r.state = ReplicaState::Stale {
        missed_epoch: epoch,
    };
    // Served again (and reconnected) only once its node is back.
    r.serving_epoch = 0;
    Ok(true)
}

fn detach(v: &mut Volume, force: bool) -> Result<(), String> {
    let Some(a) = v.attachment.as_mut() else {
        return Ok(());
    };
    if let Some(at) = &v.mount_path {
        if !force {
            return Err(format!(
                "volume {} is mounted at {at} on node {}; unmount it first",
                v.name, a.node
            ));
        }
    }
    if force || v.repl == 1 {
        // Forced off a node that holds a leg: that leg may hold writes never acknowledged.
        let node = a.node;
        if force && v.repl > 1 {
            let others_up = v
                .replicas
                .iter()
                .any(|r| r.node != node && r.state == ReplicaState::Up);
            if let Some(r) = v.replicas.iter_mut().find(|r| r.node == node) {
                if others_up && r.state == ReplicaState::Up {
                    r.state = ReplicaState::Failed;
                    r.serving_epoch = 0;
                }
            }
        }
        v.mount_path = None;
        v.attachment = None;
    } else {
        a.state = AttachState::Detaching;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::types::Replica;

    /// Volume `db` with `repl` legs in sync on nodes 1.., not attached.
    pub(crate) fn volume(repl: u8) -> Volume {
        let mut v: Volume = serde_json::from_value(serde_json::json!({
            "id": "v1", "name": "db", "size": 1048576, "fs": "ext4", "repl": repl,
            "io_priority": "low", "max_iops": null, "encrypted": false, "key_ref": null,
            "labels": {}, "replicas": [], "attachment": null, "snapshot_schedule": null,
            "phase": "live", "formatted": false
        }))
        .unwrap();
        v.replicas = (1..=u64::from(repl))
            .map(|n| Replica {
                node: NodeId(n),
                split: None,
                pool: format!("p{n}"),
                thin_id: 1,
                meta_thin_id: Some(2),
                state: ReplicaState::Up,
                serving_epoch: 0,
                left_behind: false,
            })
            .collect();
        v
    }

    fn change(v: &mut Volume, c: VolumeChange) -> Result<(), String> {
        apply(v, &c).map(|handled| assert!(handled))
    }

    fn attach(node: u64, force: bool) -> VolumeChange {
        VolumeChange::Attach {
            node: NodeId(node),
            force,
            by_mount: false,
            lost: vec![],
        }
    }

    #[test]
    fn every_attach_gets_a_new_epoch_and_a_second_one_elsewhere_needs_force() {
        let mut v = volume(2);
        change(&mut v, attach(1, false)).unwrap();
        let a = v.attachment.clone().unwrap();
        assert_eq!(
            (a.node, a.epoch, a.state),
            (NodeId(1), 1, AttachState::Attaching)
        );
        change(&mut v, attach(1, false)).unwrap();
        assert_eq!(v.epoch, 1, "attaching again where it is changes nothing");
        let e = change(&mut v, attach(3, false)).unwrap_err();
        assert!(
            e.contains(&format!("attached on node {} (epoch 1)", NodeId(1)))
                && e.contains("--force"),
            "{e}"
        );
        change(&mut v, attach(3, true)).unwrap();
        assert_eq!(
            v.attachment.as_ref().map(|a| (a.node, a.epoch)),
            Some((NodeId(3), 2))
        );
        assert_eq!(
            v.replicas[0].state,
            ReplicaState::Failed,
            "the leg of the node it was taken from may hold writes never acknowledged"
        );
        assert_eq!(v.replicas[1].state, ReplicaState::Up);
        change(&mut v, VolumeChange::Attached { epoch: 1 }).unwrap();
        assert_eq!(
            v.attachment.as_ref().unwrap().state,
            AttachState::Attaching,
            "an old epoch's news is ignored"
        );
        change(&mut v, VolumeChange::Attached { epoch: 2 }).unwrap();
        assert_eq!(v.attachment.as_ref().unwrap().state, AttachState::Attached);
    }

    #[test]
    fn detach_waits_for_the_attach_node_and_is_refused_while_mounted() {
        let mut v = volume(2);
        change(
            &mut v,
            VolumeChange::Mount {
                node: NodeId(2),
                path: Some("/m/db".into()),
            },
        )
        .unwrap();
        assert!(v.attachment.as_ref().unwrap().by_mount);
        let e = change(&mut v, VolumeChange::Detach { force: false }).unwrap_err();
        assert!(
            e.contains("mounted at /m/db") && e.contains("unmount it first"),
            "{e}"
        );
        change(
            &mut v,
            VolumeChange::Mount {
                node: NodeId(2),
                path: None,
            },
        )
        .unwrap();
        assert_eq!(
            v.attachment.as_ref().unwrap().state,
            AttachState::Detaching,
            "the unmount detaches what the mount attached"
        );
        change(&mut v, VolumeChange::Detached { epoch: 1 }).unwrap();
        assert_eq!(v.attachment, None);
        change(&mut v, attach(1, false)).unwrap();
        assert_eq!(v.epoch, 2, "epochs are never reused");
    }

    #[test]
    fn an_attach_with_only_stale_legs_is_refused_unless_forced() {
        let mut v = volume(2);
        for r in &mut v.replicas {
            r.state = ReplicaState::Stale { missed_epoch: 4 };
        }
        let e = change(&mut v, attach(1, false)).unwrap_err();
        assert!(
            e.contains(&format!("node {} (stale since epoch 4)", NodeId(1)))
                && e.contains("--force"),
            "{e}"
        );
        change(&mut v, attach(1, true)).unwrap();
    }

    #[test]
    fn legs_out_of_reach_go_stale_and_only_stale_legs_in_reach_need_force_which_is_recorded() {
        let mut v = volume(2);
        v.replicas[0].state = ReplicaState::Stale { missed_epoch: 2 };
        v.epoch = 2;
        let lost_2 = |force| VolumeChange::Attach {
            node: NodeId(1),
            force,
            by_mount: false,
            lost: vec![NodeId(2)],
        };
        // Node 2 holds the only leg in sync, and it is offline.
        let e = change(&mut v, lost_2(false)).unwrap_err();
        let want = format!(
            "no leg in sync that can be reached: node {} (stale since epoch 2), node {} (in sync, offline)",
            NodeId(1),
            NodeId(2)
        );
        assert!(e.contains(&want), "{e}");
        change(&mut v, lost_2(true)).unwrap();
        assert_eq!(v.replicas[0].state, ReplicaState::Up);
        assert_eq!(
            v.replicas[1].state,
            ReplicaState::Failed,
            "the passed-over leg holds writes the new truth lacks: never resynced back"
        );
        assert_eq!(v.accepted_losses.len(), 1);
        assert!(
            v.accepted_losses[0].starts_with("epoch 3: attached with --force"),
            "{:?}",
            v.accepted_losses
        );
    }

    #[test]
    fn a_single_replica_volume_attaches_only_on_its_node_and_at_once() {
        let mut v = volume(1);
        let e = change(&mut v, attach(2, false)).unwrap_err();
        assert!(
            e.starts_with(&format!(
                "node: volume db has 1 replica, on node {}",
                NodeId(1)
            )),
            "{e}"
        );
        change(&mut v, attach(1, false)).unwrap();
        assert_eq!(v.attachment.as_ref().unwrap().state, AttachState::Attached);
        change(&mut v, VolumeChange::Detach { force: false }).unwrap();
        assert_eq!(v.attachment, None);
    }

    #[test]
    fn a_lost_leg_is_stale_until_served_and_resynced_and_the_last_one_is_never_dropped() {
        let mut v = volume(2);
        change(&mut v, attach(1, false)).unwrap();
        for n in [1, 2] {
            change(
                &mut v,
                VolumeChange::Serving {
                    node: NodeId(n),
                    epoch: 1,
                },
            )
            .unwrap();
        }
        change(
            &mut v,
            VolumeChange::LegStale {
                node: NodeId(2),
                epoch: 1,
                held_ms: 5,
            },
        )
        .unwrap();
        assert_eq!(v.replicas[1].state, ReplicaState::Stale { missed_epoch: 1 });
        assert_eq!(v.replicas[1].serving_epoch, 0, "to be served again");
        assert_eq!(
            v.last_leg_loss.as_ref().map(|l| (l.node, l.held_ms)),
            Some((NodeId(2), 5)),
            "how long the writes were held is kept"
        );
        let e = change(
            &mut v,
            VolumeChange::LegStale {
                node: NodeId(1),
                epoch: 1,
                held_ms: 5,
            },
        )
        .unwrap_err();
        assert!(e.contains("last leg in sync"), "{e}");
        change(
            &mut v,
            VolumeChange::LegUp {
                node: NodeId(2),
                epoch: 1,
            },
        )
        .unwrap();
        assert_ne!(v.replicas[1].state, ReplicaState::Up, "not served yet");
        change(
            &mut v,
            VolumeChange::Serving {
                node: NodeId(2),
                epoch: 1,
            },
        )
        .unwrap();
        change(
            &mut v,
            VolumeChange::LegUp {
                node: NodeId(2),
                epoch: 1,
            },
        )
        .unwrap();
        assert_eq!(v.replicas[1].state, ReplicaState::Up);
        // An old epoch's loss is refused: that node keeps its writes held.
        let e = change(
            &mut v,
            VolumeChange::LegStale {
                node: NodeId(2),
                epoch: 0,
                held_ms: 5,
            },
        )
        .unwrap_err();
        assert!(e.contains("epoch 0 of volume db is over"), "{e}");
        assert_eq!(v.replicas[1].state, ReplicaState::Up);
    }

    #[test]
    fn a_replicated_volume_goes_when_its_last_replica_is_gone() {
        let mut st = crate::store::state::ClusterState::default();
        let mut v = volume(2);
        v.phase = crate::store::types::Phase::Deleting;
        st.volumes.insert(v.id.clone(), v);
        let gone = |st: &mut crate::store::state::ClusterState, n| {
            st.apply(&crate::store::state::Command::UpdateVolume {
                id: "v1".into(),
                change: VolumeChange::ReplicaRemoved { node: NodeId(n) },
            })
        };
        gone(&mut st, 1);
        assert_eq!(st.volumes["v1"].replicas.len(), 1);
        gone(&mut st, 1);
        assert_eq!(
            st.volumes["v1"].replicas.len(),
            1,
            "a repeat changes nothing"
        );
        gone(&mut st, 2);
        assert!(st.volumes.is_empty());
        let (r, _) = gone(&mut st, 2);
        assert_eq!(
            r,
            crate::store::state::Response::Applied,
            "nor after it is gone"
        );
    }

    #[test]
    fn a_replica_serves_only_newer_epochs() {
        let mut v = volume(2);
        change(
            &mut v,
            VolumeChange::Serving {
                node: NodeId(2),
                epoch: 3,
            },
        )
        .unwrap();
        change(
            &mut v,
            VolumeChange::Serving {
                node: NodeId(2),
                epoch: 2,
            },
        )
        .unwrap();
        assert_eq!(v.replicas[1].serving_epoch, 3);
        assert!(change(
            &mut v,
            VolumeChange::Serving {
                node: NodeId(7),
                epoch: 3
            }
        )
        .is_err());
    }
}
