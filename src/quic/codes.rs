//! Application error codes on the wire, and how quinn's errors map onto [`Error`].

use quinn::{ConnectionError, ReadError, VarInt, WriteError};

use crate::command::ServerAddress;
use crate::error::Error;
use crate::sanitize::untrusted;

/// Stream error codes (RESET_STREAM / STOP_SENDING), as `docs/PROTOCOL.md` lists them.
pub(crate) mod stream {
    use quinn::VarInt;

    /// The reader no longer wants the data (quinn's code when a stream is dropped unread).
    pub(crate) const STOPPED: VarInt = VarInt::from_u32(0);
    /// The stream carried a frame this node refuses (unknown kind, oversize, malformed).
    pub(crate) const BAD_FRAME: VarInt = VarInt::from_u32(1);
    /// This node is shutting down.
    pub(crate) const SHUTDOWN: VarInt = VarInt::from_u32(2);
    /// The snapshot sender gave up: its source failed or ended short.
    pub(crate) const SNAPSHOT_ABORTED: VarInt = VarInt::from_u32(3);
    /// The stream was refused: too many pending snapshot streams, or a duplicate transfer id.
    pub(crate) const REFUSED: VarInt = VarInt::from_u32(4);
}

/// Connection error codes (CONNECTION_CLOSE of the application). 0 is left to mean "no
/// reason given", which is what quinn sends for a connection dropped without `close`.
pub(crate) mod conn {
    use quinn::VarInt;

    /// Another connection between the same two nodes won the tie-break.
    pub(crate) const DUPLICATE: VarInt = VarInt::from_u32(1);
    /// The peer's certificate names no usable identity, or was revoked.
    pub(crate) const IDENTITY: VarInt = VarInt::from_u32(2);
    /// The node is shutting down.
    pub(crate) const SHUTDOWN: VarInt = VarInt::from_u32(3);
    /// The node dropped its connections to the peer (`Transport::disconnect_peer`: the peer
    /// left the configuration). The peer may dial again.
    pub(crate) const DISCONNECTED: VarInt = VarInt::from_u32(4);
    /// The connection did not answer a probe: its peer is presumed dead or restarted.
    pub(crate) const STALE: VarInt = VarInt::from_u32(5);
    /// This node's address changed under the connection: it dials the peer anew.
    pub(crate) const MOVED: VarInt = VarInt::from_u32(6);
}

/// TLS alerts travel as QUIC transport error codes 0x100 + alert.
fn is_crypto_code(code: u64) -> bool {
    (0x100..0x200).contains(&code)
}

/// Why the peer refused this node, in plain words, when `error` says it did (a TLS alert it
/// sent, or its `IDENTITY` close); `None` when this node refused the peer (its verifier has
/// logged why) or the failure is not about identities.
pub(crate) fn refused_by_peer(error: &ConnectionError) -> Option<String> {
    match error {
        ConnectionError::ConnectionClosed(close) if is_crypto_code(close.error_code.into()) => {
            // In range, so the alert fits a byte.
            let alert = (u64::from(close.error_code) - 0x100) as u8;
            Some(crate::tls::peer_refusal(alert).map_or_else(
                || format!("it ended the handshake with TLS alert {alert}"),
                str::to_owned,
            ))
        }
        ConnectionError::ApplicationClosed(close) if close.error_code == conn::IDENTITY => {
            Some(format!(
                "it refused this node's identity ({})",
                untrusted(String::from_utf8_lossy(&close.reason))
            ))
        }
        _ => None,
    }
}

/// True when the connection ended because a certificate was refused, by either side.
pub(crate) fn is_authentication_failure(error: &ConnectionError) -> bool {
    match error {
        ConnectionError::ConnectionClosed(close) => is_crypto_code(close.error_code.into()),
        ConnectionError::TransportError(e) => is_crypto_code(e.code.into()),
        ConnectionError::ApplicationClosed(close) => close.error_code == conn::IDENTITY,
        _ => false,
    }
}

/// The caller-facing error for a connection that failed under an RPC.
pub(crate) fn connection_error(peer: &ServerAddress, error: &ConnectionError) -> Error {
    if is_authentication_failure(error) {
        return Error::Authentication(format!(
            "TLS handshake with {peer} refused: {}",
            untrusted(error)
        ));
    }
    let reason = match error {
        ConnectionError::ApplicationClosed(close) if close.error_code == conn::SHUTDOWN => {
            "peer shut down".to_owned()
        }
        // This node closed it while the transport is open (a retired duplicate, a revoked
        // peer): the call may be retried. On shutdown, callers see `Error::Shutdown` from
        // their guard (`Inner::guarded`, the pipeline's closed token) instead.
        ConnectionError::LocallyClosed => "closed by this node".to_owned(),
        // The peer chose the close reason: sanitized.
        ConnectionError::ApplicationClosed(_) | ConnectionError::ConnectionClosed(_) => {
            format!("closed by the peer: {}", untrusted(error))
        }
        ConnectionError::TimedOut => "the peer stopped answering (idle timeout)".to_owned(),
        ConnectionError::Reset => "the peer restarted (stateless reset)".to_owned(),
        other => untrusted(other).to_string(),
    };
    Error::lost_by(peer, reason, crate::error::cause(error.clone()))
}

/// The caller-facing error for a failed stream read.
pub(crate) fn read_error(peer: &ServerAddress, error: &ReadError) -> Error {
    match error {
        ReadError::ConnectionLost(e) => connection_error(peer, e),
        ReadError::Reset(code) => reset_error(peer, *code),
        other => Error::lost_by(
            peer,
            "stream read failed",
            crate::error::cause(other.clone()),
        ),
    }
}

/// The caller-facing error for a failed stream write.
pub(crate) fn write_error(peer: &ServerAddress, error: &WriteError) -> Error {
    match error {
        WriteError::ConnectionLost(e) => connection_error(peer, e),
        WriteError::Stopped(code) => reset_error(peer, *code),
        other => Error::lost_by(
            peer,
            "stream write failed",
            crate::error::cause(other.clone()),
        ),
    }
}

fn reset_error(peer: &ServerAddress, code: VarInt) -> Error {
    match code {
        stream::BAD_FRAME => Error::protocol(format!("{peer} refused a frame on this stream")),
        stream::SHUTDOWN => Error::lost(peer, "peer shutting down"),
        other => Error::lost(peer, format!("stream closed by peer with code {other}")),
    }
}
