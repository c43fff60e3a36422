//! Durable storage for openraft: the vote, the log, the committed log id, a key-value state
//! machine and its snapshots in a data directory, crash-safe, on the embedded database
//! [redb](https://docs.rs/redb/2) (pure Rust, ACID, no server).
//!
//! A data directory holds:
//!
//! | file | what |
//! | --- | --- |
//! | `log.redb` | the log entries, the vote, the committed and last purged log ids, the owner (node id and cluster) and the "initialized" fact |
//! | `state.redb` | the key-value data, the last applied log id, the membership, which snapshot is current |
//! | `snapshots/snap-N.snap` | the current snapshot (see [`DurableStateMachine`] for the format) |
//!
//! The two files let appending to the log and applying to the state machine commit
//! independently. Two processes cannot open one directory: the second gets
//! [`DurableError::InUse`].
//!
//! # The durability contract
//!
//! - A vote ([`save_vote`]) is on disk (the commit fsynced) before openraft answers the
//!   RequestVote that asked for it, so a node that crashes and restarts never votes twice in
//!   a term.
//! - Appended entries are on disk before the store reports them flushed ([`append`]'s
//!   callback), which is what openraft waits for before answering an AppendEntries, or
//!   before the leader counts its own copy towards a commit: an acknowledged write is on
//!   the disks of a majority. A truncation is on disk before it returns.
//! - The committed log id, purges and applied entries are written to the file at once (they
//!   survive the process being killed) but fsynced later. After a power cut they may be
//!   older than before the cut; openraft then re-applies committed entries from the log.
//!   Before a snapshot is recorded (and the log purged behind it), one fsync makes every
//!   earlier apply durable.
//! - A snapshot file is fsynced, and renamed into place with the directory fsynced, before
//!   the database names it as current.
//!
//! A process killed at any point (SIGKILL included) restarts with all of the above; redb
//! checks and repairs its files on the next open after an unclean stop (a scan of the file:
//! fast for the data sizes of the demonstration, proportional to the file for large ones).
//!
//! ```no_run
//! use quicraft::openraft_adapter::durable::{DurableKvConfig, DurableStore};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = DurableStore::open("data/node-1", 1, "demo")?;
//! if store.is_fresh() {
//!     println!("nothing stored yet in {}", store.dir().display());
//! }
//! let log = store.log_store::<DurableKvConfig>();
//! let state_machine = store.state_machine();
//! // openraft::Raft::new(1, config, network, log, state_machine.clone()).await?
//! # let _ = (log, state_machine); Ok(()) }
//! ```
//!
//! [`save_vote`]: openraft::storage::RaftLogStorage::save_vote
//! [`append`]: openraft::storage::RaftLogStorage::append

mod db;
mod log;
mod policy;
mod state;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::Durability;

pub use db::DurableError;
pub use log::DurableLogStore;
pub use policy::{SnapshotPolicy, run_snapshot_policy};
pub use state::DurableStateMachine;

use crate::openraft_adapter::mem::{KvRequest, KvResponse};

openraft::declare_raft_types!(
    /// The type config of the durable key-value store: [`KvRequest`] in, [`KvResponse`]
    /// out, `u64` node ids, [`BasicNode`](openraft::BasicNode) nodes, tokio; snapshots are
    /// files ([`tokio::fs::File`]) in the data directory.
    pub DurableKvConfig:
        D = KvRequest,
        R = KvResponse,
        SnapshotData = tokio::fs::File,
);

/// Who a data directory belongs to, written when it is created.
const OWNER: &str = "owner";
/// Set once this node initialized a cluster: it never does again.
const INITIALIZED: &str = "initialized";

/// A node's data directory, opened: hands out the log store and the state machine that
/// openraft runs on (see the [module documentation](self) for the files and the
/// durability contract).
#[derive(Debug)]
pub struct DurableStore {
    dir: PathBuf,
    log: Arc<db::Db>,
    state_machine: DurableStateMachine,
    log_bytes: Arc<std::sync::atomic::AtomicU64>,
    fresh: bool,
}

impl DurableStore {
    /// Opens the data directory `dir` of node `node_id` in cluster `cluster`, creating it if
    /// missing. Refuses a directory created for another node or cluster
    /// ([`DurableError::WrongOwner`]) or held by another process ([`DurableError::InUse`]).
    ///
    /// Blocking (file system, and redb's check of its files after an unclean stop): call it
    /// before starting the node, or from `spawn_blocking`.
    pub fn open(
        dir: impl AsRef<Path>,
        node_id: impl ToString,
        cluster: &str,
    ) -> Result<Self, DurableError> {
        let dir = dir.as_ref().to_owned();
        fs::create_dir_all(&dir).map_err(|e| DurableError::io(&dir, e))?;
        let log = Arc::new(db::Db::open(dir.join("log.redb"))?);
        let node = node_id.to_string();
        match log::read_meta::<(String, String)>(&log, OWNER)? {
            Some((found_node, found_cluster)) => {
                if found_node != node || found_cluster != cluster {
                    return Err(DurableError::WrongOwner {
                        dir,
                        found_node,
                        found_cluster,
                        node,
                        cluster: cluster.to_owned(),
                    });
                }
            }
            None => log::write_meta(
                &log,
                OWNER,
                &(node, cluster.to_owned()),
                Durability::Immediate,
            )?,
        }
        let state = Arc::new(db::Db::open(dir.join("state.redb"))?);
        let state_machine = DurableStateMachine::open(state, dir.join("snapshots"))?;
        let vote: Option<openraft::Vote<u64>> = log::read_meta(&log, log::VOTE)?;
        let purged: Option<openraft::LogId<u64>> = log::read_meta(&log, log::LAST_PURGED)?;
        let fresh = vote.is_none()
            && purged.is_none()
            && log::log_is_empty(&log)?
            && state_machine.last_applied()?.is_none()
            && !log::read_meta::<bool>(&log, INITIALIZED)?.unwrap_or(false);
        let log_bytes = Arc::new(std::sync::atomic::AtomicU64::new(log::log_bytes(&log)?));
        Ok(Self {
            dir,
            log,
            state_machine,
            log_bytes,
            fresh,
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// True when the directory held no Raft state when it was opened: no vote, no log entry,
    /// nothing applied, never initialized. A node whose data is fresh and that was a member
    /// of a cluster has lost its data (see `serve_raft_guarded` in the adapter).
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// True once [`set_initialized`](Self::set_initialized) was called on this directory.
    pub fn is_initialized(&self) -> Result<bool, DurableError> {
        Ok(log::read_meta::<bool>(&self.log, INITIALIZED)?.unwrap_or(false))
    }

    /// Records, durably, that this node initialized its cluster: it must never do it again
    /// (a second initialization would start a new, empty history).
    pub fn set_initialized(&self) -> Result<(), DurableError> {
        log::write_meta(&self.log, INITIALIZED, &true, Durability::Immediate)
    }

    /// The log store for openraft (clones share the database).
    pub fn log_store<C>(&self) -> DurableLogStore<C>
    where
        C: openraft::RaftTypeConfig,
    {
        DurableLogStore::new(self.log.clone(), self.log_bytes.clone())
    }

    /// The state machine for openraft; keep a clone to read keys.
    pub fn state_machine(&self) -> DurableStateMachine {
        self.state_machine.clone()
    }
}
