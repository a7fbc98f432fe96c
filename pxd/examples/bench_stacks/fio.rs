//! fio jobs: the fixed set every stack runs, and one run of one job on one device.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

/// Region of each device the jobs use.
pub const REGION: &str = "512m";
pub const RUNTIME_S: u32 = 5;

pub struct Job {
    pub name: &'static str,
    pub rw: &'static str,
    pub bs: &'static str,
    pub iodepth: u32,
}

pub const JOBS: [Job; 4] = [
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

pub fn fio(dev: &Path, job: &Job) -> Result<Value> {
    fio_in(None, dev, job)
}

/// [`fio`], run from inside cgroup `cgroup` when one is given (so that its throttles apply).
pub fn fio_in(cgroup: Option<&Path>, dev: &Path, job: &Job) -> Result<Value> {
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

/// Writes the whole region once, so that later jobs overwrite allocated blocks.
pub fn prewrite(dev: &Path) -> Result<()> {
    write_sequentially(dev, REGION)
}

/// Writes the first `size` of `dev` (fio's size syntax) in 1 MiB blocks.
pub fn write_sequentially(dev: &Path, size: &str) -> Result<()> {
    let ok = Command::new("fio")
        .args([
            "--name=prewrite",
            "--direct=1",
            "--ioengine=libaio",
            "--rw=write",
        ])
        .args(["--bs=1m", "--iodepth=8", &format!("--size={size}")])
        .arg(format!("--filename={}", dev.display()))
        .stdout(std::process::Stdio::null())
        .status()?
        .success();
    if !ok {
        bail!("writing {size} of {} failed", dev.display());
    }
    Ok(())
}

impl Job {
    /// The figure a job is judged by: IOPS for 4k jobs, MiB/s for 1M ones.
    pub fn figure(&self, result: &Value) -> f64 {
        let key = if self.bs == "4k" { "iops" } else { "mib_s" };
        result[key].as_f64().unwrap_or(0.0)
    }

    pub fn unit(&self) -> &'static str {
        if self.bs == "4k" {
            "IOPS"
        } else {
            "MiB/s"
        }
    }
}
