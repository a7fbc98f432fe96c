//! Drives a node may pool: found in sysfs, probed for signatures with libblkid, and checked
//! for use (mounted, held by another device, or opened exclusively by someone else).

use crate::kernel::block;
use devicemapper::Device;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// What pxd knows of one drive.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DriveInfo {
    pub path: PathBuf,
    /// A stable id: the WWID or serial the device reports, else its path.
    pub id: String,
    #[serde(skip)]
    pub dev: Device,
    pub size_bytes: u64,
    /// What libblkid found on it (a filesystem, raid member or partition table), if anything.
    pub signature: Option<String>,
    /// Why it is in use, if it is.
    pub in_use: Option<String>,
    pub rotational: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error("{path}: {detail}")]
    Inspect { path: PathBuf, detail: String },
    #[error("drive {path} is in use ({reason}); pxd never takes a drive in use")]
    InUse { path: PathBuf, reason: String },
    #[error("drive {path} carries a {signature} signature; add it with --force to overwrite it")]
    HasSignature { path: PathBuf, signature: String },
}

/// Whole disks of this host, as sysfs lists them: entries of /sys/block backed by a device
/// (so not loop, dm, md, zram or ram devices, which have no `device` link).
pub fn whole_disks() -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/sys/block")? {
        let e = e?;
        if e.path().join("device").exists() {
            out.push(Path::new("/dev").join(e.file_name()));
        }
    }
    out.sort();
    Ok(out)
}

/// Inspects one drive.
pub fn inspect(path: &Path) -> Result<DriveInfo, DriveError> {
    let err = |detail: String| DriveError::Inspect {
        path: path.to_owned(),
        detail,
    };
    let dev = block::device_of(path).map_err(|e| err(e.to_string()))?;
    let size_bytes = block::size_bytes(path).map_err(|e| err(e.to_string()))?;
    let sys = PathBuf::from(format!("/sys/dev/block/{dev}"));
    let read = |f: &str| {
        std::fs::read_to_string(sys.join(f))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    let id = read("wwid")
        .or_else(|| read("device/wwid"))
        .or_else(|| read("serial"))
        .or_else(|| read("device/serial"))
        .unwrap_or_else(|| path.display().to_string());
    Ok(DriveInfo {
        path: path.to_owned(),
        id,
        dev,
        size_bytes,
        signature: signature(path).map_err(err)?,
        in_use: in_use(path, &sys),
        rotational: read("queue/rotational").as_deref() == Some("1"),
    })
}

/// The first signature libblkid finds: a partition table, a filesystem, a raid or LVM member.
pub fn signature(path: &Path) -> Result<Option<String>, String> {
    use libblkid_rs::BlkidProbe;
    let fail = |what: &str, e: libblkid_rs::BlkidErr| format!("libblkid {what}: {e}");
    let mut probe = BlkidProbe::new_from_filename(path).map_err(|e| fail("open", e))?;
    probe
        .enable_superblocks(true)
        .map_err(|e| fail("superblocks", e))?;
    probe
        .enable_partitions(true)
        .map_err(|e| fail("partitions", e))?;
    probe.do_safeprobe().map_err(|e| fail("probe", e))?;
    for key in ["PTTYPE", "TYPE"] {
        if probe.has_value(key).unwrap_or(false) {
            if let Ok(v) = probe.lookup_value(key) {
                return Ok(Some(v));
            }
        }
    }
    Ok(None)
}

/// Why a drive is in use: something stacked on it (holders, e.g. dm or md), a partition of
/// it, or an exclusive opener (a mount takes one).
fn in_use(path: &Path, sys: &Path) -> Option<String> {
    let holders: Vec<String> = std::fs::read_dir(sys.join("holders"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if !holders.is_empty() {
        return Some(format!("held by {}", holders.join(", ")));
    }
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(path)
    {
        Ok(_) => None,
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            Some("opened exclusively, e.g. mounted or part of another device".into())
        }
        Err(e) => Some(format!("cannot be opened exclusively: {e}")),
    }
}

/// Refuses a drive pxd must not take: one in use always, one with a signature unless forced.
pub fn check_addable(info: &DriveInfo, force: bool) -> Result<(), DriveError> {
    if let Some(reason) = &info.in_use {
        return Err(DriveError::InUse {
            path: info.path.clone(),
            reason: reason.clone(),
        });
    }
    match &info.signature {
        Some(sig) if !force => Err(DriveError::HasSignature {
            path: info.path.clone(),
            signature: sig.clone(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(signature: Option<&str>, in_use: Option<&str>) -> DriveInfo {
        DriveInfo {
            path: "/dev/vdx".into(),
            id: "x".into(),
            dev: Device {
                major: 254,
                minor: 0,
            },
            size_bytes: 1 << 30,
            signature: signature.map(Into::into),
            in_use: in_use.map(Into::into),
            rotational: false,
        }
    }

    #[test]
    fn signatures_need_force_and_drives_in_use_are_never_taken() {
        assert!(check_addable(&info(None, None), false).is_ok());
        let e = check_addable(&info(Some("ext4"), None), false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "drive /dev/vdx carries a ext4 signature; add it with --force to overwrite it"
        );
        assert!(check_addable(&info(Some("ext4"), None), true).is_ok());
        let e = check_addable(&info(None, Some("held by dm-0")), true).unwrap_err();
        assert!(e.to_string().contains("in use (held by dm-0)"), "{e}");
    }
}
