//! What `pxd cluster status` and `pxd node list` show, and the metrics built from the same
//! view.

use super::gossip::{Liveness, NodeStats};
use super::Cluster;
use crate::store::types::Role;
use crate::store::NodeId;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Status {
    /// `None` until this node is in a cluster.
    pub cluster_id: Option<String>,
    pub cluster_name: Option<String>,
    pub node: NodeId,
    /// Leader, follower, candidate or learner.
    pub raft_state: String,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    pub members: Vec<Member>,
    pub quorum: Quorum,
    /// Tells cluster keys apart (equal on every member) without revealing the key.
    #[serde(default)]
    pub cluster_key_fingerprint: Option<String>,
    /// How this node counts and limits volume I/O.
    #[serde(default)]
    pub io: Option<IoStatus>,
}

/// How a node counts and limits volume I/O.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IoStatus {
    /// Whether the eBPF probes are loaded (else counts come from /sys/block).
    pub ebpf: bool,
    /// The cgroup hierarchy limits are written into, found at start; none: limits cannot
    /// be held on this node.
    pub cgroups: Option<crate::io::cgroups::Hierarchy>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Member {
    pub id: NodeId,
    pub name: String,
    pub voter: bool,
    pub liveness: Liveness,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Quorum {
    pub voters: usize,
    /// Voters needed for a majority.
    pub needed: usize,
    /// Voters online as seen from this node.
    pub online: usize,
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeView {
    pub id: NodeId,
    pub name: String,
    pub role: Role,
    pub api_addr: String,
    pub data_addr: String,
    pub liveness: Liveness,
    pub stats: Option<NodeStats>,
    /// Where it sits (region, zone, rack, hypervisor, host), as placement sees it.
    #[serde(default)]
    pub labels: topology::Labels,
}

impl Cluster {
    /// A node's liveness as seen from here. This node is online to itself, since it is
    /// answering: its own beat can be late when the machine is busy, and a one-node cluster
    /// must not then show itself without a quorum.
    fn liveness(&self, id: NodeId) -> (Liveness, Option<NodeStats>) {
        let (liveness, stats) = self.beats.view(id);
        if id == self.id() {
            (Liveness::Online, stats)
        } else {
            (liveness, stats)
        }
    }

    pub fn status(&self) -> Status {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let (cluster_id, cluster_name, names) = self.state.read(|s| {
            (
                s.cluster.as_ref().map(|c| c.id.clone()),
                s.cluster.as_ref().map(|c| c.name.clone()),
                s.nodes
                    .values()
                    .map(|n| (n.id, n.name.clone()))
                    .collect::<std::collections::BTreeMap<_, _>>(),
            )
        });
        let members: Vec<Member> = membership
            .nodes()
            .map(|(id, _)| Member {
                id: *id,
                name: names.get(id).cloned().unwrap_or_default(),
                voter: voters.contains(id),
                liveness: self.liveness(*id).0,
            })
            .collect();
        let online = members
            .iter()
            .filter(|x| x.voter && x.liveness == Liveness::Online)
            .count();
        let needed = voters.len() / 2 + 1;
        let io = &self.metrics().volume_io;
        Status {
            io: Some(IoStatus {
                ebpf: io.ebpf_up(),
                cgroups: io.hierarchy().cloned(),
            }),
            cluster_key_fingerprint: self.cluster_key().map(|k| k.fingerprint()),
            cluster_id,
            cluster_name,
            node: self.id(),
            raft_state: format!("{:?}", m.state).to_lowercase(),
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            last_applied_index: m.last_applied.map(|l| l.index),
            quorum: Quorum {
                voters: voters.len(),
                needed,
                online,
                ok: !voters.is_empty() && online >= needed,
            },
            members,
        }
    }

    /// Every node in the desired state, with its liveness and stats as seen from here.
    pub fn nodes(&self) -> Vec<NodeView> {
        let nodes = self
            .state
            .read(|s| s.nodes.values().cloned().collect::<Vec<_>>());
        nodes
            .into_iter()
            .map(|n| {
                let (liveness, stats) = self.liveness(n.id);
                NodeView {
                    id: n.id,
                    name: n.name,
                    role: n.role,
                    api_addr: n.api_addr,
                    data_addr: n.data_addr,
                    liveness,
                    stats,
                    labels: n.topology.labels(),
                }
            })
            .collect()
    }

    pub(super) fn update_metrics(&self) {
        let status = self.status();
        let nodes = self.nodes();
        let m = &self.metrics;
        m.cluster_nodes.set(nodes.len() as i64);
        m.cluster_nodes_online.set(
            nodes
                .iter()
                .filter(|n| n.liveness == Liveness::Online)
                .count() as i64,
        );
        m.cluster_quorum.set(i64::from(status.quorum.ok));
        m.cluster_leader.reset();
        if let Some(l) = status.leader {
            m.cluster_leader.with_label_values(&[&l.to_string()]).set(1);
        }
        m.node_online.reset();
        for n in &nodes {
            m.node_online
                .with_label_values(&[&n.id.to_string(), &n.name])
                .set(i64::from(n.liveness == Liveness::Online));
        }
        m.raft_term.set(status.term as i64);
        m.raft_last_log_index
            .set(status.last_log_index.unwrap_or(0) as i64);
        m.raft_last_applied_index
            .set(status.last_applied_index.unwrap_or(0) as i64);
    }
}
