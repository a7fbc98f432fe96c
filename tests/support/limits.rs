//! The two-writer limit scenario, shared by the host tier (cgroup v1) and the VM tier
//! (cgroup v2): the real probes and the real limit controller, ticking as the daemon ticks
//! it, hold one write IOPS limit for a device that writers in two cgroups share.

use crate::cgroup::{fio_in, TestCgroup};
use pxd::io::cgroups::{id_of, Hierarchy};
use pxd::io::limits::{Controller, Limit, TICK};
use pxd::io::{block_device_dev, DevT, IoProbe};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The write IOPS limit the scenario holds.
pub const LIMIT: u64 = 200;

/// fio writing 4 KiB blocks at random for `secs` seconds in cgroup `cg`.
fn writer(cg: &Path, dev: &Path, name: &str, secs: u32) -> Child {
    let args = format!("--rw=randwrite --bs=4k --size=128M --time_based --runtime={secs}");
    fio_in(cg, dev, name, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start fio")
}

/// fio's write IOPS, with no error.
fn write_iops(child: Child) -> f64 {
    let out = child.wait_with_output().expect("fio");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fio: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(&text[text.find('{').expect("json")..]).expect("fio json");
    assert_eq!(v["jobs"][0]["error"], 0);
    v["jobs"][0]["write"]["iops"].as_f64().expect("iops")
}

/// The writes cgroup `cg` did to `dev` so far, by the probe.
fn writes(probe: &IoProbe, dev: DevT, cg: u64) -> u64 {
    probe
        .cgroup_counts()
        .expect("per-cgroup counts")
        .into_iter()
        .find(|(d, c, _)| *d == dev && *c == cg)
        .map_or(0, |(_, _, c)| c.writes)
}

pub fn within_5pct(got: f64, want: f64) -> bool {
    (got - want).abs() <= want * 0.05
}

/// Two writers in two fresh cgroups share block device `device` under a write limit of
/// [`LIMIT`]: together they get the limit, not twice it; when one stops, the other has the
/// whole limit within 3 s; when the limit goes, no throttle is left. `tag` names the cgroups.
pub fn two_writers_share_a_write_limit(device: &Path, tag: &str) {
    let dev = block_device_dev(device).expect("dev_t");
    let hierarchy = Hierarchy::detect().expect("a cgroup hierarchy with io or blkio");
    let cgroup = |w: &str| TestCgroup::new(hierarchy.mount(), &format!("pxd-{tag}-{w}"));
    let (a, b) = (cgroup("a"), cgroup("b"));
    let (a_id, b_id) = (id_of(&a.0).expect("id"), id_of(&b.0).expect("id"));
    let probe = Arc::new(IoProbe::load().expect("loading the probes"));

    // The controller, as the daemon runs it: a tick every TICK.
    let limited = Arc::new(AtomicBool::new(true));
    let stop = Arc::new(AtomicBool::new(false));
    let control = {
        let (probe, limited, stop) = (probe.clone(), limited.clone(), stop.clone());
        let hierarchy = hierarchy.clone();
        std::thread::spawn(move || {
            let mut c = Controller::new(hierarchy);
            let mut last = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let limits: Vec<Limit> = if limited.load(Ordering::Relaxed) {
                    vec![Limit {
                        dev,
                        knobs: [0, LIMIT, 0, 0],
                    }]
                } else {
                    Vec::new()
                };
                let counts = probe.cgroup_counts().expect("counts");
                let now = Instant::now();
                let errors = c.tick(
                    &limits,
                    &[dev],
                    &counts,
                    now.duration_since(last).as_secs_f64(),
                );
                assert!(errors.is_empty(), "{errors:?}");
                last = now;
                std::thread::sleep(TICK);
            }
        })
    };
    // The guards are in place before any writer starts.
    std::thread::sleep(TICK * 2);

    // Both for 10 s: their sum is the limit, not twice it.
    let (wa, wb) = (writer(&a.0, device, "a", 10), writer(&b.0, device, "b", 10));
    let (ia, ib) = (write_iops(wa), write_iops(wb));
    println!(
        "two writers ({}): a {ia:.1} + b {ib:.1} = {:.1} write IOPS (limit {LIMIT})",
        hierarchy.name(),
        ia + ib
    );
    assert!(within_5pct(ia + ib, LIMIT as f64), "a {ia} + b {ib}");

    // b stops after 4 s; within 3 s a has the whole limit.
    let wa = writer(&a.0, device, "a2", 12);
    let wb = writer(&b.0, device, "b2", 4);
    write_iops(wb);
    std::thread::sleep(Duration::from_secs(3));
    let (from, at) = (writes(&probe, dev, a_id), Instant::now());
    std::thread::sleep(Duration::from_secs(4));
    let alone = (writes(&probe, dev, a_id) - from) as f64 / at.elapsed().as_secs_f64();
    write_iops(wa);
    println!("a alone, from 3 s after b stopped: {alone:.1} write IOPS");
    assert!(within_5pct(alone, LIMIT as f64), "a alone: {alone}");
    assert!(writes(&probe, dev, b_id) > 0);

    // Removed: every throttle written for the device is lifted.
    limited.store(false, Ordering::Relaxed);
    std::thread::sleep(TICK * 3);
    stop.store(true, Ordering::Relaxed);
    control.join().expect("the controller");
    let left = pxd::kernel::throttle::holding(&hierarchy, dev);
    assert!(left.is_empty(), "throttles left: {left:?}");
}
