//! `pxd volume`, `pxd drive add` and `pxd pool list`: clients of the volume and pool routes.
//! Options are passed on as the strings the user typed; the daemon parses and checks them,
//! so the CLI, REST and the Docker plugin refuse bad input the same way.

use super::{print_json, seg, CliError};
use crate::api::attach::{AttachRequest, DetachRequest, ATTACH_WAIT};
use crate::api::client::BlockingClient;

/// How long the CLI waits for calls that wait on other nodes (attach, mount): the daemon's
/// own wait and a margin.
const ATTACH_CALL: std::time::Duration =
    ATTACH_WAIT.saturating_add(std::time::Duration::from_secs(20));
use crate::api::pools::{AddDriveRequest, DriveAdded, PoolView};
use crate::api::snapshots::{CloneRequest, RestoreRequest, SnapshotRequest};
use crate::api::volumes::{
    CreateRequest, Deleted, MountRequest, ResizeRequest, SnapshotView, VolumeView,
};
use crate::cli::output::{bytes, table};
use crate::store::types::{DriveState, PoolHealth, Secret};
use clap::Subcommand;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum VolumeCommand {
    /// Create a volume: `pxd volume create db --size 10G`, or `pxd volume create size=10G,name=db`.
    Create {
        /// The name, or an inline spec `size=10G,fs=xfs,name=db`.
        spec: String,
        /// Size: bytes, or a number with K, M, G, T or P (powers of 1024).
        #[arg(long)]
        size: Option<String>,
        /// ext4, xfs or raw.
        #[arg(long)]
        fs: Option<String>,
        /// Pool class: high, medium or low.
        #[arg(long = "io_priority")]
        io_priority: Option<String>,
        /// Replicas (1 to 3).
        #[arg(long)]
        repl: Option<String>,
        /// IOPS limits `R,W` (or one value for both; `max` for none one way), held for the
        /// volume as a whole, whoever does the I/O.
        #[arg(long = "max_iops")]
        max_iops: Option<String>,
        /// Bandwidth limits `R,W` in bytes a second (`4M`), held the same way.
        #[arg(long = "max_bandwidth")]
        max_bandwidth: Option<String>,
        /// Label KEY=VALUE (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Encrypt with dm-crypt (a random key, wrapped by the cluster key).
        #[arg(long)]
        secure: bool,
        /// Encrypt with a key derived from a passphrase, read from FILE, - (stdin) or
        /// env:NAME; never given on the command line.
        #[arg(long = "secret_key", value_name = "SOURCE")]
        secret_key: Option<String>,
        /// Only on these nodes (names or ids, comma-separated).
        #[arg(long)]
        nodes: Option<String>,
        /// Only in these zones (comma-separated).
        #[arg(long)]
        zones: Option<String>,
        /// Only in these racks (comma-separated).
        #[arg(long)]
        racks: Option<String>,
        /// Place what the cluster allows (fewer replicas, or replicas sharing a machine)
        /// instead of refusing; the shortfall is shown by `volume inspect`.
        #[arg(long = "best_effort")]
        best_effort: bool,
    },
    /// List volumes.
    List,
    /// Show one volume with its stack, use, mount point and snapshots.
    Inspect { volume: String },
    /// Grow a volume (online, with its filesystem), or change its replica count (as
    /// `ha-update`).
    Update {
        volume: String,
        #[arg(long)]
        size: Option<String>,
        #[arg(long)]
        repl: Option<u8>,
        /// How long a leg may stay stale before it is replaced: seconds or with a unit
        /// (90s, 10m, 1h), 10 seconds to 30 days; `cluster` takes the cluster's again.
        #[arg(long, value_parser = parse_replica_timeout)]
        replica_timeout: Option<ReplicaTimeout>,
        /// New IOPS limits `R,W` (one value for both, `max` for none one way), or `none`.
        #[arg(long = "max_iops")]
        max_iops: Option<String>,
        /// New bandwidth limits `R,W` in bytes a second, or `none`.
        #[arg(long = "max_bandwidth")]
        max_bandwidth: Option<String>,
    },
    /// Change the replica count of a live volume by one. Lowering drops a replica (the one
    /// on --node, or one not in sync, or one not on the attach node) and frees its space.
    /// Raising places a new replica (on --node when given) and copies what the volume
    /// holds to it while it runs; `rebuild-status` follows the copy.
    HaUpdate {
        volume: String,
        #[arg(long)]
        repl: u8,
        /// The node whose replica goes when lowering, or that takes the new one when
        /// raising.
        #[arg(long)]
        node: Option<String>,
    },
    /// How far a new replica's copy is: round, bytes copied and left, rate, cut-over pause;
    /// on the attach node, the raid's resync too.
    RebuildStatus {
        volume: String,
        /// Wait until the copy and any resync are over (with a progress bar on a terminal).
        #[arg(long)]
        watch: bool,
    },
    /// Live I/O of the volumes whose device is on this node (or of VOL): reads and writes a
    /// second, MiB a second, p50/p99 latency, the limit, and the cgroups doing the I/O.
    Stats {
        volume: Option<String>,
        /// Print a new line every second until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// Delete a volume and free its space (refused while mounted).
    Delete { volume: String },
    /// Mount a volume (by default under the daemon's mount root).
    Mount {
        volume: String,
        #[arg(long)]
        path: Option<PathBuf>,
    },
    /// Unmount a volume (a replicated volume that the mount attached is detached too).
    Unmount { volume: String },
    /// Attach a volume on a node (this one by default): a replicated volume's raid is built
    /// there over its legs.
    Attach {
        volume: String,
        /// A member's name or id.
        #[arg(long)]
        node: Option<String>,
        /// Take it from the node it is attached on (failover; a new epoch fences that node).
        #[arg(long)]
        force: bool,
    },
    /// Detach a volume from its node (refused while mounted).
    Detach {
        volume: String,
        /// Forget the attachment at once, for an attach node that is gone.
        #[arg(long)]
        force: bool,
    },
    /// Check a replicated volume's raid (a scrub): every leg is read and the sectors that
    /// differ are counted (mismatch_cnt); 0 is clean. Waits for the result.
    Check {
        volume: String,
        /// Seconds to wait for the result; the check goes on past it, and `volume inspect`
        /// shows its result.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Snapshots of a volume.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Clone a volume, or one of its snapshots, into a new volume.
    Clone {
        volume: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        snapshot: Option<String>,
        #[arg(long = "read-only")]
        read_only: bool,
    },
    /// Put a snapshot's data back into its (unmounted) volume.
    Restore {
        volume: String,
        #[arg(long)]
        snapshot: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Take a crash-consistent snapshot.
    Create {
        volume: String,
        #[arg(long)]
        name: String,
    },
    List {
        volume: String,
    },
    Delete {
        volume: String,
        snapshot: String,
    },
}

/// The options of `volume create`, from the inline spec and the flags (flags win). As in
/// [`crate::volume::spec::VolumeSpec::parse_inline`], whitespace after a comma separates and
/// is dropped; keys and values are sent as typed, for the daemon to take or refuse.
fn create_options(
    spec: &str,
    flags: &[(&str, &Option<String>)],
    labels: &[String],
    switches: &[(&str, bool)],
) -> Result<BTreeMap<String, String>, CliError> {
    let mut options = BTreeMap::new();
    if spec.contains('=') {
        for pair in spec
            .split(',')
            .map(str::trim_start)
            .filter(|p| !p.is_empty())
        {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| CliError::Usage(format!("spec: {pair:?} is not key=value")))?;
            if k == "label" || k == "labels" {
                let joined: &mut String = options.entry("label".into()).or_default();
                if !joined.is_empty() {
                    joined.push(';');
                }
                joined.push_str(v);
            } else {
                options.insert(k.to_owned(), v.to_owned());
            }
        }
    } else {
        options.insert("name".into(), spec.to_owned());
    }
    for (k, v) in flags {
        if let Some(v) = v {
            options.insert((*k).to_owned(), v.clone());
        }
    }
    if !labels.is_empty() {
        let joined: &mut String = options.entry("label".into()).or_default();
        for l in labels {
            if !joined.is_empty() {
                joined.push(';');
            }
            joined.push_str(l);
        }
    }
    for (k, on) in switches {
        if *on {
            options.insert((*k).to_owned(), "true".into());
        }
    }
    Ok(options)
}

fn print_volumes(volumes: &[VolumeView]) {
    let rows: Vec<Vec<String>> = volumes
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                v.id.clone(),
                bytes(v.size),
                v.fs.to_string(),
                v.io_priority.to_string(),
                if v.encrypted { "yes" } else { "no" }.into(),
                v.snapshots.len().to_string(),
                v.mountpoint.clone().unwrap_or_else(|| "-".into()),
                format!("{:?}", v.phase).to_lowercase(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "NAME",
                "ID",
                "SIZE",
                "FS",
                "PRIORITY",
                "ENCRYPTED",
                "SNAPS",
                "MOUNT",
                "STATE"
            ],
            &rows
        )
    );
}

fn print_volume(v: &VolumeView) {
    println!("volume:     {} ({})", v.name, v.id);
    println!("size:       {}", bytes(v.size));
    if let Some(u) = v.usage {
        println!("used:       {} (mapped in the pool)", bytes(u));
    }
    println!("fs:         {}", v.fs);
    println!("priority:   {}", v.io_priority);
    println!(
        "encrypted:  {}",
        if v.encrypted {
            "yes (aes-xts-plain64)"
        } else {
            "no"
        }
    );
    if v.read_only {
        println!("read-only:  yes");
    }
    for r in &v.replicas {
        println!(
            "replica:    node {} ({}), pool {}, {}",
            r.node_name,
            r.node,
            r.pool,
            format!("{:?}", r.state).to_lowercase()
        );
    }
    if let Some(p) = &v.placement {
        println!("placement:  {}", p.explanation);
        if let Some(s) = &p.shortfall {
            println!("shortfall:  {s}");
        }
    }
    if let Some(a) = &v.attachment {
        println!(
            "attached:   node {} ({}), epoch {}, {}",
            a.node_name,
            a.node,
            a.epoch,
            format!("{:?}", a.state).to_lowercase()
        );
    }
    if let Some(r) = &v.raid {
        println!(
            "raid:       {} ({}, {} of {} in sync)",
            r.health,
            r.action,
            crate::volume::spec::human(r.synced_bytes),
            crate::volume::spec::human(r.total_bytes)
        );
    }
    if let Some(l) = &v.last_leg_loss {
        println!(
            "leg lost:   node {} at epoch {}, writes held {} ms before it was dropped",
            l.node, l.epoch, l.held_ms
        );
    }
    for loss in &v.accepted_losses {
        println!("loss:       {loss}");
    }
    if let Some(k) = &v.check {
        let state = match k.mismatches {
            Some(m) => format!("mismatch_cnt {m}"),
            None if k.started => "running".to_owned(),
            None => "asked".to_owned(),
        };
        println!(
            "check:      {state} (asked at {}, epoch {})",
            k.requested, k.epoch
        );
    }
    if let Some(t) = v.replica_timeout_s {
        println!("replica timeout: {t} s (its own)");
    }
    if let Some(n) = v.evacuating {
        println!("moving:     the replica on node {n} off its leaving drive; it stays until the new one is up");
    }
    if let Some(b) = &v.build {
        println!("rebuild:    {}", build_line(b));
    } else if let Some(b) = &v.last_build {
        println!("rebuilt:    {}", build_line(b));
    }
    println!("stack:      {}", v.stack.join(" <- "));
    if let Some(d) = &v.device {
        println!("device:     {}", d.display());
    }
    println!("mount:      {}", v.mountpoint.as_deref().unwrap_or("-"));
    if !v.labels.is_empty() {
        let l: Vec<String> = v.labels.iter().map(|(k, x)| format!("{k}={x}")).collect();
        println!("labels:     {}", l.join(","));
    }
    let side = |n: u64, f: &dyn Fn(u64) -> String| if n == 0 { "max".to_owned() } else { f(n) };
    if let Some(l) = v.max_iops {
        let n = |x: u64| x.to_string();
        println!(
            "max_iops:   {} read, {} write",
            side(l.read, &n),
            side(l.write, &n)
        );
    }
    if let Some(l) = v.max_bandwidth {
        let b = |x: u64| format!("{}/s", bytes(x));
        println!(
            "max_bw:     {} read, {} write",
            side(l.read, &b),
            side(l.write, &b)
        );
    }
    for s in &v.snapshots {
        println!("snapshot:   {} ({})", s.name, s.id);
    }
}

/// A new leg's copy in one line: where, how far, how fast.
/// What is still running on volume `v`: its new leg's copy, else its raid's resync (as
/// done, total, and a line saying what).
fn running(v: &VolumeView) -> Option<(u64, u64, String)> {
    if let Some(b) = &v.build {
        return Some((
            b.copied_bytes,
            b.allocated_bytes.max(b.copied_bytes),
            build_line(b),
        ));
    }
    v.raid
        .as_ref()
        .filter(|r| r.action != "idle" && r.synced_bytes < r.total_bytes)
        .map(|r| (r.synced_bytes, r.total_bytes, format!("raid {}", r.action)))
}

/// Polls volume `v` at `path` every second until nothing [`running`] is left, with a bar
/// when watched; returns the volume as it is then.
fn watch_rebuild(
    json: bool,
    c: &BlockingClient,
    path: &str,
    mut v: VolumeView,
) -> Result<VolumeView, CliError> {
    let bar = super::progress::watched(json).then(super::progress::Bar::default);
    while let Some((done, total, what)) = running(&v) {
        if let Some(bar) = &bar {
            bar.show(done, total, format!("{}: {what}", v.name));
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
        v = c.get(path)?;
    }
    if let Some(bar) = &bar {
        bar.clear();
    }
    Ok(v)
}

fn build_line(b: &crate::store::types::Build) -> String {
    use crate::volume::spec::human;
    let phase = format!("{:?}", b.phase).to_lowercase();
    let mut line = format!(
        "{phase}: node {} from node {}, round {}, {} copied of {} allocated, {} left, {}/s",
        b.target,
        b.source,
        b.rounds,
        human(b.copied_bytes),
        human(b.allocated_bytes),
        human(b.left_bytes),
        human(b.rate)
    );
    if let Some(p) = b.pause_ms {
        line.push_str(&format!(", cut-over pause {p} ms"));
    }
    if let Some(e) = &b.error {
        line.push_str(&format!(" (last error: {e})"));
    }
    line
}

fn print_snapshots(snaps: &[SnapshotView]) {
    let rows: Vec<Vec<String>> = snaps
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.id.clone(),
                s.volume.clone(),
                s.time.to_string(),
                if s.taken { "taken" } else { "pending" }.into(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["NAME", "ID", "VOLUME", "TIME", "STATE"], &rows)
    );
}

/// A volume's replica timeout as `volume update` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaTimeout {
    /// The cluster's.
    Cluster,
    Seconds(u64),
}

fn parse_replica_timeout(s: &str) -> Result<ReplicaTimeout, String> {
    if s == "cluster" {
        return Ok(ReplicaTimeout::Cluster);
    }
    super::parse_ttl(s)
        .map(ReplicaTimeout::Seconds)
        .map_err(|e| e.replacen("ttl", "replica timeout", 1))
}

/// `volume ha-update` (and `volume update --repl`): answers once the change is done.
fn ha_update(
    c: &BlockingClient,
    volume: &str,
    repl: u8,
    node: Option<String>,
) -> Result<VolumeView, CliError> {
    let req = crate::api::ha::HaRequest { repl, node };
    Ok(c.post_within(
        &format!("/v1/volumes/{}/ha", seg("volume", volume)?),
        &req,
        ATTACH_CALL,
    )?)
}

pub fn volume(json: bool, c: &BlockingClient, cmd: &VolumeCommand) -> Result<(), CliError> {
    let show = |v: VolumeView| {
        if json {
            print_json(&v)
        } else {
            print_volume(&v)
        }
    };
    match cmd {
        VolumeCommand::Create {
            spec,
            size,
            fs,
            io_priority,
            repl,
            max_iops,
            max_bandwidth,
            labels,
            secure,
            secret_key,
            nodes,
            zones,
            racks,
            best_effort,
        } => {
            let options = create_options(
                spec,
                &[
                    ("size", size),
                    ("fs", fs),
                    ("io_priority", io_priority),
                    ("repl", repl),
                    ("max_iops", max_iops),
                    ("max_bandwidth", max_bandwidth),
                    ("nodes", nodes),
                    ("zones", zones),
                    ("racks", racks),
                ],
                labels,
                &[("secure", *secure), ("best_effort", *best_effort)],
            )?;
            let secret_key = match secret_key {
                Some(source) => Some(Secret::new(
                    super::secret::read("secret_key", source)?.to_string(),
                )),
                None => None,
            };
            let req = CreateRequest {
                options,
                secret_key,
            };
            show(super::progress::while_running(
                json,
                "creating the volume",
                || c.post("/v1/volumes", &req),
            )?);
        }
        VolumeCommand::List => {
            let vols: Vec<VolumeView> = c.get("/v1/volumes")?;
            if json {
                print_json(&vols);
            } else {
                print_volumes(&vols);
            }
        }
        VolumeCommand::Inspect { volume } => {
            show(c.get(&format!("/v1/volumes/{}", seg("volume", volume)?))?);
        }
        VolumeCommand::Update {
            volume,
            size,
            repl,
            replica_timeout,
            max_iops,
            max_bandwidth,
        } => match (size, repl, replica_timeout) {
            (None, None, None) if max_iops.is_some() || max_bandwidth.is_some() => {
                let req = crate::api::limits::LimitsRequest {
                    max_iops: max_iops.clone(),
                    max_bandwidth: max_bandwidth.clone(),
                };
                show(c.put(
                    &format!("/v1/volumes/{}/limits", seg("volume", volume)?),
                    &req,
                )?);
            }
            _ if max_iops.is_some() || max_bandwidth.is_some() => {
                return Err(CliError::Usage(
                    "volume update: give the limits alone, or one of --size, --repl or \
                     --replica-timeout"
                        .into(),
                ))
            }
            (None, None, Some(t)) => {
                let req = crate::api::ha::ReplicaTimeoutRequest {
                    replica_timeout_s: match t {
                        ReplicaTimeout::Cluster => None,
                        ReplicaTimeout::Seconds(s) => Some(*s),
                    },
                };
                show(c.put(
                    &format!("/v1/volumes/{}/replica-timeout", seg("volume", volume)?),
                    &req,
                )?);
            }
            (Some(size), None, None) => {
                let req = ResizeRequest { size: size.clone() };
                show(c.put(&format!("/v1/volumes/{}", seg("volume", volume)?), &req)?);
            }
            (None, Some(repl), None) => show(ha_update(c, volume, *repl, None)?),
            _ => {
                return Err(CliError::Usage(
                    "volume update: give one of --size, --repl, --replica-timeout, or the \
                     limits (--max_iops, --max_bandwidth)"
                        .into(),
                ))
            }
        },
        VolumeCommand::HaUpdate { volume, repl, node } => {
            show(ha_update(c, volume, *repl, node.clone())?)
        }
        VolumeCommand::Stats { volume, watch } => {
            super::stats::volume_stats(c, volume.as_deref(), *watch, json)?
        }
        VolumeCommand::RebuildStatus { volume, watch } => {
            let path = format!("/v1/volumes/{}", seg("volume", volume)?);
            let mut v: VolumeView = c.get(&path)?;
            if *watch {
                v = watch_rebuild(json, c, &path, v)?;
            }
            if json {
                print_json(&v.build);
            } else {
                match (&v.build, &v.last_build) {
                    (Some(b), _) => println!("{}: {}", v.name, build_line(b)),
                    (None, Some(b)) => {
                        println!("{}: none now; the last: {}", v.name, build_line(b))
                    }
                    (None, None) => println!("{}: no new replica is being built", v.name),
                }
            }
        }
        VolumeCommand::Delete { volume } => {
            let d: Deleted = c.delete(&format!("/v1/volumes/{}", seg("volume", volume)?))?;
            if json {
                print_json(&d);
            } else {
                println!("volume {} deleted", d.deleted);
            }
        }
        VolumeCommand::Mount { volume, path } => {
            let req = MountRequest { path: path.clone() };
            show(c.post_within(
                &format!("/v1/volumes/{}/mount", seg("volume", volume)?),
                &req,
                ATTACH_CALL,
            )?);
        }
        VolumeCommand::Unmount { volume } => {
            show(c.post_within(
                &format!("/v1/volumes/{}/unmount", seg("volume", volume)?),
                &MountRequest::default(),
                ATTACH_CALL,
            )?);
        }
        VolumeCommand::Attach {
            volume,
            node,
            force,
        } => {
            let req = AttachRequest {
                node: node.clone(),
                force: *force,
            };
            show(c.post_within(
                &format!("/v1/volumes/{}/attach", seg("volume", volume)?),
                &req,
                ATTACH_CALL,
            )?);
        }
        VolumeCommand::Check { volume, timeout } => {
            let path = format!("/v1/volumes/{}", seg("volume", volume)?);
            let asked: VolumeView = c.post(&format!("{path}/check"), &serde_json::json!({}))?;
            let requested = asked.check.as_ref().map(|k| k.requested);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(*timeout);
            loop {
                let v: VolumeView = c.get(&path)?;
                let ours = v.check.as_ref().filter(|k| Some(k.requested) == requested);
                let Some(check) = ours else {
                    return Err(CliError::Usage(format!(
                        "the check of volume {} was dropped (the volume was detached) or replaced by a later one",
                        v.name
                    )));
                };
                if let Some(m) = check.mismatches {
                    if json {
                        print_json(&v);
                    } else {
                        println!("volume {}: raid check done, mismatch_cnt {m}", v.name);
                    }
                    break;
                }
                if std::time::Instant::now() > deadline {
                    return Err(CliError::Usage(format!(
                        "the check of volume {} is still running after {timeout} s; `pxd volume inspect {}` shows its result when done",
                        v.name, v.name
                    )));
                }
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
        VolumeCommand::Detach { volume, force } => {
            let req = DetachRequest { force: *force };
            show(c.post_within(
                &format!("/v1/volumes/{}/detach", seg("volume", volume)?),
                &req,
                ATTACH_CALL,
            )?);
        }
        VolumeCommand::Clone {
            volume,
            name,
            snapshot,
            read_only,
        } => {
            let req = CloneRequest {
                name: name.clone(),
                snapshot: snapshot.clone(),
                read_only: *read_only,
            };
            show(c.post(
                &format!("/v1/volumes/{}/clone", seg("volume", volume)?),
                &req,
            )?);
        }
        VolumeCommand::Restore { volume, snapshot } => {
            let req = RestoreRequest {
                snapshot: snapshot.clone(),
            };
            show(c.post(
                &format!("/v1/volumes/{}/restore", seg("volume", volume)?),
                &req,
            )?);
        }
        VolumeCommand::Snapshot(SnapshotCommand::Create { volume, name }) => {
            let req = SnapshotRequest { name: name.clone() };
            let s: SnapshotView = c.post(
                &format!("/v1/volumes/{}/snapshots", seg("volume", volume)?),
                &req,
            )?;
            if json {
                print_json(&s);
            } else {
                println!("snapshot {} of {} taken ({})", s.name, s.volume, s.id);
            }
        }
        VolumeCommand::Snapshot(SnapshotCommand::List { volume }) => {
            let s: Vec<SnapshotView> =
                c.get(&format!("/v1/volumes/{}/snapshots", seg("volume", volume)?))?;
            if json {
                print_json(&s);
            } else {
                print_snapshots(&s);
            }
        }
        VolumeCommand::Snapshot(SnapshotCommand::Delete { volume, snapshot }) => {
            let d: Deleted = c.delete(&format!(
                "/v1/volumes/{}/snapshots/{}",
                seg("volume", volume)?,
                seg("snapshot", snapshot)?
            ))?;
            if json {
                print_json(&d);
            } else {
                println!("snapshot {} deleted", d.deleted);
            }
        }
    }
    Ok(())
}

pub fn drive_add(
    json: bool,
    c: &BlockingClient,
    path: &std::path::Path,
    force: bool,
) -> Result<(), CliError> {
    let req = AddDriveRequest {
        path: path.to_owned(),
        force,
    };
    let what = format!("benchmarking and adding {}", path.display());
    let a: DriveAdded = super::progress::while_running(json, &what, || c.post("/v1/drives", &req))?;
    if json {
        print_json(&a);
    } else {
        let r = &a.benchmark.random_read;
        let w = a.benchmark.random_write.unwrap_or(*r);
        println!(
            "{} added to pool {} (class {}): random read {:.0} IOPS p50 {} us, random write {:.0} IOPS p50 {} us",
            a.path.display(),
            a.pool,
            a.class,
            r.iops,
            r.p50_us,
            w.iops,
            w.p50_us
        );
    }
    Ok(())
}

/// What `drive remove` or `drive replace` recorded.
pub fn drive_leaving(json: bool, l: crate::api::drive_leave::DriveLeaving) -> Result<(), CliError> {
    if json {
        print_json(&l);
        return Ok(());
    }
    let moving = if l.volumes.is_empty() {
        "no replica is on it".to_string()
    } else {
        format!(
            "the replicas of {} are built elsewhere first (each under its volume's attachment)",
            l.volumes.join(", ")
        )
    };
    match &l.replacement {
        Some(by) => println!(
            "drive {} leaves pool {}: {moving}; then drive {by} takes its place in the pool, made anew",
            l.drive, l.pool
        ),
        None => println!(
            "drive {} leaves pool {}: {moving}; then the pool is taken down and the drive's label erased",
            l.drive, l.pool
        ),
    }
    Ok(())
}

/// A pool's chunk, with the dm-thin features it was made without.
fn chunk_column(p: &PoolView) -> String {
    let mut out = bytes(p.chunk_bytes);
    if !p.zero_new_chunks {
        out.push_str(", no zeroing");
    }
    if !p.discard_passdown {
        out.push_str(", no passdown");
    }
    out
}

pub fn pool_list(json: bool, c: &BlockingClient) -> Result<(), CliError> {
    let pools: Vec<PoolView> = c.get("/v1/pools")?;
    if json {
        print_json(&pools);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = pools
        .iter()
        .map(|p| {
            let (data, meta) = match &p.usage {
                Some(u) => (
                    format!("{} / {}", bytes(u.data_used), bytes(u.data_total)),
                    format!("{} / {} blocks", u.meta_used_blocks, u.meta_total_blocks),
                ),
                None => ("-".into(), "-".into()),
            };
            let drives: Vec<String> = p
                .members
                .iter()
                .map(|m| {
                    let at = m.path.as_deref().unwrap_or("not found");
                    let leaving = if m.leaving.is_some() { ", LEAVING" } else { "" };
                    match m.state {
                        Some(DriveState::Failed) => format!("{} ({at}, FAILED{leaving})", m.uuid),
                        Some(DriveState::Adding | DriveState::Labelling) => {
                            format!("{} ({at}, being added)", m.uuid)
                        }
                        _ => format!("{} ({at}{leaving})", m.uuid),
                    }
                })
                .collect();
            let state = match (&p.health, &p.near_full) {
                (PoolHealth::Online, None) => "online".to_string(),
                (PoolHealth::Online, Some(full)) => format!("near full: {full}"),
                (h, _) => format!("{}: {}", h.name(), h.reason().unwrap_or_default()),
            };
            vec![
                p.id.clone(),
                p.class.to_string(),
                drives.join(", "),
                data,
                meta,
                chunk_column(p),
                p.volumes.to_string(),
                state,
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["ID", "CLASS", "DRIVES", "DATA", "METADATA", "CHUNK", "VOLUMES", "STATE"],
            &rows
        )
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_specs_and_flags_make_one_set_of_options() {
        let o = create_options(
            "size=10G,fs=xfs,name=db,label=a=1",
            &[
                ("size", &Some("20G".into())),
                ("fs", &None),
                ("io_priority", &Some("high".into())),
                ("repl", &None),
                ("max_iops", &None),
                ("max_bandwidth", &None),
                ("racks", &Some("r1,r2".into())),
            ],
            &["b=2".into()],
            &[("secure", true), ("best_effort", false)],
        )
        .unwrap();
        assert_eq!(o["size"], "20G");
        assert_eq!(o["fs"], "xfs");
        assert_eq!(o["name"], "db");
        assert_eq!(o["label"], "a=1;b=2");
        assert_eq!(o["secure"], "true");
        assert_eq!(o["racks"], "r1,r2");
        assert!(!o.contains_key("best_effort"));
        // Values go to the daemon as typed; only whitespace after a comma separates.
        let o = create_options("size=1G, name= lead,label=a=1 ", &[], &[], &[]).unwrap();
        assert_eq!((o["size"].as_str(), o["name"].as_str()), ("1G", " lead"));
        assert_eq!(o["label"], "a=1 ");
        let o = create_options("trail\n", &[], &[], &[]).unwrap();
        assert_eq!(o["name"], "trail\n");
        let o = create_options("db", &[], &[], &[]).unwrap();
        assert_eq!(
            o.into_iter().collect::<Vec<_>>(),
            [("name".into(), "db".into())]
        );
    }
}
