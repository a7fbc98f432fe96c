//! The daemon's limit loop: every second, the limits of the volumes whose device is on this
//! node go to the limit controller ([`crate::io::limits`]) with the probes' per-cgroup counts.

use crate::cluster::Cluster;
use crate::io::limits::{Controller, Limit, TICK};
use std::time::Instant;

/// Runs until the daemon stops. Without a cgroup hierarchy for block I/O there is nothing to
/// write limits into: it says so once and returns.
pub async fn run(cluster: std::sync::Arc<Cluster>) {
    let io = cluster.metrics().volume_io.clone();
    let Some(hierarchy) = io.hierarchy().cloned() else {
        tracing::warn!("no cgroup hierarchy with the io (v2) or blkio (v1) controller is mounted: volume I/O limits cannot be held on this node");
        return;
    };
    if !io.ebpf_up() {
        tracing::warn!("without the eBPF probes a volume's I/O limit holds for each cgroup alone, not for the volume as a whole");
    }
    tracing::info!(
        hierarchy = hierarchy.name(),
        "volume I/O limits are held through cgroup {}",
        hierarchy.name()
    );
    let mut controller = Controller::new(hierarchy);
    let mut last = Instant::now();
    let mut interval = tokio::time::interval(TICK);
    loop {
        interval.tick().await;
        let devices = io.devices();
        let limits: Vec<Limit> = cluster.state().read(|st| {
            devices
                .iter()
                .filter_map(|(id, dev)| {
                    let v = st.volumes.get(id)?;
                    let iops = v.max_iops.unwrap_or_default();
                    let bw = v.max_bandwidth.unwrap_or_default();
                    let knobs = [iops.read, iops.write, bw.read, bw.write];
                    (knobs != [0; 4]).then_some(Limit { dev: *dev, knobs })
                })
                .collect()
        });
        let known: Vec<_> = devices.iter().map(|(_, d)| *d).collect();
        // With no limit here the counters are not needed: only throttles to lift.
        let counts = if limits.is_empty() {
            Vec::new()
        } else {
            io.cgroup_counts().unwrap_or_default()
        };
        let now = Instant::now();
        let dt = now.duration_since(last).as_secs_f64();
        last = now;
        // Cgroup files are quick to write, but a walk of a large hierarchy is not.
        let errors = tokio::task::block_in_place(|| controller.tick(&limits, &known, &counts, dt));
        for e in errors {
            tracing::warn!(error = %e, "could not write an I/O throttle");
        }
    }
}
