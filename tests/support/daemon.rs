//! One real `pxd daemon` inside the guest, driven through the real CLI: what an operator
//! runs. Each daemon has its own data directory, socket and ports, so tests cannot share
//! state by accident; dropping it kills the process (devices stay, as they would).

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `pxd` binary next to this test's deps directory (`<target>/debug/pxd`).
pub fn pxd_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("pxd"))
        .expect("the test binary lives in <target>/<profile>/deps");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p pxd --bins` (cargo xtask test does)",
        bin.display()
    );
    bin
}

pub struct Daemon {
    /// The node's name in the cluster.
    pub name: String,
    pub dir: PathBuf,
    /// Base port: the API listens on it, the node port on the next, the bulk port (block
    /// streams) on the one after.
    port: u16,
    /// Extra daemon flags (class thresholds and the like).
    pub args: Vec<String>,
    /// The network namespace it runs in and its address there; loopback when `None`.
    pub netns: Option<(String, String)>,
    child: Option<Child>,
}

impl Daemon {
    /// A daemon over a fresh directory; not started.
    pub fn new(name: &str, port: u16, args: &[&str]) -> Daemon {
        let dir = PathBuf::from(format!("/tmp/pxd-daemon-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("make the daemon's directory");
        Daemon {
            name: name.to_owned(),
            dir,
            port,
            args: args.iter().map(|s| s.to_string()).collect(),
            netns: None,
            child: None,
        }
    }

    /// A daemon in network namespace `ns` at `addr` (entered with `nsenter --net`, so it
    /// still sees configfs); not started. Its CLI still reaches it through its socket.
    pub fn in_netns(name: &str, ns: &str, addr: &str, port: u16, args: &[&str]) -> Daemon {
        let mut d = Daemon::new(name, port, args);
        d.netns = Some((ns.to_owned(), addr.to_owned()));
        d
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("pxd.sock")
    }

    /// Its Docker plugin socket: its own, unless its arguments name one.
    pub fn plugin_socket(&self) -> PathBuf {
        self.args
            .iter()
            .position(|a| a == "--plugin-socket")
            .and_then(|i| self.args.get(i + 1))
            .map_or_else(|| self.dir.join("plugin.sock"), PathBuf::from)
    }

    /// `--plugin-socket` for a daemon whose arguments name none.
    fn own_plugin_socket(&self) -> Vec<std::ffi::OsString> {
        if self.args.iter().any(|a| a == "--plugin-socket") {
            return Vec::new();
        }
        vec!["--plugin-socket".into(), self.plugin_socket().into()]
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The daemon's log file.
    pub fn log(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }

    /// This node's topology file (never the guest's own `/etc/pxd`).
    pub fn topology_file(&self) -> PathBuf {
        self.dir.join("topology.yaml")
    }

    /// Starts the daemon with `env` and waits (generously: the guest is emulated) until its
    /// API answers, which is after its first reconcile pass.
    pub fn start_with(&mut self, env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "the daemon is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("open the daemon log");
        let err = log.try_clone().expect("clone the log handle");
        let mut cmd = match &self.netns {
            Some((ns, _)) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg(pxd_binary());
                c
            }
            None => Command::new(pxd_binary()),
        };
        let addr = self.netns.as_ref().map_or("127.0.0.1", |(_, a)| a.as_str());
        let child = cmd
            .arg("--socket")
            .arg(self.socket())
            .args(["daemon", "--data-dir"])
            .arg(self.data_dir())
            .args(self.own_plugin_socket())
            .args(["--addr", addr, "--name", &self.name])
            .arg("--topology-file")
            .arg(self.topology_file())
            .args(["--api-port", &self.port.to_string()])
            .args(["--data-port", &(self.port + 1).to_string()])
            .args(self.drive_bench())
            .args(&self.args)
            // The log filter a test run is given (e.g. `pxd::io::limits=debug`), else info.
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("start pxd daemon");
        self.child = Some(child);
        let started = Instant::now();
        let deadline = started + Duration::from_secs(180);
        loop {
            if self.cli(&["cluster", "status"]).status.success() {
                eprintln!("daemon {} served after {:?}", self.name, started.elapsed());
                return;
            }
            if let Some(status) = self.exited() {
                panic!(
                    "the daemon exited ({status}) while starting:\n{}",
                    self.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not serve within 180 s:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn start(&mut self) {
        self.start_with(&[]);
    }

    /// Starts a fresh daemon and makes it a one-node cluster.
    pub fn start_cluster(&mut self) {
        self.start();
        self.ok(&["cluster", "init", "--name", "vmtest"]);
    }

    /// Whether this handle started the daemon and has not stopped it.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// How the daemon exited, if it has.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let c = self.child.as_mut()?;
        let status = c.try_wait().expect("poll the daemon")?;
        self.child = None;
        Some(status)
    }

    /// Restarts the daemon to abort before its `n`-th kernel change, runs the CLI with
    /// `args`, waits (generously) for the abort, then restarts it cleanly, as after a crash.
    /// Returns whether the call answered with success and whether the daemon crashed.
    pub fn cli_crashing_at(&mut self, n: usize, args: &[&str]) -> (bool, bool) {
        self.kill();
        self.start_with(&[("PXD_FAIL_AT_STEP", &n.to_string())]);
        let answered = self.cli(args).status.success();
        // An abort happens inside the call; give the process a moment to be reaped.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut crashed = self.exited().is_some();
        while !crashed && !answered && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            crashed = self.exited().is_some();
        }
        self.kill();
        self.start();
        (answered, crashed)
    }

    /// The daemon's process id, while this handle runs it.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: no chance to clean up, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, as systemd stops it.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child process.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    /// Runs `pxd --socket S ARGS`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(pxd_binary())
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()
            .expect("run the pxd CLI")
    }

    /// Runs the CLI; panics with its output and the daemon's log unless it succeeds.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "pxd {} failed: {}{}\ndaemon log:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the CLI with `--json` and parses what it prints.
    pub fn json<T: serde::de::DeserializeOwned>(&self, args: &[&str]) -> T {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let text = self.ok(&all);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("pxd {args:?} printed {text:?}: {e}"))
    }

    /// Runs the CLI expecting a refusal; returns the error it printed.
    pub fn refused(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "pxd {} should have been refused but printed {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        err
    }

    /// A short drive benchmark (half a second per pattern) unless the test sets its own:
    /// the emulated guest spends its cores on it, and only tests of classes need it long.
    fn drive_bench(&self) -> &'static [&'static str] {
        if self.args.iter().any(|a| a == "--drive-bench-ms") {
            &[]
        } else {
            &["--drive-bench-ms", "500"]
        }
    }

    /// Whether a line of the daemon's log so far has every one of `needles` in it.
    pub fn logged(&self, needles: &[&str]) -> bool {
        std::fs::read_to_string(self.log())
            .is_ok_and(|t| t.lines().any(|l| needles.iter().all(|n| l.contains(n))))
    }

    /// The last 60 lines of the daemon's log, without Raft's retries to an unreachable peer
    /// (a node that is down fills the log with them, hiding what the test needs to see).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains("openraft::replication") && !l.contains("replication_handler"))
            .collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}
