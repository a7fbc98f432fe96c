//! Device-mapper, behind one small trait: create a device with a table, read its table and
//! status, send a message, remove it, list them. The kernel implementation goes through the
//! devicemapper crate's ioctls; tests of the layers above use a fake.

use crate::kernel::block;
use devicemapper::{DevId, Device, DmError, DmFlags, DmName, DmNameBuf, DmOptions, DmUuid, DM};
use std::path::PathBuf;

/// A table or status in the form devicemapper's ioctls use: (start, length, type, params).
pub type RawTable = Vec<(u64, u64, String, String)>;

/// What the kernel knows of one dm device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmInfo {
    pub dev: Device,
    pub open_count: i32,
    pub suspended: bool,
    pub read_only: bool,
}

/// Result of an idempotent remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    Deleted,
    NotFound,
}

/// A failed dm operation, with what was being done to which device.
#[derive(Debug, thiserror::Error)]
#[error("device-mapper: {op} {device}: {detail}")]
pub struct DmOpError {
    pub op: &'static str,
    pub device: String,
    pub detail: String,
    /// The errno of a failed ioctl, when that is what failed.
    pub errno: Option<i32>,
}

impl DmOpError {
    fn new(op: &'static str, device: &DmName, err: DmError) -> DmOpError {
        let errno = match &err {
            DmError::Core(devicemapper::errors::Error::Ioctl(_, _, _, e)) => Some(**e as i32),
            _ => None,
        };
        DmOpError {
            op,
            device: device.to_string(),
            detail: err.to_string(),
            errno,
        }
    }

    fn io(op: &'static str, device: &DmName, err: std::io::Error) -> DmOpError {
        DmOpError {
            op,
            device: device.to_string(),
            errno: err.raw_os_error(),
            detail: err.to_string(),
        }
    }
}

pub type DmResult<T> = Result<T, DmOpError>;

/// The device-mapper operations pxd needs.
pub trait DeviceMapper {
    /// The device, or None if the kernel has no device of that name.
    fn info(&self, name: &DmName) -> DmResult<Option<DmInfo>>;
    /// Creates the device, loads `table` and activates it. Either all of that happens or the
    /// device does not exist afterwards.
    fn create(
        &self,
        name: &DmName,
        uuid: &DmUuid,
        table: &[(u64, u64, String, String)],
    ) -> DmResult<Device>;
    /// Like [`DeviceMapper::create`], with a read-only table (read-only clones, snapshots).
    fn create_read_only(
        &self,
        name: &DmName,
        uuid: &DmUuid,
        table: &[(u64, u64, String, String)],
    ) -> DmResult<Device>;
    /// Suspends I/O, flushing what is in flight and freezing a filesystem on top, so that
    /// what is beneath is consistent (a snapshot taken now is crash-consistent).
    fn suspend(&self, name: &DmName) -> DmResult<()>;
    /// Resumes I/O; a table loaded by [`DeviceMapper::load`] becomes live.
    fn resume(&self, name: &DmName) -> DmResult<()>;
    /// Loads `table` as the inactive table of a live device; [`DeviceMapper::resume`] swaps
    /// it in (online resize). The live table stays in force until then.
    fn load(&self, name: &DmName, table: &[(u64, u64, String, String)]) -> DmResult<()>;
    /// Drops a table loaded by [`DeviceMapper::load`] and not yet resumed: the live table
    /// stays in force after the next resume.
    fn clear(&self, name: &DmName) -> DmResult<()>;
    /// The live table.
    fn table(&self, name: &DmName) -> DmResult<RawTable>;
    /// The live status lines.
    fn status(&self, name: &DmName) -> DmResult<RawTable>;
    /// Sends a target message (e.g. `create_thin 1` to a thin-pool).
    fn message(&self, name: &DmName, msg: &str) -> DmResult<()>;
    /// Removes the device; a device that does not exist is [`Removed::NotFound`].
    fn remove(&self, name: &DmName) -> DmResult<Removed>;
    /// All dm devices, pxd's and others'.
    fn list(&self) -> DmResult<Vec<(DmNameBuf, Device)>>;
}

/// The path pxd and users address a dm device by.
pub fn node_path(name: &DmName) -> PathBuf {
    PathBuf::from("/dev/mapper").join(name.to_string())
}

/// The host kernel's device-mapper.
pub struct KernelDm {
    dm: DM,
}

impl KernelDm {
    /// Opens `/dev/mapper/control`.
    pub fn open() -> DmResult<KernelDm> {
        let dm = DM::new().map_err(|e| DmOpError {
            op: "open",
            device: "/dev/mapper/control".into(),
            detail: format!("{e} (is the dm_mod module loaded, and are we root?)"),
            errno: None,
        })?;
        Ok(KernelDm { dm })
    }

    fn id(name: &DmName) -> DevId<'_> {
        DevId::Name(name)
    }

    /// Creates the device, loads `table` with `load_options` (e.g. read-only) and activates it.
    fn create_with(
        &self,
        name: &DmName,
        uuid: &DmUuid,
        table: &[(u64, u64, String, String)],
        load_options: DmOptions,
    ) -> DmResult<Device> {
        let info = self
            .dm
            .device_create(name, Some(uuid), DmOptions::default())
            .map_err(|e| DmOpError::new("create", name, e))?;
        let activate = || -> DmResult<()> {
            self.dm
                .table_load(&Self::id(name), table, load_options)
                .map_err(|e| DmOpError::new("load table of", name, e))?;
            self.dm
                .device_suspend(&Self::id(name), DmOptions::default())
                .map_err(|e| DmOpError::new("activate", name, e))?;
            // Where no udev runs (minimal hosts, the test VM) nobody else makes the node.
            block::ensure_block_node(&node_path(name), info.device())
                .map_err(|e| DmOpError::io("make node for", name, e))
        };
        if let Err(err) = activate() {
            // An empty or half-made device must not outlive the failed create.
            if let Err(rb) = self.remove(name) {
                tracing::error!(error = %rb, "could not remove a half-made device");
            }
            return Err(err);
        }
        Ok(info.device())
    }
}

impl DeviceMapper for KernelDm {
    fn info(&self, name: &DmName) -> DmResult<Option<DmInfo>> {
        match self.dm.device_info(&Self::id(name)) {
            Ok(info) => Ok(Some(DmInfo {
                dev: info.device(),
                open_count: info.open_count(),
                suspended: info.flags().contains(DmFlags::DM_SUSPEND),
                read_only: info.flags().contains(DmFlags::DM_READONLY),
            })),
            Err(e) => match DmOpError::new("info", name, e) {
                err if err.errno == Some(libc::ENXIO) => Ok(None),
                err => Err(err),
            },
        }
    }

    fn create(
        &self,
        name: &DmName,
        uuid: &DmUuid,
        table: &[(u64, u64, String, String)],
    ) -> DmResult<Device> {
        self.create_with(name, uuid, table, DmOptions::default())
    }

    fn create_read_only(
        &self,
        name: &DmName,
        uuid: &DmUuid,
        table: &[(u64, u64, String, String)],
    ) -> DmResult<Device> {
        let ro = DmOptions::default().set_flags(DmFlags::DM_READONLY);
        self.create_with(name, uuid, table, ro)
    }

    fn suspend(&self, name: &DmName) -> DmResult<()> {
        let opts = DmOptions::default().set_flags(DmFlags::DM_SUSPEND);
        self.dm
            .device_suspend(&Self::id(name), opts)
            .map(|_| ())
            .map_err(|e| DmOpError::new("suspend", name, e))
    }

    fn resume(&self, name: &DmName) -> DmResult<()> {
        self.dm
            .device_suspend(&Self::id(name), DmOptions::default())
            .map(|_| ())
            .map_err(|e| DmOpError::new("resume", name, e))
    }

    fn load(&self, name: &DmName, table: &[(u64, u64, String, String)]) -> DmResult<()> {
        self.dm
            .table_load(&Self::id(name), table, DmOptions::default())
            .map(|_| ())
            .map_err(|e| DmOpError::new("load table of", name, e))
    }

    fn clear(&self, name: &DmName) -> DmResult<()> {
        self.dm
            .table_clear(&Self::id(name))
            .map(|_| ())
            .map_err(|e| DmOpError::new("clear the loaded table of", name, e))
    }

    fn table(&self, name: &DmName) -> DmResult<RawTable> {
        self.dm
            .table_status(
                &Self::id(name),
                DmOptions::default().set_flags(DmFlags::DM_STATUS_TABLE),
            )
            .map(|(_, t)| t)
            .map_err(|e| DmOpError::new("read table of", name, e))
    }

    fn status(&self, name: &DmName) -> DmResult<RawTable> {
        self.dm
            .table_status(&Self::id(name), DmOptions::default())
            .map(|(_, t)| t)
            .map_err(|e| DmOpError::new("read status of", name, e))
    }

    fn message(&self, name: &DmName, msg: &str) -> DmResult<()> {
        self.dm
            .target_msg(&Self::id(name), None, msg)
            .map(|_| ())
            .map_err(|e| {
                let mut err = DmOpError::new("message", name, e);
                err.detail = format!("{msg:?}: {}", err.detail);
                err
            })
    }

    fn remove(&self, name: &DmName) -> DmResult<Removed> {
        let Some(info) = self.info(name)? else {
            return Ok(Removed::NotFound);
        };
        match self.dm.device_remove(&Self::id(name), DmOptions::default()) {
            Ok(_) => {
                block::remove_block_node(&node_path(name), info.dev)
                    .map_err(|e| DmOpError::io("remove node of", name, e))?;
                Ok(Removed::Deleted)
            }
            Err(e) => match DmOpError::new("remove", name, e) {
                err if err.errno == Some(libc::ENXIO) => Ok(Removed::NotFound),
                err => Err(err),
            },
        }
    }

    fn list(&self) -> DmResult<Vec<(DmNameBuf, Device)>> {
        self.dm
            .list_devices()
            .map(|v| v.into_iter().map(|(n, d, _)| (n, d)).collect())
            .map_err(|e| DmOpError {
                op: "list",
                device: "all devices".into(),
                detail: e.to_string(),
                errno: None,
            })
    }
}

/// An in-memory [`DeviceMapper`] for unit tests of the code above the kernel.
#[cfg(test)]
pub mod fake {
    use super::*;
    use devicemapper::{DmName, DmNameBuf, DmUuid};
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    /// An in-memory device-mapper that records tables and can be told to fail one create.
    #[derive(Default)]
    pub struct FakeDm {
        pub devices: RefCell<BTreeMap<String, (Device, RawTable)>>,
        pub fail_create_of: Option<String>,
        pub next_minor: RefCell<u32>,
    }

    impl DeviceMapper for FakeDm {
        fn info(&self, name: &DmName) -> DmResult<Option<DmInfo>> {
            Ok(self
                .devices
                .borrow()
                .get(&name.to_string())
                .map(|(d, _)| DmInfo {
                    dev: *d,
                    open_count: 0,
                    suspended: false,
                    read_only: false,
                }))
        }
        fn create(
            &self,
            name: &DmName,
            _: &DmUuid,
            table: &[(u64, u64, String, String)],
        ) -> DmResult<Device> {
            if self.fail_create_of.as_deref() == Some(&name.to_string()) {
                return Err(DmOpError {
                    op: "create",
                    device: name.to_string(),
                    detail: "injected".into(),
                    errno: Some(libc::EIO),
                });
            }
            let mut minor = self.next_minor.borrow_mut();
            let dev = Device {
                major: 253,
                minor: *minor,
            };
            *minor += 1;
            self.devices
                .borrow_mut()
                .insert(name.to_string(), (dev, table.to_vec()));
            Ok(dev)
        }
        fn create_read_only(
            &self,
            name: &DmName,
            uuid: &DmUuid,
            table: &[(u64, u64, String, String)],
        ) -> DmResult<Device> {
            self.create(name, uuid, table)
        }
        fn suspend(&self, _: &DmName) -> DmResult<()> {
            Ok(())
        }
        fn resume(&self, _: &DmName) -> DmResult<()> {
            Ok(())
        }
        fn load(&self, name: &DmName, table: &[(u64, u64, String, String)]) -> DmResult<()> {
            if let Some(d) = self.devices.borrow_mut().get_mut(&name.to_string()) {
                d.1 = table.to_vec();
            }
            Ok(())
        }
        fn clear(&self, _: &DmName) -> DmResult<()> {
            Ok(())
        }
        fn table(&self, name: &DmName) -> DmResult<RawTable> {
            Ok(self.devices.borrow()[&name.to_string()].1.clone())
        }
        fn status(&self, _: &DmName) -> DmResult<RawTable> {
            Ok(Vec::new())
        }
        fn message(&self, _: &DmName, _: &str) -> DmResult<()> {
            Ok(())
        }
        fn remove(&self, name: &DmName) -> DmResult<Removed> {
            Ok(match self.devices.borrow_mut().remove(&name.to_string()) {
                Some(_) => Removed::Deleted,
                None => Removed::NotFound,
            })
        }
        fn list(&self) -> DmResult<Vec<(DmNameBuf, Device)>> {
            Ok(Vec::new())
        }
    }
}
