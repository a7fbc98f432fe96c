//! Runs inside the VM for `cargo xtask bench`: fixed fio jobs on the raw disk and on the stacks
//! pxd builds over a disk of the same kind, each figure reported as a ratio to the raw disk in
//! the same run, then the cost of the eBPF probes and how close the limit controller holds
//! a limit. Usage: `bench_stacks RAW_DISK POOL_DISK OUT.json`. Reports; never asserts.

mod limits;

use anyhow::{bail, Context, Result};
use devicemapper::{Sectors, ThinDevId};
use pxd::crypt::VolumeKey;
use pxd::kernel::block;
use pxd::kernel::dm::{node_path, KernelDm};
use pxd::kernel::stack;
use pxd::plan::crypt::{kernel_has_workqueue_bypass, plan_crypt};
use pxd::plan::names::Id;
use pxd::plan::pool::{Drive, PoolSpec, DEFAULT_CHUNK};
use pxd::plan::thin::plan_thin;
use pxd::pool;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Region of each device the jobs use.
const REGION: &str = "512m";
const RUNTIME_S: u32 = 5;

struct Job {
    name: &'static str,
    rw: &'static str,
    bs: &'static str,
    iodepth: u32,
}

const JOBS: [Job; 4] = [
    Job {
        name: "randread 4k QD32",
        rw: "randread",
        bs: "4k",
        iodepth: 32,
    },
    Job {
        name: "randwrite 4k QD32",
        rw: "randwrite",
        bs: "4k",
        iodepth: 32,
    },
    Job {
        name: "read 1M QD8",
        rw: "read",
        bs: "1m",
        iodepth: 8,
    },
    Job {
        name: "write 1M QD8",
        rw: "write",
        bs: "1m",
        iodepth: 8,
    },
];

fn fio(dev: &Path, job: &Job) -> Result<Value> {
    fio_in(None, dev, job)
}

/// [`fio`], run from inside cgroup `cgroup` when one is given (so that its throttles apply).
fn fio_in(cgroup: Option<&Path>, dev: &Path, job: &Job) -> Result<Value> {
    let mut c = match cgroup {
        Some(cg) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!(
                    "echo $$ > {}/cgroup.procs && exec fio \"$@\"",
                    cg.display()
                ))
                .arg("fio");
            c
        }
        None => Command::new("fio"),
    };
    let out = c
        .args([
            "--name=bench",
            "--direct=1",
            "--ioengine=libaio",
            "--time_based",
        ])
        .arg(format!("--filename={}", dev.display()))
        .arg(format!("--rw={}", job.rw))
        .arg(format!("--bs={}", job.bs))
        .arg(format!("--iodepth={}", job.iodepth))
        .arg(format!("--size={REGION}"))
        .arg(format!("--runtime={RUNTIME_S}"))
        .arg("--output-format=json")
        .output()
        .context("running fio")?;
    if !out.status.success() {
        bail!(
            "fio {} on {}: {}",
            job.name,
            dev.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("reading fio's JSON")?;
    let side = if job.rw.contains("read") {
        "read"
    } else {
        "write"
    };
    let r = &v["jobs"][0][side];
    Ok(json!({
        "iops": r["iops"].as_f64().unwrap_or(0.0),
        "mib_s": r["bw"].as_f64().unwrap_or(0.0) / 1024.0,
        "clat_mean_us": r["clat_ns"]["mean"].as_f64().unwrap_or(0.0) / 1000.0,
        "errors": v["jobs"][0]["error"].as_i64().unwrap_or(-1),
    }))
}

/// The 4k jobs on the overwritten thin device again with pxd's eBPF probes loaded, each as
/// a ratio to the same job without them (from `before`).
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
        let off = before
            .iter()
            .find(|r| r["target"] == "thin, overwrite" && r["job"] == job.name)
            .and_then(|r| r["iops"].as_f64())
            .unwrap_or(0.0);
        let on = fio(dev, job)?["iops"].as_f64().unwrap_or(0.0);
        let ratio = if off > 0.0 { on / off } else { 0.0 };
        println!(
            "  {:<26} {:<18} {on:>10.0} IOPS   {ratio:>5.2}x without probes ({off:.0})",
            "thin, probes on", job.name
        );
        out.push(json!({ "job": job.name, "iops_off": off, "iops_on": on, "ratio": ratio }));
    }
    drop(probe);
    Ok(json!(out))
}

fn prewrite(dev: &Path) -> Result<()> {
    let ok = Command::new("fio")
        .args([
            "--name=prewrite",
            "--direct=1",
            "--ioengine=libaio",
            "--rw=write",
        ])
        .args(["--bs=1m", "--iodepth=8", &format!("--size={REGION}")])
        .arg(format!("--filename={}", dev.display()))
        .stdout(std::process::Stdio::null())
        .status()?
        .success();
    if !ok {
        bail!("prewrite of {} failed", dev.display());
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    let [raw, pool_disk, out] = args.as_slice() else {
        bail!("usage: bench_stacks RAW_DISK POOL_DISK OUT.json");
    };
    let dm = KernelDm::open()?;
    let spec = PoolSpec {
        node: Id::node("bench")?,
        pool: Id::object("p0")?,
        drives: vec![Drive {
            dev: block::device_of(pool_disk)?,
            size: Sectors(block::size_bytes(pool_disk)? / 512),
        }],
        chunk: DEFAULT_CHUNK,
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
    let overwrite = thin(1)?;
    let first_random = thin(2)?;
    let first_seq = thin(3)?;
    // Crypt on thin 4, with the flags the running kernel has.
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    let node = Id::node("bench")?;
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
        kernel_has_workqueue_bypass(&release),
    );
    pxd::volume::open(&dm, &[&t4, &crypt], Some(&VolumeKey::generate()?))?;
    let crypt_path = node_path(&crypt.name.dm_name());

    println!(
        "bench: kernel {}, {RUNTIME_S} s per job over {REGION}, figures as ratios to the raw disk",
        release.trim()
    );
    for dev in [raw.as_path(), &overwrite, &crypt_path] {
        prewrite(dev)?;
    }
    let targets: Vec<(&str, &Path, Vec<usize>)> = vec![
        ("raw disk", raw, vec![0, 1, 2, 3]),
        ("thin, overwrite", &overwrite, vec![0, 1, 2, 3]),
        ("thin, first write", &first_random, vec![1]),
        ("thin, first write (seq)", &first_seq, vec![3]),
        ("crypt on thin", &crypt_path, vec![0, 1, 2, 3]),
    ];
    let mut results = Vec::new();
    let mut raw_figures: Vec<f64> = vec![0.0; JOBS.len()];
    for (target, dev, jobs) in &targets {
        for &j in jobs {
            let job = &JOBS[j];
            let mut r = fio(dev, job)?;
            let figure = if job.bs == "4k" {
                r["iops"].as_f64()
            } else {
                r["mib_s"].as_f64()
            }
            .unwrap_or(0.0);
            if *target == "raw disk" {
                raw_figures[j] = figure;
            }
            let ratio = if raw_figures[j] > 0.0 {
                figure / raw_figures[j]
            } else {
                0.0
            };
            r["target"] = json!(target);
            r["job"] = json!(job.name);
            r["ratio_to_raw"] = json!(ratio);
            let unit = if job.bs == "4k" { "IOPS" } else { "MiB/s" };
            println!(
                "  {target:<26} {:<18} {figure:>10.0} {unit:<5}  {ratio:>5.2}x raw",
                job.name
            );
            results.push(r);
        }
    }
    let probes = probe_cost(&overwrite, &results)?;
    let limits = limits::accuracy(&overwrite)?;
    let report = json!({
        "kernel": release.trim(),
        "region": REGION,
        "runtime_s": RUNTIME_S,
        "results": results,
        "probes": probes,
        "limits": limits,
    });
    std::fs::write(out, serde_json::to_string_pretty(&report)?)?;
    println!("bench: wrote {}", out.display());

    stack::teardown(&dm, &[&crypt.name, &t4.name])?;
    for n in 1..=3 {
        let name = pxd::plan::names::DeviceName::new(
            &node,
            pxd::plan::names::Kind::Thin,
            &Id::object(&format!("t{n}"))?,
            None,
        );
        stack::teardown(&dm, &[&name])?;
    }
    pool::deactivate_pool(&dm, &pool)?;
    Ok(())
}
