//! VM tier: replicated volumes on three daemons, each in its own network namespace with its
//! own disk, in one guest. The kernel carries every byte: legs are thin devices exported by
//! nvmet, reached over NVMe/TCP and mirrored by dm-raid on the attach node. Checks what a
//! user relies on: data written through the raid is on every leg, attach works on a node
//! with no replica, encrypted data never crosses as plain text, `kill -9` of any daemon under
//! fio changes nothing in the data path, and bad input is refused with the kernel untouched.
//! An attach node cut off (its control traffic, or whole) is fenced, and a forced attach
//! elsewhere loses no acknowledged write.
//!
//! Two clusters, each on three of the guest's disks, run side by side: one takes attach
//! nodes away, the other does everything else. Their checks of the kernel's state look
//! only at their own nodes' devices, exports and controllers.

use pxd::api::pools::PoolView;
use pxd::api::volumes::VolumeView;
use pxd::kernel::dm::{DeviceMapper, KernelDm};
use pxd::plan::raid::{LegHealth, RaidStatus};
use pxd::store::types::{AttachState, BuildPhase, DriveState, PoolHealth, ReplicaState};
use pxd_tests::daemon::Daemon;
use pxd_tests::trio::{legs_built, wait_until, Cluster};
use pxd_tests::{node_devices, pattern, read_direct, run, sha256, vm_disks, write_direct};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

/// The sha256 of the first `len` bytes of every leg's data thin of volume `v`, read directly.
fn leg_sums(v: &VolumeView, ids: &[(String, String)], len: usize) -> Vec<String> {
    v.replicas
        .iter()
        .map(|r| {
            let node = ids
                .iter()
                .find(|(name, _)| *name == r.node_name)
                .map(|(_, id)| id.clone())
                .unwrap();
            let dev = PathBuf::from(format!("/dev/mapper/pxd-{node}-thin-{}", v.id));
            sha256(&read_direct(&dev, 0, len))
        })
        .collect()
}

fn raid_status(name: &str) -> Option<RaidStatus> {
    let dm = KernelDm::open().ok()?;
    let name = devicemapper::DmNameBuf::new(name.to_owned()).ok()?;
    let status = dm.status(&name).ok()?;
    status.first()?.3.parse().ok()
}

/// fio writing `size` at random over `dev` with O_DIRECT, then reading it all back against
/// its crc32c; panics unless it reports 0 errors.
fn fio_verify(dev: &Path, name: &str, size: &str) {
    fio(dev, name, size, &["--do_verify=1"]);
}

/// fio job `name` as [`fio_verify`] runs it, with `extra` flags: `--do_verify=0` writes only,
/// `--verify_only` checks what the same job wrote before (its offsets and data repeat).
fn fio(dev: &Path, name: &str, size: &str, extra: &[&str]) {
    if let Err(e) = try_fio(dev, name, size, extra) {
        panic!("{e}");
    }
}

/// [`fio`], its failure returned: for a writer thread whose failure the test shows with
/// every node's log.
fn try_fio(dev: &Path, name: &str, size: &str, extra: &[&str]) -> Result<(), String> {
    let out = Command::new("fio")
        .args([
            &format!("--name={name}"),
            &format!("--filename={}", dev.display()),
            &format!("--size={size}"),
            "--rw=randwrite",
            "--bs=4k",
            "--ioengine=libaio",
            "--iodepth=16",
            "--direct=1",
            "--verify=crc32c",
            "--output-format=json",
        ])
        .args(extra)
        .output()
        .expect("run fio");
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "fio on {} failed: {}{text}",
            dev.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let json: serde_json::Value = serde_json::from_str(&text[text.find('{').unwrap()..]).unwrap();
    for job in json["jobs"].as_array().unwrap() {
        if job["error"] != 0 {
            return Err(format!("fio job {name} had errors: {text}"));
        }
        let ios = job["write"]["total_ios"].as_u64().unwrap()
            + job["read"]["total_ios"].as_u64().unwrap();
        if ios == 0 {
            return Err(format!("fio job {name} did no I/O: {text}"));
        }
    }
    Ok(())
}

/// fio writing and verifying `size` bytes at 1 MiB/s, run after run, until stopped: the
/// slow writer a copy runs under (what it changes goes in the next round). Its first
/// failure is kept, for the test to show with every node's log.
struct Writer {
    stop: Arc<AtomicBool>,
    failed: Arc<Mutex<Option<String>>>,
    runs: std::thread::JoinHandle<u32>,
}

impl Writer {
    fn start(dev: &Path, name: &str, size: &str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(Mutex::new(None::<String>));
        let runs = {
            let (stop, failed) = (stop.clone(), failed.clone());
            let (dev, name, size) = (dev.to_owned(), name.to_owned(), size.to_owned());
            std::thread::spawn(move || {
                let mut runs = 0;
                while !stop.load(Ordering::Relaxed) || runs == 0 {
                    let job = format!("{name}{runs}");
                    if let Err(e) = try_fio(&dev, &job, &size, &["--do_verify=1", "--rate=1m"]) {
                        *failed.lock().unwrap() = Some(e);
                        break;
                    }
                    runs += 1;
                }
                runs
            })
        };
        Writer { stop, failed, runs }
    }

    /// Panics with every node's log if a run failed.
    fn check(&self, c: &Cluster) {
        if let Some(e) = self.failed.lock().unwrap().clone() {
            c.show_logs("fio failed");
            panic!("{e}");
        }
    }

    /// Stops it; the runs it made, all clean.
    fn finish(self, c: &Cluster) -> u32 {
        self.stop.store(true, Ordering::Relaxed);
        while !self.runs.is_finished() {
            std::thread::sleep(Duration::from_millis(200));
        }
        self.check(c);
        self.runs.join().unwrap()
    }
}

/// Waits for volume `name` (attached on node a) to have its two legs up, one of them new
/// on node b, and no copy under way; `writer` must stay clean meanwhile.
fn rebuilt_on_b(c: &Cluster, name: &str, limit: Duration, writer: &Writer) -> VolumeView {
    let b = c.nodes[1].name.clone();
    c.wait(&format!("{name}'s new leg built on b"), limit, || {
        writer.check(c);
        let v: VolumeView = c.nodes[0].json(&["volume", "inspect", name]);
        let on_b = v.replicas.iter().any(|r| r.node_name == b);
        let up = v.replicas.iter().all(|r| r.state == ReplicaState::Up);
        (on_b && up && v.replicas.len() == 2 && v.build.is_none()).then_some(v)
    })
}

/// Volume `v` (`len` bytes, attached on node a as `dev`) after a new leg joined: the raid
/// has both legs in sync, they are equal, `data` reads back at its offset, and the check
/// after the join found nothing differing.
fn two_legs_whole(c: &Cluster, v: &VolumeView, len: usize, dev: &Path, (at, data): (u64, &[u8])) {
    let raid = format!("pxd-{}-raid-{}", c.id(0), v.id);
    let status = raid_status(&raid).expect("the raid");
    assert_eq!(status.legs, [LegHealth::InSync; 2], "{status:?}");
    let sums = leg_sums(v, &c.ids, len);
    assert_eq!(sums[0], sums[1], "the legs differ");
    assert_eq!(sha256(&read_direct(dev, at, data.len())), sha256(data));
    assert_eq!(v.check.as_ref().and_then(|k| k.mismatches), Some(0));
}

/// Cuts node `i` off whole: its daemon killed, its link down.
fn lose(c: &mut Cluster, i: usize) {
    c.nodes[i].kill();
    run("ip", &["-n", &c.net.ns(i), "link", "set", "eth0", "down"]);
}

/// Brings node `i` back: link up, daemon started.
fn bring_back(c: &mut Cluster, i: usize) {
    run("ip", &["-n", &c.net.ns(i), "link", "set", "eth0", "up"]);
    c.nodes[i].start();
}

#[test]
fn an_attach_node_cut_off_is_fenced_and_a_forced_attach_loses_no_acknowledged_write() {
    let disks = vm_disks(6);
    // Node c's drive is a linear map over three quarters of its disk, so that a test can
    // make it fail; the last quarter is the disk that replaces it.
    let failing = FailingDrive::over(&disks[2], "fence-c-drive", 0..3);
    let spare = FailingDrive::over(&disks[2], "fence-c-spare", 3..4);
    let drives = [disks[0].clone(), disks[1].clone(), failing.path.clone()];
    let mut c = Cluster::start("fence", &drives, 0, 9700);
    mount_detach_delete(&c);
    ha_update(&c);
    replaced_past_the_timeout(&mut c);
    forced_takeover(&c, "f6", Cut::Control);
    forced_takeover(&c, "p5", Cut::Whole);
    drive_failure(&c, &failing, &spare);
}

/// A drive that a test can fail: a `linear` map over part of a disk, swapped for `error`.
struct FailingDrive {
    name: String,
    path: PathBuf,
    sectors: u64,
}

impl FailingDrive {
    /// Maps the quarters `quarters` of `disk`.
    fn over(disk: &Path, name: &str, quarters: std::ops::Range<u64>) -> FailingDrive {
        let disk = disk.display().to_string();
        let whole: u64 = run("blockdev", &["--getsz", &disk]).trim().parse().unwrap();
        let quarter = whole / 4;
        let sectors = quarter * (quarters.end - quarters.start);
        let table = format!("0 {sectors} linear {disk} {}", quarter * quarters.start);
        run("dmsetup", &["create", name, "--table", &table]);
        FailingDrive {
            name: name.to_owned(),
            path: PathBuf::from(format!("/dev/mapper/{name}")),
            sectors,
        }
    }

    /// From now on every read and write of the drive fails, as a dead disk's do.
    fn fail(&self) {
        let table = format!("0 {} error", self.sectors);
        run("dmsetup", &["load", &self.name, "--table", &table]);
        run("dmsetup", &["resume", &self.name]);
    }
}

/// A drive under one replica fails (its map swapped for `error`) while fio writes: fio sees
/// no error, the drive is recorded failed and its pool degraded, and the leg on it is built
/// anew on the third node at once, with no replica timeout to wait out (10 minutes here).
fn drive_failure(c: &Cluster, drive: &FailingDrive, spare: &FailingDrive) {
    let a = &c.nodes[0];
    let on = format!("{},{}", c.nodes[0].name, c.nodes[2].name);
    // Bad input: the drive holding a repl 1 volume's only replica cannot be removed.
    let c_name = c.nodes[2].name.as_str();
    a.ok(&[
        "volume", "create", "solo", "--size", "64M", "--fs", "raw", "--nodes", c_name,
    ]);
    let tables = c.tables();
    let path = drive.path.display().to_string();
    let e = c.nodes[2].refused(&["drive", "remove", &path]);
    assert!(
        e.contains("volume solo has its only replica") && e.contains("drive"),
        "{e}"
    );
    assert_eq!(c.tables(), tables);
    c.nodes[2].ok(&["volume", "delete", "solo"]);
    a.ok(&[
        "volume", "create", "df", "--size", "128M", "--fs", "raw", "--repl", "2", "--nodes", &on,
    ]);
    legs_built(c, "df");
    let v: VolumeView = a.json(&["volume", "attach", "df"]);
    let dev = v.device.clone().expect("a device");
    let data = pattern(19, 16 * MIB);
    write_direct(&dev, 64 * MIB as u64, &data);
    let writer = Writer::start(&dev, "df", "8M");
    drive.fail();
    let cut = Instant::now();
    // Well within the replica timeout (10 minutes): the failed drive needs no waiting out.
    let built = rebuilt_on_b(c, "df", Duration::from_secs(400), &writer);
    let took = cut.elapsed();
    let runs = writer.finish(c);
    // The drive shows failed, its pool degraded, naming it.
    let pools: Vec<PoolView> = c.nodes[2].json(&["pool", "list"]);
    let pool = pools
        .iter()
        .find(|p| p.node.to_string() == c.id(2))
        .expect("c's pool");
    assert_eq!(pool.members[0].state, Some(DriveState::Failed), "{pool:?}");
    let why = pool.health.reason().unwrap_or_default();
    assert!(
        matches!(pool.health, PoolHealth::Degraded(_)) && why.contains(&pool.members[0].uuid),
        "{pool:?}"
    );
    two_legs_whole(c, &built, 128 * MIB, &dev, (64 * MIB as u64, &data));
    let b = built.last_build.clone().expect("the copy's record");
    eprintln!(
        "drive failure: c's leg of df built anew on b {took:?} after the drive failed, under \
         {runs} fio runs, 0 errors: {} bytes copied of {} allocated, pause {:?} ms; pool {}",
        b.copied_bytes,
        b.allocated_bytes,
        b.pause_ms,
        pool.health.name()
    );
    a.ok(&["volume", "detach", "df"]);
    a.ok(&["volume", "delete", "df"]);
    drive_replace(c, &pool.members[0].uuid, spare);
}

/// `drive replace` of c's failed drive: refused onto a disk with a signature, then (forced)
/// the pool is made anew on the new disk and takes a volume again.
fn drive_replace(c: &Cluster, failed: &str, spare: &FailingDrive) {
    let node = &c.nodes[2];
    let new = spare.path.display().to_string();
    run("mkswap", &[&new]);
    let (tables, pools) = (c.tables(), node.ok(&["pool", "list"]));
    let e = node.refused(&["drive", "replace", failed, &new]);
    assert!(e.contains("new: ") && e.contains("--force"), "{e}");
    assert_eq!((c.tables(), node.ok(&["pool", "list"])), (tables, pools));

    node.ok(&["drive", "replace", failed, &new, "--force"]);
    let pool = c.wait(
        "c's pool made anew on the new disk",
        Duration::from_secs(300),
        || {
            let pools: Vec<PoolView> = node.json(&["pool", "list"]);
            pools
                .into_iter()
                .find(|p| p.node.to_string() == c.id(2))
                .filter(|p| {
                    p.health == PoolHealth::Online
                        && p.members.len() == 1
                        && p.members[0].uuid != failed
                        && p.members[0].state == Some(DriveState::Online)
                })
        },
    );
    // Its data device maps the new disk.
    let dev = run(
        "dmsetup",
        &[
            "info",
            "-c",
            "--noheadings",
            "-o",
            "major,minor",
            &spare.name,
        ],
    );
    let dev = dev.trim();
    let data = c
        .tables()
        .into_iter()
        .find(|t| t.contains(&format!("pool-{}-data:", pool.id)))
        .expect("the pool's data device");
    assert!(
        data.contains(&format!(" {dev} ")),
        "{data} does not map {dev}"
    );
    eprintln!(
        "drive replace: c's failed drive {failed} replaced by {} in pool {}",
        pool.members[0].uuid, pool.id
    );
    drive_remove(c, &pool.members[0].uuid, &pool.id);
}

/// `drive remove` of c's healthy drive under a writer: the leg of a volume on it is moved
/// to b make-before-break (the raid never runs on fewer than two live legs meanwhile: a
/// drop first would leave it one), then the drive leaves with its pool.
fn drive_remove(c: &Cluster, drive: &str, pool: &str) {
    let a = &c.nodes[0];
    let on = format!("{},{}", a.name, c.nodes[2].name);
    a.ok(&[
        "volume", "create", "back", "--size", "64M", "--fs", "raw", "--repl", "2", "--nodes", &on,
    ]);
    legs_built(c, "back");
    let v: VolumeView = a.json(&["volume", "attach", "back"]);
    let dev = v.device.clone().expect("a device");
    let data = pattern(23, 8 * MIB);
    write_direct(&dev, 32 * MIB as u64, &data);
    let raid = format!("pxd-{}-raid-{}", c.id(0), v.id);
    let writer = Writer::start(&dev, "back", "8M");
    c.nodes[2].ok(&["drive", "remove", drive]);
    let (mut fewest_live, mut most_legs) = (usize::MAX, 0);
    let b = c.nodes[1].name.clone();
    let moved = c.wait(
        "back's leg moved to b, then c's drive gone with its pool",
        Duration::from_secs(400),
        || {
            writer.check(c);
            if let Some(s) = raid_status(&raid) {
                let live = s
                    .legs
                    .iter()
                    .filter(|l| matches!(l, LegHealth::InSync | LegHealth::Syncing));
                fewest_live = fewest_live.min(live.count());
                most_legs = most_legs.max(s.legs.len());
            }
            let v: VolumeView = a.json(&["volume", "inspect", "back"]);
            let on_b = v.replicas.iter().any(|r| r.node_name == b);
            let up = v.replicas.iter().all(|r| r.state == ReplicaState::Up);
            let pools: Vec<PoolView> = c.nodes[2].json(&["pool", "list"]);
            let gone = !pools.iter().any(|p| p.id == pool);
            (on_b && up && v.replicas.len() == 2 && v.build.is_none() && gone).then_some(v)
        },
    );
    let runs = writer.finish(c);
    assert!(
        fewest_live >= 2,
        "the raid ran on {fewest_live} live leg(s) while the leg moved"
    );
    assert_eq!(moved.evacuating, None);
    two_legs_whole(c, &moved, 64 * MIB, &dev, (32 * MIB as u64, &data));
    let b = moved.last_build.clone().expect("the copy's record");
    eprintln!(
        "drive remove: back's leg moved from c to b under {runs} fio runs, 0 errors, never \
         fewer than {fewest_live} live legs (up to {most_legs} legs): {} bytes copied \
         of {} allocated, pause {:?} ms; c's pool {pool} gone",
        b.copied_bytes, b.allocated_bytes, b.pause_ms
    );
    a.ok(&["volume", "detach", "back"]);
    a.ok(&["volume", "delete", "back"]);
}

#[test]
fn replicated_volumes_mirror_across_nodes_survive_daemon_crashes_and_refuse_bad_input() {
    let disks = vm_disks(6);
    // The copy capped low, so that the crash test below finds a copy under way to kill.
    let mut c = Cluster::start_with("repl", &disks[3..], 10, 9800, &["--copy-rate-mib", "4"]);
    let (a, b) = (&c.nodes[0], &c.nodes[1]);

    // Bad input: refused by name, and no node's devices or exports change.
    let (tables, exports) = (c.tables(), c.exports());
    for repl in ["0", "4"] {
        let e = a.refused(&["volume", "create", "bad", "--size", "64M", "--repl", repl]);
        assert!(e.contains("repl") && e.contains("1 to 3"), "{e}");
    }
    let e = a.refused(&[
        "volume",
        "create",
        "bad",
        "--size",
        "64M",
        "--repl",
        "3",
        "--nodes",
        "repl-a,repl-b",
    ]);
    assert!(
        e.contains("2 node(s)") && e.contains("3 replica(s) asked"),
        "{e}"
    );
    let e = b.refused(&["volume", "attach", "nothing-here"]);
    assert!(e.contains("no volume called \"nothing-here\""), "{e}");
    assert_eq!((c.tables(), c.exports()), (tables, exports));

    // Repl 2, attached on the one node that holds no replica: both legs are remote.
    a.ok(&[
        "volume", "create", "r2", "--size", "64M", "--fs", "raw", "--repl", "2",
    ]);
    let v = legs_built(&c, "r2");
    let holders: BTreeSet<&str> = v.replicas.iter().map(|r| r.node_name.as_str()).collect();
    assert_eq!(holders.len(), 2, "{v:?}");
    let spare = (0..3)
        .find(|i| !holders.contains(c.nodes[*i].name.as_str()))
        .unwrap();
    let v: VolumeView = c.nodes[spare].json(&["volume", "attach", "r2"]);
    let at = v.attachment.clone().expect("attached");
    assert_eq!(
        (at.node_name.as_str(), at.epoch, at.state),
        (c.nodes[spare].name.as_str(), 1, AttachState::Attached)
    );
    let raid = format!("pxd-{}-raid-{}", c.id(spare), v.id);
    let dev = PathBuf::from(format!("/dev/mapper/{raid}"));
    assert_eq!(v.device.as_deref(), Some(dev.as_path()));
    fio_verify(&dev, "r2", "16M");
    let status = raid_status(&raid).unwrap();
    assert!(status.is_clean(), "{status:?}");
    let sums = leg_sums(&v, &c.ids, 64 * MIB);
    assert_eq!(sums[0], sums[1], "the legs differ");
    assert_eq!(sums[0], sha256(&read_direct(&dev, 0, 64 * MIB)));
    let v: VolumeView = c.nodes[0].json(&["volume", "inspect", "r2"]);
    assert!(
        v.replicas.iter().all(|r| r.state == ReplicaState::Up),
        "{v:?}"
    );

    // A second attach elsewhere is refused while it is attached.
    let e = c.nodes[(spare + 1) % 3].refused(&["volume", "attach", "r2"]);
    assert!(
        e.contains("is attached on node") && e.contains("--force"),
        "{e}"
    );

    // Repl 3, encrypted, attached on a node holding one of its legs: a pattern written
    // through crypt reaches every leg, encrypted alike, and appears on none of them.
    a.ok(&[
        "volume", "create", "r3", "--size", "64M", "--fs", "raw", "--repl", "3", "--secure",
    ]);
    legs_built(&c, "r3");
    let e = b.refused(&["volume", "check", "r3"]);
    assert!(
        e.contains("not attached") && e.contains("attach it first"),
        "{e}"
    );
    let v: VolumeView = a.json(&["volume", "attach", "r3"]);
    let top = v.device.clone().expect("a device");
    assert!(top.to_string_lossy().contains("-crypt-"), "{top:?}");
    let data = pattern(7, 4 * MIB);
    write_direct(&top, 0, &data);
    assert_eq!(sha256(&read_direct(&top, 0, data.len())), sha256(&data));
    let sums = leg_sums(&v, &c.ids, 4 * MIB);
    assert_eq!(sums.len(), 3);
    assert!(
        sums.iter().all(|s| *s == sums[0]),
        "the legs differ: {sums:?}"
    );
    assert_ne!(sums[0], sha256(&data), "plain text on a leg");

    // kill -9 of the attach node's daemon, then of a replica node's, three times each,
    // under fio: fio sees no error, the raid never degrades, and each restart adopts the
    // devices and exports as they are.
    let r2 = c.nodes[0].json::<VolumeView>(&["volume", "inspect", "r2"]);
    let replica = c.by_name(&r2.replicas[0].node_name);
    let stop = Arc::new(AtomicBool::new(false));
    let degraded = Arc::new(Mutex::new(Vec::<String>::new()));
    let watcher = {
        let (stop, degraded, raid) = (stop.clone(), degraded.clone(), raid.clone());
        std::thread::spawn(move || {
            let mut samples = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match raid_status(&raid) {
                    Some(s) if s.legs.iter().all(|l| *l == LegHealth::InSync) => {}
                    other => degraded.lock().unwrap().push(format!("{other:?}")),
                }
                samples += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            samples
        })
    };
    let writer = {
        let (stop, dev) = (stop.clone(), dev.clone());
        std::thread::spawn(move || {
            let mut runs = 0;
            while !stop.load(Ordering::Relaxed) {
                fio_verify(&dev, &format!("crash{runs}"), "16M");
                runs += 1;
            }
            runs
        })
    };
    for victim in [spare, spare, spare, replica, replica, replica] {
        let (tables, exports) = (c.tables(), c.exports());
        c.nodes[victim].kill();
        std::thread::sleep(Duration::from_millis(500));
        c.nodes[victim].start();
        // One full pass after the restart, then the kernel must be as it was.
        c.nodes[victim].ok(&["volume", "inspect", "r2"]);
        assert_eq!(
            c.tables(),
            tables,
            "a restart of {} changed a table",
            c.nodes[victim].name
        );
        assert_eq!(
            c.exports(),
            exports,
            "a restart of {} changed an export",
            c.nodes[victim].name
        );
    }
    stop.store(true, Ordering::Relaxed);
    let runs = writer.join().expect("fio ran clean through every crash");
    let samples = watcher.join().unwrap();
    let degraded = degraded.lock().unwrap().clone();
    assert!(degraded.is_empty(), "the raid left all-A: {degraded:?}");
    eprintln!("6 daemon crashes under {runs} fio runs: {samples} raid status samples, all in sync");
    let v: VolumeView = c.nodes[0].json(&["volume", "inspect", "r2"]);
    let sums = leg_sums(&v, &c.ids, 64 * MIB);
    assert_eq!(sums[0], sums[1], "the legs differ after the crashes");

    // A replica node lost whole (its daemon killed, its link cut) under fio: its writes are
    // held until the store records the leg stale, then go on degraded; fio sees no error.
    // Back, it reconnects and resyncs only the regions written meanwhile.
    let lost = replica;
    let ns = c.net.ns(lost);
    let leg_dev = PathBuf::from(format!("/dev/mapper/pxd-{}-thin-{}", c.id(lost), r2.id));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, dev) = (stop.clone(), dev.clone());
        std::thread::spawn(move || {
            let mut runs = 0;
            while !stop.load(Ordering::Relaxed) || runs < 2 {
                fio_verify(&dev, &format!("loss{runs}"), "16M");
                runs += 1;
            }
            runs
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    c.nodes[lost].kill();
    run("ip", &["-n", &ns, "link", "set", "eth0", "down"]);
    let cut = Instant::now();
    let raid = format!("pxd-{}-raid-{}", c.id(spare), r2.id);
    let index = r2
        .replicas
        .iter()
        .position(|r| r.node_name == c.nodes[lost].name)
        .unwrap();
    c.wait(
        "the lost leg dropped from the raid",
        Duration::from_secs(120),
        || {
            let s = raid_status(&raid)?;
            (s.legs[index] == LegHealth::Dead).then_some(())
        },
    );
    let pause = cut.elapsed();
    let v: VolumeView = c.nodes[spare].json(&["volume", "inspect", "r2"]);
    assert!(
        matches!(v.replicas[index].state, ReplicaState::Stale { .. }),
        "the store records the lost leg stale before the raid drops it: {v:?}"
    );
    let loss = v.last_leg_loss.clone().expect("the loss is recorded");
    assert_eq!(loss.node.to_string(), c.id(lost));
    assert!(
        loss.held_ms >= 3000,
        "held {} ms, under the leg timeout",
        loss.held_ms
    );
    // The attach node shows it: inspect (its last pass's raid) and its metrics.
    let id = r2.id.clone();
    let shown = c.wait(
        "the degraded raid in inspect and metrics",
        Duration::from_secs(60),
        || {
            let v: VolumeView = c.nodes[spare].json(&["volume", "inspect", "r2"]);
            let shown = v.raid?;
            let m = metrics(&c.nodes[spare]);
            let has = |name: &str, want: u32| {
                m.lines().any(|l| {
                    l.starts_with(&format!("{name}{{"))
                        && l.contains(id.as_str())
                        && l.ends_with(&format!(" {want}"))
                })
            };
            (shown.health.chars().nth(index) == Some('D')
                && has("pxd_volume_replicas", 2)
                && has("pxd_volume_replicas_healthy", 1))
            .then_some(shown)
        },
    );
    eprintln!(
        "leg lost: writes held {} ms, then degraded; raid {} after {pause:?} (leg timeout 3 s)",
        loss.held_ms, shown.health
    );
    stop.store(true, Ordering::Relaxed);
    let runs = writer.join().expect("fio ran clean through the leg's loss");
    eprintln!("{runs} fio runs across the loss, 0 errors");

    let before = pxd_tests::block_stat(&leg_dev).written_sectors;
    run("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
    c.nodes[lost].start();
    c.wait("the leg back in sync", Duration::from_secs(300), || {
        let v: VolumeView = c.nodes[spare].json(&["volume", "inspect", "r2"]);
        let s = raid_status(&raid)?;
        (v.replicas.iter().all(|r| r.state == ReplicaState::Up) && s.is_clean()).then_some(())
    });
    let resynced = (pxd_tests::block_stat(&leg_dev).written_sectors - before) * 512;
    eprintln!(
        "resynced {} KiB of the 64 MiB volume from the bitmap",
        resynced / 1024
    );
    assert!(resynced > 0, "nothing was resynced");
    assert!(
        resynced <= 32 * MIB as u64,
        "a full resync: {resynced} bytes"
    );
    let v: VolumeView = c.nodes[0].json(&["volume", "inspect", "r2"]);
    // Back within the replica timeout (10 minutes here): the leg is kept, nothing rebuilt.
    assert!(v.build.is_none() && v.last_build.is_none(), "{v:?}");
    assert_eq!(v.replicas[index].node_name, c.nodes[lost].name);
    let sums = leg_sums(&v, &c.ids, 64 * MIB);
    assert_eq!(sums[0], sums[1], "the legs differ after the resync");
    scrub(&c, spare, &leg_dev);

    // The attach node lost whole: `attach --force` on a replica node; everything written
    // before the loss reads back, and the old epoch's exports are gone (fenced).
    fio(&dev, "before-loss", "8M", &["--do_verify=0"]);
    let old_epoch = c.nodes[0]
        .json::<VolumeView>(&["volume", "inspect", "r2"])
        .attachment
        .unwrap()
        .epoch;
    lose(&mut c, spare);
    let v: VolumeView = c.json(replica, &["volume", "attach", "r2", "--force"]);
    let at = v.attachment.clone().unwrap();
    assert_eq!(
        (at.node_name.as_str(), at.epoch),
        (c.nodes[replica].name.as_str(), old_epoch + 1)
    );
    let moved = v.device.clone().expect("a device");
    fio(&moved, "before-loss", "8M", &["--verify_only"]);
    let old = format!("{}:e{old_epoch}", r2.id);
    assert!(
        !c.linked_exports().iter().any(|e| e.ends_with(&old)),
        "{:?}",
        c.exports()
    );
    // Back, the old attach node takes its stale stack down.
    bring_back(&mut c, spare);
    let spare_id = c.id(spare).to_owned();
    c.wait(
        "the old attach node's stack gone",
        Duration::from_secs(120),
        || (!node_devices(&spare_id).iter().any(|d| d.contains(&r2.id))).then_some(()),
    );
    crash_mid_copy(&mut c);
    // Last: its attach node's old stack is left holding I/O for a lost leg.
    never_from_stale_data(&mut c);
}

/// kill -9 of a new leg's copy source (the attach node, whose own leg is copied), then of its
/// target, each in the middle of the copy, while fio writes: each restarted daemon takes the
/// copy up again, the new leg joins equal to the others and checks clean, and no pool keeps
/// a thin id the copy made (a round's snapshot, or a leg begun twice).
fn crash_mid_copy(c: &mut Cluster) {
    let on = format!("{},{}", c.nodes[0].name, c.nodes[1].name);
    c.nodes[0].ok(&[
        "volume", "create", "cm", "--size", "128M", "--fs", "raw", "--repl", "2", "--nodes", &on,
    ]);
    legs_built(c, "cm");
    let v: VolumeView = c.nodes[0].json(&["volume", "attach", "cm"]);
    let dev = v.device.clone().expect("a device");
    let data = pattern(17, 24 * MIB);
    write_direct(&dev, 32 * MIB as u64, &data);
    let before: Vec<_> = (0..3).map(|i| pxd_tests::pool_thin_ids(c.id(i))).collect();
    let writer = Writer::start(&dev, "cm", "8M");
    let c_name = c.nodes[2].name.clone();
    c.nodes[1].ok(&[
        "volume",
        "ha-update",
        "cm",
        "--repl",
        "3",
        "--node",
        &c_name,
    ]);
    let new_leg = format!("pxd-{}-thin-{}", c.id(2), v.id);
    // The copy runs at 4 MiB/s: the source is killed with some 4 MiB on the new leg (under
    // 12 MiB with the frames in flight); the restarted source begins again (the new leg
    // discarded whole), and the target is killed once past 16 MiB of the 32 the leg maps,
    // which only the new round reaches.
    for (victim, past) in [(0, 4 * MIB as u64), (2, 16 * MIB as u64)] {
        c.wait(
            "the copy under way on the new leg",
            Duration::from_secs(300),
            || (thin_mapped_now(&new_leg)? >= past).then_some(()),
        );
        let v: VolumeView = c.nodes[1].json(&["volume", "inspect", "cm"]);
        let b = v.build.expect("a copy under way");
        assert_eq!(b.phase, BuildPhase::Copying, "{b:?}");
        c.nodes[victim].kill();
        std::thread::sleep(Duration::from_millis(500));
        c.nodes[victim].start();
    }
    let built = c.wait(
        "cm's new leg copied, joined and checked after both crashes",
        Duration::from_secs(600),
        || {
            let v: VolumeView = c.nodes[1].json(&["volume", "inspect", "cm"]);
            let up = v.replicas.iter().all(|r| r.state == ReplicaState::Up);
            (up && v.replicas.len() == 3 && v.build.is_none()).then_some(v)
        },
    );
    let runs = writer.finish(c);
    let raid = format!("pxd-{}-raid-{}", c.id(0), v.id);
    let status = raid_status(&raid).expect("the raid");
    assert_eq!(status.legs, [LegHealth::InSync; 3], "{status:?}");
    let sums = leg_sums(&built, &c.ids, 128 * MIB);
    assert!(
        sums.iter().all(|x| *x == sums[0]),
        "the legs differ: {sums:?}"
    );
    assert_eq!(
        sha256(&read_direct(&dev, 32 * MIB as u64, data.len())),
        sha256(&data)
    );
    assert_eq!(built.check.as_ref().and_then(|k| k.mismatches), Some(0));
    // No thin id leaked: a's and b's pools hold what they did, c's that and the new leg's two.
    let after: Vec<_> = (0..3).map(|i| pxd_tests::pool_thin_ids(c.id(i))).collect();
    assert_eq!(after[0], before[0], "a thin id leaked on the source's pool");
    assert_eq!(after[1], before[1], "a's pool changed");
    let added: Vec<_> = after[2].difference(&before[2]).collect();
    assert!(
        before[2].is_subset(&after[2]) && added.len() == 2,
        "c's pool gained {added:?}"
    );
    let b = built.last_build.clone().expect("the copy's record");
    eprintln!(
        "crashes mid-copy (source, then target) under {runs} fio runs: the new leg joined \
         after {} rounds, {} bytes copied of {} allocated, pause {:?} ms; legs equal, check \
         clean, no thin id leaked",
        b.rounds, b.copied_bytes, b.allocated_bytes, b.pause_ms
    );
    c.nodes[0].ok(&["volume", "detach", "cm"]);
    c.nodes[0].ok(&["volume", "delete", "cm"]);
}

/// Never from stale data: legs on b and c, attached on a. b is lost and a keeps writing (c
/// alone has it); then c is lost and only b comes back. The attach is refused; with --force
/// it attaches from b's leg, and the loss is recorded. a's old stack stays behind, its
/// reconciler held up by it (a known gap: a pass waits on the stack's held I/O).
fn never_from_stale_data(c: &mut Cluster) {
    let (b_name, c_name) = (c.nodes[1].name.clone(), c.nodes[2].name.clone());
    c.nodes[0].ok(&[
        "volume",
        "create",
        "s8",
        "--size",
        "64M",
        "--fs",
        "raw",
        "--repl",
        "2",
        "--nodes",
        &format!("{b_name},{c_name}"),
    ]);
    legs_built(c, "s8");
    let v: VolumeView = c.nodes[0].json(&["volume", "attach", "s8"]);
    let s8 = v.device.clone().expect("a device");
    let first = pattern(21, 4 * MIB);
    write_direct(&s8, 0, &first);
    lose(c, 1);
    c.wait(
        "b's leg of s8 recorded stale",
        Duration::from_secs(120),
        || {
            let v: VolumeView = c.nodes[0].json(&["volume", "inspect", "s8"]);
            let b = v.replicas.iter().find(|r| r.node_name == b_name)?;
            matches!(b.state, ReplicaState::Stale { .. }).then_some(())
        },
    );
    let later = pattern(22, 4 * MIB);
    write_direct(&s8, 0, &later);
    lose(c, 2);
    bring_back(c, 1);
    c.wait("b sees c offline", Duration::from_secs(120), || {
        let nodes: Vec<serde_json::Value> = c.nodes[1].json(&["node", "list"]);
        let cn = nodes.iter().find(|n| n["name"] == c_name.as_str())?;
        (cn["liveness"] != "online").then_some(())
    });
    c.nodes[1].ok(&["volume", "detach", "s8", "--force"]);
    let e = c.nodes[1].refused(&["volume", "attach", "s8"]);
    assert!(
        e.contains("no leg in sync that can be reached")
            && e.contains("stale since epoch")
            && e.contains("offline")
            && e.contains("--force"),
        "{e}"
    );
    let v: VolumeView = c.nodes[1].json(&["volume", "attach", "s8", "--force"]);
    assert_eq!(v.accepted_losses.len(), 1, "{v:?}");
    let c_leg = v.replicas.iter().find(|r| r.node_name == c_name).unwrap();
    assert_eq!(
        c_leg.state,
        ReplicaState::Failed,
        "c's leg holds what the loss gave up"
    );
    let dev = v.device.clone().expect("a device");
    let back = sha256(&read_direct(&dev, 0, 4 * MIB));
    assert_eq!(back, sha256(&first), "b's leg, as it was when it was lost");
    eprintln!(
        "stale data refused; the forced attach recorded: {}",
        v.accepted_losses[0]
    );
    // c back, so that nothing is left holding I/O for it when the daemons go.
    bring_back(c, 2);
    c.wait("c online again", Duration::from_secs(120), || {
        let nodes: Vec<serde_json::Value> = c.nodes[1].json(&["node", "list"]);
        let n = nodes.iter().find(|n| n["name"] == c_name.as_str())?;
        (n["liveness"] == "online").then_some(())
    });
}

/// Mount implies attach; detach is refused while mounted; the unmount detaches; the raid and
/// the exports are gone after it; a mount elsewhere finds the file; a delete takes every leg.
fn mount_detach_delete(c: &Cluster) {
    let b = &c.nodes[1];
    b.ok(&["volume", "create", "fs2", "--size", "64M", "--repl", "2"]);
    legs_built(c, "fs2");
    let v: VolumeView = b.json(&["volume", "mount", "fs2"]);
    let mnt = PathBuf::from(v.mountpoint.clone().expect("mounted"));
    std::fs::write(mnt.join("hello"), b"replicated").unwrap();
    scheduled_scrub(c, 1, &v.id);
    let e = b.refused(&["volume", "detach", "fs2"]);
    assert!(e.contains("unmount it first"), "{e}");
    let v: VolumeView = b.json(&["volume", "unmount", "fs2"]);
    assert!(v.attachment.is_none(), "{v:?}");
    let raid = format!("pxd-{}-raid-{}", c.id(1), v.id);
    assert!(!node_devices(c.id(1)).contains(&raid));
    // Its exports are unreachable: unlinked from every port (removed with the volume).
    assert!(
        !c.linked_exports().iter().any(|e| e.contains(&v.id)),
        "{:?}",
        c.linked_exports()
    );
    // Attached again, the filesystem and the file are there.
    let v: VolumeView = c.nodes[2].json(&["volume", "mount", "fs2"]);
    let mnt = PathBuf::from(v.mountpoint.clone().expect("mounted"));
    assert_eq!(std::fs::read(mnt.join("hello")).unwrap(), b"replicated");
    c.nodes[2].ok(&["volume", "unmount", "fs2"]);
    c.nodes[0].ok(&["volume", "delete", "fs2"]);
    // Each replica node takes its leg down; the volume goes with the last one.
    c.wait(
        "fs2 gone from the store and every node",
        Duration::from_secs(120),
        || {
            let listed = c.nodes[2].ok(&["volume", "list"]);
            let left = c.tables().iter().any(|t| t.contains(&v.id));
            (!listed.contains("fs2") && !left).then_some(())
        },
    );
}

/// How an attach node is cut off from the others.
#[derive(Clone, Copy, Debug)]
enum Cut {
    /// Its ZeroMQ traffic dropped in its namespace, NVMe/TCP still flowing.
    Control,
    /// Its link down: nothing in or out.
    Whole,
}

/// Node a attaches `name`, a new repl-2 volume with one leg on a and one on b, and writes
/// numbered records until a write fails. a is cut off as `cut` says; b takes the volume with
/// `--force`. The old node's writes fail (its lease runs out) before the forced attach is
/// acknowledged, every record it saw acknowledged is on the new side, a's leg is `failed`,
/// and nothing a writes after the new epoch reaches b's leg. Healed, a takes its fenced
/// stack down.
fn forced_takeover(c: &Cluster, name: &str, cut: Cut) {
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let on = format!("{},{}", a.name, b.name);
    b.ok(&[
        "volume", "create", name, "--size", "64M", "--fs", "raw", "--repl", "2", "--nodes", &on,
    ]);
    legs_built(c, name);
    let v: VolumeView = a.json(&["volume", "attach", name]);
    let dev = v.device.clone().expect("a device");
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = {
        let (acked, dev) = (acked.clone(), dev.clone());
        std::thread::spawn(move || numbered_writes(&dev, &acked))
    };
    wait_until("records written", Duration::from_secs(60), || {
        (acked.load(Ordering::Relaxed) > 50).then_some(())
    });
    let ns = c.net.ns(0);
    match cut {
        Cut::Control => cut_control(&ns, c.node_port),
        Cut::Whole => c.net.set_link(0, false),
    }
    let at = Instant::now();
    c.wait("a seen offline from b", Duration::from_secs(120), || {
        (!c.online(1, 0)).then_some(())
    });
    let v: VolumeView = c.json(1, &["volume", "attach", name, "--force"]);
    let taken = at.elapsed();
    let (last, writer) = match cut {
        // The NVMe/TCP path stays up: the old node fences itself with nothing held, and
        // its writes fail.
        Cut::Control => {
            let ((error, failed_at), last) = writer.join().unwrap();
            eprintln!(
                "{cut:?} cut: the old attach node's writes failed after {:?} ({error}), {last} \
                 records acknowledged; the forced attach was acknowledged after {taken:?}",
                failed_at.duration_since(at),
            );
            assert!(
                failed_at < at + taken,
                "the old node still wrote when the forced attach was acknowledged"
            );
            (last, None)
        }
        // Cut whole, the old node holds the write in flight: it may be on its own leg
        // already, so it is never acknowledged (the writer waits) rather than failed.
        Cut::Whole => {
            let last = acked.load(Ordering::Relaxed);
            std::thread::sleep(Duration::from_secs(5));
            assert_eq!(
                acked.load(Ordering::Relaxed),
                last,
                "the old node acknowledged writes after the forced attach"
            );
            eprintln!(
                "{cut:?} cut: the old attach node's writes held from the cut on, {last} records \
                 acknowledged; the forced attach was acknowledged after {taken:?}"
            );
            (last, Some(writer))
        }
    };
    let a_leg = v.replicas.iter().find(|r| r.node_name == a.name).unwrap();
    assert_eq!(a_leg.state, ReplicaState::Failed, "{v:?}");
    let moved = v.device.clone().expect("a device");
    let records = read_direct(&moved, 0, (last as usize + 1) * 4096);
    for (i, block) in records.chunks(4096).enumerate() {
        assert_eq!(
            &block[..8],
            &(i as u64).to_le_bytes(),
            "record {i}, acknowledged to the old node, is missing on the new side"
        );
    }
    let b_leg = PathBuf::from(format!("/dev/mapper/pxd-{}-thin-{}", c.id(1), v.id));
    let sum = sha256(&read_direct(&b_leg, 0, 64 * MIB));
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        sha256(&read_direct(&b_leg, 0, 64 * MIB)),
        sum,
        "a leg changed after the new epoch"
    );
    assert!(
        a.logged(&["attach lease lost", &v.id]),
        "the old node did not fence itself:\n{}",
        a.log_tail()
    );
    match cut {
        Cut::Control => drop(run(
            "tc",
            &["-n", &ns, "qdisc", "del", "dev", "eth0", "root"],
        )),
        Cut::Whole => c.net.set_link(0, true),
    }
    c.wait("a online again", Duration::from_secs(120), || {
        c.online(1, 0).then_some(())
    });
    let (a_id, raid) = (c.id(0), format!("pxd-{}-raid-{}", c.id(0), v.id));
    if writer.is_some() {
        // Back, a still holds that write: nothing acknowledges it from a's leg alone. (The
        // teardown deletes the controller; the writer ends then.)
        std::thread::sleep(Duration::from_secs(5));
        assert_eq!(
            acked.load(Ordering::Relaxed),
            last,
            "a held write was acknowledged"
        );
        assert!(node_devices(a_id).contains(&raid));
        return;
    }
    c.wait(
        &format!("a's fenced stack of {name} gone"),
        Duration::from_secs(120),
        || (!node_devices(a_id).contains(&raid)).then_some(()),
    );
}

/// Writes 4 KiB records 0, 1, 2, ... (each starting with its number) with O_DIRECT|O_DSYNC
/// until a write fails; `acked` holds the last record acknowledged. Returns the error and
/// when it came, and the last record acknowledged.
fn numbered_writes(dev: &Path, acked: &std::sync::atomic::AtomicU64) -> ((String, Instant), u64) {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
        .open(dev)
        .unwrap();
    let mut buf = pxd::kernel::block::AlignedBuf::zeroed(4096);
    for i in 0u64..16384 {
        let b = buf.as_mut_slice();
        b[..8].copy_from_slice(&i.to_le_bytes());
        if let Err(e) = file.write_all_at(&b[..4096], i * 4096) {
            return (
                (e.to_string(), Instant::now()),
                acked.load(Ordering::Relaxed),
            );
        }
        acked.store(i, Ordering::Relaxed);
    }
    panic!("16384 records written and no write failed: the old attach node was never fenced");
}

/// Drops the ZeroMQ traffic (`port`, both ways) of the node in namespace `ns`; its NVMe/TCP
/// traffic still flows.
fn cut_control(ns: &str, port: u16) {
    let port = port.to_string();
    run(
        "tc",
        &[
            "-n", ns, "qdisc", "add", "dev", "eth0", "root", "handle", "1:", "prio",
        ],
    );
    for dir in ["dport", "sport"] {
        run(
            "tc",
            &[
                "-n", ns, "filter", "add", "dev", "eth0", "parent", "1:", "protocol", "ip", "prio",
                "1", "u32", "match", "ip", dir, &port, "0xffff", "action", "drop",
            ],
        );
    }
}

/// `volume check` of r2 (attached on node `attach`) finds its legs equal; 64 KiB of one
/// leg (`leg`) overwritten behind the raid's back is found; put back, the legs are equal
/// again. The result shows in the store, in inspect and in the attach node's metrics.
fn scrub(c: &Cluster, attach: usize, leg: &Path) {
    let checked = |from: usize| -> u64 {
        let v: VolumeView = c.json(from, &["volume", "check", "r2", "--timeout", "300"]);
        let check = v.check.expect("a check recorded");
        check.mismatches.expect("the check finished")
    };
    assert_eq!(checked(0), 0, "the legs of r2 differ");
    let offset = 8 * MIB as u64;
    let original = read_direct(leg, offset, 64 * 1024);
    write_direct(leg, offset, &pattern(99, 64 * 1024));
    let found = checked(1);
    assert!(
        found > 0,
        "64 KiB of one leg overwritten, and the check found nothing"
    );
    let v: VolumeView = c.nodes[2].json(&["volume", "inspect", "r2"]);
    assert_eq!(v.check.as_ref().and_then(|k| k.mismatches), Some(found));
    let id = v.id.clone();
    metric_shows(c, attach, "pxd_volume_check_mismatches", &id, found);
    write_direct(leg, offset, &original);
    assert_eq!(checked(2), 0, "the leg put back, the legs still differ");
    eprintln!("scrub: clean legs 0, 64 KiB overwritten on one leg {found} sectors, put back 0");
}

/// The scrub schedule, turned on, checks volume `id` (attached on node `attach`, never
/// checked, so due at once) and finds its legs equal; the time it was asked for reaches the
/// metrics. Out-of-range intervals are refused by name; the schedule is turned off after.
fn scheduled_scrub(c: &Cluster, attach: usize, id: &str) {
    let e = c.nodes[2].refused(&["cluster", "options", "--scrub-interval", "30"]);
    assert!(e.contains("scrub_interval_s must be 60 to"), "{e}");
    let o: serde_json::Value = c.json(2, &["cluster", "options", "--scrub-interval", "1m"]);
    assert_eq!(o["scrub_interval_s"], 60, "{o}");
    let check = c.wait("a scheduled check", Duration::from_secs(240), || {
        let v: VolumeView = c.nodes[0].json(&["volume", "inspect", id]);
        v.check.filter(|k| k.mismatches.is_some())
    });
    let o: serde_json::Value = c.json(0, &["cluster", "options", "--scrub-interval", "off"]);
    assert!(o["scrub_interval_s"].is_null(), "{o}");
    assert_eq!(check.mismatches, Some(0), "a fresh volume's legs differ");
    metric_shows(
        c,
        attach,
        "pxd_volume_check_requested_timestamp_seconds",
        id,
        check.requested,
    );
    eprintln!("scheduled scrub: found the legs equal");
}

/// Waits until metric `name` of volume `id` on node `attach` shows `value`.
fn metric_shows(c: &Cluster, attach: usize, name: &str, id: &str, value: u64) {
    let (prefix, end) = (format!("{name}{{"), format!(" {value}"));
    c.wait(&format!("{name} {value}"), Duration::from_secs(60), || {
        metrics(&c.nodes[attach])
            .lines()
            .any(|l| l.starts_with(&prefix) && l.contains(id) && l.ends_with(&end))
            .then_some(())
    });
}

/// Node `d`'s `/metrics`.
fn metrics(d: &Daemon) -> String {
    use pxd::api::client::{BlockingClient, Method, Target};
    let client = BlockingClient::new(Target::Unix(d.socket())).unwrap();
    let (_, body) = client.raw(Method::GET, "/metrics").unwrap();
    String::from_utf8_lossy(&body).into_owned()
}

/// A leg whose node stays gone past its volume's replica timeout (15 s here, the cluster's
/// an hour) is replaced while fio writes: dropped, then built on the third node thin-aware
/// (only what the volume maps is copied, about 40 MiB of a 512 MiB volume; the check
/// after the join reads the whole volume on both legs, so a larger one only costs time), joined,
/// checked. The lost node, back, frees its old leg.
fn replaced_past_the_timeout(c: &mut Cluster) {
    let a = &c.nodes[0];
    // The cluster's timeout is long; the volume's own, short, wins.
    a.ok(&["cluster", "options", "--replica-timeout", "1h"]);
    let e = a.refused(&["cluster", "options", "--replica-timeout", "5s"]);
    assert!(e.contains("replica_timeout_s must be 10 to"), "{e}");
    let on = format!("{},{}", c.nodes[0].name, c.nodes[2].name);
    a.ok(&[
        "volume", "create", "rt", "--size", "512M", "--fs", "raw", "--repl", "2", "--nodes", &on,
    ]);
    legs_built(c, "rt");
    let e = a.refused(&["volume", "update", "rt", "--replica-timeout", "31d"]);
    assert!(e.contains("replica_timeout_s must be 10 to"), "{e}");
    let v: VolumeView = a.json(&["volume", "update", "rt", "--replica-timeout", "15s"]);
    assert_eq!(v.replica_timeout_s, Some(15));
    let v: VolumeView = a.json(&["volume", "attach", "rt"]);
    let dev = v.device.clone().expect("a device");
    let data = pattern(13, 32 * MIB);
    write_direct(&dev, 64 * MIB as u64, &data);
    let writer = Writer::start(&dev, "rt", "8M");
    lose(c, 2);
    let cut = Instant::now();
    let lost = c.id(2).to_owned();
    let built = rebuilt_on_b(c, "rt", Duration::from_secs(600), &writer);
    let took = cut.elapsed();
    let runs = writer.finish(c);
    let b = built.last_build.clone().expect("the copy's record");
    // Everything written lies in the first 128 MiB; the check compared the legs whole.
    two_legs_whole(c, &built, 128 * MIB, &dev, (64 * MIB as u64, &data));
    let source = thin_mapped(&format!("pxd-{}-thin-{}", c.id(0), v.id));
    let new = thin_mapped(&format!("pxd-{}-thin-{}", c.id(1), v.id));
    eprintln!(
        "replica timeout: c's leg replaced on b {took:?} after the loss, under {runs} fio \
         runs: {} bytes copied in {} rounds, {} allocated (ratio {:.2}); new leg maps {new}, source {source}; cut-over \
         pause {:?} ms; check clean",
        b.copied_bytes,
        b.rounds,
        b.allocated_bytes,
        b.copied_bytes as f64 / b.allocated_bytes.max(1) as f64,
        b.pause_ms
    );
    assert!(
        b.copied_bytes * 5 <= b.allocated_bytes * 6,
        "copied {} of {} allocated",
        b.copied_bytes,
        b.allocated_bytes
    );
    assert!(
        new * 5 <= source * 6,
        "the new leg maps {new}, the source {source}"
    );
    // c back: its old leg is freed, and it holds nothing of rt any more.
    bring_back(c, 2);
    c.wait("c's old leg of rt freed", Duration::from_secs(180), || {
        let freed = !node_devices(&lost).iter().any(|d| d.contains(&v.id));
        freed.then_some(())
    });
    for from in 0..3 {
        c.wait("c seen online again", Duration::from_secs(120), || {
            c.online(from, 2).then_some(())
        });
    }
    let a = &c.nodes[0];
    a.ok(&["volume", "detach", "rt"]);
    a.ok(&["volume", "delete", "rt"]);
    a.ok(&["cluster", "options", "--replica-timeout", "600"]);
}

/// Bytes thin device `name` maps in its pool, from its status.
fn thin_mapped(name: &str) -> u64 {
    thin_mapped_now(name).unwrap_or_else(|| panic!("no thin status of {name}"))
}

/// [`thin_mapped`], `None` while the device is not there.
fn thin_mapped_now(name: &str) -> Option<u64> {
    let dm = KernelDm::open().ok()?;
    let name = devicemapper::DmNameBuf::new(name.to_owned()).ok()?;
    let status = dm.status(&name).ok()?;
    let sectors: u64 = status.first()?.3.split_whitespace().next()?.parse().ok()?;
    Some(sectors * 512)
}

/// `ha-update` from 2 replicas to 3, then back to 2, while fio writes and verifies.
/// Raising copies only what the source leg maps to a new leg on the third node, and joins
/// it by a re-assembly (the last round copied while the raid waits): the new leg maps no
/// more than the source, every leg is equal, and a check finds nothing differing. Lowering
/// re-assembles without the dropped leg (no failed I/O, no resync) and frees it. Bad counts
/// are refused by name, with nothing changed.
fn ha_update(c: &Cluster) {
    let a = &c.nodes[0];
    let on = format!("{},{}", c.nodes[0].name, c.nodes[2].name);
    a.ok(&[
        "volume", "create", "h2", "--size", "128M", "--fs", "raw", "--repl", "2", "--nodes", &on,
    ]);
    legs_built(c, "h2");
    let v: VolumeView = a.json(&["volume", "attach", "h2"]);
    let dev = v.device.clone().expect("a device");
    let raid = format!("pxd-{}-raid-{}", c.id(0), v.id);
    for (repl, limit) in [("0", "1 to 3"), ("4", "1 to 3"), ("1", "2 or 3")] {
        let e = a.refused(&["volume", "ha-update", "h2", "--repl", repl]);
        assert!(e.contains("repl") && e.contains(limit), "{e}");
    }
    // Data outside fio's range, to find again on the new leg.
    let data = pattern(11, 32 * MIB);
    write_direct(&dev, 64 * MIB as u64, &data);
    // fio over a few MiB: each round after the first copies about that much, so the copy
    // is ready after it.
    let writer = Writer::start(&dev, "raise", "4M");
    let b_name = c.nodes[1].name.clone();
    let raised: VolumeView = a.json(&[
        "volume",
        "ha-update",
        "h2",
        "--repl",
        "3",
        "--node",
        &b_name,
    ]);
    assert_eq!(raised.repl, 3);
    assert_eq!(raised.replicas[2].node_name, b_name);
    assert_eq!(raised.replicas[2].state, ReplicaState::Building);
    let built = c.wait(
        "the new leg of h2 copied, joined and checked",
        Duration::from_secs(600),
        || {
            writer.check(c);
            let v: VolumeView = a.json(&["volume", "inspect", "h2"]);
            let up = v.replicas.iter().all(|r| r.state == ReplicaState::Up);
            (up && v.build.is_none()).then_some(v)
        },
    );
    writer.finish(c);
    // `rebuild-status --watch` returns once no copy or resync runs, and --json says none.
    let now: serde_json::Value = a.json(&["volume", "rebuild-status", "h2", "--watch"]);
    assert!(now.is_null(), "{now}");
    let b = built.last_build.clone().expect("the copy's record");
    let status = raid_status(&raid).expect("the raid");
    assert_eq!(status.legs, [LegHealth::InSync; 3], "{status:?}");
    assert!(status.is_clean(), "{status:?}");
    let sums = leg_sums(&built, &c.ids, 128 * MIB);
    assert!(
        sums.iter().all(|x| *x == sums[0]),
        "the legs differ: {sums:?}"
    );
    assert_eq!(
        sha256(&read_direct(&dev, 64 * MIB as u64, data.len())),
        sha256(&data)
    );
    let check = built.check.clone().expect("the check after the cut-over");
    assert_eq!(check.mismatches, Some(0));
    // Thin-aware: the new leg maps what the source does, far less than the volume.
    let source = thin_mapped(&format!("pxd-{}-thin-{}", c.id(0), v.id));
    let new = thin_mapped(&format!("pxd-{}-thin-{}", c.id(1), v.id));
    eprintln!(
        "ha-update 2 -> 3 under fio: {} rounds, {} bytes copied of {} allocated, new leg maps {new} \
         (source {source}), cut-over pause {:?} ms, check clean",
        b.rounds, b.copied_bytes, b.allocated_bytes, b.pause_ms
    );
    assert!(
        new * 5 <= source * 6,
        "the new leg maps {new}, the source {source}"
    );
    assert!(
        new < 64 * MIB as u64,
        "the new leg maps {new} of a 128 MiB volume"
    );
    assert!(b.pause_ms.is_some(), "{b:?}");

    // Lowered again: node c's leg, in the middle of the raid, goes.
    let writer = {
        let dev = dev.clone();
        std::thread::spawn(move || fio(&dev, "lower", "4M", &["--do_verify=1", "--rate=1m"]))
    };
    let c_name = c.nodes[2].name.clone();
    let lowered: VolumeView = a.json(&[
        "volume",
        "ha-update",
        "h2",
        "--repl",
        "2",
        "--node",
        &c_name,
    ]);
    writer.join().expect("fio ran clean through the lowering");
    assert_eq!(lowered.repl, 2);
    let kept: BTreeSet<&str> = lowered
        .replicas
        .iter()
        .map(|r| r.node_name.as_str())
        .collect();
    let expected = BTreeSet::from([c.nodes[0].name.as_str(), c.nodes[1].name.as_str()]);
    assert_eq!(kept, expected);
    let status = raid_status(&raid).expect("the raid");
    assert_eq!(status.legs, [LegHealth::InSync; 2], "{status:?}");
    assert!(status.is_clean(), "{status:?}");
    let sums = leg_sums(&lowered, &c.ids, 128 * MIB);
    assert_eq!(sums[0], sums[1], "the legs left differ");
    c.wait("c's leg of h2 freed", Duration::from_secs(120), || {
        let freed = !node_devices(c.id(2)).iter().any(|d| d.contains(&v.id));
        let unexported = !c
            .exports()
            .iter()
            .any(|e| e.contains(&format!("{}:{}", c.id(2), v.id)));
        (freed && unexported).then_some(())
    });
    eprintln!("ha-update 3 -> 2 under fio: no error, legs equal, c's leg freed");
    a.ok(&["volume", "detach", "h2"]);
    a.ok(&["volume", "delete", "h2"]);
}
