//! Replica count changes of a live volume (`volume ha-update`), in the state machine.
//!
//! Lowering drops one leg. The leg is first marked `leaving`; the attach node re-assembles
//! its raid without it, on fresh metadata in the legs' other slot (DESIGN §5), and records
//! that; only then does the leg leave the volume, and its node frees it. Until the record,
//! every leg keeps its place: a daemon that restarts half-way finds the raid it left.

use super::state::VolumeChange;
use super::types::{AttachState, NodeId, ReplicaState, Volume};

/// Applies a replica count change to `v`; `Ok(false)` for one this module does not handle.
pub(super) fn apply(v: &mut Volume, change: &VolumeChange) -> Result<bool, String> {
    match change {
        VolumeChange::Lower { drop } => lower(v, *drop)?,
        VolumeChange::Reassembled { epoch, slot } => reassembled(v, *epoch, *slot),
        _ => return Ok(false),
    }
    Ok(true)
}

fn lower(v: &mut Volume, drop: NodeId) -> Result<(), String> {
    if v.repl <= 1 {
        return Err(format!(
            "repl: volume {} has 1 replica; a volume keeps 1 to 3",
            v.name
        ));
    }
    let attached = v
        .attachment
        .as_ref()
        .is_some_and(|a| a.state == AttachState::Attached);
    if !attached {
        return Err(format!(
            "volume {} is not attached: lowering its replica count re-assembles the running \
             raid, so attach it first",
            v.name
        ));
    }
    if v.replicas.iter().any(|r| r.state == ReplicaState::Leaving) {
        return Err(format!(
            "volume {}: a replica count change is under way; wait for it to finish",
            v.name
        ));
    }
    if !v.replicas.iter().any(|r| r.node == drop) {
        return Err(format!(
            "node: volume {} has no replica on node {drop}",
            v.name
        ));
    }
    // The legs that stay are joined with `nosync`: they must hold the same data now.
    if let Some(r) = v
        .replicas
        .iter()
        .find(|r| r.node != drop && r.state != ReplicaState::Up)
    {
        return Err(format!(
            "volume {}: {} is not in sync; drop that replica, or wait until it is back in sync",
            v.name,
            super::attach::describe(r, &[])
        ));
    }
    // Every leg keeps the split devices it has on the attach node, whatever its place.
    for (i, r) in v.replicas.iter_mut().enumerate() {
        r.split.get_or_insert(u8::try_from(i).unwrap_or(u8::MAX));
    }
    if let Some(r) = v.replicas.iter_mut().find(|r| r.node == drop) {
        r.state = ReplicaState::Leaving;
    }
    v.repl -= 1;
    Ok(())
}

/// The attach node runs the raid at `epoch` on metadata slot `slot` (the other one) without
/// the leaving legs: they leave the volume, for their nodes to free. Repeating it, or a
/// record of an older attachment, changes nothing.
fn reassembled(v: &mut Volume, epoch: u64, slot: u8) {
    let current = v.attachment.as_ref().is_some_and(|a| a.epoch == epoch);
    let leaving = v.replicas.iter().any(|r| r.state == ReplicaState::Leaving);
    if !current || !leaving || slot != v.meta_slot ^ 1 {
        return;
    }
    v.meta_slot = slot;
    let (leaving, kept) = v
        .replicas
        .drain(..)
        .partition(|r| r.state == ReplicaState::Leaving);
    v.replicas = kept;
    v.dropped.extend(leaving);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::attach::tests::volume;

    /// Volume `db` with 3 legs in sync, attached on node 1 at epoch 1.
    fn attached() -> Volume {
        let mut v = volume(3);
        v.epoch = 1;
        v.attachment = Some(crate::store::types::Attachment {
            node: NodeId(1),
            epoch: 1,
            by_mount: false,
            state: AttachState::Attached,
        });
        v
    }

    fn lower_by(v: &mut Volume, node: u64) -> Result<bool, String> {
        apply(v, &VolumeChange::Lower { drop: NodeId(node) })
    }

    #[test]
    fn a_lowered_leg_leaves_only_once_the_raid_is_reassembled_without_it() {
        let mut v = attached();
        lower_by(&mut v, 2).unwrap();
        assert_eq!(v.repl, 2);
        let states: Vec<ReplicaState> = v.replicas.iter().map(|r| r.state).collect();
        assert_eq!(
            states,
            [ReplicaState::Up, ReplicaState::Leaving, ReplicaState::Up]
        );
        // Every leg keeps its split devices' number, so node 3's stays 2.
        let splits: Vec<Option<u8>> = v.replicas.iter().map(|r| r.split).collect();
        assert_eq!(splits, [Some(0), Some(1), Some(2)]);
        let e = lower_by(&mut v, 3).unwrap_err();
        assert!(e.contains("under way"), "{e}");
        // An older epoch's record, or one on the slot in use, changes nothing.
        let before = v.clone();
        apply(&mut v, &VolumeChange::Reassembled { epoch: 0, slot: 1 }).unwrap();
        apply(&mut v, &VolumeChange::Reassembled { epoch: 1, slot: 0 }).unwrap();
        assert_eq!(v, before);
        apply(&mut v, &VolumeChange::Reassembled { epoch: 1, slot: 1 }).unwrap();
        assert_eq!(v.meta_slot, 1);
        let nodes: Vec<NodeId> = v.replicas.iter().map(|r| r.node).collect();
        assert_eq!(nodes, [NodeId(1), NodeId(3)]);
        assert_eq!(v.replicas[1].split, Some(2));
        assert_eq!(v.dropped.len(), 1);
        assert_eq!(v.dropped[0].node, NodeId(2));
        // Repeated, it changes nothing.
        let after = v.clone();
        apply(&mut v, &VolumeChange::Reassembled { epoch: 1, slot: 1 }).unwrap();
        assert_eq!(v, after);
    }

    #[test]
    fn lowering_is_refused_detached_below_two_or_with_another_leg_out_of_sync() {
        let mut v = volume(3);
        let e = lower_by(&mut v, 2).unwrap_err();
        assert!(
            e.contains("not attached") && e.contains("attach it first"),
            "{e}"
        );
        let mut v = attached();
        v.replicas[2].state = ReplicaState::Stale { missed_epoch: 1 };
        let e = lower_by(&mut v, 2).unwrap_err();
        assert!(
            e.contains("stale since epoch 1") && e.contains("not in sync"),
            "{e}"
        );
        // Dropping the stale one is fine.
        lower_by(&mut v, 3).unwrap();
        let e = lower_by(&mut attached(), 9).unwrap_err();
        assert!(e.contains("no replica on node"), "{e}");
        let mut one = attached();
        one.repl = 1;
        let e = lower_by(&mut one, 2).unwrap_err();
        assert!(e.contains("repl") && e.contains("1 to 3"), "{e}");
    }
}
