//! The demo that `cargo xtask demo` runs inside the VM: a thin pool over two disks, a volume,
//! data written and read back, the pool's use before and after, a second setup that adopts
//! everything, a snapshot and its clone, an encrypted volume, an online grow, and a one-node
//! cluster run by the real `pxd daemon` and CLI. Usage: `demo DISK DISK PXD_BINARY`.

use anyhow::{ensure, Context, Result};
use devicemapper::{Sectors, ThinDevId};
use pxd::crypt::VolumeKey;
use pxd::kernel::block::{self, AlignedBuf};
use pxd::kernel::dm::{node_path, DeviceMapper, KernelDm};
use pxd::plan::crypt::{kernel_has_workqueue_bypass, plan_crypt};
use pxd::plan::names::Id;
use pxd::plan::pool::{Drive, PoolSpec, DEFAULT_CHUNK};
use pxd::plan::thin::{plan_grow, plan_thin};
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
    let mut args: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    ensure!(args.len() == 3, "usage: demo DISK DISK PXD_BINARY");
    let pxd_bin = args.pop().unwrap_or_default();
    let disks = args;
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

    step(
        7,
        "snapshot v1 while it is live, overwrite it, and clone the snapshot",
    );
    pool::snapshot_thin_id(
        &dm,
        &pool,
        vol.thin_id,
        ThinDevId::new_u64(2)?,
        &[&vol.name],
    )?;
    write_random_seeded(&vol.path(), 4, 42)?;
    pool::snapshot_thin_id(
        &dm,
        &pool,
        ThinDevId::new_u64(2)?,
        ThinDevId::new_u64(3)?,
        &[],
    )?;
    let clone = plan_thin(
        &spec.node,
        &spec.pool,
        &Id::object("c1")?,
        ThinDevId::new_u64(3)?,
        Sectors(1024 * 2048),
    )?;
    stack::apply(&dm, &[&clone])?;
    let clone_path = node_path(&clone.name.dm_name());
    let in_clone = sha256_of(&clone_path, DATA_MIB)?;
    println!(
        "      v1 now:         {}",
        sha256_of(&vol.path(), DATA_MIB)?
    );
    println!(
        "      clone of snap:  {in_clone}  ({})",
        if in_clone == written {
            "the data as it was"
        } else {
            "DIFFERS"
        }
    );
    ensure!(
        in_clone == written,
        "the clone does not hold the snapshot's data"
    );
    println!(
        "      use: {}  (only the 4 MiB overwritten are new chunks)",
        pool::usage(&dm, &pool)?
    );

    step(
        8,
        "an encrypted volume: dm-crypt aes-xts-plain64 over thin, its key in the kernel keyring",
    );
    let secret = plan_thin(
        &spec.node,
        &spec.pool,
        &Id::object("sec")?,
        ThinDevId::new_u64(4)?,
        Sectors(256 * 2048),
    )?;
    pool::create_thin_id(&dm, &pool, ThinDevId::new_u64(4)?)?;
    let release = release.trim().to_owned();
    let crypt = plan_crypt(
        &spec.node,
        &Id::object("sec")?,
        Sectors(256 * 2048),
        secret.name.clone(),
        kernel_has_workqueue_bypass(&release),
    );
    pxd::volume::open(&dm, &[&secret, &crypt], Some(&VolumeKey::generate()?))?;
    let table = dm.table(&crypt.name.dm_name())?;
    println!("      {} table: {} {}", crypt.name, table[0].2, table[0].3);
    let marker = b"PXD-DEMO-SECRET-0123456789abcdef";
    let plain: Vec<u8> = marker.iter().copied().cycle().take(MIB as usize).collect();
    write_bytes(&node_path(&crypt.name.dm_name()), &plain)?;
    let beneath = read_bytes(&node_path(&secret.name.dm_name()), MIB as usize)?;
    let visible = beneath.windows(16).any(|w| w == &marker[..16]);
    println!(
        "      wrote a known pattern through crypt; on the thin device beneath it is {}",
        if visible {
            "VISIBLE"
        } else {
            "nowhere to be found"
        }
    );
    ensure!(!visible, "plaintext reached the thin device");

    step(9, "grow v1 online from 1 GiB to 2 GiB");
    let bigger = plan_grow(
        &plan_thin(
            &spec.node,
            &spec.pool,
            &vol.name.id,
            vol.thin_id,
            Sectors(1024 * 2048),
        )?,
        Sectors(2048 * 2048),
    )?;
    stack::grow(&dm, &[&bigger])?;
    println!(
        "      {} is now {} bytes",
        vol.path().display(),
        block::size_bytes(&vol.path())?
    );

    step(10, "tear down and check the pool metadata with thin_check");
    stack::teardown(
        &dm,
        &[
            &crypt.name,
            &secret.name,
            &clone.name,
            &vol.name,
            &pool.plan.pool.name,
        ],
    )?;
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
    cluster(&pxd_bin)?;
    println!("\npxd demo: done");
    Ok(())
}

/// A one-node cluster, run by the real daemon and driven by the CLI.
fn cluster(pxd: &Path) -> Result<()> {
    step(
        11,
        "a one-node cluster: pxd daemon, then pxd cluster init / status and pxd node list",
    );
    let dir = PathBuf::from("/tmp/pxd-demo");
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("pxd.sock");
    let mut daemon = std::process::Command::new(pxd)
        .args(["daemon", "--addr", "127.0.0.1", "--name", "demo"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--socket")
        .arg(&socket)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let cli = |args: &[&str]| -> Result<String> {
        let out = std::process::Command::new(pxd)
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .output()?;
        ensure!(
            out.status.success(),
            "pxd {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let deadline = Instant::now() + std::time::Duration::from_secs(120);
    while !socket.exists() {
        ensure!(
            Instant::now() < deadline,
            "the daemon did not open its socket"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let result = (|| -> Result<()> {
        println!("      $ pxd cluster init");
        cli(&["cluster", "init"])?;
        println!("      (join token printed; other nodes join with `pxd cluster join TOKEN`)");
        // The single member elects itself leader within a moment.
        let status = loop {
            match cli(&["cluster", "status"]) {
                Ok(s) if s.contains("demo") => break s,
                Err(e) if Instant::now() > deadline => return Err(e),
                _ if Instant::now() > deadline => anyhow::bail!("the cluster has no leader"),
                _ => std::thread::sleep(std::time::Duration::from_millis(200)),
            }
        };
        println!("      $ pxd cluster status");
        status.lines().for_each(|l| println!("        {l}"));
        println!("      $ pxd node list");
        cli(&["node", "list"])?
            .lines()
            .for_each(|l| println!("        {l}"));
        Ok(())
    })();
    let _ = daemon.kill();
    let _ = daemon.wait();
    result
}

fn write_random_seeded(dev: &Path, mib: u64, seed: u64) -> Result<()> {
    let mut x = seed | 1;
    let data: Vec<u8> = (0..mib * MIB / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    write_bytes(dev, &data)
}

fn write_bytes(dev: &Path, data: &[u8]) -> Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)?;
    let mut buf = AlignedBuf::zeroed(MIB as usize);
    for (i, chunk) in data.chunks(MIB as usize).enumerate() {
        let b = &mut buf.as_mut_slice()[..chunk.len()];
        b.copy_from_slice(chunk);
        file.write_all_at(b, i as u64 * MIB)?;
    }
    file.sync_all()?;
    Ok(())
}

fn read_bytes(dev: &Path, len: usize) -> Result<Vec<u8>> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)?;
    let mut buf = AlignedBuf::zeroed(len);
    file.read_exact_at(buf.as_mut_slice(), 0)?;
    Ok(buf.as_slice()[..len].to_vec())
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
