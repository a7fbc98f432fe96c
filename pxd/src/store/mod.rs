//! Desired state (DESIGN §3): its types, the commands that change it, and the Raft log and
//! state machine that replicate it, both kept in one embedded redb database.

pub(crate) mod attach;
mod check;
pub mod codec;
mod ha;
pub mod log_store;
pub mod pools;
pub mod state;
pub mod state_machine;
pub mod topology;
pub mod types;
pub mod volumes;

pub use log_store::LogStore;
pub use state::{ClusterState, Command, Response};
pub use state_machine::{StateMachineStore, StateReader};
pub use types::NodeId;

use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

/// How Raft reaches a member: its ZeroMQ endpoint and the CURVE key its server proves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftNode {
    pub data_addr: String,
    pub public_key: String,
}

openraft::declare_raft_types!(
    /// pxd's Raft: commands of the desired state over ZeroMQ-connected nodes.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = NodeId,
        Node = RaftNode,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::impls::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, RaftNode>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("open the store {path}: {source}")]
    Open {
        path: String,
        source: redb::DatabaseError,
    },
    #[error("{op}: {source}")]
    Db {
        op: &'static str,
        source: redb::Error,
    },
    #[error("decode {what} from the store: {source}")]
    Decode {
        what: String,
        source: serde_json::Error,
    },
    #[error(transparent)]
    State(#[from] state::StateError),
}

/// Maps any redb error to `StoreError::Db`, naming the operation.
pub(crate) fn db_op<E: Into<redb::Error>>(op: &'static str) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError::Db {
        op,
        source: e.into(),
    }
}

/// Opens (or creates) the store in `path` and returns its log and its state machine.
pub fn open(path: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    let db = redb::Database::create(path).map_err(|source| StoreError::Open {
        path: path.display().to_string(),
        source,
    })?;
    let db = Arc::new(db);
    let log = LogStore::open(db.clone())?;
    let sm = StateMachineStore::open(db)?;
    Ok((log, sm))
}

/// Raft's view of a storage failure, with the pxd error as its source.
pub(crate) fn io_error(
    make: fn(openraft::AnyError) -> openraft::StorageIOError<NodeId>,
) -> impl FnOnce(StoreError) -> openraft::StorageError<NodeId> {
    move |e| make(openraft::AnyError::new(&e)).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::testing::{StoreBuilder, Suite};
    use openraft::StorageError;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<NodeId>>
        {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let (log, sm) = open(&dir.path().join("raft.redb")).expect("a new store opens");
            Ok((dir, log, sm))
        }
    }

    #[test]
    fn log_store_and_state_machine_pass_openraft_suite() {
        Suite::test_all(Builder).expect("openraft's storage suite");
    }

    #[test]
    fn applied_state_and_log_survive_reopening() {
        use openraft::storage::{RaftLogStorage, RaftStateMachine};
        use openraft::{CommittedLeaderId, EntryPayload};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let (mut log, mut sm) = open(&path).unwrap();
            let log_id = openraft::LogId::new(CommittedLeaderId::new(1, NodeId(1)), 1);
            let entry = Entry {
                log_id,
                payload: EntryPayload::Normal(Command::KvPut {
                    ns: "a".into(),
                    key: "b".into(),
                    value: "c".into(),
                }),
            };
            use openraft::storage::RaftLogStorageExt;
            log.blocking_append([entry.clone()]).await.unwrap();
            sm.apply([entry]).await.unwrap();
            drop((log, sm));
            let (mut log, mut sm) = open(&path).unwrap();
            let (applied, _) = sm.applied_state().await.unwrap();
            assert_eq!(applied, Some(log_id));
            assert_eq!(sm.reader().read(|s| s.kv["a"]["b"].clone()), "c");
            assert_eq!(log.get_log_state().await.unwrap().last_log_id, Some(log_id));
        });
    }
}
