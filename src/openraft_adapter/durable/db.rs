//! The redb files under a data directory, and the errors of opening and using them.

use std::io;
use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadTransaction, WriteTransaction};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Page cache of each database file: the log and the state are read mostly from their tail
/// and by whole-table scans (snapshots), so a small cache does; redb's default is 1 GiB.
const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Why a durable store could not be opened or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DurableError {
    /// The data directory (or a file in it) could not be created, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// Another process holds the database open: two nodes cannot share a data directory.
    #[error(
        "{path} is in use by another process: is a node already running on this data directory?"
    )]
    InUse {
        /// The database file.
        path: PathBuf,
    },
    /// The database refused an operation (a corrupt or unreadable file, a full disk...).
    #[error("database {path}: {source}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// redb's error.
        #[source]
        source: Box<redb::Error>,
    },
    /// A stored record does not decode: the file was written by something else, or is
    /// damaged.
    #[error("database {path}: record `{what}` does not decode: {source}")]
    Decode {
        /// The database file.
        path: PathBuf,
        /// Which record.
        what: String,
        /// The decoder's error.
        #[source]
        source: postcard::Error,
    },
    /// The data directory belongs to another node or cluster.
    #[error(
        "the data directory {dir} belongs to node {found_node} of cluster `{found_cluster}`, not to node {node} of `{cluster}`: give each node its own --data-dir"
    )]
    WrongOwner {
        /// The data directory.
        dir: PathBuf,
        /// The node id it was created for.
        found_node: String,
        /// The cluster it was created for.
        found_cluster: String,
        /// The node id that tried to open it.
        node: String,
        /// The cluster that tried to open it.
        cluster: String,
    },
    /// A snapshot's data does not follow the snapshot format.
    #[error("snapshot {path}: {reason}")]
    BadSnapshot {
        /// The snapshot file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl DurableError {
    pub(super) fn io(path: &Path, source: io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// One redb file and its path (for error messages).
#[derive(Debug)]
pub(super) struct Db {
    pub(super) db: Database,
    pub(super) path: PathBuf,
}

impl Db {
    /// Opens (or creates) the database at `path`.
    pub(super) fn open(path: PathBuf) -> Result<Self, DurableError> {
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create_with_file_format_v3(true)
            .create(&path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => {
                    DurableError::InUse { path: path.clone() }
                }
                other => DurableError::Database {
                    path: path.clone(),
                    source: Box::new(other.into()),
                },
            })?;
        Ok(Self { db, path })
    }

    /// Wraps a redb error with this file's path.
    pub(super) fn err(&self, e: impl Into<redb::Error>) -> DurableError {
        DurableError::Database {
            path: self.path.clone(),
            source: Box::new(e.into()),
        }
    }

    /// A write transaction with `durability`: `Immediate` returns from commit only once the
    /// data is on disk (fsync); `Eventual` once it is in the file (it survives the process
    /// being killed, not a power cut, until the next `Immediate` commit).
    pub(super) fn write(&self, durability: Durability) -> Result<WriteTransaction, DurableError> {
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        txn.set_durability(durability);
        Ok(txn)
    }

    /// A read transaction: a consistent view as of its start.
    pub(super) fn read(&self) -> Result<ReadTransaction, DurableError> {
        self.db.begin_read().map_err(|e| self.err(e))
    }

    pub(super) fn encode<T: Serialize>(
        &self,
        what: &str,
        value: &T,
    ) -> Result<Vec<u8>, DurableError> {
        postcard::to_stdvec(value).map_err(|source| DurableError::Decode {
            path: self.path.clone(),
            what: what.to_owned(),
            source,
        })
    }

    pub(super) fn decode<T: DeserializeOwned>(
        &self,
        what: &str,
        bytes: &[u8],
    ) -> Result<T, DurableError> {
        postcard::from_bytes(bytes).map_err(|source| DurableError::Decode {
            path: self.path.clone(),
            what: what.to_owned(),
            source,
        })
    }
}

/// Runs blocking database work (fsyncs included) off the async worker threads.
pub(super) async fn blocking<T, F>(work: F) -> Result<T, DurableError>
where
    F: FnOnce() -> Result<T, DurableError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(e) => Err(DurableError::Io {
            path: PathBuf::new(),
            source: io::Error::other(format!("storage task failed: {e}")),
        }),
    }
}
