//! Placement: which nodes and pools hold a volume's replicas. Pure, so the same cluster view
//! always gives the same answer, and every rule is a property test.
//!
//! Rules, in order: only online storage nodes with a pool of the requested class that has
//! room and is not near full; the operator's node, zone and rack constraints; one replica
//! per node; spread over the widest fault domain that has at least as many values as
//! replicas (region, then zone, rack, hypervisor, host); then the most free space; ties by
//! id. Two replicas never share a hypervisor or a host (one failure would take both) unless
//! the request is best effort, which then records the shortfall.

use crate::{Domain, Labels};
use std::collections::{BTreeMap, BTreeSet};

/// One pool of one node, as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub node: String,
    pub pool: String,
    pub labels: Labels,
    pub class: String,
    pub free_bytes: u64,
    /// A storage node that is online; storage-less and offline nodes are never picked.
    pub usable: bool,
    /// The pool refuses new allocations.
    pub near_full: bool,
}

/// What is asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    pub repl: usize,
    pub class: String,
    pub size: u64,
    /// Only these nodes / zones / racks, when given (pxctl's `--nodes`, `--zones`, `--racks`).
    pub nodes: BTreeSet<String>,
    pub zones: BTreeSet<String>,
    pub racks: BTreeSet<String>,
    /// Place what can be placed (fewer replicas, or replicas sharing a machine) and say so.
    pub best_effort: bool,
}

/// The chosen replicas, widest spread first, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// (node, pool) per replica.
    pub replicas: Vec<(String, String)>,
    /// The domain the replicas are spread across (none: only across nodes).
    pub spread_over: Option<Domain>,
    /// For an operator: "3 replicas over 3 hypervisors in 2 racks".
    pub explanation: String,
    /// What a best-effort placement could not give, as the error would have said it.
    pub shortfall: Option<String>,
}

/// Why no placement could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    #[error("repl must be 1 or more")]
    NoReplicas,
    #[error("{available} node(s) have a {class} pool with {size} bytes free that the constraints allow; {asked} replica(s) asked")]
    Short {
        available: usize,
        asked: usize,
        class: String,
        size: u64,
    },
    #[error("{available} {level}s available, {asked} replicas asked: replicas on one {level} fail together (best_effort places them anyway)")]
    SharedFate {
        level: Domain,
        available: usize,
        asked: usize,
    },
}

/// Levels at which two replicas must differ: a failure there takes the whole machine.
const MACHINE: [Domain; 2] = [Domain::Hypervisor, Domain::Host];

/// Picks the replicas of a volume.
pub fn place(candidates: &[Candidate], req: &Request) -> Result<Placement, PlaceError> {
    if req.repl == 0 {
        return Err(PlaceError::NoReplicas);
    }
    let nodes = best_per_node(candidates, req, &BTreeSet::new());
    let mut shortfall = None;
    let mut repl = req.repl;
    if nodes.len() < req.repl {
        let short = PlaceError::Short {
            available: nodes.len(),
            asked: req.repl,
            class: req.class.clone(),
            size: req.size,
        };
        if !req.best_effort || nodes.is_empty() {
            return Err(short);
        }
        shortfall = Some(short.to_string());
        repl = nodes.len();
    }
    // The widest level with enough known values to give every replica its own.
    let level = Domain::ALL.into_iter().find(|d| {
        let values: BTreeSet<&str> = nodes.iter().filter_map(|c| c.labels.get(*d)).collect();
        values.len() >= repl
    });
    let chosen: Vec<&Candidate> = match level {
        Some(d) => {
            // The best node of each value, best values first.
            let mut seen = BTreeSet::new();
            nodes
                .iter()
                .filter(|c| c.labels.get(d).is_some_and(|v| seen.insert(v)))
                .take(repl)
                .copied()
                .collect()
        }
        None => spread_greedily(&nodes, repl),
    };
    if let Some(level) = shared_machine(&chosen) {
        let fate = PlaceError::SharedFate {
            level,
            available: nodes
                .iter()
                .filter_map(|c| c.labels.get(level))
                .collect::<BTreeSet<_>>()
                .len(),
            asked: req.repl,
        };
        if !req.best_effort {
            return Err(fate);
        }
        shortfall.get_or_insert(fate.to_string());
    }
    Ok(Placement {
        explanation: explain(&chosen),
        replicas: chosen
            .iter()
            .map(|c| (c.node.clone(), c.pool.clone()))
            .collect(),
        spread_over: level,
        shortfall,
    })
}

/// Each node's best pool that `req` allows (the most free space, then the lowest id), for
/// the nodes not in `taken`, best first.
fn best_per_node<'a>(
    candidates: &'a [Candidate],
    req: &Request,
    taken: &BTreeSet<&str>,
) -> Vec<&'a Candidate> {
    let allowed = |c: &&Candidate| {
        c.usable
            && !c.near_full
            && c.class == req.class
            && c.free_bytes >= req.size
            && !taken.contains(c.node.as_str())
            && (req.nodes.is_empty() || req.nodes.contains(&c.node))
            && within(&req.zones, c.labels.get(Domain::Zone))
            && within(&req.racks, c.labels.get(Domain::Rack))
    };
    let mut best: BTreeMap<&str, &Candidate> = BTreeMap::new();
    for c in candidates.iter().filter(allowed) {
        let slot = best.entry(c.node.as_str()).or_insert(c);
        if rank(c) < rank(slot) {
            *slot = c;
        }
    }
    let mut nodes: Vec<&Candidate> = best.into_values().collect();
    nodes.sort_by_key(|c| rank(c));
    nodes
}

/// A replica of a volume as [`place_one_more`] sees it: its node and where that node sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub node: String,
    pub labels: Labels,
}

/// Where one more replica of a volume goes: a rebuild replacing a lost one, or a higher
/// replica count. `kept` are the replicas that stay, `lost` the one being replaced, if any.
/// The new one goes to a node holding none of them, apart from every kept replica at the
/// widest level where a candidate is (and away from the lost replica's domain at that
/// level when a candidate is), then to the most free space. It never shares a
/// hypervisor or a host with a kept replica unless the request is best effort. `req.repl`
/// is not read: one replica is placed.
pub fn place_one_more(
    candidates: &[Candidate],
    kept: &[Placed],
    lost: Option<&Placed>,
    req: &Request,
) -> Result<Placement, PlaceError> {
    let taken: BTreeSet<&str> = kept.iter().chain(lost).map(|p| p.node.as_str()).collect();
    let nodes = best_per_node(candidates, req, &taken);
    if nodes.is_empty() {
        return Err(PlaceError::Short {
            available: 0,
            asked: 1,
            class: req.class.clone(),
            size: req.size,
        });
    }
    // Known and different at `d`: an unknown value proves nothing apart.
    let differs = |c: &Candidate, l: &Labels, d: Domain| matches!((c.labels.get(d), l.get(d)), (Some(x), Some(y)) if x != y);
    let apart = |c: &Candidate, d: Domain, from_lost: bool| {
        kept.iter().all(|k| differs(c, &k.labels, d))
            && (!from_lost || lost.is_none_or(|l| differs(c, &l.labels, d)))
    };
    // Widest level first: apart from the kept replicas matters more than away from the
    // lost one's domain, which may have lost only that one node.
    let pick = Domain::ALL.into_iter().find_map(|d| {
        [true, false].into_iter().find_map(|from_lost| {
            nodes
                .iter()
                .find(|c| apart(c, d, from_lost))
                .map(|c| (*c, d, from_lost && lost.is_some()))
        })
    });
    // Nothing provably apart at any level (no labels): the best node, if it shares no
    // machine with a kept replica.
    let (chosen, level, away) = pick.unwrap_or((nodes[0], Domain::Host, false));
    let shares_machine = kept
        .iter()
        .find_map(|k| shared_machine_of(&chosen.labels, &k.labels));
    let shortfall = match shares_machine {
        Some(level) => {
            let fate = PlaceError::SharedFate {
                level,
                available: 1,
                asked: kept.len() + 1,
            };
            if !req.best_effort {
                return Err(fate);
            }
            Some(fate.to_string())
        }
        None => None,
    };
    let mut explanation = match (shares_machine, kept.is_empty()) {
        (_, true) => "1 replica".to_owned(),
        (None, false) => format!("1 more replica, in another {level} than the others"),
        (Some(m), false) => format!("1 more replica, sharing a {m} with another (best effort)"),
    };
    if away {
        explanation.push_str(&format!(", away from the lost replica's {level}"));
    }
    Ok(Placement {
        replicas: vec![(chosen.node.clone(), chosen.pool.clone())],
        spread_over: shares_machine.is_none().then_some(level),
        explanation,
        shortfall,
    })
}

/// When no level has a value for every replica: each next replica is the best node that
/// shares a machine with none picked so far, if there is one, else the best node left.
fn spread_greedily<'a>(nodes: &[&'a Candidate], repl: usize) -> Vec<&'a Candidate> {
    let mut chosen: Vec<&Candidate> = Vec::new();
    while chosen.len() < repl {
        let left = nodes
            .iter()
            .filter(|c| !chosen.iter().any(|x| x.node == c.node));
        let apart = left
            .clone()
            .find(|c| chosen.iter().all(|x| shared(c, x).is_none()));
        match apart.or_else(|| left.clone().next()) {
            Some(c) => chosen.push(c),
            None => break,
        }
    }
    chosen
}

/// The machine level two replicas share, if any.
fn shared(a: &Candidate, b: &Candidate) -> Option<Domain> {
    shared_machine_of(&a.labels, &b.labels)
}

fn shared_machine_of(a: &Labels, b: &Labels) -> Option<Domain> {
    MACHINE
        .into_iter()
        .find(|d| matches!((a.get(*d), b.get(*d)), (Some(x), Some(y)) if x == y))
}

fn shared_machine(chosen: &[&Candidate]) -> Option<Domain> {
    chosen
        .iter()
        .enumerate()
        .find_map(|(i, a)| chosen[i + 1..].iter().find_map(|b| shared(a, b)))
}

/// Sort key: most free space first, then node and pool ids.
fn rank(c: &Candidate) -> (std::cmp::Reverse<u64>, String, String) {
    (
        std::cmp::Reverse(c.free_bytes),
        c.node.clone(),
        c.pool.clone(),
    )
}

fn within(allowed: &BTreeSet<String>, value: Option<&str>) -> bool {
    allowed.is_empty() || value.is_some_and(|v| allowed.contains(v))
}

/// "2 replicas over 2 nodes in 2 hypervisors in 1 rack": the count of distinct known values
/// at each level, narrowest first, down to the first level they all share. One replica is
/// placed by its labels instead: "1 replica in zone z1, rack r1".
fn explain(chosen: &[&Candidate]) -> String {
    if let [one] = chosen {
        let at: Vec<String> = one.labels.iter().map(|(d, v)| format!("{d} {v}")).collect();
        return match at.is_empty() {
            true => "1 replica, on a node with no fault-domain labels".into(),
            false => format!("1 replica in {}", at.join(", ")),
        };
    }
    let mut parts = vec![format!(
        "{} replica{} over {} node{}",
        chosen.len(),
        plural(chosen.len()),
        chosen.len(),
        plural(chosen.len())
    )];
    for d in Domain::ALL.into_iter().rev() {
        let values: BTreeSet<&str> = chosen.iter().filter_map(|c| c.labels.get(d)).collect();
        if !values.is_empty() {
            parts.push(format!("{} {}{}", values.len(), d, plural(values.len())));
            if values.len() == 1 {
                break;
            }
        }
    }
    parts.join(" in ")
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cand(node: &str, zone: &str, rack: &str, hv: &str, free: u64) -> Candidate {
        let mut labels = Labels::default();
        labels.set(Domain::Zone, zone).unwrap();
        labels.set(Domain::Rack, rack).unwrap();
        labels.set(Domain::Hypervisor, hv).unwrap();
        Candidate {
            node: node.into(),
            pool: format!("{node}-p"),
            labels,
            class: "high".into(),
            free_bytes: free,
            usable: true,
            near_full: false,
        }
    }

    fn req(repl: usize) -> Request {
        Request {
            repl,
            class: "high".into(),
            size: 10,
            ..Default::default()
        }
    }

    #[test]
    fn replicas_go_to_distinct_hypervisors_before_more_free_space() {
        // n1 and n2 share an ESXi host; n3 has the least space but its own host.
        let c = [
            cand("n1", "z1", "r1", "esx1", 900),
            cand("n2", "z1", "r1", "esx1", 800),
            cand("n3", "z1", "r2", "esx2", 100),
        ];
        let p = place(&c, &req(2)).unwrap();
        assert_eq!(
            p.replicas,
            [("n1".into(), "n1-p".into()), ("n3".into(), "n3-p".into())]
        );
        assert_eq!(p.spread_over, Some(Domain::Rack));
        assert_eq!(
            p.explanation,
            "2 replicas over 2 nodes in 2 hypervisors in 2 racks in 1 zone"
        );
        let one = place(&c, &req(1)).unwrap();
        assert_eq!(
            one.explanation,
            "1 replica in zone z1, rack r1, hypervisor esx1"
        );
    }

    fn placed(c: &Candidate) -> Placed {
        Placed {
            node: c.node.clone(),
            labels: c.labels.clone(),
        }
    }

    #[test]
    fn one_more_goes_apart_from_the_kept_replicas_then_away_from_the_lost_one() {
        let kept = cand("n1", "z1", "r1", "h1", 900);
        let lost = cand("n2", "z1", "r2", "h2", 900);
        // n3 has the most room but sits in the lost rack; n4 is in a rack of its own.
        let c = [
            kept.clone(),
            lost.clone(),
            cand("n3", "z1", "r2", "h3", 800),
            cand("n4", "z1", "r3", "h4", 100),
        ];
        let p = place_one_more(&c, &[placed(&kept)], Some(&placed(&lost)), &req(1)).unwrap();
        assert_eq!(p.replicas, [("n4".into(), "n4-p".into())]);
        assert_eq!(p.spread_over, Some(Domain::Rack));
        assert_eq!(
            p.explanation,
            "1 more replica, in another rack than the others, away from the lost replica's rack"
        );
        // Without n4, the lost rack is still apart from the kept replica: n3.
        let p = place_one_more(&c[..3], &[placed(&kept)], Some(&placed(&lost)), &req(1)).unwrap();
        assert_eq!(p.replicas, [("n3".into(), "n3-p".into())]);
        // Another zone than the kept replica beats avoiding the lost rack.
        let c = [
            cand("n3", "z2", "r2", "h3", 100),
            cand("n5", "z1", "r5", "h5", 900),
        ];
        let lost = cand("n2", "z2", "r2", "h2", 900);
        let p = place_one_more(&c, &[placed(&kept)], Some(&placed(&lost)), &req(1)).unwrap();
        assert_eq!(p.replicas[0].0, "n3");
        assert_eq!(p.spread_over, Some(Domain::Zone));
    }

    #[test]
    fn one_more_never_shares_a_machine_unless_best_effort_nor_lands_on_a_replica_node() {
        let kept = cand("n1", "z1", "r1", "h1", 900);
        let c = [kept.clone(), cand("n2", "z1", "r1", "h1", 900)];
        let e = place_one_more(&c, &[placed(&kept)], None, &req(1)).unwrap_err();
        assert_eq!(
            e,
            PlaceError::SharedFate {
                level: Domain::Hypervisor,
                available: 1,
                asked: 2
            }
        );
        let mut r = req(1);
        r.best_effort = true;
        let p = place_one_more(&c, &[placed(&kept)], None, &r).unwrap();
        assert_eq!(p.replicas[0].0, "n2");
        assert!(
            p.shortfall.unwrap().contains("hypervisor"),
            "best effort says so"
        );
        // Only replica nodes (kept or lost) left: nothing to place on.
        let lost = cand("n2", "z1", "r2", "h2", 900);
        let c = [kept.clone(), lost.clone()];
        assert!(matches!(
            place_one_more(&c, &[placed(&kept)], Some(&placed(&lost)), &req(1)),
            Err(PlaceError::Short {
                available: 0,
                asked: 1,
                ..
            })
        ));
    }

    #[test]
    fn shortfalls_and_constraints_are_named() {
        let c = [
            cand("n1", "z1", "r1", "h1", 900),
            cand("n2", "z2", "r2", "h2", 900),
        ];
        assert_eq!(
            place(&c, &req(3)).unwrap_err().to_string(),
            "2 node(s) have a high pool with 10 bytes free that the constraints allow; 3 replica(s) asked"
        );
        let mut r = req(1);
        r.zones = ["z2".to_string()].into();
        assert_eq!(place(&c, &r).unwrap().replicas[0].0, "n2");
        r.zones = ["z9".to_string()].into();
        assert!(matches!(
            place(&c, &r),
            Err(PlaceError::Short { available: 0, .. })
        ));
        assert_eq!(place(&c, &req(0)), Err(PlaceError::NoReplicas));
    }

    #[test]
    fn replicas_sharing_a_hypervisor_are_refused_unless_best_effort() {
        // Three VMs on two ESXi hosts, nothing else known.
        let mut c = vec![
            cand("n1", "z1", "r1", "esx1", 900),
            cand("n2", "z1", "r1", "esx1", 800),
            cand("n3", "z1", "r1", "esx2", 700),
        ];
        assert_eq!(
            place(&c, &req(3)).unwrap_err().to_string(),
            "2 hypervisors available, 3 replicas asked: replicas on one hypervisor fail together (best_effort places them anyway)"
        );
        let mut r = req(3);
        r.best_effort = true;
        let p = place(&c, &r).unwrap();
        assert_eq!(p.replicas.len(), 3);
        assert_eq!(
            p.shortfall.as_deref(),
            Some("2 hypervisors available, 3 replicas asked: replicas on one hypervisor fail together (best_effort places them anyway)")
        );
        // Two replicas fit apart: n1 and n3, not the roomier n2 beside n1.
        let p = place(&c, &req(2)).unwrap();
        assert_eq!(p.replicas[1].0, "n3");
        assert_eq!(p.shortfall, None);
        // Too few nodes: best effort places on all there are.
        c.truncate(1);
        let p = place(&c, &r).unwrap();
        assert_eq!(p.replicas.len(), 1);
        assert!(p
            .shortfall
            .unwrap()
            .starts_with("1 node(s) have a high pool"));
        c.clear();
        assert!(matches!(
            place(&c, &r),
            Err(PlaceError::Short { available: 0, .. })
        ));
    }

    /// Pools of six nodes whose places are fixed by the node (two zones, three racks, one
    /// hypervisor per two nodes in some), in random number, state, class and fill.
    fn arb_candidate() -> impl Strategy<Value = Candidate> {
        (
            0..6u8,
            0..2u8,
            any::<bool>(),
            any::<bool>(),
            prop_oneof![Just("high"), Just("low")],
            0..1000u64,
        )
            .prop_map(|(node, pool, usable, full, class, free)| {
                let mut c = cand(
                    &format!("n{node}"),
                    &format!("z{}", node / 3),
                    &format!("r{}", node / 2),
                    &format!("h{}", node / 2 + node % 2 * (node / 4)),
                    free,
                );
                c.pool = format!("n{node}-p{pool}");
                c.usable = usable;
                c.near_full = full;
                c.class = class.into();
                c
            })
    }

    proptest! {
        #[test]
        fn best_effort_places_whenever_a_pool_fits_and_says_what_is_short(
            cands in prop::collection::vec(arb_candidate(), 0..14),
            repl in 1..4usize,
        ) {
            let mut seen = BTreeSet::new();
            let cands: Vec<Candidate> = cands
                .into_iter()
                .filter(|c| seen.insert((c.node.clone(), c.pool.clone())))
                .collect();
            let mut r = req(repl);
            r.best_effort = true;
            let strict = place(&cands, &req(repl));
            match place(&cands, &r) {
                Ok(p) => {
                    prop_assert!(!p.replicas.is_empty());
                    prop_assert_eq!(p.shortfall.is_some(), strict.is_err());
                    if let Ok(s) = strict {
                        prop_assert_eq!(s.replicas, p.replicas, "best effort changes nothing that fits");
                    }
                }
                Err(e) => {
                    let nothing = matches!(e, PlaceError::Short { available: 0, .. });
                    prop_assert!(nothing, "best effort failed with {}", e);
                }
            }
        }

        #[test]
        fn placement_properties(cands in prop::collection::vec(arb_candidate(), 0..14), repl in 1..4usize) {
            // One candidate per (node, pool), as a cluster view has.
            let mut seen = BTreeSet::new();
            let cands: Vec<Candidate> = cands
                .into_iter()
                .filter(|c| seen.insert((c.node.clone(), c.pool.clone())))
                .collect();
            let r = req(repl);
            let first = place(&cands, &r);
            prop_assert_eq!(&first, &place(&cands, &r), "deterministic");
            let Ok(p) = first else { return Ok(()) };
            let picked: Vec<&Candidate> = p
                .replicas
                .iter()
                .map(|(n, pool)| cands.iter().find(|c| &c.node == n && &c.pool == pool).unwrap())
                .collect();
            let nodes: BTreeSet<&str> = picked.iter().map(|c| c.node.as_str()).collect();
            prop_assert_eq!(nodes.len(), repl, "never two replicas on one node");
            for (i, a) in picked.iter().enumerate() {
                for b in &picked[i + 1..] {
                    prop_assert_ne!(a.labels.get(Domain::Hypervisor), b.labels.get(Domain::Hypervisor), "no shared machine");
                }
            }
            for c in &picked {
                prop_assert!(c.usable && !c.near_full, "only usable pools");
                prop_assert_eq!(c.class.as_str(), "high", "the class is honoured");
                prop_assert!(c.free_bytes >= r.size);
            }
            // With enough distinct values at a level, the replicas sit on distinct values at
            // the widest such level.
            let eligible: Vec<&Candidate> = cands
                .iter()
                .filter(|c| c.usable && !c.near_full && c.class == "high" && c.free_bytes >= r.size)
                .collect();
            let widest = Domain::ALL.into_iter().find(|d| {
                eligible.iter().filter_map(|c| c.labels.get(*d)).collect::<BTreeSet<_>>().len() >= repl
            });
            if let Some(d) = widest {
                let values: BTreeSet<&str> = picked.iter().filter_map(|c| c.labels.get(d)).collect();
                prop_assert_eq!(values.len(), repl, "distinct at {}", d);
            }
        }
    }
}
