//! The CLI (DESIGN §8): nouns, then verbs. Every command but `pxd daemon` is a client of the
//! daemon's REST API, over the unix socket by default or over TCP with `--api` and a token.

pub mod output;
pub mod progress;
pub mod secret;
pub mod stats;
pub mod storage;
pub mod topology;

use crate::api::client::{BlockingClient, ClientError, Target};
use crate::api::{
    Applied, InitRequest, InitResponse, JoinRequest, JoinResponse, KvValue, RemoveRequest,
    RemoveResponse, TokenResponse,
};
use crate::cluster::view::{NodeView, Status};
use crate::daemon::DaemonArgs;
use clap::{Parser, Subcommand};
use output::{bytes, table};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Where the local daemon's API socket is, unless `--socket` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/pxd/pxd.sock";

/// pxd: a storage node for containers whose data path is the kernel's device-mapper.
#[derive(Parser, Debug)]
#[command(
    name = "pxd",
    version,
    about,
    after_help = "Exit codes: 0 done, 1 failed, 2 bad usage or value, 3 not found, \
                  4 refused in the current state, 5 daemon or quorum unavailable (retry)."
)]
pub struct Cli {
    /// The daemon's API socket.
    #[arg(long, global = true, env = "PXD_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Talk to a daemon's TCP API at IP:PORT instead of the local socket (needs --token).
    #[arg(long, global = true, env = "PXD_API")]
    pub api: Option<SocketAddr>,
    /// Where the TCP API's bearer token is: FILE, - (stdin) or env:NAME; never the token
    /// itself. Without it, the PXD_API_TOKEN variable holds the token.
    #[arg(long, global = true, value_name = "SOURCE")]
    pub token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the node daemon.
    Daemon(DaemonArgs),
    /// The cluster: start one, join one, see it, remove members.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// The nodes of the cluster.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Small metadata in the cluster store: values under keys in namespaces.
    #[command(subcommand)]
    Kv(KvCommand),
    /// This node's drives.
    #[command(subcommand)]
    Drive(DriveCommand),
    /// Volumes: create, grow, snapshot, clone, mount, delete.
    #[command(subcommand)]
    Volume(storage::VolumeCommand),
    /// Storage pools (one per class per node).
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Fault domains: where each node sits (region, zone, rack, hypervisor, host).
    #[command(subcommand)]
    Topology(topology::TopologyCommand),
    /// Print a completion script for a shell: `source <(pxd completions bash)`.
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand, Debug)]
pub enum PoolCommand {
    /// Pools with class, drives, data and metadata use, and chunk size.
    List,
}

#[derive(Subcommand, Debug)]
pub enum DriveCommand {
    /// Whole disks of this node: size, stable id, signature, use, and whether pxd may take it.
    List,
    /// Benchmark a drive, sort it into a class, and add it to this node's pool of that class.
    Add {
        /// The drive, e.g. /dev/sdb.
        dev: PathBuf,
        /// Take a drive that carries a signature (its data is lost).
        #[arg(long)]
        force: bool,
    },
    /// Take a drive out of its pool: the replicas on the pool are built elsewhere first,
    /// then the pool (the drive is its only member) is taken down and the drive's label
    /// erased. Returns once recorded; `pxd pool list` shows the progress.
    Remove {
        /// The drive: its uuid (`pxd pool list`), or its device path on this node.
        drive: String,
    },
    /// Put a new disk in the place of a drive (failed or not): the replicas on its pool are
    /// built elsewhere first, then the pool is made anew with the new disk in the old one's
    /// place. Returns once recorded; `pxd pool list` shows the progress.
    Replace {
        /// The drive leaving: its uuid (`pxd pool list`), or its device path on this node.
        old: String,
        /// The new disk, on this node, e.g. /dev/sdc.
        new: PathBuf,
        /// Take a new disk that carries a signature (its data is lost).
        #[arg(long)]
        force: bool,
    },
    /// Re-measure a disk of this node (read-only: it may hold data) and show its class.
    Benchmark {
        /// The disk, e.g. /dev/sdb.
        dev: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Start a new cluster with this node as its only member; prints a join token.
    Init {
        #[arg(long, default_value = "pxd")]
        name: String,
    },
    /// Join the cluster a token from `pxd cluster init` or `pxd cluster token` names: the
    /// token itself (it expires), or where it is: FILE, - (stdin) or env:NAME.
    Join { token: String },
    /// Cluster id, leader, term, members and quorum, as this node sees them.
    Status,
    /// The members and their liveness.
    Members,
    /// Every pool of the cluster: node, class, zone and rack, capacity, used, and what was
    /// provisioned out of it against its overcommit limit.
    ProvisionStatus,
    /// Print a join token naming this node.
    Token {
        /// How long it is valid: seconds, or with a unit (30m, 24h, 7d); at most 30 days.
        #[arg(long, default_value = "24h", value_parser = parse_ttl)]
        ttl: u64,
    },
    /// Print the bearer token of the TCP API (for tools and `--api`).
    ApiToken,
    /// Remove a member, by id or name.
    Remove { node: String },
    /// Show the cluster-wide settings, or change those given.
    Options {
        /// Time between scheduled raid checks (scrubs) of each attached replicated volume:
        /// seconds or with a unit (30m, 24h, 7d), 1 minute to 366 days; `off` stops them.
        #[arg(long, value_parser = parse_interval)]
        scrub_interval: Option<Interval>,
        /// How long a leg may stay stale (its node gone) before a new one is built
        /// elsewhere: seconds or with a unit (90s, 10m, 1h), 10 seconds to 30 days.
        #[arg(long, value_parser = parse_ttl)]
        replica_timeout: Option<u64>,
    },
}

/// A schedule's interval in seconds, or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interval {
    Off,
    Every(u64),
}

fn parse_interval(s: &str) -> Result<Interval, String> {
    if s == "off" {
        return Ok(Interval::Off);
    }
    parse_ttl(s)
        .map(Interval::Every)
        .map_err(|e| e.replacen("ttl", "interval", 1))
}

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Every node with its role, liveness and stats.
    List {
        /// Show each node's fault-domain labels instead of its stats.
        #[arg(long)]
        labels: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum KvCommand {
    Put {
        ns: String,
        key: String,
        value: String,
    },
    Get {
        ns: String,
        key: String,
    },
    List {
        ns: String,
    },
    Delete {
        ns: String,
        key: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("--api needs --token (or PXD_API_TOKEN)")]
    NoToken,
    #[error("{0}")]
    Usage(String),
}

/// The CLI's exit codes, by what went wrong (the README lists them).
pub mod exit {
    /// Done.
    pub const OK: i32 = 0;
    /// Anything not below: the daemon failed to do it.
    pub const FAILED: i32 = 1;
    /// The command line, or a value in it, is wrong (also clap's own code).
    pub const USAGE: i32 = 2;
    /// What it names does not exist.
    pub const NOT_FOUND: i32 = 3;
    /// Refused in the current state (a volume in use, a member already there).
    pub const CONFLICT: i32 = 4;
    /// The daemon or a quorum could not be reached, or it took too long: try again.
    pub const UNAVAILABLE: i32 = 5;
}

impl CliError {
    /// The exit code for this error ([`exit`]).
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::NoToken | CliError::Usage(_) => exit::USAGE,
            CliError::Client(ClientError::Api { code, .. }) => match code.as_str() {
                "bad_request" | "rejected" | "bad_token" => exit::USAGE,
                "not_found" | "unknown_node" => exit::NOT_FOUND,
                "conflict" | "last_member" | "already_member" | "not_in_cluster"
                | "join_refused" => exit::CONFLICT,
                "no_quorum" | "timeout" | "unreachable" => exit::UNAVAILABLE,
                _ => exit::FAILED,
            },
            CliError::Client(
                ClientError::Connect { .. }
                | ClientError::Http { .. }
                | ClientError::Timeout { .. },
            ) => exit::UNAVAILABLE,
            CliError::Client(ClientError::Runtime(_)) => exit::FAILED,
        }
    }
}

fn client(cli: &Cli) -> Result<BlockingClient, CliError> {
    let target = match cli.api {
        Some(addr) => Target::Tcp {
            addr,
            token: match &cli.token {
                Some(source) => secret::read("token", source)?.to_string(),
                None => std::env::var("PXD_API_TOKEN").map_err(|_| CliError::NoToken)?,
            },
        },
        None => Target::Unix(cli.socket.clone()),
    };
    Ok(BlockingClient::new(target)?)
}

fn print_json<T: serde::Serialize>(v: &T) {
    // The API's own types always serialize.
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// One URL path segment from user input, percent-encoded: every byte but `[A-Za-z0-9._~-]`,
/// and every dot of a segment of dots only (`.`, `..`), so `/`, `?`, `#` and dot segments
/// reach the daemon inside the name, to be checked there, instead of reshaping or cutting
/// the path. An empty one would address the collection instead, so it is refused.
pub(crate) fn seg(what: &str, s: &str) -> Result<String, CliError> {
    if s.is_empty() {
        return Err(CliError::Usage(format!("{what}: must not be empty")));
    }
    let dots = s.bytes().all(|b| b == b'.');
    Ok(s.bytes()
        .map(|b| match b {
            b'.' if !dots => ".".to_owned(),
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'~' | b'-' => char::from(b).into(),
            _ => format!("%{b:02X}"),
        })
        .collect())
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map(T::to_string).unwrap_or_else(|| "-".into())
}

/// Runs a client command (everything but `daemon`).
pub fn run(cli: &Cli) -> Result<(), CliError> {
    let mut c = client(cli)?;
    if matches!(cli.command, Command::Volume(_) | Command::Drive(_)) {
        // Building a stack (a benchmark, mkfs, a snapshot of a busy volume) takes a while on a
        // slow disk; the daemon finishes it even if this client gives up.
        c.set_timeout(std::time::Duration::from_secs(900));
    }
    let c = c;
    match &cli.command {
        Command::Volume(cmd) => storage::volume(cli.json, &c, cmd),
        Command::Pool(PoolCommand::List) => storage::pool_list(cli.json, &c),
        Command::Drive(DriveCommand::Add { dev, force }) => {
            storage::drive_add(cli.json, &c, dev, *force)
        }
        Command::Drive(DriveCommand::Remove { drive }) => {
            let req = crate::api::drive_leave::RemoveDriveRequest {
                drive: drive.clone(),
            };
            storage::drive_leaving(cli.json, c.post("/v1/drives/remove", &req)?)
        }
        Command::Drive(DriveCommand::Replace { old, new, force }) => {
            let req = crate::api::drive_leave::ReplaceDriveRequest {
                old: old.clone(),
                new: new.clone(),
                force: *force,
            };
            let left = progress::while_running(cli.json, "recording the replacement", || {
                c.post("/v1/drives/replace", &req)
            })?;
            storage::drive_leaving(cli.json, left)
        }
        Command::Daemon(_) | Command::Completions { .. } => Ok(()),
        Command::Cluster(cmd) => cluster(cli, &c, cmd),
        Command::Drive(DriveCommand::List) => {
            let drives: Vec<crate::pool::drive::DriveView> = c.get("/v1/drives")?;
            if cli.json {
                print_json(&drives);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = drives
                .iter()
                .map(|d| {
                    let status = drive_status(d);
                    let kind = if d.rotational { "hdd" } else { "ssd" };
                    vec![
                        d.path.display().to_string(),
                        bytes(d.size_bytes),
                        kind.into(),
                        d.label.clone().unwrap_or_else(|| "-".into()),
                        status,
                    ]
                })
                .collect();
            print!(
                "{}",
                table(&["PATH", "SIZE", "KIND", "LABEL", "STATUS"], &rows)
            );
            Ok(())
        }
        Command::Drive(DriveCommand::Benchmark { dev }) => {
            let req = crate::api::BenchmarkRequest { path: dev.clone() };
            let b: crate::pool::drive::DriveBenchmark =
                progress::while_running(cli.json, "benchmarking (reads only)", || {
                    c.post("/v1/drives/benchmark", &req)
                })?;
            if cli.json {
                print_json(&b);
                return Ok(());
            }
            let r = &b.result.random_read;
            println!(
                "{}: class {}; 4 KiB random read {:.0} IOPS (p50 {} us, p99 {} us); \
                 sequential read {:.0} MiB/s; read-only (writes are measured when a drive is added)",
                b.path.display(),
                b.class,
                r.iops,
                r.p50_us,
                r.p99_us,
                b.result.sequential_read_mib_s
            );
            Ok(())
        }
        Command::Node(NodeCommand::List { labels }) => {
            let nodes: Vec<NodeView> = c.get("/v1/nodes")?;
            if cli.json {
                print_json(&nodes);
                return Ok(());
            }
            if *labels {
                let rows: Vec<Vec<String>> = nodes
                    .iter()
                    .map(|n| {
                        let mut row =
                            vec![n.id.to_string(), n.name.clone(), n.liveness.to_string()];
                        row.extend(
                            ::topology::Domain::ALL
                                .iter()
                                .map(|d| n.labels.get(*d).unwrap_or("-").to_owned()),
                        );
                        row
                    })
                    .collect();
                let headers = [
                    "ID",
                    "NAME",
                    "STATUS",
                    "REGION",
                    "ZONE",
                    "RACK",
                    "HYPERVISOR",
                    "HOST",
                ];
                print!("{}", table(&headers, &rows));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = nodes
                .iter()
                .map(|n| {
                    let s = n.stats.clone().unwrap_or_default();
                    vec![
                        n.id.to_string(),
                        n.name.clone(),
                        n.role.to_string(),
                        n.liveness.to_string(),
                        n.api_addr.clone(),
                        bytes(s.capacity),
                        bytes(s.used),
                        s.iops.to_string(),
                        format!("{:.0}%", s.cpu_percent),
                        format!("{}/{}", bytes(s.memory_used), bytes(s.memory_total)),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &[
                        "ID", "NAME", "ROLE", "STATUS", "API", "CAPACITY", "USED", "IOPS", "CPU",
                        "MEMORY"
                    ],
                    &rows
                )
            );
            Ok(())
        }
        Command::Kv(cmd) => kv(cli, &c, cmd),
        Command::Topology(cmd) => topology::run(cli.json, cli.api.is_none(), &c, cmd),
    }
}

fn cluster(cli: &Cli, c: &BlockingClient, cmd: &ClusterCommand) -> Result<(), CliError> {
    match cmd {
        ClusterCommand::Init { name } => {
            let r: InitResponse =
                c.post("/v1/cluster/init", &InitRequest { name: name.clone() })?;
            if cli.json {
                print_json(&r);
            } else {
                println!("cluster {} initialized", r.cluster_id);
                println!("join other nodes with:\n  pxd cluster join {}", r.token);
            }
        }
        ClusterCommand::Join { token } => {
            let r: JoinResponse = c.post(
                "/v1/cluster/join",
                &JoinRequest {
                    token: crate::store::types::Secret::new(if token.starts_with("pxd1.") {
                        token.clone()
                    } else {
                        secret::read("token", token)?.to_string()
                    }),
                },
            )?;
            if cli.json {
                print_json(&r);
            } else {
                println!("joined cluster {} (leader {})", r.cluster_id, r.leader);
            }
        }
        ClusterCommand::Token { .. } | ClusterCommand::ApiToken => {
            let path = match cmd {
                ClusterCommand::Token { ttl } => format!("/v1/cluster/token?ttl={ttl}"),
                _ => "/v1/cluster/api-token".to_owned(),
            };
            let r: TokenResponse = c.get(&path)?;
            if cli.json {
                print_json(&r);
            } else {
                println!("{}", r.token);
            }
        }
        ClusterCommand::Remove { node } => {
            let r: RemoveResponse =
                c.post("/v1/cluster/remove", &RemoveRequest { node: node.clone() })?;
            if cli.json {
                print_json(&r);
            } else {
                println!("node {} removed", r.removed);
            }
        }
        ClusterCommand::Options {
            scrub_interval,
            replica_timeout,
        } => {
            let mut o: crate::store::types::ClusterOptions = c.get("/v1/cluster/options")?;
            if scrub_interval.is_some() || replica_timeout.is_some() {
                let req = crate::api::OptionsRequest {
                    scrub_interval_s: match scrub_interval {
                        Some(Interval::Off) => None,
                        Some(Interval::Every(s)) => Some(*s),
                        None => o.scrub_interval_s,
                    },
                    replica_timeout_s: replica_timeout.or(o.replica_timeout_s),
                };
                o = c.put("/v1/cluster/options", &req)?;
            }
            if cli.json {
                print_json(&o);
            } else {
                let scrub = o
                    .scrub_interval_s
                    .map_or("off".to_owned(), |s| format!("every {s} s"));
                println!("scrub schedule: {scrub}");
                println!("replica timeout: {} s", o.replica_timeout().as_secs());
            }
        }
        ClusterCommand::ProvisionStatus => {
            let rows: Vec<crate::plan::placement::Provision> = c.get("/v1/provision")?;
            if cli.json {
                print_json(&rows);
            } else {
                print!("{}", provision_table(&rows));
            }
        }
        ClusterCommand::Status | ClusterCommand::Members => {
            let s: Status = c.get("/v1/cluster/status")?;
            if cli.json {
                print_json(&s);
                return Ok(());
            }
            if matches!(cmd, ClusterCommand::Status) {
                println!(
                    "cluster:  {} ({})",
                    opt(&s.cluster_id),
                    opt(&s.cluster_name)
                );
                println!("node:     {} ({})", s.node, s.raft_state);
                println!("leader:   {}", opt(&s.leader));
                println!("term:     {}", s.term);
                println!(
                    "quorum:   {} ({} of {} voters online, {} needed)",
                    if s.quorum.ok { "yes" } else { "no" },
                    s.quorum.online,
                    s.quorum.voters,
                    s.quorum.needed
                );
                println!("members:  {}", s.members.len());
                println!("key:      {}", opt(&s.cluster_key_fingerprint));
                if let Some(io) = &s.io {
                    let cgroups = io
                        .cgroups
                        .as_ref()
                        .map_or("none: limits cannot be held here".to_owned(), |h| {
                            format!("{} at {}", h.name(), h.mount().display())
                        });
                    let probes = if io.ebpf {
                        "eBPF"
                    } else {
                        "/sys/block (no eBPF)"
                    };
                    println!("io:       counted by {probes}; limits through cgroup {cgroups}");
                }
            }
            let rows: Vec<Vec<String>> = s
                .members
                .iter()
                .map(|m| {
                    vec![
                        m.id.to_string(),
                        m.name.clone(),
                        if m.voter { "voter" } else { "learner" }.into(),
                        m.liveness.to_string(),
                        if Some(m.id) == s.leader { "leader" } else { "" }.into(),
                    ]
                })
                .collect();
            print!("{}", table(&["ID", "NAME", "VOTE", "STATUS", ""], &rows));
        }
    }
    Ok(())
}

/// `/v1/kv/{ns}` or `/v1/kv/{ns}/{key}`, each segment encoded.
fn kv_path(ns: &str, key: Option<&str>) -> Result<String, CliError> {
    let mut path = format!("/v1/kv/{}", seg("namespace", ns)?);
    if let Some(k) = key {
        path = format!("{path}/{}", seg("key", k)?);
    }
    Ok(path)
}

fn kv(cli: &Cli, c: &BlockingClient, cmd: &KvCommand) -> Result<(), CliError> {
    match cmd {
        KvCommand::Put { ns, key, value } => {
            let _: Applied = c.put(
                &kv_path(ns, Some(key))?,
                &KvValue {
                    value: value.clone(),
                },
            )?;
        }
        KvCommand::Get { ns, key } => {
            let v: KvValue = c.get(&kv_path(ns, Some(key))?)?;
            if cli.json {
                print_json(&v);
            } else {
                println!("{}", v.value);
            }
        }
        KvCommand::List { ns } => {
            let m: BTreeMap<String, String> = c.get(&kv_path(ns, None)?)?;
            if cli.json {
                print_json(&m);
            } else {
                let rows: Vec<Vec<String>> = m.into_iter().map(|(k, v)| vec![k, v]).collect();
                print!("{}", table(&["KEY", "VALUE"], &rows));
            }
        }
        KvCommand::Delete { ns, key } => {
            let _: Applied = c.delete(&kv_path(ns, Some(key))?)?;
        }
    }
    Ok(())
}

/// A drive's status column: its pool, its label's standing, or whether pxd may take it.
fn drive_status(d: &crate::pool::drive::DriveView) -> String {
    use crate::pool::drive::LabelStanding;
    if let Some(pool) = &d.pool {
        let class = d.class.map(|c| c.to_string()).unwrap_or_default();
        return format!("in pool {pool} ({class})");
    }
    match (&d.standing, &d.error, &d.in_use, &d.signature) {
        (Some(s @ (LabelStanding::Foreign(why) | LabelStanding::Damaged(why))), ..) => {
            format!("{}: {why} (needs --force)", s.name())
        }
        (_, Some(e), _, _) => format!("unreadable: {e}"),
        (_, None, Some(why), _) => format!("in use: {why}"),
        (_, None, None, Some(sig)) => format!("has {sig} (needs --force)"),
        (Some(LabelStanding::Unclaimed(why)), None, None, None) => {
            format!("candidate: {why}")
        }
        _ => "candidate".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn user_input_is_percent_encoded_in_url_paths() {
        assert_eq!(kv_path("ns", Some("a?b")).unwrap(), "/v1/kv/ns/a%3Fb");
        assert_eq!(kv_path("ns", Some("c#frag")).unwrap(), "/v1/kv/ns/c%23frag");
        assert_eq!(kv_path("..", Some(".")).unwrap(), "/v1/kv/%2E%2E/%2E");
        assert_eq!(
            kv_path("a.b", Some("x_y-z~1")).unwrap(),
            "/v1/kv/a.b/x_y-z~1"
        );
        assert_eq!(seg("volume", "a/b c%").unwrap(), "a%2Fb%20c%25");
        assert_eq!(seg("volume", "é").unwrap(), "%C3%A9");
        assert_eq!(
            kv_path("ns", Some("")).unwrap_err().to_string(),
            "key: must not be empty"
        );
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_parse_where_pxctl_users_expect_them() {
        let cli = Cli::try_parse_from(["pxd", "cluster", "status", "--json"]).unwrap();
        assert!(cli.json);
        let cli = Cli::try_parse_from([
            "pxd",
            "daemon",
            "--addr",
            "10.0.0.1",
            "--role",
            "storageless",
            "--topology-file",
            "/srv/topology.yaml",
        ])
        .unwrap();
        let Command::Daemon(args) = cli.command else {
            panic!("not the daemon command")
        };
        assert_eq!(args.role, crate::store::types::Role::Storageless);
        assert_eq!(
            args.topology.topology_file,
            PathBuf::from("/srv/topology.yaml")
        );
        assert!(
            Cli::try_parse_from(["pxd", "daemon", "--addr", "10.0.0.1", "--role", "x"]).is_err()
        );
        assert!(
            Cli::try_parse_from(["pxd", "daemon", "--addr", "10.0.0.1", "--label", "zone=a"])
                .is_err(),
            "--label is gone: labels come from the topology file, detection and tags"
        );
        // vCenter settings without vCenter would be silently unused: refused.
        for alone in [
            ["--vcenter-credentials", "/etc/pxd/vc"],
            ["--vcenter-ca", "/etc/pxd/ca.pem"],
            ["--vcenter-url", "https://vc.example"],
        ] {
            let mut args = vec!["pxd", "daemon", "--addr", "10.0.0.1"];
            args.extend(alone);
            assert!(Cli::try_parse_from(args).is_err(), "{alone:?}");
        }
    }
}

/// A duration in seconds: `90`, `30m`, `24h` or `7d`.
pub(crate) fn parse_ttl(s: &str) -> Result<u64, String> {
    let (n, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("ttl {s:?}: use seconds or a unit of s, m, h or d")),
    };
    n.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("ttl {s:?} is not a number of {unit}"))
}

#[cfg(test)]
mod ttl_tests {
    #[test]
    fn ttls_take_units() {
        assert_eq!(super::parse_ttl("90"), Ok(90));
        assert_eq!(super::parse_ttl("30m"), Ok(1800));
        assert_eq!(super::parse_ttl("24h"), Ok(86400));
        assert_eq!(super::parse_ttl("7d"), Ok(604800));
        assert!(super::parse_ttl("1w").is_err());
        assert!(super::parse_ttl("h").is_err());
        assert!(super::parse_ttl("99999999999999999999").is_err());
    }

    #[test]
    fn intervals_take_units_or_off() {
        use super::{parse_interval, Interval};
        assert_eq!(parse_interval("off"), Ok(Interval::Off));
        assert_eq!(parse_interval("7d"), Ok(Interval::Every(604800)));
        let e = parse_interval("1w").unwrap_err();
        assert!(e.starts_with("interval \"1w\""), "{e}");
    }
}

/// `pxd cluster provision-status` for people: one row a pool, the percentages of its
/// capacity used and provisioned.
fn provision_table(rows: &[crate::plan::placement::Provision]) -> String {
    let pct = |part: u64, whole: u64| match whole {
        0 => "-".to_owned(),
        w => format!("{:.0}%", part as f64 * 100.0 / w as f64),
    };
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let used = r.used.map_or_else(|| "-".to_owned(), bytes);
            vec![
                r.node_name.clone(),
                if r.online { "online" } else { "offline" }.to_owned(),
                r.class.to_string(),
                r.zone.clone().unwrap_or_else(|| "-".into()),
                r.rack.clone().unwrap_or_else(|| "-".into()),
                bytes(r.capacity),
                format!(
                    "{used} ({})",
                    r.used.map_or("-".into(), |u| pct(u, r.capacity))
                ),
                format!(
                    "{} ({})",
                    bytes(r.provisioned),
                    pct(r.provisioned, r.capacity)
                ),
                bytes(r.limit),
                r.volumes.to_string(),
                r.near_full.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &[
            "NODE",
            "STATE",
            "CLASS",
            "ZONE",
            "RACK",
            "CAPACITY",
            "USED",
            "PROVISIONED",
            "LIMIT",
            "VOLUMES",
            "NOTE",
        ],
        &body,
    )
}
