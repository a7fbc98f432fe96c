//! The reconciler as the daemon runs it: one pass at a time, on a timer and after every API
//! change, reading what this node should have from the cluster store and recording what it
//! did back through Raft. It also keeps the pools' use from the last pass, which the API
//! checks before it allocates and `/metrics` exports.

use crate::cluster::gossip::PoolBeat;
use crate::cluster::{Cluster, Op};
use crate::crypt::ClusterKey;
use crate::kernel::dm::{DeviceMapper, KernelDm};
use crate::plan::names::{pool_devices, DeviceName, Id, Kind};
use crate::pool::class::Thresholds;
use crate::pool::PoolError;
use crate::pool::{self, PoolUsage};
use crate::reconcile::derive::{node_state, records};
use crate::reconcile::desired::NodeState;
use crate::reconcile::execute::ExecError;
use crate::reconcile::steps::{assemble, Observed, Step};
use crate::reconcile::{reconcile_pass, Pass};
use crate::store::pools::PoolChange;
use crate::store::state::Command;
use crate::store::types::NodeId;
use crate::store::types::PoolHealth;
use devicemapper::Sectors;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// When a pool counts as near full: new allocations are refused past these.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FullThresholds {
    pub data_percent: u8,
    pub meta_percent: u8,
}

/// A pool's use as the last pass read it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct PoolUse {
    pub data_used: u64,
    pub data_total: u64,
    pub meta_used_blocks: u64,
    pub meta_total_blocks: u64,
    pub chunk_bytes: u64,
}

impl PoolUse {
    fn from_usage(u: &PoolUsage) -> PoolUse {
        PoolUse {
            data_used: u.data_used_bytes(),
            data_total: u.data_total_bytes(),
            meta_used_blocks: u.meta_used_blocks,
            meta_total_blocks: u.meta_total_blocks,
            chunk_bytes: *u.chunk * 512,
        }
    }

    fn percent(used: u64, total: u64) -> u64 {
        (used * 100).checked_div(total).unwrap_or(0)
    }

    /// The pool as heartbeats carry it to the other nodes' placement.
    pub fn beat(&self, t: &FullThresholds) -> PoolBeat {
        PoolBeat {
            data_used: self.data_used,
            data_total: self.data_total,
            near_full: self.near_full(t),
        }
    }

    /// Why the pool takes no new allocations, if it is past a threshold.
    pub fn near_full(&self, t: &FullThresholds) -> Option<String> {
        let data = Self::percent(self.data_used, self.data_total);
        let meta = Self::percent(self.meta_used_blocks, self.meta_total_blocks);
        if data >= u64::from(t.data_percent) {
            Some(format!(
                "its data is {data}% used; new allocations stop at {}% (--pool-full-percent)",
                t.data_percent
            ))
        } else if meta >= u64::from(t.meta_percent) {
            Some(format!(
                "its metadata is {meta}% used; new allocations stop at {}% (--meta-full-percent)",
                t.meta_percent
            ))
        } else {
            None
        }
    }
}

/// What one pass found besides its failures: its pools' use, its volumes' mapped bytes, how
/// each pool stands and where each pool member was found.
#[derive(Debug, Default)]
struct Found {
    /// The raid of each replicated volume attached here, as the pass last read it.
    raids: BTreeMap<String, crate::plan::raid::RaidStatus>,
    pools: BTreeMap<String, PoolUse>,
    volumes: BTreeMap<String, VolumeSeen>,
    health: BTreeMap<String, PoolHealth>,
    members: BTreeMap<String, PathBuf>,
    /// Member drives that fail reads: (drive uuid, why).
    failed_drives: Vec<(String, String)>,
    /// Pools and volumes the pass planned, and how many of them (or drives, or the node
    /// itself) it changed in the kernel.
    planned: usize,
    changed: usize,
}

type PassResult = (Vec<StepFailure>, Found);

/// A finished pass: its number, and what it returned.
type Finished = (u64, Result<Vec<StepFailure>, String>);

/// A step of a pass that failed: the volume it concerned (none for a pool or the node).
#[derive(Debug, Clone)]
pub struct StepFailure {
    pub volume: Option<String>,
    pub error: String,
}

/// What the last pass found and did.
#[derive(Debug, Clone, Default)]
pub struct LastPass {
    pub pools: BTreeMap<String, PoolUse>,
    /// This node's volumes as the pass saw them, by id.
    pub volumes: BTreeMap<String, VolumeSeen>,
    /// Where each member drive of this node's pools was found, by label uuid.
    pub members: BTreeMap<String, PathBuf>,
    /// The raid of each replicated volume attached here, by volume id.
    pub raids: BTreeMap<String, crate::plan::raid::RaidStatus>,
    pub error: Option<String>,
}

/// Sets the drive gauges of node `node` from the store, with `members` (the member drives the
/// last pass found, by label uuid) telling a drive that is there from one that is missing.
fn export_drives(
    m: &crate::metrics::Metrics,
    round: &mut crate::metrics::series::Round<'_>,
    st: &crate::store::state::ClusterState,
    node: &str,
    members: &BTreeMap<String, PathBuf>,
) {
    use crate::store::types::DriveState;
    for d in st.drives.values().filter(|d| d.node.to_string() == node) {
        let class = d.class.map(|c| c.to_string()).unwrap_or_default();
        round.set_u64(&m.drive_size_bytes, &[node, &d.id, &d.pool, &class], d.size);
        let now = match d.state {
            DriveState::Failed => "failed",
            DriveState::Adding | DriveState::Labelling => "adding",
            DriveState::Online if !d.pool.is_empty() && !members.contains_key(&d.id) => "missing",
            DriveState::Online => "online",
        };
        for state in DRIVE_STATES {
            round.set(
                &m.drive_state,
                &[node, &d.id, &d.pool, state],
                i64::from(state == now),
            );
        }
    }
}

/// The states `pxd_drive_state` has a series for.
const DRIVE_STATES: [&str; 4] = ["online", "missing", "failed", "adding"];

/// How long the last round of a new leg's copy may hold the raid suspended before the
/// re-assembly gives up and resumes the raid as it was.
const COPY_LAST_LIMIT: Duration = Duration::from_secs(60);

pub struct Reconciler {
    cluster: Arc<Cluster>,
    mount_root: PathBuf,
    /// How drives being added are classed.
    thresholds: Thresholds,
    pub full: FullThresholds,
    /// One pass at a time; the API waits on it.
    running: tokio::sync::Mutex<()>,
    /// Passes begun, and the last finished pass's number and result: callers that waited
    /// while a pass ran share the next one (see [`Reconciler::pass`]).
    begun: std::sync::atomic::AtomicU64,
    finished: Mutex<Option<Finished>>,
    /// Attachments (volume, epoch) this node fenced when its lease ran out: no longer
    /// attached here, whatever the store says.
    fenced: Mutex<BTreeSet<(String, u64)>>,
    /// How long a takeover holds old exports: a lease and a half, so the old attach node's
    /// lease has run out by its own clock (see `NodeState::takeover_holds`).
    takeover_hold: Duration,
    /// How long each random pattern of a joining drive's benchmark runs.
    drive_bench: Duration,
    /// The attach epoch of each volume with a leg here, and since when this node knows it.
    epochs_seen: Mutex<BTreeMap<String, (u64, std::time::Instant)>>,
    last: Mutex<LastPass>,
    /// Since when each stale leg of a volume attached here has been seen stale.
    stale_clock: super::replica_timeout::StaleClock,
    /// How many times its capacity a pool may have provisioned (placement of new legs).
    overcommit: f64,
    /// The dm-crypt workqueues new crypt tables bypass.
    crypt_workqueues: crate::plan::crypt::Workqueues,
    new_pool: crate::store::types::NewPool,
}

/// Whether `v` has a leg marked failed: its attachment was forced from a node holding that
/// leg (or a loss was accepted), and that node may still be writing to the other legs.
fn taken_from_a_leg(v: &crate::store::types::Volume) -> bool {
    v.replicas
        .iter()
        .any(|r| r.state == crate::store::types::ReplicaState::Failed)
}

impl Reconciler {
    pub fn new(
        cluster: Arc<Cluster>,
        mount_root: PathBuf,
        thresholds: Thresholds,
        full: FullThresholds,
        attach_lease: Duration,
        drive_bench: Duration,
    ) -> Reconciler {
        Reconciler {
            cluster,
            mount_root,
            thresholds,
            full,
            running: tokio::sync::Mutex::new(()),
            begun: Default::default(),
            finished: Mutex::new(None),
            fenced: Mutex::new(Default::default()),
            takeover_hold: attach_lease * 3 / 2,
            drive_bench,
            epochs_seen: Mutex::new(BTreeMap::new()),
            last: Mutex::new(LastPass::default()),
            stale_clock: Default::default(),
            overcommit: 1.0,
            crypt_workqueues: crate::plan::crypt::Workqueues::DEFAULT,
            new_pool: Default::default(),
        }
    }

    pub fn mount_root(&self) -> &std::path::Path {
        &self.mount_root
    }

    /// How many times its capacity a pool may have provisioned, as placement admits.
    pub fn set_overcommit(&mut self, overcommit: f64) {
        self.overcommit = overcommit;
    }

    /// The dm-crypt workqueues new crypt tables bypass; live ones keep theirs.
    pub fn set_crypt_workqueues(&mut self, workqueues: crate::plan::crypt::Workqueues) {
        self.crypt_workqueues = workqueues;
    }

    /// How pools this node's new drives found are made (the `--thin-*` flags).
    pub fn set_new_pool(&mut self, new_pool: crate::store::types::NewPool) {
        self.new_pool = new_pool;
    }

    /// What placement needs from this node's view, in one read: the nodes online as seen
    /// from here, and every pool's use as its node last reported it (this node's from its
    /// own last pass, the freshest; the others' from their heartbeats).
    pub fn liveness_and_pools(&self) -> (BTreeSet<NodeId>, BTreeMap<String, PoolBeat>) {
        let mut online = BTreeSet::new();
        let mut seen = BTreeMap::new();
        for n in self.cluster.nodes() {
            if n.liveness == crate::cluster::gossip::Liveness::Online {
                online.insert(n.id);
            }
            if let Some(stats) = n.stats {
                seen.extend(stats.pools);
            }
        }
        for (id, u) in self.last().pools {
            seen.insert(id, u.beat(&self.full));
        }
        (online, seen)
    }

    /// Replaces legs stale past the replica timeout on volumes attached here.
    async fn replace_timed_out(&self) {
        let me = self.cluster.id();
        let due = self
            .cluster
            .state()
            .read(|st| self.stale_clock.due(st, me, std::time::Instant::now()));
        if due.is_empty() {
            return;
        }
        let (online, seen) = self.liveness_and_pools();
        super::replica_timeout::act(&self.cluster, due, |st, v, lost| {
            let view = crate::plan::placement::ClusterView {
                state: st,
                online: &online,
                seen: &seen,
                overcommit: self.overcommit,
            };
            super::replica_timeout::place(&view, v, lost)
        })
        .await;
    }

    /// The cluster key, once this node has it (after `cluster init` or `join`).
    pub fn cluster_key(&self) -> Option<Arc<ClusterKey>> {
        self.cluster.cluster_key()
    }

    /// The pools' use and the outcome of the last pass.
    pub fn last(&self) -> LastPass {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// What this node should have, as the store says now.
    pub fn desired(&self) -> NodeState {
        let me = self.cluster.id();
        let root = self.mount_root.clone();
        let (mut state, taken) = self.cluster.state().read(|s| {
            let taken: BTreeSet<String> = s
                .volumes
                .values()
                .filter(|v| taken_from_a_leg(v))
                .map(|v| v.id.clone())
                .collect();
            (node_state(s, me, Some(root)), taken)
        });
        state.thresholds = self.thresholds;
        state.drive_bench = Some(self.drive_bench);
        state.crypt_workqueues = self.crypt_workqueues;
        state.new_pool = self.new_pool;
        let now = std::time::Instant::now();
        let mut seen = self.epochs_seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|id, _| state.volumes.iter().any(|v| v.id == *id));
        for v in &state.volumes {
            let Some(leg) = &v.leg else { continue };
            let since = match seen.get(&v.id) {
                Some((epoch, since)) if *epoch == leg.epoch => *since,
                _ => {
                    seen.insert(v.id.clone(), (leg.epoch, now));
                    now
                }
            };
            if taken.contains(&v.id) && now.duration_since(since) < self.takeover_hold {
                state.takeover_holds.insert(v.id.clone());
            }
        }
        drop(seen);
        let fenced = self.fenced.lock().unwrap_or_else(|p| p.into_inner());
        state
            .attached
            .retain(|a| !fenced.contains(&(a.id.clone(), a.epoch)));
        state
    }

    /// Marks volume `volume`'s attachment at `epoch` fenced here (see [`super::lease`]).
    pub fn fence(&self, volume: &str, epoch: u64) {
        self.fenced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((volume.to_owned(), epoch));
    }

    /// Runs one pass to completion. Returns the steps that failed (each skipped the rest of
    /// its volume or pool, not the others), or why the whole pass stopped.
    ///
    /// A caller has recorded its change before it calls, so any pass that begins after the
    /// call arrives serves it. Callers that arrive while a pass runs therefore wait for it,
    /// then share one pass: the first to get the lock runs it, the others take its result.
    /// N concurrent changes cost two passes, not N.
    pub async fn pass(self: &Arc<Self>) -> Result<Vec<StepFailure>, String> {
        use std::sync::atomic::Ordering;
        let arrived = self.begun.load(Ordering::SeqCst);
        let _one = self.running.lock().await;
        if let Some((n, result)) = &*self.finished.lock().unwrap_or_else(|p| p.into_inner()) {
            if *n > arrived {
                return result.clone();
            }
        }
        let n = self.begun.fetch_add(1, Ordering::SeqCst) + 1;
        let result = Box::pin(self.pass_now()).await;
        *self.finished.lock().unwrap_or_else(|p| p.into_inner()) = Some((n, result.clone()));
        result
    }

    /// One pass, run now; the caller holds `running`.
    async fn pass_now(self: &Arc<Self>) -> Result<Vec<StepFailure>, String> {
        if self.cluster.cluster_id().is_none() {
            return Ok(Vec::new());
        }
        let started = std::time::Instant::now();
        let me = self.clone();
        let handle = tokio::runtime::Handle::current();
        let result = tokio::task::spawn_blocking(move || me.pass_blocking(&handle))
            .await
            .map_err(|e| format!("the reconcile pass stopped: {e}"))?;
        if let Ok((_, found)) = &result {
            let m = self.cluster.metrics();
            m.reconcile_pass_seconds
                .with_label_values(&["full"])
                .observe(started.elapsed().as_secs_f64());
            for (outcome, n) in [("planned", found.planned), ("changed", found.changed)] {
                m.reconcile_objects
                    .with_label_values(&["full", outcome])
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            crate::rebuild::copy::Copier::tend(&self.cluster);
            self.replace_timed_out().await;
            self.record_failed_drives(&found.failed_drives).await;
            self.record_health(&found.health).await;
            self.export(found);
            self.ask_scheduled_scrub().await;
        }
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match &result {
            Ok((failures, found)) => {
                self.cluster.report_pools(
                    found
                        .pools
                        .iter()
                        .map(|(id, u)| (id.clone(), u.beat(&self.full)))
                        .collect(),
                );
                last.pools = found.pools.clone();
                last.volumes = found.volumes.clone();
                last.members = found.members.clone();
                last.raids = found.raids.clone();
                last.error = failures.first().map(|f| f.error.clone());
            }
            Err(e) => last.error = Some(e.clone()),
        }
        result.map(|(failures, _)| failures)
    }

    /// Asks for the raid check the scrub schedule says is due on this node, if any; the
    /// next passes run it.
    async fn ask_scheduled_scrub(&self) {
        let now = crate::cluster::rpc::now_ms() / 1000;
        let me = self.cluster.id();
        let Some(id) = self
            .cluster
            .state()
            .read(|st| super::scrub_schedule::due(st, me, now))
        else {
            return;
        };
        tracing::info!(volume = %id, "scheduled scrub: asking for a raid check");
        let cmd = Command::UpdateVolume {
            id: id.clone(),
            change: crate::store::state::VolumeChange::Check { at: now },
        };
        if let Err(e) = self.cluster.submit_and_apply(Op::Command(cmd)).await {
            tracing::warn!(volume = %id, error = %e, "could not ask for the scheduled scrub");
        }
    }

    /// Records through Raft each member drive newly seen failing reads: its replicas are
    /// then built elsewhere at once (a failed drive does not come back by waiting).
    async fn record_failed_drives(&self, failed: &[(String, String)]) {
        for (drive, why) in failed {
            let online = self.cluster.state().read(|st| {
                st.drives
                    .get(drive)
                    .is_some_and(|d| d.state == crate::store::types::DriveState::Online)
            });
            if !online {
                continue;
            }
            tracing::error!(drive = %drive, "drive failed: {why}");
            let cmd = Command::UpdateDrive {
                id: drive.clone(),
                change: crate::store::pools::DriveChange::Failed {
                    reason: format!("I/O errors: {why}"),
                },
            };
            if let Err(e) = self.cluster.submit_and_apply(Op::Command(cmd)).await {
                tracing::warn!(drive = %drive, error = %e, "could not record the drive's failure");
            }
        }
    }

    /// Records through Raft each pool whose health changed, logging the change.
    async fn record_health(&self, health: &BTreeMap<String, PoolHealth>) {
        let stored: BTreeMap<String, PoolHealth> = self.cluster.state().read(|st| {
            st.pools
                .values()
                .map(|p| (p.id.clone(), p.health.clone()))
                .collect()
        });
        for (pool, h) in health {
            if stored.get(pool) == Some(h) {
                continue;
            }
            match h {
                PoolHealth::Online => tracing::info!(pool = %pool, "pool is online"),
                PoolHealth::Degraded(why) => {
                    tracing::warn!(pool = %pool, "pool is degraded: {why}")
                }
                PoolHealth::Damaged(why) => tracing::error!(pool = %pool, "pool is damaged: {why}"),
            }
            let cmd = Command::UpdatePool {
                id: pool.clone(),
                change: PoolChange::Health { health: h.clone() },
            };
            if let Err(e) = self.cluster.submit_and_apply(Op::Command(cmd)).await {
                tracing::warn!(pool = %pool, error = %e, "could not record the pool's health");
            }
        }
    }

    /// Sets the pool and volume gauges from the store and what the pass read: in place,
    /// removing only the series of what is gone (see [`crate::metrics::series`]).
    fn export(&self, found: &Found) {
        let (pools, volumes) = (&found.pools, &found.volumes);
        let m = self.cluster.metrics();
        let me = self.cluster.id();
        let node = me.to_string();
        let mut round = m.series.round();
        self.cluster.state().read(|st| {
            let tops = st
                .volumes
                .values()
                .filter_map(|v| {
                    let (node_of, stack) = super::derive::io_stack(st, v)?;
                    let top = stack.last().filter(|_| node_of == me)?;
                    let iops = v.max_iops.unwrap_or_default();
                    let bw = v.max_bandwidth.unwrap_or_default();
                    for (g, dir, x) in [
                        (&m.volume_iops_limit, "read", iops.read),
                        (&m.volume_iops_limit, "write", iops.write),
                        (&m.volume_bandwidth_limit, "read", bw.read),
                        (&m.volume_bandwidth_limit, "write", bw.write),
                    ] {
                        if x > 0 {
                            round.set_u64(g, &[&v.name, &v.id, &node, dir], x);
                        }
                    }
                    Some(crate::io::volumes::VolumeDevice {
                        id: v.id.clone(),
                        name: v.name.clone(),
                        path: crate::kernel::dm::node_path(&top.name.dm_name()),
                    })
                })
                .collect();
            m.volume_io.set_devices(node.clone(), tops);
            for p in st.pools.values().filter(|p| p.node == me) {
                let labels = [node.as_str(), p.id.as_str(), &p.class.to_string()];
                let health = found.health.get(&p.id).unwrap_or(&p.health);
                for state in ["online", "degraded", "damaged"] {
                    m.pool_state
                        .with_label_values(&[labels[0], labels[1], labels[2], state])
                        .set(i64::from(health.name() == state));
                }
                if let Some(u) = pools.get(&p.id) {
                    let set = |g: &prometheus::IntGaugeVec, v: u64| {
                        g.with_label_values(&labels).set(v as i64)
                    };
                    set(&m.pool_data_used_bytes, u.data_used);
                    set(&m.pool_data_total_bytes, u.data_total);
                    set(&m.pool_metadata_used_blocks, u.meta_used_blocks);
                    set(&m.pool_metadata_total_blocks, u.meta_total_blocks);
                    set(
                        &m.pool_near_full,
                        u64::from(u.near_full(&self.full).is_some()),
                    );
                }
            }
            export_drives(m, &mut round, st, &node, &found.members);
            for v in st.volumes.values() {
                let Some(b) = v.build.as_ref().filter(|b| b.source == me) else {
                    continue;
                };
                let labels = [v.name.as_str(), v.id.as_str(), &node];
                round.set_u64(&m.volume_rebuild_copied_bytes, &labels, b.copied_bytes);
                round.set_u64(&m.volume_rebuild_left_bytes, &labels, b.left_bytes);
                round.set_u64(&m.volume_rebuild_rate_bytes, &labels, b.rate);
            }
            for (id, raid) in &found.raids {
                let Some(v) = st.volumes.get(id) else {
                    continue;
                };
                let labels = [v.name.as_str(), id.as_str(), &node];
                let healthy = raid
                    .legs
                    .iter()
                    .filter(|l| **l == crate::plan::raid::LegHealth::InSync)
                    .count();
                let left = (*raid.total).saturating_sub(*raid.synced) * 512;
                round.set_u64(&m.volume_replicas, &labels, raid.legs.len() as u64);
                round.set_u64(&m.volume_replicas_healthy, &labels, healthy as u64);
                round.set_u64(&m.volume_resync_bytes, &labels, left);
                if let Some((found, at)) = v
                    .check
                    .as_ref()
                    .and_then(|c| c.mismatches.map(|m| (m, c.requested)))
                {
                    round.set_u64(&m.volume_check_mismatches, &labels, found);
                    round.set_u64(&m.volume_check_requested, &labels, at);
                }
            }
            for v in st.volumes.values() {
                for r in v.replicas.iter().filter(|r| r.node == me) {
                    let labels = [v.name.as_str(), &v.id, &node, &r.pool];
                    round.set_u64(&m.volume_capacity_bytes, &labels, v.size);
                    if let Some(used) = volumes.get(&v.id).and_then(|s| s.mapped_bytes) {
                        round.set_u64(&m.volume_usage_bytes, &labels, used);
                    }
                }
            }
        });
        round.finish();
    }

    fn pass_blocking(&self, handle: &tokio::runtime::Handle) -> Result<PassResult, String> {
        let mut state = self.desired();
        let dm = match KernelDm::open() {
            Ok(dm) => dm,
            // A node with nothing to build needs no device-mapper (a storageless node, or a
            // host without it that only takes part in the cluster).
            Err(_) if state.pools.is_empty() && state.volumes.is_empty() => {
                return Ok(Default::default())
            }
            Err(e) => return Err(format!("device-mapper is not available: {e}")),
        };
        let mut recorded = state.clone();
        let mut persist = |now: &NodeState| -> std::io::Result<()> {
            for cmd in records(&recorded, now) {
                let label = format!("{cmd:?}").chars().take(60).collect::<String>();
                handle
                    .block_on(self.cluster.submit_and_apply(Op::Command(cmd)))
                    .map_err(|e| std::io::Error::other(format!("recording {label}: {e}")))?;
            }
            recorded = now.clone();
            Ok(())
        };
        let key = self.cluster.cluster_key();
        // A new leg's last copy round, run while this node's raid is suspended.
        let copy_last =
            |volume: &str| handle.block_on(self.cluster.copy_last(volume, COPY_LAST_LIMIT));
        let pass = reconcile_pass(
            &dm,
            key.as_deref(),
            &mut state,
            &mut persist,
            Some(&copy_last),
        )
        .map_err(|e| e.to_string())?;
        let changed: Vec<_> = pass.steps.iter().filter(|s| !s.is_check()).collect();
        let mut objects_changed: Vec<super::execute::Concern> = Vec::new();
        for s in &changed {
            let c = super::execute::Concern::of(s, &state);
            if !objects_changed.contains(&c) {
                objects_changed.push(c);
            }
        }
        if !changed.is_empty() {
            tracing::info!(steps = ?changed.iter().map(|s| step_name(s)).collect::<Vec<_>>(), "reconciled");
        }
        let health = pool_health(&state, &pass);
        let failed_drives = failed_drives(&state, &pass.observed);
        let members = member_paths(&state, &pass.observed);
        let failures: Vec<StepFailure> = pass
            .failures
            .into_iter()
            .map(|f| StepFailure {
                volume: f.concerns.volume().map(str::to_owned),
                error: f.error.to_string(),
            })
            .collect();
        for f in &failures {
            tracing::warn!(volume = ?f.volume, error = %f.error, "a reconcile step failed; retrying on the next pass");
        }
        let found = Found {
            raids: pass.observed.raids.clone(),
            pools: self.pool_use(&dm, &state),
            volumes: volumes_seen(&dm, &state),
            health,
            members,
            failed_drives,
            planned: state.pools.len() + state.volumes.len(),
            changed: objects_changed.len(),
        };
        Ok((failures, found))
    }

    /// Reads each pool's use from its thin-pool status; a pool that is not up is left out.
    fn pool_use(&self, dm: &dyn DeviceMapper, state: &NodeState) -> BTreeMap<String, PoolUse> {
        let mut out = BTreeMap::new();
        let Ok(node) = Id::node(&state.node) else {
            return out;
        };
        for p in &state.pools {
            let Ok(id) = Id::object(&p.id) else { continue };
            let [_, _, top] = pool_devices(&node, &id);
            match pool::usage_of(dm, &top, Sectors(p.chunk_sectors)) {
                Ok(u) => {
                    let u = PoolUse::from_usage(&u);
                    if let Some(why) = u.near_full(&self.full) {
                        tracing::warn!(pool = %p.id, "pool is near full: {why}");
                    }
                    out.insert(p.id.clone(), u);
                }
                Err(e) => tracing::warn!(pool = %p.id, error = %e, "could not read pool use"),
            }
        }
        out
    }

    /// Passes until the process ends: on a timer, and whenever a change applied to the store
    /// alters what this node should have (an attach elsewhere that this node's leg must now
    /// serve, a leg another node now serves). Failures are logged and retried.
    pub async fn run(self: Arc<Self>, interval: Duration) {
        let mut applied = self.cluster.applied_watch();
        let mut last = self.desired();
        loop {
            let timer = tokio::time::sleep(interval);
            tokio::select! {
                () = timer => {}
                changed = applied.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep(interval).await;
                    } else if self.desired() == last {
                        continue;
                    }
                }
            }
            last = self.desired();
            if let Err(e) = self.pass().await {
                tracing::warn!(error = %e, "reconcile pass failed; retrying");
            }
        }
    }
}

/// How each pool of the pass stands: degraded when a member is missing (naming it), damaged
/// when bringing it up found its metadata missing or failing `thin_check`, online when it is
/// up; a pool that failed otherwise keeps what the store says.
fn pool_health(state: &NodeState, pass: &Pass) -> BTreeMap<String, PoolHealth> {
    let mut out = BTreeMap::new();
    let Ok(node) = Id::node(&state.node) else {
        return out;
    };
    for p in &state.pools {
        if let Some((member, why)) = pass.observed.failing.get(&p.id).and_then(|f| f.first()) {
            let drive = p.members.get(*member).cloned().unwrap_or_default();
            out.insert(
                p.id.clone(),
                PoolHealth::Degraded(format!("drive {drive} fails reads: {why}")),
            );
            continue;
        }
        if p.dead {
            // A failed member stays failed until it is replaced or removed: the health
            // recorded when it failed stands, whatever a read finds through what is left.
            continue;
        }
        if let Err(missing) = assemble(&state.cluster, &node, p, &pass.observed) {
            let what = if missing.is_empty() {
                "it has no members".to_string()
            } else {
                format!("no drive carries the label of {}", missing.join(", "))
            };
            out.insert(p.id.clone(), PoolHealth::Degraded(what));
            continue;
        }
        let failed = pass
            .failures
            .iter()
            .find(|f| f.concerns.pool() == Some(p.id.as_str()));
        match failed.map(|f| &f.error) {
            Some(ExecError::Pool(e @ PoolError::Damaged { .. })) => {
                let first = p.members.first().cloned().unwrap_or_default();
                let at = pass
                    .observed
                    .labelled
                    .iter()
                    .find(|d| d.label.drive.to_string() == first)
                    .map(|d| d.path.display().to_string())
                    .unwrap_or_default();
                out.insert(
                    p.id.clone(),
                    PoolHealth::Damaged(format!("{e} [drive {first} at {at}]")),
                );
            }
            // Up, but the kernel has it read-only, failed or flagged needs_check (after I/O
            // errors on its drives): pxd will not use it until an operator repairs it.
            Some(ExecError::Pool(e @ PoolError::Unusable { .. })) => {
                out.insert(p.id.clone(), PoolHealth::Damaged(e.to_string()));
            }
            Some(_) => {}
            None => {
                out.insert(p.id.clone(), PoolHealth::Online);
            }
        }
    }
    out
}

/// The member drives (label uuids) of the node's pools that fail reads, with the error.
fn failed_drives(state: &NodeState, observed: &Observed) -> Vec<(String, String)> {
    state
        .pools
        .iter()
        .flat_map(|p| {
            let failing = observed.failing.get(&p.id).into_iter().flatten();
            failing.filter_map(|(member, why)| Some((p.members.get(*member)?.clone(), why.clone())))
        })
        .collect()
}

/// Where each member drive of the node's pools is now, by label uuid.
fn member_paths(state: &NodeState, observed: &Observed) -> BTreeMap<String, PathBuf> {
    let cluster = &state.cluster;
    observed
        .labelled
        .iter()
        .filter(|d| &d.label.cluster == cluster && d.label.node.to_string() == state.node)
        .filter(|d| {
            let uuid = d.label.drive.to_string();
            state
                .pools
                .iter()
                .any(|p| p.id == d.label.pool && p.members.contains(&uuid))
        })
        .map(|d| (d.label.drive.to_string(), d.path.clone()))
        .collect()
}

/// What a pass saw of one volume on this node: the API answers from this, so its handlers
/// never go to the kernel themselves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VolumeSeen {
    /// Bytes its thin device has mapped in the pool.
    pub mapped_bytes: Option<u64>,
    /// Openers of its top device (a mount counts as one).
    pub open_count: i32,
}

/// What each live volume of the node looks like in the kernel, by volume id.
fn volumes_seen(dm: &dyn DeviceMapper, state: &NodeState) -> BTreeMap<String, VolumeSeen> {
    let Ok(node) = Id::node(&state.node) else {
        return BTreeMap::new();
    };
    let open_count = |top: &DeviceName| {
        dm.info(&top.dm_name())
            .ok()
            .flatten()
            .map_or(0, |i| i.open_count)
    };
    let mut seen: BTreeMap<String, VolumeSeen> = state
        .volumes
        .iter()
        .filter_map(|v| {
            let id = Id::object(&v.id).ok()?;
            let thin = DeviceName::new(&node, Kind::Thin, &id, None);
            let top = if v.key.is_some() {
                DeviceName::new(&node, Kind::Crypt, &id, None)
            } else {
                thin.clone()
            };
            let seen = VolumeSeen {
                mapped_bytes: pool::thin_mapped_bytes(dm, &thin),
                open_count: open_count(&top),
            };
            Some((v.id.clone(), seen))
        })
        .collect();
    // A replicated volume attached here is opened through its raid (or the crypt on it).
    for a in &state.attached {
        let Ok(id) = Id::object(&a.id) else { continue };
        let kind = if a.key.is_some() {
            Kind::Crypt
        } else {
            Kind::Raid
        };
        let top = DeviceName::new(&node, kind, &id, None);
        seen.entry(a.id.clone()).or_default().open_count = open_count(&top);
    }
    seen
}

/// A short name of a step for the log.
fn step_name(s: &Step) -> String {
    match s {
        Step::Resume(n) => format!("resume {n}"),
        Step::MeasureDrive { drive } => format!("measure drive {drive}"),
        Step::LabelDrive { drive, .. } => format!("label drive {drive}"),
        Step::EnsurePool(p) => format!("pool {}", p.pool),
        Step::CreatePool(p) => format!("new pool {}", p.pool),
        Step::GrowPool(p) => format!("grow pool {}", p.pool),
        Step::ReformPool(p) => format!("pool {} made anew", p.pool),
        Step::RetireDrive { drive, pool } => format!("drive {drive} leaves pool {pool}"),
        Step::CreateThinId { thin_id, .. } => format!("create thin {thin_id}"),
        Step::Activate { volume, .. } => format!("activate {volume}"),
        Step::Grow { volume, .. } => format!("grow {volume}"),
        Step::Mkfs { volume, fs, .. } => format!("mkfs.{fs} {volume}"),
        Step::Snapshot { snapshot, .. } => format!("snapshot {snapshot}"),
        Step::Copy { volume, .. } => format!("copy into {volume}"),
        Step::Mount { path, .. } => format!("mount {}", path.display()),
        Step::Unmount(p) => format!("unmount {}", p.display()),
        Step::ForgetRetired { volume } => format!("retired ids of {volume} deleted"),
        Step::Deactivate(n) => format!("deactivate {n}"),
        Step::DeleteThinId { thin_id, .. } => format!("delete thin {thin_id}"),
        Step::Forget { volume, snapshot } => match snapshot {
            Some(s) => format!("forget snapshot {s}"),
            None => format!("forget volume {volume}"),
        },
        Step::Export { nqn, .. } => format!("export {nqn}"),
        Step::Unexport { nqn, .. } => format!("unexport {nqn}"),
        Step::Unlink { nqn, .. } => format!("unlink {nqn} from its ports"),
        Step::Serve { volume, epoch } => format!("{volume} serves epoch {epoch}"),
        Step::Connect { nqn, .. } => format!("connect {nqn}"),
        Step::Disconnect { controller, .. } => format!("disconnect {controller}"),
        Step::Attached { volume } => format!("{volume} attached"),
        Step::Detached { volume } => format!("{volume} detached"),
        Step::ReAdd { splits, raid, .. } => format!(
            "re-add leg {}",
            splits.first().map_or(&raid.name, |s| &s.name)
        ),
        Step::Reassemble { volume, fresh, .. } => format!(
            "re-assemble the raid of {volume} over {} legs on fresh metadata",
            fresh.len()
        ),
        Step::Reassembled { volume, slot } => {
            format!("the raid of {volume} runs on metadata slot {slot}")
        }
        Step::LegUp { volume, leg } => format!("leg {leg} of {volume} in sync"),
        Step::LegDown { volume, leg } => format!("leg {leg} of {volume} failed in the raid"),
        Step::StartCheck { volume, .. } => format!("check the raid of {volume}"),
        Step::CheckDone { volume, mismatches } => {
            format!("the raid check of {volume} found {mismatches} sectors differing")
        }
        Step::CheckCutShort { volume } => {
            format!("the raid check of {volume} was cut short; it starts again once clean")
        }
        Step::Fence { volume, .. } => format!("fence the leg of {volume} under a lost attachment"),
        Step::Unfence { volume, .. } => format!("unfence the leg of {volume}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_is_near_full_past_either_threshold() {
        let t = FullThresholds {
            data_percent: 90,
            meta_percent: 80,
        };
        let mut u = PoolUse {
            data_used: 89,
            data_total: 100,
            meta_used_blocks: 79,
            meta_total_blocks: 100,
            chunk_bytes: 65536,
        };
        assert_eq!(u.near_full(&t), None);
        u.data_used = 90;
        let why = u.near_full(&t).unwrap();
        assert!(
            why.contains("data is 90%") && why.contains("--pool-full-percent"),
            "{why}"
        );
        u.data_used = 0;
        u.meta_used_blocks = 85;
        assert!(u.near_full(&t).unwrap().contains("--meta-full-percent"));
        u.data_total = 0;
        u.meta_total_blocks = 0;
        assert_eq!(u.near_full(&t), None, "an empty status is not full");
    }
}
