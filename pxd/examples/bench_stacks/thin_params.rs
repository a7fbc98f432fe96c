//! Parameter mode for dm-thin: one pool per candidate (chunk size, block zeroing, discard
//! passdown), each on its own slice of one disk, measured interleaved where the setting
//! costs something: writes that provision new chunks, writes that break sharing with a
//! snapshot, overwrites and reads of provisioned chunks, and discards.

use crate::fio::{fio, prewrite, write_sequentially, Job, REGION};
use crate::stats::Stack;
use anyhow::{Context, Result};
use devicemapper::{DmName, DmUuid, Sectors, ThinDevId};
use pxd::kernel::block;
use pxd::kernel::dm::{node_path, DeviceMapper, KernelDm};
use pxd::kernel::stack;
use pxd::plan::names::{DeviceName, Id, Kind};
use pxd::plan::pool::{Drive, PoolSpec, ThinFeatures, DEFAULT_CHUNK};
use pxd::pool::{self, Pool};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Instant;

/// One candidate pool setting.
pub struct ThinVariant {
    pub name: &'static str,
    pub chunk: Sectors,
    pub features: ThinFeatures,
}

const NO_ZEROING: ThinFeatures = ThinFeatures {
    zero_new_chunks: false,
    discard_passdown: true,
};
const NO_PASSDOWN: ThinFeatures = ThinFeatures {
    zero_new_chunks: true,
    discard_passdown: false,
};

pub const THIN_VARIANTS: [ThinVariant; 5] = [
    ThinVariant {
        name: "thin 64K",
        chunk: Sectors(128),
        features: ThinFeatures::DEFAULT,
    },
    ThinVariant {
        name: "thin 256K (default)",
        chunk: DEFAULT_CHUNK,
        features: ThinFeatures::DEFAULT,
    },
    ThinVariant {
        name: "thin 1M",
        chunk: Sectors(2048),
        features: ThinFeatures::DEFAULT,
    },
    ThinVariant {
        name: "thin 256K, no zeroing",
        chunk: DEFAULT_CHUNK,
        features: NO_ZEROING,
    },
    ThinVariant {
        name: "thin 256K, no passdown",
        chunk: DEFAULT_CHUNK,
        features: NO_PASSDOWN,
    },
];

/// What a job is run on.
#[derive(Clone, Copy)]
enum On {
    /// A new thin device: every write provisions a chunk.
    Fresh,
    /// The written thin device right after a snapshot of it: every write breaks sharing.
    Snapshotted,
    /// The written thin device.
    Written,
    /// A new thin device with [`DISCARD_MIB`] written, then discarded with `blkdiscard`.
    Discard,
}

const DISCARD_MIB: u64 = 128;

const THIN_JOBS: [(Job, On); 5] = [
    (job("first write 4k QD32", "randwrite", "4k"), On::Fresh),
    (
        job("write after snapshot 4k QD32", "randwrite", "4k"),
        On::Snapshotted,
    ),
    (job("overwrite 4k QD32", "randwrite", "4k"), On::Written),
    (job("randread 4k QD32", "randread", "4k"), On::Written),
    (job("discard 128 MiB", "trim", "1m"), On::Discard),
];

const fn job(name: &'static str, rw: &'static str, bs: &'static str) -> Job {
    Job {
        name,
        rw,
        bs,
        iodepth: 32,
    }
}

/// The jobs, for the report.
pub fn jobs() -> Vec<&'static Job> {
    THIN_JOBS.iter().map(|(j, _)| j).collect()
}

/// The variants' pools, each on a slice of one disk, with a written thin device in each.
pub struct ThinPools {
    slices: Vec<String>,
    pools: Vec<Pool>,
    next_id: u64,
    node: Id,
}

const WRITTEN: u64 = 1;
const THIN_SIZE: Sectors = Sectors(1024 * 2048);

impl ThinPools {
    /// Cuts `disk` into one linear slice per variant and makes each variant's pool on its
    /// slice, with thin device 1 written over the job region.
    pub fn build(dm: &KernelDm, node: &Id, disk: &Path) -> Result<ThinPools> {
        let disk_dev = block::device_of(disk)?;
        // Whole MiB, so that every slice starts aligned as a disk's partition would.
        let slice_len = block::size_bytes(disk)? / 512 / THIN_VARIANTS.len() as u64 / 2048 * 2048;
        let mut out = ThinPools {
            slices: Vec::new(),
            pools: Vec::new(),
            next_id: 100,
            node: node.clone(),
        };
        for (i, v) in THIN_VARIANTS.iter().enumerate() {
            let name = format!("pxdbench-slice{i}");
            let table = format!("{} {}", disk_dev, i as u64 * slice_len);
            dm.create(
                DmName::new(&name)?,
                DmUuid::new(&format!("PXDBENCH-{name}"))?,
                &[(0, slice_len, "linear".to_owned(), table)],
            )
            .with_context(|| format!("slice {i} of {}", disk.display()))?;
            out.slices.push(name.clone());
            let slice = node_path(DmName::new(&name)?);
            let spec = PoolSpec {
                node: node.clone(),
                pool: Id::object(&format!("tp{i}"))?,
                drives: vec![Drive {
                    dev: block::device_of(&slice)?,
                    size: Sectors(slice_len),
                }],
                chunk: v.chunk,
                features: v.features,
            };
            let p = pool::ensure_pool(dm, &spec, pool::Metadata::MayBeNew)?;
            let t = pool::ensure_thin(
                dm,
                &p,
                &Id::object(&format!("w{i}"))?,
                ThinDevId::new_u64(WRITTEN)?,
                THIN_SIZE,
            )?;
            prewrite(&t.path())?;
            out.pools.push(p);
        }
        Ok(out)
    }

    /// The stacks as the report names them.
    pub fn stacks(&self) -> Vec<Stack> {
        THIN_VARIANTS
            .iter()
            .map(|v| Stack {
                name: v.name.to_owned(),
                dev: Default::default(),
                peer: None,
            })
            .collect()
    }

    /// Thin device names do not carry their pool: each pool's written device is `w<i>`.
    fn written_name(&self, i: usize) -> Result<DeviceName> {
        Ok(DeviceName::new(
            &self.node,
            Kind::Thin,
            &Id::object(&format!("w{i}"))?,
            None,
        ))
    }

    /// Runs every job on every variant `reps` times, interleaved; every run is returned.
    pub fn measure(&mut self, dm: &KernelDm, reps: usize) -> Result<Vec<Value>> {
        let mut runs = Vec::new();
        for rep in 0..reps {
            for (job, on) in &THIN_JOBS {
                for (i, v) in THIN_VARIANTS.iter().enumerate() {
                    let mut r = self.run_one(dm, i, job, *on)?;
                    r["stack"] = json!(v.name);
                    r["job"] = json!(job.name);
                    r["rep"] = json!(rep);
                    runs.push(r);
                }
            }
            eprintln!("bench: thin repetition {} of {reps} done", rep + 1);
        }
        Ok(runs)
    }

    fn run_one(&mut self, dm: &KernelDm, i: usize, job: &Job, on: On) -> Result<Value> {
        let pool = &self.pools[i];
        let written = self.written_name(i)?;
        let written_path = node_path(&written.dm_name());
        self.next_id += 1;
        let id = ThinDevId::new_u64(self.next_id)?;
        let mut r = match on {
            On::Written => fio(&written_path, job)?,
            On::Snapshotted => {
                pool::snapshot_thin_id(dm, pool, ThinDevId::new_u64(WRITTEN)?, id, &[&written])?;
                let r = fio(&written_path, job);
                pool::delete_thin_id(dm, pool, id)?;
                r?
            }
            On::Fresh | On::Discard => {
                let volume = Id::object(&format!("f{}", self.next_id))?;
                let t = pool::ensure_thin(dm, pool, &volume, id, THIN_SIZE)?;
                let r = match on {
                    On::Fresh => fio(&t.path(), job),
                    _ => discard(&t.path()),
                };
                stack::teardown(dm, &[&t.name])?;
                pool::delete_thin_id(dm, pool, id)?;
                r?
            }
        };
        r["figure"] = json!(job.figure(&r));
        Ok(r)
    }

    pub fn teardown(self, dm: &KernelDm) -> Result<()> {
        for (i, p) in self.pools.iter().enumerate() {
            stack::teardown(dm, &[&self.written_name(i)?])?;
            pool::deactivate_pool(dm, p)?;
        }
        for s in &self.slices {
            dm.remove(DmName::new(s)?)?;
        }
        Ok(())
    }
}

/// Writes [`DISCARD_MIB`] to `dev`, then times `blkdiscard` over it: MiB a second.
fn discard(dev: &Path) -> Result<Value> {
    let len = format!("{}", DISCARD_MIB << 20);
    write_sequentially(dev, &format!("{DISCARD_MIB}m"))?;
    let started = Instant::now();
    let ok = std::process::Command::new("blkdiscard")
        .args(["--length", &len])
        .arg(dev)
        .status()?
        .success();
    anyhow::ensure!(ok, "blkdiscard of {} failed", dev.display());
    let secs = started.elapsed().as_secs_f64();
    Ok(json!({ "mib_s": DISCARD_MIB as f64 / secs, "seconds": secs, "region": REGION }))
}
