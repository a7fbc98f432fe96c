//! The guest side of the power-loss test (tests/host/power_loss.rs).
//!
//! - `write DIR ACKS`: appends numbered 4 KiB records to DIR/records, fsyncing each, and
//!   appends the record's number to ACKS (on a host share) once the fsync returned. It never
//!   stops: the VM is killed under it.
//! - `verify DIR ACKS`: checks that every acknowledged record is intact, then unmounts DIR,
//!   takes every pxd stack down and runs thin_check on the pool's metadata.

use pxd::kernel::dm::{DeviceMapper, KernelDm};
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const RECORD: usize = 4096;

fn record(n: u64) -> Vec<u8> {
    let mut r = vec![0u8; RECORD];
    let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for chunk in r.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    r[..8].copy_from_slice(&n.to_le_bytes());
    r
}

fn write(dir: &Path, acks: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let mut data = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("records"))?;
    let mut ack = OpenOptions::new().create(true).append(true).open(acks)?;
    for n in 0u64.. {
        data.write_all(&record(n))?;
        data.sync_all()?;
        writeln!(ack, "{n}")?;
        ack.sync_all()?;
    }
    Ok(())
}

fn verify(dir: &Path, acks: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let mut text = String::new();
    std::fs::File::open(acks)?.read_to_string(&mut text)?;
    let acked: Vec<u64> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    let last = *acked
        .last()
        .ok_or("no record was acknowledged before the power cut")?;
    {
        // Closed before the unmount below.
        let data = std::fs::File::open(dir.join("records"))?;
        let mut buf = vec![0u8; RECORD];
        for n in 0..=last {
            data.read_exact_at(&mut buf, n * RECORD as u64)
                .map_err(|e| format!("acknowledged record {n} is gone: {e}"))?;
            if buf != record(n) {
                return Err(format!("acknowledged record {n} is corrupt").into());
            }
        }
    }
    println!("power-loss: all {} acknowledged records intact", last + 1);

    // Take the stack down and check the pool's metadata.
    let status = std::process::Command::new("umount").arg(dir).status()?;
    if !status.success() {
        return Err("umount failed".into());
    }
    // Everything pxd has, top of each stack first; the pool's meta and data stay for the check.
    let dm = KernelDm::open()?;
    let mut names: Vec<String> = dm
        .list()?
        .into_iter()
        .map(|(n, _)| n.to_string())
        .filter(|n| n.starts_with("pxd-"))
        .collect();
    let layer = |n: &String| match () {
        _ if n.contains("-crypt-") => 0,
        _ if n.contains("-thin-") => 1,
        _ if n.ends_with("-meta") || n.ends_with("-data") => 3,
        _ => 2,
    };
    names.sort_by_key(layer);
    let remove = |n: &String| -> Result<(), Box<dyn std::error::Error>> {
        dm.remove(&devicemapper::DmNameBuf::new(n.clone())?)?;
        Ok(())
    };
    for n in names.iter().filter(|n| layer(n) < 3) {
        remove(n)?;
    }
    let meta = names
        .iter()
        .find(|n| n.ends_with("-meta"))
        .ok_or("no pool metadata device came back")?;
    let check = std::process::Command::new("thin_check")
        .arg(Path::new("/dev/mapper").join(meta))
        .output()?;
    if !check.status.success() {
        return Err(format!("thin_check: {}", String::from_utf8_lossy(&check.stderr)).into());
    }
    for n in names.iter().filter(|n| layer(n) == 3) {
        remove(n)?;
    }
    println!("power-loss: thin_check clean");
    Ok(())
}

fn main() {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let result = match args
        .iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .as_slice()
    {
        [cmd, ..] if cmd == "write" && args.len() == 3 => write(&args[1], &args[2]),
        [cmd, ..] if cmd == "verify" && args.len() == 3 => verify(&args[1], &args[2]),
        _ => Err("usage: pxd-test-powerloss write DIR ACKS | verify DIR ACKS".into()),
    };
    if let Err(e) = result {
        eprintln!("pxd-test-powerloss: {e}");
        std::process::exit(1);
    }
}
