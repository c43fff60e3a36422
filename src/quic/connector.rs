//! Dialling a peer: the endpoint, the TLS setup in force (swapped whole by a reload), and the
//! QUIC transport settings every connection gets.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::codes;
use super::metrics::{self, HandshakeFailure};
use super::pool::DialFailure;
use crate::command::ServerId;
use crate::error::{ConfigError, Error};
use crate::tls::{CaRoots, Identity, RevocationLists, SERVER_NAME, TlsContext};

/// What dials peers and what a TLS reload swaps.
pub(crate) struct Connector {
    /// `None` once the transport is closed.
    endpoint: Mutex<Option<quinn::Endpoint>>,
    /// Swapped whole by [`replace_tls`](Self::replace_tls); dials and accepts take a clone.
    tls: RwLock<TlsContext>,
    tls_reloads: tokio::sync::watch::Sender<u64>,
    transport_config: Arc<quinn::TransportConfig>,
    connect_timeout: Duration,
}

impl Connector {
    pub(crate) fn new(
        endpoint: quinn::Endpoint,
        tls: TlsContext,
        transport_config: Arc<quinn::TransportConfig>,
        connect_timeout: Duration,
    ) -> Self {
        Self {
            endpoint: Mutex::new(Some(endpoint)),
            tls: RwLock::new(tls),
            tls_reloads: tokio::sync::watch::Sender::new(0),
            transport_config,
            connect_timeout,
        }
    }

    /// The endpoint, until the transport closes.
    pub(crate) fn endpoint(&self) -> Option<quinn::Endpoint> {
        self.endpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Takes the endpoint away: no dial starts after this.
    pub(crate) fn take_endpoint(&self) -> Option<quinn::Endpoint> {
        self.endpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// The TLS setup in force.
    pub(crate) fn tls(&self) -> TlsContext {
        self.tls.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Counts the TLS setups taken into effect; see `QuicTransport::tls_reloads`.
    pub(crate) fn tls_reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.tls_reloads.subscribe()
    }

    /// Makes `identity`, `roots` and `revocation` the setup of new handshakes, in both
    /// directions, and returns it. Fails, keeping the old setup, when the certificate is
    /// unusable or names another node or cluster.
    pub(crate) fn replace_tls(
        &self,
        identity: Identity,
        roots: CaRoots,
        revocation: RevocationLists,
    ) -> Result<TlsContext, Error> {
        let current = self.tls();
        if identity.spiffe_id() != current.local_id() {
            return Err(Error::Config(ConfigError::Invalid(format!(
                "the new certificate is for {}, this node is {}",
                identity.spiffe_id(),
                current.local_id()
            ))));
        }
        let tls = TlsContext::new(current.cluster(), identity, roots)
            .map_err(|e| Error::Config(e.into()))?
            .with_revocation(revocation);
        let server_config = server_config(&tls, &self.transport_config)?;
        // Hold the lock across both swaps so dials and accepts see one setup or the other.
        let mut slot = self.tls.write().unwrap_or_else(|e| e.into_inner());
        if let Some(endpoint) = self.endpoint() {
            endpoint.set_server_config(Some(server_config));
        }
        *slot = tls.clone();
        drop(slot);
        self.tls_reloads.send_modify(|n| *n += 1);
        Ok(tls)
    }

    /// Dials `id` at `addr` and completes the handshake within the connect timeout. Not
    /// cancel-safe in the sense of leaving nothing behind: a cancelled dial drops its
    /// half-open connection, which quinn then closes.
    pub(crate) async fn connect(
        &self,
        id: &ServerId,
        addr: SocketAddr,
    ) -> Result<quinn::Connection, DialFailure> {
        let endpoint = self.endpoint().ok_or(DialFailure::Shutdown)?;
        let mut client = self
            .tls()
            .client_config(id.as_str())
            .map_err(|e| DialFailure::Unreachable(format!("cannot dial {id}: {e}")))?;
        client.transport_config(self.transport_config.clone());
        let connecting = endpoint
            .connect_with(client, addr, SERVER_NAME)
            .map_err(|e| DialFailure::Unreachable(format!("cannot dial {addr}: {e}")))?;
        let timeout = self.connect_timeout;
        match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok(conn)) => {
                tracing::debug!(peer = %id, %addr, "connected");
                metrics::connection_opened(id, "dialled");
                Ok(conn)
            }
            Ok(Err(e)) if codes::is_authentication_failure(&e) => {
                handshake_refused("outgoing", format_args!("node {id} at {addr}"), &e);
                // The close reason is the peer's text.
                let e = crate::sanitize::untrusted(e);
                Err(DialFailure::Authentication(format!(
                    "handshake with {id} at {addr} refused: {e}"
                )))
            }
            Ok(Err(e)) => {
                metrics::handshake_failed("outgoing", HandshakeFailure::Failed);
                Err(DialFailure::Unreachable(format!(
                    "handshake with {addr} failed: {}",
                    crate::sanitize::untrusted(e)
                )))
            }
            Err(_) => {
                metrics::handshake_failed("outgoing", HandshakeFailure::Timeout);
                Err(DialFailure::Unreachable(format!(
                    "no handshake with {addr} within {timeout:?}"
                )))
            }
        }
    }
}

/// The server side of a handshake with `tls`, with the node's transport settings and
/// admission bounds.
pub(crate) fn server_config(
    tls: &TlsContext,
    transport: &Arc<quinn::TransportConfig>,
) -> Result<quinn::ServerConfig, Error> {
    let mut server_config = tls.server_config().map_err(|e| Error::Config(e.into()))?;
    server_config.transport_config(transport.clone());
    super::admission::configure(&mut server_config);
    Ok(server_config)
}

/// Logs and counts a handshake that ended because a certificate was refused: a warning in
/// plain words when `peer` (described for the log) refused this node; only a debug line when
/// this node refused the peer, whose verifier has logged why in one line.
pub(crate) fn handshake_refused(
    direction: &'static str,
    peer: std::fmt::Arguments<'_>,
    error: &quinn::ConnectionError,
) {
    match codes::refused_by_peer(error) {
        Some(why) => {
            tracing::warn!("{peer} refused this node: {why}");
            metrics::handshake_failed(direction, HandshakeFailure::RefusedByPeer);
        }
        None => {
            tracing::debug!("handshake with {peer} refused by this node");
            metrics::handshake_failed(direction, HandshakeFailure::RefusedHere);
        }
    }
}
