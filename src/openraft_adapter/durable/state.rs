//! The key-value state machine in `state.redb`, and its snapshots as files streamed out of
//! and into it.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use redb::{Durability, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use super::DurableKvConfig;
use super::db::{Db, DurableError, blocking};
use crate::openraft_adapter::mem::{KvRequest, KvResponse};

/// The data: key to value.
const KV: TableDefinition<'_, &str, &str> = TableDefinition::new("kv");
/// The state machine's own records: last applied log id, membership, current snapshot.
const SM: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("sm");

const LAST_APPLIED: &str = "last_applied";
const MEMBERSHIP: &str = "membership";
const SNAPSHOT: &str = "snapshot";

/// First bytes of a snapshot file (format version 1).
const MAGIC: &[u8; 8] = b"QRKVSNP1";
/// Marks the end of the records; the record count follows it.
const END: u32 = u32::MAX;
/// Longest key or value a snapshot may hold: checked before anything is allocated.
const MAX_FIELD: u32 = 64 * 1024 * 1024;

/// The snapshot a node has, as recorded in the database: its meta and its file in the
/// data directory's `snapshots/`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct CurrentSnapshot {
    meta: SnapshotMeta<u64, BasicNode>,
    file: String,
}

type Sm = DurableKvConfig;
type SmError = StorageError<u64>;

/// The key-value state machine on redb: applies [`KvRequest`]s to the `kv` table of the
/// node's `state.redb` and keeps snapshots as files in its `snapshots/` directory.
///
/// - Applying: one transaction per batch of entries, with the data, the last applied log id
///   and the membership together; written without waiting for the disk (a node killed
///   keeps it; after a power cut openraft re-applies the committed entries from the log).
/// - Building a snapshot: the table is read in one read transaction (a consistent view while
///   applying goes on) and written record by record to a file, fsynced, then recorded with
///   an fsync (which also makes every earlier apply durable, before openraft purges the log
///   behind the snapshot). The map is never held in memory.
/// - Receiving a snapshot: the data streams into a file; installing it reads that file record
///   by record into a fresh table, in one transaction with the new last applied log id.
///
/// Snapshot file format: the 8 bytes `QRKVSNP1`, then per key `u32` little-endian length,
/// key bytes, `u32` length, value bytes; then `u32::MAX` and the `u64` record count. Lengths
/// are checked (at most 64 MiB) before allocating.
///
/// Clones share the database: the application keeps one to read keys while openraft owns
/// another.
#[derive(Clone)]
pub struct DurableStateMachine {
    db: Arc<Db>,
    snapshots: PathBuf,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Numbers snapshot files (local names: a leader's snapshot id is not a safe file name).
    seq: AtomicU64,
    built: AtomicU64,
    installed: AtomicU64,
    /// Files being received, by inode, so that installing one can rename it.
    incoming: Mutex<HashMap<u64, PathBuf>>,
}

impl fmt::Debug for DurableStateMachine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DurableStateMachine")
            .field("path", &self.db.path)
            .finish_non_exhaustive()
    }
}

fn open_table_err(db: &Db, e: redb::TableError) -> DurableError {
    db.err(e)
}

impl DurableStateMachine {
    /// Opens the state machine on `db`, its snapshots in `snapshots` (created if missing);
    /// removes files left by an interrupted snapshot.
    pub(super) fn open(db: Arc<Db>, snapshots: PathBuf) -> Result<Self, DurableError> {
        fs::create_dir_all(&snapshots).map_err(|e| DurableError::io(&snapshots, e))?;
        let this = Self {
            db,
            snapshots,
            shared: Arc::default(),
        };
        let current = this.current()?.map(|c| c.file);
        let mut seq = 0;
        let listing =
            fs::read_dir(&this.snapshots).map_err(|e| DurableError::io(&this.snapshots, e))?;
        for item in listing {
            let item = item.map_err(|e| DurableError::io(&this.snapshots, e))?;
            let name = item.file_name().to_string_lossy().into_owned();
            if let Some(n) = name
                .strip_prefix("snap-")
                .and_then(|rest| rest.split('.').next())
                .and_then(|n| n.parse::<u64>().ok())
            {
                seq = seq.max(n);
            }
            if Some(&name) != current.as_ref() {
                let path = item.path();
                fs::remove_file(&path).map_err(|e| DurableError::io(&path, e))?;
                tracing::debug!(file = %path.display(), "removed a stale snapshot file");
            }
        }
        this.shared.seq.store(seq, Ordering::Relaxed);
        Ok(this)
    }

    fn next_file(&self, suffix: &str) -> (String, PathBuf) {
        let n = self.shared.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let name = format!("snap-{n}.{suffix}");
        let path = self.snapshots.join(&name);
        (name, path)
    }

    fn sm_record<T: serde::de::DeserializeOwned>(
        &self,
        txn: &redb::ReadTransaction,
        key: &str,
    ) -> Result<Option<T>, DurableError> {
        let db = &self.db;
        let table = match txn.open_table(SM) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(open_table_err(db, e)),
        };
        match table.get(key).map_err(|e| db.err(e))? {
            Some(bytes) => db.decode(key, bytes.value()).map(Some),
            None => Ok(None),
        }
    }

    fn current(&self) -> Result<Option<CurrentSnapshot>, DurableError> {
        let txn = self.db.read()?;
        self.sm_record(&txn, SNAPSHOT)
    }

    /// The value of `key`, as of the last applied entry.
    pub fn get(&self, key: &str) -> Result<Option<String>, DurableError> {
        let db = &self.db;
        let txn = db.read()?;
        let table = match txn.open_table(KV) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db.err(e)),
        };
        Ok(table
            .get(key)
            .map_err(|e| db.err(e))?
            .map(|v| v.value().to_owned()))
    }

    /// Number of keys.
    pub fn len(&self) -> Result<u64, DurableError> {
        let db = &self.db;
        let txn = db.read()?;
        match txn.open_table(KV) {
            Ok(table) => table.len().map_err(|e| db.err(e)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(db.err(e)),
        }
    }

    /// True when the map holds no key.
    pub fn is_empty(&self) -> Result<bool, DurableError> {
        Ok(self.len()? == 0)
    }

    /// The last log id applied to the map.
    pub fn last_applied(&self) -> Result<Option<LogId<u64>>, DurableError> {
        let txn = self.db.read()?;
        Ok(self
            .sm_record::<Option<LogId<u64>>>(&txn, LAST_APPLIED)?
            .flatten())
    }

    /// How many snapshots this state machine built since it was opened.
    pub fn snapshots_built(&self) -> u64 {
        self.shared.built.load(Ordering::Relaxed)
    }

    /// How many snapshots received from a leader it installed since it was opened.
    pub fn snapshots_installed(&self) -> u64 {
        self.shared.installed.load(Ordering::Relaxed)
    }

    /// Size in bytes of the current snapshot's file, if there is one.
    pub fn snapshot_size(&self) -> Result<Option<u64>, DurableError> {
        match self.current()? {
            Some(current) => {
                let path = self.snapshots.join(&current.file);
                let meta = fs::metadata(&path).map_err(|e| DurableError::io(&path, e))?;
                Ok(Some(meta.len()))
            }
            None => Ok(None),
        }
    }

    /// Writes the map, as of one read transaction, to a new snapshot file and records it.
    fn build(&self) -> Result<(SnapshotMeta<u64, BasicNode>, File), DurableError> {
        let db = &self.db;
        let txn = db.read()?;
        let last_applied = self
            .sm_record::<Option<LogId<u64>>>(&txn, LAST_APPLIED)?
            .flatten();
        let membership: StoredMembership<u64, BasicNode> =
            self.sm_record(&txn, MEMBERSHIP)?.unwrap_or_default();
        let (name, path) = self.next_file("snap");
        let tmp = path.with_extension("tmp");
        {
            let file = File::create(&tmp).map_err(|e| DurableError::io(&tmp, e))?;
            let mut out = BufWriter::with_capacity(256 * 1024, file);
            let io_err = |e| DurableError::io(&tmp, e);
            out.write_all(MAGIC).map_err(io_err)?;
            let mut count = 0u64;
            match txn.open_table(KV) {
                Ok(table) => {
                    for item in table.iter().map_err(|e| db.err(e))? {
                        let (key, value) = item.map_err(|e| db.err(e))?;
                        write_field(&mut out, key.value().as_bytes()).map_err(io_err)?;
                        write_field(&mut out, value.value().as_bytes()).map_err(io_err)?;
                        count += 1;
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(db.err(e)),
            }
            out.write_all(&END.to_le_bytes()).map_err(io_err)?;
            out.write_all(&count.to_le_bytes()).map_err(io_err)?;
            let file = out.into_inner().map_err(|e| io_err(e.into_error()))?;
            file.sync_all().map_err(io_err)?;
        }
        drop(txn);
        fs::rename(&tmp, &path).map_err(|e| DurableError::io(&path, e))?;
        sync_dir(&self.snapshots)?;
        let n = self.shared.built.fetch_add(1, Ordering::Relaxed) + 1;
        let snapshot_id = match &last_applied {
            Some(id) => format!("{}-{}-{n}", id.leader_id.term, id.index),
            None => format!("empty-{n}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        self.record(meta.clone(), name, None)?;
        let file = File::open(&path).map_err(|e| DurableError::io(&path, e))?;
        Ok((meta, file))
    }

    /// Records `meta` in `file` as the current snapshot (with an fsync), and removes the file
    /// of the one it replaces. `txn`, when given, carries an install and is committed here.
    fn record(
        &self,
        meta: SnapshotMeta<u64, BasicNode>,
        file: String,
        txn: Option<redb::WriteTransaction>,
    ) -> Result<(), DurableError> {
        let db = &self.db;
        let previous = self.current()?.map(|c| c.file);
        let current = CurrentSnapshot {
            meta,
            file: file.clone(),
        };
        let bytes = db.encode(SNAPSHOT, &current)?;
        let txn = match txn {
            Some(txn) => txn,
            None => db.write(Durability::Immediate)?,
        };
        {
            let mut table = txn.open_table(SM).map_err(|e| db.err(e))?;
            table
                .insert(SNAPSHOT, bytes.as_slice())
                .map_err(|e| db.err(e))?;
        }
        txn.commit().map_err(|e| db.err(e))?;
        if let Some(previous) = previous.filter(|p| *p != file) {
            let path = self.snapshots.join(previous);
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(file = %path.display(), error = %e, "cannot remove an old snapshot file");
            }
        }
        Ok(())
    }

    /// Reads the snapshot file `file` (at `path`) into a fresh map, with `meta` as the applied
    /// state, and makes it the current snapshot.
    fn install(
        &self,
        meta: &SnapshotMeta<u64, BasicNode>,
        mut file: File,
        path: PathBuf,
    ) -> Result<(), DurableError> {
        let db = &self.db;
        let io_err = |e| DurableError::io(&path, e);
        file.sync_all().map_err(io_err)?;
        file.seek(SeekFrom::Start(0)).map_err(io_err)?;
        let mut input = BufReader::with_capacity(256 * 1024, file);
        let bad = |reason: String| DurableError::BadSnapshot {
            path: path.clone(),
            reason,
        };
        let mut magic = [0u8; 8];
        input
            .read_exact(&mut magic)
            .map_err(|e| bad(format!("no header: {e}")))?;
        if &magic != MAGIC {
            return Err(bad("not a quicraft key-value snapshot".into()));
        }
        let txn = db.write(Durability::Immediate)?;
        txn.delete_table(KV).map_err(|e| db.err(e))?;
        {
            let mut table = txn.open_table(KV).map_err(|e| db.err(e))?;
            let mut count = 0u64;
            loop {
                let Some(key) = read_field(&mut input).map_err(&bad)? else {
                    let mut n = [0u8; 8];
                    input
                        .read_exact(&mut n)
                        .map_err(|e| bad(format!("truncated trailer: {e}")))?;
                    if u64::from_le_bytes(n) != count {
                        return Err(bad(format!(
                            "{count} records, the trailer says {}",
                            u64::from_le_bytes(n)
                        )));
                    }
                    break;
                };
                let value = read_field(&mut input)
                    .map_err(&bad)?
                    .ok_or_else(|| bad("a key without a value".into()))?;
                let key = String::from_utf8(key).map_err(|_| bad("a key is not UTF-8".into()))?;
                let value =
                    String::from_utf8(value).map_err(|_| bad("a value is not UTF-8".into()))?;
                table
                    .insert(key.as_str(), value.as_str())
                    .map_err(|e| db.err(e))?;
                count += 1;
            }
            let mut sm = txn.open_table(SM).map_err(|e| db.err(e))?;
            let applied = db.encode(LAST_APPLIED, &meta.last_log_id)?;
            sm.insert(LAST_APPLIED, applied.as_slice())
                .map_err(|e| db.err(e))?;
            let membership = db.encode(MEMBERSHIP, &meta.last_membership)?;
            sm.insert(MEMBERSHIP, membership.as_slice())
                .map_err(|e| db.err(e))?;
        }
        drop(input);
        let (name, target) = self.next_file("snap");
        fs::rename(&path, &target).map_err(|e| DurableError::io(&target, e))?;
        sync_dir(&self.snapshots)?;
        self.record(meta.clone(), name, Some(txn))?;
        self.shared.installed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn apply_all(&self, entries: Vec<Entry<Sm>>) -> Result<Vec<KvResponse>, DurableError> {
        let db = &self.db;
        let txn = db.write(Durability::Eventual)?;
        let mut responses = Vec::with_capacity(entries.len());
        {
            let mut kv = txn.open_table(KV).map_err(|e| db.err(e))?;
            let mut sm = txn.open_table(SM).map_err(|e| db.err(e))?;
            let mut last = None;
            for entry in entries {
                last = Some(entry.log_id);
                let response = match entry.payload {
                    EntryPayload::Blank => KvResponse::default(),
                    EntryPayload::Normal(KvRequest::Put { key, value }) => KvResponse {
                        previous: kv
                            .insert(key.as_str(), value.as_str())
                            .map_err(|e| db.err(e))?
                            .map(|old| old.value().to_owned()),
                    },
                    EntryPayload::Membership(membership) => {
                        let stored = StoredMembership::new(Some(entry.log_id), membership);
                        let bytes = db.encode(MEMBERSHIP, &stored)?;
                        sm.insert(MEMBERSHIP, bytes.as_slice())
                            .map_err(|e| db.err(e))?;
                        KvResponse::default()
                    }
                };
                responses.push(response);
            }
            if let Some(last) = last {
                let bytes = db.encode(LAST_APPLIED, &Some(last))?;
                sm.insert(LAST_APPLIED, bytes.as_slice())
                    .map_err(|e| db.err(e))?;
            }
        }
        txn.commit().map_err(|e| db.err(e))?;
        Ok(responses)
    }
}

fn write_field(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len())
        .ok()
        .filter(|&l| l <= MAX_FIELD)
        .ok_or_else(|| io::Error::other("a key or value over 64 MiB"))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(bytes)
}

/// The next field, or `None` at the end marker.
fn read_field(input: &mut impl Read) -> Result<Option<Vec<u8>>, String> {
    let mut len = [0u8; 4];
    input
        .read_exact(&mut len)
        .map_err(|e| format!("truncated record: {e}"))?;
    let len = u32::from_le_bytes(len);
    if len == END {
        return Ok(None);
    }
    if len > MAX_FIELD {
        return Err(format!("a field of {len} bytes (at most {MAX_FIELD})"));
    }
    let mut bytes = vec![0u8; len as usize];
    input
        .read_exact(&mut bytes)
        .map_err(|e| format!("truncated record: {e}"))?;
    Ok(Some(bytes))
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), DurableError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| DurableError::io(dir, e))
}

fn read_error(e: &DurableError) -> SmError {
    StorageIOError::read_state_machine(e).into()
}

fn write_error(e: &DurableError) -> SmError {
    StorageIOError::write_state_machine(e).into()
}

impl RaftSnapshotBuilder<Sm> for DurableStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<Sm>, SmError> {
        let this = self.clone();
        let (meta, file) = blocking(move || this.build())
            .await
            .map_err(|e| SmError::from(StorageIOError::write_snapshot(None, &e)))?;
        tracing::debug!(snapshot = %meta.snapshot_id, "snapshot built");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        })
    }
}

impl RaftStateMachine<Sm> for DurableStateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), SmError> {
        let this = self.clone();
        blocking(move || {
            let txn = this.db.read()?;
            let applied = this
                .sm_record::<Option<LogId<u64>>>(&txn, LAST_APPLIED)?
                .flatten();
            let membership = this.sm_record(&txn, MEMBERSHIP)?.unwrap_or_default();
            Ok((applied, membership))
        })
        .await
        .map_err(|e| read_error(&e))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<KvResponse>, SmError>
    where
        I: IntoIterator<Item = Entry<Sm>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<Sm>> = entries.into_iter().collect();
        let this = self.clone();
        blocking(move || this.apply_all(entries))
            .await
            .map_err(|e| write_error(&e))
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, SmError> {
        let (_, path) = self.next_file("incoming");
        let this = self.clone();
        let file = blocking(move || {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| DurableError::io(&path, e))?;
            let inode = file
                .metadata()
                .map_err(|e| DurableError::io(&path, e))?
                .ino();
            this.shared
                .incoming
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(inode, path);
            Ok(file)
        })
        .await
        .map_err(|e| SmError::from(StorageIOError::write_snapshot(None, &e)))?;
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), SmError> {
        let signature = meta.signature();
        let file = snapshot.into_std().await;
        let this = self.clone();
        let meta = meta.clone();
        blocking(move || {
            let inode = file
                .metadata()
                .map_err(|e| DurableError::io(&this.snapshots, e))?
                .ino();
            let path = this
                .shared
                .incoming
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&inode)
                .ok_or_else(|| DurableError::BadSnapshot {
                    path: this.snapshots.clone(),
                    reason: "not a file this state machine handed out to receive a snapshot".into(),
                })?;
            this.install(&meta, file, path)
        })
        .await
        .map_err(|e| SmError::from(StorageIOError::write_snapshot(Some(signature), &e)))?;
        tracing::info!("installed a snapshot received from the leader");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<Sm>>, SmError> {
        let this = self.clone();
        let found = blocking(move || match this.current()? {
            Some(current) => {
                let path = this.snapshots.join(&current.file);
                let file = File::open(&path).map_err(|e| DurableError::io(&path, e))?;
                Ok(Some((current.meta, file)))
            }
            None => Ok(None),
        })
        .await
        .map_err(|e| SmError::from(StorageIOError::read_snapshot(None, &e)))?;
        Ok(found.map(|(meta, file)| Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        }))
    }
}
