//! Loop devices over regular files: block devices for tests (and file-backed pools) without
//! real disks.
//!
//! Attaching uses `LOOP_CONFIGURE` (Linux 5.8+), which binds the file and sets the flags in one
//! step, so no other process can see a half-configured device. Partition scanning is never
//! enabled: pxd owns what is on the device and does not want partition nodes appearing. Every
//! device is also marked autoclear, so the kernel detaches it when its last opener closes even if
//! this process dies before [`LoopDevice::detach`] runs.

use std::{
    fs::{File, OpenOptions},
    io,
    os::unix::{
        ffi::OsStrExt as _,
        fs::{FileTypeExt as _, OpenOptionsExt as _},
        io::AsRawFd as _,
    },
    path::{Path, PathBuf},
};

/// From `include/uapi/linux/loop.h`.
const LOOP_CLR_FD: libc::Ioctl = 0x4C01;
const LOOP_CONFIGURE: libc::Ioctl = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::Ioctl = 0x4C82;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;
const LO_NAME_SIZE: usize = 64;

/// `struct loop_info64`.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const _: () = assert!(size_of::<LoopInfo64>() == 232 && size_of::<LoopConfig>() == 304);

/// How many times to retry when another process takes the free device we were offered.
const ATTACH_ATTEMPTS: u32 = 16;

/// Why attaching or detaching a loop device failed.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("opening backing file {path}")]
    OpenBacking {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("opening /dev/loop-control (is the loop module loaded?)")]
    OpenControl(#[source] io::Error),
    #[error("asking /dev/loop-control for a free loop device")]
    GetFree(#[source] io::Error),
    #[error("opening loop device {path}")]
    OpenDevice {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("creating the missing device node {path}")]
    MakeNode {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("attaching {backing} to {device} (LOOP_CONFIGURE, Linux 5.8+)")]
    Configure {
        backing: PathBuf,
        device: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no free loop device after {ATTACH_ATTEMPTS} attempts: others kept taking them")]
    Contended,
    #[error("detaching loop device {device}")]
    Detach {
        device: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Options for [`LoopDevice::attach_with`].
#[derive(Clone, Copy, Debug, Default)]
pub struct LoopOptions {
    /// The device rejects writes.
    pub read_only: bool,
    /// The loop driver does direct IO on the backing file instead of going through its page
    /// cache (the backing filesystem must support O_DIRECT).
    pub direct_io: bool,
}

/// An attached loop device, detached when dropped.
#[derive(Debug)]
pub struct LoopDevice {
    /// Open for as long as the device is ours: with autoclear set, closing the last descriptor
    /// is what finally detaches it.
    device: File,
    path: PathBuf,
    number: u32,
    attached: bool,
}

impl LoopDevice {
    /// Attaches a free loop device, read-write, over `backing`.
    pub fn attach(backing: &Path) -> Result<Self, LoopError> {
        Self::attach_with(backing, LoopOptions::default())
    }

    /// Attaches a free loop device over `backing` with `options`.
    pub fn attach_with(backing: &Path, options: LoopOptions) -> Result<Self, LoopError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!options.read_only)
            .custom_flags(libc::O_CLOEXEC)
            .open(backing)
            .map_err(|source| LoopError::OpenBacking {
                path: backing.to_owned(),
                source,
            })?;
        let control = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/loop-control")
            .map_err(LoopError::OpenControl)?;

        let mut flags = LO_FLAGS_AUTOCLEAR;
        if options.read_only {
            flags |= LO_FLAGS_READ_ONLY;
        }
        if options.direct_io {
            flags |= LO_FLAGS_DIRECT_IO;
        }
        let config = loop_config(&file, flags, backing);

        for _ in 0..ATTACH_ATTEMPTS {
            // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a number or -1.
            let number = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
            let number = u32::try_from(number)
                .map_err(|_| LoopError::GetFree(io::Error::last_os_error()))?;
            let path = PathBuf::from(format!("/dev/loop{number}"));
            let device = open_device(&path, number, options.read_only)?;

            // SAFETY: `config` is a live, fully initialised `struct loop_config` that the
            // kernel only reads during the call.
            let rc = unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CONFIGURE, &config) };
            if rc == 0 {
                return Ok(Self {
                    device,
                    path,
                    number,
                    attached: true,
                });
            }
            let err = io::Error::last_os_error();
            // EBUSY: another process attached this device between GET_FREE and CONFIGURE.
            if err.raw_os_error() != Some(libc::EBUSY) {
                return Err(LoopError::Configure {
                    backing: backing.to_owned(),
                    device: path,
                    source: err,
                });
            }
        }
        Err(LoopError::Contended)
    }

    /// The device node, e.g. `/dev/loop3`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The loop device number (`N` in `/dev/loopN`).
    pub const fn number(&self) -> u32 {
        self.number
    }

    /// Detaches the device, reporting failure (dropping detaches too, but silently).
    pub fn detach(mut self) -> Result<(), LoopError> {
        self.clear()
    }

    fn clear(&mut self) -> Result<(), LoopError> {
        if !self.attached {
            return Ok(());
        }
        self.attached = false;
        // SAFETY: LOOP_CLR_FD takes no argument. If the device is still open elsewhere the
        // kernel defers the detach to the last close (autoclear), which is what we want.
        let rc = unsafe { libc::ioctl(self.device.as_raw_fd(), LOOP_CLR_FD) };
        if rc == 0 {
            Ok(())
        } else {
            Err(LoopError::Detach {
                device: self.path.clone(),
                source: io::Error::last_os_error(),
            })
        }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if let Err(err) = self.clear() {
            tracing::warn!(error = %err, "loop device left attached until its last close");
        }
    }
}

/// The `struct loop_config` for `file`: whole file, default 512-byte logical blocks.
fn loop_config(file: &File, flags: u32, backing: &Path) -> LoopConfig {
    let mut file_name = [0u8; LO_NAME_SIZE];
    // Informational only (shown by losetup); truncated, always NUL-terminated.
    let name = backing.as_os_str().as_bytes();
    let len = name.len().min(LO_NAME_SIZE - 1);
    file_name[..len].copy_from_slice(&name[..len]);
    LoopConfig {
        // Descriptors are non-negative; the kernel takes them as u32 here.
        fd: file.as_raw_fd().unsigned_abs(),
        block_size: 0,
        info: LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: flags,
            lo_file_name: file_name,
            lo_crypt_name: [0; LO_NAME_SIZE],
            lo_encrypt_key: [0; 32],
            lo_init: [0; 2],
        },
        reserved: [0; 8],
    }
}

/// Opens `/dev/loopN`, first creating the node from sysfs where no udev or devtmpfs made it
/// (the VM tier's initramfs has neither).
fn open_device(path: &Path, number: u32, read_only: bool) -> Result<File, LoopError> {
    if !path.exists() {
        make_node(path, number)?;
    }
    OpenOptions::new()
        .read(true)
        .write(!read_only)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| LoopError::OpenDevice {
            path: path.to_owned(),
            source,
        })
}

fn make_node(path: &Path, number: u32) -> Result<(), LoopError> {
    let node_error = |source| LoopError::MakeNode {
        path: path.to_owned(),
        source,
    };
    // "MAJOR:MINOR\n"; the minor depends on the loop module's max_part, so ask the kernel.
    let sys = format!("/sys/block/loop{number}/dev");
    let text = std::fs::read_to_string(&sys).map_err(node_error)?;
    let parse = |s: Option<&str>| s.and_then(|s| s.trim().parse::<u32>().ok());
    let mut parts = text.split(':');
    let (Some(major), Some(minor)) = (parse(parts.next()), parse(parts.next())) else {
        return Err(node_error(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{sys} holds {text:?}, expected MAJOR:MINOR"),
        )));
    };
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|err| node_error(io::Error::new(io::ErrorKind::InvalidInput, err)))?;
    // SAFETY: `c_path` is a NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mknod(
            c_path.as_ptr(),
            libc::S_IFBLK | 0o660,
            libc::makedev(major, minor),
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        // Someone (udev, a parallel test) made it first; fine if it is a block device.
        let exists_as_block = err.kind() == io::ErrorKind::AlreadyExists
            && std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device());
        if !exists_as_block {
            return Err(node_error(err));
        }
    }
    Ok(())
}
