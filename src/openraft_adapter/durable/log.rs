//! The Raft log, the vote and the committed log id in `log.redb`.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    LogId, LogState, RaftLogId, RaftLogReader, RaftTypeConfig, StorageError, StorageIOError, Vote,
};
use redb::{Durability, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::db::{Db, DurableError, blocking};

/// Log entries by index, each postcard-encoded.
pub(super) const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("log");
/// Small records: the vote, the committed and last purged log ids, the owner, facts.
pub(super) const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");

pub(super) const VOTE: &str = "vote";
pub(super) const COMMITTED: &str = "committed";
pub(super) const LAST_PURGED: &str = "last_purged";

/// openraft's log storage on redb: entries, vote and committed log id in the node's
/// `log.redb`. Clones share the database (openraft reads through a clone while it appends
/// through the original).
///
/// Durability: [`save_vote`](RaftLogStorage::save_vote), `append` and `truncate` return (and
/// `append` reports the entries flushed) only after the transaction is committed with an
/// fsync, so a node never answers a vote or an AppendEntries with state a crash could take
/// back. The committed log id and purges are written without waiting for the disk: losing
/// them only makes the node re-apply or re-purge entries after a power cut.
pub struct DurableLogStore<C: RaftTypeConfig> {
    db: Arc<Db>,
    /// Encoded bytes of the entries in the log (what the snapshot policy watches).
    bytes: Arc<AtomicU64>,
    _config: PhantomData<fn() -> C>,
}

impl<C: RaftTypeConfig> Clone for DurableLogStore<C> {
    fn clone(&self) -> Self {
        Self {
            db: self.db.clone(),
            bytes: self.bytes.clone(),
            _config: PhantomData,
        }
    }
}

impl<C: RaftTypeConfig> fmt::Debug for DurableLogStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DurableLogStore")
            .field("path", &self.db.path)
            .field("bytes", &self.bytes.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Reads a META record.
pub(super) fn read_meta<T: DeserializeOwned>(
    db: &Db,
    key: &str,
) -> Result<Option<T>, DurableError> {
    let txn = db.read()?;
    let table = match txn.open_table(META) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(db.err(e)),
    };
    match table.get(key).map_err(|e| db.err(e))? {
        Some(bytes) => db.decode(key, bytes.value()).map(Some),
        None => Ok(None),
    }
}

/// Writes a META record with `durability`.
pub(super) fn write_meta<T: Serialize>(
    db: &Db,
    key: &str,
    value: &T,
    durability: Durability,
) -> Result<(), DurableError> {
    let bytes = db.encode(key, value)?;
    let txn = db.write(durability)?;
    {
        let mut table = txn.open_table(META).map_err(|e| db.err(e))?;
        table.insert(key, bytes.as_slice()).map_err(|e| db.err(e))?;
    }
    txn.commit().map_err(|e| db.err(e))
}

/// Total encoded size of the entries in the log.
pub(super) fn log_bytes(db: &Db) -> Result<u64, DurableError> {
    let txn = db.read()?;
    let table = match txn.open_table(LOG) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(db.err(e)),
    };
    let mut total = 0u64;
    for item in table.iter().map_err(|e| db.err(e))? {
        let (_, value) = item.map_err(|e| db.err(e))?;
        total += value.value().len() as u64;
    }
    Ok(total)
}

/// True when the log holds no entry.
pub(super) fn log_is_empty(db: &Db) -> Result<bool, DurableError> {
    let txn = db.read()?;
    match txn.open_table(LOG) {
        Ok(table) => Ok(table.first().map_err(|e| db.err(e))?.is_none()),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(true),
        Err(e) => Err(db.err(e)),
    }
}

fn bound(bound: Bound<&u64>) -> Bound<u64> {
    match bound {
        Bound::Included(i) => Bound::Included(*i),
        Bound::Excluded(i) => Bound::Excluded(*i),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl<C: RaftTypeConfig> DurableLogStore<C> {
    pub(super) fn new(db: Arc<Db>, bytes: Arc<AtomicU64>) -> Self {
        Self {
            db,
            bytes,
            _config: PhantomData,
        }
    }

    /// Encoded bytes of the entries the log holds (appended and not yet purged): what a
    /// [`SnapshotPolicy`](super::SnapshotPolicy) by log size watches.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

type StoreResult<T, C> = Result<T, StorageError<<C as RaftTypeConfig>::NodeId>>;

impl<C> DurableLogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
{
    fn entries(&self, range: (Bound<u64>, Bound<u64>)) -> Result<Vec<C::Entry>, DurableError> {
        let db = &self.db;
        let txn = db.read()?;
        let table = match txn.open_table(LOG) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(db.err(e)),
        };
        let mut entries = Vec::new();
        for item in table.range(range).map_err(|e| db.err(e))? {
            let (index, value) = item.map_err(|e| db.err(e))?;
            let what = format!("log entry {}", index.value());
            entries.push(db.decode(&what, value.value())?);
        }
        Ok(entries)
    }

    fn last_entry(&self) -> Result<Option<C::Entry>, DurableError> {
        let db = &self.db;
        let txn = db.read()?;
        let table = match txn.open_table(LOG) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db.err(e)),
        };
        match table.last().map_err(|e| db.err(e))? {
            Some((index, value)) => {
                let what = format!("log entry {}", index.value());
                db.decode(&what, value.value()).map(Some)
            }
            None => Ok(None),
        }
    }
}

impl<C> RaftLogReader<C> for DurableLogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + fmt::Debug + Send>(
        &mut self,
        range: RB,
    ) -> StoreResult<Vec<C::Entry>, C> {
        let range = (bound(range.start_bound()), bound(range.end_bound()));
        let store = self.clone();
        blocking(move || store.entries(range))
            .await
            .map_err(|e| StorageIOError::read_logs(&e).into())
    }
}

impl<C> RaftLogStorage<C> for DurableLogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StoreResult<LogState<C>, C> {
        let store = self.clone();
        blocking(move || {
            let last_purged: Option<LogId<C::NodeId>> = read_meta(&store.db, LAST_PURGED)?;
            let last = store.last_entry()?.map(|e| e.get_log_id().clone());
            Ok(LogState {
                last_log_id: last.or_else(|| last_purged.clone()),
                last_purged_log_id: last_purged,
            })
        })
        .await
        .map_err(|e| StorageIOError::read_logs(&e).into())
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<C::NodeId>) -> StoreResult<(), C> {
        let db = self.db.clone();
        let vote = vote.clone();
        blocking(move || write_meta(&db, VOTE, &vote, Durability::Immediate))
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> StoreResult<Option<Vote<C::NodeId>>, C> {
        let db = self.db.clone();
        blocking(move || read_meta(&db, VOTE))
            .await
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<C::NodeId>>) -> StoreResult<(), C> {
        let db = self.db.clone();
        blocking(move || write_meta(&db, COMMITTED, &committed, Durability::Eventual))
            .await
            .map_err(|e| StorageIOError::write(&e).into())
    }

    async fn read_committed(&mut self) -> StoreResult<Option<LogId<C::NodeId>>, C> {
        let db = self.db.clone();
        blocking(move || Ok(read_meta::<Option<LogId<C::NodeId>>>(&db, COMMITTED)?.flatten()))
            .await
            .map_err(|e| StorageIOError::read(&e).into())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> StoreResult<(), C>
    where
        I: IntoIterator<Item = C::Entry> + Send,
        I::IntoIter: Send,
    {
        let db = self.db.clone();
        let bytes = self.bytes.clone();
        let entries: Vec<C::Entry> = entries.into_iter().collect();
        let written = blocking(move || {
            let txn = db.write(Durability::Immediate)?;
            let mut added = 0u64;
            {
                let mut table = txn.open_table(LOG).map_err(|e| db.err(e))?;
                for entry in &entries {
                    let index = entry.get_log_id().index;
                    let value = db.encode(&format!("log entry {index}"), entry)?;
                    added += value.len() as u64;
                    if let Some(old) = table
                        .insert(index, value.as_slice())
                        .map_err(|e| db.err(e))?
                    {
                        added = added.saturating_sub(old.value().len() as u64);
                    }
                }
            }
            txn.commit().map_err(|e| db.err(e))?;
            bytes.fetch_add(added, Ordering::Relaxed);
            Ok(())
        })
        .await;
        match written {
            Ok(()) => {
                // On disk: openraft may now answer the AppendEntries that brought them.
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(&e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<C::NodeId>) -> StoreResult<(), C> {
        let db = self.db.clone();
        let bytes = self.bytes.clone();
        blocking(move || {
            let txn = db.write(Durability::Immediate)?;
            let removed = remove_range(&db, &txn, log_id.index..)?;
            txn.commit().map_err(|e| db.err(e))?;
            subtract(&bytes, removed);
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<C::NodeId>) -> StoreResult<(), C> {
        let db = self.db.clone();
        let bytes = self.bytes.clone();
        blocking(move || {
            let last_purged = db.encode(LAST_PURGED, &log_id)?;
            let txn = db.write(Durability::Eventual)?;
            let removed = remove_range(&db, &txn, ..=log_id.index)?;
            {
                let mut meta = txn.open_table(META).map_err(|e| db.err(e))?;
                meta.insert(LAST_PURGED, last_purged.as_slice())
                    .map_err(|e| db.err(e))?;
            }
            txn.commit().map_err(|e| db.err(e))?;
            subtract(&bytes, removed);
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

/// Removes the entries in `range`; returns their encoded size.
fn remove_range(
    db: &Db,
    txn: &redb::WriteTransaction,
    range: impl RangeBounds<u64>,
) -> Result<u64, DurableError> {
    let mut table = txn.open_table(LOG).map_err(|e| db.err(e))?;
    let mut removed = 0u64;
    table
        .retain_in(range, |_, value| {
            removed += value.len() as u64;
            false
        })
        .map_err(|e| db.err(e))?;
    Ok(removed)
}

/// Takes `removed` off the byte count, never below zero.
fn subtract(bytes: &AtomicU64, removed: u64) {
    let _ = bytes.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
        Some(b.saturating_sub(removed))
    });
}
