//! Raid checks (scrubs) in the state machine: asked for by anyone, run and finished by the
//! attach node, which records its progress here so any node can tell the result.

use super::state::VolumeChange;
use super::types::{AttachState, Phase, RaidCheck, ReplicaState, Volume};

/// A new attach epoch takes an unfinished check along (it starts again on the new raid); a
/// volume no longer attached drops it.
pub(super) fn follow_attachment(v: &mut Volume) {
    let epoch = v
        .attachment
        .as_ref()
        .filter(|a| a.state != AttachState::Detaching)
        .map(|a| a.epoch);
    match (v.check.as_mut().filter(|c| !c.done()), epoch) {
        (Some(c), Some(epoch)) if c.epoch != epoch => {
            c.epoch = epoch;
            c.started = false;
        }
        (Some(_), None) => v.check = None,
        _ => {}
    }
}

/// Applies a check change to `v`.
pub(super) fn apply(v: &mut Volume, change: &VolumeChange) -> Result<(), String> {
    match change {
        VolumeChange::Check { at } => ask(v, *at),
        VolumeChange::CheckStarted { epoch } => {
            if let Some(c) = v.check.as_mut().filter(|c| c.epoch == *epoch) {
                c.started = true;
            }
            Ok(())
        }
        VolumeChange::CheckCutShort { epoch } => {
            if let Some(c) = v.check.as_mut().filter(|c| c.epoch == *epoch && !c.done()) {
                c.started = false;
            }
            Ok(())
        }
        VolumeChange::CheckDone { epoch, mismatches } => {
            if let Some(c) = v
                .check
                .as_mut()
                .filter(|c| c.epoch == *epoch && c.started && !c.done())
            {
                c.mismatches = Some(*mismatches);
            }
            Ok(())
        }
        other => Err(format!("not a check change: {other:?}")),
    }
}

fn ask(v: &mut Volume, at: u64) -> Result<(), String> {
    if v.phase != Phase::Live {
        return Err(format!("volume {} is being deleted", v.name));
    }
    if v.repl < 2 {
        return Err(format!(
            "repl: volume {} has 1 replica; a check compares the legs of a replicated volume",
            v.name
        ));
    }
    let Some(a) = v
        .attachment
        .as_ref()
        .filter(|a| a.state != AttachState::Detaching)
    else {
        return Err(format!(
            "volume {} is not attached; a check reads every leg through the raid on its attach node: attach it first",
            v.name
        ));
    };
    let behind: Vec<String> = v
        .replicas
        .iter()
        .filter(|r| r.state != ReplicaState::Up)
        .map(|r| r.node.to_string())
        .collect();
    if !behind.is_empty() {
        return Err(format!(
            "volume {}: the leg(s) on node(s) {} are not in sync; a check compares legs in sync, so it waits for their resync or rebuild",
            v.name,
            behind.join(", ")
        ));
    }
    let epoch = a.epoch;
    if v.check
        .as_ref()
        .is_some_and(|c| c.epoch == epoch && !c.done())
    {
        // One under way already: the asker waits for it.
        return Ok(());
    }
    v.check = Some(RaidCheck {
        requested: at,
        epoch,
        started: false,
        mismatches: None,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::types::{Attachment, NodeId};

    /// Volume `db` with `repl` legs in sync, each serving epoch 4.
    fn volume(repl: u8) -> Volume {
        let mut v = crate::store::attach::tests::volume(repl);
        v.replicas.iter_mut().for_each(|r| r.serving_epoch = 4);
        v
    }

    fn attached(v: &mut Volume, epoch: u64) {
        v.attachment = Some(Attachment {
            node: NodeId(1),
            epoch,
            by_mount: false,
            state: AttachState::Attached,
        });
    }

    #[test]
    fn a_check_needs_an_attached_raid_with_every_leg_in_sync() {
        let mut v = volume(1);
        attached(&mut v, 4);
        let e = ask(&mut v, 10).unwrap_err();
        assert!(e.starts_with("repl:") && e.contains("1 replica"), "{e}");
        let mut v = volume(2);
        let e = ask(&mut v, 10).unwrap_err();
        assert!(
            e.contains("not attached") && e.contains("attach it first"),
            "{e}"
        );
        attached(&mut v, 4);
        v.replicas[1].state = ReplicaState::Stale { missed_epoch: 4 };
        let e = ask(&mut v, 10).unwrap_err();
        assert!(
            e.contains(&format!("node(s) {}", NodeId(2))) && e.contains("not in sync"),
            "{e}"
        );
        assert_eq!(v.check, None, "a refused check records nothing");
    }

    #[test]
    fn a_check_runs_at_its_epoch_and_one_under_way_is_kept() {
        let mut v = volume(2);
        attached(&mut v, 4);
        ask(&mut v, 10).unwrap();
        ask(&mut v, 11).unwrap();
        assert_eq!(v.check.as_ref().map(|c| c.requested), Some(10), "kept");
        // An older epoch's news changes nothing; a result needs a start.
        for c in [
            VolumeChange::CheckStarted { epoch: 3 },
            VolumeChange::CheckDone {
                epoch: 4,
                mismatches: 9,
            },
        ] {
            apply(&mut v, &c).unwrap();
        }
        let c = v.check.clone().unwrap();
        assert!(!c.started && !c.done(), "{c:?}");
        apply(&mut v, &VolumeChange::CheckStarted { epoch: 4 }).unwrap();
        apply(
            &mut v,
            &VolumeChange::CheckDone {
                epoch: 4,
                mismatches: 0,
            },
        )
        .unwrap();
        assert_eq!(v.check.as_ref().and_then(|c| c.mismatches), Some(0));
        // Done: the next ask is a new check. A new attach leaves one unfinished behind.
        ask(&mut v, 12).unwrap();
        assert_eq!(
            v.check.as_ref().map(|c| (c.requested, c.done())),
            Some((12, false))
        );
        attached(&mut v, 5);
        ask(&mut v, 13).unwrap();
        assert_eq!(
            v.check.as_ref().map(|c| (c.requested, c.epoch)),
            Some((13, 5))
        );
    }

    #[test]
    fn an_unfinished_check_follows_a_new_attach_and_goes_with_a_detach() {
        let mut v = volume(2);
        attached(&mut v, 4);
        ask(&mut v, 10).unwrap();
        apply(&mut v, &VolumeChange::CheckStarted { epoch: 4 }).unwrap();
        apply(&mut v, &VolumeChange::CheckCutShort { epoch: 4 }).unwrap();
        assert!(!v.check.as_ref().unwrap().started, "cut short: asked again");
        apply(&mut v, &VolumeChange::CheckStarted { epoch: 4 }).unwrap();
        attached(&mut v, 5);
        follow_attachment(&mut v);
        let c = v.check.clone().unwrap();
        assert_eq!((c.requested, c.epoch, c.started), (10, 5, false));
        v.attachment.as_mut().unwrap().state = AttachState::Detaching;
        let e = ask(&mut v, 11).unwrap_err();
        assert!(e.contains("not attached"), "{e}");
        follow_attachment(&mut v);
        assert_eq!(v.check, None, "dropped with the attachment");
    }
}
