//! Resolving and encoding peer addresses.

use std::fmt;
use std::sync::Arc;

use crate::command::{ServerAddress, ServerId};
use crate::error::Error;

/// Maps a server id to its current address, consulted on every dial (hashicorp/raft's
/// `ServerAddressProvider`). Lets a cluster follow nodes whose addresses change.
pub trait ServerAddressProvider: Send + Sync + 'static {
    /// The address of `id`, or `None` to use the address the caller gave.
    fn server_addr(&self, id: &ServerId) -> Option<ServerAddress>;
}

impl<F> ServerAddressProvider for F
where
    F: Fn(&ServerId) -> Option<ServerAddress> + Send + Sync + 'static,
{
    fn server_addr(&self, id: &ServerId) -> Option<ServerAddress> {
        self(id)
    }
}

/// An optional provider, shared by a transport's handles.
#[derive(Clone, Default)]
pub(crate) struct AddressResolver(Option<Arc<dyn ServerAddressProvider>>);

impl AddressResolver {
    pub(crate) fn new(provider: Option<Arc<dyn ServerAddressProvider>>) -> Self {
        Self(provider)
    }

    /// The provider's address for `id`, else `fallback`.
    pub(crate) fn resolve(&self, id: &ServerId, fallback: &ServerAddress) -> ServerAddress {
        self.0
            .as_ref()
            .and_then(|p| p.server_addr(id))
            .unwrap_or_else(|| fallback.clone())
    }

    /// hashicorp/raft's `EncodePeer`: the resolved address as UTF-8 bytes.
    pub(crate) fn encode_peer(&self, id: &ServerId, addr: &ServerAddress) -> Vec<u8> {
        self.resolve(id, addr).as_str().as_bytes().to_vec()
    }
}

impl fmt::Debug for AddressResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AddressResolver")
            .field(&self.0.is_some())
            .finish()
    }
}

/// hashicorp/raft's `DecodePeer`: the inverse of `encode_peer`.
pub(crate) fn decode_peer(encoded: &[u8]) -> Result<ServerAddress, Error> {
    std::str::from_utf8(encoded)
        .map(ServerAddress::from)
        .map_err(|e| {
            Error::protocol_by("encoded peer address is not UTF-8", crate::error::cause(e))
        })
}
