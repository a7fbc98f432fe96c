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

fn raid_status(name: &str) -> Option<RaidStatus> {
    let dm = KernelDm::open().ok()?;
    let name = devicemapper::DmNameBuf::new(name.to_owned()).ok()?;
    let status = dm.status(&name).ok()?;
    status.first()?.3.parse().ok()
}

/// fio writing `size` at random over `dev` with O_DIRECT, then reading it all back against
/// its crc32c; panics unless it reports 0 errors.
fn fio_verify(dev: &Path, name: &str, size: &str) {
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
            "--do_verify=1",
            "--output-format=json",
        ])
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
        assert!(job["write"]["total_ios"].as_u64().unwrap() > 0, "{text}");
    }
}

struct Cluster {
    _net: Net,
    nodes: Vec<Daemon>,
    /// (name, id) of each node.
    ids: Vec<(String, String)>,
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
        Cluster {
            _net: net,
            nodes,
            ids,
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
        wait_until(&thin, Duration::from_secs(120), || {
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
    assert!(
        !all_exports().iter().any(|e| e.contains(&v.id)),
        "{:?}",
        all_exports()
    );
    // Attached again, the filesystem and the file are there.
    let v: VolumeView = c.nodes[2].json(&["volume", "mount", "fs2"]);
    let mnt = PathBuf::from(v.mountpoint.clone().expect("mounted"));
    assert_eq!(std::fs::read(mnt.join("hello")).unwrap(), b"replicated");
    c.nodes[2].ok(&["volume", "unmount", "fs2"]);
    c.nodes[0].ok(&["volume", "delete", "fs2"]);
}
