//! Planning for volumes: a volume's device stack, and the steps that build a live volume
//! (ids, devices, filesystem, snapshots, copies, growth, mounts) or take a deleted one apart.

use crate::plan::crypt::plan_crypt;
use crate::plan::names::Id;
use crate::plan::table::DevicePlan;
use crate::plan::thin::plan_thin;
use crate::reconcile::desired::{NodeState, Phase, VolumeState};
use crate::reconcile::steps::{Observed, PlanError, Step};
use crate::volume::spec::Fs;
use devicemapper::{Sectors, ThinDevId};
use std::path::PathBuf;

pub(super) fn thin_id(volume: &str, n: u64) -> Result<ThinDevId, PlanError> {
    ThinDevId::new_u64(n).map_err(|_| PlanError::ThinId {
        volume: volume.to_owned(),
        thin_id: n,
    })
}

/// A live volume's stack, lowest first: its thin device, then dm-crypt if it is encrypted.
pub fn volume_stack(
    node: &Id,
    v: &VolumeState,
    workqueues: crate::plan::crypt::Workqueues,
) -> Result<Vec<DevicePlan>, PlanError> {
    let vid = Id::object(&v.id)?;
    let size = Sectors(v.size_bytes / 512);
    if let Some(leg) = &v.leg {
        return crate::reconcile::plan_replicated::leg_stack(node, v, leg);
    }
    let thin = plan_thin(
        node,
        &Id::object(&v.pool)?,
        &vid,
        thin_id(&v.id, v.thin_id)?,
        size,
    )
    .map_err(|source| PlanError::Thin {
        volume: v.id.clone(),
        source,
    })?;
    let mut plans = vec![thin];
    if v.key.is_some() {
        let lower = plans[0].name.clone();
        plans.push(plan_crypt(node, &vid, size, lower, workqueues));
    }
    for p in &mut plans {
        p.read_only = v.read_only;
    }
    Ok(plans)
}

/// Mount points of device `name` under the node's mount root: the mounts pxd made.
pub(super) fn managed_mounts<'a>(
    desired: &'a NodeState,
    observed: &'a Observed,
    name: &str,
) -> impl Iterator<Item = PathBuf> + 'a {
    observed
        .mounts
        .get(name)
        .into_iter()
        .flatten()
        .filter(|m| {
            desired
                .mount_root
                .as_ref()
                .is_some_and(|r| m.starts_with(r))
        })
        .cloned()
}

pub(super) fn live_volume_steps(
    steps: &mut Vec<Step>,
    desired: &NodeState,
    v: &VolumeState,
    pool: &Id,
    stack: Vec<DevicePlan>,
    observed: &Observed,
) -> Result<(), PlanError> {
    let node = Id::node(&desired.node)?;
    let name = |p: &DevicePlan| p.name.to_string();
    // A restore points the volume at a new thin id: the stack on the old one comes down
    // first (a mounted or open one refuses, and the restore waits).
    let replaced = observed
        .thin_ids
        .get(&name(&stack[0]))
        .is_some_and(|id| *id != v.thin_id);
    if replaced {
        for plan in stack.iter().rev() {
            if observed.devices.contains_key(&name(plan)) {
                steps.push(Step::Deactivate(plan.name.clone()));
            }
        }
    }
    let present = |p: &DevicePlan| {
        if replaced {
            return None;
        }
        observed.devices.get(&name(p)).map(|(_, len)| *len)
    };
    if let Some(origin) = &v.origin {
        let live_top_down = match origin.volume.as_deref().and_then(|id| desired.volume(id)) {
            Some(src) => volume_stack(&node, src, observed.crypt_workqueues)?
                .into_iter()
                .rev()
                .map(|p| p.name)
                .filter(|n| observed.devices.contains_key(&n.to_string()))
                .collect(),
            None => Vec::new(),
        };
        steps.push(Step::Copy {
            volume: v.id.clone(),
            pool: pool.clone(),
            source: thin_id(&v.id, origin.thin_id)?,
            thin_id: thin_id(&v.id, v.thin_id)?,
            live_top_down,
        });
    } else if present(&stack[0]).is_none() {
        steps.push(Step::CreateThinId {
            pool: pool.clone(),
            thin_id: thin_id(&v.id, v.thin_id)?,
        });
    }
    if stack.iter().any(|p| present(p).is_none()) {
        steps.push(Step::Activate {
            volume: v.id.clone(),
            plans: stack.clone(),
        });
    } else if stack
        .iter()
        .any(|p| present(p).is_some_and(|len| len < p.length()))
    {
        steps.push(Step::Grow {
            volume: v.id.clone(),
            plans: stack.clone(),
            fs: v.fs,
        });
    }
    if !v.retired.is_empty() {
        for r in &v.retired {
            steps.push(Step::DeleteThinId {
                pool: pool.clone(),
                thin_id: thin_id(&v.id, *r)?,
            });
        }
        steps.push(Step::ForgetRetired {
            volume: v.id.clone(),
        });
    }
    let top = &stack[stack.len() - 1];
    if !v.formatted && v.fs != Fs::Raw && !v.read_only {
        steps.push(Step::Mkfs {
            volume: v.id.clone(),
            device: top.name.clone(),
            fs: v.fs,
        });
    }
    let mounted: Vec<PathBuf> = if replaced {
        Vec::new()
    } else {
        managed_mounts(desired, observed, &name(top)).collect()
    };
    for m in &mounted {
        if v.mount.as_ref() != Some(m) {
            steps.push(Step::Unmount(m.clone()));
        }
    }
    if let Some(path) = &v.mount {
        if v.fs != Fs::Raw && !mounted.contains(path) {
            steps.push(Step::Mount {
                device: top.name.clone(),
                path: path.clone(),
                fs: v.fs,
                read_only: v.read_only,
            });
        }
    }
    for s in &v.snapshots {
        match (s.phase, s.taken) {
            (Phase::Live, false) => steps.push(Step::Snapshot {
                volume: v.id.clone(),
                snapshot: s.id.clone(),
                pool: pool.clone(),
                source: thin_id(&v.id, v.thin_id)?,
                thin_id: thin_id(&v.id, s.thin_id)?,
                live_top_down: stack.iter().rev().map(|p| p.name.clone()).collect(),
            }),
            (Phase::Deleting, _) => {
                steps.push(Step::DeleteThinId {
                    pool: pool.clone(),
                    thin_id: thin_id(&v.id, s.thin_id)?,
                });
                steps.push(Step::Forget {
                    volume: v.id.clone(),
                    snapshot: Some(s.id.clone()),
                });
            }
            (Phase::Live, true) => {}
        }
    }
    Ok(())
}

/// The steps that take a deleted volume apart, top down, then free its thin ids (its
/// snapshots' too) and forget it.
pub(super) fn deleting_steps(
    steps: &mut Vec<Step>,
    desired: &NodeState,
    v: &VolumeState,
    pool: Id,
    stack: &[DevicePlan],
    observed: &Observed,
) -> Result<(), PlanError> {
    let top = stack[stack.len() - 1].name.to_string();
    steps.extend(managed_mounts(desired, observed, &top).map(Step::Unmount));
    for plan in stack.iter().rev() {
        if observed.devices.contains_key(&plan.name.to_string()) {
            steps.push(Step::Deactivate(plan.name.clone()));
        }
    }
    // A dead pool's metadata is never written again: its removal or replacement discards
    // it whole, thin ids and all.
    let dead = desired
        .pools
        .iter()
        .any(|p| p.id == pool.as_str() && p.dead);
    let mut ids: Vec<u64> = v.snapshots.iter().map(|s| s.thin_id).collect();
    ids.extend(v.leg.as_ref().map(|leg| leg.meta_thin_id));
    ids.push(v.thin_id);
    for id in ids.into_iter().filter(|_| !dead) {
        steps.push(Step::DeleteThinId {
            pool: pool.clone(),
            thin_id: thin_id(&v.id, id)?,
        });
    }
    steps.push(Step::Forget {
        volume: v.id.clone(),
        snapshot: None,
    });
    Ok(())
}
