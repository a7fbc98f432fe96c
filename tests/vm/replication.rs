//! VM tier: replicated volumes on three daemons, each in its own network namespace with its
//! own disk, in one guest. The kernel carries every byte: legs are thin devices exported by
//! nvmet, reached over NVMe/TCP and mirrored by dm-raid on the attach node. Checks what a
//! user relies on: data written through the raid is on every leg, attach works on a node
//! with no replica, encrypted data never crosses as plain text, `kill -9` of any daemon under
//! fio changes nothing in the data path, and bad input is refused with the kernel untouched.

use pxd::api::volumes::VolumeView;
use pxd::kernel::dm::{DeviceMapper, KernelDm};
use pxd::plan::raid::{LegHealth, RaidStatus};
use pxd::store::types::{AttachState, ReplicaState};
use pxd_tests::daemon::Daemon;
use pxd_tests::netns::Net;
use pxd_tests::{node_devices, pattern, read_direct, run, sha256, vm_disks, write_direct};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

/// Every drive lands in the low class, whatever the emulator's speed, so all pools are alike.
const ALL_LOW: [&str; 6] = [
    "--high-min-iops",
    "1000000000",
    "--medium-min-iops",
    "1000000000",
    "--reconcile-interval-ms",
    "2000",
];

fn wait_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A node's id, as its dm names carry it.
fn node_id(d: &Daemon) -> String {
    let status: serde_json::Value = d.json(&["cluster", "status"]);
    status["node"].as_str().unwrap().to_owned()
}

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

/// Every pxd dm device and its table, of every node: what a refused call must not change.
fn all_tables() -> BTreeSet<String> {
    run("dmsetup", &["table"])
        .lines()
        .filter(|l| l.starts_with("pxd-"))
        .map(str::to_owned)
        .collect()
}

/// This kernel's nvmet subsystems (every node's exports).
fn all_exports() -> BTreeSet<String> {
    std::fs::read_dir("/sys/kernel/config/nvmet/subsystems")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The nvmet subsystems linked to a port: those a host can reach.
fn linked_exports() -> BTreeSet<String> {
    let ports = std::fs::read_dir("/sys/kernel/config/nvmet/ports");
    ports
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|p| {
            std::fs::read_dir(p.path().join("subsystems"))
                .into_iter()
                .flatten()
                .flatten()
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
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
    assert!(
        out.status.success(),
        "fio on {} failed: {text}{}",
        dev.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_str(&text[text.find('{').unwrap()..]).unwrap();
    for job in json["jobs"].as_array().unwrap() {
        assert_eq!(job["error"], 0, "fio job {name} had errors: {text}");
        let ios = job["write"]["total_ios"].as_u64().unwrap()
            + job["read"]["total_ios"].as_u64().unwrap();
        assert!(ios > 0, "{text}");
    }
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

struct Cluster {
    net: Net,
    nodes: Vec<Daemon>,
    /// (name, id) of each node.
    ids: Vec<(String, String)>,
}

impl Drop for Cluster {
    /// The daemons go (their own drops kill them), and so does every NVMe controller they
    /// left: with `ctrl_loss_tmo=-1` a controller whose target went with its namespace
    /// would hold its I/O, and the guest's shutdown with it, for ever.
    fn drop(&mut self) {
        // Controllers first: a daemon waiting on I/O they hold could not be reaped before.
        for c in pxd::kernel::nvme_host::controllers() {
            let _ = pxd::kernel::nvme_host::delete(&c.name);
        }
        for n in &mut self.nodes {
            n.kill();
        }
    }
}

impl Cluster {
    fn start() -> Cluster {
        let disks = vm_disks(3);
        let net = Net::new(3);
        let mut nodes: Vec<Daemon> = ["repl-a", "repl-b", "repl-c"]
            .iter()
            .enumerate()
            .map(|(i, name)| Daemon::in_netns(name, &net.ns(i), &Net::addr(i), 9700, &ALL_LOW))
            .collect();
        nodes[0].start_cluster();
        let token = nodes[0].ok(&["cluster", "token"]).trim().to_owned();
        for n in &mut nodes[1..] {
            n.start();
            n.ok(&["cluster", "join", &token]);
        }
        for (n, disk) in nodes.iter().zip(&disks) {
            n.ok(&["drive", "add", disk.to_str().unwrap()]);
            // One guest holds every node: as far as placement knows, each is its own host.
            let host = format!("host-{}", n.name);
            n.ok(&["topology", "tag", "--host", &host]);
        }
        wait_until("three pools in the store", Duration::from_secs(120), || {
            let pools: Vec<serde_json::Value> =
                serde_json::from_str(&nodes[2].ok(&["pool", "list", "--json"])).ok()?;
            (pools.len() == 3).then_some(())
        });
        let ids = nodes.iter().map(|n| (n.name.clone(), node_id(n))).collect();
        Cluster { net, nodes, ids }
    }

    /// [`wait_until`], showing every node's log when it times out.
    fn wait<T>(&self, what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(v) = f() {
                return v;
            }
            if Instant::now() > deadline {
                for n in &self.nodes {
                    eprintln!("--- log of {} ---\n{}", n.name, n.log_tail());
                }
                panic!("timed out waiting for {what}");
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn by_name(&self, name: &str) -> usize {
        self.nodes.iter().position(|n| n.name == name).unwrap()
    }

    fn id(&self, i: usize) -> &str {
        &self.ids[i].1
    }
}

/// Volume `name` as node `d` shows it, once every replica has built its leg (its devices
/// exist on its node).
fn legs_built(c: &Cluster, name: &str) -> VolumeView {
    let v: VolumeView = c.nodes[0].json(&["volume", "inspect", name]);
    for r in &v.replicas {
        let node = c.id(c.by_name(&r.node_name)).to_owned();
        let thin = format!("pxd-{node}-thin-{}", v.id);
        c.wait(&thin, Duration::from_secs(120), || {
            node_devices(&node).contains(&thin).then_some(())
        });
    }
    v
}

#[test]
fn replicated_volumes_mirror_across_nodes_survive_daemon_crashes_and_refuse_bad_input() {
    let mut c = Cluster::start();
    let (a, b) = (&c.nodes[0], &c.nodes[1]);

    // Bad input: refused by name, and no node's devices or exports change.
    let (tables, exports) = (all_tables(), all_exports());
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
    assert_eq!((all_tables(), all_exports()), (tables, exports));

    // Fencing: an attach node holding one leg loses its control traffic only (ZeroMQ
    // dropped in its namespace, NVMe/TCP still flowing) while it writes numbered records.
    // Another node takes the volume with --force. The old node's writes fail within its
    // lease, every record it saw acknowledged is on the new side, and nothing it writes
    // after the new epoch reaches a leg.
    c.nodes[1].ok(&[
        "volume",
        "create",
        "f6",
        "--size",
        "64M",
        "--fs",
        "raw",
        "--repl",
        "2",
        "--nodes",
        "repl-a,repl-b",
    ]);
    legs_built(&c, "f6");
    let v: VolumeView = c.nodes[0].json(&["volume", "attach", "f6"]);
    let f6 = v.device.clone().expect("a device");
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = {
        let (acked, dev) = (acked.clone(), f6.clone());
        std::thread::spawn(move || numbered_writes(&dev, &acked))
    };
    wait_until("records written", Duration::from_secs(60), || {
        (acked.load(Ordering::Relaxed) > 50).then_some(())
    });
    cut_control(&c.net.ns(0));
    let cut = Instant::now();
    c.wait("a seen offline from b", Duration::from_secs(120), || {
        let nodes: Vec<serde_json::Value> = c.nodes[1].json(&["node", "list"]);
        let a = nodes.iter().find(|n| n["name"] == "repl-a")?;
        (a["liveness"] != "online").then_some(())
    });
    let v: VolumeView = c.nodes[1].json(&["volume", "attach", "f6", "--force"]);
    let taken = cut.elapsed();
    let ((error, failed_at), last) = writer.join().unwrap();
    eprintln!(
        "control traffic cut: the old attach node's writes failed after {:?} ({error}), {last} records acknowledged; the forced attach was acknowledged after {taken:?}",
        failed_at.duration_since(cut),
    );
    assert!(
        failed_at < cut + taken,
        "the old node still wrote when the forced attach was acknowledged"
    );
    let a_leg = v.replicas.iter().find(|r| r.node_name == "repl-a").unwrap();
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
        c.nodes[0].logged("attach lease lost"),
        "the old node did not fence itself:\n{}",
        c.nodes[0].log_tail()
    );
    // A's control traffic back: it rejoins, its fenced stack of f6 is taken down.
    run(
        "tc",
        &["-n", &c.net.ns(0), "qdisc", "del", "dev", "eth0", "root"],
    );
    c.wait("a online again", Duration::from_secs(120), || {
        let nodes: Vec<serde_json::Value> = c.nodes[1].json(&["node", "list"]);
        let a = nodes.iter().find(|n| n["name"] == "repl-a")?;
        (a["liveness"] == "online").then_some(())
    });
    let a_id = c.id(0).to_owned();
    c.wait(
        "a's fenced stack of f6 gone",
        Duration::from_secs(120),
        || {
            let raid = format!("pxd-{a_id}-raid-{}", v.id);
            (!node_devices(&a_id).contains(&raid)).then_some(())
        },
    );

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
    fio_verify(&dev, "r2", "48M");
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
        let (tables, exports) = (all_tables(), all_exports());
        c.nodes[victim].kill();
        std::thread::sleep(Duration::from_millis(500));
        c.nodes[victim].start();
        // One full pass after the restart, then the kernel must be as it was.
        c.nodes[victim].ok(&["volume", "inspect", "r2"]);
        assert_eq!(
            all_tables(),
            tables,
            "a restart of {} changed a table",
            c.nodes[victim].name
        );
        assert_eq!(
            all_exports(),
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
    let sums = leg_sums(&v, &c.ids, 64 * MIB);
    assert_eq!(sums[0], sums[1], "the legs differ after the resync");

    // Mount implies attach; detach is refused while mounted; the unmount detaches; the
    // export and the raid are gone after it.
    let b = &c.nodes[1];
    b.ok(&["volume", "create", "fs2", "--size", "64M", "--repl", "2"]);
    legs_built(&c, "fs2");
    let v: VolumeView = b.json(&["volume", "mount", "fs2"]);
    let mnt = PathBuf::from(v.mountpoint.clone().expect("mounted"));
    std::fs::write(mnt.join("hello"), b"replicated").unwrap();
    let e = b.refused(&["volume", "detach", "fs2"]);
    assert!(e.contains("unmount it first"), "{e}");
    let v: VolumeView = b.json(&["volume", "unmount", "fs2"]);
    assert!(v.attachment.is_none(), "{v:?}");
    let raid = format!("pxd-{}-raid-{}", c.id(1), v.id);
    assert!(!node_devices(c.id(1)).contains(&raid));
    // Its exports are unreachable: unlinked from every port (removed with the volume).
    assert!(
        !linked_exports().iter().any(|e| e.contains(&v.id)),
        "{:?}",
        linked_exports()
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
            let left = all_tables().iter().any(|t| t.contains(&v.id));
            (!listed.contains("fs2") && !left).then_some(())
        },
    );

    // The attach node lost whole: `attach --force` on a replica node; everything written
    // before the loss reads back, and the old epoch's exports are gone (fenced).
    fio(&dev, "before-loss", "32M", &["--do_verify=0"]);
    let old_epoch = c.nodes[0]
        .json::<VolumeView>(&["volume", "inspect", "r2"])
        .attachment
        .unwrap()
        .epoch;
    lose(&mut c, spare);
    let v: VolumeView = c.nodes[replica].json(&["volume", "attach", "r2", "--force"]);
    let at = v.attachment.clone().unwrap();
    assert_eq!(
        (at.node_name.as_str(), at.epoch),
        (c.nodes[replica].name.as_str(), old_epoch + 1)
    );
    let moved = v.device.clone().expect("a device");
    fio(&moved, "before-loss", "32M", &["--verify_only"]);
    let old = format!("{}:e{old_epoch}", r2.id);
    assert!(
        !linked_exports().iter().any(|e| e.ends_with(&old)),
        "{:?}",
        all_exports()
    );
    // Back, the old attach node takes its stale stack down.
    bring_back(&mut c, spare);
    let spare_id = c.id(spare).to_owned();
    c.wait(
        "the old attach node's stack gone",
        Duration::from_secs(120),
        || (!node_devices(&spare_id).iter().any(|d| d.contains(&r2.id))).then_some(()),
    );

    // Never from stale data: legs on b and c, attached on a. b is lost and a keeps writing
    // (c alone has it); then c is lost and only b comes back. The attach is refused; with
    // --force it attaches from b's leg, and the loss is recorded.
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
        "repl-b,repl-c",
    ]);
    legs_built(&c, "s8");
    let v: VolumeView = c.nodes[0].json(&["volume", "attach", "s8"]);
    let s8 = v.device.clone().expect("a device");
    let first = pattern(21, 4 * MIB);
    write_direct(&s8, 0, &first);
    lose(&mut c, 1);
    c.wait(
        "b's leg of s8 recorded stale",
        Duration::from_secs(120),
        || {
            let v: VolumeView = c.nodes[0].json(&["volume", "inspect", "s8"]);
            let b = v.replicas.iter().find(|r| r.node_name == "repl-b")?;
            matches!(b.state, ReplicaState::Stale { .. }).then_some(())
        },
    );
    let later = pattern(22, 4 * MIB);
    write_direct(&s8, 0, &later);
    lose(&mut c, 2);
    bring_back(&mut c, 1);
    c.wait("b sees c offline", Duration::from_secs(120), || {
        let nodes: Vec<serde_json::Value> = c.nodes[1].json(&["node", "list"]);
        let cn = nodes.iter().find(|n| n["name"] == "repl-c")?;
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
    let c_leg = v.replicas.iter().find(|r| r.node_name == "repl-c").unwrap();
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
    bring_back(&mut c, 2);
    c.wait("c online again", Duration::from_secs(120), || {
        let nodes: Vec<serde_json::Value> = c.nodes[1].json(&["node", "list"]);
        let n = nodes.iter().find(|n| n["name"] == "repl-c")?;
        (n["liveness"] == "online").then_some(())
    });
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

/// Drops the ZeroMQ traffic (port 9701, both ways) of the node in namespace `ns`; its
/// NVMe/TCP traffic still flows.
fn cut_control(ns: &str) {
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
                "1", "u32", "match", "ip", dir, "9701", "0xffff", "action", "drop",
            ],
        );
    }
}

/// Node `d`'s `/metrics`.
fn metrics(d: &Daemon) -> String {
    use pxd::api::client::{BlockingClient, Method, Target};
    let client = BlockingClient::new(Target::Unix(d.socket())).unwrap();
    let (_, body) = client.raw(Method::GET, "/metrics").unwrap();
    String::from_utf8_lossy(&body).into_owned()
}
