//! A new leg's copy, as the nodes at either end run it (DESIGN §5, "A new replica").
//!
//! - The source (a node with a leg in sync) copies in rounds: it snapshots its leg, sends
//!   what the snapshot maps (the first round) or what changed since the last round's
//!   snapshot (`thin_delta`), and records each round, until what changed is small: then the
//!   store says `ready`. The last round runs when the attach node asks, with its raid
//!   suspended ([`Copier::copy_last`]). Once the build is done, it deletes its snapshots.
//! - The target takes block frames for the build only while the store says it is copying.
//!
//! Which snapshot the new leg matches lives in memory: a source that restarts copies the
//! whole leg again, after discarding everything the new leg held, so nothing it sent before
//! can linger where the source has since unmapped.

use super::stream::{byte_ranges, send_discards, send_ranges, ByteRange, Peer};
use crate::cluster::transport::bulk_endpoint;
use crate::cluster::{Cluster, Op};
use crate::kernel::dm::{node_path, KernelDm};
use crate::kernel::leg_copy::LegSource;
use crate::plan::names::Id;
use crate::plan::replica::leg_thins;
use crate::store::state::{Command, VolumeChange};
use crate::store::types::{Build, BuildPhase, NodeId, Volume};
use devicemapper::{Sectors, ThinDevId};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A round that changed at most this much ends the rounds: the last one, copied while the
/// raid is suspended, is about as small.
const READY_BYTES: u64 = 8 << 20;
/// Rounds after which the copy is ready whatever changed.
const MAX_ROUNDS: u32 = 6;

/// The snapshot the new leg matches: its slot (0 or 1) and thin id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Base {
    slot: u8,
    snap: u32,
}

/// One build's copy on its source node; the lock keeps rounds one at a time.
#[derive(Default)]
struct Copy {
    base: Option<Base>,
}

/// The copies this node runs as a source, and its rate limit.
#[derive(Default)]
pub struct Copier {
    copies: Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<Copy>>>>,
    running: Mutex<BTreeSet<String>>,
    /// Bytes a second a copy may send; 0: no limit.
    rate: AtomicU64,
}

/// The name a build's block frames carry: the volume and the node building.
pub fn build_name(volume: &str, target: NodeId) -> String {
    format!("{volume}.{target}")
}

impl Copier {
    pub fn set_rate(&self, bytes_per_second: u64) {
        self.rate.store(bytes_per_second, Ordering::Relaxed);
    }

    fn copy_of(&self, volume: &str) -> Arc<tokio::sync::Mutex<Copy>> {
        self.copies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(volume.to_owned())
            .or_default()
            .clone()
    }

    /// After a reconcile pass: starts the rounds of builds this node is the source of, cleans
    /// up after finished ones, and opens or closes this node's sink for builds it is the
    /// target of.
    pub fn tend(cluster: &Arc<Cluster>) {
        let me = cluster.id();
        let builds: Vec<(Volume, Build)> = cluster.state().read(|st| {
            st.volumes
                .values()
                .filter_map(|v| {
                    let b = v.build.clone()?;
                    Some((v.clone(), b))
                })
                .collect()
        });
        let copier = &cluster.copier;
        for (v, b) in &builds {
            if b.target == me {
                target_sink(cluster, v, b);
            }
            if b.source != me {
                continue;
            }
            let mut running = copier.running.lock().unwrap_or_else(|p| p.into_inner());
            if running.contains(&v.id) {
                continue;
            }
            let work = match b.phase {
                BuildPhase::Copying | BuildPhase::Ready => Work::Rounds,
                BuildPhase::Done => Work::CleanUp,
                BuildPhase::Joined => continue,
            };
            running.insert(v.id.clone());
            let (c, id) = (cluster.clone(), v.id.clone());
            tokio::spawn(async move {
                let result = match work {
                    Work::Rounds => rounds(&c, &id).await,
                    Work::CleanUp => clean_up(&c, &id).await,
                };
                if let Err(why) = result {
                    tracing::warn!(volume = %id, error = %why, "a new leg's copy stopped; retrying");
                    record(&c, &id, VolumeChange::BuildError { why }).await;
                }
                c.copier
                    .running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
            });
        }
        // Sinks of builds that are over.
        let open: BTreeSet<String> = builds
            .iter()
            .filter(|(_, b)| b.target == me && copying(b))
            .map(|(v, b)| build_name(&v.id, b.target))
            .collect();
        cluster.sink.close_all_but(&open);
    }

    /// The last round, while the attach node's raid is suspended: what changed since the
    /// last round goes to the new leg. Returns the bytes sent.
    pub async fn copy_last(cluster: &Cluster, volume: &str) -> Result<u64, String> {
        let copy = cluster.copier.copy_of(volume);
        let mut copy = copy.lock().await;
        let (v, b) = build_of(cluster, volume)?;
        if b.source != cluster.id() || b.phase != BuildPhase::Ready {
            return Err(format!(
                "volume {volume}: this node is not copying a new leg that is ready"
            ));
        }
        if copy.base.is_none() {
            return Err(format!(
                "volume {volume}: the copy's source restarted; it copies the leg again first"
            ));
        }
        let sent = round(cluster, &v, &b, &mut copy).await?;
        Ok(sent.copied)
    }
}

enum Work {
    Rounds,
    CleanUp,
}

fn copying(b: &Build) -> bool {
    matches!(b.phase, BuildPhase::Copying | BuildPhase::Ready)
}

/// The target's sink takes the build's frames into the new leg's data thin once it is up.
fn target_sink(cluster: &Cluster, v: &Volume, b: &Build) {
    let name = build_name(&v.id, b.target);
    if !copying(b) || cluster.sink.is_open(&name) {
        return;
    }
    let (Ok(node), Ok(vid)) = (Id::node(&b.target.to_string()), Id::object(&v.id)) else {
        return;
    };
    let (_, data) = leg_thins(&node, &vid);
    let path = node_path(&data.dm_name());
    if !path.exists() {
        return;
    }
    match cluster.sink.open(&name, &path) {
        Ok(()) => tracing::info!(volume = %v.id, "taking a new leg's copy"),
        Err(e) => tracing::warn!(volume = %v.id, error = %e, "could not open the new leg"),
    }
}

fn build_of(cluster: &Cluster, volume: &str) -> Result<(Volume, Build), String> {
    cluster
        .state()
        .read(|st| {
            let v = st.volumes.get(volume)?;
            Some((v.clone(), v.build.clone()?))
        })
        .ok_or_else(|| format!("volume {volume} builds no new leg"))
}

async fn record(cluster: &Cluster, volume: &str, change: VolumeChange) {
    let cmd = Command::UpdateVolume {
        id: volume.to_owned(),
        change,
    };
    if let Err(e) = cluster.submit_and_apply(Op::Command(cmd)).await {
        tracing::warn!(volume, error = %e, "could not record the copy's progress");
    }
}

/// Rounds until the store says the copy is ready and the new leg matches a snapshot here.
async fn rounds(cluster: &Arc<Cluster>, volume: &str) -> Result<(), String> {
    let copy = cluster.copier.copy_of(volume);
    loop {
        let mut copy = copy.lock().await;
        let (v, b) = build_of(cluster, volume)?;
        let done = match b.phase {
            BuildPhase::Copying => false,
            BuildPhase::Ready => copy.base.is_some(),
            _ => true,
        };
        if done || b.source != cluster.id() {
            return Ok(());
        }
        let sent = round(cluster, &v, &b, &mut copy).await?;
        let rounds = b.rounds + 1;
        let first = sent.allocated.is_some();
        // Small enough: the pause copies about as much. A volume written about as fast as
        // the copy runs never settles; after the last round allowed, the pause carries it.
        let ready = !first && (sent.copied <= READY_BYTES || rounds >= MAX_ROUNDS);
        tracing::info!(
            volume,
            rounds,
            bytes = sent.copied,
            rate = sent.rate,
            ready,
            "copied a round of a new leg"
        );
        if b.phase == BuildPhase::Copying {
            record(
                cluster,
                volume,
                VolumeChange::BuildRound {
                    rounds,
                    allocated_bytes: sent.allocated.unwrap_or(b.allocated_bytes),
                    copied_bytes: b.copied_bytes + sent.copied,
                    left_bytes: sent.copied,
                    rate: sent.rate,
                    ready,
                },
            )
            .await;
        }
    }
}

/// What one round sent.
struct Sent {
    copied: u64,
    rate: u64,
    /// The first round: what the leg mapped.
    allocated: Option<u64>,
}

/// One round: a new snapshot in the slot the base does not use; all it maps (no base) or
/// what changed since the base goes to the new leg; it becomes the base.
async fn round(cluster: &Cluster, v: &Volume, b: &Build, copy: &mut Copy) -> Result<Sent, String> {
    let leg = leg_source(cluster.id(), v)?;
    let peer = peer_of(cluster, b.target)?;
    let base = copy.base;
    let slot = base.map_or(0, |x| x.slot ^ 1);
    let snap = b.snap_ids[usize::from(slot)];
    let size = v.size;
    let (device, ranges, discards, allocated) = {
        let leg = leg.clone();
        tokio::task::spawn_blocking(move || -> Result<_, String> {
            let dm = KernelDm::open().map_err(|e| e.to_string())?;
            let snap_id = thin(snap)?;
            let device = leg
                .snapshot(&dm, slot, snap_id)
                .map_err(|e| e.to_string())?;
            Ok(match base {
                None => {
                    let m = leg.mapped(&dm, snap_id).map_err(|e| e.to_string())?;
                    let ranges = byte_ranges(&m.ranges, m.block_sectors, size);
                    // Whatever the new leg held from before a restart goes.
                    let whole = vec![ByteRange {
                        offset: 0,
                        len: size / 4096 * 4096,
                    }];
                    (device, ranges, whole, Some(m.bytes()))
                }
                Some(base) => {
                    let d = leg
                        .delta(&dm, thin(base.snap)?, snap_id)
                        .map_err(|e| e.to_string())?;
                    let changed = byte_ranges(&d.changed, d.block_sectors, size);
                    let unmapped = byte_ranges(&d.unmapped, d.block_sectors, size);
                    (device, changed, unmapped, None)
                }
            })
        })
        .await
        .map_err(|e| e.to_string())??
    };
    let build = build_name(&v.id, b.target);
    let transport = cluster.transport();
    let started = Instant::now();
    send_discards(transport, &peer, &build, &discards)
        .await
        .map_err(|e| e.to_string())?;
    let rate = Some(cluster.copier.rate.load(Ordering::Relaxed)).filter(|r| *r > 0);
    let sent = send_ranges(
        transport,
        &peer,
        &build,
        &device,
        &ranges,
        rate,
        &mut |_| {},
    )
    .await
    .map_err(|e| e.to_string())?;
    let secs = started.elapsed().as_secs_f64().max(0.001);
    if let Some(base) = base {
        let leg = leg.clone();
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            let dm = KernelDm::open().map_err(|e| e.to_string())?;
            leg.drop_snapshot(&dm, base.slot, thin(base.snap)?)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())??;
    }
    copy.base = Some(Base { slot, snap });
    Ok(Sent {
        copied: sent.bytes,
        rate: (sent.bytes as f64 / secs) as u64,
        allocated,
    })
}

/// After a build is over (joined and checked, or stopped): both snapshots go, then the record.
async fn clean_up(cluster: &Arc<Cluster>, volume: &str) -> Result<(), String> {
    let copy = cluster.copier.copy_of(volume);
    let mut copy = copy.lock().await;
    let (v, b) = build_of(cluster, volume)?;
    let leg = leg_source(cluster.id(), &v)?;
    let snaps = b.snap_ids;
    tokio::task::spawn_blocking(move || -> Result<(), String> {
        let dm = KernelDm::open().map_err(|e| e.to_string())?;
        for (slot, snap) in (0u8..).zip(snaps) {
            leg.drop_snapshot(&dm, slot, thin(snap)?)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    })
    .await
    .map_err(|e| e.to_string())??;
    copy.base = None;
    record(cluster, volume, VolumeChange::BuildCleaned).await;
    Ok(())
}

fn thin(id: u32) -> Result<ThinDevId, String> {
    ThinDevId::new_u64(u64::from(id)).map_err(|e| format!("thin id {id}: {e}"))
}

/// This node's leg of `v`, as the copy reads it.
fn leg_source(me: NodeId, v: &Volume) -> Result<LegSource, String> {
    let r = v
        .replicas
        .iter()
        .find(|r| r.node == me)
        .ok_or_else(|| format!("volume {}: this node holds no leg of it", v.id))?;
    Ok(LegSource {
        node: Id::node(&me.to_string()).map_err(|e| e.to_string())?,
        pool: Id::object(&r.pool).map_err(|e| e.to_string())?,
        volume: Id::object(&v.id).map_err(|e| e.to_string())?,
        thin_id: thin(r.thin_id)?,
        size: Sectors(v.size / 512),
    })
}

/// Where node `node` takes block frames: its bulk lane.
fn peer_of(cluster: &Cluster, node: NodeId) -> Result<Peer, String> {
    cluster
        .state()
        .read(|st| {
            st.nodes.get(&node).map(|n| {
                let endpoint = bulk_endpoint(&n.data_addr).ok_or_else(|| {
                    format!("node {node}'s node port {} has no next port", n.data_addr)
                })?;
                Ok(Peer {
                    endpoint,
                    public_key: n.public_key.clone(),
                })
            })
        })
        .ok_or_else(|| format!("node {node} is not a member"))?
}
