//! Finishing a drive add that the store recorded: measure the drive, then (once the store
//! gave it a pool and a member slot) wipe its head and write its label. The disk is checked
//! again before anything is written, because disks move between boots: it must still be the
//! one the add named (size, hardware id), unused, and carry no label of a pool member, nor a
//! signature or a foreign or damaged label unless the add was forced. A disk that fails the
//! check fails the add, and nothing is written to it.

use crate::kernel::{block, label};
use crate::pool::benchmark::{self, BenchConfig};
use crate::pool::drive::DriveInfo;
use crate::pool::label::{Found, Label};
use crate::reconcile::desired::{JoinPhase, JoiningDrive, NodeState};
use crate::reconcile::faults::Faults;
use crate::store::types::NodeId;

/// Bytes zeroed at the head of a drive before its label is written: its label area and any
/// old pool metadata there, so a reused disk is never mistaken for a pool to adopt.
pub const WIPE_BYTES: usize = 4 << 20;

/// What the disk at the add's path is, judged against the add. `Ok(true)` if it already
/// carries `wanted` (a crash after the label was written, before it was recorded).
pub fn check_disk(
    j: &JoiningDrive,
    info: &DriveInfo,
    state: &NodeState,
    wanted: Option<&Label>,
) -> Result<bool, String> {
    let path = j.path.display();
    if info.size_bytes != j.size_bytes {
        return Err(format!(
            "the disk at {path} has {} bytes, the one added had {}: it is not the same disk",
            info.size_bytes, j.size_bytes
        ));
    }
    if j.hardware_id.is_some() && info.hardware_id != j.hardware_id {
        return Err(format!(
            "the disk at {path} reports hardware id {:?}, the one added {:?}: it is not the same disk",
            info.hardware_id, j.hardware_id
        ));
    }
    if let Some(why) = &info.in_use {
        return Err(format!("the disk at {path} is in use ({why})"));
    }
    let node: Option<NodeId> = state.node.parse().ok();
    match &info.label {
        Found::Labelled(l) if Some(l) == wanted => return Ok(true),
        Found::Labelled(l) if l.cluster == state.cluster && Some(l.node) == node => {
            let uuid = l.drive.to_string();
            let member = state.pools.iter().any(|p| p.members.contains(&uuid))
                || state.joining.iter().any(|o| o.id == uuid && o.id != j.id);
            if member {
                return Err(format!(
                    "the disk at {path} is drive {uuid} of pool {} already",
                    l.pool
                ));
            }
        }
        Found::Labelled(l) if !j.force => {
            return Err(format!(
                "the disk at {path} carries a foreign pxd label (cluster {}, node {}); add it with --force",
                l.cluster, l.node
            ))
        }
        Found::Damaged(why) if !j.force => {
            return Err(format!(
                "the disk at {path} carries a damaged pxd label ({why}); add it with --force"
            ))
        }
        _ => {}
    }
    match (&info.signature, wanted) {
        // Before the (destructive) benchmark only: after it, what blkid sees is noise.
        (Some(sig), None) if !j.force => Err(format!(
            "the disk at {path} carries a {sig} signature; add it with --force"
        )),
        _ => Ok(false),
    }
}

/// Measures the drive: the phase to record, `Measured` or `Failed`.
pub fn measure(j: &JoiningDrive, state: &NodeState, faults: &Faults) -> JoinPhase {
    let info = match crate::pool::drive::inspect(&j.path) {
        Ok(info) => info,
        Err(e) => return JoinPhase::Failed(e.to_string()),
    };
    if let Err(why) = check_disk(j, &info, state, None) {
        return JoinPhase::Failed(why);
    }
    faults.tick(&format_args!("benchmark {}", j.path.display()));
    let default = BenchConfig::default();
    let cfg = BenchConfig {
        destructive: true,
        duration: state.drive_bench.unwrap_or(default.duration),
        ..default
    };
    match benchmark::run(&j.path, &cfg) {
        Ok(result) => JoinPhase::Measured {
            class: crate::pool::class::classify(&result, &state.thresholds),
            benchmark: (&result).into(),
        },
        Err(e) => JoinPhase::Failed(format!("benchmark {}: {e}", j.path.display())),
    }
}

/// Wipes the drive's head and writes its label (unless it is there already): the phase to
/// record, `Labelled` or `Failed`.
pub fn write_label(
    j: &JoiningDrive,
    wanted: &Label,
    state: &NodeState,
    faults: &Faults,
) -> JoinPhase {
    let info = match crate::pool::drive::inspect(&j.path) {
        Ok(info) => info,
        Err(e) => return JoinPhase::Failed(e.to_string()),
    };
    match check_disk(j, &info, state, Some(wanted)) {
        Ok(true) => return JoinPhase::Labelled,
        Ok(false) => {}
        Err(why) => return JoinPhase::Failed(why),
    }
    faults.tick(&format_args!("wipe the head of {}", j.path.display()));
    if let Err(e) = block::zero_direct(&j.path, 0, WIPE_BYTES) {
        return JoinPhase::Failed(format!("wipe the head of {}: {e}", j.path.display()));
    }
    faults.tick(&format_args!("label {}", j.path.display()));
    match label::write(&j.path, wanted) {
        Ok(()) => JoinPhase::Labelled,
        Err(e) => JoinPhase::Failed(format!("label {}: {e}", j.path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::label::DriveUuid;
    use crate::reconcile::desired::PoolState;
    use devicemapper::Device;

    fn joining(force: bool) -> JoiningDrive {
        JoiningDrive {
            id: DriveUuid([9; 16]).to_string(),
            path: "/dev/vdb".into(),
            size_bytes: 1 << 30,
            hardware_id: Some("disk-1".into()),
            force,
            phase: JoinPhase::Measure,
        }
    }

    fn disk() -> DriveInfo {
        DriveInfo {
            path: "/dev/vdb".into(),
            id: "disk-1".into(),
            dev: Device {
                major: 254,
                minor: 16,
            },
            size_bytes: 1 << 30,
            signature: None,
            in_use: None,
            rotational: false,
            hardware_id: Some("disk-1".into()),
            label: Found::Unlabelled,
        }
    }

    fn state() -> NodeState {
        NodeState {
            node: "00000000000000a1".into(),
            cluster: "c1".into(),
            pools: vec![PoolState {
                id: "p1".into(),
                members: vec![DriveUuid([1; 16]).to_string()],
                drives: vec![],
                activated: true,
                chunk_sectors: 512,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn label(drive: u8, cluster: &str) -> Label {
        Label {
            cluster: cluster.into(),
            node: NodeId(0xa1),
            pool: "p1".into(),
            drive: DriveUuid([drive; 16]),
            member: 0,
            generation: 1,
        }
    }

    #[test]
    fn the_disk_must_still_be_the_one_added() {
        let s = state();
        assert_eq!(check_disk(&joining(false), &disk(), &s, None), Ok(false));
        let mut other = disk();
        other.size_bytes = 2 << 30;
        assert!(check_disk(&joining(false), &other, &s, None)
            .unwrap_err()
            .contains("not the same disk"));
        let mut moved = disk();
        moved.hardware_id = Some("disk-7".into());
        assert!(check_disk(&joining(true), &moved, &s, None)
            .unwrap_err()
            .contains("not the same disk"));
        let mut busy = disk();
        busy.in_use = Some("mounted".into());
        assert!(check_disk(&joining(true), &busy, &s, None)
            .unwrap_err()
            .contains("in use"));
    }

    #[test]
    fn labels_and_signatures_are_judged_as_drive_add_does() {
        let s = state();
        let mut member = disk();
        member.label = Found::Labelled(label(1, "c1"));
        assert!(check_disk(&joining(true), &member, &s, None)
            .unwrap_err()
            .contains("of pool p1 already"));
        let mut foreign = disk();
        foreign.label = Found::Labelled(label(5, "c9"));
        assert!(check_disk(&joining(false), &foreign, &s, None)
            .unwrap_err()
            .contains("foreign"));
        assert_eq!(check_disk(&joining(true), &foreign, &s, None), Ok(false));
        let mut sig = disk();
        sig.signature = Some("ext4".into());
        assert!(check_disk(&joining(false), &sig, &s, None).is_err());
        let wanted = label(9, "c1");
        assert_eq!(
            check_disk(&joining(false), &sig, &s, Some(&wanted)),
            Ok(false),
            "after the benchmark a signature is noise"
        );
        let mut done = disk();
        done.label = Found::Labelled(wanted.clone());
        assert_eq!(
            check_disk(&joining(false), &done, &s, Some(&wanted)),
            Ok(true)
        );
    }
}
