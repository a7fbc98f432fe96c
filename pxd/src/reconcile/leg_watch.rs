//! Leg health on the attach node (DESIGN §5). A remote leg whose node or link vanished holds
//! its writes (`ctrl_loss_tmo=-1`): the raid stays all-`A` and nothing is acknowledged on
//! fewer legs than the store believes in sync. When the leg's controller has not been live
//! for `--leg-timeout-ms`, the leg is recorded stale through Raft; only then does the next
//! pass delete the controller, so the held writes complete on the legs still in sync.
//!
//! The watch reads sysfs only (no device-mapper), twice a second, so the pause a lost leg
//! costs is the kernel's keep-alive timeout plus the leg timeout: seconds.

use crate::cluster::{Cluster, Op};
use crate::kernel::nvme_host;
use crate::plan::names::{host_nqn, leg_nqn, Id};
use crate::reconcile::service::Reconciler;
use crate::store::state::{Command, VolumeChange};
use crate::store::types::NodeId;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the controllers of attached legs are read.
const TICK: Duration = Duration::from_millis(500);

/// A leg being watched: its volume, its node, the epoch it serves.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Watched {
    volume: String,
    node: NodeId,
    epoch: u64,
    nqn: String,
}

/// The in-sync remote legs of the volumes attached on this node.
fn watched(reconciler: &Reconciler) -> Vec<Watched> {
    let desired = reconciler.desired();
    let mut out = Vec::new();
    for a in desired.attached.iter().filter(|a| !a.detaching) {
        let Ok(vid) = Id::object(&a.id) else { continue };
        for leg in a.legs.iter().filter(|l| l.in_sync && l.serving && !l.local) {
            let (Ok(node), Ok(nid)) = (leg.node.parse::<NodeId>(), Id::node(&leg.node)) else {
                continue;
            };
            out.push(Watched {
                volume: a.id.clone(),
                node,
                epoch: a.epoch,
                nqn: leg_nqn(&nid, &vid, a.epoch),
            });
        }
    }
    out
}

/// Watches until the process ends; see the module doc.
pub async fn run(cluster: Arc<Cluster>, reconciler: Arc<Reconciler>, timeout: Duration) {
    let me = match Id::node(&cluster.id().to_string()) {
        Ok(id) => host_nqn(&id),
        Err(_) => return,
    };
    // Since when each leg's controller has not been live.
    let mut down: BTreeMap<Watched, Instant> = BTreeMap::new();
    loop {
        tokio::time::sleep(TICK).await;
        let legs = watched(&reconciler);
        let controllers: Vec<nvme_host::Controller> = nvme_host::controllers()
            .into_iter()
            .filter(|c| c.host_nqn == me)
            .collect();
        down.retain(|w, _| legs.contains(w));
        for leg in legs {
            // A leg not yet connected is the reconciler's to connect, not a loss.
            let Some(c) = controllers.iter().find(|c| c.subsys_nqn == leg.nqn) else {
                down.remove(&leg);
                continue;
            };
            if c.state == "live" {
                down.remove(&leg);
                continue;
            }
            let since = *down.entry(leg.clone()).or_insert_with(Instant::now);
            if since.elapsed() < timeout {
                continue;
            }
            let cmd = Command::UpdateVolume {
                id: leg.volume.clone(),
                change: VolumeChange::LegStale {
                    node: leg.node,
                    epoch: leg.epoch,
                    held_ms: u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX),
                },
            };
            match cluster.submit_and_apply(Op::Command(cmd)).await {
                Ok(_) => {
                    tracing::warn!(
                        volume = %leg.volume,
                        node = %leg.node,
                        controller = %c.name,
                        state = %c.state,
                        after = ?since.elapsed(),
                        "leg lost: recorded stale; the raid goes on without it"
                    );
                    down.remove(&leg);
                    // Deleted here and now, not by a pass: a pass may be waiting on this very
                    // leg's held I/O. Its writes then fail on it and complete on the others.
                    let name = c.name.clone();
                    match tokio::task::spawn_blocking(move || nvme_host::delete(&name)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "could not drop the lost leg's controller")
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "could not drop the lost leg's controller")
                        }
                    }
                    let r = reconciler.clone();
                    tokio::spawn(async move {
                        if let Err(e) = r.pass().await {
                            tracing::warn!(error = %e, "the pass after a lost leg failed");
                        }
                    });
                }
                // No quorum, or the last leg in sync: the writes stay held; try again after
                // another timeout.
                Err(e) => {
                    tracing::warn!(
                        volume = %leg.volume,
                        node = %leg.node,
                        error = %e,
                        "leg lost, but it could not be recorded stale; its writes stay held"
                    );
                    down.insert(leg, Instant::now());
                }
            }
        }
    }
}
