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
        } => attach(v, *node, *force, *by_mount)?,
        VolumeChange::Detach { force } => detach(v, *force)?,
        VolumeChange::Mount { node, path } => {
            match path {
                Some(_) if v.attachment.as_ref().is_none_or(|a| a.node != *node) => {
                    attach(v, *node, false, true)?
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
        _ => return Ok(false),
    }
    Ok(true)
}

fn attach(v: &mut Volume, node: NodeId, force: bool, by_mount: bool) -> Result<(), String> {
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
    if v.repl > 1 && !v.replicas.iter().any(|r| r.state == ReplicaState::Up) {
        let stale: Vec<String> = v
            .replicas
            .iter()
            .map(|r| match r.state {
                ReplicaState::Stale { missed_epoch } => {
                    format!("node {} (stale since epoch {missed_epoch})", r.node)
                }
                other => format!("node {} ({other:?})", r.node),
            })
            .collect();
        if !force {
            return Err(format!(
                "volume {} has no leg in sync: {}; attaching would serve stale data (attach --force accepts the loss)",
                v.name,
                stale.join(", ")
            ));
        }
    }
    v.epoch += 1;
    if v.attachment.is_some() {
        // Forced away from another node: its mount is gone with it.
        v.mount_path = None;
    }
    v.attachment = Some(Attachment {
        node,
        epoch: v.epoch,
        by_mount,
        state: if v.repl > 1 {
            AttachState::Attaching
        } else {
            AttachState::Attached
        },
    });
    Ok(())
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
        v.mount_path = None;
        v.attachment = None;
    } else {
        a.state = AttachState::Detaching;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::types::Replica;

    fn volume(repl: u8) -> Volume {
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
                pool: format!("p{n}"),
                thin_id: 1,
                meta_thin_id: Some(2),
                state: ReplicaState::Up,
                serving_epoch: 0,
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
