//! The kernel half of the diff: which of the node's drives can be opened, and which of its dm
//! devices exist, at what size.

use crate::kernel::dm::{DeviceMapper, DmOpError};
use crate::kernel::{fs, label};
use crate::plan::crypt::kernel_has_workqueue_bypass;
use crate::plan::pool::Drive;
use crate::pool::label::Found;
use crate::reconcile::desired::NodeState;
use crate::reconcile::steps::{LabelledDrive, Observed};
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
        match fs::mountpoints_of(dev.major, dev.minor) {
            Ok(m) if !m.is_empty() => {
                observed.mounts.insert(name.clone(), m);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(device = %name, error = %e, "could not read its mounts"),
        }
        observed.devices.insert(name, (dev, Sectors(len)));
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    observed.bypass_workqueues = kernel_has_workqueue_bypass(&release);
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
