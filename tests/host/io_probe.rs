//! Host tier: the bio probe counts exactly the O_DIRECT IO issued to a loop device, and
//! charges it to the cgroup that issued it. (Completion latencies are taken on bio-based
//! devices, which every volume's top dm device is; a loop device completes its bios through
//! requests, so the VM tier tests them.)
//!
//! Needs root (loop devices, bpf) and a kernel with BTF. Run with
//! `cargo test -p pxd-tests --test host_io_probe`.
//!
//! O_DIRECT with block-aligned buffers makes every `pwrite`/`pread` one bio of exactly one block
//! on the loop device, with no page cache, readahead or writeback in between, so the expected
//! counts are exact. A final fsync sends a data-less flush bio, which must not count. The counts are compared as differences from a baseline taken after the
//! device is attached, so IO the kernel or others did earlier cannot leak in.

use std::{
    fs::{File, OpenOptions},
    os::unix::fs::{FileExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use pxd::{
    io::{block_device_dev, cgroups::Hierarchy, DevT, IoCounts, IoProbe},
    kernel::loop_device::LoopDevice,
};
use pxd_tests::block_stat;
use pxd_tests::cgroup::{fio_in, TestCgroup};

const BLOCK: usize = 4096;
const WRITES: u64 = 257;
const READS: u64 = 193;
/// Big enough that every IO in the test touches its own block.
const BACKING_BYTES: u64 = 64 << 20;

/// One O_DIRECT-compatible buffer: the address must be aligned to the logical block size.
#[repr(C, align(4096))]
struct Block([u8; BLOCK]);

/// A sparse backing file, removed on drop.
struct Backing(PathBuf);

impl Backing {
    fn create(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "pxd-host-io-probe-{}-{tag}.img",
            std::process::id()
        ));
        let file = File::create(&path)
            .unwrap_or_else(|err| panic!("creating backing file {}: {err}", path.display()));
        file.set_len(BACKING_BYTES)
            .unwrap_or_else(|err| panic!("sizing backing file {}: {err}", path.display()));
        Self(path)
    }
}

impl Drop for Backing {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the host tier needs root (loop devices, bpf): run it as root or via `cargo xtask test`"
    );
}

fn counts(probe: &IoProbe, dev: DevT) -> IoCounts {
    probe
        .counts(dev)
        .unwrap_or_else(|err| panic!("reading counters of dev_t {dev:#x}: {err:?}"))
}

/// Polls until the counts since `baseline` reach `expected` or the deadline passes, then
/// returns the last difference. Counting happens at submission, so this should return on the
/// first poll; the deadline is only there so a slow machine does not fail spuriously.
fn wait_for(probe: &IoProbe, dev: DevT, baseline: &IoCounts, expected: &IoCounts) -> IoCounts {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let delta = counts(probe, dev).since(baseline);
        let reached = delta.reads >= expected.reads && delta.writes >= expected.writes;
        if reached || Instant::now() >= deadline {
            return delta;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn open_direct(device: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(device)
        .unwrap_or_else(|err| panic!("opening {} with O_DIRECT: {err}", device.display()))
}

#[test]
fn counts_exactly_the_direct_reads_and_writes_per_device() {
    require_root();

    let busy_backing = Backing::create("busy");
    let idle_backing = Backing::create("idle");
    // Declared after the backing files, so they are detached before the files are removed.
    let busy = LoopDevice::attach(&busy_backing.0).expect("attaching the busy loop device");
    let idle = LoopDevice::attach(&idle_backing.0).expect("attaching the idle loop device");
    let busy_dev = block_device_dev(busy.path()).expect("dev_t of the busy loop device");
    let idle_dev = block_device_dev(idle.path()).expect("dev_t of the idle loop device");
    assert_ne!(busy_dev, idle_dev);

    let probe = IoProbe::load().expect("loading the io probe");
    let busy_before = counts(&probe, busy_dev);
    let idle_before = counts(&probe, idle_dev);
    let sysfs_before = block_stat(busy.path());

    let device = open_direct(busy.path());
    let mut block = Box::new(Block([0; BLOCK]));
    for i in 0..WRITES {
        block.0.fill(i as u8);
        let offset = i * BLOCK as u64;
        let written = device
            .write_at(&block.0, offset)
            .unwrap_or_else(|err| panic!("O_DIRECT write {i} at {offset}: {err}"));
        assert_eq!(written, BLOCK, "short O_DIRECT write {i}");
    }
    for i in 0..READS {
        // Read back what was written, from the front; also proves the writes landed.
        let offset = i * BLOCK as u64;
        let read = device
            .read_at(&mut block.0, offset)
            .unwrap_or_else(|err| panic!("O_DIRECT read {i} at {offset}: {err}"));
        assert_eq!(read, BLOCK, "short O_DIRECT read {i}");
        assert!(
            block.0.iter().all(|&b| b == i as u8),
            "block {i} read back wrong"
        );
    }

    let expected = IoCounts {
        reads: READS,
        writes: WRITES,
        read_bytes: READS * BLOCK as u64,
        written_bytes: WRITES * BLOCK as u64,
    };
    let busy_delta = wait_for(&probe, busy_dev, &busy_before, &expected);
    println!("busy {}: {busy_delta:?}", busy.path().display());
    assert_eq!(
        busy_delta,
        expected,
        "probe counts on {}",
        busy.path().display()
    );

    // The kernel's own accounting saw the same IO (one request per bio: nothing to merge when
    // each IO waits for the previous one).
    let sysfs_after = block_stat(busy.path());
    assert_eq!(
        (
            sysfs_after.reads - sysfs_before.reads,
            sysfs_after.writes - sysfs_before.writes
        ),
        (READS, WRITES),
        "/sys/block stat of {}",
        busy.path().display()
    );

    // A flush is a write bio with no data (the block layer's own stat counts it as a write
    // too); the probe must not. fsync waits for the flush, and counting is at submission.
    device
        .sync_all()
        .unwrap_or_else(|err| panic!("flushing {}: {err}", busy.path().display()));
    drop(device);
    let sysfs_flushed = block_stat(busy.path());
    assert!(
        sysfs_flushed.flushes > sysfs_after.flushes,
        "fsync sent no flush to {}, so the check below proves nothing: {sysfs_flushed:?}",
        busy.path().display()
    );
    let after_flush = counts(&probe, busy_dev).since(&busy_before);
    assert_eq!(
        after_flush,
        expected,
        "probe counts on {} after a flush",
        busy.path().display()
    );

    // Per-device: none of that IO is charged to the idle device.
    let idle_delta = counts(&probe, idle_dev).since(&idle_before);
    println!("idle {}: {idle_delta:?}", idle.path().display());
    assert_eq!(
        idle_delta,
        IoCounts::default(),
        "probe counts on the idle device"
    );

    drop(probe);
    idle.detach().expect("detaching the idle loop device");
    busy.detach().expect("detaching the busy loop device");
}

/// fio's reads and writes in one run, from its JSON output.
fn fio_ios(json: &str) -> (u64, u64) {
    let v: serde_json::Value = serde_json::from_str(json)
        .unwrap_or_else(|err| panic!("fio printed no JSON ({err}): {json}"));
    let job = &v["jobs"][0];
    let ios = |dir: &str| job[dir]["total_ios"].as_u64().expect("total_ios");
    (ios("read"), ios("write"))
}

/// Acceptance: in three fio runs of different mixes, run in a cgroup of their own, the probe's
/// counts equal both fio's issued IOs and the deltas of the kernel's `/sys/block` stat,
/// exactly, reads and writes apart; and every IO is charged to fio's cgroup.
#[test]
fn three_fio_runs_match_the_probe_and_the_kernel_stat_exactly() {
    require_root();
    let backing = Backing::create("fio");
    let device = LoopDevice::attach(&backing.0).expect("attaching the loop device");
    let dev = block_device_dev(device.path()).expect("dev_t of the loop device");
    let hierarchy = Hierarchy::detect().expect("a cgroup hierarchy with io or blkio");
    let cgroup = TestCgroup::new(
        hierarchy.mount(),
        &format!("pxd-probe-test-{}", std::process::id()),
    );
    let cgroup_id = pxd::io::cgroups::id_of(&cgroup.0).expect("the cgroup's id");
    assert_eq!(
        hierarchy.path_of(cgroup_id).as_deref(),
        Some(cgroup.0.as_path())
    );
    let probe = IoProbe::load().expect("loading the io probe");

    let runs = [
        ("randrw", "4k", "--rwmixread=30", "2400k"),
        ("randread", "8k", "--rwmixread=100", "2000k"),
        ("randwrite", "16k", "--rwmixread=0", "4800k"),
    ];
    for (i, (rw, bs, mix, io_size)) in runs.into_iter().enumerate() {
        let before = counts(&probe, dev);
        let stat_before = block_stat(device.path());
        let in_cgroup = |probe: &IoProbe| {
            probe
                .cgroup_counts()
                .expect("per-cgroup counts")
                .into_iter()
                .find(|(d, cg, _)| *d == dev && *cg == cgroup_id)
                .map(|(_, _, c)| c)
                .unwrap_or_default()
        };
        let cg_before = in_cgroup(&probe);
        let args = format!("--rw={rw} --bs={bs} {mix} --size=32M --io_size={io_size}");
        let out = fio_in(&cgroup.0, device.path(), &format!("run{i}"), &args)
            .output()
            .expect("running fio");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "fio: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (reads, writes) = fio_ios(&text);
        assert!(reads + writes > 0, "fio did no I/O: {text}");
        let bytes = bs.trim_end_matches('k').parse::<u64>().expect("bs") * 1024;
        let expected = IoCounts {
            reads,
            writes,
            read_bytes: reads * bytes,
            written_bytes: writes * bytes,
        };
        let probe_delta = wait_for(&probe, dev, &before, &expected);
        let stat_after = block_stat(device.path());
        let stat_delta = (
            stat_after.reads - stat_before.reads,
            stat_after.writes - stat_before.writes,
        );
        let charged = in_cgroup(&probe).since(&cg_before);
        println!(
            "run {i} ({rw} {bs}): fio {reads} reads {writes} writes; probe {probe_delta:?}; \
             /sys/block {stat_delta:?}; charged to {} {charged:?}",
            hierarchy.relative(&cgroup.0)
        );
        assert_eq!(probe_delta, expected, "run {i}: the probe against fio");
        assert_eq!(
            stat_delta,
            (reads, writes),
            "run {i}: /sys/block against fio"
        );
        assert_eq!(
            charged, expected,
            "run {i}: the I/O charged to fio's cgroup"
        );
    }
    drop(probe);
    device.detach().expect("detaching the loop device");
}
