//! The cluster control plane: openraft over the ZeroMQ transport, membership (init, join,
//! remove), forwarding of writes to the leader, and heartbeats (DESIGN §1, §3, §5).
//!
//! - `identity`: the node's id, name and CURVE keys in its data directory;
//! - `transport`: CURVE request/reply over ZeroMQ; `rpc`: what travels on it;
//! - `network`: openraft's network on the transport;
//! - `token`: join tokens; `membership`: init, join, admit, remove;
//! - `gossip`: heartbeats and liveness; `view`: what `status` and `node list` show.

pub mod gossip;
pub mod identity;
pub mod membership;
pub mod network;
pub mod rpc;
pub mod token;
pub mod topology;
pub mod transport;
pub mod view;

use crate::crypt::ClusterKey;
use crate::metrics::Metrics;
use crate::store::types::{Node, Role};
use crate::store::{self, Command, NodeId, Raft, RaftNode, Response, StateReader, StoreError};
use gossip::{Beats, StatsSampler};
use identity::{Identity, IdentityError};
use openraft::error::{ClientWriteError, RaftError};
use rpc::{Refusal, RefusalKind, Reply, Request};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use token::TokenError;
use transport::{Transport, TransportError};

/// The cluster key's file in the data directory.
pub const CLUSTER_KEY_FILE: &str = "cluster.key";
/// How long a write may wait for a quorum: for a leader that a majority answers, or, at
/// that leader, for a majority's acknowledgement. Past it a write counts as "no quorum",
/// where a missing majority can be the reason (see [`quorum_is_not_the_cause`]). A stalled
/// machine can cost a leader its followers for a few seconds and a new election or two
/// (seen under emulation), which a write waits out rather than fail.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a write waits for a leader to take it: an election after a leader is lost takes
/// a few election timeouts, more on a loaded machine, and a write asked for in that window
/// (a forced attach away from a lost node is one) should wait for it rather than fail.
const LEADER_WAIT: Duration = Duration::from_secs(15);
/// How long a write may take to be applied while its leader has a quorum (it is queued
/// behind others, or the machine is busy) before the caller is told it timed out, with its
/// outcome unknown. Raft keeps a proposed entry when its caller stops waiting, so a shorter
/// wait would report writes that are then applied as failed. Below the API client's timeout.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(20);
/// A leader counts as having a quorum while a majority of the voters acknowledged it this
/// recently (followers answer its heartbeats every 150 ms).
const QUORUM_ACK_MAX_AGE: Duration = Duration::from_secs(2);
/// How long a join may take, end to end.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(20);
/// Time for a forwarded write to travel to the leader and back, on top of what the leader
/// may take for it ([`APPLY_TIMEOUT`]).
const FORWARD_MARGIN: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub data_dir: PathBuf,
    /// Name of a new node; an existing node keeps its own.
    pub name: Option<String>,
    pub role: Role,
    /// Where the ZeroMQ node port listens; other nodes reach it here too.
    pub data_addr: SocketAddr,
    /// Where other nodes and tools reach the TCP API.
    pub api_addr: SocketAddr,
    pub beat_interval: Duration,
    /// Beats missed in a row before a node counts as offline.
    pub missed_beats: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Key(#[from] crate::crypt::CryptError),
    #[error("prepare the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Raft: {op}: {reason}")]
    Raft { op: &'static str, reason: String },
    #[error("this node is already a member of cluster {0}")]
    AlreadyMember(String),
    #[error(
        "this node is not in a cluster yet: run `pxd cluster init` or `pxd cluster join TOKEN`"
    )]
    NotInCluster,
    #[error("no quorum: {0}")]
    NoQuorum(String),
    /// A change took longer than it may, for a reason other than a missing majority (a slow
    /// apply, a busy node); it may still be applied.
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("node {0:?} is not a member of the cluster")]
    UnknownNode(String),
    #[error("node {0} is the last member; a cluster cannot remove its last member")]
    LastMember(NodeId),
    #[error("the cluster refused the join: {0}")]
    JoinRefused(String),
    #[error("the member named in the token ({addr}) did not answer: {source}")]
    MemberUnreachable {
        addr: String,
        source: TransportError,
    },
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// The state machine refused the command (the reason is the same on every member).
    #[error("{0}")]
    Rejected(String),
}

impl ClusterError {
    fn from_refusal(r: Refusal) -> ClusterError {
        match r.kind {
            RefusalKind::NoQuorum => ClusterError::NoQuorum(r.message),
            RefusalKind::Timeout => ClusterError::Timeout(r.message),
            RefusalKind::Invalid => ClusterError::Rejected(r.message),
            RefusalKind::NotLeader | RefusalKind::Failed => ClusterError::Raft {
                op: "forwarded request",
                reason: r.message,
            },
        }
    }

    fn refusal(&self) -> Refusal {
        let kind = match self {
            ClusterError::NoQuorum(_) => RefusalKind::NoQuorum,
            ClusterError::Timeout(_) => RefusalKind::Timeout,
            ClusterError::Token(_)
            | ClusterError::Invalid { .. }
            | ClusterError::Rejected(_)
            | ClusterError::UnknownNode(_)
            | ClusterError::LastMember(_)
            | ClusterError::NotInCluster => RefusalKind::Invalid,
            _ => RefusalKind::Failed,
        };
        let message = match self {
            // The receiver's error of the same kind says "no quorum: " or "timed out: " again.
            ClusterError::NoQuorum(m) | ClusterError::Timeout(m) => m.clone(),
            other => other.to_string(),
        };
        Refusal { kind, message }
    }
}

/// A change that must be made by the leader: a command, or a member's removal.
// One op lives per API call and is serialized at once; boxing it would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Op {
    Command(Command),
    Remove(NodeId),
}

/// This node's part in the cluster.
pub struct Cluster {
    pub identity: Identity,
    config: ClusterConfig,
    raft: Raft,
    state: StateReader,
    transport: Arc<Transport>,
    beats: Beats,
    sampler: Mutex<StatsSampler>,
    /// This node's pools as the reconciler last read them, sent with every beat.
    local_pools: Mutex<BTreeMap<String, gossip::PoolBeat>>,
    metrics: Arc<Metrics>,
    /// The key that wraps volume keys: made by `init`, received on `join`.
    cluster_key: std::sync::RwLock<Option<Arc<ClusterKey>>>,
    /// The new legs this node is building, which take the rebuild's block frames.
    pub sink: Arc<crate::rebuild::stream::Sink>,
    /// The new legs' copies this node is the source of.
    pub copier: crate::rebuild::copy::Copier,
}

impl Cluster {
    /// Opens the node's identity and store, starts Raft and serves the node port. A node
    /// that was in a cluster before comes back as the same member with what it had applied.
    pub async fn start(
        config: ClusterConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Cluster>, ClusterError> {
        // The store holds the cluster's secrets (join key, API token): owner only.
        if let Some(name) = &config.name {
            membership::check_name("node name", name)?;
        }
        let data_dir_err = |source| ClusterError::DataDir {
            path: config.data_dir.clone(),
            source,
        };
        std::fs::create_dir_all(&config.data_dir).map_err(data_dir_err)?;
        std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(data_dir_err)?;
        let identity = Identity::load_or_create(&config.data_dir, config.name.as_deref())?;
        membership::check_name("node name", &identity.name)?;
        let transport = Transport::new(identity.keys.clone())?;
        let (log, sm) = store::open(&config.data_dir.join("raft.redb"))?;
        let state = sm.reader();
        let raft_config = openraft::Config {
            cluster_name: "pxd".into(),
            // A follower waits a lease (the longest election timeout) plus a random
            // election timeout after the last heartbeat, so a dead leader is replaced in
            // about two seconds. (Tried under emulation: 200 ms heartbeats with 1-2 s
            // elections made formation elect again and again, up to term 15, and writes
            // time out.)
            heartbeat_interval: 150,
            election_timeout_min: 600,
            election_timeout_max: 1200,
            install_snapshot_timeout: 2000,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(2000),
            ..Default::default()
        }
        .validate()
        .map_err(|e| ClusterError::Raft {
            op: "configure",
            reason: e.to_string(),
        })?;
        let network = network::Network {
            transport: transport.clone(),
        };
        let raft = Raft::new(identity.id, Arc::new(raft_config), network, log, sm)
            .await
            .map_err(|e| ClusterError::Raft {
                op: "start",
                reason: e.to_string(),
            })?;
        let beats = Beats::new(config.beat_interval, config.missed_beats);
        let cluster_key = ClusterKey::load(&config.data_dir.join(CLUSTER_KEY_FILE))?.map(Arc::new);
        // A node without the cluster key has not finished joining: it must not campaign, or
        // heartbeats slowed during its join would make it lead a cluster whose key (and
        // its own record) it never received.
        raft.runtime_config().elect(cluster_key.is_some());
        let cluster = Arc::new(Cluster {
            cluster_key: std::sync::RwLock::new(cluster_key),
            identity,
            config,
            raft,
            state,
            transport,
            beats,
            sampler: Mutex::new(StatsSampler::default()),
            local_pools: Mutex::new(BTreeMap::new()),
            metrics,
            sink: Arc::default(),
            copier: Default::default(),
        });
        let server = cluster.clone();
        let handler: transport::Handler = Arc::new(move |key, body| {
            let c = server.clone();
            Box::pin(async move { rpc::encode(&c.handle(&key, &body).await) })
        });
        cluster.transport.serve(
            &cluster.data_endpoint(),
            tokio::runtime::Handle::current(),
            handler,
        )?;
        let bulk = cluster.clone();
        let blocks: transport::Handler = Arc::new(move |key, body| {
            let c = bulk.clone();
            Box::pin(async move { rpc::encode(&c.take_blocks(&key, &body).await) })
        });
        let bulk_at = transport::bulk_endpoint(&cluster.data_endpoint()).ok_or_else(|| {
            ClusterError::Invalid {
                field: "data_port",
                reason: "must be at most 65534: the port after it carries block streams".into(),
            }
        })?;
        cluster.transport.serve_on(
            transport::Lane::Bulk,
            &bulk_at,
            tokio::runtime::Handle::current(),
            blocks,
        )?;
        tokio::spawn(gossip_loop(cluster.clone()));
        Ok(cluster)
    }

    pub fn id(&self) -> NodeId {
        self.identity.id
    }

    /// The cluster key, once this node made it (`init`) or received it (`join`).
    pub fn cluster_key(&self) -> Option<Arc<ClusterKey>> {
        self.cluster_key
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Keeps `key` as the cluster key: in its 0600 file, then in memory.
    fn keep_cluster_key(&self, key: ClusterKey) -> Result<(), ClusterError> {
        key.save(&self.config.data_dir.join(CLUSTER_KEY_FILE))?;
        *self.cluster_key.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(key));
        self.raft.runtime_config().elect(true);
        Ok(())
    }

    pub fn state(&self) -> &StateReader {
        &self.state
    }

    /// The node transport (ZeroMQ with CURVE), for streams to other members.
    pub fn transport(&self) -> &Arc<Transport> {
        &self.transport
    }

    /// Has the last round of a new leg's copy of `volume` run, while this node (its attach
    /// node) holds its raid suspended: here, or on the copy's source within `limit`.
    pub async fn copy_last(&self, volume: &str, limit: Duration) -> Result<u64, String> {
        let source = self
            .state
            .read(|st| {
                st.volumes
                    .get(volume)
                    .and_then(|v| v.build.as_ref())
                    .map(|b| b.source)
            })
            .ok_or_else(|| format!("volume {volume} builds no new leg"))?;
        if source == self.id() {
            return crate::rebuild::copy::Copier::copy_last(self, volume).await;
        }
        let node = self
            .state
            .read(|st| st.nodes.get(&source).cloned())
            .ok_or_else(|| format!("the copy's source {source} is no member"))?;
        let req = rpc::encode(&Request::CopyLast {
            volume: volume.to_owned(),
        });
        let reply = self
            .transport
            .call(&node.data_addr, &node.public_key, req, limit)
            .await
            .map_err(|e| format!("the copy's source {source} does not answer: {e}"))?;
        match rpc::decode::<Reply>(&reply) {
            Ok(Reply::CopiedLast(r)) => r,
            Ok(other) => Err(format!("unexpected reply {other:?}")),
            Err(e) => Err(format!("undecodable reply: {e}")),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn data_endpoint(&self) -> String {
        format!("tcp://{}", self.config.data_addr)
    }

    fn raft_node(&self) -> RaftNode {
        RaftNode {
            data_addr: self.data_endpoint(),
            public_key: self.identity.keys.public.clone(),
        }
    }

    /// This node as a member record.
    fn node_record(&self) -> Node {
        Node {
            id: self.identity.id,
            name: self.identity.name.clone(),
            api_addr: self.config.api_addr.to_string(),
            data_addr: self.data_endpoint(),
            public_key: self.identity.keys.public.clone(),
            topology: Default::default(),
            role: self.config.role,
        }
    }

    /// Records this node's pools as a reconcile pass read them; the next beats carry them.
    pub fn report_pools(&self, pools: BTreeMap<String, gossip::PoolBeat>) {
        *self.local_pools.lock().unwrap_or_else(|p| p.into_inner()) = pools;
    }

    fn local_pools(&self) -> BTreeMap<String, gossip::PoolBeat> {
        self.local_pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The cluster's id, once this node is in one.
    pub fn cluster_id(&self) -> Option<String> {
        self.state
            .read(|s| s.cluster.as_ref().map(|c| c.id.clone()))
    }

    /// The bearer token of the TCP API.
    pub fn api_token(&self) -> Option<String> {
        self.state
            .read(|s| s.cluster.as_ref().map(|c| c.api_token.expose().to_owned()))
    }

    fn membership(&self) -> openraft::Membership<NodeId, RaftNode> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone()
    }

    /// The index of the last entry applied here, watched: it moves on every change to the
    /// store, so a reconciler can act on changes as they land.
    pub fn applied_watch(&self) -> tokio::sync::watch::Receiver<Option<u64>> {
        let mut metrics = self.raft.metrics();
        let first = metrics.borrow().last_applied.map(|l| l.index);
        let (tx, rx) = tokio::sync::watch::channel(first);
        tokio::spawn(async move {
            while metrics.changed().await.is_ok() {
                let now = metrics.borrow().last_applied.map(|l| l.index);
                tx.send_if_modified(|seen| {
                    let moved = *seen != now;
                    *seen = now;
                    moved
                });
                if tx.is_closed() {
                    break;
                }
            }
        });
        rx
    }

    fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// [`quorum_is_not_the_cause`] for this node, as Raft sees it now.
    fn quorum_is_not_the_cause(&self) -> Option<&'static str> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
        quorum_is_not_the_cause(&voters, self.id(), m.millis_since_quorum_ack)
    }

    /// The error for a change that did not finish in time: "no quorum" only where a missing
    /// majority can be the reason, else a timeout that says why it is not.
    fn stalled(&self, what: String) -> ClusterError {
        match self.quorum_is_not_the_cause() {
            None => ClusterError::NoQuorum(format!(
                "{what}; a majority of the voters is not reachable from this node"
            )),
            Some(held) => ClusterError::Timeout(format!("{what}: this node is busy ({held})")),
        }
    }

    /// True if `key` is the CURVE key of a member in this node's Raft membership.
    fn is_member_key(&self, key: &str) -> bool {
        self.membership().nodes().any(|(_, n)| n.public_key == key)
    }

    /// One request from another daemon.
    async fn handle(&self, key: &str, body: &[u8]) -> Reply {
        if body.first() == Some(&crate::rebuild::frame::TAG) {
            return Reply::Refused("block frames go to the bulk port (the node port + 1)".into());
        }
        let req: Request = match rpc::decode(body) {
            Ok(r) => r,
            Err(e) => return Reply::Refused(format!("malformed request: {e}")),
        };
        match req {
            Request::AppendEntries(_) | Request::Vote(_) | Request::InstallSnapshot(_)
                if !self.raft_peer_allowed(key) =>
            {
                Reply::Refused("Raft traffic is taken only from members".into())
            }
            Request::AppendEntries(r) => Reply::AppendEntries(self.raft.append_entries(r).await),
            Request::Vote(r) => Reply::Vote(self.raft.vote(r).await),
            Request::InstallSnapshot(r) => {
                Reply::InstallSnapshot(self.raft.install_snapshot(r).await)
            }
            Request::ConfirmQuorum if self.is_member_key(key) => {
                Reply::Quorum(self.confirm_as_leader().await)
            }
            Request::ConfirmQuorum => Reply::Refused("only members may ask".into()),
            Request::CopyLast { volume } if self.is_member_key(key) => {
                Reply::CopiedLast(crate::rebuild::copy::Copier::copy_last(self, &volume).await)
            }
            Request::CopyLast { .. } => Reply::Refused("only members may ask".into()),
            Request::Join { token, node } => {
                Reply::Join(self.admit(key, &token, node).await.map_err(|e| e.refusal()))
            }
            Request::Submit { expires, .. }
                if self.is_member_key(key) && rpc::now_ms() > expires =>
            {
                Reply::Submit(Err(Refusal {
                    kind: RefusalKind::Failed,
                    message: format!(
                        "a forwarded write reached the leader {} ms after its sender gave up; \
                         it was not applied (a slow network, or clocks that disagree)",
                        rpc::now_ms() - expires
                    ),
                }))
            }
            Request::Submit { op, .. } if self.is_member_key(key) => {
                Reply::Submit(self.execute(*op).await.map_err(|e| match e {
                    Led::NotLeader => Refusal {
                        kind: RefusalKind::NotLeader,
                        message: format!("node {} is not the leader", self.id()),
                    },
                    Led::Err(e) => e.refusal(),
                }))
            }
            Request::Submit { .. } => Reply::Refused("writes are taken only from members".into()),
            Request::Heartbeat { from, stats } => {
                let known = self
                    .state
                    .read(|s| s.nodes.get(&from).map(|n| n.public_key == key));
                if known == Some(true) {
                    self.beats.record(from, stats);
                    Reply::Ack
                } else {
                    Reply::Refused(format!("no member {from} with this key"))
                }
            }
        }
    }

    /// Raft RPCs come from members only; a node that is in no cluster yet takes them from
    /// anyone who knows its key, which is how the leader brings a joining node up to date.
    /// A rebuild's block frame, from the bulk port: written to the build it names, if that
    /// build is open here and the sender is a member.
    async fn take_blocks(&self, key: &str, body: &[u8]) -> Reply {
        if !self.is_member_key(key) {
            return Reply::Refused("block data is taken only from members".into());
        }
        self.sink.clone().take_frame(body.to_vec()).await
    }

    fn raft_peer_allowed(&self, key: &str) -> bool {
        let m = self.membership();
        m.nodes().next().is_none() || m.nodes().any(|(_, n)| n.public_key == key)
    }

    /// Makes a change through the leader: here if this node leads, else forwarded to the
    /// leader over the transport. Fails with "no quorum" when no leader with a majority takes
    /// it within [`WRITE_TIMEOUT`], and with a timeout when a leader that has one does not
    /// apply it within [`APPLY_TIMEOUT`]. A change known to be applied is reported applied.
    pub async fn submit(&self, op: Op) -> Result<Response, ClusterError> {
        self.submit_indexed(op).await.map(|(r, _)| r)
    }

    /// [`Cluster::submit`], then waits until this node has applied the change too, so that
    /// what runs here next (the reconciler) sees it even when another node leads.
    pub async fn submit_and_apply(&self, op: Op) -> Result<Response, ClusterError> {
        let (response, index) = self.submit_indexed(op).await?;
        if let Some(index) = index {
            // The change is committed: no quorum is missing, this node is only behind.
            self.raft
                .wait(Some(APPLY_TIMEOUT))
                .applied_index_at_least(Some(index), "a submitted change applied here")
                .await
                .map_err(|e| {
                    ClusterError::Timeout(format!(
                        "the change was committed at log index {index}, but this node has not \
                         applied it within {APPLY_TIMEOUT:?} (it will): {e}"
                    ))
                })?;
        }
        Ok(response)
    }

    /// [`Cluster::submit`] with the log index the change was applied at.
    async fn submit_indexed(&self, op: Op) -> Result<(Response, Option<u64>), ClusterError> {
        let deadline = Instant::now() + LEADER_WAIT;
        let mut last = String::from("no leader is known");
        loop {
            match self.leader() {
                Some(l) if l == self.id() => match self.execute(op.clone()).await {
                    Ok(r) => return Ok(r),
                    Err(Led::Err(e)) => return Err(e),
                    Err(Led::NotLeader) => last = "leadership moved".into(),
                },
                Some(l) => match self.forward(l, &op).await {
                    Ok(r) => return Ok(r),
                    Err(Forward::Unreachable(why)) => last = why,
                    Err(Forward::Led(Led::Err(e))) => return Err(e),
                    Err(Forward::Led(Led::NotLeader)) => {
                        last = format!("node {l} is no longer the leader")
                    }
                },
                None => {}
            }
            if Instant::now() >= deadline {
                return Err(self.stalled(format!(
                    "no leader took the write within {LEADER_WAIT:?} ({last})"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Confirms that a quorum still follows the leader, and so that this node is still part
    /// of the cluster's majority side: the leader checks with a read index (heartbeats, no
    /// log entry); another node asks the leader, within `limit`.
    pub async fn confirm_quorum(&self, limit: Duration) -> Result<(), String> {
        let leader = self.leader().ok_or("no leader is known")?;
        if leader == self.id() {
            return tokio::time::timeout(limit, self.confirm_as_leader())
                .await
                .map_err(|_| format!("no quorum confirmed within {limit:?}"))?;
        }
        let node = self
            .membership()
            .get_node(&leader)
            .cloned()
            .ok_or("the leader is no member")?;
        let req = rpc::encode(&Request::ConfirmQuorum);
        let reply = self
            .transport
            .call(&node.data_addr, &node.public_key, req, limit)
            .await
            .map_err(|e| format!("the leader {leader} does not answer: {e}"))?;
        match rpc::decode::<Reply>(&reply) {
            Ok(Reply::Quorum(r)) => r,
            Ok(other) => Err(format!("unexpected reply {other:?}")),
            Err(e) => Err(format!("undecodable reply: {e}")),
        }
    }

    async fn confirm_as_leader(&self) -> Result<(), String> {
        self.raft
            .ensure_linearizable()
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Passes an op to the leader and waits for the answer for as long as Raft here still
    /// follows that leader. A busy leader answers late, within [`APPLY_TIMEOUT`]; giving up
    /// on it sooner would report a write that it then applies as failed. A leader that died
    /// is noticed by Raft within an election timeout, and the caller tries again with
    /// whichever node leads next, so an op can be proposed twice (the commands are
    /// idempotent puts and removes).
    async fn forward(&self, leader: NodeId, op: &Op) -> Result<(Response, Option<u64>), Forward> {
        let node = self
            .membership()
            .get_node(&leader)
            .cloned()
            .ok_or(Forward::Led(Led::NotLeader))?;
        let limit = APPLY_TIMEOUT + FORWARD_MARGIN;
        let req = rpc::encode(&Request::Submit {
            op: Box::new(op.clone()),
            expires: rpc::now_ms() + u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
        });
        let mut metrics = self.raft.metrics();
        let call = self
            .transport
            .call(&node.data_addr, &node.public_key, req, limit);
        let reply = tokio::select! {
            reply = call => reply.map_err(|e| {
                Forward::Unreachable(format!("the leader {leader} does not answer: {e}"))
            })?,
            // Also when Raft stopped: then no leader will answer.
            _ = metrics.wait_for(|m| m.current_leader != Some(leader)) => {
                return Err(Forward::Unreachable(format!(
                    "node {leader} stopped leading before it answered; the write may have \
                     been applied"
                )))
            }
        };
        match rpc::decode::<Reply>(&reply) {
            Ok(Reply::Submit(Ok(r))) => Ok(r),
            Ok(Reply::Submit(Err(r))) if r.kind == RefusalKind::NotLeader => {
                Err(Forward::Led(Led::NotLeader))
            }
            Ok(Reply::Submit(Err(r))) => Err(Forward::Led(Led::Err(ClusterError::from_refusal(r)))),
            Ok(other) => Err(Forward::Led(Led::Err(ClusterError::Raft {
                op: "forward a write",
                reason: format!("unexpected reply {other:?}"),
            }))),
            Err(e) => Err(Forward::Led(Led::Err(ClusterError::Raft {
                op: "forward a write",
                reason: format!("undecodable reply: {e}"),
            }))),
        }
    }

    /// Runs an op on this node, which must be the leader; with the log index of a command.
    async fn execute(&self, op: Op) -> Result<(Response, Option<u64>), Led> {
        match op {
            Op::Command(cmd) => self
                .write_local_indexed(cmd)
                .await
                .map(|(r, i)| (r, Some(i))),
            Op::Remove(id) => self
                .remove_local(id)
                .await
                .map(|()| (Response::Applied, None)),
        }
    }

    /// Proposes a command here and waits until it is applied; see
    /// [`Cluster::write_local_indexed`].
    async fn write_local(&self, cmd: Command) -> Result<Response, Led> {
        self.write_local_indexed(cmd).await.map(|(r, _)| r)
    }

    /// [`Cluster::write_local`], with the log index the command was applied at.
    ///
    /// A proposed entry stays in Raft's log when its caller stops waiting, and is applied
    /// once it commits, so the write is waited for for as long as it can still commit: past
    /// [`WRITE_TIMEOUT`] only while a majority acknowledges this leader (always, when it is
    /// the only voter), and then up to [`APPLY_TIMEOUT`], after which its outcome is unknown.
    async fn write_local_indexed(&self, cmd: Command) -> Result<(Response, u64), Led> {
        let started = tokio::time::Instant::now();
        let write = self.raft.client_write(cmd);
        tokio::pin!(write);
        let mut wait = WRITE_TIMEOUT;
        let written = loop {
            if let Ok(written) = tokio::time::timeout_at(started + wait, &mut write).await {
                break written;
            }
            let waited = started.elapsed();
            let Some(held) = self.quorum_is_not_the_cause() else {
                return Err(Led::Err(ClusterError::NoQuorum(format!(
                    "the write was not committed within {waited:?}: a majority of the voters \
                     does not answer the leader"
                ))));
            };
            if waited >= APPLY_TIMEOUT {
                return Err(Led::Err(ClusterError::Timeout(format!(
                    "the write was not applied within {waited:?}: this node is busy ({held}); \
                     it may still be applied"
                ))));
            }
            wait = waited + Duration::from_secs(1);
        };
        match written {
            Ok(resp) => match resp.data {
                Response::Rejected(reason) => Err(Led::Err(ClusterError::Rejected(reason))),
                r => Ok((r, resp.log_id.index)),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Err(Led::NotLeader),
            Err(e) => Err(Led::Err(ClusterError::Raft {
                op: "write",
                reason: e.to_string(),
            })),
        }
    }

    /// Confirms with a majority that this node still leads.
    /// [`Cluster::ensure_quorum`], asked again for up to `patience` while the answer is that
    /// no majority acknowledged: a member that has just joined, or one busy for a moment,
    /// acknowledges late, and a join should not fail on that. Anything else is final.
    async fn ensure_quorum_within(&self, patience: Duration) -> Result<(), Led> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            match self.ensure_quorum().await {
                Err(Led::Err(ClusterError::NoQuorum(_)))
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                other => return other,
            }
        }
    }

    async fn ensure_quorum(&self) -> Result<(), Led> {
        use openraft::error::CheckIsLeaderError;
        let limit = Duration::from_secs(3);
        match tokio::time::timeout(limit, self.raft.ensure_linearizable()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => {
                Err(Led::NotLeader)
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => Err(Led::Err(
                ClusterError::NoQuorum(format!("the leader cannot confirm a majority: {e}")),
            )),
            Ok(Err(e)) => Err(Led::Err(ClusterError::Raft {
                op: "confirm the leadership",
                reason: e.to_string(),
            })),
            Err(_) => Err(Led::Err(self.stalled(format!(
                "the leader could not confirm its leadership within {limit:?}"
            )))),
        }
    }
}

/// Why a change that did not finish in time cannot be blamed on a missing majority, or
/// `None` when it may be. A node that is the only voter is a quorum by itself, and a leader
/// that a majority acknowledged within [`QUORUM_ACK_MAX_AGE`] has one: the change is slow,
/// not stuck. Only a leader sees acknowledgements (`millis_since_quorum_ack`); elsewhere a
/// missing majority stays possible.
fn quorum_is_not_the_cause(
    voters: &BTreeSet<NodeId>,
    me: NodeId,
    millis_since_quorum_ack: Option<u64>,
) -> Option<&'static str> {
    let max_age = u64::try_from(QUORUM_ACK_MAX_AGE.as_millis()).unwrap_or(u64::MAX);
    if voters.len() == 1 && voters.contains(&me) {
        Some("this node is the only voter, a quorum by itself")
    } else if millis_since_quorum_ack.is_some_and(|ms| ms <= max_age) {
        Some("a majority of the voters answers this leader")
    } else {
        None
    }
}

/// An outcome of work that only the leader may do.
enum Led {
    NotLeader,
    Err(ClusterError),
}

/// An outcome of forwarding to the leader.
enum Forward {
    Unreachable(String),
    Led(Led),
}

impl From<ClusterError> for Led {
    fn from(e: ClusterError) -> Led {
        Led::Err(e)
    }
}

/// Sends beats to every other node and refreshes the cluster metrics, once per interval.
async fn gossip_loop(cluster: Arc<Cluster>) {
    let interval = cluster.beats.interval();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let me = cluster.id();
        let peers = cluster.state.read(|s| {
            s.nodes
                .values()
                .filter(|n| n.id != me)
                .cloned()
                .collect::<Vec<Node>>()
        });
        let pools = cluster.local_pools();
        let stats = cluster
            .sampler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sample(pools);
        cluster.beats.record(me, stats.clone());
        let beat = rpc::encode(&Request::Heartbeat { from: me, stats });
        for peer in peers {
            let (t, beat) = (cluster.transport.clone(), beat.clone());
            tokio::spawn(async move {
                // A missed beat is what liveness measures; there is nothing else to do.
                let _ = t
                    .call(&peer.data_addr, &peer.public_key, beat, interval)
                    .await;
            });
        }
        cluster.update_metrics();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(ids: &[u64]) -> BTreeSet<NodeId> {
        ids.iter().copied().map(NodeId).collect()
    }

    #[test]
    fn the_only_voter_never_lacks_a_quorum() {
        // Whatever Raft's metrics say (a follower or a frozen node reports no ack at all).
        for ack in [None, Some(0), Some(1_000), Some(60_000), Some(u64::MAX)] {
            assert_eq!(
                quorum_is_not_the_cause(&ids(&[1]), NodeId(1), ack),
                Some("this node is the only voter, a quorum by itself"),
                "{ack:?}"
            );
        }
    }

    #[test]
    fn a_leader_lacks_a_quorum_only_once_a_majority_is_silent() {
        let three = ids(&[1, 2, 3]);
        let held = Some("a majority of the voters answers this leader");
        assert_eq!(quorum_is_not_the_cause(&three, NodeId(1), Some(150)), held);
        assert_eq!(
            quorum_is_not_the_cause(&three, NodeId(1), Some(2_000)),
            held
        );
        assert_eq!(
            quorum_is_not_the_cause(&three, NodeId(1), Some(2_001)),
            None
        );
        // A follower sees no acknowledgements: a missing majority stays possible.
        assert_eq!(quorum_is_not_the_cause(&three, NodeId(2), None), None);
        // The only voter is another node (this one is a learner, or not yet a member).
        assert_eq!(quorum_is_not_the_cause(&ids(&[2]), NodeId(1), None), None);
    }

    #[test]
    fn a_timeout_travels_to_the_forwarding_node_as_a_timeout() {
        let e = ClusterError::Timeout("slow".into());
        let r = e.refusal();
        assert_eq!(r.kind, RefusalKind::Timeout);
        let back = ClusterError::from_refusal(rpc::decode(&rpc::encode(&r)).unwrap());
        assert!(matches!(back, ClusterError::Timeout(_)), "{back:?}");
        assert_eq!(back.to_string(), "timed out: slow");
    }
}
