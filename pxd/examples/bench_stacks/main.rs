//! Runs inside the VM for `cargo xtask bench`: fio on pxd's stacks beside the raw disk and
//! the stacks a user would otherwise pick (LVM thin, LUKS2), each figure the median of
//! interleaved repetitions with its range, as ratios to the raw disk and to the peer. Then
//! the cost of the eBPF probes and how close the limit controller holds a limit.
//!
//! Usage: `bench_stacks [--quick] storage|crypt-params|thin-params RAW_DISK POOL_DISK PEER_DISK
//! OUT.json`. `crypt-params` runs pxd's crypt layer under each candidate setting instead (see
//! [`variants`]), beside LUKS2; `thin-params` one pool per dm-thin candidate, each on a slice
//! of the raw disk (see [`thin_params`]).
//! `--quick` runs each job once, for a smoke run. Reports; never asserts.

mod fio;
mod limits;
mod peers;
mod stats;
mod thin_params;
mod variants;

use anyhow::{bail, Result};
use devicemapper::{Sectors, ThinDevId};
use fio::{fio, prewrite, Job, JOBS, REGION, RUNTIME_S};
use pxd::crypt::VolumeKey;
use pxd::kernel::block;
use pxd::kernel::dm::{node_path, KernelDm};
use pxd::kernel::stack;
use pxd::plan::crypt::{plan_crypt, Workqueues};
use pxd::plan::names::Id;
use pxd::plan::pool::{Drive, PoolSpec, ThinFeatures, DEFAULT_CHUNK};
use pxd::plan::thin::plan_thin;
use pxd::pool;
use serde_json::{json, Value};
use stats::Stack;
use std::path::{Path, PathBuf};

/// Repetitions of every job on every stack; `--quick` runs one.
const REPS: usize = 5;
const RAW: &str = "raw disk";
const PXD_THIN: &str = "pxd thin";
const LVM_THIN: &str = "LVM thin";
const PXD_CRYPT: &str = "pxd crypt on thin";
const LUKS2: &str = "LUKS2 on LVM thin";

/// The 4k jobs on the overwritten thin device again with pxd's eBPF probes loaded, each as
/// a ratio to the median of the same job without them (from `before`).
fn probe_cost(dev: &Path, before: &[Value]) -> Result<Value> {
    let probe = match pxd::io::IoProbe::load() {
        Ok(p) => p,
        Err(e) => {
            println!("  probes: could not load ({e}); their cost is not measured");
            return Ok(json!(null));
        }
    };
    let mut out = Vec::new();
    for job in &JOBS[..2] {
        let off = stats::spread(before, PXD_THIN, job).map_or(0.0, |s| s.median);
        let on = fio(dev, job)?["iops"].as_f64().unwrap_or(0.0);
        let ratio = if off > 0.0 { on / off } else { 0.0 };
        println!(
            "  {:<26} {:<18} {on:>10.0} IOPS   {ratio:>5.2}x without probes ({off:.0})",
            "pxd thin, probes on", job.name
        );
        out.push(json!({ "job": job.name, "iops_off": off, "iops_on": on, "ratio": ratio }));
    }
    drop(probe);
    Ok(json!(out))
}

fn stack(name: &str, dev: &Path, peer: Option<&str>) -> Stack {
    Stack {
        name: name.to_owned(),
        dev: dev.to_owned(),
        peer: peer.map(str::to_owned),
    }
}

fn main() -> Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.first().is_some_and(|a| a == "--quick");
    if quick {
        args.remove(0);
    }
    let [mode, raw, pool_disk, peer_disk, out] = args.as_slice() else {
        bail!(
            "usage: bench_stacks [--quick] storage|crypt-params|thin-params RAW_DISK POOL_DISK \
             PEER_DISK OUT.json"
        );
    };
    let reps = if quick { 1 } else { REPS };
    let (raw, pool_disk, peer_disk) = (Path::new(raw), Path::new(pool_disk), Path::new(peer_disk));
    let dm = KernelDm::open()?;
    let node = Id::node("bench")?;
    let spec = PoolSpec {
        node: node.clone(),
        pool: Id::object("p0")?,
        drives: vec![Drive {
            dev: block::device_of(pool_disk)?,
            size: Sectors(block::size_bytes(pool_disk)? / 512),
        }],
        chunk: DEFAULT_CHUNK,
        features: ThinFeatures::DEFAULT,
    };
    let pool = pool::ensure_pool(&dm, &spec, pool::Metadata::MayBeNew)?;
    let gib = Sectors(1024 * 2048);
    let thin = |n: u64| -> Result<PathBuf> {
        let v = pool::ensure_thin(
            &dm,
            &pool,
            &Id::object(&format!("t{n}"))?,
            ThinDevId::new_u64(n)?,
            gib,
        )?;
        Ok(v.path())
    };
    let thin_name = |n: u64| -> Result<pxd::plan::names::DeviceName> {
        Ok(pxd::plan::names::DeviceName::new(
            &node,
            pxd::plan::names::Kind::Thin,
            &Id::object(&format!("t{n}"))?,
            None,
        ))
    };
    let peers = peers::Peers::build(peer_disk)?;
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    println!(
        "bench: kernel {}, {RUNTIME_S} s per job over {REGION}, {reps} interleaved repetition(s)",
        release.trim()
    );
    println!(
        "bench: LUKS2 as cryptsetup made it: {}",
        peers::Peers::luks_table().trim()
    );
    let report = match mode.as_str() {
        "storage" => {
            let overwrite = thin(1)?;
            // Crypt on thin 4, as pxd builds it for an encrypted volume.
            let t4 = plan_thin(
                &node,
                &spec.pool,
                &Id::object("t4")?,
                ThinDevId::new_u64(4)?,
                gib,
            )?;
            pool::create_thin_id(&dm, &pool, ThinDevId::new_u64(4)?)?;
            let crypt = plan_crypt(
                &node,
                &Id::object("t4")?,
                gib,
                t4.name.clone(),
                Workqueues::DEFAULT.on_kernel(&release),
            );
            pxd::volume::open(&dm, &[&t4, &crypt], Some(&VolumeKey::generate()?))?;
            let crypt_path = node_path(&crypt.name.dm_name());
            let stacks = vec![
                stack(RAW, raw, None),
                stack(PXD_THIN, &overwrite, Some(LVM_THIN)),
                stack(LVM_THIN, &peers.lvm_thin, None),
                stack(PXD_CRYPT, &crypt_path, Some(LUKS2)),
                stack(LUKS2, &peers.luks, None),
            ];
            for s in &stacks {
                prewrite(&s.dev)?;
            }
            let jobs: Vec<&Job> = JOBS.iter().collect();
            let runs = stats::measure(&stacks, &jobs, reps)?;
            let summary = stats::report(&runs, &stacks, &jobs, RAW);
            let probes = probe_cost(&overwrite, &runs)?;
            let limits = limits::accuracy(&overwrite)?;
            stack::teardown(&dm, &[&crypt.name, &t4.name, &thin_name(1)?])?;
            json!({ "summary": summary, "runs": runs, "probes": probes, "limits": limits })
        }
        "thin-params" => {
            let mut pools = thin_params::ThinPools::build(&dm, &node, raw)?;
            let runs = pools.measure(&dm, reps)?;
            let jobs = thin_params::jobs();
            let summary = stats::report(&runs, &pools.stacks(), &jobs, "thin 256K (default)");
            pools.teardown(&dm)?;
            json!({ "summary": summary, "runs": runs })
        }
        "crypt-params" => {
            let mut devices = Vec::new();
            for (i, v) in variants::CRYPT_VARIANTS.iter().enumerate() {
                let lower = thin(10 + i as u64)?;
                devices.push(variants::CryptDevice::create(&dm, i, v, &lower, gib.0)?);
            }
            let mut stacks: Vec<Stack> = variants::CRYPT_VARIANTS
                .iter()
                .zip(&devices)
                .map(|(v, d)| stack(v.name, &d.path, None))
                .collect();
            stacks.push(stack(LUKS2, &peers.luks, None));
            for s in &stacks {
                prewrite(&s.dev)?;
            }
            let jobs: Vec<&Job> = JOBS.iter().filter(|j| j.bs == "4k").collect();
            let runs = stats::measure(&stacks, &jobs, reps)?;
            let summary = stats::report(&runs, &stacks, &jobs, LUKS2);
            drop(devices);
            for i in 0..variants::CRYPT_VARIANTS.len() {
                stack::teardown(&dm, &[&thin_name(10 + i as u64)?])?;
            }
            json!({ "summary": summary, "runs": runs })
        }
        other => bail!("mode {other:?}: storage, crypt-params or thin-params"),
    };
    let mut report = report;
    report["kernel"] = json!(release.trim());
    report["region"] = json!(REGION);
    report["runtime_s"] = json!(RUNTIME_S);
    report["repetitions"] = json!(reps);
    report["luks_table"] = json!(peers::Peers::luks_table().trim());
    std::fs::write(out, serde_json::to_string_pretty(&report)?)?;
    println!("\nbench: wrote {out}");
    peers.teardown()?;
    pool::deactivate_pool(&dm, &pool)?;
    Ok(())
}
