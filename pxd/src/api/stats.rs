//! Volume I/O counters of this node (`pxd volume stats`).
//!
//! | route | does |
//! |---|---|
//! | `GET /v1/stats` | every volume whose device is on this node: its counters since they began |
//! | `GET /v1/volumes/{vol}/stats` | one volume's; 409 naming the node where it is counted |
//!
//! The counters only grow; a reader takes two samples and divides (the CLI does).

use super::volumes::find;
use super::{ApiError, ApiResult, AppState, Path};
use crate::io::volumes::VolumeSample;
use crate::io::{IoCounts, Latencies};
use crate::store::types::IopsLimit;
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

/// A volume's I/O on this node since its counters began.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VolumeStats {
    pub volume: String,
    pub id: String,
    pub node: String,
    /// Counted by the eBPF probes (with latencies and cgroups), or from /sys/block.
    pub ebpf: bool,
    #[serde(flatten)]
    pub counts: IoCounts,
    /// Completion latencies: `buckets[b]` took `[2^b, 2^(b+1))` ns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_latency: Option<LatencyView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_latency: Option<LatencyView>,
    /// The cgroups that did I/O to it, by the cgroup the block layer charged.
    #[serde(default)]
    pub cgroups: Vec<CgroupIo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_iops: Option<IopsLimit>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LatencyView {
    pub buckets: Vec<u64>,
    pub sum_ns: u64,
}

impl LatencyView {
    pub fn latencies(&self) -> Latencies {
        let mut l = Latencies {
            sum_ns: self.sum_ns,
            ..Latencies::default()
        };
        for (to, from) in l.buckets.iter_mut().zip(&self.buckets) {
            *to = *from;
        }
        l
    }
}

impl From<&Latencies> for LatencyView {
    fn from(l: &Latencies) -> Self {
        Self {
            buckets: l.buckets.to_vec(),
            sum_ns: l.sum_ns,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CgroupIo {
    /// The cgroup's id (the inode of its directory).
    pub cgroup: u64,
    /// Its path in the I/O cgroup hierarchy, while it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(flatten)]
    pub counts: IoCounts,
}

fn view(s: &AppState, sample: VolumeSample, max_iops: Option<IopsLimit>) -> VolumeStats {
    let hierarchy = s.cluster.metrics().volume_io.hierarchy();
    let (read_latency, write_latency) = match &sample.latency {
        Some((r, w)) => (Some(r.into()), Some(w.into())),
        None => (None, None),
    };
    VolumeStats {
        volume: sample.name,
        id: sample.id,
        node: sample.node,
        ebpf: read_latency.is_some(),
        counts: sample.counts,
        read_latency,
        write_latency,
        cgroups: sample
            .cgroups
            .into_iter()
            .map(|(cgroup, counts)| CgroupIo {
                cgroup,
                path: hierarchy.and_then(|h| h.path_of(cgroup).map(|p| h.relative(&p))),
                counts,
            })
            .collect(),
        max_iops,
    }
}

/// `GET /v1/stats`.
#[utoipa::path(
    get,
    path = "/v1/stats",
    operation_id = "stats_list",
    tag = "stats",
    summary = "I/O of every volume counted on this node",
    responses((status = 200, description = "Each volume's I/O", body = Vec<VolumeStats>))
)]
pub async fn all(State(s): State<AppState>) -> ApiResult<Vec<VolumeStats>> {
    let samples = s.cluster.metrics().volume_io.sample();
    let limits = s.cluster.state().read(|st| {
        samples
            .iter()
            .map(|x| st.volumes.get(&x.id).and_then(|v| v.max_iops))
            .collect::<Vec<_>>()
    });
    Ok(Json(
        samples
            .into_iter()
            .zip(limits)
            .map(|(x, limit)| view(&s, x, limit))
            .collect(),
    ))
}

/// `GET /v1/volumes/{vol}/stats`.
#[utoipa::path(
    get,
    path = "/v1/volumes/{vol}/stats",
    operation_id = "volume_stats",
    tag = "stats",
    summary = "One volume's I/O counted on this node",
    params(("vol" = String, Path, description = "The volume's name or id")),
    responses((status = 200, description = "The volume's I/O", body = VolumeStats))
)]
pub async fn one(State(s): State<AppState>, Path(key): Path<String>) -> ApiResult<VolumeStats> {
    let (v, counted_on) = s.cluster.state().read(|st| {
        let v = find(st, &key)?;
        let on = crate::reconcile::derive::io_stack(st, &v).map(|(node, _)| {
            let name = st.nodes.get(&node).map(|n| n.name.clone());
            (node, name.unwrap_or_default())
        });
        Ok::<_, ApiError>((v, on))
    })?;
    let sample = s
        .cluster
        .metrics()
        .volume_io
        .sample()
        .into_iter()
        .find(|x| x.id == v.id);
    match (sample, counted_on) {
        (Some(x), _) => Ok(Json(view(&s, x, v.max_iops))),
        (None, Some((node, name))) if node != s.cluster.id() => Err(ApiError::Conflict(format!(
            "volume {}: its I/O is counted on node {name} ({node}), where its device is; ask \
             that node's API (--api)",
            v.name
        ))),
        _ => Err(ApiError::Conflict(format!(
            "volume {}: no device of it is up on any node (attach it first)",
            v.name
        ))),
    }
}
