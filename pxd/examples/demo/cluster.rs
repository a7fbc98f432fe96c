//! The demo's second part: three nodes, each a daemon in its own network namespace with its
//! own disk (as on three hosts), form a cluster. A 2-way replicated volume is mirrored by
//! dm-raid over NVMe/TCP legs on the node that holds neither leg; `kill -9` of any daemon
//! under a writer stops nothing; a 3-way volume loses a replica under a writer and gains
//! one again, copied thin-aware (`ha-update`); when the attach node is lost, a replica node
//! takes the volume over with `attach --force` and the data is there; a node's disk is
//! replaced under a writer, its leg built elsewhere first (`drive replace`).

use super::{cmd, read_dev, sha256_file, step, write_file, Node, Writer};
use anyhow::{ensure, Context, Result};
use pxd::api::volumes::VolumeView;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const DIR: &str = "/tmp/pxd-demo-cluster";
const NAMES: [&str; 3] = ["node-a", "node-b", "node-c"];
const HUB: &str = "pxd-demo-hub";

fn ns(i: usize) -> String {
    format!("pxd-demo-n{i}")
}

fn addr(i: usize) -> String {
    format!("10.88.0.{}", i + 1)
}

/// A bridge in a namespace of its own and one namespace per node on it.
fn network() -> Result<()> {
    // NVMe/TCP hosts and targets in one kernel: a send frag past the end of a huge page
    // trips a hardened-usercopy BUG in nvmet-tcp's receive (Debian 6.1), which stalls every
    // leg. Only the VM's own kernel is changed; between machines this never happens.
    if std::env::var_os("PXD_IN_VM").is_some() {
        std::fs::write("/sys/kernel/mm/transparent_hugepage/enabled", "never")
            .context("turning huge pages off in the VM")?;
    }
    cmd("ip", &["netns", "add", HUB])?;
    cmd("ip", &["-n", HUB, "link", "add", "br0", "type", "bridge"])?;
    cmd("ip", &["-n", HUB, "link", "set", "br0", "up"])?;
    for i in 0..NAMES.len() {
        let (ns, port) = (ns(i), format!("p{i}"));
        cmd("ip", &["netns", "add", &ns])?;
        cmd(
            "ip",
            &[
                "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                "netns", HUB,
            ],
        )?;
        cmd("ip", &["-n", HUB, "link", "set", &port, "master", "br0"])?;
        cmd("ip", &["-n", HUB, "link", "set", &port, "up"])?;
        let cidr = format!("{}/24", addr(i));
        cmd("ip", &["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
        cmd("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
        cmd("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
    }
    Ok(())
}

pub fn wait<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The raid's health characters (`AA`: both legs in sync) as `dmsetup status` shows them.
fn raid_health(raid: &str) -> Result<String> {
    let status = cmd("dmsetup", &["status", raid])?;
    status
        .split_whitespace()
        .nth(5)
        .map(str::to_owned)
        .context("a raid status")
}

/// The sha256 of the first `len` bytes of each leg's data device, read directly.
fn leg_sums(v: &VolumeView, ids: &[String], len: usize) -> Result<Vec<String>> {
    v.replicas
        .iter()
        .map(|r| {
            let i = NAMES
                .iter()
                .position(|n| *n == r.node_name)
                .context("a replica on a demo node")?;
            let leg = PathBuf::from(format!("/dev/mapper/pxd-{}-thin-{}", ids[i], v.id));
            Ok(super::hex(&Sha256::digest(read_dev(&leg, len)?)))
        })
        .collect()
}

pub fn run(pxd: &Path, disks: &[PathBuf], first: u32) -> Result<()> {
    let _ = std::fs::remove_dir_all(DIR);
    step(
        first,
        "three nodes, each in its own network namespace with its own disk (as on three hosts), form one cluster",
    );
    network()?;
    let mut nodes: Vec<Node> = NAMES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut n = Node::new(
                pxd.to_owned(),
                Path::new(DIR).join(name),
                name,
                &addr(i),
                &["--drive-bench-ms", "500"],
            );
            n.netns = Some(ns(i));
            n
        })
        .collect();
    for n in &mut nodes {
        n.start()?;
    }
    nodes[0].run(&["cluster", "init", "--name", "demo-cluster"])?;
    let token = nodes[0].run(&["cluster", "token"])?;
    for n in &nodes[1..] {
        n.run(&["cluster", "join", token.trim()])?;
        println!("      {} joined with a token from node-a", n.name);
    }
    for (n, disk) in nodes.iter().zip(disks) {
        n.run(&["drive", "add", &disk.display().to_string()])?;
        // One machine stands in for three: say which host each node is on.
        n.run(&["topology", "tag", "--host", &format!("host-{}", n.name)])?;
    }
    wait("three pools", || {
        let pools: Vec<serde_json::Value> = nodes[2].json(&["pool", "list"]).ok()?;
        (pools.len() == 3).then_some(())
    })?;
    nodes[2].show(&["node", "list"])?;
    let ids: Vec<String> = nodes
        .iter()
        .map(|n| {
            let s: serde_json::Value = n.json(&["cluster", "status"])?;
            s["node"].as_str().map(str::to_owned).context("a node id")
        })
        .collect::<Result<_>>()?;

    step(
        first + 1,
        "a 2-way replicated volume, mounted on the node that holds neither leg: dm-raid1 over NVMe/TCP",
    );
    nodes[0].show(&[
        "volume",
        "create",
        "shared",
        "--size",
        "256M",
        "--repl",
        "2",
        "--nodes",
        "node-a,node-b",
    ])?;
    let v: VolumeView = nodes[2].json(&["volume", "mount", "shared"])?;
    let at = PathBuf::from(v.mountpoint.clone().context("mounted")?);
    let written = write_file(&at.join("data"), 7, 32)?;
    println!("      wrote 32 MiB on node-c, sha256 {written}");
    let raid = format!("pxd-{}-raid-{}", ids[2], v.id);
    println!("      raid on node-c: {}", raid_health(&raid)?);
    nodes[2].show(&["volume", "inspect", "shared"])?;
    cmd("sync", &[])?;
    let sums = leg_sums(&v, &ids, 64 << 20)?;
    ensure!(sums[0] == sums[1], "the legs differ: {sums:?}");
    println!(
        "      the legs on node-a and node-b, read directly, are equal: sha256 {}",
        sums[0]
    );

    step(
        first + 2,
        "kill -9 pxd on the attach node, then on a replica node, under a writer: the raid stays AA; a scrub finds the legs equal",
    );
    let writer = Writer::start(at.join("busy"));
    for i in [2, 0] {
        nodes[i].kill();
        std::thread::sleep(Duration::from_secs(1));
        nodes[i].start()?;
        println!(
            "      {} killed and restarted; raid {}",
            nodes[i].name,
            raid_health(&raid)?
        );
    }
    let writes = writer.stop()?;
    ensure!(raid_health(&raid)? == "AA", "a leg degraded");
    println!("      {writes} writes, no errors, both legs in sync throughout");
    println!("      a scrub: node-c's raid reads both legs and counts the sectors that differ");
    let out = nodes[0].show(&["volume", "check", "shared"])?;
    ensure!(out.contains("mismatch_cnt 0"), "the legs differ: {out}");
    println!("      and weekly from now on, on every attached replicated volume:");
    let out = nodes[0].show(&["cluster", "options", "--scrub-interval", "7d"])?;
    ensure!(out.contains("every 604800 s"), "the schedule: {out}");

    step(
        first + 3,
        "a 3-way replicated volume lowered to 2 replicas and raised to 3 again while it is written: node-a's raid is re-assembled without node-b's leg, nothing resynced; then a new leg gets only the blocks the volume maps",
    );
    nodes[0].show(&[
        "volume", "create", "trio", "--size", "64M", "--fs", "raw", "--repl", "3",
    ])?;
    let t: VolumeView = nodes[0].json(&["volume", "attach", "trio"])?;
    let trio_raid = format!("pxd-{}-raid-{}", ids[0], t.id);
    println!("      raid on node-a: {}", raid_health(&trio_raid)?);
    let writer = Writer::start(t.device.clone().context("a device")?);
    println!("      $ pxd volume ha-update trio --repl 2 --node node-b");
    nodes[0].run(&[
        "volume",
        "ha-update",
        "trio",
        "--repl",
        "2",
        "--node",
        "node-b",
    ])?;
    let writes = writer.stop()?;
    let health = raid_health(&trio_raid)?;
    ensure!(health == "AA", "the raid after ha-update: {health}");
    println!("      {writes} writes meanwhile, no errors; raid on node-a: {health}");
    wait("node-b to free its leg of trio", || {
        let freed = !cmd("dmsetup", &["ls"])
            .ok()?
            .contains(&format!("pxd-{}-thin-{}", ids[1], t.id));
        freed.then_some(())
    })?;
    println!("      node-b's thin devices of trio are gone");
    println!("      and back to 3: a new leg on node-b, copied while the volume is written");
    let writer = Writer::start(t.device.clone().context("a device")?);
    nodes[0].show(&[
        "volume",
        "ha-update",
        "trio",
        "--repl",
        "3",
        "--node",
        "node-b",
    ])?;
    wait(
        "the new leg of trio to be copied, joined and checked",
        || {
            let v: VolumeView = nodes[0].json(&["volume", "inspect", "trio"]).ok()?;
            let up = v
                .replicas
                .iter()
                .all(|r| r.state == pxd::store::types::ReplicaState::Up);
            (up && v.build.is_none()).then_some(())
        },
    )?;
    let writes = writer.stop()?;
    let health = raid_health(&trio_raid)?;
    ensure!(health == "AAA", "the raid after the raise: {health}");
    println!("      {writes} writes meanwhile, no errors; raid on node-a: {health}");
    nodes[0].show(&["volume", "rebuild-status", "trio"])?;
    nodes[0].show(&["volume", "inspect", "trio"])?;

    step(
        first + 4,
        "node-c is lost (its daemon and its link): node-b takes the volume over with --force",
    );
    nodes[2].kill();
    cmd("ip", &["-n", &ns(2), "link", "set", "eth0", "down"])?;
    wait("node-b to see node-c offline", || {
        let list: Vec<serde_json::Value> = nodes[1].json(&["node", "list"]).ok()?;
        let c = list.iter().find(|n| n["name"] == "node-c")?;
        (c["liveness"] != "online").then_some(())
    })?;
    println!("      node-c is offline; its lease runs out, so the forced attach waits it out");
    println!("      $ pxd volume attach shared --force   (on node-b)");
    let asked = Instant::now();
    nodes[1].run(&["volume", "attach", "shared", "--force"])?;
    println!("      attached on node-b after {:.1?}", asked.elapsed());
    let v: VolumeView = nodes[1].json(&["volume", "mount", "shared"])?;
    let at = PathBuf::from(v.mountpoint.context("mounted")?);
    let read = sha256_file(&at.join("data"))?;
    ensure!(read == written, "node-b reads {read}");
    println!("      node-b reads the file back: sha256 {read}");
    nodes[1].show(&["volume", "inspect", "shared"])?;

    step(
        first + 5,
        "node-c comes back, and its disk is replaced by a new one while node-b writes a volume with a leg there: that leg is built on node-a first, then node-c's pool is made anew on the new disk",
    );
    cmd("ip", &["-n", &ns(2), "link", "set", "eth0", "up"])?;
    nodes[2].start()?;
    wait("node-b to see node-c online again", || {
        let list: Vec<serde_json::Value> = nodes[1].json(&["node", "list"]).ok()?;
        let c = list.iter().find(|n| n["name"] == "node-c")?;
        (c["liveness"] == "online").then_some(())
    })?;
    // trio has a leg on every node: there would be nowhere to move node-c's.
    nodes[0].run(&["volume", "detach", "trio"])?;
    nodes[0].run(&["volume", "delete", "trio"])?;
    nodes[1].show(&[
        "volume",
        "create",
        "moving",
        "--size",
        "128M",
        "--repl",
        "2",
        "--nodes",
        "node-b,node-c",
    ])?;
    let m: VolumeView = nodes[1].json(&["volume", "mount", "moving"])?;
    let m_at = PathBuf::from(m.mountpoint.clone().context("mounted")?);
    let m_written = write_file(&m_at.join("data"), 11, 16)?;
    println!("      wrote 16 MiB to moving on node-b, sha256 {m_written}");
    let writer = Writer::start(m_at.join("busy"));
    let (old, new) = (
        disks[2].display().to_string(),
        disks[3].display().to_string(),
    );
    nodes[2].show(&["drive", "replace", &old, &new])?;
    let raid = format!("pxd-{}-raid-{}", ids[1], m.id);
    // Each raid health seen on node-b while the leg moves: it never runs on one leg.
    let mut healths: Vec<String> = Vec::new();
    let made_anew = wait("node-c's pool made anew on the new disk", || {
        if let Ok(h) = raid_health(&raid) {
            if healths.last() != Some(&h) {
                healths.push(h);
            }
        }
        let v: VolumeView = nodes[1].json(&["volume", "inspect", "moving"]).ok()?;
        let moved = v
            .replicas
            .iter()
            .all(|r| r.node_name != "node-c" && r.state == pxd::store::types::ReplicaState::Up);
        let pools: Vec<pxd::api::pools::PoolView> = nodes[2].json(&["pool", "list"]).ok()?;
        let c = pools.iter().find(|p| p.drives.contains(&new))?;
        let online = c.health == pxd::store::types::PoolHealth::Online
            && c.members
                .iter()
                .all(|m| m.state == Some(pxd::store::types::DriveState::Online));
        (moved && v.build.is_none() && online).then_some(())
    });
    if made_anew.is_err() {
        let _ = nodes[1].show(&["volume", "inspect", "moving"]);
        let _ = nodes[2].show(&["pool", "list"]);
        for n in &nodes {
            let log = std::fs::read_to_string(n.dir.join("daemon.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            println!("--- the end of {}'s log ---", n.name);
            lines[lines.len().saturating_sub(40)..]
                .iter()
                .for_each(|l| println!("{l}"));
        }
    }
    made_anew?;
    let writes = writer.stop()?;
    println!("      the raid on node-b went {}", healths.join(" -> "));
    ensure!(
        healths
            .iter()
            .all(|h| h.chars().filter(|c| c.eq_ignore_ascii_case(&'a')).count() >= 2),
        "the raid ran on fewer than two live legs while the leg moved"
    );
    let health = raid_health(&raid)?;
    ensure!(health == "AA", "the raid after the replace: {health}");
    println!("      {writes} writes meanwhile, no errors; raid on node-b: {health}");
    nodes[1].show(&["volume", "rebuild-status", "moving"])?;
    nodes[2].show(&["pool", "list"])?;
    let read = sha256_file(&m_at.join("data"))?;
    ensure!(read == m_written, "node-b reads {read}");
    println!("      node-b reads the file back: sha256 {read}");
    for n in &mut nodes {
        n.kill();
    }
    Ok(())
}
