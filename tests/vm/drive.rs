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
fn a_disk_delayed_by_5ms_lands_in_a_lower_class_than_a_raw_one() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let disks = vm_disks(6);
    let (raw, under_slow) = (&disks[0], &disks[1]);
    let sectors = block::size_bytes(under_slow).unwrap() / 512;
    let table = format!("0 {sectors} delay {} 0 5", under_slow.display());
    run("dmsetup", &["create", "pxd-test-slow", "--table", &table]);
    let slow = Path::new("/dev/mapper/pxd-test-slow");

    let cfg = BenchConfig {
        destructive: true,
        ..BenchConfig::default()
    };
    let t = Thresholds::default();
    let fast_result = benchmark::run(raw, &cfg).unwrap();
    let slow_result = benchmark::run(slow, &cfg).unwrap();
    let (fast_class, slow_class) = (classify(&fast_result, &t), classify(&slow_result, &t));
    println!("raw virtio: {fast_class} {fast_result:?}");
    println!("delay 5 ms: {slow_class} {slow_result:?}");
    assert!(
        slow_result.random_read.p50_us >= 5_000,
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
        drive::check_addable(&held, true),
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
    assert!(drive::check_addable(&info, false).is_ok());

    fs::mkfs(formatted, Fs::Ext4).unwrap();
    let info = drive::inspect(formatted).unwrap();
    assert_eq!(info.signature.as_deref(), Some("ext4"));
    let err = drive::check_addable(&info, false).unwrap_err();
    assert!(err.to_string().contains("--force"), "{err}");
    assert!(drive::check_addable(&info, true).is_ok());

    let mnt = Path::new("/mnt/pxd-drive-test");
    fs::mount(formatted, mnt, Fs::Ext4, false).unwrap();
    let info = drive::inspect(formatted).unwrap();
    assert!(info.in_use.is_some(), "a mounted disk looks free: {info:?}");
    assert!(matches!(
        drive::check_addable(&info, true),
        Err(DriveError::InUse { .. })
    ));
    fs::unmount(mnt).unwrap();
}
