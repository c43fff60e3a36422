//! The header every request and response carries.

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
}

impl RpcHeader {
    /// A header for `id` at `addr`, at the current [`PROTOCOL_VERSION`].
    pub fn new(id: impl Into<ServerId>, addr: impl Into<ServerAddress>) -> Self {
        Self {
            protocol_version: PROTOCOL_VERSION,
            id: id.into(),
            addr: addr.into(),
        }
    }
}
