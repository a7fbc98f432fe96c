//! Shared helpers for pxd's integration tests: finding the guest's disks, making and checking
//! data, running external tools with their output in the failure message.

pub mod boots;
pub mod cgroup;
pub mod daemon;
pub mod docker;
pub mod grafana;
pub mod limits;
pub mod netns;
pub mod trio;

use pxd::kernel::block;
use pxd::plan::names::Id;
use pxd::plan::pool::{Drive, PoolSpec};
use sha2::{Digest, Sha256};
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// True inside a guest booted by `cargo xtask vm`.
pub fn in_vm() -> bool {
    std::env::var_os("PXD_IN_VM").is_some()
}

/// The guest's virtio disks, /dev/vda first. Panics, naming what is missing, when there are
/// fewer than `n`: a VM-tier test that cannot find its disks must fail, never pass vacuously.
pub fn vm_disks(n: usize) -> Vec<PathBuf> {
    assert!(
        in_vm(),
        "this is a VM-tier test: run it with `cargo xtask test --tier vm`"
    );
    let mut disks: Vec<PathBuf> = std::fs::read_dir("/sys/block")
        .expect("/sys/block is readable")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("vd"))
        .map(|n| PathBuf::from("/dev").join(n))
        .collect();
    disks.sort();
    assert!(
        disks.len() >= n,
        "this test needs {n} virtio disks, the guest has {disks:?}"
    );
    disks
}

/// Whether Prometheus text `metrics` has a sample of `name` carrying every label in `labels`
/// (others may be there too) with value `value`.
pub fn metric_has(metrics: &str, name: &str, labels: &[(&str, &str)], value: &str) -> bool {
    metrics.lines().any(|l| {
        let Some(rest) = l.strip_prefix(name).and_then(|r| r.strip_prefix('{')) else {
            return false;
        };
        let Some((set, v)) = rest.rsplit_once("} ") else {
            return false;
        };
        v == value
            && labels
                .iter()
                .all(|(k, want)| set.split(',').any(|kv| kv == format!("{k}=\"{want}\"")))
    })
}

/// Deterministic pseudo-random bytes (xorshift64*), so a failing run can be reproduced.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes `data` at `offset` with O_DIRECT, in 1 MiB requests, and syncs.
pub fn write_direct(dev: &Path, offset: u64, data: &[u8]) {
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .unwrap_or_else(|e| panic!("open {} for O_DIRECT write: {e}", dev.display()));
    let mut buf = block::AlignedBuf::zeroed(1 << 20);
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        let b = &mut buf.as_mut_slice()[..chunk.len()];
        b.copy_from_slice(chunk);
        file.write_all_at(b, offset + (i as u64) * (1 << 20))
            .unwrap_or_else(|e| panic!("O_DIRECT write to {}: {e}", dev.display()));
    }
    file.sync_all().expect("fsync after writing");
}

/// Reads `len` bytes at `offset` with O_DIRECT, in 1 MiB requests.
pub fn read_direct(dev: &Path, offset: u64, len: usize) -> Vec<u8> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .unwrap_or_else(|e| panic!("open {} for O_DIRECT read: {e}", dev.display()));
    let mut buf = block::AlignedBuf::zeroed(1 << 20);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let n = (len - out.len()).min(1 << 20);
        let b = &mut buf.as_mut_slice()[..n];
        file.read_exact_at(b, offset + out.len() as u64)
            .unwrap_or_else(|e| panic!("O_DIRECT read from {}: {e}", dev.display()));
        out.extend_from_slice(b);
    }
    out
}

/// Polls `check` until it passes; past `limit`, panics with what it last said. Tests wait for
/// conditions this way, never for a fixed time: the emulated guest's speed varies a lot.
pub fn wait_until(limit: std::time::Duration, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = std::time::Instant::now() + limit;
    loop {
        match check() {
            Ok(()) => return,
            Err(why) if std::time::Instant::now() >= deadline => {
                panic!("still not so after {limit:?}: {why}")
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(250)),
        }
    }
}

/// In the VM, turns transparent huge pages off, for tests that put NVMe/TCP hosts and
/// targets in one kernel: a send frag that runs past the end of a huge page reaches
/// nvmet-tcp's receive copy intact, and hardened usercopy stops that worker with a BUG
/// (Debian 6.1.192: "Kernel memory exposure attempt detected from page alloc"), leaving its
/// locks held and every leg stuck. Between machines, frags come from the NIC and never do
/// this. Only there: emulation runs the rest about half again slower without huge pages.
pub fn no_huge_pages() {
    if in_vm() {
        let knob = "/sys/kernel/mm/transparent_hugepage/enabled";
        if let Err(e) = std::fs::write(knob, "never") {
            panic!("turning huge pages off ({knob}): {e}");
        }
    }
}

/// The kernel stacks of every task in uninterruptible sleep (sysrq `w`), from the kernel log:
/// what a stuck device waits on.
pub fn blocked_tasks() {
    if std::fs::write("/proc/sysrq-trigger", "w").is_err() {
        return;
    }
    let log = Command::new("dmesg")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    // The kernel's own messages before the dump, then the dump.
    let dump = lines
        .iter()
        .rposition(|l| l.contains("Show Blocked State"))
        .unwrap_or(lines.len());
    eprintln!("{}", lines[dump.saturating_sub(80)..].join("\n"));
}

/// Runs a tool; panics with its full output unless it exits 0. Returns stdout.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "`{program} {}` failed ({}):\n{text}",
        args.join(" "),
        out.status
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The kernel's own accounting for a block device, from `/sys/dev/block/<major>:<minor>/stat`
/// (so it works for `/dev/mapper/*` names as well as `/dev/loopN`).
#[derive(Clone, Copy, Debug)]
pub struct BlockStat {
    /// Field 1: read requests completed.
    pub reads: u64,
    /// Field 5: write requests completed.
    pub writes: u64,
    /// Field 7: sectors written.
    pub written_sectors: u64,
    /// Field 16: flush requests completed (Linux 5.5+).
    pub flushes: u64,
}

pub fn block_stat(device: &Path) -> BlockStat {
    let dev = block::device_of(device).unwrap_or_else(|e| panic!("{}: {e}", device.display()));
    let stat_path = format!("/sys/dev/block/{dev}/stat");
    let stat = std::fs::read_to_string(&stat_path)
        .unwrap_or_else(|err| panic!("reading {stat_path}: {err}"));
    let fields: Vec<u64> = stat
        .split_whitespace()
        .map(|f| {
            f.parse()
                .unwrap_or_else(|err| panic!("{stat_path}: {f:?}: {err}"))
        })
        .collect();
    match fields.as_slice() {
        [reads, _, _, _, writes, _, written, _, _, _, _, _, _, _, _, flushes, ..] => BlockStat {
            reads: *reads,
            writes: *writes,
            written_sectors: *written,
            flushes: *flushes,
        },
        _ => panic!("{stat_path} has too few fields: {stat:?}"),
    }
}

/// A pool spec over `disks` for node `node` (pool id `p0`), sized from the devices.
pub fn pool_spec(node: &str, disks: &[PathBuf], chunk: devicemapper::Sectors) -> PoolSpec {
    PoolSpec {
        node: Id::node(node).expect("test node ids are valid"),
        pool: Id::object("p0").expect("p0 is a valid id"),
        drives: disks
            .iter()
            .map(|d| Drive {
                dev: block::device_of(d).unwrap_or_else(|e| panic!("{}: {e}", d.display())),
                size: devicemapper::Sectors(
                    block::size_bytes(d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) / 512,
                ),
            })
            .collect(),
        chunk,
        features: pxd::plan::pool::ThinFeatures::DEFAULT,
    }
}

/// Daemon flags of the drive classes for the emulated guest: a raw virtio disk (median well
/// under 4 ms here) is high, and dm-delay's 5 ms on every I/O puts a disk's median above both
/// limits, so it is low whatever the emulator's speed. Measured for a second per pattern, so a
/// passing stall of the emulator weighs little in the median.
pub const EMULATOR_CLASSES: [&str; 10] = [
    "--drive-bench-ms",
    "1000",
    "--high-min-iops",
    "100",
    "--high-max-p50-us",
    "4000",
    "--medium-min-iops",
    "50",
    "--medium-max-p50-us",
    "4500",
];

/// A block device's size in 512-byte sectors.
pub fn sectors(dev: &Path) -> u64 {
    run("blockdev", &["--getsz", &dev.display().to_string()])
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("size of {}: {e}", dev.display()))
}

/// The dm devices of pxd node `node` in this kernel.
pub fn node_devices(node: &str) -> std::collections::BTreeSet<String> {
    use pxd::kernel::dm::DeviceMapper;
    let prefix = format!("pxd-{node}-");
    pxd::kernel::dm::KernelDm::open()
        .expect("device-mapper")
        .list()
        .expect("list dm devices")
        .into_iter()
        .map(|(n, _)| n.to_string())
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// The thin ids in each of node `node`'s pools, read from the pool's metadata (a reserved
/// metadata snapshot, listed by `thin_ls`): what a leak check compares.
pub fn pool_thin_ids(node: &str) -> std::collections::BTreeSet<(String, u32)> {
    let mut out = std::collections::BTreeSet::new();
    let pools = node_devices(node)
        .into_iter()
        .filter(|d| d.contains("-pool-") && !d.ends_with("-meta") && !d.ends_with("-data"));
    for pool in pools {
        run("dmsetup", &["message", &pool, "0", "reserve_metadata_snap"]);
        let listed = Command::new("thin_ls")
            .args(["--metadata-snap", "--no-headers", "-o", "DEV"])
            .arg(format!("/dev/mapper/{pool}-meta"))
            .output()
            .expect("run thin_ls");
        run("dmsetup", &["message", &pool, "0", "release_metadata_snap"]);
        assert!(
            listed.status.success(),
            "thin_ls on {pool}: {}",
            String::from_utf8_lossy(&listed.stderr)
        );
        for id in String::from_utf8_lossy(&listed.stdout).split_whitespace() {
            out.insert((pool.clone(), id.parse().expect("a thin id")));
        }
    }
    out
}

/// Labels `disk` as the next member of pool `pool` of `state` (cluster `state.cluster`,
/// node `state.node`, which must be a hex node id), as `pxd drive add` does, so the
/// reconciler can assemble the pool from it.
pub fn label_member(state: &mut pxd::reconcile::desired::NodeState, pool: usize, disk: &Path) {
    use pxd::pool::label::{DriveUuid, Label};
    let node = state.node.parse().expect("test node ids are hex node ids");
    let p = &mut state.pools[pool];
    let uuid = DriveUuid::random();
    let label = Label {
        cluster: state.cluster.clone(),
        node,
        pool: p.id.clone(),
        drive: uuid,
        member: p.members.len() as u32,
        generation: p.members.len() as u64 + 1,
    };
    pxd::kernel::label::write(disk, &label)
        .unwrap_or_else(|e| panic!("label {}: {e}", disk.display()));
    p.members.push(uuid.to_string());
    p.drives.push(disk.to_owned());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_samples_match_by_name_labels_and_value() {
        let text = "pxd_pool_state{class=\"low\",node=\"ab\",pool=\"p1\",state=\"damaged\"} 1\n";
        assert!(metric_has(
            text,
            "pxd_pool_state",
            &[("pool", "p1"), ("state", "damaged")],
            "1"
        ));
        assert!(!metric_has(text, "pxd_pool_state", &[("pool", "p1")], "0"));
        assert!(!metric_has(text, "pxd_pool_state", &[("pool", "p2")], "1"));
        assert!(!metric_has(text, "pxd_pool", &[("pool", "p1")], "1"));
    }

    #[test]
    fn pattern_is_deterministic_and_seed_dependent() {
        assert_eq!(pattern(1, 100), pattern(1, 100));
        assert_ne!(pattern(1, 100), pattern(2, 100));
        assert_eq!(pattern(7, 13).len(), 13);
    }
}
