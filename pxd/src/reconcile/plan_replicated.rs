//! Planning for replicated volumes (DESIGN §5), pure like the rest of the planner:
//! - on each replica node, the leg (metadata and data thins), its export to the attach node
//!   under the current epoch, every older export removed, then the epoch recorded as served;
//! - on the attach node, a connection to each remote leg, the legs split and joined by
//!   raid1, then crypt, filesystem and mount as for any volume;
//! - exports and controllers nothing asks for any more, removed.

use crate::kernel::dm::node_path;
use crate::plan::crypt::plan_crypt;
use crate::plan::names::{host_nqn, leg_nqn, parse_leg_nqn, DeviceName, Id, Kind, Role};
use crate::plan::raid::LegHealth;
use crate::plan::replica::{
    leg_meta_name, leg_split_names, leg_thins, plan_leg_export, plan_leg_split, plan_local_split,
    plan_raid, LEG_HEAD,
};
use crate::plan::table::{DevRef, DevicePlan};
use crate::plan::thin::plan_thin;
use crate::reconcile::desired::{
    AttachLeg, AttachedVolume, CheckPhase, LegState, NodeState, VolumeState,
};
use crate::reconcile::plan_volumes::{managed_mounts, thin_id};
use crate::reconcile::steps::{Observed, PlanError, Step};
use crate::volume::spec::Fs;
use devicemapper::Sectors;
use std::collections::BTreeSet;
use std::path::PathBuf;

/// A leg's devices, lowest first: metadata thin, data thin, and the device nvmet exports
/// (both joined).
pub fn leg_stack(node: &Id, v: &VolumeState, leg: &LegState) -> Result<Vec<DevicePlan>, PlanError> {
    let vid = Id::object(&v.id)?;
    let pool = Id::object(&v.pool)?;
    let size = Sectors(v.size_bytes / 512);
    let thin = |id: u64, length: Sectors| {
        plan_thin(node, &pool, &vid, thin_id(&v.id, id)?, length).map_err(|source| {
            PlanError::Thin {
                volume: v.id.clone(),
                source,
            }
        })
    };
    let mut meta = thin(leg.meta_thin_id, LEG_HEAD)?;
    meta.name.role = Some(Role::Meta);
    // The device nvmet exports stays while the volume lives: an old epoch's unlinked export
    // keeps it open.
    Ok(vec![
        meta,
        thin(v.thin_id, size)?,
        plan_leg_export(node, &vid, size),
    ])
}

/// The attach node a leg is exported to, while the volume is attached on another node.
fn exported(leg: &LegState) -> Option<&str> {
    leg.export_to.as_deref().filter(|_| leg.epoch > 0)
}

fn replication_error(volume: &str, reason: impl Into<String>) -> PlanError {
    PlanError::Replication {
        volume: volume.to_owned(),
        reason: reason.into(),
    }
}

/// The steps that keep this node's leg of `v` up and served to the current epoch only.
pub(super) fn leg_steps(
    steps: &mut Vec<Step>,
    desired: &NodeState,
    v: &VolumeState,
    leg: &LegState,
    stack: &[DevicePlan],
    observed: &Observed,
) -> Result<(), PlanError> {
    let node = &Id::node(&desired.node)?;
    let pool = &Id::object(&v.pool)?;
    let present = |p: &DevicePlan| observed.devices.contains_key(&p.name.to_string());
    for (plan, id) in stack.iter().zip([leg.meta_thin_id, v.thin_id]) {
        if !present(plan) {
            steps.push(Step::CreateThinId {
                pool: pool.clone(),
                thin_id: thin_id(&v.id, id)?,
            });
        }
    }
    if !stack.iter().all(present) {
        steps.push(Step::Activate {
            volume: v.id.clone(),
            plans: stack.to_vec(),
        });
    }
    let vid = Id::object(&v.id)?;
    let raid = DeviceName::new(node, Kind::Raid, &vid, None).to_string();
    let zombie = observed.devices.contains_key(&raid) && desired.attached(&v.id).is_none();
    let fenced: Vec<&DevicePlan> = stack[..2]
        .iter()
        .filter(|p| observed.fenced.contains(&p.name.to_string()))
        .collect();
    let want = match exported(leg) {
        Some(to) => Some((leg_nqn(node, &vid, leg.epoch), host_nqn(&Id::node(to)?))),
        None => None,
    };
    // An older epoch's export stays reachable while the old attach node may still write
    // (see `NodeState::takeover_holds`); the new epoch waits for it to go.
    let older_linked = observed.exports.iter().any(|e| {
        parse_leg_nqn(&e.nqn).is_some_and(|(n, x, _)| n == *node && x == vid)
            && want.as_ref().is_none_or(|w| w.0 != e.nqn)
            && !e.ports.is_empty()
    });
    if older_linked && desired.takeover_holds.contains(&v.id) {
        return Ok(());
    }
    // Fence first: every other epoch's export goes before this one is served.
    unexport_steps(
        steps,
        node,
        v,
        want.as_ref().map(|w| w.0.as_str()),
        false,
        observed,
    )?;
    if zombie {
        // This node's old raid still sits on the leg: it is served to no one until that
        // stack is gone.
        return Ok(());
    }
    if !fenced.is_empty() && !observed.devices.contains_key(&raid) {
        steps.push(Step::Unfence {
            volume: v.id.clone(),
            plans: fenced.into_iter().cloned().collect(),
        });
    }
    if let Some((nqn, host)) = want {
        let port = desired
            .nvme_addr
            .ok_or_else(|| replication_error(&v.id, "this node has no NVMe/TCP address"))?;
        let device = stack[stack.len() - 1].name.clone();
        let path = node_path(&device.dm_name());
        let in_place = observed.exports.iter().any(|e| {
            e.nqn == nqn
                && e.enabled
                && e.device == path
                && e.hosts == [host.clone()]
                && e.ports.contains(&port)
        });
        if !in_place {
            steps.push(Step::Export {
                volume: v.id.clone(),
                nqn,
                device,
                host,
                port,
            });
        }
    }
    if leg.epoch > 0 && leg.serving < leg.epoch {
        steps.push(Step::Serve {
            volume: v.id.clone(),
            epoch: leg.epoch,
        });
    }
    Ok(())
}

/// Removes every export of this node's leg of `v` except `keep`.
/// With `whole`, removes every export of this node's leg of `v` (the volume is going);
/// otherwise unlinks every export but `keep` from its ports. An unlinked export can no longer
/// be reached: its controllers are torn down and the host's reconnects are refused, so an
/// old attach node holds its writes to this leg (and fails them when its lease runs out).
/// It is not removed while the volume lives: disabling its namespace would tell a host still
/// connected that the namespace is gone, and its raid would fail the leg and complete the
/// write on its other legs alone.
pub(super) fn unexport_steps(
    steps: &mut Vec<Step>,
    node: &Id,
    v: &VolumeState,
    keep: Option<&str>,
    whole: bool,
    observed: &Observed,
) -> Result<(), PlanError> {
    let vid = Id::object(&v.id)?;
    for e in &observed.exports {
        let ours = parse_leg_nqn(&e.nqn).is_some_and(|(n, x, _)| n == *node && x == vid);
        if !ours || Some(e.nqn.as_str()) == keep {
            continue;
        }
        if whole {
            steps.push(Step::Unexport {
                volume: v.id.clone(),
                nqn: e.nqn.clone(),
            });
        } else if !e.ports.is_empty() {
            steps.push(Step::Unlink {
                volume: v.id.clone(),
                nqn: e.nqn.clone(),
            });
        }
    }
    Ok(())
}

/// Exports of this node's legs of volumes it no longer holds.
pub(super) fn orphan_exports(node: &Id, desired: &NodeState, observed: &Observed) -> Vec<Step> {
    observed
        .exports
        .iter()
        .filter_map(|e| {
            let (n, vid, _) = parse_leg_nqn(&e.nqn)?;
            (n == *node && desired.volume(vid.as_str()).is_none()).then(|| Step::Unexport {
                volume: vid.to_string(),
                nqn: e.nqn.clone(),
            })
        })
        .collect()
}

/// Controllers of volumes no longer attached here. They go before the devices on them:
/// such a stack is a fenced one (its attachment moved or was forced off), whose held
/// writes must fail rather than hold up its removal or complete anywhere. Except a
/// controller that is not live under a volume this node holds a leg of: its held writes
/// may be on that leg already, and failing them on the remote leg would have the raid
/// acknowledge them from the local leg alone. Those stay held.
pub(super) fn orphan_controllers(desired: &NodeState, observed: &Observed) -> Vec<Step> {
    observed
        .controllers
        .iter()
        .filter_map(|c| {
            let (_, vid, _) = parse_leg_nqn(&c.nqn)?;
            let leg_here = desired
                .volume(vid.as_str())
                .is_some_and(|v| v.leg.is_some());
            (desired.attached(vid.as_str()).is_none() && (c.state == "live" || !leg_here)).then(
                || Step::Disconnect {
                    volume: vid.to_string(),
                    controller: c.name.clone(),
                },
            )
        })
        .collect()
}

/// Volumes with a raid on this node that are no longer attached here: the attachment moved
/// (a forced attach elsewhere), was forced off, or this node's lease ran out. Nothing of
/// such a stack may reach a leg again.
pub(super) fn zombies(node: &Id, desired: &NodeState, observed: &Observed) -> BTreeSet<String> {
    observed
        .devices
        .keys()
        .filter_map(|n| n.parse::<DeviceName>().ok())
        .filter(|n| n.node == *node && n.kind == Kind::Raid)
        .map(|n| n.id.to_string())
        .filter(|vid| desired.attached(vid).is_none())
        .collect()
}

/// Fences this node's own leg under each zombie stack, first of all: `error` under its
/// thins, so a write the old raid still issues fails there instead of completing on it.
/// Only thins the zombie stack sits on: a leg made here since (a new replica placed on the
/// old attach node) was never reachable from it, and fencing it would stop its build.
pub(super) fn fence_steps(
    node: &Id,
    zombies: &BTreeSet<String>,
    observed: &Observed,
) -> Result<Vec<Step>, PlanError> {
    let mut out = Vec::new();
    for vid in zombies {
        let vid_id = Id::object(vid)?;
        let of_stack = |n: &DeviceName| {
            n.node == *node
                && n.id == vid_id
                && (n.kind == Kind::Raid || (n.kind == Kind::Leg && n.role.is_some()))
        };
        let under: Vec<devicemapper::Device> = observed
            .lower
            .iter()
            .filter(|(n, _)| n.parse::<DeviceName>().is_ok_and(|n| of_stack(&n)))
            .flat_map(|(_, lower)| lower.iter().copied())
            .collect();
        let (meta, data) = leg_thins(node, &vid_id);
        let devices: Vec<DeviceName> = [meta, data]
            .into_iter()
            .filter(|d| {
                let name = d.to_string();
                let held = observed
                    .devices
                    .get(&name)
                    .is_some_and(|(dev, _)| under.contains(dev));
                held && !observed.fenced.contains(&name)
            })
            .collect();
        if !devices.is_empty() {
            out.push(Step::Fence {
                volume: vid.clone(),
                devices,
            });
        }
    }
    Ok(out)
}

/// Every device the attach side of `av` may have on this node, top first.
fn attach_devices(node: &Id, vid: &Id, av: &AttachedVolume) -> Vec<DeviceName> {
    let mut out = vec![
        DeviceName::new(node, Kind::Crypt, vid, None),
        DeviceName::new(node, Kind::Raid, vid, None),
    ];
    for leg in av.legs.iter().chain(av.building.as_ref().map(|b| &b.leg)) {
        let [meta, next, data] = leg_split_names(node, vid, leg.split);
        out.extend([data, next, meta]);
    }
    out
}

/// The attach side of every replicated volume attached on this node.
pub(super) fn attach_steps(
    steps: &mut Vec<Step>,
    expected: &mut BTreeSet<String>,
    desired: &NodeState,
    observed: &Observed,
) -> Result<(), PlanError> {
    let node = Id::node(&desired.node)?;
    for av in &desired.attached {
        let vid = Id::object(&av.id)?;
        if av.detaching {
            detach_steps(steps, &node, &vid, av, desired, observed);
            continue;
        }
        let Some(plans) = attach_plans(steps, &node, &vid, av, observed)? else {
            // Not every leg can be reached yet: whatever is up stays up.
            expected.extend(
                attach_devices(&node, &vid, av)
                    .iter()
                    .map(|n| n.to_string()),
            );
            continue;
        };
        // A stack of an older epoch still up here (a re-attach here while the old one was
        // not taken down): its splits sit on that epoch's namespaces. It is never taken for
        // this epoch's; the attach waits until it is gone (detach --force, then unmount).
        let raid_up = observed
            .devices
            .contains_key(&DeviceName::new(&node, Kind::Raid, &vid, None).to_string());
        let older = observed
            .controllers
            .iter()
            .any(|c| parse_leg_nqn(&c.nqn).is_some_and(|(_, x, e)| x == vid && e < av.epoch));
        if raid_up && older {
            expected.extend(
                attach_devices(&node, &vid, av)
                    .iter()
                    .map(|n| n.to_string()),
            );
            continue;
        }
        // A stale leg's split devices stay while the raid holds them.
        expected.extend(
            attach_devices(&node, &vid, av)
                .iter()
                .map(|n| n.to_string()),
        );
        let present = |p: &DevicePlan| observed.devices.contains_key(&p.name.to_string());
        if !plans.iter().all(present) {
            steps.push(Step::Activate {
                volume: av.id.clone(),
                plans: plans.clone(),
            });
        } else if !reshape_steps(steps, &node, &vid, av, observed)
            && !raise_steps(steps, &node, &vid, av, observed)?
        {
            dead_leg_steps(steps, av, observed);
            stale_leg_steps(steps, &node, &vid, av, observed)?;
            check_steps(steps, &node, &vid, av, observed);
        }
        if !av.attached {
            steps.push(Step::Attached {
                volume: av.id.clone(),
            });
        }
        let top = &plans[plans.len() - 1].name;
        if !av.formatted && av.fs != Fs::Raw {
            steps.push(Step::Mkfs {
                volume: av.id.clone(),
                device: top.clone(),
                fs: av.fs,
            });
        }
        let mounted: Vec<PathBuf> = managed_mounts(desired, observed, &top.to_string()).collect();
        for m in &mounted {
            if av.mount.as_ref() != Some(m) {
                steps.push(Step::Unmount(m.clone()));
            }
        }
        if let Some(path) = av.mount.as_ref().filter(|p| !mounted.contains(p)) {
            if av.fs != Fs::Raw {
                steps.push(Step::Mount {
                    device: top.clone(),
                    path: path.clone(),
                    fs: av.fs,
                    read_only: false,
                });
            }
        }
        // Controllers of older epochs, and of legs that left the volume: nothing here uses
        // them once this epoch's raid is up without them.
        let gone = |n: &Id| {
            !av.legs
                .iter()
                .chain(av.building.as_ref().map(|b| &b.leg))
                .any(|l| l.node == n.as_str())
        };
        for c in &observed.controllers {
            if parse_leg_nqn(&c.nqn)
                .is_some_and(|(n, x, e)| x == vid && (e != av.epoch || gone(&n)))
            {
                steps.push(Step::Disconnect {
                    volume: av.id.clone(),
                    controller: c.name.clone(),
                });
            }
        }
    }
    Ok(())
}

/// A connect from this node to remote leg `leg` of `av`, as subsystem `nqn`.
fn connect(
    node: &Id,
    av: &AttachedVolume,
    leg: &AttachLeg,
    nqn: String,
) -> Result<Step, PlanError> {
    let addr = leg.addr.ok_or_else(|| {
        replication_error(&av.id, format!("node {} has no NVMe/TCP address", leg.node))
    })?;
    Ok(Step::Connect {
        volume: av.id.clone(),
        nqn,
        addr,
        host: host_nqn(node),
    })
}

/// The attach stack of `av`, lowest first (leg splits, raid, crypt), once every in-sync leg
/// is served at this epoch and reachable; until then `None`, with the connects it needs
/// pushed onto `steps`.
fn attach_plans(
    steps: &mut Vec<Step>,
    node: &Id,
    vid: &Id,
    av: &AttachedVolume,
    observed: &Observed,
) -> Result<Option<Vec<DevicePlan>>, PlanError> {
    let size = Sectors(av.size_bytes / 512);
    let mut legs = Vec::new();
    let mut plans = Vec::new();
    let mut ready = true;
    for leg in &av.legs {
        if !leg.in_sync {
            legs.push(None);
            continue;
        }
        if !leg.serving {
            ready = false;
            continue;
        }
        let index = leg.split;
        if leg.local {
            let split = plan_local_split(node, vid, index);
            legs.push(Some(split.pair(av.meta_slot)));
            plans.extend(split.plans());
            continue;
        }
        let nqn = leg_nqn(&Id::node(&leg.node)?, vid, av.epoch);
        match observed.namespaces.get(&nqn) {
            Some(dev) => {
                let split = plan_leg_split(node, vid, index, *dev, size);
                legs.push(Some(split.pair(av.meta_slot)));
                plans.extend(split.plans());
            }
            None => {
                ready = false;
                if !observed.controllers.iter().any(|c| c.nqn == nqn) {
                    steps.push(connect(node, av, leg, nqn)?);
                }
            }
        }
    }
    if !ready {
        return Ok(None);
    }
    if legs.iter().all(Option::is_none) {
        return Err(replication_error(&av.id, "no leg is in sync"));
    }
    let raid = plan_raid(node, vid, legs, size, av.fresh);
    let lower = raid.name.clone();
    plans.push(raid);
    if av.key.is_some() {
        plans.push(plan_crypt(
            node,
            vid,
            size,
            lower,
            observed.crypt_workqueues,
        ));
    }
    Ok(Some(plans))
}

/// The raid's (metadata on `slot`, data) of `leg` on this node: its split devices, and a
/// local leg's data thin.
fn leg_refs(node: &Id, vid: &Id, leg: &AttachLeg, slot: u8) -> (DevRef, DevRef) {
    let data = if leg.local {
        leg_thins(node, vid).1
    } else {
        leg_split_names(node, vid, leg.split)[2].clone()
    };
    (
        DevRef::Dm(leg_meta_name(node, vid, leg.split, slot)),
        DevRef::Dm(data),
    )
}

/// Legs dropped by `ha-update`: once the raid is idle and in sync on every other leg, it
/// is re-assembled without them on the other metadata slot (nothing is resynced: the legs
/// that stay hold the same data); once it runs so, that is recorded and they leave.
/// Returns whether the raid already runs without them, the record still to come: the
/// places of its legs no longer match the store's, so nothing else is planned for it.
fn reshape_steps(
    steps: &mut Vec<Step>,
    node: &Id,
    vid: &Id,
    av: &AttachedVolume,
    observed: &Observed,
) -> bool {
    let Some(status) = observed.raids.get(&av.id) else {
        return false;
    };
    if !av.legs.iter().any(|l| l.leaving) {
        return false;
    }
    let kept: Vec<&AttachLeg> = av.legs.iter().filter(|l| !l.leaving).collect();
    let next = av.meta_slot ^ 1;
    if status.legs.len() == kept.len() {
        steps.push(Step::Reassembled {
            volume: av.id.clone(),
            slot: next,
        });
        return true;
    }
    let in_sync = av
        .legs
        .iter()
        .zip(&status.legs)
        .all(|(l, h)| l.leaving || (l.in_sync && *h == LegHealth::InSync));
    let ready = status.legs.len() == av.legs.len()
        && status.action == "idle"
        && status.synced == status.total
        && in_sync;
    if ready {
        steps.push(reassemble(node, vid, av, &kept, next, false));
    }
    false
}

/// The re-assembly of `av`'s raid over `legs`, on metadata slot `slot`, with `nosync`.
fn reassemble(
    node: &Id,
    vid: &Id,
    av: &AttachedVolume,
    legs: &[&AttachLeg],
    slot: u8,
    copy_last: bool,
) -> Step {
    let size = Sectors(av.size_bytes / 512);
    let refs = legs
        .iter()
        .map(|l| Some(leg_refs(node, vid, l, slot)))
        .collect();
    Step::Reassemble {
        volume: av.id.clone(),
        raid: plan_raid(node, vid, refs, size, true),
        fresh: legs
            .iter()
            .map(|l| leg_meta_name(node, vid, l.split, slot))
            .collect(),
        slot,
        copy_last,
    }
}

/// Whether the raid of `av` runs idle and whole: every leg in sync in the store and the
/// raid, nothing left to resync. Only such a raid is re-assembled with `nosync`.
fn idle_and_whole(av: &AttachedVolume, status: &crate::plan::raid::RaidStatus) -> bool {
    status.legs.len() == av.legs.len()
        && status.action == "idle"
        && status.synced == status.total
        && av
            .legs
            .iter()
            .zip(&status.legs)
            .all(|(l, h)| l.in_sync && *h == LegHealth::InSync)
}

/// A new leg (`ha-update` raising the count): reached (connected, split) while it is copied;
/// once the copy is ready and the raid idle and whole, the raid is re-assembled with it on
/// the other metadata slot, the copy's last round running while it is suspended. Returns
/// whether the raid already runs with it, the record still to come.
fn raise_steps(
    steps: &mut Vec<Step>,
    node: &Id,
    vid: &Id,
    av: &AttachedVolume,
    observed: &Observed,
) -> Result<bool, PlanError> {
    let (Some(status), Some(building)) = (observed.raids.get(&av.id), av.building.as_ref()) else {
        return Ok(false);
    };
    let next = av.meta_slot ^ 1;
    if status.legs.len() == av.legs.len() + 1 {
        steps.push(Step::Reassembled {
            volume: av.id.clone(),
            slot: next,
        });
        return Ok(true);
    }
    let new = &building.leg;
    if !new.serving {
        return Ok(false);
    }
    let size = Sectors(av.size_bytes / 512);
    let split = if new.local {
        plan_local_split(node, vid, new.split)
    } else {
        let nqn = leg_nqn(&Id::node(&new.node)?, vid, av.epoch);
        let Some(dev) = observed.namespaces.get(&nqn) else {
            if !observed.controllers.iter().any(|c| c.nqn == nqn) {
                steps.push(connect(node, av, new, nqn)?);
            }
            return Ok(false);
        };
        plan_leg_split(node, vid, new.split, *dev, size)
    };
    let plans = split.plans();
    if !plans
        .iter()
        .all(|p| observed.devices.contains_key(&p.name.to_string()))
    {
        steps.push(Step::Activate {
            volume: av.id.clone(),
            plans,
        });
        return Ok(false);
    }
    if building.ready && idle_and_whole(av, status) {
        let all: Vec<&AttachLeg> = av.legs.iter().chain([new]).collect();
        steps.push(reassemble(node, vid, av, &all, next, true));
    }
    Ok(false)
}

/// Legs in sync by the store that the raid shows dead: an I/O error took them out (a drive
/// error under a local leg, or a remote one's namespace failing its I/O), and the raid went
/// on without them at once; or that its table lacks. They are recorded stale, so that no
/// attach starts from them. Only while another leg is in sync in both the store and the
/// raid: the store never records its last leg in sync stale.
/// A remote leg that holds writes is not among them: it shows alive until the leg watch has
/// recorded it stale and dropped its controller.
fn dead_leg_steps(steps: &mut Vec<Step>, av: &AttachedVolume, observed: &Observed) {
    let Some(status) = observed.raids.get(&av.id) else {
        return;
    };
    let in_sync = |i: usize| {
        av.legs.get(i).is_some_and(|l| l.in_sync) && status.legs.get(i) == Some(&LegHealth::InSync)
    };
    for (i, (leg, health)) in av.legs.iter().zip(&status.legs).enumerate() {
        let another = (0..av.legs.len()).any(|j| j != i && in_sync(j));
        if leg.in_sync && another && matches!(health, LegHealth::Dead | LegHealth::Absent) {
            steps.push(Step::LegDown {
                volume: av.id.clone(),
                leg: leg.node.clone(),
            });
        }
    }
}

/// A raid check asked for: started once the raid is idle with every leg in sync (md checks
/// only a clean array, and a resync would cut it short), finished when md goes idle again.
fn check_steps(
    steps: &mut Vec<Step>,
    node: &Id,
    vid: &Id,
    av: &AttachedVolume,
    observed: &Observed,
) {
    let Some(status) = observed.raids.get(&av.id) else {
        return;
    };
    let idle = status.action == "idle";
    // Every leg in sync in the store and alive in the raid (a running check shows its own
    // progress in the sync ratio), and, for a start or a result, nothing left to resync.
    let legs_whole =
        status.legs.iter().all(|l| *l == LegHealth::InSync) && av.legs.iter().all(|l| l.in_sync);
    let clean = legs_whole && status.is_clean();
    match av.check {
        Some(CheckPhase::Asked) if idle && clean => steps.push(Step::StartCheck {
            volume: av.id.clone(),
            raid: DeviceName::new(node, Kind::Raid, vid, None),
        }),
        // Finished: md stops a check early when a leg fails, and a re-add makes a new md
        // whose count is 0, so a count is taken only from a raid that stayed clean.
        Some(CheckPhase::Running) if idle && clean => steps.push(Step::CheckDone {
            volume: av.id.clone(),
            mismatches: status.mismatches,
        }),
        // Cut short: asked again, to start once the raid is clean.
        Some(CheckPhase::Running) if !legs_whole => steps.push(Step::CheckCutShort {
            volume: av.id.clone(),
        }),
        _ => {}
    }
}

/// Legs out of sync on a live raid. Until its node serves this epoch again, a stale leg's
/// controller goes (the store records it stale first, so the writes it held complete on the
/// legs in sync). Once served, it reconnects, is taken back into the raid, resyncs from the
/// bitmap, and is recorded up when dm-raid shows it in sync.
fn stale_leg_steps(
    steps: &mut Vec<Step>,
    node: &Id,
    vid: &Id,
    av: &AttachedVolume,
    observed: &Observed,
) -> Result<(), PlanError> {
    let size = Sectors(av.size_bytes / 512);
    let status = observed.raids.get(&av.id);
    // A re-add suspends the raid, which waits for every write in flight: never while a leg
    // in sync holds writes (its controller not live), or the pass would wait with them.
    let holding = av.legs.iter().any(|l| {
        l.in_sync && !l.local && {
            let nqn = Id::node(&l.node).map(|n| leg_nqn(&n, vid, av.epoch));
            !observed
                .controllers
                .iter()
                .any(|c| nqn.as_ref().is_ok_and(|q| *q == c.nqn) && c.state == "live")
        }
    });
    // Stale legs already back in the raid (resyncing), and those to take back now.
    let mut rejoined = BTreeSet::new();
    let mut rejoining = Vec::new();
    for (i, leg) in av.legs.iter().enumerate() {
        if leg.in_sync || leg.local {
            continue;
        }
        let index = leg.split;
        let splits = leg_split_names(node, vid, index);
        let present = |d: &DeviceName| observed.devices.contains_key(&d.to_string());
        let fenced = |d: &DeviceName| observed.fenced.contains(&d.to_string());
        // Taken out of the raid's use until a re-add: absent, or `error` under it.
        let out = splits.iter().all(|d| !present(d) || fenced(d));
        let nqn = leg_nqn(&Id::node(&leg.node)?, vid, av.epoch);
        let controller = observed.controllers.iter().find(|c| c.nqn == nqn);
        if !leg.serving {
            // Recorded stale: its controller goes (what it held fails on it, and completes
            // on the legs in sync), then `error` under its splits, so that nothing reaches
            // it again, whatever the raid shows, until it is re-added.
            if let Some(c) = controller {
                steps.push(Step::Disconnect {
                    volume: av.id.clone(),
                    controller: c.name.clone(),
                });
            }
            let live: Vec<DeviceName> = splits
                .iter()
                .filter(|d| present(d) && !fenced(d))
                .cloned()
                .collect();
            if !live.is_empty() {
                steps.push(Step::Fence {
                    volume: av.id.clone(),
                    devices: live,
                });
            }
            continue;
        }
        let Some(dev) = observed.namespaces.get(&nqn) else {
            if controller.is_none() {
                steps.push(connect(node, av, leg, nqn)?);
            }
            continue;
        };
        let health = status.and_then(|s| s.legs.get(i).copied());
        let readd =
            out || matches!(health, Some(LegHealth::Dead | LegHealth::Absent)) || health.is_none();
        if !readd {
            // Re-added at this epoch: up once dm-raid has it in sync. It stays in the table
            // of any other leg's re-add meanwhile.
            rejoined.insert(i);
            if health == Some(LegHealth::InSync) && status.is_some_and(|s| s.synced == s.total) {
                steps.push(Step::LegUp {
                    volume: av.id.clone(),
                    leg: leg.node.clone(),
                });
            }
            continue;
        }
        if holding || !leg.may_rejoin {
            continue;
        }
        rejoining.push((i, plan_leg_split(node, vid, index, *dev, size).plans()));
    }
    // Every leg coming back joins in one table: a table per leg would leave out the others.
    if !rejoining.is_empty() {
        let legs = av
            .legs
            .iter()
            .enumerate()
            .map(|(j, l)| {
                (l.in_sync || rejoined.contains(&j) || rejoining.iter().any(|(r, _)| *r == j))
                    .then(|| leg_refs(node, vid, l, av.meta_slot))
            })
            .collect();
        steps.push(Step::ReAdd {
            volume: av.id.clone(),
            splits: rejoining.into_iter().flat_map(|(_, s)| s).collect(),
            raid: plan_raid(node, vid, legs, size, false),
        });
    }
    Ok(())
}

/// Takes `av`'s attach stack down, top first, then its controllers, then records it.
fn detach_steps(
    steps: &mut Vec<Step>,
    node: &Id,
    vid: &Id,
    av: &AttachedVolume,
    desired: &NodeState,
    observed: &Observed,
) {
    let devices = attach_devices(node, vid, av);
    for d in &devices {
        steps.extend(managed_mounts(desired, observed, &d.to_string()).map(Step::Unmount));
    }
    for d in devices {
        if observed.devices.contains_key(&d.to_string()) {
            steps.push(Step::Deactivate(d));
        }
    }
    for c in &observed.controllers {
        if parse_leg_nqn(&c.nqn).is_some_and(|(_, x, _)| x == *vid) {
            steps.push(Step::Disconnect {
                volume: av.id.clone(),
                controller: c.name.clone(),
            });
        }
    }
    steps.push(Step::Detached {
        volume: av.id.clone(),
    });
}
