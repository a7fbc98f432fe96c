//! VM tier: drive labels through the real daemon and CLI. A disk labelled by another cluster
//! is listed as foreign and refused without `--force`, and relabelled with it; a damaged
//! label is refused the same way; two adds of one disk at once have exactly one winner.

use pxd::api::pools::{DriveAdded, PoolView};
use pxd::cluster::view::Status;
use pxd::kernel::dm::{DeviceMapper, KernelDm};
use pxd::pool::drive::{DriveView, LabelStanding};
use pxd::pool::label::{self, Found};
use pxd_tests::daemon::Daemon;
use pxd_tests::{read_direct, vm_disks, write_direct};
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
fn take_down(node: &str) {
    let dm = KernelDm::open().unwrap();
    let mut names: Vec<String> = dm
        .list()
        .unwrap()
        .into_iter()
        .map(|(n, _)| n.to_string())
        .filter(|n| n.starts_with(&format!("pxd-{node}-")))
        .collect();
    // The thin-pool before its -data and -meta devices.
    names.sort_by_key(|n| (n.ends_with("-meta") || n.ends_with("-data"), n.clone()));
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
    let mut d = Daemon::new("damaged", 9320, &[]);
    d.start_cluster();
    let status: Status = d.json(&["cluster", "status"]);
    d.ok(&["drive", "add", path]);
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
