//! What daemons say to each other over the transport: Raft's RPCs, joins, forwarded writes
//! and heartbeats, as JSON.

use super::gossip::NodeStats;
use super::Op;
use crate::store::types::Node;
use crate::store::{NodeId, Response, TypeConfig};
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A node asks to join with a token; a member that is not the leader passes it on.
    Join {
        token: String,
        node: Node,
    },
    /// A member that is not the leader passes a change on to the leader. The sender gives up
    /// at `expires` (Unix milliseconds); a request that arrives later, e.g. held up in a TCP
    /// send queue while the link was down, is refused rather than applied after the sender
    /// reported failure. Members' clocks must agree to well within a second (NTP).
    Submit {
        /// Boxed: a whole volume record is larger than every other request.
        op: Box<Op>,
        expires: u64,
    },
    Heartbeat {
        from: NodeId,
        stats: NodeStats,
    },
    /// A member asks the leader to confirm, by a Raft read index (no log entry), that it
    /// still leads a quorum: how an attach node renews its lease.
    ConfirmQuorum,
    /// The attach node, its raid suspended, asks the source of a new leg's copy of volume
    /// `volume` for the last round.
    CopyLast {
        volume: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    Join(Result<JoinAccepted, Refusal>),
    /// The response, and the log index it was applied at (none for a membership change).
    Submit(Result<(Response, Option<u64>), Refusal>),
    Ack,
    /// The leader's answer to [`Request::ConfirmQuorum`]: confirmed, or why not.
    Quorum(Result<(), String>),
    /// The answer to [`Request::CopyLast`]: the bytes sent, or why not.
    CopiedLast(Result<u64, String>),
    /// The request was not allowed or not understood.
    Refused(String),
}

/// Why a join or a forwarded write was refused, with the kind the caller maps to its error.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Refusal {
    pub kind: RefusalKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefusalKind {
    /// Bad token, wrong cluster, taken id: the caller's request is wrong.
    Invalid,
    NoQuorum,
    /// The leader has a quorum but did not finish in time; the change may still be applied.
    Timeout,
    /// The receiver is not the leader (any more); ask again.
    NotLeader,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinAccepted {
    pub cluster_id: String,
    pub leader: NodeId,
    /// The cluster key, hex, for the joining node to keep: this reply travels over CURVE.
    #[serde(default)]
    pub cluster_key: Option<crate::store::types::Secret>,
}

/// Wall-clock time in Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // These types serialize to JSON without fail (string map keys, no custom errors).
    serde_json::to_vec(value).unwrap_or_default()
}

pub fn decode<T: for<'a> Deserialize<'a>>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(bytes)
}
