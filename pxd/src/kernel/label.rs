//! Drive labels on disk: reading both copies, writing them, and finding every labelled block
//! device of this host by scanning sysfs, whatever its `/dev` path is today.

use crate::kernel::block;
use crate::pool::label::{self, Found, Label};
use devicemapper::Device;
use std::io;
use std::path::{Path, PathBuf};

/// Each copy is read and written as one 4 KiB block, so 4Kn disks take it under O_DIRECT.
const BLOCK: usize = 4096;

/// Reads both label copies of the drive at `path` and judges them.
pub fn read(path: &Path) -> io::Result<Found> {
    let mut copies = Vec::new();
    for at in label::COPIES {
        let b = block::read_direct(path, at, BLOCK)?;
        copies.push(label::decode(&b));
    }
    Ok(label::judge(&copies))
}

/// Writes both copies of `l`, durably, and reads them back.
pub fn write(path: &Path, l: &Label) -> io::Result<()> {
    let encoded = l
        .encode()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut blockbuf = vec![0u8; BLOCK];
    blockbuf[..label::LEN].copy_from_slice(&encoded);
    for at in label::COPIES {
        block::write_direct(path, at, &blockbuf)?;
    }
    match read(path)? {
        Found::Labelled(back) if back == *l => Ok(()),
        other => Err(io::Error::other(format!(
            "the label written to {} reads back as {other:?}",
            path.display()
        ))),
    }
}

/// Zeroes both label copies of the drive at `path`, but only while they read back as `l`:
/// a disk that moved or was relabelled since the scan is left alone (`Ok(false)`).
pub fn erase(path: &Path, l: &Label) -> io::Result<bool> {
    if read(path)? != Found::Labelled(l.clone()) {
        return Ok(false);
    }
    let zeros = vec![0u8; BLOCK];
    for at in label::COPIES {
        block::write_direct(path, at, &zeros)?;
    }
    Ok(true)
}

/// A block device seen by the scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scanned {
    pub path: PathBuf,
    pub dev: Device,
    pub size_bytes: u64,
    pub found: Found,
}

/// Every block device of this host that can hold a label: whole disks, loop devices with a
/// backing file, and device-mapper devices that are not pxd's own (a drive may be a dm
/// device, e.g. a multipath or delay map). Devices that cannot be read are left out; `extra`
/// adds paths sysfs does not name (hints such as a recorded path).
pub fn scan(extra: &[PathBuf]) -> Vec<Scanned> {
    let mut out: Vec<Scanned> = Vec::new();
    let mut paths: Vec<PathBuf> = candidates().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "could not list /sys/block");
        Vec::new()
    });
    paths.extend(extra.iter().cloned());
    for path in paths {
        let Ok(dev) = block::device_of(&path) else {
            continue;
        };
        if out.iter().any(|s| s.dev == dev) {
            continue;
        }
        let Ok(size_bytes) = block::size_bytes(&path) else {
            continue;
        };
        if size_bytes < (label::COPIES[1] + BLOCK as u64) {
            continue;
        }
        match read(&path) {
            Ok(found) => out.push(Scanned {
                path,
                dev,
                size_bytes,
                found,
            }),
            Err(e) => tracing::debug!(path = %path.display(), error = %e, "label unreadable"),
        }
    }
    // A device mapped whole by another (a dm-delay or multipath map over a disk) shows the
    // same label through both: only the top one is the drive.
    let beneath: Vec<bool> = out
        .iter()
        .map(|s| {
            holders(s.dev)
                .iter()
                .any(|h| out.iter().any(|o| o.dev == *h && o.found == s.found))
        })
        .collect();
    out.into_iter()
        .zip(beneath)
        .filter(|(s, below)| !(*below && s.found != Found::Unlabelled))
        .map(|(s, _)| s)
        .collect()
}

/// The devices stacked directly on `dev`, from sysfs.
fn holders(dev: Device) -> Vec<Device> {
    let dir = format!("/sys/dev/block/{dev}/holders");
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("dev")).ok())
        .filter_map(|d| d.trim().parse::<Device>().ok())
        .collect()
}

/// Paths of the block devices sysfs lists, by the name `/dev` gives them.
fn candidates() -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/sys/block")? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let sys = e.path();
        if name.starts_with("ram") || name.starts_with("zram") || name.starts_with("sr") {
            continue;
        }
        if block::is_pxd_leg(&sys) {
            continue;
        }
        if let Ok(dm_name) = std::fs::read_to_string(sys.join("dm/name")) {
            let dm_name = dm_name.trim();
            if !crate::plan::names::is_pxd_name(dm_name) {
                out.push(Path::new("/dev/mapper").join(dm_name));
            }
            continue;
        }
        out.push(Path::new("/dev").join(&name));
    }
    out.sort();
    Ok(out)
}
