//! VM tier: drive labels through the real daemon and CLI. A disk labelled by another cluster
//! is listed as foreign and refused without `--force`, and relabelled with it; a damaged
//! label is refused the same way; two adds of one disk at once have exactly one winner.

use pxd::api::pools::{DriveAdded, PoolView};
use pxd::cluster::view::Status;
use pxd::kernel::dm::{DeviceMapper, KernelDm};
use pxd::pool::drive::{DriveView, LabelStanding};
use pxd::pool::label::{self, Found};
use pxd_tests::daemon::Daemon;
use pxd_tests::{node_devices, read_direct, sectors, vm_disks, write_direct};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

/// One test at a time: they share two emulated cores.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn listed(d: &Daemon, disk: &Path) -> DriveView {
    let drives: Vec<DriveView> = d.json(&["drive", "list"]);
    drives
        .into_iter()
        .find(|v| v.path == disk)
        .unwrap_or_else(|| panic!("{} is not listed", disk.display()))
}

/// Removes the daemon node's devices, top first, as a reboot would: its drives are free.
/// The table of the node's thin-pool device: `0 LEN thin-pool META DATA CHUNK LOW N FEATURES`.
fn thin_pool_table(node: &str) -> String {
    let pool = node_devices(node)
        .into_iter()
        .find(|n| n.contains("-pool-") && !n.ends_with("-meta") && !n.ends_with("-data"));
    pool.map_or_else(String::new, |p| pxd_tests::run("dmsetup", &["table", &p]))
}

fn take_down(node: &str) {
    let dm = KernelDm::open().unwrap();
    let mut names: Vec<String> = node_devices(node).into_iter().collect();
    // Top of each stack first: crypt, thin, then the thin-pool, then its -data and -meta.
    let layer = |n: &String| match () {
        _ if n.contains("-crypt-") => 0,
        _ if n.contains("-thin-") => 1,
        _ if n.ends_with("-meta") || n.ends_with("-data") => 3,
        _ => 2,
    };
    names.sort_by_key(|n| (layer(n), n.clone()));
    for n in names {
        dm.remove(&devicemapper::DmNameBuf::new(n).unwrap())
            .unwrap();
    }
}

fn label_of(disk: &Path) -> label::Label {
    match pxd::kernel::label::read(disk).unwrap() {
        Found::Labelled(l) => l,
        other => panic!("{}: {other:?}", disk.display()),
    }
}

#[test]
fn a_foreign_disk_is_listed_refused_and_taken_only_with_force() {
    let _one = serial();
    let disk = vm_disks(6)[0].clone();
    let path = disk.to_str().unwrap();

    // Cluster A pools the disk, then goes away (its devices too, as after a reboot).
    let mut a = Daemon::new("foreign-a", 9300, &[]);
    a.start_cluster();
    let added: DriveAdded = a.json(&["drive", "add", path]);
    let a_status: Status = a.json(&["cluster", "status"]);
    let a_label = label_of(&disk);
    assert_eq!(a_label.drive.to_string(), added.id);
    assert_eq!(a_label.pool, added.pool);
    assert_eq!(a_label.member, 0);
    let v = listed(&a, &disk);
    assert_eq!(v.standing, Some(LabelStanding::Member(added.pool.clone())));
    assert_eq!(v.label.as_deref(), Some(added.id.as_str()));
    a.kill();
    take_down(&a_status.node.to_string());

    // Cluster B sees a foreign disk.
    let mut b = Daemon::new("foreign-b", 9310, &[]);
    b.start_cluster();
    let v = listed(&b, &disk);
    match &v.standing {
        Some(LabelStanding::Foreign(why)) => assert!(why.contains(&a_label.cluster), "{why}"),
        other => panic!("expected foreign, got {other:?}"),
    }
    assert!(!v.candidate);
    let shown = b.ok(&["drive", "list"]);
    assert!(shown.contains("foreign"), "{shown}");
    let head = read_direct(&disk, 0, 8 << 20);
    let e = b.refused(&["drive", "add", path]);
    assert!(
        e.contains("foreign pxd label") && e.contains("--force"),
        "{e}"
    );
    assert_eq!(
        read_direct(&disk, 0, 8 << 20),
        head,
        "a refusal writes nothing"
    );
    let pools: Vec<PoolView> = b.json(&["pool", "list"]);
    assert!(pools.is_empty(), "{pools:?}");

    // With --force it is taken and relabelled for cluster B.
    let taken: DriveAdded = b.json(&["drive", "add", "--force", path]);
    let b_label = label_of(&disk);
    assert_ne!(b_label.cluster, a_label.cluster);
    assert_eq!(b_label.drive.to_string(), taken.id);
    let pools: Vec<PoolView> = b.json(&["pool", "list"]);
    assert_eq!(pools.len(), 1);
    assert_eq!(pools[0].members.len(), 1);
    assert_eq!(pools[0].members[0].uuid, taken.id);
    assert_eq!(pools[0].members[0].path.as_deref(), Some(path));
    let b_status: Status = b.json(&["cluster", "status"]);
    b.kill();
    take_down(&b_status.node.to_string());
}

#[test]
fn a_damaged_label_needs_force() {
    let _one = serial();
    let disk = vm_disks(6)[1].clone();
    let path = disk.to_str().unwrap();
    // The pool is made as the daemon's --thin-* flags say, and keeps that across a restart
    // with other flags.
    let made_with = [
        "--thin-chunk",
        "1M",
        "--thin-zero-new-chunks",
        "false",
        "--thin-discard-passdown",
        "false",
    ];
    let mut d = Daemon::new("damaged", 9320, &made_with);
    d.start_cluster();
    let status: Status = d.json(&["cluster", "status"]);
    d.ok(&["drive", "add", path]);
    // `0 LEN thin-pool META DATA CHUNK LOW_WATER N FEATURES...`
    let made_as_asked = |t: &str| {
        let f: Vec<&str> = t.split_whitespace().collect();
        f.get(5) == Some(&"2048")
            && f.get(7..) == Some(&["2", "skip_block_zeroing", "no_discard_passdown"][..])
    };
    pxd_tests::wait_until(std::time::Duration::from_secs(120), || {
        let t = thin_pool_table(&status.node.to_string());
        made_as_asked(&t).then_some(()).ok_or(t)
    });
    let made = thin_pool_table(&status.node.to_string());
    d.kill();
    d.args.clear();
    d.start();
    let pools: Vec<PoolView> = d.json(&["pool", "list"]);
    assert_eq!(
        (
            pools[0].chunk_bytes,
            pools[0].zero_new_chunks,
            pools[0].discard_passdown
        ),
        (1 << 20, false, false)
    );
    assert_eq!(thin_pool_table(&status.node.to_string()), made);
    d.kill();
    take_down(&status.node.to_string());
    // Both copies of the label get a flipped byte: the magic stays, the checksum fails.
    for at in label::COPIES {
        let mut block = read_direct(&disk, at, 4096);
        block[20] ^= 0xff;
        write_direct(&disk, at, &block);
    }
    let mut e = Daemon::new("damaged-2", 9330, &[]);
    e.start_cluster();
    let v = listed(&e, &disk);
    assert_eq!(
        v.standing,
        Some(LabelStanding::Damaged("label checksum mismatch".into()))
    );
    let refusal = e.refused(&["drive", "add", path]);
    assert!(refusal.contains("damaged pxd label"), "{refusal}");
    let _: DriveAdded = e.json(&["drive", "add", "--force", path]);
    let status: Status = e.json(&["cluster", "status"]);
    e.kill();
    take_down(&status.node.to_string());
}

#[test]
fn two_adds_of_one_disk_at_once_have_one_winner() {
    let _one = serial();
    let disk = vm_disks(6)[2].clone();
    let path = disk.to_str().unwrap().to_owned();
    let mut d = Daemon::new("race", 9340, &[]);
    d.start_cluster();
    let (first, second) = std::thread::scope(|s| {
        let one = s.spawn(|| d.cli(&["drive", "add", &path]));
        let two = s.spawn(|| d.cli(&["drive", "add", &path]));
        (one.join().unwrap(), two.join().unwrap())
    });
    let outcomes = [&first, &second];
    let won = outcomes.iter().filter(|o| o.status.success()).count();
    assert_eq!(
        won,
        1,
        "exactly one add wins: {:?}",
        outcomes
            .iter()
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .collect::<Vec<_>>()
    );
    let loser = outcomes.iter().find(|o| !o.status.success()).unwrap();
    let why = String::from_utf8_lossy(&loser.stderr);
    assert!(
        why.contains("is a member of pool") || why.contains("in use"),
        "the loser says why: {why}"
    );
    let pools: Vec<PoolView> = d.json(&["pool", "list"]);
    let members: Vec<&str> = pools
        .iter()
        .flat_map(|p| p.members.iter().map(|m| m.uuid.as_str()))
        .collect();
    assert_eq!(members.len(), 1, "the pool holds the disk once: {pools:?}");
    assert_eq!(label_of(&disk).drive.to_string(), members[0]);
    let status: Status = d.json(&["cluster", "status"]);
    d.kill();
    take_down(&status.node.to_string());
}

fn mounted(at: &Path) -> bool {
    std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(at.to_str().unwrap()))
}

#[test]
fn a_missing_drive_degrades_its_pool_and_tears_nothing_down() {
    use pxd::api::volumes::VolumeView;
    use pxd::store::types::{DriveState, PoolHealth};
    use pxd_tests::{pattern, run, sha256, wait_until};
    use std::time::Duration;
    let _one = serial();
    let disks = vm_disks(6);
    // The slow drive is a delay map that starts 1 MiB into the disk, like a partition would:
    // once the map fails, nothing on the host shows its label any more.
    let slow_len = sectors(&disks[4]) - 2048;
    let slow_table = format!("0 {slow_len} delay {} 2048 5", disks[4].display());
    run(
        "dmsetup",
        &["create", "pxdtest-gone", "--table", &slow_table],
    );
    let mut d = Daemon::new("missing", 9350, &pxd_tests::EMULATOR_CLASSES);
    d.start_cluster();
    let node = d.json::<Status>(&["cluster", "status"]).node.to_string();
    let fast: DriveAdded = d.json(&["drive", "add", disks[3].to_str().unwrap()]);
    let slow: DriveAdded = d.json(&["drive", "add", "/dev/mapper/pxdtest-gone"]);
    assert_ne!(
        fast.pool, slow.pool,
        "the delayed drive makes a pool of its own"
    );
    d.ok(&[
        "volume",
        "create",
        "keep",
        "--size",
        "128M",
        "--io_priority",
        "high",
    ]);
    d.ok(&[
        "volume",
        "create",
        "lost",
        "--size",
        "128M",
        "--io_priority",
        "low",
    ]);
    let keep: VolumeView = d.json(&["volume", "mount", "keep"]);
    let lost: VolumeView = d.json(&["volume", "mount", "lost"]);
    let keep_at = std::path::PathBuf::from(keep.mountpoint.unwrap());
    let lost_at = std::path::PathBuf::from(lost.mountpoint.unwrap());
    let data = pattern(21, 4 << 20);
    std::fs::write(keep_at.join("data"), &data).unwrap();
    run("sync", &[]);
    let devices = node_devices(&node);

    // The slow drive fails: its map now errors every I/O and its label cannot be read. A
    // write to the volume on it fails.
    let error_table = format!("0 {slow_len} error");
    run(
        "dmsetup",
        &["load", "pxdtest-gone", "--table", &error_table],
    );
    run("dmsetup", &["resume", "pxdtest-gone"]);
    let wrote = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "count=4", "oflag=direct"])
        .arg(format!("of={}", lost_at.join("x").display()))
        .output()
        .unwrap();
    assert!(
        !wrote.status.success(),
        "a write to the failed drive succeeded"
    );
    wait_until(Duration::from_secs(180), || {
        let pools: Vec<PoolView> = d.json(&["pool", "list"]);
        let p = pools.iter().find(|p| p.id == slow.pool).unwrap();
        match &p.health {
            PoolHealth::Degraded(why) if why.contains(&slow.id) => Ok(()),
            other => Err(format!("the slow pool is {other:?}\n{}", d.log_tail())),
        }
    });
    // The other pool carries on: a new volume there is built by a full reconcile pass, which
    // also had the degraded pool in front of it. Nothing was torn down and both mounts stay.
    d.ok(&[
        "volume",
        "create",
        "more",
        "--size",
        "64M",
        "--io_priority",
        "high",
        "--fs",
        "raw",
    ]);
    let more: VolumeView = d.json(&["volume", "inspect", "more"]);
    let mut devices = devices;
    devices.extend(more.stack.iter().cloned());
    assert_eq!(node_devices(&node), devices, "a device was torn down");
    assert!(mounted(&keep_at) && mounted(&lost_at), "a mount was undone");
    assert_eq!(
        sha256(&std::fs::read(keep_at.join("data")).unwrap()),
        sha256(&data)
    );
    let pools: Vec<PoolView> = d.json(&["pool", "list"]);
    let high = pools.iter().find(|p| p.id == fast.pool).unwrap();
    assert_eq!(high.health, PoolHealth::Online);
    let shown = d.ok(&["pool", "list"]);
    assert!(shown.contains("degraded"), "{shown}");
    let client =
        pxd::api::client::BlockingClient::new(pxd::api::client::Target::Unix(d.socket())).unwrap();
    let (_, body) = client
        .raw(pxd::api::client::Method::GET, "/metrics")
        .unwrap();
    let metrics = String::from_utf8_lossy(&body);
    assert!(
        pxd_tests::metric_has(
            &metrics,
            "pxd_pool_state",
            &[
                ("class", "low"),
                ("pool", &slow.pool),
                ("state", "degraded")
            ],
            "1"
        ),
        "{metrics}"
    );

    // The drive comes back, but it was recorded failed (the pool took write errors): it
    // stays failed and its pool degraded, never used again until `drive replace` or
    // `drive remove`.
    run("dmsetup", &["load", "pxdtest-gone", "--table", &slow_table]);
    run("dmsetup", &["resume", "pxdtest-gone"]);
    for _ in 0..3 {
        d.ok(&["volume", "list"]);
        let pools: Vec<PoolView> = d.json(&["pool", "list"]);
        let p = pools.iter().find(|p| p.id == slow.pool).unwrap();
        assert_eq!(p.members[0].state, Some(DriveState::Failed), "{p:?}");
        assert!(
            matches!(&p.health, PoolHealth::Degraded(why) if why.contains(&slow.id)),
            "{p:?}"
        );
    }
    assert!(mounted(&keep_at), "the other pool's mount was undone");
    d.kill();
    // Best effort from here: the failed pool's filesystem may refuse a clean unmount.
    for at in [&keep_at, &lost_at] {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(at)
            .status();
    }
    let dm = KernelDm::open().unwrap();
    let mut names: Vec<String> = node_devices(&node).into_iter().collect();
    names.sort_by_key(|n| {
        (
            n.contains("-pool-"),
            n.ends_with("-meta") || n.ends_with("-data"),
        )
    });
    for n in names {
        let _ = dm.remove(&devicemapper::DmNameBuf::new(n).unwrap());
    }
    let _ = std::process::Command::new("dmsetup")
        .args(["remove", "pxdtest-gone"])
        .status();
}

#[test]
fn a_crash_at_every_step_of_drive_add_converges() {
    use pxd::store::types::PoolHealth;
    use pxd_tests::wait_until;
    use std::time::Duration;
    let _one = serial();
    let disk = vm_disks(6)[5].clone();
    let path = disk.to_str().unwrap();
    let mut n = 1;
    loop {
        assert!(
            n <= 30,
            "drive add never finished without reaching step {n}"
        );
        // A fresh node and a blank disk for every abort point.
        write_direct(&disk, 0, &vec![0u8; 8 << 20]);
        let mut d = Daemon::new(&format!("addcrash{n}"), 9400 + 3 * n as u16, &[]);
        d.start_cluster();
        let node = d.json::<Status>(&["cluster", "status"]).node.to_string();
        let (answered, crashed) = d.cli_crashing_at(n, &["drive", "add", path]);
        // Whatever step it died at, the restarted node finishes the add: one pool, up and
        // online, whose one member is this disk, labelled so.
        wait_until(Duration::from_secs(300), || {
            let pools: Vec<PoolView> = d.json(&["pool", "list"]);
            let ok = pools.len() == 1
                && pools[0].health == PoolHealth::Online
                && pools[0].usage.is_some()
                && pools[0].members.len() == 1
                && pools[0].members[0].path.as_deref() == Some(path);
            ok.then_some(())
                .ok_or_else(|| format!("after an abort at step {n}: {pools:?}\n{}", d.log_tail()))
        });
        let pools: Vec<PoolView> = d.json(&["pool", "list"]);
        let l = label_of(&disk);
        assert_eq!(l.drive.to_string(), pools[0].members[0].uuid);
        assert_eq!((l.pool.as_str(), l.member), (pools[0].id.as_str(), 0));
        let listed = listed(&d, &disk);
        assert_eq!(
            listed.standing,
            Some(LabelStanding::Member(pools[0].id.clone()))
        );
        eprintln!(
            "drive add: abort at step {n}: {}",
            if crashed {
                "crashed, converged"
            } else {
                "finished"
            }
        );
        d.kill();
        take_down(&node);
        if !crashed {
            assert!(
                answered,
                "drive add neither crashed nor answered at step {n}:\n{}",
                d.log_tail()
            );
            assert!(n > 3, "drive add had only {} steps to crash in", n - 1);
            break;
        }
        n += 1;
    }
}

/// A loop device over a new file of `mib` MiB in the guest's /tmp.
fn loop_device(name: &str, mib: u64) -> String {
    let file = format!("/tmp/pxd-{name}.img");
    let f = std::fs::File::create(&file).unwrap();
    f.set_len(mib << 20).unwrap();
    pxd_tests::run("losetup", &["-f", "--show", &file])
        .trim()
        .to_owned()
}

#[test]
fn drive_add_refuses_what_is_no_drive_and_records_nothing() {
    use pxd::api::volumes::VolumeView;
    use pxd_tests::run;
    let _one = serial();
    let mut d = Daemon::new("baddrives", 9380, &[]);
    d.start_cluster();
    let node = d.json::<Status>(&["cluster", "status"]).node.to_string();
    // A small pool on a loop device, with a volume: pxd's own devices to try.
    let pooled = loop_device("pooled", 256);
    d.ok(&["drive", "add", &pooled]);
    let v: VolumeView = d.json(&["volume", "create", "own", "--size", "32M", "--fs", "raw"]);
    let thin = format!("/dev/mapper/{}", v.stack[0]);
    let pool_data = format!("/dev/mapper/pxd-{node}-pool-{}-data", {
        let pools: Vec<PoolView> = d.json(&["pool", "list"]);
        pools[0].id.clone()
    });
    // A mounted disk, a disk too small to be a drive, a regular file and /dev/null.
    let mounted = loop_device("mounted", 64);
    run("mkfs.ext4", &["-q", "-F", &mounted]);
    std::fs::create_dir_all("/tmp/pxd-mounted").unwrap();
    run("mount", &[&mounted, "/tmp/pxd-mounted"]);
    let small = loop_device("small", 32);
    std::fs::write("/tmp/pxd-regular-file", b"not a disk").unwrap();

    let store = |d: &Daemon| {
        (
            d.ok(&["--json", "pool", "list"]),
            d.ok(&["--json", "volume", "list"]),
        )
    };
    let before = (store(&d), node_devices(&node));
    for (path, says) in [
        (mounted.as_str(), "in use"),
        (small.as_str(), "at least 67108864"),
        ("/tmp/pxd-regular-file", "not a block device"),
        ("/dev/null", "not a block device"),
        (thin.as_str(), "pxd's own device"),
        (pool_data.as_str(), "pxd's own device"),
        (pooled.as_str(), "member of pool"),
        ("relative/path", "absolute"),
    ] {
        let e = d.refused(&["drive", "add", "--force", path]);
        assert!(e.contains("path") || e.contains(path), "{path}: {e}");
        assert!(e.contains(says), "{path}: {e}");
        assert_eq!(
            (store(&d), node_devices(&node)),
            before,
            "{path} changed something"
        );
    }
    run("umount", &["/tmp/pxd-mounted"]);
    d.ok(&["volume", "delete", "own"]);
    d.kill();
    take_down(&node);
    for dev in [&pooled, &mounted, &small] {
        run("losetup", &["-d", dev]);
    }
}
