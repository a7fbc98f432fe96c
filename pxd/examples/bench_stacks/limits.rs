//! How close pxd's limit controller holds a volume's limits: fio at full speed in a cgroup
//! on a thin device, with the controller ticking as the daemon ticks it, each measured rate
//! as a ratio to its limit.

use crate::fio::{fio_in, Job};
use anyhow::{Context, Result};
use pxd::io::cgroups::Hierarchy;
use pxd::io::limits::{Controller, Limit, TICK};
use pxd::io::{block_device_dev, IoProbe};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// A cgroup for the bench's fio, removed on drop.
struct Cgroup(PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// One limit to hold: its knobs (read IOPS, write IOPS, read B/s, write B/s), the job that
/// pushes against it, and which knob the job's figure is compared with.
struct Case {
    name: &'static str,
    knobs: [u64; 4],
    job: Job,
    knob: usize,
}

const CASES: [Case; 3] = [
    Case {
        name: "read IOPS limit 500",
        knobs: [500, 0, 0, 0],
        job: Job {
            name: "randread 4k QD32",
            rw: "randread",
            bs: "4k",
            iodepth: 32,
        },
        knob: 0,
    },
    Case {
        name: "write IOPS limit 300",
        knobs: [0, 300, 0, 0],
        job: Job {
            name: "randwrite 4k QD32",
            rw: "randwrite",
            bs: "4k",
            iodepth: 32,
        },
        knob: 1,
    },
    Case {
        name: "write bandwidth 8 MiB/s",
        knobs: [0, 0, 0, 8 << 20],
        job: Job {
            name: "write 1M QD8",
            rw: "write",
            bs: "1m",
            iodepth: 8,
        },
        knob: 3,
    },
];

/// Runs every case on `dev`; the figures, or null where this guest has no cgroup hierarchy
/// with block throttling or the probes do not load.
pub fn accuracy(dev: &Path) -> Result<Value> {
    let (Some(hierarchy), Ok(probe)) = (Hierarchy::detect(), IoProbe::load()) else {
        println!("  limits: no cgroup hierarchy with io throttling, or no probes; not measured");
        return Ok(json!(null));
    };
    let cgroup = Cgroup(hierarchy.mount().join("pxd-bench"));
    let _ = std::fs::remove_dir(&cgroup.0);
    std::fs::create_dir(&cgroup.0).context("making the bench's cgroup")?;
    let dev_t = block_device_dev(dev)?;
    let probe = Arc::new(probe);
    let mut out = Vec::new();
    for case in &CASES {
        let stop = Arc::new(AtomicBool::new(false));
        let control = {
            let (probe, stop, hierarchy) = (probe.clone(), stop.clone(), hierarchy.clone());
            let limit = Limit {
                dev: dev_t,
                knobs: case.knobs,
            };
            std::thread::spawn(move || {
                let mut c = Controller::new(hierarchy);
                let mut last = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let counts = probe.cgroup_counts().unwrap_or_default();
                    let now = Instant::now();
                    let dt = now.duration_since(last).as_secs_f64();
                    last = now;
                    c.tick(&[limit], &[dev_t], &counts, dt);
                    std::thread::sleep(TICK);
                }
                // Lifts what it wrote.
                c.tick(&[], &[dev_t], &[], TICK.as_secs_f64());
            })
        };
        std::thread::sleep(TICK * 3);
        let r = fio_in(Some(&cgroup.0), dev, &case.job);
        stop.store(true, Ordering::Relaxed);
        let _ = control.join();
        let r = r?;
        let got = match case.knob {
            0 | 1 => r["iops"].as_f64().unwrap_or(0.0),
            _ => r["mib_s"].as_f64().unwrap_or(0.0) * f64::from(1 << 20),
        };
        let limit = case.knobs[case.knob] as f64;
        let ratio = got / limit;
        let shown = match case.knob {
            0 | 1 => format!("{got:.0} IOPS"),
            _ => format!("{:.2} MiB/s", got / f64::from(1 << 20)),
        };
        println!(
            "  {:<26} {:<18} {shown:>14}  {ratio:>5.3}x the limit",
            case.name, case.job.name
        );
        out.push(json!({ "case": case.name, "job": case.job.name, "limit": limit, "measured": got, "ratio": ratio }));
    }
    Ok(json!(out))
}
