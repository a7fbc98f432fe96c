//! Block devices: size, dev_t, device nodes, and raw reads and writes at an offset.

use devicemapper::Device;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// The dev_t of a block device node.
pub fn device_of(path: &Path) -> io::Result<Device> {
    let meta = std::fs::metadata(path)?;
    if !meta.file_type().is_block_device() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a block device", path.display()),
        ));
    }
    Ok(Device::from(meta.rdev()))
}

/// Size of a block device, in bytes.
pub fn size_bytes(path: &Path) -> io::Result<u64> {
    let file = File::open(path)?;
    let mut size: u64 = 0;
    // BLKGETSIZE64 = _IOR(0x12, 114, size_t)
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    // SAFETY: the ioctl writes one u64 into `size`, which lives for the call.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            BLKGETSIZE64,
            &mut size,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

/// Makes a block node at `path` for `dev` unless one for that device is already there.
pub fn ensure_block_node(path: &Path, dev: Device) -> io::Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_block_device() && Device::from(m.rdev()) == dev => Ok(()),
        Ok(_) => {
            // A stale node from an earlier device of the same name (numbers are reused).
            std::fs::remove_file(path)?;
            mknod_block(path, dev)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            mknod_block(path, dev)
        }
        Err(e) => Err(e),
    }
}

fn mknod_block(path: &Path, dev: Device) -> io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let rdev = libc::makedev(dev.major, dev.minor);
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFBLK | 0o600, rdev) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::AlreadyExists {
            return Err(err);
        }
    }
    Ok(())
}

/// Removes the node at `path` if it is a node for `dev` (and leaves anything else alone).
pub fn remove_block_node(path: &Path, dev: Device) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_block_device() && Device::from(m.rdev()) == dev => {
            std::fs::remove_file(path)
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Reads `len` bytes at `offset`, bypassing the page cache (so a read sees the device, not a
/// stale cached copy of what another layer wrote).
pub fn read_direct(path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    let mut buf = AlignedBuf::zeroed(len);
    file.read_exact_at(buf.as_mut_slice(), offset)?;
    Ok(buf.as_slice().to_vec())
}

/// Writes zeroes over `len` bytes at `offset`, durably.
pub fn zero_direct(path: &Path, offset: u64, len: usize) -> io::Result<()> {
    write_direct(path, offset, &vec![0u8; len])
}

/// Writes `data` at `offset` (both multiples of 512), durably and past the page cache.
pub fn write_direct(path: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
        .open(path)?;
    let mut buf = AlignedBuf::zeroed(data.len());
    buf.as_mut_slice()[..data.len()].copy_from_slice(data);
    file.write_all_at(&buf.as_slice()[..data.len()], offset)
}

/// A block device (or file) opened past the page cache, for streaming whole 4 KiB blocks
/// at a time: a rebuild reads its source and writes its new leg this way.
pub struct DirectFile {
    file: File,
}

impl DirectFile {
    pub fn open_read(path: &Path) -> io::Result<DirectFile> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)?;
        Ok(DirectFile { file })
    }

    /// Opened for writing; [`DirectFile::sync`] makes what was written durable.
    pub fn open_write(path: &Path) -> io::Result<DirectFile> {
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)?;
        Ok(DirectFile { file })
    }

    /// `len` bytes at `offset` (both multiples of 4096).
    pub fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = AlignedBuf::zeroed(len);
        self.file
            .read_exact_at(&mut buf.as_mut_slice()[..len], offset)?;
        Ok(buf.as_slice()[..len].to_vec())
    }

    /// Writes `data` at `offset` (both multiples of 4096).
    pub fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut buf = AlignedBuf::zeroed(data.len());
        buf.as_mut_slice()[..data.len()].copy_from_slice(data);
        self.file
            .write_all_at(&buf.as_slice()[..data.len()], offset)
    }

    /// Discards `len` bytes at `offset`: a thin device unmaps the whole blocks among them,
    /// which then read as zeros, as on the source that discarded them.
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        // BLKDISCARD = _IO(0x12, 119); takes [offset, length] in bytes.
        const BLKDISCARD: libc::c_ulong = 0x1277;
        let range: [u64; 2] = [offset, len];
        // SAFETY: the ioctl reads two u64s from `range`, which lives for the call.
        let rc = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&self.file),
                BLKDISCARD,
                &range,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// A heap buffer aligned for O_DIRECT (4 KiB covers every logical block size pxd meets).
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
}

impl AlignedBuf {
    pub const ALIGN: usize = 4096;

    /// A zeroed buffer of `len` bytes (rounded up to the alignment).
    pub fn zeroed(len: usize) -> AlignedBuf {
        let size = len.max(1).next_multiple_of(Self::ALIGN);
        let layout = std::alloc::Layout::from_size_align(size, Self::ALIGN)
            .expect("4 KiB alignment and a rounded size form a valid layout");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr =
            std::ptr::NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, layout }
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr points at layout.size() initialised bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this very layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}

/// Whether the disk at `/sys/block/<name>` is the namespace of a pxd leg reached over
/// NVMe/TCP: never a drive, and never to be read on a scan (a leg whose node is gone holds
/// every read until pxd gives it up).
pub fn is_pxd_leg(sys: &Path) -> bool {
    std::fs::read_to_string(sys.join("device/subsysnqn"))
        .is_ok_and(|nqn| nqn.trim().starts_with(crate::plan::names::NQN_PREFIX))
}

/// Whole disks of this host, as sysfs lists them: entries of /sys/block backed by a device
/// (so not loop, dm, md, zram or ram devices, which have no `device` link), pxd's own legs
/// left out.
pub fn whole_disks() -> io::Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/sys/block")? {
        let e = e?;
        if e.path().join("device").exists() && !is_pxd_leg(&e.path()) {
            out.push(Path::new("/dev").join(e.file_name()));
        }
    }
    out.sort();
    Ok(out)
}

/// The pxd device `dev` is, or is stacked on (through its slaves, at any depth), if any: such
/// a device is never a drive, whatever the flags.
pub fn pxd_beneath(dev: Device) -> Option<String> {
    let sys = std::path::PathBuf::from(format!("/sys/dev/block/{dev}"));
    if let Ok(name) = std::fs::read_to_string(sys.join("dm/name")) {
        let name = name.trim();
        if crate::plan::names::is_pxd_name(name) {
            return Some(name.to_owned());
        }
    }
    std::fs::read_dir(sys.join("slaves"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("dev")).ok())
        .filter_map(|d| d.trim().parse::<Device>().ok())
        .find_map(pxd_beneath)
}

/// Why a drive is in use: something stacked on it (holders, e.g. dm or md), a partition of
/// it, or an exclusive opener (a mount takes one).
pub fn in_use(path: &Path) -> Option<String> {
    let sys = match device_of(path) {
        Ok(dev) => std::path::PathBuf::from(format!("/sys/dev/block/{dev}")),
        Err(e) => return Some(format!("cannot be inspected: {e}")),
    };
    let holders: Vec<String> = std::fs::read_dir(sys.join("holders"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if !holders.is_empty() {
        return Some(format!("held by {}", holders.join(", ")));
    }
    match OpenOptions::new()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffers_are_aligned_and_rounded() {
        let mut b = AlignedBuf::zeroed(5000);
        assert_eq!(b.as_slice().len(), 8192);
        assert_eq!(b.as_slice().as_ptr() as usize % 4096, 0);
        assert!(b.as_slice().iter().all(|&x| x == 0));
        b.as_mut_slice()[8191] = 7;
        assert_eq!(b.as_slice()[8191], 7);
    }

    #[test]
    fn regular_files_are_not_block_devices() {
        let err = device_of(Path::new("/proc/self/status")).unwrap_err();
        assert!(err.to_string().contains("not a block device"), "{err}");
    }
}
