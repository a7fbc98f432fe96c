//! The Raft log, the vote and the committed index in redb. Appends and votes are committed
//! durably before Raft is told they are; the committed index may lag after a crash (Raft
//! re-learns it from the leader).

use super::{db_op, io_error, Entry, LogId, NodeId, StoreError, TypeConfig};
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{OptionalSend, StorageError, StorageIOError, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::Arc;

const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("raft_meta");

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// The log store. Clones share the database and serve as the log reader.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    pub(super) fn open(db: Arc<Database>) -> Result<LogStore, StoreError> {
        let tx = db
            .begin_write()
            .map_err(db_err("begin creating log tables"))?;
        tx.open_table(LOG).map_err(db_err("create the log table"))?;
        tx.open_table(META)
            .map_err(db_err("create the raft meta table"))?;
        tx.commit().map_err(db_err("commit the log tables"))?;
        Ok(LogStore { db })
    }

    fn read_meta<T: for<'a> serde::Deserialize<'a>>(
        &self,
        key: &'static str,
    ) -> Result<Option<T>, StoreError> {
        let tx = self
            .db
            .begin_read()
            .map_err(db_err("begin reading raft meta"))?;
        let table = tx.open_table(META).map_err(db_err("open raft meta"))?;
        let Some(v) = table.get(key).map_err(db_err("read raft meta"))? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|source| StoreError::Decode {
                what: key.to_owned(),
                source,
            })
    }

    fn write_meta<T: serde::Serialize>(
        &self,
        key: &'static str,
        value: &T,
        durability: Durability,
    ) -> Result<(), StoreError> {
        let bytes = encode(key, value)?;
        let mut tx = self
            .db
            .begin_write()
            .map_err(db_err("begin writing raft meta"))?;
        tx.set_durability(durability)
            .map_err(db_err("set durability of a raft meta write"))?;
        {
            let mut table = tx.open_table(META).map_err(db_err("open raft meta"))?;
            table
                .insert(key, bytes.as_slice())
                .map_err(db_err("write raft meta"))?;
        }
        tx.commit().map_err(db_err("commit raft meta"))
    }

    fn entries<RB: RangeBounds<u64>>(&self, range: RB) -> Result<Vec<Entry>, StoreError> {
        let tx = self
            .db
            .begin_read()
            .map_err(db_err("begin reading the log"))?;
        let table = tx.open_table(LOG).map_err(db_err("open the log"))?;
        let mut out = Vec::new();
        for item in table.range(range).map_err(db_err("read the log"))? {
            let (k, v) = item.map_err(db_err("read a log entry"))?;
            let entry = serde_json::from_slice(v.value()).map_err(|source| StoreError::Decode {
                what: format!("log entry {}", k.value()),
                source,
            })?;
            out.push(entry);
        }
        Ok(out)
    }

    fn last_entry(&self) -> Result<Option<Entry>, StoreError> {
        let tx = self
            .db
            .begin_read()
            .map_err(db_err("begin reading the log"))?;
        let table = tx.open_table(LOG).map_err(db_err("open the log"))?;
        let Some((k, v)) = table.last().map_err(db_err("read the last log entry"))? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|source| StoreError::Decode {
                what: format!("log entry {}", k.value()),
                source,
            })
    }

    fn append_durably(&self, entries: Vec<Entry>) -> Result<(), StoreError> {
        let tx = self
            .db
            .begin_write()
            .map_err(db_err("begin appending to the log"))?;
        {
            let mut table = tx.open_table(LOG).map_err(db_err("open the log"))?;
            for e in &entries {
                let bytes = encode("a log entry", e)?;
                table
                    .insert(e.log_id.index, bytes.as_slice())
                    .map_err(db_err("append a log entry"))?;
            }
        }
        tx.commit().map_err(db_err("commit appended log entries"))
    }

    /// Removes the entries in `range` and, when purging, records how far.
    fn remove<RB: RangeBounds<u64>>(
        &self,
        range: RB,
        purged: Option<LogId>,
    ) -> Result<(), StoreError> {
        let tx = self
            .db
            .begin_write()
            .map_err(db_err("begin removing log entries"))?;
        {
            let mut table = tx.open_table(LOG).map_err(db_err("open the log"))?;
            table
                .retain_in(range, |_, _| false)
                .map_err(db_err("remove log entries"))?;
            if let Some(p) = purged {
                let bytes = encode(LAST_PURGED, &p)?;
                let mut meta = tx.open_table(META).map_err(db_err("open raft meta"))?;
                meta.insert(LAST_PURGED, bytes.as_slice())
                    .map_err(db_err("record the purged log id"))?;
            }
        }
        tx.commit().map_err(db_err("commit removed log entries"))
    }
}

fn db_err<E: Into<redb::Error>>(op: &'static str) -> impl FnOnce(E) -> StoreError {
    db_op(op)
}

fn encode<T: serde::Serialize>(what: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Decode {
        what: what.to_owned(),
        source,
    })
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        self.entries(range)
            .map_err(io_error(StorageIOError::read_logs))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged_log_id: Option<LogId> = self
            .read_meta(LAST_PURGED)
            .map_err(io_error(StorageIOError::read_logs))?;
        let last = self
            .last_entry()
            .map_err(io_error(StorageIOError::read_logs))?
            .map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.write_meta(VOTE, vote, Durability::Immediate)
            .map_err(io_error(StorageIOError::write_vote))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.read_meta(VOTE)
            .map_err(io_error(StorageIOError::read_vote))
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId>,
    ) -> Result<(), StorageError<NodeId>> {
        self.write_meta(COMMITTED, &committed, Durability::None)
            .map_err(io_error(StorageIOError::write))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError<NodeId>> {
        let c: Option<Option<LogId>> = self
            .read_meta(COMMITTED)
            .map_err(io_error(StorageIOError::read))?;
        Ok(c.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let result = self.append_durably(entries.into_iter().collect());
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(io_error(StorageIOError::write_logs)(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError<NodeId>> {
        self.remove(log_id.index.., None)
            .map_err(io_error(StorageIOError::write_logs))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError<NodeId>> {
        self.remove(..=log_id.index, Some(log_id))
            .map_err(io_error(StorageIOError::write_logs))
    }
}
