//! Planning for pools and for the drives being added to them: which drive answers for each
//! member (by label, never by path), whether a pool is brought up, grown or made fresh, and
//! which step a drive add needs next.

use crate::plan::names::{pool_devices, Id};
use crate::plan::pool::{plan_pool, Drive, PoolSpec};
use crate::reconcile::desired::{JoinPhase, NodeState, PoolState};
use crate::reconcile::steps::{LabelledDrive, Observed, PlanError, Step};
use crate::store::types::NodeId;
use devicemapper::Sectors;
use std::collections::BTreeSet;

/// The members of pool `p` as found on this node's drives, by label: each member's label
/// must name this cluster, node and pool, its uuid and its place. `Err` lists the members
/// (uuid and last known path) no drive answers for.
pub fn assemble(
    cluster: &str,
    node: &Id,
    p: &PoolState,
    observed: &Observed,
) -> Result<Vec<Drive>, Vec<String>> {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for (i, uuid) in p.members.iter().enumerate() {
        let hits: Vec<&LabelledDrive> = observed
            .labelled
            .iter()
            .filter(|d| {
                let l = &d.label;
                l.drive.to_string() == *uuid
                    && l.pool == p.id
                    && l.cluster == cluster
                    && node.as_str().parse::<NodeId>() == Ok(l.node)
                    && l.member as usize == i
            })
            .collect();
        match hits.as_slice() {
            [d] => found.push(d.drive),
            [] => {
                let hint = p.drives.get(i).map(|h| h.display().to_string());
                missing.push(match hint {
                    Some(h) => format!("member {i} (drive {uuid}, last at {h})"),
                    None => format!("member {i} (drive {uuid})"),
                });
            }
            // Two disks with one label (a cloned disk image): pxd cannot tell which holds
            // the pool's blocks, so it uses neither.
            many => {
                let at: Vec<String> = many.iter().map(|d| d.path.display().to_string()).collect();
                missing.push(format!(
                    "member {i} (drive {uuid}, found on {} disks at once: {})",
                    many.len(),
                    at.join(" and ")
                ));
            }
        }
    }
    if missing.is_empty() && !found.is_empty() {
        Ok(found)
    } else {
        Err(missing)
    }
}

/// The next step of each drive add: measure it, or label it once the store placed it.
pub(super) fn joining_steps(desired: &NodeState) -> Vec<Step> {
    let mut steps = Vec::new();
    for j in &desired.joining {
        match &j.phase {
            JoinPhase::Measure => steps.push(Step::MeasureDrive {
                drive: j.id.clone(),
            }),
            // A label the store describes badly is measured again rather than failing the
            // whole pass.
            JoinPhase::Label(spec) => match spec.label() {
                Ok(label) => steps.push(Step::LabelDrive {
                    drive: j.id.clone(),
                    label,
                }),
                Err(_) => steps.push(Step::MeasureDrive {
                    drive: j.id.clone(),
                }),
            },
            _ => {}
        }
    }
    steps
}

/// Each pool's step (up, grown, or made fresh when never activated), with its devices added
/// to `expected`. Returns the pools that will be up: a pool with a missing member is left
/// as the kernel has it, nothing torn down and nothing built on a partial set of drives; so
/// is a dead one (a member fails I/O).
pub(super) fn pool_steps<'a>(
    desired: &'a NodeState,
    observed: &Observed,
    node: &Id,
    steps: &mut Vec<Step>,
    expected: &mut BTreeSet<String>,
) -> Result<BTreeSet<&'a str>, PlanError> {
    let mut pools_up = BTreeSet::new();
    for p in &desired.pools {
        let pool_id = Id::object(&p.id)?;
        if let Some(retire) = &p.retire {
            // Nothing is left on it: its devices come down, the top first, then the
            // leaving member's label goes.
            let live: Vec<_> = pool_devices(node, &pool_id)
                .into_iter()
                .rev()
                .filter(|n| observed.devices.contains_key(&n.to_string()))
                .collect();
            if !live.is_empty() {
                steps.extend(live.into_iter().map(Step::Deactivate));
            } else if !retire.done {
                steps.push(Step::RetireDrive {
                    pool: p.id.clone(),
                    drive: retire.drive.clone(),
                });
            }
            continue;
        }
        for name in pool_devices(node, &pool_id) {
            expected.insert(name.to_string());
        }
        if p.dead {
            // A member fails I/O: the pool is neither brought up nor checked, and what the
            // kernel has of it stays until the drive is replaced or removed.
            continue;
        }
        let Ok(drives) = assemble(&desired.cluster, node, p, observed) else {
            continue;
        };
        let spec = PoolSpec {
            node: node.clone(),
            pool: pool_id.clone(),
            drives,
            chunk: Sectors(p.chunk_sectors),
            features: p.thin,
        };
        let [_, data, _] = pool_devices(node, &pool_id);
        let live_data = observed.devices.get(&data.to_string()).map(|(_, len)| *len);
        let planned_data = plan_pool(&spec).ok().map(|plan| plan.data.length());
        match (live_data, planned_data) {
            (Some(live), Some(planned)) if live < planned => steps.push(Step::GrowPool(spec)),
            _ if !p.activated && p.reformed => steps.push(Step::ReformPool(spec)),
            _ if !p.activated => steps.push(Step::CreatePool(spec)),
            _ => steps.push(Step::EnsurePool(spec)),
        }
        pools_up.insert(p.id.as_str());
    }
    Ok(pools_up)
}
