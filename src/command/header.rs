//! The header every request and response carries.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{ServerAddress, ServerId};

/// The protocol version this crate speaks in [`RpcHeader::protocol_version`].
pub const PROTOCOL_VERSION: u32 = 1;

/// Sender information carried by every request and response (hashicorp/raft's `RPCHeader`).
///
/// The QUIC transport checks that `id` is the identity proven by the sender's certificate and
/// refuses the request otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpcHeader {
    /// Version of the Raft protocol the sender speaks.
    pub protocol_version: u32,
    /// The sender's server id.
    pub id: ServerId,
    /// The sender's advertised address.
    pub addr: ServerAddress,
    /// Engine-specific data the hashicorp-shaped fields cannot carry, passed through untouched
    /// (the openraft adapter carries openraft's own messages here). Empty by default.
    pub extensions: Bytes,
}

impl RpcHeader {
    /// A header for `id` at `addr`, at the current [`PROTOCOL_VERSION`].
    pub fn new(id: impl Into<ServerId>, addr: impl Into<ServerAddress>) -> Self {
        Self {
            protocol_version: PROTOCOL_VERSION,
            id: id.into(),
            addr: addr.into(),
            extensions: Bytes::new(),
        }
    }

    /// The same header carrying `extensions`.
    pub fn with_extensions(mut self, extensions: impl Into<Bytes>) -> Self {
        self.extensions = extensions.into();
        self
    }
}
