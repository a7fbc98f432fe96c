//! `cargo xtask bench replication`, in the VM: 4k random write and read IOPS of replicated
//! volumes (raid1 over NVMe/TCP legs, 2 and 3 of them) as ratios to a local-only volume, and
//! beside them raid1 over an NBD leg served by Debian's `nbd-server`: the mirror a user would
//! build by hand. All on three daemons in one guest, in the same run, each leg a thin device
//! of its node's pool; the NBD mirror has the same raid parameters as pxd's (bitmap regions
//! of 1 MiB, a 4 MiB metadata area per leg), so only the transport differs. Then a new
//! leg's thin-aware copy (`ha-update` 2 -> 3 of a volume a quarter written): its rate as a
//! ratio to the raw disk's sequential read, and the bytes it copied as a ratio to what the
//! source leg had allocated. Reports; never asserts on a figure.

use pxd::api::volumes::VolumeView;
use pxd::plan::raid::REGION_SECTORS;
use pxd::plan::replica::LEG_META;
use pxd::store::types::BuildPhase;
use pxd_tests::daemon::Daemon;
use pxd_tests::run;
use pxd_tests::trio::{legs_built, wait_until, Cluster};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Size of every volume, and the region fio runs over.
const SIZE_MIB: u64 = 256;
const RUNTIME_S: u32 = 5;
const NBD: &str = "/dev/nbd0";
const NBD_CONF: &str = "/tmp/pxd-bench-nbd.conf";
const NBD_PID: &str = "/tmp/pxd-bench-nbd.pid";
/// The hand-built mirror's device-mapper names (not pxd's, so no daemon touches them).
const PEER_PARTS: [&str; 4] = [
    "bench-peer-m0",
    "bench-peer-d0",
    "bench-peer-m1",
    "bench-peer-d1",
];
const PEER_RAID: &str = "bench-peer-raid";

/// The volume a new leg is copied for: its size, and the share of it written first.
const REBUILD_MIB: u64 = 1024;
const REBUILD_WRITTEN_MIB: u64 = 256;

/// fio's sequential read rate of `dev` in bytes a second, 1 MiB blocks, read-only.
fn sequential_read(dev: &Path) -> f64 {
    let out = Command::new("fio")
        .args([
            "--name=seq",
            "--direct=1",
            "--readonly",
            "--ioengine=libaio",
            "--rw=read",
            "--bs=1m",
            "--iodepth=8",
            "--time_based",
            "--size=512m",
        ])
        .arg(format!("--runtime={RUNTIME_S}"))
        .arg(format!("--filename={}", dev.display()))
        .arg("--output-format=json")
        .output()
        .expect("run fio");
    assert!(out.status.success(), "fio seq read on {}", dev.display());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("fio's JSON");
    v["jobs"][0]["read"]["bw_bytes"].as_f64().unwrap_or(0.0)
}

/// A repl-2 volume on nodes a and b, a quarter written, raised to 3 on node c: how fast
/// the copy ran against the raw disk, and how much it sent against what was allocated.
fn rebuild(c: &Cluster, raw: &Path) {
    let a = &c.nodes[0];
    let on = format!("{},{}", c.nodes[0].name, c.nodes[1].name);
    a.ok(&[
        "volume",
        "create",
        "rb",
        "--size",
        &format!("{REBUILD_MIB}M"),
        "--fs",
        "raw",
        "--repl",
        "2",
        "--nodes",
        &on,
    ]);
    legs_built(c, "rb");
    let v: VolumeView = a.json(&["volume", "attach", "rb"]);
    let dev = v.device.expect("an attached device");
    run(
        "fio",
        &[
            "--name=fill",
            "--direct=1",
            "--ioengine=libaio",
            "--rw=write",
            "--bs=1m",
            "--iodepth=8",
            &format!("--size={REBUILD_WRITTEN_MIB}m"),
            &format!("--filename={}", dev.display()),
        ],
    );
    let disk = sequential_read(raw);
    let started = Instant::now();
    a.ok(&[
        "volume",
        "ha-update",
        "rb",
        "--repl",
        "3",
        "--node",
        &c.nodes[2].name,
    ]);
    // The copy is over once the store no longer says Copying: the rest is the cut-over.
    let copied = wait_until("the copy ready", Duration::from_secs(1800), || {
        let v: VolumeView = a.json(&["volume", "inspect", "rb"]);
        let copying = v
            .build
            .as_ref()
            .is_some_and(|b| b.phase == BuildPhase::Copying);
        (!copying).then(|| started.elapsed())
    });
    let done = wait_until("the new leg joined", Duration::from_secs(600), || {
        let v: VolumeView = a.json(&["volume", "inspect", "rb"]);
        v.build.is_none().then_some(v)
    });
    let b = done.last_build.expect("the copy's record");
    let rate = b.copied_bytes as f64 / copied.as_secs_f64().max(0.001);
    let ratio = |x: f64, of: f64| if of > 0.0 { x / of } else { 0.0 };
    println!(
        "bench: rebuild, ha-update 2 -> 3 of a {REBUILD_MIB} MiB volume with \
         {REBUILD_WRITTEN_MIB} MiB written"
    );
    println!(
        "  copy {:>8.1} MiB/s {:>5.2}x the raw disk's sequential read ({:.1} MiB/s); \
         {} rounds in {copied:.1?}, cut-over pause {:?} ms",
        rate / 1048576.0,
        ratio(rate, disk),
        disk / 1048576.0,
        b.rounds,
        b.pause_ms
    );
    println!(
        "  copied {} bytes, {:.2}x the {} allocated",
        b.copied_bytes,
        ratio(b.copied_bytes as f64, b.allocated_bytes as f64),
        b.allocated_bytes
    );
}

/// fio's IOPS for 4k random `rw` at queue depth 32 on `dev`.
fn iops(dev: &Path, rw: &str) -> f64 {
    let out = Command::new("fio")
        .args([
            "--name=bench",
            "--direct=1",
            "--ioengine=libaio",
            "--time_based",
            "--bs=4k",
            "--iodepth=32",
        ])
        .arg(format!("--rw={rw}"))
        .arg(format!("--filename={}", dev.display()))
        .arg(format!("--size={SIZE_MIB}m"))
        .arg(format!("--runtime={RUNTIME_S}"))
        .arg("--output-format=json")
        .output()
        .expect("run fio");
    assert!(
        out.status.success(),
        "fio {rw} on {}: {}",
        dev.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("fio's JSON");
    let side = if rw.contains("read") { "read" } else { "write" };
    assert_eq!(v["jobs"][0]["error"], 0, "fio {rw} on {}", dev.display());
    v["jobs"][0][side]["iops"].as_f64().unwrap_or(0.0)
}

/// Writes the whole region once, so reads hit allocated blocks on every leg.
fn prewrite(dev: &Path) {
    run(
        "fio",
        &[
            "--name=prewrite",
            "--direct=1",
            "--ioengine=libaio",
            "--rw=write",
            "--bs=1m",
            "--iodepth=8",
            &format!("--size={SIZE_MIB}m"),
            &format!("--filename={}", dev.display()),
        ],
    );
}

/// Creates a raw volume of `mib` MiB on `nodes` from node `d`; its top device once there.
fn volume(d: &Daemon, name: &str, mib: u64, repl: usize, nodes: &[&str]) -> PathBuf {
    let v: VolumeView = d.json(&[
        "volume",
        "create",
        name,
        "--size",
        &format!("{mib}M"),
        "--fs",
        "raw",
        "--repl",
        &repl.to_string(),
        "--nodes",
        &nodes.join(","),
    ]);
    let dev = v
        .device
        .unwrap_or_else(|| panic!("volume {name} has no device"));
    wait_until(&dev.display().to_string(), Duration::from_secs(120), || {
        dev.exists().then_some(())
    });
    dev
}

/// `table` as device `name`, through dmsetup as a user would.
fn dm_create(name: &str, table: &str) -> PathBuf {
    run("dmsetup", &["create", name, "--table", table]);
    PathBuf::from(format!("/dev/mapper/{name}"))
}

/// raid1 over `local` and, through nbd-server on node b and nbd-client on node a, `remote`:
/// each split into a 4 MiB metadata area and the data, as pxd splits its legs.
fn nbd_mirror(c: &Cluster, local: &Path, remote: &Path) -> PathBuf {
    let addr = c.net.addr_of(1);
    std::fs::write(
        NBD_CONF,
        format!(
            "[generic]\n    listenaddr = {addr}\n    port = 10809\n\n[leg]\n    exportname = {}\n",
            remote.display()
        ),
    )
    .unwrap();
    let ns = |i: usize| c.net.ns(i);
    run(
        "ip",
        &[
            "netns",
            "exec",
            &ns(1),
            "nbd-server",
            "-C",
            NBD_CONF,
            "-p",
            NBD_PID,
        ],
    );
    run("modprobe", &["nbd"]);
    wait_until("nbd-client connected", Duration::from_secs(60), || {
        // The ioctl interface: nbd's netlink family cannot be reached from a namespace.
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns(0),
                "nbd-client",
                "-L",
                &addr,
                NBD,
                "-N",
                "leg",
            ])
            .status()
            .ok()?
            .success()
            .then_some(())
    });
    let data = SIZE_MIB * 2048;
    let meta = *LEG_META;
    let mut parts = Vec::new();
    for (i, leg) in [local, Path::new(NBD)].iter().enumerate() {
        let leg = leg.display();
        parts.push(dm_create(
            PEER_PARTS[2 * i],
            &format!("0 {meta} linear {leg} 0"),
        ));
        parts.push(dm_create(
            PEER_PARTS[2 * i + 1],
            &format!("0 {data} linear {leg} {meta}"),
        ));
    }
    let legs: Vec<String> = parts.iter().map(|p| p.display().to_string()).collect();
    dm_create(
        PEER_RAID,
        &format!(
            "0 {data} raid raid1 4 0 nosync region_size {} 2 {}",
            *REGION_SECTORS,
            legs.join(" ")
        ),
    )
}

fn nbd_teardown() {
    for name in std::iter::once(PEER_RAID).chain(PEER_PARTS) {
        let _ = Command::new("dmsetup")
            .args(["remove", "--retry", name])
            .status();
    }
    let _ = Command::new("nbd-client").args(["-d", NBD]).status();
    if let Ok(pid) = std::fs::read_to_string(NBD_PID) {
        let _ = Command::new("kill").arg(pid.trim()).status();
    }
}

/// Prints the raids and NVMe controllers every minute while a target's jobs run past that:
/// a stalled run shows where it waits.
struct Stalls {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Stalls {
    /// Reports on `what` once a minute while it runs, with the daemons' warnings from `logs`.
    fn watch(what: &str, logs: Vec<PathBuf>) -> Stalls {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, what) = (stop.clone(), what.to_owned());
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut next = Duration::from_secs(60);
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(500));
                if started.elapsed() < next {
                    continue;
                }
                next += Duration::from_secs(60);
                // sysfs first: `dmsetup status` blocks on a device stuck in a suspend.
                let suspended: Vec<String> = std::fs::read_dir("/sys/block")
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(|e| {
                        let dm = e.path().join("dm");
                        let on = std::fs::read_to_string(dm.join("suspended")).ok()?;
                        let name = std::fs::read_to_string(dm.join("name")).ok()?;
                        (on.trim() == "1").then(|| name.trim().to_owned())
                    })
                    .collect();
                let controllers: Vec<String> = std::fs::read_dir("/sys/class/nvme")
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| {
                        let state =
                            std::fs::read_to_string(e.path().join("state")).unwrap_or_default();
                        format!("{} {}", e.file_name().to_string_lossy(), state.trim())
                    })
                    .collect();
                eprintln!(
                    "bench: {what} still running after {:?}; suspended: {suspended:?}; \
                     controllers: {controllers:?}",
                    started.elapsed()
                );
                warnings(&logs);
                pxd_tests::blocked_tasks();
                // On a thread of its own: a dm ioctl can block uninterruptibly.
                std::thread::spawn(|| {
                    let raids = Command::new("dmsetup")
                        .args(["status", "--target", "raid"])
                        .output()
                        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                        .unwrap_or_default();
                    eprintln!("{raids}");
                });
            }
        });
        Stalls { stop }
    }
}

/// The last warnings of each daemon.
fn warnings(logs: &[PathBuf]) {
    for log in logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .filter(|l| !l.contains("openraft::replication"))
            .collect();
        eprintln!(
            "--- {} ---\n{}",
            log.display(),
            lines[lines.len().saturating_sub(15)..].join("\n")
        );
    }
}

impl Drop for Stalls {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn replicated_volumes_beside_a_local_volume_and_raid1_over_nbd() {
    let disks = pxd_tests::vm_disks(3);
    let c = Cluster::start("bench", &disks[..3], 0, 9700);
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let names: Vec<&str> = c.nodes.iter().map(|n| n.name.as_str()).collect();
    let local = volume(a, "local", SIZE_MIB, 1, &names[..1]);
    let mut targets = vec![("local volume (1 leg)".to_owned(), local)];
    for repl in [2, 3] {
        let name = format!("r{repl}");
        a.ok(&[
            "volume",
            "create",
            &name,
            "--size",
            &format!("{SIZE_MIB}M"),
            "--fs",
            "raw",
            "--repl",
            &repl.to_string(),
            "--nodes",
            &names[..repl].join(","),
        ]);
        legs_built(&c, &name);
        let v: VolumeView = a.json(&["volume", "attach", &name]);
        let dev = v.device.expect("an attached device");
        targets.push((format!("repl {repl}, NVMe/TCP legs"), dev));
    }
    let leg = SIZE_MIB + *LEG_META / 2048;
    let peer_local = volume(a, "peer-local", leg, 1, &names[..1]);
    let peer_remote = volume(b, "peer-remote", leg, 1, &names[1..2]);
    let mirror = nbd_mirror(&c, &peer_local, &peer_remote);
    targets.push(("raid1, nbd-server leg".to_owned(), mirror));

    println!(
        "bench: replication, 4k random at QD32, {RUNTIME_S} s per job over {SIZE_MIB} MiB, \
         ratios to the local volume"
    );
    let mut base = (0.0, 0.0);
    for (i, (what, dev)) in targets.iter().enumerate() {
        let watch = Stalls::watch(what, c.nodes.iter().map(Daemon::log).collect());
        prewrite(dev);
        let (w, r) = (iops(dev, "randwrite"), iops(dev, "randread"));
        drop(watch);
        if i == 0 {
            base = (w, r);
        }
        let ratio = |x: f64, of: f64| if of > 0.0 { x / of } else { 0.0 };
        println!(
            "  {what:<28} randwrite {w:>8.0} IOPS {:>5.2}x   randread {r:>8.0} IOPS {:>5.2}x",
            ratio(w, base.0),
            ratio(r, base.1)
        );
    }
    nbd_teardown();
    rebuild(&c, &disks[0]);
}
