//! The single-node demo that `cargo xtask demo` runs inside the VM: a thin pool over two
//! disks, a volume, data written and read back, the pool's use before and after, and a second
//! setup that adopts everything instead of failing. Usage: `demo DISK DISK`.

use anyhow::{ensure, Context, Result};
use devicemapper::{Sectors, ThinDevId};
use pxd::kernel::block::{self, AlignedBuf};
use pxd::kernel::dm::{node_path, DeviceMapper, KernelDm};
use pxd::plan::names::Id;
use pxd::plan::pool::{Drive, PoolSpec, DEFAULT_CHUNK};
use pxd::pool;
use pxd::stack::{self, Outcome};
use sha2::{Digest, Sha256};
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

const MIB: u64 = 1 << 20;
const DATA_MIB: u64 = 128;

fn main() -> Result<()> {
    let disks: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    ensure!(disks.len() == 2, "usage: demo DISK DISK");
    let dm = KernelDm::open()?;
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    println!(
        "pxd demo: one node, real device-mapper, kernel {}",
        release.trim()
    );

    step(1, "drives");
    let mut drives = Vec::new();
    for d in &disks {
        let dev = block::device_of(d).with_context(|| format!("{}", d.display()))?;
        let size = block::size_bytes(d)?;
        println!(
            "      {}  {dev}  {:.1} GiB",
            d.display(),
            size as f64 / (1u64 << 30) as f64
        );
        drives.push(Drive {
            dev,
            size: Sectors(size / 512),
        });
    }

    step(
        2,
        "pool p0: metadata on the first drive, data concatenated over both",
    );
    let spec = PoolSpec {
        node: Id::node("demo")?,
        pool: Id::object("p0")?,
        drives,
        chunk: DEFAULT_CHUNK,
    };
    let pool = pool::ensure_pool(&dm, &spec)?;
    for p in pool.plan.devices() {
        for (start, len, ttype, params) in dm.table(&p.name.dm_name())? {
            println!(
                "      {:<24} {start} {len} {ttype} {params}",
                p.name.to_string()
            );
        }
    }
    let before = pool::usage(&dm, &pool)?;
    println!("      use: {before}");

    step(3, "volume v1: a 1 GiB thin device in the pool");
    let vol = pool::ensure_thin(
        &dm,
        &pool,
        &Id::object("v1")?,
        ThinDevId::new_u64(1)?,
        Sectors(1024 * 2048),
    )?;
    println!(
        "      {}  {} bytes, thin id {}",
        vol.path().display(),
        block::size_bytes(&vol.path())?,
        vol.thin_id
    );
    println!(
        "      use: {} (thin: nothing allocated yet)",
        pool::usage(&dm, &pool)?
    );

    step(
        4,
        &format!("write {DATA_MIB} MiB of random data with O_DIRECT"),
    );
    let started = Instant::now();
    let written = write_random(&vol.path(), DATA_MIB)?;
    println!(
        "      sha256 {written}  ({:.0} MiB/s in this emulated VM)",
        DATA_MIB as f64 / started.elapsed().as_secs_f64()
    );

    step(5, "read it back with O_DIRECT");
    let read = sha256_of(&vol.path(), DATA_MIB)?;
    ensure!(read == written, "read back {read}, wrote {written}");
    println!("      sha256 {read}  matches");
    let after = pool::usage(&dm, &pool)?;
    println!("      use before: {before}");
    println!("      use after:  {after}");

    step(
        6,
        "set everything up again: pxd adopts what exists instead of failing",
    );
    let again = pool::ensure_pool(&dm, &spec)?;
    let vol2 = pool::ensure_thin(&dm, &again, &vol.name.id, vol.thin_id, Sectors(1024 * 2048))?;
    let adopted = again
        .applied
        .devices
        .iter()
        .filter(|a| a.outcome == Outcome::AlreadyExists)
        .count()
        + usize::from(vol2.device_outcome == Outcome::AlreadyExists);
    println!(
        "      {adopted} of 4 devices adopted as they were; data still {}",
        sha256_of(&vol2.path(), DATA_MIB)?
    );

    step(7, "tear down and check the pool metadata with thin_check");
    stack::teardown(&dm, &[&vol.name, &pool.plan.pool.name])?;
    let check = std::process::Command::new("thin_check")
        .arg(node_path(&pool.plan.meta.name.dm_name()))
        .output()?;
    ensure!(
        check.status.success(),
        "thin_check: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    pool::deactivate_pool(&dm, &pool)?;
    println!("      thin_check clean; devices removed, data stays on the disks");
    println!("\npxd demo: done");
    Ok(())
}

fn step(n: u32, what: &str) {
    println!("\n[{n}] {what}");
}

/// Writes `mib` MiB of pseudo-random data in 1 MiB O_DIRECT requests; returns its sha256.
fn write_random(dev: &Path, mib: u64) -> Result<String> {
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)?;
    let mut buf = AlignedBuf::zeroed(MIB as usize);
    let mut hash = Sha256::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..mib {
        for word in buf.as_mut_slice().chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        hash.update(buf.as_slice());
        file.write_all_at(buf.as_slice(), i * MIB)?;
    }
    file.sync_all()?;
    Ok(hex(&hash.finalize()))
}

fn sha256_of(dev: &Path, mib: u64) -> Result<String> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)?;
    let mut buf = AlignedBuf::zeroed(MIB as usize);
    let mut hash = Sha256::new();
    for i in 0..mib {
        file.read_exact_at(buf.as_mut_slice(), i * MIB)?;
        hash.update(buf.as_slice());
    }
    Ok(hex(&hash.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
