//! Membership: a node starts a cluster (`init`), other nodes join with a token, and members
//! are removed. Every change goes through Raft: the member set is Raft's own membership, and
//! each member's record (name, addresses, key, role) is a command in the state machine.

use super::rpc::{self, JoinAccepted, Reply, Request};
use super::token::JoinToken;
use super::{Cluster, ClusterError, Led, JOIN_TIMEOUT};
use crate::store::types::{ClusterInfo, Node, Secret};
use crate::store::{Command, NodeId};
use openraft::error::{ClientWriteError, RaftError};
use openraft::ChangeMembers;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// How long a join waits for the leader to confirm a majority before it is refused. Within
/// [`JOIN_TIMEOUT`], with the learner's catch-up after it.
const JOIN_QUORUM_PATIENCE: Duration = Duration::from_secs(5);

/// Longest node or cluster name, in bytes.
pub const MAX_NAME: usize = 64;

/// Checks a node or cluster name: 1 to [`MAX_NAME`] bytes of `[A-Za-z0-9._-]`.
pub fn check_name(field: &'static str, name: &str) -> Result<(), ClusterError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ClusterError::Invalid {
            field,
            reason: format!("{name:?} must be 1 to {MAX_NAME} bytes of A-Z a-z 0-9 . _ -"),
        })
    }
}

/// Checks a joining node's record before it goes into the state.
fn check_node(node: &Node) -> Result<(), ClusterError> {
    check_name("node name", &node.name)?;
    node.api_addr
        .parse::<std::net::SocketAddr>()
        .map_err(|e| ClusterError::Invalid {
            field: "api address",
            reason: format!("{:?}: {e}", node.api_addr),
        })?;
    node.data_addr
        .strip_prefix("tcp://")
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        .ok_or_else(|| ClusterError::Invalid {
            field: "data address",
            reason: format!("{:?} is not tcp://IP:PORT", node.data_addr),
        })?;
    super::transport::decode_key(&node.public_key, "of the joining node")?;
    Ok(())
}

impl Cluster {
    async fn is_initialized(&self) -> Result<bool, ClusterError> {
        self.raft
            .is_initialized()
            .await
            .map_err(|e| ClusterError::Raft {
                op: "check initialization",
                reason: e.to_string(),
            })
    }

    fn already_member(&self) -> ClusterError {
        ClusterError::AlreadyMember(self.cluster_id().unwrap_or_else(|| "(joining)".into()))
    }

    /// Starts a new cluster with this node as its only member; returns a join token.
    pub async fn init(&self, name: &str) -> Result<String, ClusterError> {
        check_name("cluster name", name)?;
        if self.is_initialized().await? {
            return Err(self.already_member());
        }
        let members = BTreeMap::from([(self.id(), self.raft_node())]);
        // The first member elects itself.
        self.raft.runtime_config().elect(true);
        self.raft
            .initialize(members)
            .await
            .map_err(|e| ClusterError::Raft {
                op: "initialize",
                reason: e.to_string(),
            })?;
        self.wait_for(Duration::from_secs(10), "this node to lead", |c| {
            c.leader() == Some(c.id())
        })
        .await?;
        // The key that wraps volume keys: kept if an earlier start made one, else new.
        let key = crate::crypt::ClusterKey::load_or_create(
            &self.config.data_dir.join(super::CLUSTER_KEY_FILE),
        )?;
        self.keep_cluster_key(key)?;
        let random: u128 = rand::random();
        let info = ClusterInfo {
            id: format!("{random:032x}"),
            name: name.to_owned(),
            join_secret: Secret::random(),
            api_token: Secret::random(),
        };
        for cmd in [
            Command::InitCluster { info },
            Command::PutNode {
                node: self.node_record(),
            },
        ] {
            self.write_local(cmd).await.map_err(|e| self.led_error(e))?;
        }
        self.token()
    }

    /// The cluster's id and join secret, if this node is in a cluster.
    fn cluster_secret(&self) -> Result<(String, String), ClusterError> {
        self.state
            .read(|s| {
                s.cluster
                    .as_ref()
                    .map(|c| (c.id.clone(), c.join_secret.expose().to_owned()))
            })
            .ok_or(ClusterError::NotInCluster)
    }

    /// The cluster key as a joining node receives it (hex, in a reply that travels over
    /// CURVE).
    fn shared_cluster_key(&self) -> Option<Secret> {
        self.cluster_key()
            .map(|k| Secret::new(k.expose().iter().map(|b| format!("{b:02x}")).collect()))
    }

    /// A join token naming this node, for others to join with, valid for `ttl_secs`.
    pub fn token_for(&self, ttl_secs: u64) -> Result<String, ClusterError> {
        let (id, secret) = self.cluster_secret()?;
        let node = self.raft_node();
        let expires = rpc::now_ms() / 1000 + ttl_secs;
        Ok(JoinToken::issue(&secret, &id, &node.data_addr, &node.public_key, expires).encode())
    }

    /// A join token valid for the default time.
    pub fn token(&self) -> Result<String, ClusterError> {
        self.token_for(super::token::DEFAULT_TTL_SECS)
    }

    /// Joins the cluster a token names. Returns once this node has the cluster's state.
    pub async fn join(&self, token: &str) -> Result<JoinAccepted, ClusterError> {
        if self.is_initialized().await? || self.cluster_id().is_some() {
            return Err(self.already_member());
        }
        let parsed = JoinToken::decode(token)?;
        let req = rpc::encode(&Request::Join {
            token: token.trim().to_owned(),
            node: self.node_record(),
        });
        let reply = self
            .transport
            .call(&parsed.addr, &parsed.public_key, req, JOIN_TIMEOUT)
            .await
            .map_err(|source| ClusterError::MemberUnreachable {
                addr: parsed.addr.clone(),
                source,
            })?;
        let accepted = match rpc::decode::<Reply>(&reply) {
            Ok(Reply::Join(Ok(a))) => a,
            Ok(Reply::Join(Err(r))) => {
                return Err(match r.kind {
                    rpc::RefusalKind::NoQuorum => ClusterError::NoQuorum(r.message),
                    rpc::RefusalKind::Timeout => ClusterError::Timeout(r.message),
                    _ => ClusterError::JoinRefused(r.message),
                })
            }
            Ok(Reply::Refused(why)) => return Err(ClusterError::JoinRefused(why)),
            Ok(other) => {
                return Err(ClusterError::JoinRefused(format!(
                    "unexpected reply {other:?}"
                )))
            }
            Err(e) => return Err(ClusterError::JoinRefused(format!("undecodable reply: {e}"))),
        };
        let key = accepted
            .cluster_key
            .as_ref()
            .and_then(|k| hex_decode(k.expose()))
            .ok_or_else(|| {
                ClusterError::JoinRefused("the member sent no usable cluster key".into())
            })?;
        self.keep_cluster_key(crate::crypt::ClusterKey::from_bytes(&key)?)?;
        let me = self.id();
        self.wait_for(
            Duration::from_secs(10),
            "the cluster's state to arrive",
            |c| {
                c.state
                    .read(|s| s.cluster.is_some() && s.nodes.contains_key(&me))
            },
        )
        .await?;
        Ok(accepted)
    }

    /// A member's side of a join: check the token, then (at the leader) add the node as a
    /// learner, make it a voter and record it. A member that does not lead passes the
    /// request on to the leader.
    pub(super) async fn admit(
        &self,
        key: &str,
        token: &str,
        node: Node,
    ) -> Result<JoinAccepted, ClusterError> {
        let (cluster_id, secret) = self.cluster_secret()?;
        if key != node.public_key && !self.is_member_key(key) {
            return Err(ClusterError::Invalid {
                field: "join request",
                reason: "a joining node must connect with the key it joins with".into(),
            });
        }
        JoinToken::decode(token)?.verify(&cluster_id, &secret, rpc::now_ms() / 1000)?;
        check_node(&node)?;
        match self.leader() {
            Some(l) if l == self.id() => {}
            Some(l) => return self.forward_join(l, token, node).await,
            None => return Err(self.stalled("no leader is known".into())),
        }
        let id = node.id;
        let membership = self.membership();
        let taken = || ClusterError::Invalid {
            field: "node id",
            reason: format!("{id} is already taken by another member"),
        };
        let accepted = || JoinAccepted {
            cluster_id: cluster_id.clone(),
            leader: self.id(),
            cluster_key: self.shared_cluster_key(),
        };
        // Already in the membership: the same node asking again. Recorded, it is in; not
        // yet recorded, its join stopped half way (leadership moved) and is finished here.
        let known = membership.get_node(&id).cloned();
        if let Some(member) = &known {
            if member.public_key != node.public_key {
                return Err(taken());
            }
            match self
                .state
                .read(|s| s.nodes.get(&id).map(|n| n.public_key == node.public_key))
            {
                Some(true) => return Ok(accepted()),
                Some(false) => return Err(taken()),
                None => {}
            }
        }
        self.ensure_quorum_within(JOIN_QUORUM_PATIENCE)
            .await
            .map_err(|e| self.led_error(e))?;
        if known.is_none() {
            let raft_node = crate::store::RaftNode {
                data_addr: node.data_addr.clone(),
                public_key: node.public_key.clone(),
            };
            let added =
                tokio::time::timeout(JOIN_TIMEOUT / 2, self.raft.add_learner(id, raft_node, true))
                    .await;
            if !matches!(added, Ok(Ok(_))) {
                // Take the learner out again so a failed join leaves the membership as it was.
                let _ = self
                    .raft
                    .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                    .await;
                let reason = match added {
                    Err(_) => format!("node {id} did not catch up with the log in time"),
                    Ok(Err(e)) => e.to_string(),
                    Ok(Ok(_)) => String::new(),
                };
                return Err(ClusterError::Raft {
                    op: "add a learner",
                    reason,
                });
            }
        }
        if !self.membership().voter_ids().any(|v| v == id) {
            let promoted = self
                .raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                .await;
            if let Err(e) = promoted {
                // Leadership moved under the change: the new leader finishes the join.
                if let RaftError::APIError(ClientWriteError::ForwardToLeader(f)) = &e {
                    if let Some(leader) = f.leader_id.filter(|l| *l != self.id() && *l != id) {
                        return self.forward_join(leader, token, node).await;
                    }
                }
                return Err(ClusterError::Raft {
                    op: "make the new node a voter",
                    reason: e.to_string(),
                });
            }
        }
        self.write_local(Command::PutNode { node })
            .await
            .map_err(|e| self.led_error(e))?;
        tracing::info!(node = %id, "node joined");
        Ok(accepted())
    }

    async fn forward_join(
        &self,
        leader: NodeId,
        token: &str,
        node: Node,
    ) -> Result<JoinAccepted, ClusterError> {
        let target = self
            .membership()
            .get_node(&leader)
            .cloned()
            .ok_or_else(|| self.stalled(format!("the leader {leader} is not in the membership")))?;
        let req = rpc::encode(&Request::Join {
            token: token.to_owned(),
            node,
        });
        let reply = self
            .transport
            .call(&target.data_addr, &target.public_key, req, JOIN_TIMEOUT)
            .await
            .map_err(|e| self.stalled(format!("the leader {leader} does not answer: {e}")))?;
        match rpc::decode::<Reply>(&reply) {
            Ok(Reply::Join(r)) => r.map_err(ClusterError::from_refusal),
            other => Err(ClusterError::Raft {
                op: "forward a join",
                reason: format!("unexpected reply {other:?}"),
            }),
        }
    }

    /// Finds a member by id or by name.
    pub fn resolve_node(&self, id_or_name: &str) -> Result<NodeId, ClusterError> {
        let membership = self.membership();
        if let Ok(id) = id_or_name.parse::<NodeId>() {
            if membership.get_node(&id).is_some() || self.state.read(|s| s.nodes.contains_key(&id))
            {
                return Ok(id);
            }
        }
        let by_name: Vec<NodeId> = self.state.read(|s| {
            s.nodes
                .values()
                .filter(|n| n.name == id_or_name)
                .map(|n| n.id)
                .collect()
        });
        match by_name.as_slice() {
            [id] => Ok(*id),
            [] => Err(ClusterError::UnknownNode(id_or_name.to_owned())),
            _ => Err(ClusterError::Invalid {
                field: "node",
                reason: format!("several members are named {id_or_name:?}; give the id"),
            }),
        }
    }

    /// Removes a member (at the leader): its record first, then its place in the membership,
    /// so a leader removing itself still holds the leadership it needs for both.
    pub(super) async fn remove_local(&self, id: NodeId) -> Result<(), Led> {
        let membership = self.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let in_raft = membership.get_node(&id).is_some();
        let record = self.state.read(|s| s.nodes.get(&id).cloned());
        if !in_raft && record.is_none() {
            return Err(Led::Err(ClusterError::UnknownNode(id.to_string())));
        }
        if voters.len() == 1 && voters.contains(&id) {
            return Err(Led::Err(ClusterError::LastMember(id)));
        }
        self.ensure_quorum().await?;
        if record.is_some() {
            self.write_local(Command::RemoveNode { id }).await?;
        }
        if in_raft {
            let change = if voters.contains(&id) {
                ChangeMembers::RemoveVoters(BTreeSet::from([id]))
            } else {
                ChangeMembers::RemoveNodes(BTreeSet::from([id]))
            };
            if let Err(e) = self.raft.change_membership(change, false).await {
                if let Some(node) = record {
                    // Put the record back: the node is still a member.
                    let _ = self.write_local(Command::PutNode { node }).await;
                }
                return Err(Led::Err(ClusterError::Raft {
                    op: "remove a member",
                    reason: e.to_string(),
                }));
            }
        }
        tracing::info!(node = %id, "node removed");
        Ok(())
    }

    /// An error of work only the leader may do, for a caller that cannot pass it on.
    fn led_error(&self, e: Led) -> ClusterError {
        match e {
            Led::Err(e) => e,
            Led::NotLeader => {
                self.stalled("this node lost the leadership during the change".into())
            }
        }
    }

    /// Polls `done` until it holds or `limit` passes.
    async fn wait_for(
        &self,
        limit: Duration,
        what: &str,
        done: impl Fn(&Cluster) -> bool,
    ) -> Result<(), ClusterError> {
        let deadline = Instant::now() + limit;
        while !done(self) {
            if Instant::now() >= deadline {
                return Err(ClusterError::Raft {
                    op: "wait",
                    reason: format!("timed out after {limit:?} waiting for {what}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

fn hex_decode(s: &str) -> Option<zeroize::Zeroizing<Vec<u8>>> {
    super::token::hex_bytes(s).map(zeroize::Zeroizing::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        check_name("node name", "node-1.a_b").unwrap();
        for bad in ["", "a b", "x/y", &"n".repeat(MAX_NAME + 1)] {
            assert!(check_name("node name", bad).is_err(), "{bad:?}");
        }
    }
}
