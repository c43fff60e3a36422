//! # quicraft
//!
//! A transport for Raft's RPCs over QUIC with mutual TLS, shaped like hashicorp/raft's
//! `Transport`: one QUIC connection per peer, a stream per RPC (no head-of-line blocking),
//! snapshots streamed on dedicated streams.
//!
//! ## Entry points
//! - [`Transport`]: the API a Raft engine codes against, with the command types
//!   ([`AppendEntriesRequest`], [`RequestVoteRequest`], ...), the receiving side
//!   ([`Incoming`] yielding [`Rpc`]s), pipelines ([`AppendPipeline`]) and snapshots
//!   ([`SnapshotReader`]).
//! - [`QuicTransport`] with [`QuicConfig`] (and [`QuicTuning`] underneath): the QUIC
//!   implementation, mutual TLS on every connection.
//! - [`InmemTransport`]: the in-memory implementation, for testing engines deterministically.
//! - [`Identity`] and [`CaRoots`]: a node's certificate and key, and the cluster's trust roots;
//!   the [`tls`] module generates and checks them ([`tls::ClusterCa`], [`tls::SpiffeId`]).
//! - [`Error`]: what can go wrong, typed so an engine knows whether to back off or retry.
//! - `openraft_adapter` (cargo feature `openraft`, on by default): the openraft engine on any
//!   [`Transport`]: `QuicraftNetworkFactory` for sending, `serve_raft` for receiving, and
//!   key-value stores in memory and on disk.
//!
//! ```
//! use quicraft::{AppendEntriesRequest, AppendEntriesResponse, Command, InmemTransport, RpcHeader, Transport};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), quicraft::Error> {
//! let (leader, _) = InmemTransport::new("n1");
//! let (follower, mut incoming) = InmemTransport::new("n2");
//! leader.connect(&follower);
//!
//! // The follower's main loop answers what arrives.
//! tokio::spawn(async move {
//!     while let Some(rpc) = incoming.recv().await {
//!         if let Command::AppendEntries(req) = rpc.command() {
//!             let response = AppendEntriesResponse {
//!                 header: RpcHeader::new("n2", "n2"),
//!                 term: req.term,
//!                 last_log: 0,
//!                 success: true,
//!                 no_retry_backoff: false,
//!             };
//!             rpc.respond(Ok(response.into()));
//!         }
//!     }
//! });
//!
//! let request = AppendEntriesRequest::heartbeat(RpcHeader::new("n1", "n1"), 1);
//! let response = leader.append_entries(&"n2".into(), &"n2".into(), request).await?;
//! assert!(response.success);
//! # Ok(())
//! # }
//! ```

mod codec;
mod command;
mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod inmem;
#[cfg(feature = "openraft")]
pub mod openraft_adapter;
mod quic;
mod sanitize;
pub mod tls;
mod transport;

pub use codec::CodecError;
pub use command::{
    AppendEntriesRequest, AppendEntriesResponse, Command, InstallSnapshotRequest,
    InstallSnapshotResponse, Log, LogType, MAX_ENTRIES_PER_APPEND, MAX_HEADER_ID_LEN,
    PROTOCOL_VERSION, RequestPreVoteRequest, RequestPreVoteResponse, RequestVoteRequest,
    RequestVoteResponse, Response, RpcHeader, RpcKind, ServerAddress, ServerId, TimeoutNowRequest,
    TimeoutNowResponse,
};
pub use error::{Cause, ConfigError, Error, ErrorCode, Limit, RemoteError};
pub use inmem::{Faults, InmemConfig, InmemTransport};
pub use quic::{
    CongestionController, ConnectionInfo, HeartbeatHedge, QuicConfig, QuicTransport, QuicTuning,
    SnapshotPacing, TlsFiles, TransportStats,
};
pub use tls::{CaRoots, Identity, RevocationLists, TlsError};
pub use transport::{
    AppendCompletion, AppendPipeline, DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_MESSAGE_SIZE,
    HeartbeatHandler, Incoming, Responder, Rpc, RpcResult, SNAPSHOT_TIMEOUT_UNIT,
    ServerAddressProvider, SnapshotReader, Transport, snapshot_timeout,
};
