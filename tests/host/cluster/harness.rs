//! Test clusters of real `pxd daemon` processes, each in its own network namespace with its
//! own data directory. The namespaces hang off a bridge in a hub namespace through veth
//! pairs, all on 10.77.0.0/24, which exists only inside namespaces the test made. Dropping a
//! `Net` or a `TestCluster` (also on panic) kills the daemons and deletes the namespaces.

use pxd::api::client::{BlockingClient, ClientError, Target};
use pxd::api::{Applied, InitRequest, InitResponse, JoinRequest, JoinResponse, KvValue};
use pxd::cluster::view::{NodeView, Status};
use pxd::store::NodeId;
pub use pxd_tests::daemon::pxd_binary;
pub use pxd_tests::netns::Net;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One daemon: its namespace, data directory, socket and process.
pub struct Daemon {
    pub index: usize,
    pub ns: String,
    pub dir: PathBuf,
    pub role: &'static str,
    /// Extra environment for the daemon (e.g. NOTIFY_SOCKET).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Daemon {
    pub fn socket(&self) -> PathBuf {
        self.dir.join("pxd.sock")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }

    /// This node's topology file (never the host's own `/etc/pxd`).
    pub fn topology_file(&self) -> PathBuf {
        self.dir.join("topology.yaml")
    }

    pub fn start(&mut self) {
        assert!(
            self.child.is_none(),
            "node {} is already running",
            self.index
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("open the daemon log");
        let err = log.try_clone().expect("clone the log handle");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(pxd_binary())
            .arg("--socket")
            .arg(self.socket())
            .args(["daemon", "--data-dir"])
            .arg(self.dir.join("data"))
            .arg("--plugin-socket")
            .arg(self.dir.join("plugin.sock"))
            .args(["--addr", &Net::addr(self.index)])
            .args(["--name", &format!("node{}", self.index)])
            .args(["--role", self.role])
            .args(["--beat-interval-ms", "500", "--missed-beats", "3"])
            .arg("--topology-file")
            .arg(self.topology_file())
            .env("RUST_LOG", "info,openraft=warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("start pxd daemon");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.client().get::<Status>("/v1/cluster/status").is_err() {
            assert!(
                Instant::now() < deadline,
                "node {} did not serve its API within 20 s:\n{}",
                self.index,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, as systemd stops a service; returns how the daemon exited.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("a running daemon");
        let pid = i32::try_from(c.id()).expect("a pid");
        // SAFETY: signalling our own child, which `ip netns exec` replaced with pxd.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        c.wait().expect("wait for the daemon")
    }

    /// Freezes the daemon (SIGSTOP) for `d`, then lets it go on (SIGCONT): a node that got
    /// no CPU for that long, as on a saturated machine or a paused VM.
    pub fn pause(&self, d: Duration) {
        let c = self.child.as_ref().expect("a running daemon");
        let pid = i32::try_from(c.id()).expect("a pid");
        // SAFETY: signalling our own child, which `ip netns exec` replaced with pxd.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        std::thread::sleep(d);
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
    }

    /// SIGKILL: no chance to clean up, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn client(&self) -> BlockingClient {
        let mut c =
            BlockingClient::new(Target::Unix(self.socket())).expect("an API client runtime");
        c.set_timeout(Duration::from_secs(40));
        c
    }

    pub fn status(&self) -> Status {
        self.client()
            .get("/v1/cluster/status")
            .unwrap_or_else(|e| panic!("status of node {}: {e}", self.index))
    }

    pub fn try_status(&self) -> Option<Status> {
        self.client().get("/v1/cluster/status").ok()
    }

    pub fn nodes(&self) -> Vec<NodeView> {
        self.client()
            .get("/v1/nodes")
            .unwrap_or_else(|e| panic!("nodes from node {}: {e}", self.index))
    }

    pub fn put(&self, ns: &str, key: &str, value: &str) -> Result<(), ClientError> {
        self.client()
            .put::<_, Applied>(
                &format!("/v1/kv/{ns}/{key}"),
                &KvValue {
                    value: value.to_owned(),
                },
            )
            .map(drop)
    }

    pub fn kv(&self, ns: &str) -> BTreeMap<String, String> {
        self.client()
            .get(&format!("/v1/kv/{ns}"))
            .unwrap_or_else(|e| panic!("kv of node {}: {e}", self.index))
    }

    pub fn join(&self, token: &str) -> Result<JoinResponse, ClientError> {
        self.client().post(
            "/v1/cluster/join",
            &JoinRequest {
                token: pxd::store::types::Secret::new(token.to_owned()),
            },
        )
    }

    pub fn id(&self) -> NodeId {
        self.status().node
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Daemons on a `Net`; node 0 initializes the cluster when asked.
pub struct TestCluster {
    pub nodes: Vec<Daemon>,
    pub net: Net,
    dir: PathBuf,
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        if std::thread::panicking() {
            eprintln!("keeping {} for a look at the logs", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl TestCluster {
    /// Starts `roles.len()` daemons (not yet in a cluster).
    pub fn start(roles: &[&'static str]) -> TestCluster {
        TestCluster::start_with(roles, |_| Vec::new())
    }

    /// Like `start`, with extra environment for each daemon by index.
    pub fn start_with(
        roles: &[&'static str],
        env: impl Fn(usize) -> Vec<(String, String)>,
    ) -> TestCluster {
        let net = Net::new(roles.len());
        let dir = std::env::temp_dir().join(format!("{}-data", net.ns(0)));
        let _ = std::fs::remove_dir_all(&dir);
        let mut nodes = Vec::new();
        for (i, role) in roles.iter().enumerate() {
            let d = dir.join(format!("node{i}"));
            std::fs::create_dir_all(&d).expect("node directory");
            let mut daemon = Daemon {
                index: i,
                ns: net.ns(i),
                dir: d,
                role,
                env: env(i),
                child: None,
            };
            daemon.start();
            nodes.push(daemon);
        }
        TestCluster { nodes, net, dir }
    }

    /// Starts the daemons, initializes the cluster on node 0 and joins the others.
    pub fn formed(roles: &[&'static str]) -> TestCluster {
        let c = TestCluster::start(roles);
        let init: InitResponse = c.nodes[0]
            .client()
            .post(
                "/v1/cluster/init",
                &InitRequest {
                    name: "test".into(),
                },
            )
            .unwrap_or_else(|e| panic!("init: {e}\n{}", c.nodes[0].log_tail()));
        for n in &c.nodes[1..] {
            n.join(&init.token)
                .unwrap_or_else(|e| panic!("join node {}: {e}\n{}", n.index, n.log_tail()));
        }
        c
    }

    /// Polls until `done` holds, or panics with `what` and every node's log tail.
    pub fn wait_until(&self, what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !done() {
            if Instant::now() >= deadline {
                let logs: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| format!("--- node {}:\n{}", n.index, n.log_tail()))
                    .collect();
                panic!(
                    "timed out after {limit:?} waiting for {what}\n{}",
                    logs.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The leader every running node in `which` agrees on, once they do.
    pub fn agreed_leader(&self, which: &[usize]) -> NodeId {
        let mut leader = None;
        self.wait_until(
            "the nodes to agree on a leader",
            Duration::from_secs(30),
            || {
                let seen: Vec<Option<NodeId>> = which
                    .iter()
                    .map(|&i| self.nodes[i].try_status().and_then(|s| s.leader))
                    .collect();
                leader = seen[0];
                leader.is_some() && seen.iter().all(|l| *l == leader)
            },
        );
        leader.expect("a leader")
    }

    pub fn index_of(&self, id: NodeId) -> usize {
        self.nodes
            .iter()
            .position(|n| n.id() == id)
            .unwrap_or_else(|| panic!("no node has id {id}"))
    }
}
