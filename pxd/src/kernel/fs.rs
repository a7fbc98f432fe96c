//! Filesystems on volumes: make, mount, unmount, grow, and find where a device is mounted.

use crate::volume::spec::Fs;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A failed filesystem step, with the tool's own words.
#[derive(Debug, thiserror::Error)]
#[error("{op} {target}: {detail}")]
pub struct FsError {
    pub op: &'static str,
    pub target: String,
    pub detail: String,
}

fn tool(op: &'static str, target: &Path, cmd: &mut Command) -> Result<(), FsError> {
    let err = |detail: String| FsError {
        op,
        target: target.display().to_string(),
        detail,
    };
    let out = cmd
        .output()
        .map_err(|e| err(format!("cannot run {:?}: {e}", cmd.get_program())))?;
    if !out.status.success() {
        return Err(err(format!(
            "{:?} failed ({}): {}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Makes `fs` on `dev`. Discards are skipped: a new thin volume has nothing to discard.
/// ext4 always gets 4 KiB blocks: mke2fs picks 1 KiB below 512 MiB, and resize2fs 1.47.0
/// cannot grow such a filesystem past about 1 TiB (its group descriptors must fit in one
/// block group), while a 4 KiB one grows to `spec::MAX_SIZE`.
pub fn mkfs(dev: &Path, fs: Fs) -> Result<(), FsError> {
    match fs {
        Fs::Ext4 => tool(
            "make ext4 on",
            dev,
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-b", "4096", "-E", "nodiscard"])
                .arg(dev),
        ),
        Fs::Xfs => tool(
            "make xfs on",
            dev,
            Command::new("mkfs.xfs").args(["-q", "-f", "-K"]).arg(dev),
        ),
        Fs::Raw => Ok(()),
    }
}

fn c_path(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL"))
}

/// Mounts `dev` (a filesystem of kind `fs`) at `at`, making the directory if needed.
pub fn mount(dev: &Path, at: &Path, fs: Fs, read_only: bool) -> Result<(), FsError> {
    let err = |detail: String| FsError {
        op: "mount",
        target: format!("{} at {}", dev.display(), at.display()),
        detail,
    };
    let fstype = match fs {
        Fs::Ext4 => "ext4",
        Fs::Xfs => "xfs",
        Fs::Raw => return Err(err("a raw volume has no filesystem to mount".into())),
    };
    std::fs::create_dir_all(at).map_err(|e| err(e.to_string()))?;
    let src = c_path(dev).map_err(|e| err(e.to_string()))?;
    let dst = c_path(at).map_err(|e| err(e.to_string()))?;
    let fstype = CString::new(fstype).expect("no NUL in a literal");
    let flags = if read_only { libc::MS_RDONLY } else { 0 };
    // SAFETY: every pointer is a valid C string for the call; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            fstype.as_ptr(),
            flags,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(err(io::Error::last_os_error().to_string()));
    }
    Ok(())
}

/// Unmounts `at`; a path that is not mounted is fine.
pub fn unmount(at: &Path) -> Result<(), FsError> {
    let dst = c_path(at).map_err(|e| FsError {
        op: "unmount",
        target: at.display().to_string(),
        detail: e.to_string(),
    })?;
    // SAFETY: valid C string for the call.
    if unsafe { libc::umount2(dst.as_ptr(), 0) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) && e.raw_os_error() != Some(libc::ENOENT) {
            return Err(FsError {
                op: "unmount",
                target: at.display().to_string(),
                detail: e.to_string(),
            });
        }
    }
    Ok(())
}

/// Grows a mounted filesystem to fill its (already grown) device.
pub fn grow(dev: &Path, mounted_at: &Path, fs: Fs) -> Result<(), FsError> {
    match fs {
        Fs::Ext4 => tool("grow ext4 on", dev, Command::new("resize2fs").arg(dev)),
        Fs::Xfs => tool(
            "grow xfs at",
            mounted_at,
            Command::new("xfs_growfs").arg(mounted_at),
        ),
        Fs::Raw => Ok(()),
    }
}

/// Where the block device `major:minor` is mounted, from `/proc/self/mountinfo`.
pub fn mountpoints_of(major: u32, minor: u32) -> io::Result<Vec<PathBuf>> {
    let mut all = mounts()?;
    Ok(all.remove(&(major, minor)).unwrap_or_default())
}

/// Every mounted block device's mount points, by `(major, minor)`, from one read of
/// `/proc/self/mountinfo`: what a reconcile pass looks its devices up in, rather than
/// reading the file once per device.
pub fn mounts() -> io::Result<BTreeMap<(u32, u32), Vec<PathBuf>>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(parse_mountinfo(&info))
}

/// Pure part of [`mounts`]: field 3 is `major:minor`, field 5 the mount point (with spaces
/// and the like escaped as octal).
fn parse_mountinfo(info: &str) -> BTreeMap<(u32, u32), Vec<PathBuf>> {
    let mut out: BTreeMap<(u32, u32), Vec<PathBuf>> = BTreeMap::new();
    for l in info.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        let (Some(dev), Some(at)) = (f.get(2), f.get(4)) else {
            continue;
        };
        let Some((major, minor)) = dev.split_once(':') else {
            continue;
        };
        if let (Ok(major), Ok(minor)) = (major.parse(), minor.parse()) {
            out.entry((major, minor))
                .or_default()
                .push(PathBuf::from(unescape(at)));
        }
    }
    out
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_are_matched_by_device_number() {
        let info = "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                    95 22 253:4 / /var/lib/pxd/mnt/db\\040one rw - ext4 /dev/mapper/x rw\n\
                    96 22 253:4 / /other rw - ext4 /dev/mapper/x rw\n";
        let mounts = parse_mountinfo(info);
        assert_eq!(
            mounts[&(253, 4)],
            [
                PathBuf::from("/var/lib/pxd/mnt/db one"),
                PathBuf::from("/other")
            ]
        );
        assert!(!mounts.contains_key(&(253, 5)));
        assert_eq!(mounts[&(254, 0)], [PathBuf::from("/")]);
    }
}
