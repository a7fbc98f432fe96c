//! Where each node sits, as the cluster agrees on it: the operator's manual tags, and what the
//! node last reported finding itself (its topology file, vSphere, cloud metadata, the bare
//! host). Both are Raft commands, so every node resolves the same labels for placement.

use super::state::{encode, Change, ClusterState};
use super::types::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use topology::sources::{self, Resolved, Source};
use topology::{Domain, Labels};

/// A node's labels by source. The manual tags outrank everything the node reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeTopology {
    /// `pxd topology tag`.
    #[serde(default)]
    pub manual: Labels,
    /// What the node found itself, one layer per source, as it last reported.
    #[serde(default)]
    pub reported: Vec<(Source, Labels)>,
}

impl NodeTopology {
    /// Each known label with the source that set it.
    pub fn resolved(&self) -> BTreeMap<Domain, Resolved> {
        let mut layers = self.reported.clone();
        layers.push((Source::Manual, self.manual.clone()));
        sources::resolve(&layers)
    }

    /// The labels placement uses.
    pub fn labels(&self) -> Labels {
        sources::labels_of(&self.resolved())
    }
}

/// A change to one node's topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum TopologyChange {
    /// `pxd topology tag`: set these manual labels and remove those.
    Tag { set: Labels, clear: Vec<Domain> },
    /// The node's own findings replace what it reported before. Manual tags stay.
    Reported { layers: Vec<(Source, Labels)> },
}

impl ClusterState {
    pub(super) fn change_topology(
        &mut self,
        id: NodeId,
        change: &TopologyChange,
    ) -> Result<Vec<Change>, String> {
        let node = self
            .nodes
            .get_mut(&id)
            .ok_or_else(|| format!("node: {id} is not a member"))?;
        match change {
            TopologyChange::Tag { set, clear } => {
                for d in clear {
                    node.topology.manual.remove(*d);
                }
                for (d, v) in set.iter() {
                    node.topology.manual.set(d, v).map_err(|e| e.to_string())?;
                }
            }
            TopologyChange::Reported { layers } => {
                if layers.iter().any(|(s, _)| *s == Source::Manual) {
                    return Err("a node reports no manual labels: tag them instead".into());
                }
                node.topology.reported = layers.clone();
            }
        }
        Ok(vec![encode(format!("node/{id}"), &*node)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::state::tests::node;
    use crate::store::state::{Command, Response};

    fn tag(id: u64, set: &str, clear: &[Domain]) -> Command {
        Command::ChangeTopology {
            node: NodeId(id),
            change: TopologyChange::Tag {
                set: set.parse().unwrap(),
                clear: clear.to_vec(),
            },
        }
    }

    #[test]
    fn manual_tags_beat_reports_and_outlive_a_new_report_and_a_rejoin() {
        let mut s = ClusterState::default();
        s.apply(&Command::PutNode { node: node(1) });
        let report = |layers: &str| Command::ChangeTopology {
            node: NodeId(1),
            change: TopologyChange::Reported {
                layers: vec![
                    (Source::BareMetal, "host=h1".parse().unwrap()),
                    (Source::File, layers.parse().unwrap()),
                ],
            },
        };
        assert_eq!(s.apply(&report("zone=z1,rack=r1")).0, Response::Applied);
        assert_eq!(s.apply(&tag(1, "rack=r9", &[])).0, Response::Applied);
        let r = s.nodes[&NodeId(1)].topology.resolved();
        assert_eq!(r[&Domain::Rack].value, "r9");
        assert_eq!(r[&Domain::Rack].source, Source::Manual);
        assert_eq!(r[&Domain::Zone].source, Source::File);
        assert_eq!(r[&Domain::Host].source, Source::BareMetal);

        // A later report and the node's own record put again keep the manual tag.
        s.apply(&report("zone=z2"));
        s.apply(&Command::PutNode { node: node(1) });
        let l = s.nodes[&NodeId(1)].topology.labels();
        assert_eq!(l.get(Domain::Rack), Some("r9"));
        assert_eq!(l.get(Domain::Zone), Some("z2"));

        // Clearing the tag lets the reported value show again (here there is none).
        s.apply(&tag(1, "", &[Domain::Rack]));
        assert_eq!(
            s.nodes[&NodeId(1)].topology.labels().get(Domain::Rack),
            None
        );
    }

    #[test]
    fn tags_of_a_stranger_or_a_manual_report_are_refused() {
        let mut s = ClusterState::default();
        s.apply(&Command::PutNode { node: node(1) });
        assert_eq!(
            s.apply(&tag(7, "rack=r1", &[])).0,
            Response::Rejected("node: 0000000000000007 is not a member".into())
        );
        let forged = Command::ChangeTopology {
            node: NodeId(1),
            change: TopologyChange::Reported {
                layers: vec![(Source::Manual, "rack=r1".parse().unwrap())],
            },
        };
        assert!(matches!(s.apply(&forged).0, Response::Rejected(_)));
    }
}
