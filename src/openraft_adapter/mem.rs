//! An in-memory Raft log and key-value state machine for openraft, for tests: nothing survives
//! a restart, so a node must never rejoin a cluster on it after a crash (Raft needs the vote
//! and the log to be durable). Real nodes use [`durable`](super::durable).
//!
//! This is the smallest complete storage openraft needs, written to be read:
//!
//! - [`MemLogStore`] keeps the log in a `BTreeMap` from index to entry, plus the vote and the
//!   committed log id ([`RaftLogStorage`]). It works for any type config whose entries clone.
//! - [`KvStateMachine`] applies [`KvRequest`]s to a `BTreeMap<String, String>` and builds
//!   snapshots of it as one in-memory buffer ([`RaftStateMachine`]); reading keys back is
//!   [`KvStateMachine::get`].
//! - [`KvTypeConfig`] ties them together: node ids are `u64`, nodes are
//!   [`BasicNode`](openraft::BasicNode)s (their `addr` is the quicraft address), snapshots are
//!   `Cursor<Vec<u8>>`.
//!
//! A node started on fresh stores is caught up by the leader, with a snapshot once the leader
//! has purged the entries it lacks.
//!
//! ```
//! use quicraft::openraft_adapter::mem::{KvStateMachine, MemLogStore};
//!
//! let log = MemLogStore::<quicraft::openraft_adapter::mem::KvTypeConfig>::default();
//! let state_machine = KvStateMachine::default();
//! assert_eq!(state_machine.get("k"), None);
//! # let _ = log;
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    Entry, EntryPayload, LogId, LogState, RaftLogId, RaftLogReader, RaftSnapshotBuilder,
    RaftTypeConfig, Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// The type config of the key-value store: [`KvRequest`] in, [`KvResponse`] out, `u64`
    /// node ids, [`BasicNode`](openraft::BasicNode) nodes, `Cursor<Vec<u8>>` snapshots, tokio.
    pub KvTypeConfig:
        D = KvRequest,
        R = KvResponse,
);

/// A write to the key-value store: what a client submits with `Raft::client_write`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvRequest {
    /// Sets `key` to `value`.
    Put {
        /// The key.
        key: String,
        /// Its new value.
        value: String,
    },
}

impl fmt::Display for KvRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Put { key, value } => write!(f, "put {key}={value}"),
        }
    }
}

/// The state machine's answer to a [`KvRequest`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvResponse {
    /// The key's value before the write, if it had one.
    pub previous: Option<String>,
}

/// Locks `mutex`, taking the data even if a panicking thread poisoned it: every critical
/// section below leaves the data consistent before anything that could panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------
// The log
// ---------------------------------------------------------------------------------------------

/// An in-memory Raft log: entries by index, the vote, the committed log id. Clones share the
/// same log (openraft reads it through a clone while appending through the original).
pub struct MemLogStore<C: RaftTypeConfig> {
    inner: Arc<Mutex<LogInner<C>>>,
}

struct LogInner<C: RaftTypeConfig> {
    /// Entries still in the log, by index.
    entries: BTreeMap<u64, C::Entry>,
    /// The last entry removed by compaction (it is in a snapshot).
    last_purged: Option<LogId<C::NodeId>>,
    vote: Option<Vote<C::NodeId>>,
    committed: Option<LogId<C::NodeId>>,
}

impl<C: RaftTypeConfig> Default for MemLogStore<C> {
    fn default() -> Self {
        Self {
            inner: Arc::new(Mutex::new(LogInner {
                entries: BTreeMap::new(),
                last_purged: None,
                vote: None,
                committed: None,
            })),
        }
    }
}

impl<C: RaftTypeConfig> Clone for MemLogStore<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<C: RaftTypeConfig> fmt::Debug for MemLogStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = lock(&self.inner);
        f.debug_struct("MemLogStore")
            .field("entries", &inner.entries.len())
            .field("last_purged", &inner.last_purged)
            .finish_non_exhaustive()
    }
}

impl<C: RaftTypeConfig> MemLogStore<C> {
    /// Number of entries in the log (not yet purged).
    pub fn len(&self) -> usize {
        lock(&self.inner).entries.len()
    }

    /// True when the log holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<C> RaftLogReader<C> for MemLogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Clone,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + fmt::Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, StorageError<C::NodeId>> {
        let inner = lock(&self.inner);
        Ok(inner
            .entries
            .range(range)
            .map(|(_, entry)| entry.clone())
            .collect())
    }
}

impl<C> RaftLogStorage<C> for MemLogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Clone,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<C::NodeId>> {
        let inner = lock(&self.inner);
        let last = inner
            .entries
            .values()
            .next_back()
            .map(|entry| entry.get_log_id().clone());
        Ok(LogState {
            last_purged_log_id: inner.last_purged.clone(),
            last_log_id: last.or_else(|| inner.last_purged.clone()),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        lock(&self.inner).vote = Some(vote.clone());
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<C::NodeId>>, StorageError<C::NodeId>> {
        Ok(lock(&self.inner).vote.clone())
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<C::NodeId>>,
    ) -> Result<(), StorageError<C::NodeId>> {
        lock(&self.inner).committed = committed;
        Ok(())
    }

    async fn read_committed(
        &mut self,
    ) -> Result<Option<LogId<C::NodeId>>, StorageError<C::NodeId>> {
        Ok(lock(&self.inner).committed.clone())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<C>,
    ) -> Result<(), StorageError<C::NodeId>>
    where
        I: IntoIterator<Item = C::Entry> + Send,
        I::IntoIter: Send,
    {
        {
            let mut inner = lock(&self.inner);
            for entry in entries {
                inner.entries.insert(entry.get_log_id().index, entry);
            }
        }
        // In memory, "flushed" is as soon as it is stored.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        // Removes the conflicting entry at `log_id.index` and everything after it.
        lock(&self.inner).entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        // Removes everything up to and including `log_id`: a snapshot covers it now.
        let mut inner = lock(&self.inner);
        let kept = inner.entries.split_off(&(log_id.index + 1));
        inner.entries = kept;
        inner.last_purged = Some(log_id);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The state machine
// ---------------------------------------------------------------------------------------------

/// The key-value state machine: applies [`KvRequest`]s to a map and snapshots it. Clones
/// share the same state, so the application keeps one to read keys while openraft owns another.
#[derive(Clone, Default)]
pub struct KvStateMachine {
    inner: Arc<Mutex<SmInner>>,
}

#[derive(Default)]
struct SmInner {
    /// The data: what clients read.
    data: BTreeMap<String, String>,
    /// The last entry applied to `data`.
    last_applied: Option<LogId<u64>>,
    /// The last membership applied.
    last_membership: StoredMembership<u64, openraft::BasicNode>,
    /// The latest snapshot, built here or received from a leader.
    snapshot: Option<StoredSnapshot>,
    /// Snapshots built so far (to give each a distinct id).
    snapshots_built: u64,
    /// Snapshots received from a leader and installed.
    snapshots_installed: u64,
}

/// A snapshot kept in memory: its meta and the encoded map.
#[derive(Clone)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, openraft::BasicNode>,
    data: Vec<u8>,
}

impl fmt::Debug for KvStateMachine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = lock(&self.inner);
        f.debug_struct("KvStateMachine")
            .field("keys", &inner.data.len())
            .field("last_applied", &inner.last_applied)
            .finish_non_exhaustive()
    }
}

impl KvStateMachine {
    /// The value of `key`, as of the last applied entry.
    pub fn get(&self, key: &str) -> Option<String> {
        lock(&self.inner).data.get(key).cloned()
    }

    /// A copy of the whole map.
    pub fn entries(&self) -> BTreeMap<String, String> {
        lock(&self.inner).data.clone()
    }

    /// The last log id applied to the map.
    pub fn last_applied(&self) -> Option<LogId<u64>> {
        lock(&self.inner).last_applied
    }

    /// How many snapshots received from a leader this state machine installed.
    pub fn snapshots_installed(&self) -> u64 {
        lock(&self.inner).snapshots_installed
    }

    /// Size in bytes of the latest snapshot (built here or installed), if there is one.
    pub fn snapshot_size(&self) -> Option<usize> {
        lock(&self.inner).snapshot.as_ref().map(|s| s.data.len())
    }

    /// How many snapshots this state machine built.
    pub fn snapshots_built(&self) -> u64 {
        lock(&self.inner).snapshots_built
    }

    fn snapshot_of(stored: StoredSnapshot) -> Snapshot<KvTypeConfig> {
        Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }
    }
}

type Sm = KvTypeConfig;
type SmError = StorageError<u64>;

impl RaftSnapshotBuilder<Sm> for KvStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<Sm>, SmError> {
        let mut inner = lock(&self.inner);
        let data =
            postcard::to_stdvec(&inner.data).map_err(|e| StorageIOError::read_state_machine(&e))?;
        inner.snapshots_built += 1;
        let snapshot_id = match &inner.last_applied {
            Some(id) => format!(
                "{}-{}-{}",
                id.leader_id.term, id.index, inner.snapshots_built
            ),
            None => format!("empty-{}", inner.snapshots_built),
        };
        let stored = StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: inner.last_applied,
                last_membership: inner.last_membership.clone(),
                snapshot_id,
            },
            data,
        };
        inner.snapshot = Some(stored.clone());
        Ok(Self::snapshot_of(stored))
    }
}

impl RaftStateMachine<Sm> for KvStateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<
        (
            Option<LogId<u64>>,
            StoredMembership<u64, openraft::BasicNode>,
        ),
        SmError,
    > {
        let inner = lock(&self.inner);
        Ok((inner.last_applied, inner.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<KvResponse>, SmError>
    where
        I: IntoIterator<Item = Entry<Sm>> + Send,
        I::IntoIter: Send,
    {
        let mut inner = lock(&self.inner);
        let mut responses = Vec::new();
        for entry in entries {
            inner.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => KvResponse::default(),
                EntryPayload::Normal(KvRequest::Put { key, value }) => KvResponse {
                    previous: inner.data.insert(key, value),
                },
                EntryPayload::Membership(membership) => {
                    inner.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                    KvResponse::default()
                }
            };
            responses.push(response);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SmError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SmError> {
        let bytes = snapshot.into_inner();
        let data: BTreeMap<String, String> = postcard::from_bytes(&bytes)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let mut inner = lock(&self.inner);
        inner.data = data;
        inner.last_applied = meta.last_log_id;
        inner.last_membership = meta.last_membership.clone();
        inner.snapshot = Some(StoredSnapshot {
            meta: meta.clone(),
            data: bytes,
        });
        inner.snapshots_installed += 1;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<Sm>>, SmError> {
        let stored = lock(&self.inner).snapshot.clone();
        Ok(stored.map(Self::snapshot_of))
    }
}
