//! The demo that `cargo xtask demo` runs inside the VM: an operator's first hour with pxd,
//! every step through the real `pxd daemon` and CLI on real device-mapper. Two disks are
//! benchmarked into classes (one slowed with dm-delay), volumes are created, mounted,
//! snapshotted, cloned, grown under writes, encrypted, restored and deleted, and the daemon is
//! killed mid-write to show that I/O does not stop. An IOPS limit holds for two writers in
//! two cgroups together, as `pxd volume stats` shows. Then three nodes, each in its own network
//! namespace with its own disk, form a cluster and carry a replicated volume (see
//! [`cluster`]). Usage: `demo DISK DISK PXD_BINARY DISK DISK DISK`.

mod cluster;
mod docker;
mod limits;

use anyhow::{bail, ensure, Context, Result};
use pxd::api::pools::{DriveAdded, PoolView};
use pxd::api::volumes::VolumeView;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;
const DIR: &str = "/tmp/pxd-demo";

/// Class thresholds for this emulated VM, where a raw virtio disk does a few thousand IOPS;
/// on real hardware the defaults (20k IOPS / 500 µs for high) apply.
const THRESHOLDS: [&str; 8] = [
    "--high-min-iops",
    "100",
    "--high-max-p50-us",
    "4000",
    "--medium-min-iops",
    "50",
    "--medium-max-p50-us",
    "4500",
];

/// One pxd daemon and the CLI talking to it.
struct Node {
    pxd: PathBuf,
    /// Its socket, data, topology file and log live here.
    dir: PathBuf,
    name: String,
    addr: String,
    /// The network namespace it runs in (its own host, as far as it knows), if any.
    netns: Option<String>,
    args: Vec<String>,
    /// Where it serves Docker's volume plugin protocol.
    plugin_socket: PathBuf,
    daemon: Option<Child>,
}

impl Node {
    fn new(pxd: PathBuf, dir: PathBuf, name: &str, addr: &str, args: &[&str]) -> Node {
        Node {
            pxd,
            dir: dir.clone(),
            name: name.to_owned(),
            addr: addr.to_owned(),
            netns: None,
            args: args.iter().map(|a| a.to_string()).collect(),
            plugin_socket: dir.join("plugin.sock"),
            daemon: None,
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("pxd.sock")
    }

    fn start(&mut self) -> Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))?;
        // Only the network namespace is entered: nvmet's configfs must stay visible.
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg(&self.pxd);
                c
            }
            None => Command::new(&self.pxd),
        };
        let child = command
            .arg("--socket")
            .arg(self.socket())
            .args(["daemon", "--addr", &self.addr, "--name", &self.name])
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg("--plugin-socket")
            .arg(&self.plugin_socket)
            .arg("--topology-file")
            .arg(self.dir.join("topology.yaml"))
            .args(&self.args)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(180);
        while self.run(&["cluster", "status"]).is_err() {
            ensure!(Instant::now() < deadline, "the daemon did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn run(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.pxd)
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "pxd {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs a command the way a user would, showing it and what it printed.
    fn show(&self, args: &[&str]) -> Result<String> {
        println!("      $ pxd {}", args.join(" "));
        let out = self.run(args)?;
        out.lines().for_each(|l| println!("        {l}"));
        Ok(out)
    }

    fn json<T: serde::de::DeserializeOwned>(&self, args: &[&str]) -> Result<T> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let text = self.run(&all)?;
        serde_json::from_str(&text).with_context(|| format!("pxd {args:?} printed {text}"))
    }

    fn pool_used(&self, pool: &str) -> Result<u64> {
        let pools: Vec<PoolView> = self.json(&["pool", "list"])?;
        Ok(pools
            .into_iter()
            .find(|p| p.id == pool)
            .and_then(|p| p.usage)
            .map_or(0, |u| u.data_used))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn main() -> Result<()> {
    let args: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    ensure!(
        args.len() == 7,
        "usage: demo DISK DISK PXD_BINARY DISK DISK DISK SPARE_DISK"
    );
    let (fast_disk, slow_disk, pxd) = (&args[0], &args[1], args[2].clone());
    let _ = std::fs::remove_dir_all(DIR);
    std::fs::create_dir_all(DIR)?;
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    println!(
        "pxd demo: one node on real device-mapper, kernel {}",
        release.trim()
    );
    let mut node = Node::new(
        pxd.clone(),
        PathBuf::from(DIR),
        "demo",
        "127.0.0.1",
        &THRESHOLDS,
    );
    // Where Docker looks for a plugin named pxd.
    node.plugin_socket = PathBuf::from(docker::PLUGIN_SOCKET);

    step(
        1,
        "start the daemon and make it a one-node cluster (Raft, no etcd)",
    );
    node.start()?;
    node.show(&["cluster", "init", "--name", "demo"])?;

    step(2, "the node's disks, found with libblkid");
    node.show(&["drive", "list"])?;

    step(
        3,
        "add both drives: each is benchmarked, labelled and pooled by class (the second is slowed by 5 ms with dm-delay)",
    );
    let sectors = cmd("blockdev", &["--getsz", &slow_disk.display().to_string()])?;
    let table = format!("0 {} delay {} 0 5", sectors.trim(), slow_disk.display());
    cmd("dmsetup", &["create", "demo-slow", "--table", &table])?;
    let fast: DriveAdded = node.json(&["drive", "add", &fast_disk.display().to_string()])?;
    let slow: DriveAdded = node.json(&["drive", "add", "/dev/mapper/demo-slow"])?;
    for d in [&fast, &slow] {
        let r = &d.benchmark.random_read;
        println!(
            "      {}: {:.0} random-read IOPS, median {} µs -> class {}",
            d.path.display(),
            r.iops,
            r.p50_us,
            d.class
        );
    }
    node.show(&["pool", "list"])?;
    println!(
        "      each drive now carries a pxd label (cluster, node, pool, member): pools are\n      \
         assembled from labels after a reboot, whatever /dev names the disks get"
    );
    node.show(&["drive", "list"])?;

    step(
        4,
        "where the node sits: detected at start (DMI, vSphere, cloud metadata, the topology file), then tagged by hand",
    );
    node.show(&["topology", "show"])?;
    node.show(&["topology", "tag", "--zone", "z1", "--rack", "r7"])?;
    node.show(&["node", "list", "--labels"])?;
    println!(
        "      volumes go where the tags and `--zones`/`--racks`/`--nodes` allow; replicas\n      \
         never share a hypervisor or host; Marathon constraints can use:"
    );
    node.show(&["topology", "show", "--mesos-attributes"])?;

    step(
        5,
        "a 1 GiB ext4 volume on the high pool: a thin device, mounted under the data dir",
    );
    node.show(&[
        "volume",
        "create",
        "db",
        "--size",
        "1G",
        "--io_priority",
        "high",
        "--zones",
        "z1",
    ])?;
    let db: VolumeView = node.json(&["volume", "mount", "db"])?;
    let at = PathBuf::from(db.mountpoint.clone().context("db is mounted")?);
    println!("      mounted at {}", at.display());
    let original = write_file(&at.join("data"), 1, 32)?;
    println!("      wrote 32 MiB, sha256 {original}");

    step(
        6,
        "snapshot it (suspended around the kernel snapshot, so crash-consistent), overwrite, clone the snapshot",
    );
    node.show(&["volume", "snapshot", "create", "db", "--name", "before"])?;
    let changed = write_file(&at.join("data"), 2, 32)?;
    println!("      overwrote: sha256 {changed}");
    node.show(&[
        "volume",
        "clone",
        "db",
        "--snapshot",
        "before",
        "--name",
        "db-before",
    ])?;
    let clone: VolumeView = node.json(&["volume", "mount", "db-before"])?;
    let in_clone = sha256_file(&PathBuf::from(clone.mountpoint.context("mounted")?).join("data"))?;
    ensure!(in_clone == original, "the clone has {in_clone}");
    println!("      the clone reads the original data back: sha256 {in_clone}");

    step(7, "grow db to 2 GiB online while a writer is busy on it");
    let df_before = df(&at)?;
    let writer = Writer::start(at.join("busy"));
    node.show(&["volume", "update", "db", "--size", "2G"])?;
    let writes = writer.stop()?;
    println!(
        "      df: {} -> {} ({writes} writes during the grow, no errors)",
        human(df_before),
        human(df(&at)?)
    );

    step(
        8,
        "an encrypted volume: dm-crypt (aes-xts-plain64) on the thin device, key wrapped by the cluster key",
    );
    let vault: VolumeView = node.json(&[
        "volume", "create", "vault", "--size", "64M", "--fs", "raw", "--secure",
    ])?;
    println!("      stack: {}", vault.stack.join(" <- "));
    let secret = b"pxd demo: this sentence is only readable above dm-crypt ".repeat(4096 / 57);
    let top = vault.device.clone().context("vault has a device")?;
    write_dev(&top, &secret)?;
    let below = read_dev(&Path::new("/dev/mapper").join(&vault.stack[0]), 8 * MIB)?;
    let found = below.windows(24).any(|w| w == &secret[..24]);
    ensure!(!found, "plaintext reached the thin device");
    println!("      the sentence reads back through dm-crypt and appears nowhere on the thin device below");

    step(
        9,
        "kill -9 the daemon during writes: the kernel keeps serving I/O; the restart changes nothing",
    );
    let listed = node.run(&["--json", "volume", "list"])?;
    let writer = Writer::start(at.join("busy"));
    std::thread::sleep(Duration::from_millis(500));
    node.kill();
    let during = writer.count();
    std::thread::sleep(Duration::from_secs(2));
    let later = writer.count();
    println!("      daemon killed; writes kept completing without it: {during} -> {later}");
    ensure!(later > during, "I/O stopped without the daemon");
    node.start()?;
    let writes = writer.stop()?;
    ensure!(
        node.run(&["--json", "volume", "list"])? == listed,
        "the volume list changed across the restart"
    );
    println!("      restarted; `pxd volume list` is unchanged; {writes} writes, no errors");

    step(10, "restore db from its snapshot");
    node.show(&["volume", "unmount", "db"])?;
    node.show(&["volume", "restore", "db", "--snapshot", "before"])?;
    node.run(&["volume", "mount", "db"])?;
    let restored = sha256_file(&at.join("data"))?;
    ensure!(restored == original, "restored data is {restored}");
    println!("      db reads the snapshot's data again: sha256 {restored}");
    node.show(&["volume", "list"])?;

    step(
        11,
        "Docker: a pxd volume through the plugin; one container writes, another reads it back",
    );
    docker::run(&node)?;

    step(
        12,
        "cap vault at 200 write IOPS live: two writers in two cgroups share the limit",
    );
    limits::run(&node, "vault", &top)?;

    step(
        13,
        "delete volumes: their thin devices go and the pool's use drops",
    );
    let used_before = node.pool_used(&fast.pool)?;
    for v in ["db-before", "db"] {
        node.run(&["volume", "unmount", v])?;
        node.show(&["volume", "delete", v])?;
    }
    let used_after = node.pool_used(&fast.pool)?;
    println!(
        "      high pool: {} used -> {}",
        human(used_before),
        human(used_after)
    );

    step(
        14,
        "what Prometheus scrapes from /metrics (pool and volume gauges), and the API's own description",
    );
    let client =
        pxd::api::client::BlockingClient::new(pxd::api::client::Target::Unix(node.socket()))?;
    let (_, body) = client.raw(pxd::api::client::Method::GET, "/metrics")?;
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| {
            l.starts_with("pxd_pool_data")
                || l.starts_with("pxd_volume_")
                || (l.starts_with("pxd_pool_state") && l.ends_with(" 1"))
        })
        .for_each(|l| println!("        {l}"));
    let (_, doc) = client.raw(pxd::api::client::Method::GET, "/openapi.json")?;
    let doc: serde_json::Value = serde_json::from_slice(&doc)?;
    let operations: usize = doc["paths"].as_object().map_or(0, |p| {
        p.values()
            .filter_map(|i| i.as_object())
            .map(|i| i.len())
            .sum()
    });
    println!(
        "      and the REST API describes itself: OpenAPI {} at /openapi.json, {operations} operations",
        doc["openapi"].as_str().unwrap_or("?")
    );
    node.kill();

    cluster::run(&pxd, &args[3..], 15)?;
    println!("\npxd demo: done (devices stay up when the daemons stop; that is the point)");
    Ok(())
}

fn step(n: u32, what: &str) {
    println!("\n[{n}] {what}");
}

fn cmd(program: &str, args: &[&str]) -> Result<String> {
    cmd_out(Command::new(program).args(args))
}

fn cmd_out(c: &mut Command) -> Result<String> {
    let out = c.output()?;
    ensure!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn df(dir: &Path) -> Result<u64> {
    let out = cmd("df", &["-B1", "--output=size", &dir.display().to_string()])?;
    out.lines()
        .nth(1)
        .context("df printed no size")?
        .trim()
        .parse()
        .context("df size")
}

fn human(bytes: u64) -> String {
    pxd::volume::spec::human(bytes)
}

/// Pseudo-random data, seeded, so a run can be repeated.
fn data(seed: u64, mib: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(mib * MIB);
    while out.len() < mib * MIB {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

fn write_file(path: &Path, seed: u64, mib: usize) -> Result<String> {
    let bytes = data(seed, mib);
    let mut f = std::fs::File::create(path)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    Ok(hex(&Sha256::digest(&bytes)))
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.read_to_end(&mut bytes)?;
    Ok(hex(&Sha256::digest(&bytes)))
}

fn write_dev(dev: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).open(dev)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

fn read_dev(dev: &Path, len: usize) -> Result<Vec<u8>> {
    let mut out = vec![0u8; len];
    // Bypass the page cache: what is on the device, not what was last written through it.
    let f = std::fs::OpenOptions::new().read(true).open(dev)?;
    let _ = cmd("blockdev", &["--flushbufs", &dev.display().to_string()]);
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut out, 0)?;
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A thread rewriting 4 KiB blocks of a file with fsync, counting completed writes.
struct Writer {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<std::io::Result<()>>,
}

impl Writer {
    fn start(path: PathBuf) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let (s, d) = (stop.clone(), done.clone());
        let thread = std::thread::spawn(move || {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(false)
                .open(&path)?;
            let block = vec![0x5au8; 4096];
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                std::os::unix::fs::FileExt::write_all_at(&f, &block, (i % 1024) * 4096)?;
                f.sync_data()?;
                d.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            Ok(())
        });
        Writer { stop, done, thread }
    }

    fn count(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    fn stop(self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.join() {
            Ok(Ok(())) => Ok(self.done.load(Ordering::Relaxed)),
            Ok(Err(e)) => bail!("a write failed: {e}"),
            Err(_) => bail!("the writer panicked"),
        }
    }
}
