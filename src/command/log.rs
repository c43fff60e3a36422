//! Replicated log entries.

use std::time::SystemTime;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// What a log entry holds (hashicorp/raft's `LogType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum LogType {
    /// A command for the state machine.
    Command,
    /// A no-op, written by a new leader to commit entries of earlier terms.
    Noop,
    /// A barrier: applied once every earlier entry is applied.
    Barrier,
    /// A cluster membership configuration.
    Configuration,
}

/// One replicated log entry (hashicorp/raft's `Log`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Log {
    /// Position in the log.
    pub index: u64,
    /// Election term in which the entry was created.
    pub term: u64,
    /// What the entry holds.
    pub log_type: LogType,
    /// The payload, opaque to the transport.
    pub data: Bytes,
    /// Extra metadata for the engine or application, opaque to the transport.
    pub extensions: Bytes,
    /// When the leader appended the entry, if it recorded that.
    pub appended_at: Option<SystemTime>,
}

impl Log {
    /// A [`LogType::Command`] entry with `data` and no extensions.
    pub fn command(index: u64, term: u64, data: impl Into<Bytes>) -> Self {
        Self {
            index,
            term,
            log_type: LogType::Command,
            data: data.into(),
            extensions: Bytes::new(),
            appended_at: None,
        }
    }
}
