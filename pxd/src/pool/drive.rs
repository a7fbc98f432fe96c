//! Drives a node may pool: found in sysfs, probed for signatures with libblkid, and checked
//! for use (mounted, held by another device, or opened exclusively by someone else).

pub use crate::kernel::block::whole_disks;
use crate::kernel::{blkid, block};
use devicemapper::Device;
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
    #[error("path: {path} is not a whole disk of this node (see pxd drive list)")]
    NotADisk { path: PathBuf },
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
        signature: blkid::signature(path).map_err(err)?,
        in_use: block::in_use(path),
        rotational: read("queue/rotational").as_deref() == Some("1"),
    })
}

/// A drive as the API and CLI show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DriveView {
    pub path: PathBuf,
    pub id: String,
    pub size_bytes: u64,
    pub signature: Option<String>,
    pub in_use: Option<String>,
    pub rotational: bool,
    /// Blank and unused: `pxd drive add` takes it without `--force`.
    pub candidate: bool,
    /// Why it could not be inspected, if it could not.
    pub error: Option<String>,
    /// The pool that holds it and the class it was measured into, when pxd has it.
    #[serde(default)]
    pub pool: Option<String>,
    #[serde(default)]
    pub class: Option<crate::volume::spec::Class>,
}

impl From<DriveInfo> for DriveView {
    fn from(d: DriveInfo) -> Self {
        DriveView {
            candidate: d.signature.is_none() && d.in_use.is_none(),
            path: d.path,
            id: d.id,
            size_bytes: d.size_bytes,
            signature: d.signature,
            in_use: d.in_use,
            rotational: d.rotational,
            error: None,
            pool: None,
            class: None,
        }
    }
}

/// A drive that could not be inspected, listed with the reason rather than left out.
fn unreadable(path: PathBuf, e: DriveError) -> DriveView {
    DriveView {
        path,
        id: String::new(),
        size_bytes: 0,
        signature: None,
        in_use: None,
        rotational: false,
        candidate: false,
        error: Some(e.to_string()),
        pool: None,
        class: None,
    }
}

fn view_of(path: PathBuf) -> DriveView {
    match inspect(&path) {
        Ok(info) => info.into(),
        Err(e) => unreadable(path, e),
    }
}

/// Every whole disk of this host, inspected.
pub fn local_drives() -> std::io::Result<Vec<DriveView>> {
    Ok(whole_disks()?.into_iter().map(view_of).collect())
}

/// [`local_drives`], plus the drives pxd pooled (path, pool, class), marked with their pool;
/// a pooled drive that is no whole disk (a partition, a dm device) is listed too.
pub fn local_drives_with(
    pooled: &[(String, String, crate::volume::spec::Class)],
) -> std::io::Result<Vec<DriveView>> {
    let mut found = local_drives()?;
    for (path, pool, class) in pooled {
        let i = match found
            .iter()
            .position(|d| d.path.as_os_str() == path.as_str())
        {
            Some(i) => i,
            None => {
                found.push(view_of(PathBuf::from(path)));
                found.len() - 1
            }
        };
        found[i].pool = Some(pool.clone());
        found[i].class = Some(*class);
        found[i].candidate = false;
    }
    Ok(found)
}

/// A benchmark of one drive and the class it earns.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DriveBenchmark {
    pub path: PathBuf,
    pub result: crate::pool::benchmark::BenchResult,
    pub class: crate::volume::spec::Class,
}

/// Re-measures one of this node's whole disks, read-only (it may hold data), and classes it
/// with the default thresholds. A path that is not a whole disk of this node is refused.
pub fn benchmark_local(path: &Path) -> Result<DriveBenchmark, DriveError> {
    let disks = whole_disks().map_err(|e| DriveError::Inspect {
        path: path.to_owned(),
        detail: e.to_string(),
    })?;
    if !disks.iter().any(|d| d == path) {
        return Err(DriveError::NotADisk {
            path: path.to_owned(),
        });
    }
    let cfg = crate::pool::benchmark::BenchConfig::default();
    let result = crate::pool::benchmark::run(path, &cfg).map_err(|e| DriveError::Inspect {
        path: path.to_owned(),
        detail: format!("benchmark: {e}"),
    })?;
    let class = crate::pool::class::classify(&result, &crate::pool::class::Thresholds::default());
    Ok(DriveBenchmark {
        path: path.to_owned(),
        result,
        class,
    })
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
