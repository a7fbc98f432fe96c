//! The scrub schedule (`scrub_interval_s` in the cluster options): which of this node's
//! attached replicated volumes it asks a raid check for next. The attach node asks, since
//! only its raid can run the check; it asks for one volume at a time, so scheduled checks
//! never read all of a node's legs at once.

use crate::store::state::ClusterState;
use crate::store::types::{AttachState, NodeId, Phase, ReplicaState, Volume};

/// The volume to ask a check for now, if any: with the schedule on, no check of this
/// node's volumes unfinished, the one whose last check was asked for longest ago (never
/// first), once `interval` has passed since then. `now` is in Unix seconds.
pub fn due(cluster: &ClusterState, node: NodeId, now: u64) -> Option<String> {
    let interval = cluster.options.scrub_interval_s?;
    let mine: Vec<&Volume> = cluster
        .volumes
        .values()
        .filter(|v| checkable_here(v, node))
        .collect();
    if mine
        .iter()
        .any(|v| v.check.as_ref().is_some_and(|c| !c.done()))
    {
        return None;
    }
    let last = |v: &Volume| v.check.as_ref().map(|c| c.requested);
    mine.into_iter()
        .filter(|v| last(v).is_none_or(|at| at.saturating_add(interval) <= now))
        .min_by_key(|v| (last(v), v.id.clone()))
        .map(|v| v.id.clone())
}

/// Attached on `node` and in a state a check is taken in: live, replicated, every leg up.
fn checkable_here(v: &Volume, node: NodeId) -> bool {
    v.phase == Phase::Live
        && v.repl >= 2
        && v.replicas.iter().all(|r| r.state == ReplicaState::Up)
        && v.attachment
            .as_ref()
            .is_some_and(|a| a.node == node && a.state == AttachState::Attached)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::types::{Attachment, RaidCheck};

    const HOUR: u64 = 3600;

    fn volume(id: &str, node: u64, checked_at: Option<u64>) -> Volume {
        let mut v = crate::store::attach::tests::volume(2);
        v.id = id.into();
        v.name = format!("vol-{id}");
        v.attachment = Some(Attachment {
            node: NodeId(node),
            epoch: 1,
            by_mount: false,
            state: AttachState::Attached,
        });
        v.check = checked_at.map(|at| RaidCheck {
            requested: at,
            epoch: 1,
            started: true,
            mismatches: Some(0),
        });
        v
    }

    fn cluster(interval: Option<u64>, volumes: Vec<Volume>) -> ClusterState {
        let mut c = ClusterState::default();
        c.options.scrub_interval_s = interval;
        c.volumes = volumes.into_iter().map(|v| (v.id.clone(), v)).collect();
        c
    }

    #[test]
    fn off_by_default_and_never_for_volumes_attached_elsewhere() {
        let c = cluster(None, vec![volume("a", 1, None)]);
        assert_eq!(due(&c, NodeId(1), 100 * HOUR), None);
        let c = cluster(Some(HOUR), vec![volume("a", 2, None)]);
        assert_eq!(due(&c, NodeId(1), 100 * HOUR), None);
        assert_eq!(due(&c, NodeId(2), 100 * HOUR), Some("a".into()));
    }

    #[test]
    fn the_longest_unchecked_volume_goes_first_once_its_interval_passed() {
        let c = cluster(
            Some(HOUR),
            vec![
                volume("recent", 1, Some(10 * HOUR)),
                volume("old", 1, Some(9 * HOUR)),
                volume("never", 1, None),
            ],
        );
        assert_eq!(due(&c, NodeId(1), 10 * HOUR), Some("never".into()));
        let c = cluster(
            Some(HOUR),
            vec![
                volume("recent", 1, Some(10 * HOUR)),
                volume("old", 1, Some(9 * HOUR)),
            ],
        );
        assert_eq!(due(&c, NodeId(1), 10 * HOUR - 1), None);
        assert_eq!(due(&c, NodeId(1), 10 * HOUR), Some("old".into()));
        assert_eq!(due(&c, NodeId(1), 11 * HOUR), Some("old".into()));
    }

    #[test]
    fn one_check_at_a_time_and_none_while_a_leg_is_behind_or_unreplicated() {
        let mut running = volume("running", 1, Some(HOUR));
        running.check.as_mut().unwrap().mismatches = None;
        let c = cluster(Some(HOUR), vec![running.clone(), volume("due", 1, Some(0))]);
        assert_eq!(due(&c, NodeId(1), 10 * HOUR), None);
        let mut stale = volume("stale", 1, None);
        stale.replicas[1].state = ReplicaState::Stale { missed_epoch: 1 };
        let mut single = crate::store::attach::tests::volume(1);
        single.attachment = volume("x", 1, None).attachment;
        let mut detaching = volume("detaching", 1, None);
        detaching.attachment.as_mut().unwrap().state = AttachState::Detaching;
        let c = cluster(Some(HOUR), vec![stale, single, detaching]);
        assert_eq!(due(&c, NodeId(1), 10 * HOUR), None);
    }

    #[test]
    fn out_of_range_intervals_are_refused_by_name() {
        let mut c = ClusterState::default();
        for bad in [0, 59, 400 * 86400] {
            let (r, _) = c.apply(&crate::store::state::Command::SetOptions {
                options: crate::store::types::ClusterOptions {
                    scrub_interval_s: Some(bad),
                    ..Default::default()
                },
            });
            let crate::store::Response::Rejected(why) = r else {
                panic!("{bad} taken");
            };
            assert!(why.starts_with("scrub_interval_s must be 60 to"), "{why}");
        }
        assert_eq!(c.options.scrub_interval_s, None);
    }
}
