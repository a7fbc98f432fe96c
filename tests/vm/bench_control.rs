//! `cargo xtask bench control` and `cargo xtask bench scale`, in the VM, on a release build:
//! what a volume operation costs on one node, measured through the CLI as an operator or an
//! orchestrator calls it (each figure includes starting the CLI process).
//!
//! - `control_plane`: 50 ext4 volumes created and mounted, snapshotted, cloned, unmounted and
//!   deleted, each step's p50 and p99, and the Raft entries the node applied a second over
//!   the run.
//! - `scale`: raw 16 MiB volumes up to 10, 100 and 1,000; at each size, the p50 and p99 of
//!   20 more creates and deletes, the daemon's idle CPU and RSS, the data directory's size,
//!   and the time from a restart until the node serves. Then everything is deleted and the
//!   node measured again. The volume counts can be set with `PXD_BENCH_SCALE=10,100`.
//!
//! Reports; never asserts on a figure.

use pxd::cluster::view::Status as ClusterStatus;
use pxd_tests::daemon::Daemon;
use pxd_tests::EMULATOR_CLASSES;
use std::path::Path;
use std::time::{Duration, Instant};

const PORT: u16 = 9820;
const DISK: &str = "/dev/vda";
/// Creates and deletes timed at each size of the scale run.
const SAMPLE: usize = 20;
/// How long the idle daemon's CPU is sampled.
const IDLE_WINDOW: Duration = Duration::from_secs(30);

fn node() -> Daemon {
    let mut d = Daemon::new("bench", PORT, &EMULATOR_CLASSES);
    d.start_cluster();
    d.ok(&["drive", "add", DISK]);
    d
}

/// Runs the CLI once, panicking on failure, and returns how long it took.
fn timed(d: &Daemon, args: &[&str]) -> Duration {
    let started = Instant::now();
    d.ok(args);
    started.elapsed()
}

/// `p`-th percentile (nearest rank) of `samples`, in milliseconds.
fn percentile(samples: &[Duration], p: usize) -> f64 {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let rank = (ms.len() * p).div_ceil(100).max(1);
    ms.get(rank - 1).copied().unwrap_or(0.0)
}

fn row(what: &str, samples: &[Duration]) {
    println!(
        "  {what:<30} n={:<5} p50 {:>8.1} ms   p99 {:>8.1} ms",
        samples.len(),
        percentile(samples, 50),
        percentile(samples, 99)
    );
}

fn applied(d: &Daemon) -> u64 {
    let s: ClusterStatus = d.json(&["cluster", "status"]);
    s.last_applied_index.unwrap_or(0)
}

#[test]
fn control_plane() {
    const VOLUMES: usize = 50;
    let d = node();
    let names: Vec<String> = (0..VOLUMES).map(|i| format!("c{i}")).collect();
    let first = applied(&d);
    let started = Instant::now();
    let (mut create, mut snapshot, mut clone, mut unmount, mut delete) =
        (vec![], vec![], vec![], vec![], vec![]);
    for n in &names {
        let t = Instant::now();
        d.ok(&["volume", "create", n, "--size", "64M", "--fs", "ext4"]);
        d.ok(&["volume", "mount", n]);
        create.push(t.elapsed());
    }
    for n in &names {
        snapshot.push(timed(
            &d,
            &["volume", "snapshot", "create", n, "--name", "s1"],
        ));
    }
    for n in &names {
        let k = format!("{n}k");
        clone.push(timed(
            &d,
            &["volume", "clone", n, "--name", &k, "--snapshot", "s1"],
        ));
    }
    for n in &names {
        unmount.push(timed(&d, &["volume", "unmount", n]));
    }
    for n in &names {
        delete.push(timed(&d, &["volume", "delete", &format!("{n}k")]));
        delete.push(timed(&d, &["volume", "delete", n]));
    }
    let took = started.elapsed();
    let entries = applied(&d) - first;
    println!("\ncontrol plane: {VOLUMES} ext4 volumes of 64 MiB on one node, through the CLI");
    row("create and mount", &create);
    row("snapshot", &snapshot);
    row("clone from the snapshot", &clone);
    row("unmount", &unmount);
    row("delete (clones, then volumes)", &delete);
    println!(
        "  Raft: {entries} entries applied in {:.1} s, {:.1} a second",
        took.as_secs_f64(),
        entries as f64 / took.as_secs_f64()
    );
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the daemon's stat");
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').expect("a stat line") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0)
}

/// Share of one CPU the idle daemon uses over [`IDLE_WINDOW`], in percent.
fn idle_cpu(pid: u32) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let before = cpu_ticks(pid);
    std::thread::sleep(IDLE_WINDOW);
    let used = (cpu_ticks(pid) - before) as f64 / hz;
    100.0 * used / IDLE_WINDOW.as_secs_f64()
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// Bytes the directory's files occupy on disk.
fn du_mib(dir: &Path) -> f64 {
    fn walk(p: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        let Ok(meta) = std::fs::symlink_metadata(p) else {
            return 0;
        };
        let mut total = meta.blocks() * 512;
        if meta.is_dir() {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                total += walk(&e.path());
            }
        }
        total
    }
    walk(dir) as f64 / (1024.0 * 1024.0)
}

/// The sum and count of `pxd_reconcile_pass_seconds` (every kind of pass), from `/metrics`.
fn pass_seconds() -> (f64, f64) {
    let out = std::process::Command::new("curl")
        .args(["-sS", &format!("http://127.0.0.1:{PORT}/metrics")])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let total = |suffix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(&format!("pxd_reconcile_pass_seconds_{suffix}")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    (total("sum"), total("count"))
}

/// Idle CPU, RSS, data-directory size and mean pass time of the running daemon, printed.
fn footprint(d: &Daemon, label: &str) -> (f64, f64) {
    let pid = d.pid().expect("the daemon runs");
    let (sum0, count0) = pass_seconds();
    let cpu = idle_cpu(pid);
    let (sum1, count1) = pass_seconds();
    let pass_ms = if count1 > count0 {
        format!("{:.0} ms", (sum1 - sum0) / (count1 - count0) * 1e3)
    } else {
        "none".to_owned()
    };
    let (rss, du) = (rss_mib(pid), du_mib(&d.data_dir()));
    println!(
        "  {label:<30} idle CPU {cpu:>5.1}%   RSS {rss:>7.1} MiB   data dir {du:>7.1} MiB   \
         idle pass {pass_ms}"
    );
    (rss, du)
}

#[test]
fn scale() {
    let sizes: Vec<usize> = std::env::var("PXD_BENCH_SCALE")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10, 100, 1000]);
    let mut d = node();
    println!("\nscale: raw 16 MiB volumes on one node, through the CLI");
    let (rss0, du0) = footprint(&d, "no volumes");
    let create = |d: &Daemon, name: &str| {
        timed(
            d,
            &["volume", "create", name, "--size", "16M", "--fs", "raw"],
        )
    };
    let mut count = 0;
    for &size in &sizes {
        let mut filling = Vec::new();
        while count < size {
            filling.push(create(&d, &format!("s{count}")));
            count += 1;
        }
        let (mut creates, mut deletes) = (Vec::new(), Vec::new());
        for i in 0..SAMPLE {
            creates.push(create(&d, &format!("x{i}")));
        }
        for i in 0..SAMPLE {
            deletes.push(timed(&d, &["volume", "delete", &format!("x{i}")]));
        }
        println!("\n at {size} volumes:");
        if !filling.is_empty() {
            row(&format!("creates up to {size}"), &filling);
        }
        row("create", &creates);
        row("delete", &deletes);
        footprint(&d, "idle");
        d.terminate();
        let started = Instant::now();
        d.start();
        println!(
            "  restart until it serves        {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    for i in 0..count {
        d.ok(&["volume", "delete", &format!("s{i}")]);
    }
    println!("\n after deleting all {count}:");
    let (rss, du) = footprint(&d, "no volumes again");
    println!(
        "  against before the creates: RSS {:.2}x, data dir {:.2}x",
        rss / rss0,
        du / du0
    );
}
