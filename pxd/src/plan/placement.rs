//! Where a new volume's replicas go in the cluster, and whether a pool can take more: the
//! class asked for (or the best class that fits), within each pool's overcommit and below
//! its near-full thresholds, spread over fault domains by the `topology` crate. Pure: the
//! caller passes the store, liveness and the pools' last known use.

use crate::cluster::gossip::PoolBeat;
use crate::store::types::{NodeId, PoolHealth, Role};
use crate::store::ClusterState;
use crate::volume::spec::{human, Class, Constraints};
use std::collections::{BTreeMap, BTreeSet};
use topology::place::{place, Candidate as TopoCandidate, PlaceError, Request};

/// A pool as placement sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub id: String,
    pub class: Class,
    /// Usable data bytes (from the live pool, else the drives' sizes).
    pub capacity: u64,
    /// Sum of the sizes of the volumes already provisioned on it.
    pub provisioned: u64,
    /// Why it takes no new allocations, if it is near full.
    pub near_full: Option<String>,
}

/// What placement knows of the cluster: the store, who is online, and each pool's use as
/// its node last reported it (in heartbeats, or this node's own last pass).
pub struct ClusterView<'a> {
    pub state: &'a ClusterState,
    pub online: &'a BTreeSet<NodeId>,
    pub seen: &'a BTreeMap<String, PoolBeat>,
    pub overcommit: f64,
}

/// Where a new volume's replicas go, and which class it got.
#[derive(Debug, Clone, PartialEq)]
pub struct Placed {
    pub class: Class,
    /// (node, pool) per replica.
    pub replicas: Vec<(NodeId, String)>,
    pub explanation: String,
    pub shortfall: Option<String>,
}

/// Places `repl` replicas of `size` bytes, over the whole cluster, through the `topology`
/// crate: the class asked for, or the best class that can take it. A refusal names what is
/// short and why each pool that could not take the volume was passed over.
pub fn place_volume(
    view: &ClusterView<'_>,
    class: Option<Class>,
    size: u64,
    repl: usize,
    constraints: &Constraints,
    best_effort: bool,
) -> Result<Placed, String> {
    let st = view.state;
    if st.pools.is_empty() {
        return Err("io_priority: no node has a pool yet; add a drive with `pxd drive add`".into());
    }
    let mut nodes = BTreeSet::new();
    for n in &constraints.nodes {
        let found = st
            .nodes
            .values()
            .find(|x| &x.name == n || &x.id.to_string() == n)
            .ok_or_else(|| format!("nodes: no member is called or numbered {n:?}"))?;
        nodes.insert(found.id.to_string());
    }
    let classes = match class {
        Some(c) => vec![c],
        None => vec![Class::High, Class::Medium, Class::Low],
    };
    if let Some(c) = class {
        if !st.pools.values().any(|p| p.class == c) {
            let have: BTreeSet<String> = st.pools.values().map(|p| p.class.to_string()).collect();
            return Err(format!(
                "io_priority: the cluster has no {c} pool (it has: {}); add a drive of that class",
                have.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    let (candidates, passed_over) = candidates(view, size);
    let mut first_error = None;
    for class in classes {
        let req = Request {
            repl,
            class: class.to_string(),
            size,
            nodes: nodes.clone(),
            zones: constraints.zones.clone(),
            racks: constraints.racks.clone(),
            best_effort,
        };
        match place(&candidates, &req) {
            Ok(p) => {
                let replicas = p
                    .replicas
                    .iter()
                    .filter_map(|(n, pool)| Some((n.parse::<NodeId>().ok()?, pool.clone())))
                    .collect();
                return Ok(Placed {
                    class,
                    replicas,
                    explanation: p.explanation,
                    shortfall: p.shortfall,
                });
            }
            Err(e) if st.pools.values().any(|p| p.class == class) => {
                first_error.get_or_insert(match e {
                    PlaceError::Short {
                        available, asked, ..
                    } => format!(
                        "{available} node(s) have a {class} pool with {} free that the constraints allow; {asked} replica(s) asked",
                        human(size)
                    ),
                    other => other.to_string(),
                });
            }
            Err(_) => {}
        }
    }
    let mut why = first_error.unwrap_or_else(|| "no pool can take it".into());
    if !passed_over.is_empty() {
        why = format!("{why}; {}", passed_over.join("; "));
    }
    Err(format!("size: {} cannot be placed: {why}", human(size)))
}

/// Where one more replica of volume `v` goes (a rebuild replacing the replica on `lost`, or
/// a higher replica count when `lost` is `None`): a pool of the volume's class on a node
/// holding none of its replicas, apart from those that stay and away from the lost one's
/// fault domain, through [`topology::place::place_one_more`]; on node `only` when given.
/// A refusal names why.
pub fn place_replacement(
    view: &ClusterView<'_>,
    v: &crate::store::types::Volume,
    lost: Option<NodeId>,
    only: Option<NodeId>,
    best_effort: bool,
) -> Result<(NodeId, String, String), String> {
    use topology::place::{place_one_more, Placed as Where};
    let st = view.state;
    let at = |node: NodeId| Where {
        node: node.to_string(),
        labels: st
            .nodes
            .get(&node)
            .map(|n| n.topology.labels())
            .unwrap_or_default(),
    };
    let kept: Vec<Where> = v
        .replicas
        .iter()
        .filter(|r| Some(r.node) != lost)
        .map(|r| at(r.node))
        .collect();
    let lost = lost.map(at);
    let (candidates, passed_over) = candidates(view, v.size);
    let req = Request {
        repl: 1,
        class: v.io_priority.to_string(),
        size: v.size,
        best_effort,
        nodes: only.iter().map(NodeId::to_string).collect(),
        ..Request::default()
    };
    match place_one_more(&candidates, &kept, lost.as_ref(), &req) {
        Ok(p) => {
            let (node, pool) = p.replicas.into_iter().next().ok_or("placed no replica")?;
            let node = node
                .parse::<NodeId>()
                .map_err(|e| format!("placement named node {node}: {e}"))?;
            Ok((node, pool, p.explanation))
        }
        Err(e) => {
            let mut why = e.to_string();
            if !passed_over.is_empty() {
                why = format!("{why}; {}", passed_over.join("; "));
            }
            Err(format!(
                "no node can take another replica of volume {} ({} {}): {why}",
                v.name,
                human(v.size),
                v.io_priority
            ))
        }
    }
}

/// The sum of the sizes of the volumes with a replica on pool `pool`: what thin provisioning
/// promised out of it.
pub fn provisioned_on(st: &ClusterState, pool: &str) -> u64 {
    st.volumes_placed_on(pool).map(|v| v.size).sum()
}

/// One pool's capacity against what was promised out of it (`pxd cluster provision-status`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Provision {
    pub pool: String,
    pub node: NodeId,
    pub node_name: String,
    pub online: bool,
    pub class: Class,
    pub zone: Option<String>,
    pub rack: Option<String>,
    /// Usable data bytes, as the pool's node last reported them (else the drives' sizes).
    pub capacity: u64,
    /// Data bytes written, as its node last reported them; none if it never did.
    pub used: Option<u64>,
    /// The sum of the sizes of the volumes with a replica on it.
    pub provisioned: u64,
    /// What it may have provisioned: its capacity times the overcommit.
    pub limit: u64,
    pub volumes: usize,
    /// Why it takes no new allocations, if it is near full.
    pub near_full: Option<String>,
}

/// Every pool of the cluster with its capacity, use, provisioned size and where it sits, by
/// node name then class.
pub fn provision_status(view: &ClusterView<'_>) -> Vec<Provision> {
    let st = view.state;
    let mut out: Vec<Provision> = st
        .pools
        .values()
        .map(|p| {
            let seen = view.seen.get(&p.id);
            let node = st.nodes.get(&p.node);
            let labels = node.map(|n| n.topology.labels()).unwrap_or_default();
            let capacity = seen.map_or(p.capacity, |u| u.data_total);
            Provision {
                pool: p.id.clone(),
                node: p.node,
                node_name: node.map_or_else(|| p.node.to_string(), |n| n.name.clone()),
                online: view.online.contains(&p.node),
                class: p.class,
                zone: labels.get(topology::Domain::Zone).map(str::to_owned),
                rack: labels.get(topology::Domain::Rack).map(str::to_owned),
                capacity,
                used: seen.map(|u| u.data_used),
                provisioned: provisioned_on(st, &p.id),
                limit: (capacity as f64 * view.overcommit) as u64,
                volumes: st.volumes_placed_on(&p.id).count(),
                near_full: seen.and_then(|u| u.near_full.clone()),
            }
        })
        .collect();
    out.sort_by(|a, b| (&a.node_name, a.class).cmp(&(&b.node_name, b.class)));
    out
}

/// Every pool as the `topology` crate sees it, and why each one that cannot take `size`
/// more bytes is passed over. Free space is what the overcommit limit leaves.
fn candidates(view: &ClusterView<'_>, size: u64) -> (Vec<TopoCandidate>, Vec<String>) {
    let st = view.state;
    let mut out = Vec::new();
    let mut passed_over = Vec::new();
    for p in st.pools.values() {
        let Some(node) = st.nodes.get(&p.node) else {
            continue;
        };
        let seen = view.seen.get(&p.id);
        let capacity = seen.map_or(p.capacity, |u| u.data_total);
        let provisioned = provisioned_on(st, &p.id);
        let limit = (capacity as f64 * view.overcommit) as u64;
        let free = limit.saturating_sub(provisioned);
        let near_full = seen.and_then(|u| u.near_full.clone());
        let online = view.online.contains(&p.node);
        let failed = st.drives.values().find(|d| {
            d.pool == p.id
                && (d.out_of_service() || d.state != crate::store::types::DriveState::Online)
        });
        let healthy = !matches!(p.health, PoolHealth::Damaged(_)) && failed.is_none();
        let storage = node.role == Role::Storage;
        let at = format!("pool {} ({}) on {}", p.id, p.class, node.name);
        if !storage {
            passed_over.push(format!("{at}: the node is storageless"));
        } else if !online {
            passed_over.push(format!("{at}: the node is offline"));
        } else if let PoolHealth::Damaged(r) = &p.health {
            passed_over.push(format!("{at}: damaged: {r}"));
        } else if let Some(d) = failed {
            let why = match (&d.leaving, d.state) {
                (Some(_), _) => "is leaving it",
                (None, crate::store::types::DriveState::Failed) => "failed",
                _ => "is being added",
            };
            passed_over.push(format!("{at}: its drive {} {why}", d.id));
        } else if let Some(r) = &near_full {
            passed_over.push(format!("{at}: near full: {r}"));
        } else if free < size {
            passed_over.push(format!(
                "{at}: {} provisioned, the limit is {} ({}x its {} capacity, --overcommit)",
                human(provisioned),
                human(limit),
                view.overcommit,
                human(capacity)
            ));
        }
        out.push(TopoCandidate {
            node: node.id.to_string(),
            pool: p.id.clone(),
            labels: node.topology.labels(),
            class: p.class.to_string(),
            free_bytes: free,
            usable: storage && online && healthy,
            near_full: near_full.is_some(),
        });
    }
    (out, passed_over)
}

/// Checks that `pool` can take `more` bytes of new provisioning.
pub fn admit(pool: &Candidate, more: u64, overcommit: f64) -> Result<(), String> {
    if let Some(why) = &pool.near_full {
        return Err(format!("pool {} is near full: {why}", pool.id));
    }
    let limit = (pool.capacity as f64 * overcommit) as u64;
    let total = pool.provisioned.saturating_add(more);
    if total > limit {
        return Err(format!(
            "size: {} more would provision {} on pool {} ({} {}); the limit is {} ({}x its capacity, --overcommit)",
            human(more),
            human(total),
            pool.id,
            pool.class,
            human(pool.capacity),
            human(limit),
            overcommit
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(id: &str, class: Class) -> Candidate {
        Candidate {
            id: id.into(),
            class,
            capacity: 1 << 30,
            provisioned: 0,
            near_full: None,
        }
    }

    use crate::store::topology::NodeTopology;
    use crate::store::types::{Node, Pool};

    const G: u64 = 1 << 30;

    /// Nodes n1..n3 (ids 1..3) with one pool each, of 1 GiB, racked as given.
    fn cluster(racks: &[(&str, Class)]) -> ClusterState {
        let mut st = ClusterState::default();
        for (i, (rack, class)) in racks.iter().enumerate() {
            let id = NodeId(i as u64 + 1);
            let topology = NodeTopology {
                manual: format!("rack={rack}").parse().unwrap(),
                ..Default::default()
            };
            st.nodes.insert(
                id,
                Node {
                    id,
                    name: format!("n{}", i + 1),
                    api_addr: String::new(),
                    data_addr: String::new(),
                    public_key: String::new(),
                    topology,
                    role: Role::Storage,
                },
            );
            let pool = Pool::for_tests(&format!("p{}", i + 1), id, *class);
            st.pools.insert(pool.id.clone(), pool);
        }
        st
    }

    fn all_online(st: &ClusterState) -> BTreeSet<NodeId> {
        st.nodes.keys().copied().collect()
    }

    fn place1(
        st: &ClusterState,
        online: &BTreeSet<NodeId>,
        seen: &BTreeMap<String, PoolBeat>,
        class: Option<Class>,
        c: &Constraints,
    ) -> Result<Placed, String> {
        let view = ClusterView {
            state: st,
            online,
            seen,
            overcommit: 1.0,
        };
        place_volume(&view, class, 100 << 20, 1, c, false)
    }

    #[test]
    fn a_replacement_goes_to_a_free_node_in_another_rack_and_is_refused_by_name_otherwise() {
        use crate::store::types::{Replica, ReplicaState, Volume};
        let st = cluster(&[
            ("r1", Class::High),
            ("r2", Class::High),
            ("r2", Class::High),
            ("r3", Class::High),
        ]);
        let mut v: Volume = crate::store::attach::tests::volume(2);
        v.size = 100 << 20;
        v.io_priority = Class::High;
        v.replicas = [1u64, 2]
            .iter()
            .map(|n| Replica {
                node: NodeId(*n),
                split: None,
                pool: format!("p{n}"),
                thin_id: 1,
                meta_thin_id: Some(2),
                state: ReplicaState::Up,
                serving_epoch: 1,
                left_behind: false,
            })
            .collect();
        let (seen, online) = (BTreeMap::new(), all_online(&st));
        let view = ClusterView {
            state: &st,
            online: &online,
            seen: &seen,
            overcommit: 1.0,
        };
        // n2 (rack r2) is lost: n4 in r3 rather than n3 in the lost rack.
        let (node, pool, why) = place_replacement(&view, &v, Some(NodeId(2)), None, false).unwrap();
        assert_eq!((node, pool.as_str()), (NodeId(4), "p4"), "{why}");
        // A third replica: n4 again (a rack of its own), never n1 or n2.
        let (node, _, _) = place_replacement(&view, &v, None, None, false).unwrap();
        assert_eq!(node, NodeId(4));
        // n4 offline and n3 the only free node left: it shares no machine, so it is taken.
        let online: BTreeSet<NodeId> = [1, 2, 3].map(NodeId).into();
        let view = ClusterView {
            online: &online,
            ..view
        };
        let (node, _, _) = place_replacement(&view, &v, Some(NodeId(2)), None, false).unwrap();
        assert_eq!(node, NodeId(3));
        // Only n3, and of the wrong class: refused, naming the volume and the pools passed.
        let mut low = v.clone();
        low.io_priority = Class::Low;
        let e = place_replacement(&view, &low, Some(NodeId(2)), None, false).unwrap_err();
        assert!(
            e.starts_with("no node can take another replica of volume db") && e.contains("low"),
            "{e}"
        );
        assert!(e.contains("the node is offline"), "{e}");
    }

    #[test]
    fn the_cluster_wide_pick_honours_class_constraints_and_liveness() {
        let st = cluster(&[("r1", Class::Low), ("r2", Class::High), ("r3", Class::High)]);
        let online = all_online(&st);
        let none = BTreeMap::new();
        let any = Constraints::default();
        // The best class there is; ties between equal pools go to the lowest id.
        let p = place1(&st, &online, &none, None, &any).unwrap();
        assert_eq!((p.class, p.replicas[0].0), (Class::High, NodeId(2)));
        let p = place1(&st, &online, &none, Some(Class::Low), &any).unwrap();
        assert_eq!(p.replicas, [(NodeId(1), "p1".to_owned())]);
        // --racks and --nodes (by name or id).
        let mut c = Constraints::default();
        c.racks.insert("r3".into());
        assert_eq!(
            place1(&st, &online, &none, None, &c).unwrap().replicas[0].0,
            NodeId(3)
        );
        let mut c = Constraints::default();
        c.nodes.insert("0000000000000003".into());
        assert_eq!(
            place1(&st, &online, &none, None, &c).unwrap().replicas[0].0,
            NodeId(3)
        );
        c.nodes = ["n9".to_owned()].into();
        assert_eq!(
            place1(&st, &online, &none, None, &c).unwrap_err(),
            "nodes: no member is called or numbered \"n9\""
        );
        // Offline nodes and near-full pools are passed over, and the refusal says why.
        let only1: BTreeSet<NodeId> = [NodeId(1)].into();
        let e = place1(&st, &only1, &none, Some(Class::High), &any).unwrap_err();
        assert!(
            e.contains("pool p2 (high) on n2: the node is offline"),
            "{e}"
        );
        let full: BTreeMap<String, PoolBeat> = [(
            "p2".to_owned(),
            PoolBeat {
                data_used: 95,
                data_total: G,
                near_full: Some("its data is 95% used".into()),
            },
        )]
        .into();
        let p = place1(&st, &online, &full, Some(Class::High), &any).unwrap();
        assert_eq!(p.replicas[0].0, NodeId(3));
        let e = place1(&st, &online, &full, Some(Class::Medium), &any).unwrap_err();
        assert!(
            e.starts_with("io_priority: the cluster has no medium pool"),
            "{e}"
        );
        let mut c = Constraints::default();
        c.zones.insert("z9".into());
        let e = place1(&st, &online, &none, None, &c).unwrap_err();
        assert!(e.contains("0 node(s) have a high pool"), "{e}");
        assert!(place1(&ClusterState::default(), &online, &none, None, &any)
            .unwrap_err()
            .contains("pxd drive add"));
    }

    #[test]
    fn the_overcommit_limit_is_named_when_nothing_fits() {
        let mut st = cluster(&[("r1", Class::High)]);
        let v: crate::store::types::Volume = serde_json::from_value(serde_json::json!({
            "id": "v1", "name": "big", "size": G - (50 << 20), "fs": "raw", "repl": 1,
            "io_priority": "high", "max_iops": null, "encrypted": false, "key_ref": null,
            "labels": {}, "replicas": [{"node": "0000000000000001", "pool": "p1", "thin_id": 1, "state": "clean"}],
            "attachment": null, "snapshot_schedule": null, "phase": "live", "formatted": false,
            "created": 0
        }))
        .unwrap();
        st.volumes.insert(v.id.clone(), v);
        let e = place1(
            &st,
            &all_online(&st),
            &BTreeMap::new(),
            None,
            &Constraints::default(),
        )
        .unwrap_err();
        assert!(e.starts_with("size: 100 MiB cannot be placed"), "{e}");
        assert!(e.contains("(1x its 1 GiB capacity, --overcommit)"), "{e}");
    }

    #[test]
    fn overcommit_and_near_full_refuse_with_the_limit() {
        let mut p = pool("p", Class::Medium);
        p.provisioned = 3 << 30;
        assert!(admit(&p, 1 << 30, 4.0).is_ok());
        let e = admit(&p, (1 << 30) + 4096, 4.0).unwrap_err();
        assert!(
            e.starts_with("size:") && e.contains("the limit is 4 GiB"),
            "{e}"
        );
        p.near_full = Some("its data is 95% used".into());
        assert!(admit(&p, 1, 4.0).unwrap_err().contains("near full"));
    }

    #[test]
    fn provision_status_adds_up_each_pool_s_volumes_against_its_limit() {
        let mut st = cluster(&[("r1", Class::High), ("r2", Class::Low)]);
        let v: crate::store::types::Volume = serde_json::from_value(serde_json::json!({
            "id": "v1", "name": "db", "size": 3 * G, "fs": "raw", "repl": 2,
            "io_priority": "high", "max_iops": null, "encrypted": false, "key_ref": null,
            "labels": {}, "replicas": [
                {"node": "0000000000000001", "pool": "p1", "thin_id": 1, "state": "clean"},
                {"node": "0000000000000002", "pool": "p2", "thin_id": 1, "state": "clean"}],
            "attachment": null, "snapshot_schedule": null, "phase": "live", "formatted": false,
            "created": 0
        }))
        .unwrap();
        st.volumes.insert(v.id.clone(), v);
        let seen = BTreeMap::from([(
            "p2".to_owned(),
            PoolBeat {
                data_used: 5 << 20,
                data_total: 2 * G,
                near_full: None,
            },
        )]);
        let online = BTreeSet::from([NodeId(1)]);
        let view = ClusterView {
            state: &st,
            online: &online,
            seen: &seen,
            overcommit: 4.0,
        };
        let rows = provision_status(&view);
        let brief: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    r.node_name.as_str(),
                    r.online,
                    r.rack.as_deref(),
                    r.capacity,
                    r.used,
                )
            })
            .collect();
        assert_eq!(
            brief,
            [
                ("n1", true, Some("r1"), G, None),
                ("n2", false, Some("r2"), 2 * G, Some(5 << 20))
            ]
        );
        assert!(rows
            .iter()
            .all(|r| r.provisioned == 3 * G && r.volumes == 1));
        assert_eq!((rows[0].limit, rows[1].limit), (4 * G, 8 * G));
    }
}
