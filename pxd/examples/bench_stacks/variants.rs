//! Parameter mode: pxd's crypt layer on thin under each candidate setting of dm-crypt (the
//! workqueue bypass for reads and for writes, the encryption sector size), measured
//! interleaved with each other and with LUKS2, so that the defaults are chosen by measurement.

use anyhow::{Context, Result};
use devicemapper::{Device, DmName, DmUuid, TargetParams};
use pxd::kernel::dm::{node_path, DeviceMapper, KernelDm};
use pxd::kernel::keyring::add_logon_key;
use pxd::plan::crypt::{CryptTargetParams, Workqueues};
use std::path::{Path, PathBuf};

/// One candidate setting.
pub struct CryptVariant {
    pub name: &'static str,
    pub sector_bytes: u32,
    pub no_read_workqueue: bool,
    pub no_write_workqueue: bool,
}

pub const CRYPT_VARIANTS: [CryptVariant; 5] = [
    CryptVariant {
        name: "crypt 4k, bypass both",
        sector_bytes: 4096,
        no_read_workqueue: true,
        no_write_workqueue: true,
    },
    CryptVariant {
        name: "crypt 4k, bypass reads",
        sector_bytes: 4096,
        no_read_workqueue: true,
        no_write_workqueue: false,
    },
    CryptVariant {
        name: "crypt 4k, bypass writes",
        sector_bytes: 4096,
        no_read_workqueue: false,
        no_write_workqueue: true,
    },
    CryptVariant {
        name: "crypt 4k, workqueues",
        sector_bytes: 4096,
        no_read_workqueue: false,
        no_write_workqueue: false,
    },
    CryptVariant {
        name: "crypt 512, workqueues",
        sector_bytes: 512,
        no_read_workqueue: false,
        no_write_workqueue: false,
    },
];

/// A crypt device of one variant over a thin device; removed on drop.
pub struct CryptDevice {
    name: String,
    pub path: PathBuf,
}

impl CryptDevice {
    /// `variant` over `lower`, `sectors` long, with a random key that stays in the keyring
    /// only while the table loads.
    pub fn create(
        dm: &KernelDm,
        index: usize,
        variant: &CryptVariant,
        lower: &Path,
        sectors: u64,
    ) -> Result<CryptDevice> {
        let name = format!("pxdbench-crypt{index}");
        let description = format!("pxdbench:{name}");
        let mut key = [0u8; pxd::plan::crypt::KEY_BYTES];
        rand::Rng::fill(&mut rand::thread_rng(), &mut key[..]);
        let _key = add_logon_key(&description, &key).context("adding the bench key")?;
        let lower: Device = pxd::kernel::block::device_of(lower)?;
        let mut params = CryptTargetParams::pxd(lower, &description, Workqueues::default());
        params.sector_size = (variant.sector_bytes != 512).then_some(variant.sector_bytes);
        params.iv_large_sectors = variant.sector_bytes != 512;
        params.no_read_workqueue = variant.no_read_workqueue;
        params.no_write_workqueue = variant.no_write_workqueue;
        let dm_name = DmName::new(&name)?;
        dm.create(
            dm_name,
            DmUuid::new(&format!("PXDBENCH-{name}"))?,
            &[(0, sectors, "crypt".to_owned(), params.param_str())],
        )?;
        Ok(CryptDevice {
            path: node_path(dm_name),
            name,
        })
    }
}

impl Drop for CryptDevice {
    fn drop(&mut self) {
        if let Ok(dm) = KernelDm::open() {
            if let Ok(name) = DmName::new(&self.name) {
                let _ = dm.remove(name);
            }
        }
    }
}
