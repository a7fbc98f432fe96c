//! The attach node's lease (DESIGN §5). Unlinking remote exports does not stop an old
//! attach node that holds a *local* leg: cut off from the cluster, it could let its raid go
//! on with that leg alone and acknowledge writes the new attach never sees. So a node with
//! replicated volumes attached confirms, every quarter lease, that it is still on the
//! majority side: fresh heartbeats from a majority of the voters, or else a Raft read index
//! through the leader (no log entry). When it has not
//! confirmed for a whole `--attach-lease-ms`, it fences itself: `error` under its local
//! legs first, then its controllers deleted, so writes held or still issued fail instead of
//! completing anywhere. Those volumes then count as not attached here (their stack is torn
//! down once nothing holds it), and an attach elsewhere with `--force` waits out the lease
//! before it is acknowledged.

use crate::cluster::Cluster;
use crate::kernel::dm::KernelDm;
use crate::kernel::{nvme_host, stack};
use crate::plan::names::{host_nqn, parse_leg_nqn, Id};
use crate::plan::replica::leg_thins;
use crate::reconcile::service::Reconciler;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Confirms the lease until the process ends; see the module doc.
pub async fn run(cluster: Arc<Cluster>, reconciler: Arc<Reconciler>, lease: Duration) {
    let Ok(node) = Id::node(&cluster.id().to_string()) else {
        return;
    };
    let tick = (lease / 4).max(Duration::from_millis(250));
    let mut confirmed = Instant::now();
    loop {
        tokio::time::sleep(tick).await;
        let attached: Vec<(String, u64)> = reconciler
            .desired()
            .attached
            .iter()
            .map(|a| (a.id.clone(), a.epoch))
            .collect();
        if attached.is_empty() {
            confirmed = Instant::now();
            continue;
        }
        // The lease runs from when the confirmation was asked for, not when it came. Fresh
        // heartbeats from a majority of the voters confirm it too: an election (no leader
        // for a while) does not cut this node off from the majority.
        let asked = Instant::now();
        let heard = cluster.status().quorum.ok;
        let confirmed_now = if heard {
            Ok(())
        } else {
            cluster.confirm_quorum(tick).await
        };
        match confirmed_now {
            Ok(()) => {
                confirmed = asked;
                continue;
            }
            Err(e) if confirmed.elapsed() < lease => {
                tracing::warn!(error = %e, "could not renew the attach lease; retrying");
                continue;
            }
            Err(e) => {
                for (volume, epoch) in attached {
                    tracing::error!(
                        volume = %volume,
                        epoch,
                        error = %e,
                        "attach lease lost: fencing this node's stack of the volume; its I/O fails from now on"
                    );
                    reconciler.fence(&volume, epoch);
                    let (node, volume) = (node.clone(), volume.clone());
                    let done = tokio::task::spawn_blocking(move || fence(&node, &volume)).await;
                    if let Ok(Err(e)) = done {
                        tracing::error!(error = %e, "fencing failed");
                    }
                }
            }
        }
    }
}

/// `error` under this node's leg of `volume`, then its controllers deleted, so that what
/// the raid is given from now on fails on every leg. A live controller completes what it
/// carries before it goes. One that is not live holds writes that may be on the local leg
/// already: failed on the remote leg, the raid would acknowledge them from the local leg
/// alone, and they are not on the legs the new attach uses. It is left holding them (the
/// writers wait) for as long as this stack stays.
fn fence(node: &Id, volume: &str) -> Result<(), String> {
    let vid = Id::object(volume).map_err(|e| e.to_string())?;
    let dm = KernelDm::open().map_err(|e| e.to_string())?;
    let (meta, data) = leg_thins(node, &vid);
    let mut leg_here = false;
    for d in [&meta, &data] {
        leg_here |= stack::fence(&dm, d).map_err(|e| e.to_string())?;
    }
    let me = host_nqn(node);
    for c in nvme_host::controllers() {
        let ours =
            c.host_nqn == me && parse_leg_nqn(&c.subsys_nqn).is_some_and(|(_, v, _)| v == vid);
        if !ours {
            continue;
        }
        if c.state == "live" || !leg_here {
            nvme_host::delete(&c.name).map_err(|e| e.to_string())?;
        } else {
            tracing::error!(
                volume = %volume,
                controller = %c.name,
                state = %c.state,
                "a lost leg holds writes this node's own leg may have taken: they stay held, \
                 never acknowledged (failing them would acknowledge them from this leg alone)"
            );
        }
    }
    Ok(())
}
