//! `/v1/topology`: where every node sits, each label with the source that set it; manual
//! tags, which any node records for any member through Raft; and `refresh`, which runs this
//! node's detection again.

use super::{ApiError, ApiResult, AppState, JsonBody, Query};
use crate::cluster::Op;
use crate::store::state::Command;
use crate::store::topology::TopologyChange;
use crate::store::types::{Node, NodeId};
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use topology::sources::Source;
use topology::{Domain, Labels};

/// One label as resolved: its value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LabelView {
    pub label: Domain,
    pub value: String,
    pub source: Source,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeTopologyView {
    pub id: NodeId,
    pub name: String,
    /// Widest first.
    pub labels: Vec<LabelView>,
    /// The labels in the Mesos agent `--attributes` syntax, for Marathon constraints.
    pub mesos_attributes: String,
}

/// What `refresh` found on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RefreshView {
    pub node: NodeTopologyView,
    pub platform: String,
    /// Sources skipped and why.
    pub warnings: Vec<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ShowQuery {
    /// A member's name or id; every node when absent.
    pub node: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TagRequest {
    /// A member's name or id; this node when absent.
    #[serde(default)]
    pub node: Option<String>,
    /// Labels to set: region, zone, rack, hypervisor, host.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Labels to remove.
    #[serde(default)]
    pub clear: Vec<String>,
}

pub fn view(n: &Node) -> NodeTopologyView {
    let resolved = n.topology.resolved();
    NodeTopologyView {
        id: n.id,
        name: n.name.clone(),
        labels: resolved
            .iter()
            .map(|(d, r)| LabelView {
                label: *d,
                value: r.value.clone(),
                source: r.source,
            })
            .collect(),
        mesos_attributes: topology::detect::mesos_attributes(&n.topology.labels()),
    }
}

fn node_view(s: &AppState, id: NodeId) -> Result<NodeTopologyView, ApiError> {
    s.cluster
        .state()
        .read(|st| st.nodes.get(&id).map(view))
        .ok_or_else(|| ApiError::NotFound(format!("node {id} has no record yet")))
}

#[utoipa::path(
    get,
    path = "/v1/topology",
    operation_id = "topology_show",
    tag = "topology",
    summary = "Each node's fault-domain labels with the source of each",
    params(ShowQuery),
    responses((status = 200, description = "Each node's labels", body = Vec<NodeTopologyView>))
)]
pub async fn show(
    State(s): State<AppState>,
    Query(q): Query<ShowQuery>,
) -> ApiResult<Vec<NodeTopologyView>> {
    if let Some(n) = &q.node {
        let id = s.cluster.resolve_node(n)?;
        return Ok(Json(vec![node_view(&s, id)?]));
    }
    Ok(Json(
        s.cluster
            .state()
            .read(|st| st.nodes.values().map(view).collect()),
    ))
}

/// Checks a tag request whole before anything is recorded.
fn parse_tag(req: &TagRequest) -> Result<(Labels, Vec<Domain>), String> {
    if req.set.is_empty() && req.clear.is_empty() {
        return Err("set: nothing to tag: give at least one label to set or to clear".into());
    }
    let mut set = Labels::default();
    for (k, v) in &req.set {
        let d: Domain = k.parse().map_err(|e| format!("set: {e}"))?;
        set.set(d, v).map_err(|e| format!("set: {e}"))?;
    }
    let mut clear = Vec::new();
    for k in &req.clear {
        let d: Domain = k.parse().map_err(|e| format!("clear: {e}"))?;
        if set.get(d).is_some() {
            return Err(format!("clear: {d} is also set; set it or clear it"));
        }
        clear.push(d);
    }
    Ok((set, clear))
}

#[utoipa::path(
    post,
    path = "/v1/topology/tag",
    operation_id = "topology_tag",
    tag = "topology",
    summary = "Set or clear a member's manual labels",
    request_body = TagRequest,
    responses((status = 200, description = "The node's labels", body = NodeTopologyView))
)]
pub async fn tag(
    State(s): State<AppState>,
    JsonBody(req): JsonBody<TagRequest>,
) -> ApiResult<NodeTopologyView> {
    if s.cluster.cluster_id().is_none() {
        return Err(crate::cluster::ClusterError::NotInCluster.into());
    }
    let (set, clear) = parse_tag(&req).map_err(ApiError::BadRequest)?;
    let id = match &req.node {
        Some(n) => s.cluster.resolve_node(n)?,
        None => s.cluster.id(),
    };
    let cmd = Command::ChangeTopology {
        node: id,
        change: TopologyChange::Tag { set, clear },
    };
    match s.cluster.submit_and_apply(Op::Command(cmd)).await {
        Err(crate::cluster::ClusterError::Rejected(why)) => return Err(ApiError::BadRequest(why)),
        other => other.map(drop)?,
    }
    Ok(Json(node_view(&s, id)?))
}

#[utoipa::path(
    post,
    path = "/v1/topology/refresh",
    operation_id = "topology_refresh",
    tag = "topology",
    summary = "Run this node's detection again",
    responses((status = 200, description = "What detection found", body = RefreshView))
)]
pub async fn refresh(State(s): State<AppState>) -> ApiResult<RefreshView> {
    let found = s.topology.refresh().await?;
    Ok(Json(RefreshView {
        node: node_view(&s, s.cluster.id())?,
        platform: found.platform,
        warnings: found.warnings,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(set: &[(&str, &str)], clear: &[&str]) -> TagRequest {
        TagRequest {
            node: None,
            set: set
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            clear: clear.iter().map(|c| (*c).to_owned()).collect(),
        }
    }

    #[test]
    fn tags_are_checked_whole_and_refusals_name_the_field() {
        let (set, clear) = parse_tag(&req(&[("rack", "r1")], &["zone"])).unwrap();
        assert_eq!(set.get(Domain::Rack), Some("r1"));
        assert_eq!(clear, [Domain::Zone]);
        let long = "x".repeat(64);
        for (r, want) in [
            (
                req(&[("rack", &long)], &[]),
                "set: value of rack is 64 bytes; the limit is 63 bytes of [A-Za-z0-9._-]",
            ),
            (
                req(&[("rack", "r 1")], &[]),
                "set: value of rack \"r 1\" may hold only [A-Za-z0-9._-]",
            ),
            (
                req(&[("shelf", "s1")], &[]),
                "set: unknown fault domain \"shelf\": expected one of region, zone, rack, hypervisor, host",
            ),
            (
                req(&[], &["shelf"]),
                "clear: unknown fault domain \"shelf\": expected one of region, zone, rack, hypervisor, host",
            ),
            (
                req(&[("rack", "r1")], &["rack"]),
                "clear: rack is also set; set it or clear it",
            ),
            (
                req(&[], &[]),
                "set: nothing to tag: give at least one label to set or to clear",
            ),
        ] {
            assert_eq!(parse_tag(&r).unwrap_err(), want);
        }
    }
}
