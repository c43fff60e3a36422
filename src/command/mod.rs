//! Raft's RPC messages, with the fields of hashicorp/raft's `commands.go`.
//!
//! Every message derives serde; the wire codec encodes them with postcard. Payload bytes are
//! [`bytes::Bytes`], so entries can be shared without copying.

mod append;
mod header;
mod ids;
mod log;
mod snapshot;
mod timeout_now;
mod vote;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use append::{AppendEntriesRequest, AppendEntriesResponse, MAX_ENTRIES_PER_APPEND};
pub use header::{MAX_HEADER_ID_LEN, PROTOCOL_VERSION, RpcHeader};
pub use ids::{ServerAddress, ServerId};
pub(crate) use log::decoding_from;
pub use log::{Log, LogType};
pub use snapshot::{InstallSnapshotRequest, InstallSnapshotResponse};
pub use timeout_now::{TimeoutNowRequest, TimeoutNowResponse};
pub use vote::{
    RequestPreVoteRequest, RequestPreVoteResponse, RequestVoteRequest, RequestVoteResponse,
};

/// The kinds of RPC, for errors, logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RpcKind {
    /// [`AppendEntriesRequest`].
    AppendEntries,
    /// [`RequestVoteRequest`].
    RequestVote,
    /// [`RequestPreVoteRequest`].
    RequestPreVote,
    /// [`InstallSnapshotRequest`].
    InstallSnapshot,
    /// [`TimeoutNowRequest`].
    TimeoutNow,
}

impl fmt::Display for RpcKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::AppendEntries => "AppendEntries",
            Self::RequestVote => "RequestVote",
            Self::RequestPreVote => "RequestPreVote",
            Self::InstallSnapshot => "InstallSnapshot",
            Self::TimeoutNow => "TimeoutNow",
        })
    }
}

/// An incoming request, as a consumer sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Command {
    /// Log replication or a heartbeat.
    AppendEntries(AppendEntriesRequest),
    /// An election vote request.
    RequestVote(RequestVoteRequest),
    /// A pre-vote request.
    RequestPreVote(RequestPreVoteRequest),
    /// A snapshot offer; its data comes through the RPC's snapshot reader.
    InstallSnapshot(InstallSnapshotRequest),
    /// A leadership-transfer order.
    TimeoutNow(TimeoutNowRequest),
}

/// The answer to a [`Command`], of the matching kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Response {
    /// Answers [`Command::AppendEntries`].
    AppendEntries(AppendEntriesResponse),
    /// Answers [`Command::RequestVote`].
    RequestVote(RequestVoteResponse),
    /// Answers [`Command::RequestPreVote`].
    RequestPreVote(RequestPreVoteResponse),
    /// Answers [`Command::InstallSnapshot`].
    InstallSnapshot(InstallSnapshotResponse),
    /// Answers [`Command::TimeoutNow`].
    TimeoutNow(TimeoutNowResponse),
}

/// A request type, tied to the response type that answers it: a caller's generic call
/// returns `Q::Answer`, and the response that fails `TryFrom` is the kind mismatch.
pub(crate) trait Request: Into<Command> {
    /// The response to this request.
    type Answer: TryFrom<Response, Error = Response>;
}

macro_rules! message_kinds {
    ($($kind:ident: $request:ty => $response:ty),* $(,)?) => {
        impl Command {
            /// Which RPC this is.
            pub fn kind(&self) -> RpcKind {
                match self { $(Self::$kind(_) => RpcKind::$kind,)* }
            }

            /// The sender's header.
            pub fn header(&self) -> &RpcHeader {
                match self { $(Self::$kind(m) => &m.header,)* }
            }
        }

        impl Response {
            /// Which RPC this answers.
            pub fn kind(&self) -> RpcKind {
                match self { $(Self::$kind(_) => RpcKind::$kind,)* }
            }

            /// The responder's header.
            pub fn header(&self) -> &RpcHeader {
                match self { $(Self::$kind(m) => &m.header,)* }
            }
        }

        $(
            impl From<$request> for Command {
                fn from(request: $request) -> Self {
                    Self::$kind(request)
                }
            }

            impl From<$response> for Response {
                fn from(response: $response) -> Self {
                    Self::$kind(response)
                }
            }

            impl Request for $request {
                type Answer = $response;
            }

            impl TryFrom<Response> for $response {
                type Error = Response;

                /// Unwraps the response, or gives it back when it is of another kind.
                fn try_from(response: Response) -> Result<Self, Response> {
                    match response {
                        Response::$kind(inner) => Ok(inner),
                        other => Err(other),
                    }
                }
            }
        )*
    };
}

impl Command {
    /// True for an AppendEntries that is a heartbeat.
    pub(crate) fn is_heartbeat(&self) -> bool {
        matches!(self, Self::AppendEntries(r) if r.is_heartbeat())
    }

    /// The term the request carries (0 for TimeoutNow, which has none), for spans.
    pub(crate) fn term(&self) -> u64 {
        match self {
            Self::AppendEntries(r) => r.term,
            Self::RequestVote(r) => r.term,
            Self::RequestPreVote(r) => r.term,
            Self::InstallSnapshot(r) => r.term,
            Self::TimeoutNow(_) => 0,
        }
    }

    /// About how many bytes this request holds once decoded: the value itself, its header's
    /// strings and buffers, and for AppendEntries every entry's own size and buffers. A
    /// receiver counts this, not the encoded length, against what a peer may make it hold: an
    /// entry of a few bytes on the wire takes about a hundred once decoded.
    pub(crate) fn decoded_size(&self) -> usize {
        let header = self.header();
        let header =
            header.id.as_str().len() + header.addr.as_str().len() + header.extensions.len();
        let body = match self {
            Self::AppendEntries(request) => request
                .entries
                .iter()
                .map(|entry| size_of::<Log>() + entry.data.len() + entry.extensions.len())
                .sum(),
            Self::InstallSnapshot(request) => request.configuration.len(),
            Self::RequestVote(_) | Self::RequestPreVote(_) | Self::TimeoutNow(_) => 0,
        };
        size_of::<Self>() + header + body
    }
}

message_kinds! {
    AppendEntries: AppendEntriesRequest => AppendEntriesResponse,
    RequestVote: RequestVoteRequest => RequestVoteResponse,
    RequestPreVote: RequestPreVoteRequest => RequestPreVoteResponse,
    InstallSnapshot: InstallSnapshotRequest => InstallSnapshotResponse,
    TimeoutNow: TimeoutNowRequest => TimeoutNowResponse,
}
