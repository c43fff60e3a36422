//! The header every request and response carries.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize};

use super::{ServerAddress, ServerId};

/// The protocol version this crate speaks in [`RpcHeader::protocol_version`]: 3 since
/// snapshots can resume on a new connection (frame kinds `08`, `09`, `82`); 2 since
/// [`RemoteError::details`](crate::RemoteError::details) travels in `Error` frames
/// (`docs/PROTOCOL.md` §1.1 has the history and what an older peer sees).
pub const PROTOCOL_VERSION: u32 = 3;

/// The longest [`RpcHeader::id`] a decoded header may carry, in bytes: the longest node id a
/// certificate can name (`spiffe://<cluster>/node/<id>`, see `validate_node_id`), so every
/// id the QUIC transport can accept fits.
pub const MAX_HEADER_ID_LEN: usize = crate::tls::MAX_NODE_ID_LEN;

/// Sender information carried by every request and response (hashicorp/raft's `RPCHeader`).
///
/// The QUIC transport checks that `id` is the identity proven by the sender's certificate and
/// refuses the request otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpcHeader {
    /// Version of the Raft protocol the sender speaks.
    pub protocol_version: u32,
    /// The sender's server id. A decoded header's id has at most [`MAX_HEADER_ID_LEN`] bytes:
    /// a longer one is refused at decode, before it is copied (`docs/PROTOCOL.md` §5).
    #[serde(deserialize_with = "bounded_id")]
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

/// Decodes a header id, refusing one longer than [`MAX_HEADER_ID_LEN`] before copying it (the
/// error names its length, never its content).
fn bounded_id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ServerId, D::Error> {
    struct Bounded;

    impl serde::de::Visitor<'_> for Bounded {
        type Value = ServerId;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a server id of at most {MAX_HEADER_ID_LEN} bytes")
        }

        fn visit_str<E: serde::de::Error>(self, id: &str) -> Result<ServerId, E> {
            if id.len() > MAX_HEADER_ID_LEN {
                return Err(E::invalid_length(id.len(), &self));
            }
            Ok(ServerId::new(id))
        }
    }

    deserializer.deserialize_str(Bounded)
}
