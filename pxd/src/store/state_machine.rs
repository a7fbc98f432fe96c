//! The Raft state machine: the desired state in memory for reads, and every object of it in
//! redb so a restarted node starts from what it had applied. Each batch of applied entries is
//! one redb transaction (objects and the applied log id together), committed durably: the
//! node's reconciler acts on what was applied, so what it saw must still be there after a
//! crash, or a restart would act on an older desired state than the kernel already follows.

use super::state::{ClusterState, Response};
use super::{db_op, io_error, Entry, LogId, NodeId, StoreError, StoredMembership, TypeConfig};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{EntryPayload, OptionalSend, StorageError, StorageIOError};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

const OBJECTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("objects");
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("sm_meta");

const APPLIED: &str = "applied";
const SNAPSHOT_META: &str = "snapshot_meta";
const SNAPSHOT_DATA: &str = "snapshot_data";

/// Raft's bookkeeping next to the objects: how far the state goes, and the membership in it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Applied {
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
}

/// A snapshot's payload: the bookkeeping and the whole state.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    applied: Applied,
    state: ClusterState,
}

type Meta = SnapshotMeta<NodeId, super::RaftNode>;

struct Inner {
    applied: Applied,
    state: ClusterState,
    snapshot: Option<(Meta, Vec<u8>)>,
    /// Makes snapshot ids unique even when two are built at the same log id.
    snapshots_built: u64,
}

/// The state machine. Clones share it; the snapshot builder is a clone.
#[derive(Clone)]
pub struct StateMachineStore {
    db: Arc<Database>,
    inner: Arc<RwLock<Inner>>,
}

/// Read access to the applied desired state, for the API and the reconcilers.
#[derive(Clone)]
pub struct StateReader {
    inner: Arc<RwLock<Inner>>,
}

impl StateReader {
    /// Runs `f` on the state as applied on this node (it may lag the leader).
    pub fn read<T>(&self, f: impl FnOnce(&ClusterState) -> T) -> T {
        f(&read_lock(&self.inner).state)
    }
}

// A panic while holding the lock cannot leave `Inner` half-changed (each change is one
// assignment after the database commit), so a poisoned lock is still safe to use.
fn read_lock(l: &RwLock<Inner>) -> RwLockReadGuard<'_, Inner> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write_lock(l: &RwLock<Inner>) -> RwLockWriteGuard<'_, Inner> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

fn decode<T: for<'a> Deserialize<'a>>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Decode {
        what: what.to_owned(),
        source,
    })
}

fn encode<T: Serialize>(what: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Decode {
        what: what.to_owned(),
        source,
    })
}

impl StateMachineStore {
    pub(super) fn open(db: Arc<Database>) -> Result<StateMachineStore, StoreError> {
        let tx = db
            .begin_write()
            .map_err(db_op("begin creating state tables"))?;
        tx.open_table(OBJECTS)
            .map_err(db_op("create the objects table"))?;
        tx.open_table(META)
            .map_err(db_op("create the state meta table"))?;
        tx.commit().map_err(db_op("commit the state tables"))?;

        let tx = db.begin_read().map_err(db_op("begin loading the state"))?;
        let meta = tx.open_table(META).map_err(db_op("open state meta"))?;
        let applied = match meta
            .get(APPLIED)
            .map_err(db_op("read the applied log id"))?
        {
            Some(v) => decode(APPLIED, v.value())?,
            None => Applied::default(),
        };
        let snapshot_meta = meta
            .get(SNAPSHOT_META)
            .map_err(db_op("read the snapshot meta"))?;
        let snapshot_data = meta
            .get(SNAPSHOT_DATA)
            .map_err(db_op("read the snapshot data"))?;
        let snapshot = match (snapshot_meta, snapshot_data) {
            (Some(m), Some(d)) => Some((
                decode::<Meta>(SNAPSHOT_META, m.value())?,
                d.value().to_vec(),
            )),
            _ => None,
        };
        let objects = tx.open_table(OBJECTS).map_err(db_op("open the objects"))?;
        let mut state = ClusterState::default();
        for item in objects.iter().map_err(db_op("list the objects"))? {
            let (k, v) = item.map_err(db_op("read an object"))?;
            state.load_object(k.value(), v.value())?;
        }
        Ok(StateMachineStore {
            db,
            inner: Arc::new(RwLock::new(Inner {
                applied,
                state,
                snapshot,
                snapshots_built: 0,
            })),
        })
    }

    pub fn reader(&self) -> StateReader {
        StateReader {
            inner: self.inner.clone(),
        }
    }

    fn apply_entries(&self, entries: Vec<Entry>) -> Result<Vec<Response>, StoreError> {
        // Applied in place: if the commit below fails, Raft stops this node on the storage
        // error, so memory running ahead of the database is never served for long.
        let mut inner = write_lock(&self.inner);
        let inner = &mut *inner;
        let state = &mut inner.state;
        let applied = &mut inner.applied;
        let mut responses = Vec::with_capacity(entries.len());
        let mut changes = Vec::new();
        for entry in entries {
            applied.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => responses.push(Response::Applied),
                EntryPayload::Normal(cmd) => {
                    let (r, c) = state.apply(&cmd);
                    responses.push(r);
                    changes.extend(c);
                }
                EntryPayload::Membership(m) => {
                    applied.last_membership = StoredMembership::new(Some(entry.log_id), m);
                    responses.push(Response::Applied);
                }
            }
        }
        let applied_bytes = encode(APPLIED, &*applied)?;
        let mut tx = self
            .db
            .begin_write()
            .map_err(db_op("begin applying entries"))?;
        tx.set_durability(Durability::Immediate)
            .map_err(db_op("set durability of applied entries"))?;
        {
            let mut objects = tx.open_table(OBJECTS).map_err(db_op("open the objects"))?;
            for c in &changes {
                match &c.value {
                    Some(v) => objects
                        .insert(c.key.as_str(), v.as_slice())
                        .map(drop)
                        .map_err(db_op("write an object"))?,
                    None => objects
                        .remove(c.key.as_str())
                        .map(drop)
                        .map_err(db_op("remove an object"))?,
                }
            }
            let mut meta = tx.open_table(META).map_err(db_op("open state meta"))?;
            meta.insert(APPLIED, applied_bytes.as_slice())
                .map_err(db_op("record the applied log id"))?;
        }
        tx.commit().map_err(db_op("commit applied entries"))?;
        Ok(responses)
    }

    fn save_snapshot(&self, meta: &Meta, data: &[u8]) -> Result<(), StoreError> {
        let meta_bytes = encode(SNAPSHOT_META, meta)?;
        let tx = self
            .db
            .begin_write()
            .map_err(db_op("begin saving a snapshot"))?;
        {
            let mut table = tx.open_table(META).map_err(db_op("open state meta"))?;
            table
                .insert(SNAPSHOT_META, meta_bytes.as_slice())
                .map_err(db_op("write the snapshot meta"))?;
            table
                .insert(SNAPSHOT_DATA, data)
                .map_err(db_op("write the snapshot data"))?;
        }
        tx.commit().map_err(db_op("commit a snapshot"))
    }

    fn build(&self) -> Result<Snapshot<TypeConfig>, StoreError> {
        let (meta, data) = {
            let mut inner = write_lock(&self.inner);
            inner.snapshots_built += 1;
            let body = SnapshotBody {
                applied: inner.applied.clone(),
                state: inner.state.clone(),
            };
            let data = encode("a snapshot", &body)?;
            let last = inner.applied.last_applied;
            let meta = Meta {
                last_log_id: last,
                last_membership: inner.applied.last_membership.clone(),
                snapshot_id: format!(
                    "{}-{}-{}",
                    last.map(|l| l.leader_id.term).unwrap_or(0),
                    last.map(|l| l.index).unwrap_or(0),
                    inner.snapshots_built
                ),
            };
            (meta, data)
        };
        self.save_snapshot(&meta, &data)?;
        write_lock(&self.inner).snapshot = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }

    fn install(&self, meta: &Meta, data: Vec<u8>) -> Result<(), StoreError> {
        let body: SnapshotBody = decode("a received snapshot", &data)?;
        let applied = Applied {
            last_applied: meta.last_log_id,
            last_membership: meta.last_membership.clone(),
        };
        let applied_bytes = encode(APPLIED, &applied)?;
        let meta_bytes = encode(SNAPSHOT_META, meta)?;
        let tx = self
            .db
            .begin_write()
            .map_err(db_op("begin installing a snapshot"))?;
        {
            let mut objects = tx.open_table(OBJECTS).map_err(db_op("open the objects"))?;
            objects
                .retain(|_, _| false)
                .map_err(db_op("clear the objects"))?;
            for c in body.state.objects() {
                let v = c.value.unwrap_or_default();
                objects
                    .insert(c.key.as_str(), v.as_slice())
                    .map_err(db_op("write an object"))?;
            }
            let mut table = tx.open_table(META).map_err(db_op("open state meta"))?;
            table
                .insert(APPLIED, applied_bytes.as_slice())
                .map_err(db_op("record the applied log id"))?;
            table
                .insert(SNAPSHOT_META, meta_bytes.as_slice())
                .map_err(db_op("write the snapshot meta"))?;
            table
                .insert(SNAPSHOT_DATA, data.as_slice())
                .map_err(db_op("write the snapshot data"))?;
        }
        tx.commit().map_err(db_op("commit an installed snapshot"))?;
        let mut inner = write_lock(&self.inner);
        inner.state = body.state;
        inner.applied = applied;
        inner.snapshot = Some((meta.clone(), data));
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        self.build()
            .map_err(|e| StorageIOError::write_snapshot(None, openraft::AnyError::new(&e)).into())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership), StorageError<NodeId>> {
        let inner = read_lock(&self.inner);
        Ok((
            inner.applied.last_applied,
            inner.applied.last_membership.clone(),
        ))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.apply_entries(entries.into_iter().collect())
            .map_err(io_error(StorageIOError::write_state_machine))
    }

    async fn get_snapshot_builder(&mut self) -> StateMachineStore {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.install(meta, snapshot.into_inner()).map_err(|e| {
            StorageIOError::write_snapshot(Some(meta.signature()), openraft::AnyError::new(&e))
                .into()
        })
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let inner = read_lock(&self.inner);
        Ok(inner.snapshot.as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(data.clone())),
        }))
    }
}
