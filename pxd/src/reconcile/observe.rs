//! The kernel half of the diff: which of the node's drives can be opened, and which of its dm
//! devices exist, at what size.

use crate::kernel::dm::{DeviceMapper, DmOpError};
use crate::kernel::nvme_host;
use crate::kernel::nvmet::Nvmet;
use crate::kernel::{drive_health, fs, label};
use crate::plan::names::{host_nqn, parse_leg_nqn, DeviceName, Id, Kind};
use crate::plan::pool::Drive;
use crate::pool::label::Found;
use crate::reconcile::desired::NodeState;
use crate::reconcile::steps::{ControllerSeen, ExportSeen, LabelledDrive, Observed};
use devicemapper::Sectors;

/// Reads what the kernel has for `desired.node`.
pub fn observe(dm: &dyn DeviceMapper, desired: &NodeState) -> Result<Observed, DmOpError> {
    let mut observed = Observed::default();
    if !desired.pools.is_empty() {
        let hints: Vec<_> = desired
            .pools
            .iter()
            .flat_map(|p| p.drives.iter().cloned())
            .collect();
        observed.labelled = labelled_drives(&hints);
    }
    let prefix = format!("pxd-{}-", desired.node);
    let mut mounts = fs::mounts().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "could not read the mount table");
        Default::default()
    });
    for (name, dev) in dm.list()? {
        let name = name.to_string();
        if !name.starts_with(&prefix) {
            continue;
        }
        let dmn = devicemapper::DmNameBuf::new(name.clone()).map_err(|e| DmOpError {
            op: "read",
            device: name.clone(),
            detail: e.to_string(),
            errno: None,
        })?;
        let table = dm.table(&dmn)?;
        let len = table.iter().map(|l| l.1).sum();
        if table.first().is_some_and(|l| l.2 == "error") {
            observed.fenced.insert(name.clone());
        }
        let lower: Vec<devicemapper::Device> = table
            .iter()
            .flat_map(|l| l.3.split_whitespace())
            .filter_map(|t| t.parse().ok())
            .collect();
        if !lower.is_empty() {
            observed.lower.insert(name.clone(), lower);
        }
        if let Some(id) = table
            .first()
            .filter(|l| l.2 == "thin")
            .and_then(|l| l.3.split_whitespace().nth(1))
            .and_then(|id| id.parse().ok())
        {
            observed.thin_ids.insert(name.clone(), id);
        }
        if dm.info(&dmn)?.is_some_and(|i| i.suspended) {
            observed.suspended.insert(name.clone());
        }
        if let Some(m) = mounts.remove(&(dev.major, dev.minor)) {
            observed.mounts.insert(name.clone(), m);
        }
        observed.devices.insert(name, (dev, Sectors(len)));
    }
    observe_drive_health(dm, desired, &mut observed);
    observe_legs(desired, &mut observed);
    observe_raids(dm, desired, &mut observed);
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    observed.crypt_workqueues = desired.crypt_workqueues.on_kernel(&release);
    Ok(observed)
}

/// Every block device of this host with a valid pxd label. Damaged labels are left out here:
/// such a drive is no member, and `pxd drive list` shows why.
pub fn labelled_drives(hints: &[std::path::PathBuf]) -> Vec<LabelledDrive> {
    label::scan(hints)
        .into_iter()
        .filter_map(|s| match s.found {
            Found::Labelled(l) => Some(LabelledDrive {
                path: s.path,
                drive: Drive {
                    dev: s.dev,
                    size: Sectors(s.size_bytes / 512),
                },
                label: l,
            }),
            _ => None,
        })
        .collect()
}

/// Which members of this node's live pools fail a read (a drive returning I/O errors).
fn observe_drive_health(dm: &dyn DeviceMapper, desired: &NodeState, observed: &mut Observed) {
    let Ok(node) = Id::node(&desired.node) else {
        return;
    };
    for p in &desired.pools {
        let Ok(pool) = Id::object(&p.id) else {
            continue;
        };
        match drive_health::failing_members(dm, &node, &pool) {
            Ok(failing) if !failing.is_empty() => {
                observed.failing.insert(p.id.clone(), failing);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(pool = %p.id, error = %e, "could not probe its drives"),
        }
    }
}

/// This node's leg exports, its NVMe controllers and their namespaces. On a kernel shared by
/// several nodes (tests), only those naming this node: its NQNs, its host NQN.
fn observe_legs(desired: &NodeState, observed: &mut Observed) {
    let Ok(node) = Id::node(&desired.node) else {
        return;
    };
    if let Ok(nvmet) = Nvmet::open() {
        let ports = nvmet.ports();
        observed.exports = nvmet
            .exports()
            .into_iter()
            .filter(|e| parse_leg_nqn(&e.nqn).is_some_and(|(n, _, _)| n == node))
            .map(|e| ExportSeen {
                ports: ports
                    .iter()
                    .filter(|p| e.ports.contains(&p.id))
                    .map(|p| p.addr)
                    .collect(),
                nqn: e.nqn,
                device: e.device,
                enabled: e.enabled,
                hosts: e.hosts,
            })
            .collect();
    }
    let me = host_nqn(&node);
    observed.controllers = nvme_host::controllers()
        .into_iter()
        .filter(|c| c.host_nqn == me && parse_leg_nqn(&c.subsys_nqn).is_some())
        .map(|c| ControllerSeen {
            name: c.name,
            nqn: c.subsys_nqn,
            state: c.state,
        })
        .collect();
    if !observed.controllers.is_empty() {
        observed.namespaces = nvme_host::namespaces()
            .into_iter()
            .filter(|(nqn, _)| observed.controllers.iter().any(|c| &c.nqn == nqn))
            .map(|(nqn, (_, dev))| (nqn, dev))
            .collect();
    }
}

/// The status of each attached replicated volume's raid that is up.
fn observe_raids(dm: &dyn DeviceMapper, desired: &NodeState, observed: &mut Observed) {
    let Ok(node) = Id::node(&desired.node) else {
        return;
    };
    for a in &desired.attached {
        let Ok(vid) = Id::object(&a.id) else { continue };
        let raid = DeviceName::new(&node, Kind::Raid, &vid, None);
        if !observed.devices.contains_key(&raid.to_string()) {
            continue;
        }
        let status = dm.status(&raid.dm_name()).ok();
        match status.as_ref().and_then(|s| s.first()).map(|l| l.3.parse()) {
            Some(Ok(s)) => {
                observed.raids.insert(a.id.clone(), s);
            }
            Some(Err(e)) => tracing::warn!(device = %raid, error = %e, "unreadable raid status"),
            None => {}
        }
    }
}
