//! Three pxd daemons in network namespaces of one guest, each with its own disk, formed into
//! a cluster: what the replication tests and benchmark run on. Several such clusters may
//! share a guest (distinct names, addresses and ports); their checks of the kernel's state
//! look only at their own nodes' devices, exports and controllers.

use crate::daemon::Daemon;
use crate::netns::Net;
use crate::node_devices;
use pxd::api::volumes::VolumeView;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Polls `f` every 300 ms until it gives a value; panics naming `what` after `limit`.
pub fn wait_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Every drive lands in the low class, whatever the emulator's speed, so all pools are alike
/// (and a short benchmark is enough to class it so).
pub const ALL_LOW: [&str; 8] = [
    "--high-min-iops",
    "1000000000",
    "--medium-min-iops",
    "1000000000",
    "--drive-bench-ms",
    "300",
    "--reconcile-interval-ms",
    "2000",
];

/// A node's id, as its dm names carry it.
pub fn node_id(d: &Daemon) -> String {
    let status: serde_json::Value = d.json(&["cluster", "status"]);
    status["node"].as_str().unwrap().to_owned()
}

/// Every pxd dm device and its table: what a refused call must not change.
/// The other cluster in the guest makes and removes devices meanwhile: a device listed but
/// gone (or not loaded yet) when its table is read fails the whole read, which is then read
/// again.
pub fn all_tables() -> BTreeSet<String> {
    let mut tries = 0;
    let out = loop {
        let out = Command::new("dmsetup")
            .arg("table")
            .output()
            .expect("dmsetup");
        tries += 1;
        if out.status.success() || tries == 50 {
            break out;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        out.status.success(),
        "dmsetup table failed {tries} times: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("pxd-"))
        .map(str::to_owned)
        .collect()
}

/// This kernel's nvmet subsystems (every node's exports).
pub fn all_exports() -> BTreeSet<String> {
    std::fs::read_dir("/sys/kernel/config/nvmet/subsystems")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The nvmet subsystems linked to a port: those a host can reach.
pub fn all_linked_exports() -> BTreeSet<String> {
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

pub struct Cluster {
    pub net: Net,
    pub nodes: Vec<Daemon>,
    /// (name, id) of each node.
    pub ids: Vec<(String, String)>,
    /// The ZeroMQ port of every node.
    pub node_port: u16,
}

impl Drop for Cluster {
    /// The daemons go (their own drops kill them), and so does every NVMe controller they
    /// left: with `ctrl_loss_tmo=-1` a controller whose target went with its namespace
    /// would hold its I/O, and the guest's shutdown with it, for ever.
    fn drop(&mut self) {
        // Controllers first: a daemon waiting on I/O they hold could not be reaped before.
        for c in pxd::kernel::nvme_host::controllers() {
            if self.ours(&c.host_nqn) {
                let _ = pxd::kernel::nvme_host::delete(&c.name);
            }
        }
        for n in &mut self.nodes {
            n.kill();
        }
    }
}

/// Nodes `{prefix}-a`, `-b` and `-c`, each in its own network namespace (addresses from index
/// `first` on, API and node ports from `port` on), formed into one cluster by node a, each
/// with its disk of `disks` added.
pub fn form(
    prefix: &str,
    disks: &[PathBuf],
    first: usize,
    port: u16,
    extra: &[&str],
) -> (Net, Vec<Daemon>) {
    let net = Net::new_at(3, first);
    let args: Vec<&str> = ALL_LOW.iter().chain(extra).copied().collect();
    let mut nodes: Vec<Daemon> = ["a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let name = format!("{prefix}-{n}");
            Daemon::in_netns(&name, &net.ns(i), &net.addr_of(i), port, &args)
        })
        .collect();
    nodes[0].start_cluster();
    let token = nodes[0].ok(&["cluster", "token"]).trim().to_owned();
    for n in &mut nodes[1..] {
        n.start();
        n.ok(&["cluster", "join", &token]);
    }
    for (n, disk) in nodes.iter().zip(disks) {
        let out = n.cli(&["drive", "add", disk.to_str().unwrap()]);
        if !out.status.success() {
            // Recorded, but a step's record could not be committed in time (a leader
            // starved by the drive's own benchmark under emulation): the node finishes the
            // add on its next passes, which the wait for the pools below sees.
            let said = String::from_utf8_lossy(&out.stderr);
            assert!(
                said.contains("recording") && said.contains("no quorum"),
                "pxd drive add {} on {} failed: {said}",
                disk.display(),
                n.name
            );
            eprintln!("drive add on {}: {said}(the node finishes it)", n.name);
        }
    }
    wait_until("three pools in the store", Duration::from_secs(180), || {
        let pools: Vec<serde_json::Value> =
            serde_json::from_str(&nodes[2].ok(&["pool", "list", "--json"])).ok()?;
        (pools.len() == 3).then_some(())
    });
    (net, nodes)
}

impl Cluster {
    /// Nodes `{prefix}-a`, `-b` and `-c` on `disks`, at addresses from index `first` on,
    /// their API and node ports from `port` on.
    pub fn start(prefix: &str, disks: &[PathBuf], first: usize, port: u16) -> Cluster {
        Cluster::start_with(prefix, disks, first, port, &[])
    }

    /// [`Cluster::start`], every daemon given the flags `extra` too.
    pub fn start_with(
        prefix: &str,
        disks: &[PathBuf],
        first: usize,
        port: u16,
        extra: &[&str],
    ) -> Cluster {
        // One cluster forms at a time: two at once in the emulated guest starve Raft's
        // heartbeats and turn joins into elections.
        static FORMING: Mutex<()> = Mutex::new(());
        let _one = FORMING.lock().unwrap_or_else(|p| p.into_inner());
        let (net, nodes) = form(prefix, disks, first, port, extra);
        for n in &nodes {
            // One guest holds every node: as far as placement knows, each is its own host.
            let host = format!("host-{}", n.name);
            n.ok(&["topology", "tag", "--host", &host]);
        }
        let ids = nodes.iter().map(|n| (n.name.clone(), node_id(n))).collect();
        Cluster {
            net,
            nodes,
            ids,
            node_port: port + 1,
        }
    }

    /// Whether `name` (a dm table line, an NQN) belongs to one of this cluster's nodes.
    pub fn ours(&self, name: &str) -> bool {
        self.ids.iter().any(|(_, id)| name.contains(id.as_str()))
    }

    /// This cluster's dm devices and their tables.
    pub fn tables(&self) -> BTreeSet<String> {
        all_tables().into_iter().filter(|t| self.ours(t)).collect()
    }

    /// This cluster's nvmet exports.
    pub fn exports(&self) -> BTreeSet<String> {
        all_exports().into_iter().filter(|e| self.ours(e)).collect()
    }

    /// This cluster's exports that a host can reach.
    pub fn linked_exports(&self) -> BTreeSet<String> {
        all_linked_exports()
            .into_iter()
            .filter(|e| self.ours(e))
            .collect()
    }

    /// Whether node `i` is seen `online` (or not) from node `from`.
    pub fn online(&self, from: usize, i: usize) -> bool {
        let nodes: Vec<serde_json::Value> = self.nodes[from].json(&["node", "list"]);
        nodes
            .iter()
            .any(|n| n["name"] == self.nodes[i].name.as_str() && n["liveness"] == "online")
    }

    /// Every node's log tail, then the kernel's blocked tasks: what a failed step waited on.
    /// The reason comes first, so that an excerpt of a long failure still names it.
    pub fn show_logs(&self, why: &str) {
        eprintln!("=== FAILED: {why}");
        for n in &self.nodes {
            eprintln!("--- log of {} ---\n{}", n.name, n.log_tail());
        }
        crate::blocked_tasks();
    }

    /// [`wait_until`], showing every node's log when it times out.
    pub fn wait<T>(&self, what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(v) = f() {
                return v;
            }
            if Instant::now() > deadline {
                let why = format!("timed out waiting for {what}");
                self.show_logs(&why);
                panic!("{why}");
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Node `i`'s CLI with `--json`, parsed; on failure, panics with every node's log.
    pub fn json<T: serde::de::DeserializeOwned>(&self, i: usize, args: &[&str]) -> T {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.nodes[i].cli(&all);
        if !out.status.success() {
            let why = format!(
                "pxd {} on {} failed: {}",
                args.join(" "),
                self.nodes[i].name,
                String::from_utf8_lossy(&out.stderr)
            );
            self.show_logs(&why);
            panic!("{why}");
        }
        serde_json::from_slice(&out.stdout).expect("the CLI's JSON")
    }

    pub fn by_name(&self, name: &str) -> usize {
        self.nodes.iter().position(|n| n.name == name).unwrap()
    }

    pub fn id(&self, i: usize) -> &str {
        &self.ids[i].1
    }
}

/// Volume `name` as node `d` shows it, once every replica has built its leg (its devices
/// exist on its node).
pub fn legs_built(c: &Cluster, name: &str) -> VolumeView {
    // Node 0 serves reads from its own copy of the store, which may still lag a volume
    // created through another node (after node 0 was cut off, for one).
    let v: VolumeView = c.wait(
        &format!("volume {name} known on {}", c.nodes[0].name),
        Duration::from_secs(120),
        || {
            let out = c.nodes[0].cli(&["--json", "volume", "inspect", name]);
            out.status
                .success()
                .then(|| serde_json::from_slice(&out.stdout).expect("the CLI's JSON"))
        },
    );
    for r in &v.replicas {
        let node = c.id(c.by_name(&r.node_name)).to_owned();
        let thin = format!("pxd-{node}-thin-{}", v.id);
        c.wait(&thin, Duration::from_secs(120), || {
            node_devices(&node).contains(&thin).then_some(())
        });
    }
    // An attach refuses a leg whose node it sees offline, which is right; but under emulation
    // a node can miss a few beats while the legs are built. Let the views settle first.
    for from in 0..c.nodes.len() {
        for i in (0..c.nodes.len()).filter(|i| *i != from && c.nodes[*i].is_running()) {
            c.wait(
                &format!(
                    "{} seen online from {}",
                    c.nodes[i].name, c.nodes[from].name
                ),
                Duration::from_secs(120),
                || c.online(from, i).then_some(()),
            );
        }
    }
    v
}
