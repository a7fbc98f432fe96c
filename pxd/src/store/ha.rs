//! Replica count changes of a live volume (`volume ha-update`), in the state machine.
//!
//! Lowering drops one leg. The leg is first marked `leaving`; the attach node re-assembles
//! its raid without it, on fresh metadata in the legs' other slot (DESIGN §5), and records
//! that; only then does the leg leave the volume, and its node frees it. Until the record,
//! every leg keeps its place: a daemon that restarts half-way finds the raid it left.
//!
//! Raising adds one leg, `building`, and a [`Build`]: the source copies rounds until little
//! is left (`ready`); the attach node suspends its raid, has the last round copied, and
//! re-assembles with the new leg (`joined`); a check must then find every leg equal before
//! the new one is up (`done`), and the source deletes its snapshots.

use super::state::VolumeChange;
use super::types::{
    AttachState, Build, BuildPhase, NodeId, RaidCheck, Replica, ReplicaState, Volume,
};

/// Applies a replica count change to `v`; `Ok(false)` for one this module does not handle
/// (a raise, which needs thin ids: see [`raise`]).
pub(super) fn apply(v: &mut Volume, change: &VolumeChange) -> Result<bool, String> {
    match change {
        VolumeChange::Lower { drop, replace } => lower(v, *drop, *replace)?,
        VolumeChange::Reassembled {
            epoch,
            slot,
            pause_ms,
        } => reassembled(v, *epoch, *slot, *pause_ms),
        VolumeChange::BuildRound {
            rounds,
            allocated_bytes,
            copied_bytes,
            left_bytes,
            rate,
            ready,
        } => {
            if let Some(b) = v.build.as_mut().filter(|b| b.phase == BuildPhase::Copying) {
                b.rounds = *rounds;
                b.allocated_bytes = *allocated_bytes;
                b.copied_bytes = *copied_bytes;
                b.left_bytes = *left_bytes;
                b.rate = *rate;
                b.error = None;
                if *ready {
                    b.phase = BuildPhase::Ready;
                }
            }
        }
        VolumeChange::BuildError { why } => {
            if let Some(b) = v.build.as_mut() {
                b.error = Some(why.clone());
            }
        }
        VolumeChange::BuildCleaned => {
            if v.build
                .as_ref()
                .is_some_and(|b| b.phase == BuildPhase::Done)
            {
                v.last_build = v.build.take();
            }
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// Refuses a change while the raid is attached nowhere, or another change is under way.
/// A replacement's own raise (`replacing`) goes ahead of the refusal of a change under way,
/// and so does the drop that ends an evacuation (`evacuating`).
fn ready_for_change(v: &Volume, what: &str) -> Result<(), String> {
    let attached = v
        .attachment
        .as_ref()
        .is_some_and(|a| a.state == AttachState::Attached);
    if !attached {
        return Err(format!(
            "volume {} is not attached: {what} re-assembles the running raid, so attach it \
             first",
            v.name
        ));
    }
    let leaving = v.replicas.iter().any(|r| r.state == ReplicaState::Leaving);
    if v.build.is_some() || leaving || v.replacing.is_some() || v.evacuating.is_some() {
        return Err(format!(
            "volume {}: a replica count change is under way; wait for it to finish",
            v.name
        ));
    }
    Ok(())
}

/// Every leg keeps the split devices it has on the attach node, whatever its place.
fn pin_splits(v: &mut Volume) {
    for (i, r) in v.replicas.iter_mut().enumerate() {
        r.split.get_or_insert(u8::try_from(i).unwrap_or(u8::MAX));
    }
}

/// Drops the leg on `drop`. With `replace` (a stale leg past the replica timeout) the
/// replica count stays: a new leg takes its place once it is gone. The drop of an
/// evacuated leg, once its successor is up, keeps the count too.
fn lower(v: &mut Volume, drop: NodeId, replace: bool) -> Result<(), String> {
    if v.repl <= 1 {
        return Err(format!(
            "repl: volume {} has 1 replica; a volume keeps 1 to 3",
            v.name
        ));
    }
    let evacuated = v.evacuating == Some(drop) && v.build.is_none();
    if evacuated {
        v.evacuating = None;
        let refused = ready_for_change(v, "dropping the evacuated leg");
        if refused.is_err() {
            v.evacuating = Some(drop);
        }
        refused?;
    } else {
        ready_for_change(v, "lowering its replica count")?;
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
    pin_splits(v);
    if let Some(r) = v.replicas.iter_mut().find(|r| r.node == drop) {
        r.left_behind = r.state != ReplicaState::Up;
        r.state = ReplicaState::Leaving;
    }
    if replace {
        v.replacing = Some(drop);
    } else if !evacuated {
        v.repl -= 1;
    }
    Ok(())
}

/// Where a raise puts the new leg: `node`'s pool `pool`, its data and metadata thins at
/// `thin_id` and `thin_id + 1` there; the source's two snapshot ids on its own pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NewLeg {
    pub node: NodeId,
    pub pool: String,
    pub thin_id: u32,
    pub at: u64,
}

/// The replica a new leg is copied from: one in sync, the attach node's own first (its
/// reads then need no network).
pub(super) fn build_source(v: &Volume) -> Option<&Replica> {
    let attach = v.attachment.as_ref().map(|a| a.node);
    let up = || v.replicas.iter().filter(|r| r.state == ReplicaState::Up);
    up().find(|r| Some(r.node) == attach)
        .or_else(|| up().next())
}

/// Why a leg is added: the count stays for a replacement (the legs are one short of it)
/// and for an evacuation (one leg more until the leg on `from` is dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Why {
    Raise,
    Replace,
    Evacuate { from: NodeId },
}

/// One replica more: the new leg is recorded `building` with the copy it needs, and counts
/// once a check has found it equal to the others. `snap_ids` are free thin ids on the
/// source's pool. An evacuation's raise gives `evacuate`.
pub(super) fn raise(
    v: &mut Volume,
    leg: NewLeg,
    snap_ids: [u32; 2],
    evacuate: Option<NodeId>,
) -> Result<(), String> {
    let replacing = v.replacing.take();
    let why = match (replacing, evacuate) {
        (Some(_), _) => Why::Replace,
        (None, Some(from)) => Why::Evacuate { from },
        (None, None) => Why::Raise,
    };
    let result = add_leg(v, leg, snap_ids, why);
    match result {
        Err(_) => v.replacing = replacing,
        Ok(()) => v.evacuating = evacuate,
    }
    result
}

fn add_leg(v: &mut Volume, leg: NewLeg, snap_ids: [u32; 2], why: Why) -> Result<(), String> {
    ready_for_change(v, "adding a leg")?;
    if let Why::Evacuate { from } = why {
        if !v.replicas.iter().any(|r| r.node == from) {
            return Err(format!(
                "node: volume {} has no replica on node {from} to move",
                v.name
            ));
        }
    }
    let replacing = why == Why::Replace;
    if replacing {
        if v.replicas.len() >= usize::from(v.repl) {
            return Err(format!(
                "volume {} has all its {} replicas: nothing to replace",
                v.name, v.repl
            ));
        }
    } else if v.repl >= 3 && why == Why::Raise {
        return Err(format!(
            "repl: volume {} has {} replicas (limit: 1 to 3)",
            v.name, v.repl
        ));
    }
    if v.repl < 2 && why != Why::Replace {
        return Err(format!(
            "repl: volume {} has 1 replica and no raid to add a leg to; raising a repl 1 \
             volume is not supported yet (limit: 2 or 3)",
            v.name
        ));
    }
    if let Some(r) = v.replicas.iter().find(|r| r.state != ReplicaState::Up) {
        return Err(format!(
            "volume {}: {} is not in sync; a new leg is copied only while every leg is",
            v.name,
            super::attach::describe(r, &[])
        ));
    }
    if v.replicas.iter().any(|r| r.node == leg.node) {
        return Err(format!(
            "node: volume {} has a replica on node {} already",
            v.name, leg.node
        ));
    }
    if let Some(r) = v.dropped.iter().find(|r| r.node == leg.node) {
        return Err(format!(
            "node: volume {}'s dropped replica on node {} is still being freed; try again \
             once it is",
            v.name, r.node
        ));
    }
    let source = build_source(v)
        .map(|r| r.node)
        .ok_or_else(|| format!("volume {} has no replica in sync to copy", v.name))?;
    pin_splits(v);
    // A dropped leg's split devices may still be up on the attach node: never reused.
    let used: Vec<u8> = v
        .replicas
        .iter()
        .chain(&v.dropped)
        .filter_map(|r| r.split)
        .collect();
    let max = crate::plan::names::MAX_LEGS;
    // Before any leg was added, the legs made with the volume took 0 to repl - 1.
    let start = v.last_split.map_or(v.repl, |s| s.saturating_add(1));
    let split = (0..max)
        .map(|i| (start + i) % max)
        .find(|i| !used.contains(i))
        .ok_or_else(|| {
            format!(
                "volume {}: a dropped replica is still being freed; try again once it is",
                v.name
            )
        })?;
    v.last_split = Some(split);
    v.replicas.push(Replica {
        node: leg.node,
        split: Some(split),
        pool: leg.pool,
        thin_id: leg.thin_id,
        meta_thin_id: Some(leg.thin_id + 1),
        state: ReplicaState::Building,
        serving_epoch: 0,
        left_behind: false,
    });
    if why == Why::Raise {
        v.repl += 1;
    }
    let epoch = v.attachment.as_ref().map_or(0, |a| a.epoch);
    v.build = Some(Build {
        source,
        target: leg.node,
        epoch,
        snap_ids,
        phase: BuildPhase::Copying,
        rounds: 0,
        allocated_bytes: 0,
        copied_bytes: 0,
        left_bytes: 0,
        rate: 0,
        started: leg.at,
        pause_ms: None,
        error: None,
    });
    Ok(())
}

/// The attach node runs the raid at `epoch` on metadata slot `slot` (the other one): without
/// the leaving legs, which leave the volume for their nodes to free; or with the new leg,
/// which a check must now find equal to the others. Repeating it, or a record of an older
/// attachment, changes nothing.
fn reassembled(v: &mut Volume, epoch: u64, slot: u8, pause_ms: Option<u64>) {
    let current = v.attachment.as_ref().is_some_and(|a| a.epoch == epoch);
    if !current || slot != v.meta_slot ^ 1 {
        return;
    }
    if let Some(b) = v.build.as_mut().filter(|b| b.phase == BuildPhase::Ready) {
        v.meta_slot = slot;
        b.phase = BuildPhase::Joined;
        b.pause_ms = pause_ms;
        v.check = Some(RaidCheck {
            requested: b.started,
            epoch,
            started: false,
            mismatches: None,
        });
        return;
    }
    if !v.replicas.iter().any(|r| r.state == ReplicaState::Leaving) {
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

/// A build whose raid is gone (a detach, or an attach elsewhere) stops before it joins:
/// its leg leaves the volume for its node to free, the source deletes its snapshots, and
/// the volume is left one leg short, to be replaced under its next attach. A joined leg
/// stays a leg; it is stale in the new attach, as any leg that missed it.
pub(super) fn follow_attachment(v: &mut Volume) {
    let epoch = v
        .attachment
        .as_ref()
        .filter(|a| a.state == AttachState::Attached)
        .map(|a| a.epoch);
    let Some(b) = v.build.as_mut() else { return };
    if epoch == Some(b.epoch) || matches!(b.phase, BuildPhase::Joined | BuildPhase::Done) {
        return;
    }
    b.phase = BuildPhase::Done;
    b.error = Some(format!(
        "stopped: the raid of attach epoch {} it was joining is gone",
        b.epoch
    ));
    let target = b.target;
    let (gone, kept) = v
        .replicas
        .drain(..)
        .partition(|r| r.node == target && r.state == ReplicaState::Building);
    v.replicas = kept;
    v.dropped.extend::<Vec<Replica>>(gone);
    // An evacuation starts again under the next attach, from the leg it was moving;
    // otherwise the count asked for stays and the next attach builds the missing leg again.
    if v.evacuating.take().is_none() {
        v.replacing = Some(target);
    }
}

/// A check finished on a raid with a joined new leg: with every leg equal the leg is up and
/// the build done; otherwise the leg stays `building`, the build stopped with the count.
pub(super) fn checked(v: &mut Volume, mismatches: u64) {
    let Some(b) = v.build.as_mut().filter(|b| b.phase == BuildPhase::Joined) else {
        return;
    };
    if mismatches > 0 {
        b.error = Some(format!(
            "the check after the cut-over found {mismatches} sector(s) differing between the \
             legs: the new leg on node {} is not taken as up (lower the volume by it, then \
             raise it again)",
            b.target
        ));
        return;
    }
    b.phase = BuildPhase::Done;
    let target = b.target;
    if let Some(r) = v.replicas.iter_mut().find(|r| r.node == target) {
        r.state = ReplicaState::Up;
    }
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

    fn reassembled_at(epoch: u64, slot: u8) -> VolumeChange {
        VolumeChange::Reassembled {
            epoch,
            slot,
            pause_ms: None,
        }
    }

    fn lower_by(v: &mut Volume, node: u64) -> Result<bool, String> {
        apply(
            v,
            &VolumeChange::Lower {
                drop: NodeId(node),
                replace: false,
            },
        )
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
        apply(&mut v, &reassembled_at(0, 1)).unwrap();
        apply(&mut v, &reassembled_at(1, 0)).unwrap();
        assert_eq!(v, before);
        apply(&mut v, &reassembled_at(1, 1)).unwrap();
        assert_eq!(v.meta_slot, 1);
        let nodes: Vec<NodeId> = v.replicas.iter().map(|r| r.node).collect();
        assert_eq!(nodes, [NodeId(1), NodeId(3)]);
        assert_eq!(v.replicas[1].split, Some(2));
        assert_eq!(v.dropped.len(), 1);
        assert_eq!(v.dropped[0].node, NodeId(2));
        // Repeated, it changes nothing.
        let after = v.clone();
        apply(&mut v, &reassembled_at(1, 1)).unwrap();
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

    fn new_leg(node: u64) -> NewLeg {
        NewLeg {
            node: NodeId(node),
            pool: format!("p{node}"),
            thin_id: 7,
            at: 100,
        }
    }

    /// Volume `db` with 2 legs in sync (nodes 1 and 2), attached on node 1 at epoch 1.
    fn attached_two() -> Volume {
        let mut v = attached();
        v.replicas.truncate(2);
        v.repl = 2;
        v
    }

    #[test]
    fn a_replacement_never_takes_the_split_number_of_the_leg_just_dropped() {
        let mut v = attached_two();
        let mut splits = Vec::new();
        for (lost, new) in [(2, 3), (3, 2), (2, 3), (3, 2)] {
            apply(
                &mut v,
                &VolumeChange::Lower {
                    drop: NodeId(lost),
                    replace: true,
                },
            )
            .unwrap();
            let slot = v.meta_slot ^ 1;
            apply(&mut v, &reassembled_at(1, slot)).unwrap();
            let dropped = v.dropped.pop().and_then(|r| r.split);
            raise(&mut v, new_leg(new), [9, 10], None).unwrap();
            let split = v.replicas[1].split;
            assert_ne!(split, dropped, "{v:?}");
            splits.push(split);
            v.build = None;
            v.replicas[1].state = ReplicaState::Up;
        }
        assert_eq!(splits, [Some(2), Some(3), Some(1), Some(2)]);
    }

    #[test]
    fn a_raised_leg_is_copied_joined_checked_then_up() {
        let mut v = attached_two();
        raise(&mut v, new_leg(3), [9, 10], None).unwrap();
        assert_eq!(v.repl, 3);
        let new = &v.replicas[2];
        assert_eq!(
            (
                new.node,
                new.state,
                new.split,
                new.thin_id,
                new.meta_thin_id
            ),
            (NodeId(3), ReplicaState::Building, Some(2), 7, Some(8))
        );
        let b = v.build.clone().unwrap();
        // The attach node's own leg is the source: its reads need no network.
        assert_eq!(
            (b.source, b.target, b.epoch, b.phase),
            (NodeId(1), NodeId(3), 1, BuildPhase::Copying)
        );
        let e = raise(&mut v, new_leg(4), [11, 12], None).unwrap_err();
        assert!(e.contains("under way"), "{e}");
        let e = lower(&mut v.clone(), NodeId(2), false).unwrap_err();
        assert!(e.contains("under way"), "{e}");
        let round = |ready| VolumeChange::BuildRound {
            rounds: 1,
            allocated_bytes: 200,
            copied_bytes: 200,
            left_bytes: 4,
            rate: 50,
            ready,
        };
        apply(&mut v, &round(false)).unwrap();
        assert_eq!(v.build.as_ref().unwrap().phase, BuildPhase::Copying);
        // No re-assembly is taken before the copy is ready.
        apply(&mut v, &reassembled_at(1, 1)).unwrap();
        assert_eq!(v.meta_slot, 0);
        apply(&mut v, &round(true)).unwrap();
        assert_eq!(v.build.as_ref().unwrap().phase, BuildPhase::Ready);
        apply(
            &mut v,
            &VolumeChange::Reassembled {
                epoch: 1,
                slot: 1,
                pause_ms: Some(420),
            },
        )
        .unwrap();
        let b = v.build.clone().unwrap();
        assert_eq!(
            (b.phase, b.pause_ms, v.meta_slot),
            (BuildPhase::Joined, Some(420), 1)
        );
        assert_eq!(
            v.check.as_ref().map(|c| (c.epoch, c.started)),
            Some((1, false))
        );
        assert_eq!(v.replicas[2].state, ReplicaState::Building);
        // A check that finds a difference keeps it out.
        let mut bad = v.clone();
        checked(&mut bad, 8);
        assert_eq!(bad.replicas[2].state, ReplicaState::Building);
        assert!(bad.build.unwrap().error.unwrap().contains("8 sector(s)"));
        checked(&mut v, 0);
        assert_eq!(v.replicas[2].state, ReplicaState::Up);
        assert_eq!(v.build.as_ref().unwrap().phase, BuildPhase::Done);
        apply(&mut v, &VolumeChange::BuildCleaned).unwrap();
        assert_eq!(v.build, None);
        assert_eq!(v.last_build.as_ref().map(|b| b.pause_ms), Some(Some(420)));
    }

    #[test]
    fn a_raise_is_refused_at_three_detached_onto_a_holder_or_with_a_leg_behind() {
        let e = raise(&mut attached(), new_leg(4), [9, 10], None).unwrap_err();
        assert!(e.contains("repl") && e.contains("1 to 3"), "{e}");
        let mut detached = attached_two();
        detached.attachment = None;
        let e = raise(&mut detached, new_leg(3), [9, 10], None).unwrap_err();
        assert!(e.contains("not attached"), "{e}");
        let e = raise(&mut attached_two(), new_leg(2), [9, 10], None).unwrap_err();
        assert!(e.contains("has a replica on node"), "{e}");
        let mut behind = attached_two();
        behind.replicas[1].state = ReplicaState::Stale { missed_epoch: 1 };
        let e = raise(&mut behind, new_leg(3), [9, 10], None).unwrap_err();
        assert!(e.contains("not in sync"), "{e}");
    }

    #[test]
    fn an_evacuated_leg_stays_until_its_successor_is_up_and_the_count_never_moves() {
        let mut v = attached_two();
        let e = raise(&mut v.clone(), new_leg(3), [9, 10], Some(NodeId(4))).unwrap_err();
        assert!(
            e.contains("no replica on node") && e.contains("to move"),
            "{e}"
        );
        raise(&mut v, new_leg(3), [9, 10], Some(NodeId(2))).unwrap();
        assert_eq!((v.repl, v.replicas.len()), (2, 3));
        assert_eq!(v.evacuating, Some(NodeId(2)));
        assert_eq!(v.replicas[2].state, ReplicaState::Building);
        // No other change meanwhile, nor the drop before the new leg is up.
        let e = lower(&mut v.clone(), NodeId(2), false).unwrap_err();
        assert!(e.contains("under way"), "{e}");
        v.build.as_mut().unwrap().phase = BuildPhase::Joined;
        checked(&mut v, 0);
        apply(&mut v, &VolumeChange::BuildCleaned).unwrap();
        let e = lower(&mut v.clone(), NodeId(3), false).unwrap_err();
        assert!(e.contains("under way"), "{e}");
        let e = raise(&mut v.clone(), new_leg(4), [9, 10], None).unwrap_err();
        assert!(e.contains("under way"), "{e}");
        // The evacuated leg leaves as a lowered one does, and the count stays 2.
        lower_by(&mut v, 2).unwrap();
        assert_eq!((v.repl, v.evacuating), (2, None));
        assert_eq!(v.replicas[1].state, ReplicaState::Leaving);
        apply(&mut v, &reassembled_at(1, 1)).unwrap();
        let nodes: Vec<NodeId> = v.replicas.iter().map(|r| r.node).collect();
        assert_eq!(nodes, [NodeId(1), NodeId(3)]);
        assert_eq!(v.dropped[0].node, NodeId(2));
    }

    #[test]
    fn an_evacuation_whose_raid_goes_starts_again_under_the_next_attach() {
        let mut v = attached();
        raise(&mut v, new_leg(4), [9, 10], Some(NodeId(3))).unwrap();
        assert_eq!((v.repl, v.replicas.len()), (3, 4));
        v.attachment = None;
        follow_attachment(&mut v);
        assert_eq!((v.repl, v.replicas.len()), (3, 3));
        assert_eq!((v.evacuating, v.replacing), (None, None));
        assert_eq!(v.dropped[0].node, NodeId(4));
    }

    #[test]
    fn a_build_whose_raid_goes_stops_and_its_leg_is_freed() {
        let mut v = attached_two();
        raise(&mut v, new_leg(3), [9, 10], None).unwrap();
        v.attachment = None;
        follow_attachment(&mut v);
        let b = v.build.clone().unwrap();
        assert_eq!(b.phase, BuildPhase::Done);
        assert!(b.error.unwrap().contains("stopped"));
        assert_eq!((v.repl, v.replicas.len()), (3, 2));
        assert_eq!(v.dropped[0].node, NodeId(3));
        assert_eq!(v.replacing, Some(NodeId(3)));
    }

    #[test]
    fn a_stale_leg_past_the_timeout_is_dropped_then_replaced_at_the_same_count() {
        let mut v = attached_two();
        v.replicas[1].state = ReplicaState::Stale { missed_epoch: 1 };
        apply(
            &mut v,
            &VolumeChange::Lower {
                drop: NodeId(2),
                replace: true,
            },
        )
        .unwrap();
        assert_eq!(v.repl, 2);
        assert!(v.replicas[1].left_behind);
        let e = raise(&mut v, new_leg(3), [9, 10], None).unwrap_err();
        assert!(e.contains("under way"), "{e}");
        apply(&mut v, &reassembled_at(1, 1)).unwrap();
        assert_eq!((v.replicas.len(), v.replacing), (1, Some(NodeId(2))));
        // An operator's change waits for the replacement.
        let e = lower(&mut v.clone(), NodeId(1), false).unwrap_err();
        assert!(e.contains("under way"), "{e}");
        raise(&mut v, new_leg(3), [9, 10], None).unwrap();
        assert_eq!((v.repl, v.replicas.len(), v.replacing), (2, 2, None));
        assert_eq!(v.replicas[1].state, ReplicaState::Building);
        assert_eq!(v.build.as_ref().map(|b| b.source), Some(NodeId(1)));
    }
}
