//! The openraft adapter (cargo feature `openraft`, on by default): the
//! [openraft](https://docs.rs/openraft/0.9) engine running on any quicraft [`Transport`].
//!
//! - Sending: [`QuicraftNetworkFactory`] implements openraft's `RaftNetworkFactory`, and
//!   [`QuicraftNetwork`] its `RaftNetwork` for one target, on a transport handle (a
//!   [`QuicTransport`], an [`InmemTransport`], ...). There is no connection layer here: every
//!   RPC goes through the [`Transport`] trait, sharing its connections, streams and priorities
//!   with any other user of the transport.
//! - Receiving: [`serve_raft`] reads the transport's [`Incoming`] consumer and hands each RPC
//!   to the local `openraft::Raft`.
//! - Storage: [`durable`] keeps the vote, the log and a key-value state machine in redb files
//!   in a data directory, crash-safe (a vote and appended entries are fsynced before the RPC
//!   that asked for them is answered; snapshots are streamed out of and into the database);
//!   [`mem`] is the same in memory, for tests.
//! - Restarts: [`serve_raft_guarded`] with a [`JoinGuard`] and [`probe_peer`] keep a node whose
//!   data was lost from rejoining its cluster under its old id, and let a brand-new cluster be
//!   founded only once (see the `guard` rules on [`JoinGuard`]).
//!
//! openraft's messages map onto quicraft's hashicorp-shaped commands field by field (terms,
//! indexes, log types, commit index); what those fields cannot carry (openraft's vote, the
//! `None`-ness of log ids, the encoded entries and responses) travels in
//! [`RpcHeader::extensions`] and [`Log::data`]. Snapshots go whole over one InstallSnapshot:
//! the data is streamed from openraft's snapshot reader on a dedicated snapshot stream.
//!
//! A node, end to end (certificates for node ids `"1"`, `"2"`, `"3"`):
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use quicraft::openraft_adapter::mem::{KvStateMachine, KvTypeConfig, MemLogStore};
//! use quicraft::openraft_adapter::{QuicraftNetworkFactory, serve_raft};
//! use quicraft::{QuicConfig, QuicTransport};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = QuicConfig::from_pem_files("demo", "certs/1.pem", "certs/1.key", "certs/ca.pem")?
//!     .bind("127.0.0.1:7001".parse()?);
//! let (transport, incoming) = QuicTransport::bind(config).await?;
//!
//! let network = QuicraftNetworkFactory::<KvTypeConfig, _>::new(transport, 1);
//! let local = network.local_header();
//! let state_machine = KvStateMachine::default();
//! let config = Arc::new(openraft::Config::default().validate()?);
//! let raft = openraft::Raft::new(1, config, network, MemLogStore::default(), state_machine.clone())
//!     .await?;
//! tokio::spawn(serve_raft(raft.clone(), incoming, local));
//! # Ok(()) }
//! ```
//!
//! The adapter needs openraft's `generic-snapshot-data` feature off (snapshot data that can
//! be read and sought), which is openraft's default.
//!
//! [`Transport`]: crate::Transport
//! [`QuicTransport`]: crate::QuicTransport
//! [`InmemTransport`]: crate::InmemTransport
//! [`Incoming`]: crate::Incoming
//! [`RpcHeader::extensions`]: crate::RpcHeader::extensions
//! [`Log::data`]: crate::Log::data

pub mod durable;
mod guard;
pub mod mem;
mod network;
mod server;
mod wire;

pub use guard::{JoinGuard, PeerState, Refusal, probe_peer, serve_raft_guarded};
pub use network::{NodeAddress, QuicraftNetwork, QuicraftNetworkFactory};
pub use server::serve_raft;
pub use wire::{OPENRAFT_ERROR, WireError};
