//! `pxd daemon`: the node's long-running process. It brings up the cluster member (identity,
//! store, Raft, node port, heartbeats), serves the API on the unix socket and on TCP, tells
//! systemd it is ready, and runs until SIGTERM or SIGINT.
//!
//! Stopping the daemon never tears anything down: the kernel keeps every device and its I/O,
//! and the next start adopts what it finds (DESIGN §1).

use crate::api;
use crate::cluster::topology::NodeTopology;
use crate::cluster::{Cluster, ClusterConfig, ClusterError};
use crate::kernel::host::hostname;
use crate::metrics::{Metrics, MetricsError};
use crate::pool::class::Thresholds;
use crate::reconcile::service::{FullThresholds, Reconciler};
use crate::store::types::Role;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args, Debug, Clone)]
pub struct DaemonArgs {
    /// Where the node keeps its identity, keys and Raft store.
    #[arg(long, default_value = "/var/lib/pxd")]
    pub data_dir: PathBuf,
    /// The address other nodes reach this node on (the node port and the TCP API listen on
    /// it).
    #[arg(long)]
    pub addr: IpAddr,
    /// ZeroMQ node port: Raft, heartbeats, replica traffic (CURVE). The port after it
    /// carries rebuild block streams, on an I/O thread of their own.
    #[arg(long, default_value_t = 9011, value_parser = clap::value_parser!(u16).range(1..=65534))]
    pub data_port: u16,
    /// TCP port of the REST API (bearer token).
    #[arg(long, default_value_t = 9010)]
    pub api_port: u16,
    /// Name of a new node (default: the host name). An existing node keeps its name.
    #[arg(long)]
    pub name: Option<String>,
    /// `storage`, or `storageless` for a compute-only node.
    #[arg(long, default_value = "storage")]
    pub role: Role,
    /// Heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..=60_000))]
    pub beat_interval_ms: u64,
    /// Missed heartbeats in a row before a node counts as offline.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub missed_beats: u32,
    /// Leave the eBPF I/O probes out: volume I/O counts come from /sys/block, with no
    /// latency histograms and no per-cgroup counts.
    #[arg(long)]
    pub no_ebpf: bool,
    /// The Docker volume plugin's socket: Docker finds a plugin named `pxd` there, and
    /// Mesos's dvdcli through Docker's rules. Created at start, before the first request.
    #[arg(long, default_value = "/run/docker/plugins/pxd.sock")]
    pub plugin_socket: PathBuf,
    #[command(flatten)]
    pub storage: StorageArgs,
    #[command(flatten)]
    pub topology: TopologyArgs,
}

/// Where this node's fault-domain labels come from, besides `pxd topology tag`.
#[derive(clap::Args, Debug, Clone)]
pub struct TopologyArgs {
    /// The topology file: labels by node name or IP (a missing file is no labels).
    #[arg(long, default_value = "/etc/pxd/topology.yaml")]
    pub topology_file: PathBuf,
    /// vCenter to ask for this VM's ESXi host and the host's rack and zone tags
    /// (`https://vcenter.example`).
    #[arg(long, requires = "vcenter_credentials")]
    pub vcenter_url: Option<String>,
    /// File holding `user=` and `password=` lines for vCenter (never on the command line).
    #[arg(long, requires = "vcenter_url")]
    pub vcenter_credentials: Option<PathBuf>,
    /// PEM file of the CA that signed vCenter's certificate, if the system does not trust it.
    #[arg(long, requires = "vcenter_url")]
    pub vcenter_ca: Option<PathBuf>,
    /// This VM's name in vCenter (default: the node's name).
    #[arg(long, requires = "vcenter_url")]
    pub vcenter_vm_name: Option<String>,
    /// How long one metadata or vCenter request may take, in milliseconds.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(100..=30_000))]
    pub detect_timeout_ms: u64,
}

/// Storage limits and the reconciler's pace.
#[derive(clap::Args, Debug, Clone)]
pub struct StorageArgs {
    /// Where volumes are mounted by default (`<data-dir>/mounts` when not given).
    #[arg(long)]
    pub mount_root: Option<PathBuf>,
    /// How many times its capacity a pool may have provisioned (thin overcommit).
    #[arg(long, default_value_t = 4.0, value_parser = parse_overcommit)]
    pub overcommit: f64,
    /// Data use (percent) at which a pool refuses new volumes, snapshots and growth.
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub pool_full_percent: u8,
    /// Metadata use (percent) at which a pool refuses new allocations.
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub meta_full_percent: u8,
    /// Minimum 4 KiB random IOPS of a high-class drive.
    #[arg(long, default_value_t = 20_000.0)]
    pub high_min_iops: f64,
    /// Maximum median latency (µs) of a high-class drive.
    #[arg(long, default_value_t = 500)]
    pub high_max_p50_us: u64,
    /// Minimum 4 KiB random IOPS of a medium-class drive.
    #[arg(long, default_value_t = 1_000.0)]
    pub medium_min_iops: f64,
    /// Maximum median latency (µs) of a medium-class drive.
    #[arg(long, default_value_t = 3_000)]
    pub medium_max_p50_us: u64,
    /// How long each random pattern of a drive's benchmark runs before the drive joins a
    /// pool (its sequential read runs half as long), in milliseconds. Longer measures more
    /// steadily; the drive is written to throughout.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub drive_bench_ms: u64,
    /// Time between reconcile passes, in milliseconds (API changes run one at once).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub reconcile_interval_ms: u64,
    /// How long a remote leg's NVMe/TCP controller may be down (its writes held) before
    /// the leg is recorded stale and the raid goes on without it, in milliseconds.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub leg_timeout_ms: u64,
    /// How long an attach node keeps a replicated volume's I/O going without confirming that
    /// it is on the cluster's majority side; past it, it fails that I/O itself. A forced
    /// attach elsewhere waits this long before it is acknowledged: keep it equal on every
    /// node. In milliseconds.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1000..=600_000))]
    pub attach_lease_ms: u64,
    /// The most a new leg's copy sends, in MiB a second, so that it leaves the volume's own
    /// I/O room; 0 sends as fast as the disks and network allow.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub copy_rate_mib: u64,
    /// Whether new crypt tables skip dm-crypt's read workqueue (`no_read_workqueue`, Linux
    /// 5.9+): decryption then runs where the read completes. The default is what `cargo
    /// xtask bench params` measured best; live volumes keep their tables.
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set,
          default_value_t = crate::plan::crypt::Workqueues::DEFAULT.bypass_reads)]
    pub crypt_bypass_read_workqueue: bool,
    /// Whether new crypt tables skip dm-crypt's write workqueue (`no_write_workqueue`):
    /// encryption then runs in the submitter's context, which held 4k random writes to about
    /// half their rate in the measurement the default follows.
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set,
          default_value_t = crate::plan::crypt::Workqueues::DEFAULT.bypass_writes)]
    pub crypt_bypass_write_workqueue: bool,
    /// Allocation chunk of the thin pools this node makes from now on: 64K to 1M, a
    /// multiple of 64K. A pool keeps the chunk it was made with. A bigger chunk writes more
    /// on a volume's first write to a chunk and after a snapshot; see the README's bench
    /// section for what each measured.
    #[arg(long, value_name = "SIZE", default_value = "256K", value_parser = parse_chunk)]
    pub thin_chunk: u64,
    /// Whether the thin pools this node makes zero a new chunk before a partial write lands
    /// in it. Off, a new volume can read what a deleted one left on the disk: only for nodes
    /// whose volumes all trust each other. A pool keeps what it was made with.
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set,
          default_value_t = crate::plan::pool::ThinFeatures::DEFAULT.zero_new_chunks)]
    pub thin_zero_new_chunks: bool,
    /// Whether the thin pools this node makes pass discards down to the drives, so that
    /// space freed in a pool is freed on the disk too. A pool keeps what it was made with.
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set,
          default_value_t = crate::plan::pool::ThinFeatures::DEFAULT.discard_passdown)]
    pub thin_discard_passdown: bool,
}

/// `--thin-chunk`: a size from 64K to 1M in steps of 64K, in 512-byte sectors.
fn parse_chunk(s: &str) -> Result<u64, String> {
    use crate::plan::pool::{MAX_CHUNK, MIN_CHUNK};
    let bytes = crate::volume::spec::parse_size("thin-chunk", s).map_err(|e| e.to_string())?;
    let sectors = bytes / 512;
    if bytes % (*MIN_CHUNK * 512) != 0 || !(*MIN_CHUNK..=*MAX_CHUNK).contains(&sectors) {
        return Err(format!(
            "thin-chunk: {s} must be a multiple of 64K from 64K to 1M"
        ));
    }
    Ok(sectors)
}

fn parse_overcommit(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=100.0).contains(&v) => Ok(v),
        _ => Err(format!("overcommit {s:?} must be a number from 0.1 to 100")),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("--addr {0} is not an address other nodes can reach; give this node's own IP")]
    Unspecified(IpAddr),
    #[error("start the tokio runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Api(#[from] api::ServeError),
    #[error("the Docker plugin's mount record: {0}")]
    PluginRefs(#[from] api::plugin::refs::RefsError),
    #[error(transparent)]
    Key(#[from] crate::crypt::CryptError),
    #[error("wait for signals: {0}")]
    Signals(std::io::Error),
    #[error("{tool} is missing; a storage node needs it for {needed_for}: install the Debian package {package}")]
    MissingTool {
        tool: &'static str,
        package: &'static str,
        needed_for: &'static str,
    },
}

/// Checks the tools pxd runs: a storage node refuses to start without one that every pool
/// needs, and warns, naming what will fail, for the others.
fn check_tools(role: Role) -> Result<(), DaemonError> {
    use crate::kernel::tools::{missing, TOOLS};
    let path = std::env::var("PATH").unwrap_or_default();
    for t in missing(TOOLS, &path) {
        if t.essential && role == Role::Storage {
            return Err(DaemonError::MissingTool {
                tool: t.name,
                package: t.package,
                needed_for: t.needed_for,
            });
        }
        tracing::warn!(
            tool = t.name,
            package = t.package,
            "{} is missing: {} will fail until {} is installed",
            t.name,
            t.needed_for,
            t.package
        );
    }
    Ok(())
}

/// What detection asks, from the flags.
fn detect_config(args: &TopologyArgs, node_name: &str) -> topology::detect::Config {
    let mut cfg = topology::detect::Config::system(&hostname());
    cfg.timeout = Duration::from_millis(args.detect_timeout_ms);
    if let (Some(url), Some(credentials)) = (&args.vcenter_url, &args.vcenter_credentials) {
        cfg.vcenter = Some(topology::detect::VCenter {
            url: url.clone(),
            credentials_file: credentials.clone(),
            ca_file: args.vcenter_ca.clone(),
            vm_name: args
                .vcenter_vm_name
                .clone()
                .unwrap_or_else(|| node_name.to_owned()),
        });
    }
    cfg
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(args: DaemonArgs, socket: PathBuf) -> Result<(), DaemonError> {
    if args.addr.is_unspecified() {
        return Err(DaemonError::Unspecified(args.addr));
    }
    check_tools(args.role)?;
    let missing = crate::kernel::modules::load_replication();
    if !missing.is_empty() {
        tracing::warn!(
            missing = ?missing,
            "replicated volumes cannot be exported or attached on this node until these load"
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("pxd")
        .build()
        .map_err(DaemonError::Runtime)?;
    rt.block_on(serve(args, socket))
}

async fn serve(args: DaemonArgs, socket: PathBuf) -> Result<(), DaemonError> {
    let volume_io = crate::io::volumes::VolumeIo::start(args.no_ebpf);
    let metrics = Arc::new(Metrics::new(volume_io)?);
    let api_addr = SocketAddr::new(args.addr, args.api_port);
    let config = ClusterConfig {
        data_dir: args.data_dir.clone(),
        name: args.name.clone(),
        role: args.role,
        data_addr: SocketAddr::new(args.addr, args.data_port),
        api_addr,
        beat_interval: Duration::from_millis(args.beat_interval_ms),
        missed_beats: args.missed_beats,
    };
    let cluster = Cluster::start(config, metrics).await?;
    let st = &args.storage;
    cluster.copier.set_rate(st.copy_rate_mib << 20);
    let thresholds = Thresholds {
        high_min_iops: st.high_min_iops,
        high_max_p50_us: st.high_max_p50_us,
        medium_min_iops: st.medium_min_iops,
        medium_max_p50_us: st.medium_max_p50_us,
    };
    let mut reconciler = Reconciler::new(
        cluster.clone(),
        st.mount_root
            .clone()
            .unwrap_or_else(|| args.data_dir.join("mounts")),
        thresholds,
        FullThresholds {
            data_percent: st.pool_full_percent,
            meta_percent: st.meta_full_percent,
        },
        Duration::from_millis(st.attach_lease_ms),
        Duration::from_millis(st.drive_bench_ms),
    );
    reconciler.set_overcommit(st.overcommit);
    reconciler.set_crypt_workqueues(crate::plan::crypt::Workqueues {
        bypass_reads: st.crypt_bypass_read_workqueue,
        bypass_writes: st.crypt_bypass_write_workqueue,
    });
    reconciler.set_new_pool(crate::store::types::NewPool {
        chunk_sectors: st.thin_chunk,
        features: crate::plan::pool::ThinFeatures {
            zero_new_chunks: st.thin_zero_new_chunks,
            discard_passdown: st.thin_discard_passdown,
        },
    });
    let reconciler = Arc::new(reconciler);
    // Adopt what the kernel has before serving: a restart changes nothing that runs.
    if let Err(e) = reconciler.pass().await {
        tracing::warn!(error = %e, "the first reconcile pass failed; retrying on the timer");
    }
    tokio::spawn(
        reconciler
            .clone()
            .run(Duration::from_millis(st.reconcile_interval_ms)),
    );
    tokio::spawn(crate::reconcile::lease::run(
        cluster.clone(),
        reconciler.clone(),
        Duration::from_millis(st.attach_lease_ms),
    ));
    tokio::spawn(crate::reconcile::leg_watch::run(
        cluster.clone(),
        reconciler.clone(),
        Duration::from_millis(st.leg_timeout_ms),
    ));
    tokio::spawn(crate::reconcile::io_limits::run(cluster.clone()));
    let topology = Arc::new(NodeTopology::new(
        cluster.clone(),
        args.topology.topology_file.clone(),
        detect_config(&args.topology, &cluster.identity.name),
        args.addr,
    ));
    topology.clone().spawn();
    let state = api::AppState {
        cluster: cluster.clone(),
        reconciler,
        topology,
        config: api::Policy {
            overcommit: st.overcommit,
            thresholds,
            attach_lease: Duration::from_millis(st.attach_lease_ms),
        },
    };
    api::serve_unix(state.clone(), &socket).await?;
    let plugin = api::plugin::PluginState::new(state.clone(), &args.data_dir)?;
    api::plugin::serve(plugin, &args.plugin_socket).await?;
    api::serve_tcp(state, api_addr).await?;
    tracing::info!(
        node = %cluster.id(),
        name = %cluster.identity.name,
        cluster = cluster.cluster_id().as_deref().unwrap_or("(none yet)"),
        socket = %socket.display(),
        %api_addr,
        "pxd is serving"
    );
    // Only meaningful under systemd (Type=notify); a no-op when NOTIFY_SOCKET is unset.
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "could not tell systemd that pxd is ready");
    }
    // Under WatchdogSec=, a keep-alive from the runtime twice per period: a daemon whose
    // runtime hangs is restarted, which never touches a device.
    if let Some(period) = sd_notify::watchdog_enabled() {
        tokio::spawn(async move {
            let mut every = tokio::time::interval(period / 2);
            loop {
                every.tick().await;
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
        });
    }
    wait_for_stop().await?;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!("stopping; devices and their I/O stay as they are");
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(&args.plugin_socket);
    Ok(())
}

async fn wait_for_stop() -> Result<(), DaemonError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_chunk;

    #[test]
    fn thin_chunks_are_64k_steps_from_64k_to_1m() {
        assert_eq!(parse_chunk("64K"), Ok(128));
        assert_eq!(parse_chunk("256K"), Ok(512));
        assert_eq!(parse_chunk("1M"), Ok(2048));
        for bad in ["32K", "96K", "2M", "0", "lots"] {
            let e = parse_chunk(bad).unwrap_err();
            assert!(e.starts_with("thin-chunk"), "{bad}: {e}");
        }
    }
}
