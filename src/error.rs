//! The errors a [`Transport`](crate::Transport) returns to a Raft engine.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::command::{RpcKind, ServerAddress};
use crate::tls::TlsError;

/// Why an RPC failed, typed so an engine can choose: back off ([`Error::Unreachable`]), retry
/// ([`Error::ConnectionLost`], [`Error::Timeout`]), or give up ([`Error::Shutdown`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// This transport was closed; no further RPC will be sent or received.
    #[error("transport is shut down")]
    Shutdown,
    /// The pipeline was closed, by its owner or because it failed earlier.
    #[error("append pipeline is closed")]
    PipelineClosed,
    /// Pipelining is turned off (`max_in_flight` of 1); send appends one at a time.
    #[error("pipeline replication is not supported (max in flight is 1)")]
    PipelineNotSupported,
    /// The peer could not be reached at all: back off before trying again.
    #[error("peer {peer} is unreachable: {reason}")]
    Unreachable {
        /// The address that was tried.
        peer: ServerAddress,
        /// What went wrong.
        reason: String,
    },
    /// The connection failed while the RPC was under way; a new attempt may succeed at once.
    #[error("connection to {peer} was lost: {reason}")]
    ConnectionLost {
        /// The peer's address.
        peer: ServerAddress,
        /// What went wrong, in words.
        reason: String,
        /// The failure underneath, when there is one: quinn's connection, read or write error,
        /// or the error that broke a pipeline (shared by the appends it failed).
        #[source]
        source: Option<Cause>,
    },
    /// No answer came in time.
    #[error("{rpc} timed out after {after:?}")]
    Timeout {
        /// The RPC that timed out.
        rpc: RpcKind,
        /// The deadline that passed.
        after: Duration,
    },
    /// The peer's handler answered with an error.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// A certificate or identity check failed, on either side of the connection.
    #[error("authentication failed: {0}")]
    Authentication(String),
    /// The peer sent something the protocol does not allow (or, for a request this node
    /// could not encode, this node would have).
    #[error("protocol violation: {reason}")]
    Protocol {
        /// What was wrong, in words.
        reason: String,
        /// The failure underneath, when there is one: the codec's error, for instance.
        #[source]
        source: Option<Cause>,
    },
    /// A snapshot's data did not match its declared size.
    #[error("snapshot data has {actual} bytes but the request declared {declared}")]
    SnapshotSizeMismatch {
        /// `InstallSnapshotRequest::size`.
        declared: u64,
        /// How many bytes the source gave before it ended.
        actual: u64,
    },
    /// The request exceeds one of the protocol's limits and was not sent (nothing reached the
    /// peer, and no connection was dialled for it). Sending it again will fail the same way:
    /// split it (fewer entries per AppendEntries) or raise the limit where it is configurable.
    #[error("{rpc} not sent: {actual} {limit} exceeds the limit of {max}")]
    LimitExceeded {
        /// The request that was refused.
        rpc: RpcKind,
        /// Which limit.
        limit: Limit,
        /// The limit's value.
        max: u64,
        /// The request's value.
        actual: u64,
    },
    /// The configuration given to the transport is unusable.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// A local I/O error, such as reading the snapshot source.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// The failure kept under an error, returned by `source()`: quinn's error, the codec's, or the
/// error that broke a pipeline (for every append it failed).
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `error` as a [`Cause`].
pub(crate) fn cause(error: impl std::error::Error + Send + Sync + 'static) -> Cause {
    Box::new(error)
}

/// One failure shared as the cause of several errors (the appends a broken pipeline fails):
/// displays as it, and its `source()` is it.
#[derive(Debug, Clone)]
pub(crate) struct Shared(pub(crate) std::sync::Arc<Error>);

impl fmt::Display for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Shared {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

impl Error {
    /// [`Error::ConnectionLost`] with no cause underneath.
    pub(crate) fn lost(peer: &ServerAddress, reason: impl Into<String>) -> Self {
        Self::ConnectionLost {
            peer: peer.clone(),
            reason: reason.into(),
            source: None,
        }
    }

    /// [`Error::ConnectionLost`] because of `cause`.
    pub(crate) fn lost_by(
        peer: &ServerAddress,
        reason: impl Into<String>,
        cause: impl Into<Cause>,
    ) -> Self {
        Self::ConnectionLost {
            peer: peer.clone(),
            reason: reason.into(),
            source: Some(cause.into()),
        }
    }

    /// [`Error::Protocol`] with no cause underneath.
    pub(crate) fn protocol(reason: impl Into<String>) -> Self {
        Self::Protocol {
            reason: reason.into(),
            source: None,
        }
    }

    /// [`Error::Protocol`] because of `cause`.
    pub(crate) fn protocol_by(reason: impl Into<String>, cause: impl Into<Cause>) -> Self {
        Self::Protocol {
            reason: reason.into(),
            source: Some(cause.into()),
        }
    }

    /// True for errors after which the caller should back off before calling this peer again.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }
}

/// Why a configuration is unusable ([`Error::Config`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The certificate, key, roots or revocation lists cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A QUIC setting quinn refuses.
    #[error("{setting}: {source}")]
    Quic {
        /// The setting, with its value.
        setting: String,
        /// quinn's reason.
        #[source]
        source: quinn::ConfigError,
    },
    /// Settings out of range or contradicting each other, or no runtime to run in.
    #[error("{0}")]
    Invalid(String),
}

/// A limit a request must keep to, named by [`Error::LimitExceeded`]. Both transports enforce
/// the same limits, before anything is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Limit {
    /// [`MAX_ENTRIES_PER_APPEND`](crate::MAX_ENTRIES_PER_APPEND) log entries in one
    /// AppendEntries.
    EntriesPerAppend,
    /// The maximum message size: bytes of a request's encoded body
    /// ([`QuicConfig::max_message_size`](crate::QuicConfig::max_message_size),
    /// [`InmemConfig::max_message_size`](crate::InmemConfig::max_message_size); 16 MiB by
    /// default).
    MessageSize,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::EntriesPerAppend => "log entries per AppendEntries",
            Self::MessageSize => "bytes of encoded message",
        })
    }
}

/// A code that classifies a [`RemoteError`]. Any `u32` may be sent; the constants are the
/// codes quicraft itself uses.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    /// The receiving handler rejected the request (the usual code for an engine's error).
    pub const HANDLER: Self = Self(1);
    /// The receiver dropped the RPC without answering it.
    pub const NO_RESPONSE: Self = Self(2);
    /// The receiver is shutting down or cannot take more work.
    pub const UNAVAILABLE: Self = Self(3);
    /// The receiver's handler answered with a response of the wrong kind.
    pub const WRONG_RESPONSE: Self = Self(4);
    /// The request's header does not name the identity the sender proved.
    pub const IDENTITY_MISMATCH: Self = Self(5);
    /// The request broke the protocol (unknown kind, oversize, malformed).
    pub const BAD_REQUEST: Self = Self(6);
    /// A resumed snapshot names no transfer the receiver holds: it never had it, its grace
    /// period passed, or it already ended (`docs/PROTOCOL.md` §8.6).
    pub const TRANSFER_UNKNOWN: Self = Self(7);
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match *self {
            Self::HANDLER => "HANDLER",
            Self::NO_RESPONSE => "NO_RESPONSE",
            Self::UNAVAILABLE => "UNAVAILABLE",
            Self::WRONG_RESPONSE => "WRONG_RESPONSE",
            Self::IDENTITY_MISMATCH => "IDENTITY_MISMATCH",
            Self::BAD_REQUEST => "BAD_REQUEST",
            Self::TRANSFER_UNKNOWN => "TRANSFER_UNKNOWN",
            _ => return write!(f, "ErrorCode({})", self.0),
        };
        f.write_str(name)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// An error answered by the peer instead of a response: a code, a message for people, and
/// optionally details for programs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("remote error {code}: {}", crate::sanitize::untrusted(.message))]
#[non_exhaustive]
pub struct RemoteError {
    /// What kind of failure.
    pub code: ErrorCode,
    /// Human-readable detail from the peer.
    pub message: String,
    /// Machine-readable detail, opaque to the transport: what it holds is defined by the
    /// `code` (for the openraft adapter's `OPENRAFT_ERROR`, openraft's error,
    /// postcard-encoded). `None` for the codes quicraft itself sends. On the wire since
    /// protocol version 2 (`docs/PROTOCOL.md` §6.6).
    pub details: Option<Bytes>,
}

impl RemoteError {
    /// An error with `code` and `message`, without details.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: None,
        }
    }

    /// The same error carrying `details` ([`RemoteError::details`]).
    pub fn with_details(mut self, details: impl Into<Bytes>) -> Self {
        self.details = Some(details.into());
        self
    }

    /// A handler's rejection ([`ErrorCode::HANDLER`]).
    pub fn handler(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::HANDLER, message)
    }
}
