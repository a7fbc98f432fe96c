//! Prometheus metrics of the node (`pxd_cluster_*`, `pxd_node_*`, `pxd_raft_*`, `pxd_pool_*`,
//! `pxd_drive_*`, `pxd_volume_*`), rendered for `/metrics`. Names and labels follow DESIGN §7.

pub mod series;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

#[derive(Debug, thiserror::Error)]
#[error("{op} metric {name}: {source}")]
pub struct MetricsError {
    op: &'static str,
    name: &'static str,
    source: prometheus::Error,
}

pub struct Metrics {
    registry: Registry,
    /// The name of every family this node exports (samples or not).
    families: Vec<String>,
    /// Each volume's I/O on this node (`pxd_volume_reads_total`, latencies, `pxd_ebpf_up`).
    pub volume_io: std::sync::Arc<crate::io::volumes::VolumeIo>,
    pub cluster_nodes: IntGauge,
    pub cluster_nodes_online: IntGauge,
    pub cluster_quorum: IntGauge,
    pub cluster_leader: IntGaugeVec,
    pub node_online: IntGaugeVec,
    pub raft_term: IntGauge,
    pub raft_last_log_index: IntGauge,
    pub raft_last_applied_index: IntGauge,
    pub pool_data_used_bytes: IntGaugeVec,
    pub pool_data_total_bytes: IntGaugeVec,
    pub pool_metadata_used_blocks: IntGaugeVec,
    pub pool_metadata_total_blocks: IntGaugeVec,
    pub pool_near_full: IntGaugeVec,
    pub pool_state: IntGaugeVec,
    pub drive_size_bytes: IntGaugeVec,
    pub drive_state: IntGaugeVec,
    pub volume_capacity_bytes: IntGaugeVec,
    pub volume_usage_bytes: IntGaugeVec,
    pub volume_replicas: IntGaugeVec,
    pub volume_replicas_healthy: IntGaugeVec,
    pub volume_resync_bytes: IntGaugeVec,
    pub volume_check_mismatches: IntGaugeVec,
    pub volume_check_requested: IntGaugeVec,
    pub volume_rebuild_copied_bytes: IntGaugeVec,
    pub volume_rebuild_left_bytes: IntGaugeVec,
    pub volume_rebuild_rate_bytes: IntGaugeVec,
    pub volume_iops_limit: IntGaugeVec,
    pub volume_bandwidth_limit: IntGaugeVec,
    pub reconcile_pass_seconds: HistogramVec,
    pub reconcile_objects: IntGaugeVec,
    /// The volume and drive series the reconciler set last, for updates in place.
    pub series: series::Tracked,
}

fn gauge(registry: &Reg, name: &'static str, help: &str) -> Result<IntGauge, MetricsError> {
    let g = IntGauge::new(name, help).map_err(|source| MetricsError {
        op: "define",
        name,
        source,
    })?;
    register(registry, name, g)
}

fn gauge_vec(
    registry: &Reg,
    name: &'static str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, MetricsError> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).map_err(|source| MetricsError {
        op: "define",
        name,
        source,
    })?;
    register(registry, name, g)
}

/// A registry that keeps the names of the families registered, for [`Metrics::families`].
#[derive(Default)]
struct Reg {
    registry: Registry,
    names: std::cell::RefCell<Vec<String>>,
}

/// Registers a metric and hands it back for updating.
fn register<M>(reg: &Reg, name: &'static str, metric: M) -> Result<M, MetricsError>
where
    M: prometheus::core::Collector + Clone + 'static,
{
    reg.names.borrow_mut().push(name.to_owned());
    reg.registry
        .register(Box::new(metric.clone()))
        .map_err(|source| MetricsError {
            op: "register",
            name,
            source,
        })?;
    Ok(metric)
}

/// Hands the shared per-volume I/O collector to the registry.
struct SharedVolumeIo(std::sync::Arc<crate::io::volumes::VolumeIo>);

impl prometheus::core::Collector for SharedVolumeIo {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }
    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.0.collect()
    }
}

impl Metrics {
    pub fn new(volume_io: crate::io::volumes::VolumeIo) -> Result<Metrics, MetricsError> {
        let r = Reg::default();
        let volume_io = std::sync::Arc::new(volume_io);
        r.names
            .borrow_mut()
            .extend(crate::io::volumes::FAMILIES.iter().map(|n| (*n).to_owned()));
        r.registry
            .register(Box::new(SharedVolumeIo(volume_io.clone())))
            .map_err(|source| MetricsError {
                op: "register",
                name: "pxd_volume_reads_total",
                source,
            })?;
        Ok(Metrics {
            volume_io,
            cluster_nodes: gauge(&r, "pxd_cluster_nodes", "Members of the cluster")?,
            cluster_nodes_online: gauge(
                &r,
                "pxd_cluster_nodes_online",
                "Members whose heartbeats arrive, as seen from this node",
            )?,
            cluster_quorum: gauge(
                &r,
                "pxd_cluster_quorum",
                "1 if a majority of the voters is online as seen from this node",
            )?,
            cluster_leader: gauge_vec(
                &r,
                "pxd_cluster_leader",
                "1 for the node this node takes as the Raft leader",
                &["node"],
            )?,
            node_online: gauge_vec(
                &r,
                "pxd_node_online",
                "1 if the node's heartbeats arrive, 0 if it missed too many",
                &["node", "name"],
            )?,
            raft_term: gauge(&r, "pxd_raft_term", "Current Raft term")?,
            raft_last_log_index: gauge(
                &r,
                "pxd_raft_last_log_index",
                "Index of the last log entry",
            )?,
            raft_last_applied_index: gauge(
                &r,
                "pxd_raft_last_applied_index",
                "Index of the last entry applied to the state machine",
            )?,
            pool_data_used_bytes: gauge_vec(
                &r,
                "pxd_pool_data_used_bytes",
                "Data bytes the pool has allocated to thin devices",
                &["node", "pool", "class"],
            )?,
            pool_data_total_bytes: gauge_vec(
                &r,
                "pxd_pool_data_total_bytes",
                "Data bytes of the pool",
                &["node", "pool", "class"],
            )?,
            pool_metadata_used_blocks: gauge_vec(
                &r,
                "pxd_pool_metadata_used_blocks",
                "4 KiB metadata blocks the pool uses",
                &["node", "pool", "class"],
            )?,
            pool_metadata_total_blocks: gauge_vec(
                &r,
                "pxd_pool_metadata_total_blocks",
                "4 KiB metadata blocks of the pool",
                &["node", "pool", "class"],
            )?,
            pool_near_full: gauge_vec(
                &r,
                "pxd_pool_near_full",
                "1 while the pool is past a near-full threshold and refuses new allocations",
                &["node", "pool", "class"],
            )?,
            pool_state: gauge_vec(
                &r,
                "pxd_pool_state",
                "1 for the pool's state as its node last found it (online, degraded or damaged), 0 for the others",
                &["node", "pool", "class", "state"],
            )?,
            drive_size_bytes: gauge_vec(
                &r,
                "pxd_drive_size_bytes",
                "Bytes of a drive of this node, as it was when added",
                &["node", "drive", "pool", "class"],
            )?,
            drive_state: gauge_vec(
                &r,
                "pxd_drive_state",
                "1 for the drive's state (online, missing from its pool, failed, or being added), 0 for the others",
                &["node", "drive", "pool", "state"],
            )?,
            volume_capacity_bytes: gauge_vec(
                &r,
                "pxd_volume_capacity_bytes",
                "Provisioned size of the volume",
                &["volume", "volume_id", "node", "pool"],
            )?,
            volume_usage_bytes: gauge_vec(
                &r,
                "pxd_volume_usage_bytes",
                "Bytes the volume has allocated in its pool (thin status)",
                &["volume", "volume_id", "node", "pool"],
            )?,
            volume_replicas: gauge_vec(
                &r,
                "pxd_volume_replicas",
                "Legs of a replicated volume's raid, on its attach node",
                &["volume", "volume_id", "node"],
            )?,
            volume_replicas_healthy: gauge_vec(
                &r,
                "pxd_volume_replicas_healthy",
                "Legs of a replicated volume's raid that are alive and in sync, on its attach node",
                &["volume", "volume_id", "node"],
            )?,
            volume_check_mismatches: gauge_vec(
                &r,
                "pxd_volume_check_mismatches",
                "Sectors that differed between legs in the volume's last finished raid check (mismatch_cnt; 0 is clean), on its attach node",
                &["volume", "volume_id", "node"],
            )?,
            volume_check_requested: gauge_vec(
                &r,
                "pxd_volume_check_requested_timestamp_seconds",
                "Unix time the volume's last finished raid check was asked for (by hand or by the scrub schedule), on its attach node",
                &["volume", "volume_id", "node"],
            )?,
            volume_rebuild_copied_bytes: gauge_vec(
                &r,
                "pxd_volume_rebuild_copied_bytes",
                "Bytes a new leg's copy has sent so far, over every round, on the node it copies from",
                &["volume", "volume_id", "node"],
            )?,
            volume_rebuild_left_bytes: gauge_vec(
                &r,
                "pxd_volume_rebuild_left_bytes",
                "Bytes a new leg's last copy round found changed: about what is left, on the node it copies from",
                &["volume", "volume_id", "node"],
            )?,
            volume_rebuild_rate_bytes: gauge_vec(
                &r,
                "pxd_volume_rebuild_rate_bytes",
                "Bytes a second of a new leg's last copy round, on the node it copies from",
                &["volume", "volume_id", "node"],
            )?,
            volume_resync_bytes: gauge_vec(
                &r,
                "pxd_volume_resync_bytes",
                "Bytes of a replicated volume's raid left to resync (0 when in sync)",
                &["volume", "volume_id", "node"],
            )?,
            volume_iops_limit: gauge_vec(
                &r,
                "pxd_volume_iops_limit",
                "The volume's IOPS limit one way (read or write), held on the node its device is on",
                &["volume", "volume_id", "node", "direction"],
            )?,
            volume_bandwidth_limit: gauge_vec(
                &r,
                "pxd_volume_bandwidth_limit_bytes",
                "The volume's bandwidth limit one way (read or write), bytes a second",
                &["volume", "volume_id", "node", "direction"],
            )?,
            reconcile_pass_seconds: {
                let name = "pxd_reconcile_pass_seconds";
                let opts = HistogramOpts::new(
                    name,
                    "How long a reconcile pass took, from reading the kernel to recording what it did",
                )
                .buckets(
                    prometheus::exponential_buckets(0.005, 2.0, 15).map_err(|source| {
                        MetricsError {
                            op: "define",
                            name,
                            source,
                        }
                    })?,
                );
                let h = HistogramVec::new(opts, &["pass"]).map_err(|source| MetricsError {
                    op: "define",
                    name,
                    source,
                })?;
                register(&r, name, h)?
            },
            reconcile_objects: gauge_vec(
                &r,
                "pxd_reconcile_objects",
                "Objects (pools and volumes) the last reconcile pass planned, and those it changed in the kernel",
                &["pass", "outcome"],
            )?,
            series: Default::default(),
            families: r.names.take(),
            registry: r.registry,
        })
    }

    /// Every metric family this node can export, whether it has samples now or not: what a
    /// dashboard may name.
    pub fn families(&self) -> &[String] {
        &self.families
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding gauges into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_render_with_their_labels() {
        let m = Metrics::new(crate::io::volumes::VolumeIo::start(true)).unwrap();
        m.node_online
            .with_label_values(&["00000000000000aa", "n1"])
            .set(1);
        m.cluster_nodes.set(3);
        let text = m.render();
        assert!(
            text.contains("pxd_node_online{name=\"n1\",node=\"00000000000000aa\"} 1"),
            "{text}"
        );
        assert!(text.contains("pxd_cluster_nodes 3"));
    }
}
