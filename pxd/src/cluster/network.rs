//! openraft's network over the ZeroMQ transport: each Raft RPC is one request/reply call to
//! the target's endpoint, authenticated by the key its membership entry records.

use super::rpc::{self, Reply, Request};
use super::transport::Transport;
use crate::store::{NodeId, RaftNode, TypeConfig};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use std::sync::Arc;

/// Makes a client per replication target.
#[derive(Clone)]
pub struct Network {
    pub transport: Arc<Transport>,
}

pub struct PeerClient {
    transport: Arc<Transport>,
    target: NodeId,
    node: RaftNode,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &RaftNode) -> PeerClient {
        PeerClient {
            transport: self.transport.clone(),
            target,
            node: node.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("node {target} answered a Raft {what} with {reply}")]
struct UnexpectedReply {
    target: NodeId,
    what: &'static str,
    reply: String,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, RaftNode, RaftError<NodeId, E>>>;

impl PeerClient {
    async fn send<E: std::error::Error>(
        &self,
        req: Request,
        option: &RPCOption,
    ) -> Result<Reply, RPCError<NodeId, RaftNode, RaftError<NodeId, E>>> {
        let bytes = self
            .transport
            .call(
                &self.node.data_addr,
                &self.node.public_key,
                rpc::encode(&req),
                option.hard_ttl(),
            )
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        rpc::decode(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }

    fn unexpected<E: std::error::Error>(
        &self,
        what: &'static str,
        reply: Reply,
    ) -> RPCError<NodeId, RaftNode, RaftError<NodeId, E>> {
        let reply = match reply {
            Reply::Refused(why) => format!("a refusal: {why}"),
            other => format!("{other:?}").chars().take(200).collect(),
        };
        RPCError::Network(NetworkError::new(&UnexpectedReply {
            target: self.target,
            what,
            reply,
        }))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        match self.send(Request::AppendEntries(rpc), &option).await? {
            Reply::AppendEntries(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected("append-entries", other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        match self.send(Request::InstallSnapshot(rpc), &option).await? {
            Reply::InstallSnapshot(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected("install-snapshot", other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        match self.send(Request::Vote(rpc), &option).await? {
            Reply::Vote(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected("vote", other)),
        }
    }
}
