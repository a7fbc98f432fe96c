//! VM tier: drives as pxd sees them: discovery, signatures, use, and the QoS class a benchmark
//! earns. A disk slowed by the `delay` target must land in a lower class than a raw one.

use pxd::kernel::block;
use pxd::kernel::fs;
use pxd::pool::benchmark::{self, BenchConfig};
use pxd::pool::class::{classify, Thresholds};
use pxd::pool::drive::{self, DriveError};
use pxd::volume::spec::{Class, Fs};
use pxd_tests::{run, vm_disks};
use std::path::Path;
use std::sync::Mutex;

/// The benchmark must not share the guest's two CPUs with the other test's mkfs.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn a_delayed_disk_lands_in_a_lower_class_than_a_raw_one() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let disks = vm_disks(6);
    let (raw, under_slow) = (&disks[0], &disks[1]);
    let sectors = block::size_bytes(under_slow).unwrap() / 512;
    // 25 ms on every I/O: far above anything an emulated raw disk shows, even on a busy host.
    let table = format!("0 {sectors} delay {} 0 25", under_slow.display());
    run("dmsetup", &["create", "pxd-test-slow", "--table", &table]);
    let slow = Path::new("/dev/mapper/pxd-test-slow");

    let cfg = BenchConfig {
        destructive: true,
        ..BenchConfig::default()
    };
    // Limits for the emulated guest (the defaults are for real hardware): a median under
    // 15 ms is medium at least, so only the delay can make a disk low.
    let t = Thresholds {
        high_min_iops: 100.0,
        high_max_p50_us: 4_000,
        medium_min_iops: 10.0,
        medium_max_p50_us: 15_000,
    };
    let fast_result = benchmark::run(raw, &cfg).unwrap();
    let slow_result = benchmark::run(slow, &cfg).unwrap();
    let (fast_class, slow_class) = (classify(&fast_result, &t), classify(&slow_result, &t));
    println!("raw virtio: {fast_class} {fast_result:?}");
    println!("delay 25 ms: {slow_class} {slow_result:?}");
    assert!(
        slow_result.random_read.p50_us >= 25_000,
        "the delay target did not delay: {slow_result:?}"
    );
    assert!(
        fast_class < slow_class,
        "raw {fast_class} ({fast_result:?}) is not above delayed {slow_class} ({slow_result:?})"
    );
    assert_eq!(slow_class, Class::Low);

    // The disk under the delay device is held by it, so pxd must refuse it.
    let held = drive::inspect(under_slow).unwrap();
    assert!(
        held.in_use
            .as_deref()
            .unwrap_or("")
            .starts_with("held by dm-"),
        "{held:?}"
    );
    assert!(matches!(
        drive::check_addable(&held, &None, true),
        Err(DriveError::InUse { .. })
    ));
    run("dmsetup", &["remove", "pxd-test-slow"]);
}

#[test]
fn discovery_sees_whole_disks_and_their_signatures_and_mounts() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let disks = vm_disks(6);
    let found = drive::whole_disks().unwrap();
    for d in &disks {
        assert!(found.contains(d), "{} missing from {found:?}", d.display());
    }
    assert!(found.iter().all(|p| !p.to_string_lossy().contains("dm-")));

    let (blank, formatted) = (&disks[2], &disks[3]);
    let info = drive::inspect(blank).unwrap();
    assert_eq!(
        (info.signature.as_deref(), info.in_use.as_deref()),
        (None, None),
        "{info:?}"
    );
    assert_eq!(info.size_bytes, 2 << 30);
    assert_eq!(info.id, "pxd-disk2", "the virtio serial is the stable id");
    assert!(drive::check_addable(&info, &None, false).is_ok());

    fs::mkfs(formatted, Fs::Ext4).unwrap();
    let info = drive::inspect(formatted).unwrap();
    assert_eq!(info.signature.as_deref(), Some("ext4"));
    let err = drive::check_addable(&info, &None, false).unwrap_err();
    assert!(err.to_string().contains("--force"), "{err}");
    assert!(drive::check_addable(&info, &None, true).is_ok());

    let mnt = Path::new("/mnt/pxd-drive-test");
    fs::mount(formatted, mnt, Fs::Ext4, false).unwrap();
    let info = drive::inspect(formatted).unwrap();
    assert!(info.in_use.is_some(), "a mounted disk looks free: {info:?}");
    assert!(matches!(
        drive::check_addable(&info, &None, true),
        Err(DriveError::InUse { .. })
    ));
    fs::unmount(mnt).unwrap();
}

/// Kills the daemon when the test ends, however it ends.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn pxd_drive_list_shows_candidates_and_signatures_through_the_daemon() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let disks = vm_disks(6);
    fs::mkfs(&disks[5], Fs::Xfs).unwrap();
    // target/debug/pxd, beside this test binary's deps directory.
    let exe = std::env::current_exe().unwrap();
    let pxd = exe.parent().and_then(Path::parent).unwrap().join("pxd");
    assert!(
        pxd.exists(),
        "{} is missing: run through `cargo xtask test`",
        pxd.display()
    );
    let dir = Path::new("/tmp/pxd-drive-daemon");
    let socket = dir.join("pxd.sock");
    let _daemon = Daemon(
        std::process::Command::new(&pxd)
            .args(["daemon", "--addr", "127.0.0.1"])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--socket")
            .arg(&socket)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(&pxd)
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let listed = loop {
        match cli(&["--json", "drive", "list"]) {
            (true, out) => break out,
            _ if std::time::Instant::now() > deadline => panic!("the daemon never answered"),
            _ => std::thread::sleep(std::time::Duration::from_millis(200)),
        }
    };
    let drives: Vec<drive::DriveView> = serde_json::from_str(&listed).unwrap();
    let find = |p: &Path| {
        drives
            .iter()
            .find(|d| d.path == p)
            .unwrap_or_else(|| panic!("{} not listed: {listed}", p.display()))
    };
    let blank = find(&disks[4]);
    assert!(blank.candidate, "{blank:?}");
    assert_eq!(
        (blank.id.as_str(), blank.size_bytes),
        ("pxd-disk4", 2 << 30)
    );
    let formatted = find(&disks[5]);
    assert_eq!(formatted.signature.as_deref(), Some("xfs"));
    assert!(!formatted.candidate);

    let (ok, text) = cli(&["drive", "list"]);
    assert!(ok);
    let line = |p: &Path| {
        text.lines()
            .find(|l| l.starts_with(&p.display().to_string()))
            .unwrap_or_else(|| panic!("{} missing from:\n{text}", p.display()))
            .to_owned()
    };
    assert!(line(&disks[4]).ends_with("candidate"), "{text}");
    assert!(
        line(&disks[5]).contains("has xfs (needs --force)"),
        "{text}"
    );

    // Re-measure a disk through the daemon; a path that is no disk of this node is refused.
    let disk4 = disks[4].display().to_string();
    let (ok, out) = cli(&["--json", "drive", "benchmark", &disk4]);
    assert!(ok, "{out}");
    let b: drive::DriveBenchmark = serde_json::from_str(&out).unwrap();
    assert!(
        b.result.random_read.iops > 0.0 && b.result.random_write.is_none(),
        "{b:?}"
    );
    assert_ne!(b.class, Class::Low, "a raw virtio disk: {b:?}");
    let refused = std::process::Command::new(&pxd)
        .arg("--socket")
        .arg(&socket)
        .args(["drive", "benchmark", "/etc/passwd"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("path: /etc/passwd is not a whole disk of this node"),
        "{err}"
    );
}
