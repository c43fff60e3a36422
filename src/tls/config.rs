//! The rustls configurations of the QUIC transport, and the certificate verifiers that bind
//! a peer's certificate to its SPIFFE id.
//!
//! Both directions are TLS 1.3 only (QUIC requires it), use the ring crypto provider
//! explicitly (never the process default), negotiate ALPN [`ALPN`], and keep 0-RTT and session
//! resumption off: every connection runs a full handshake in which both certificates are
//! verified against the current trust policy.
//!
//! The verifiers read their inputs (cluster, roots, provider) from one shared
//! `TrustPolicy`, so revocation lists and hot reload of roots can later be added in one
//! place (e.g. by making the policy swappable behind a lock or an atomic pointer).

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::{CryptoProvider, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, PeerIncompatible,
    RootCertStore, SignatureScheme,
};

use super::explain;
use super::verify::check_node_usages;
use super::{CaRoots, Identity, RevocationLists, SpiffeId, TlsError, validate_cluster_name};

/// The ALPN protocol id of quicraft's wire protocol, version 1.
pub const ALPN: &[u8] = b"quicraft/1";

/// The TLS server name a dialler should pass to quinn's `connect_with`.
///
/// It is not checked by either side (identity is the SPIFFE id, see
/// [`TlsContext::client_config`]) and is not sent (SNI is off), but quinn needs a
/// syntactically valid name.
pub(crate) const SERVER_NAME: &str = "quicraft";

/// A node's TLS setup: its cluster, its own certificate and key, and the CA roots it trusts.
/// Builds the quinn server configuration and, for each peer to dial, a client configuration.
///
/// Cheap to clone.
#[derive(Clone)]
pub struct TlsContext {
    policy: Arc<TrustPolicy>,
    identity: Identity,
    local_id: SpiffeId,
}

/// Everything the certificate verifiers decide with. Shared by every verifier built from one
/// [`TlsContext`]; the one place where revocation lists or reloadable roots would go.
#[derive(Debug)]
struct TrustPolicy {
    /// Only certificates naming this cluster are accepted.
    cluster: String,
    /// The CA roots every peer chain must lead to.
    roots: Arc<RootCertStore>,
    /// The crypto provider (ring) used for every config and signature check.
    provider: Arc<CryptoProvider>,
    /// Peer certificates listed here are refused (empty: revocation is not checked).
    revocation: RevocationLists,
}

impl TlsContext {
    /// Builds the context of a node of `cluster` from its identity and the cluster's CA roots.
    ///
    /// Logs a warning (but does not fail) if the node's own certificate does not verify
    /// against `roots` right now (expired, not yet valid, signed by another CA): peers will
    /// then reject it.
    ///
    /// # Errors
    /// [`TlsError::InvalidClusterName`]; [`TlsError::IdentityMismatch`] if the identity's
    /// SPIFFE id belongs to another cluster; [`TlsError::Rustls`] if a root is unusable.
    pub fn new(cluster: &str, identity: Identity, roots: CaRoots) -> Result<Self, TlsError> {
        validate_cluster_name(cluster)?;
        let local_id = identity.spiffe_id().clone();
        if local_id.cluster() != cluster {
            return Err(TlsError::IdentityMismatch {
                expected: format!("a node of cluster {cluster}"),
                found: local_id.to_uri(),
            });
        }
        let policy = TrustPolicy {
            cluster: cluster.to_owned(),
            roots: Arc::new(roots.root_store()?),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            revocation: RevocationLists::none(),
        };
        // An `Identity` always has a leaf, so `[1..]` (the intermediates) is in bounds.
        if let Err(error) = policy.verify_chain(identity.leaf(), &identity.chain()[1..]) {
            let words = explain::refusal(&error, identity.leaf(), "this node's own certificate");
            // Outside its validity period, the fault may be this host's clock: then peers
            // with a correct clock accept the certificate, and saying they will not misleads.
            let clock = matches!(
                error,
                rustls::Error::InvalidCertificate(
                    CertificateError::Expired
                        | CertificateError::ExpiredContext { .. }
                        | CertificateError::NotValidYet
                        | CertificateError::NotValidYetContext { .. }
                )
            );
            if clock {
                tracing::warn!(local_id = %local_id, "{words}");
            } else {
                tracing::warn!(local_id = %local_id, "{words}; peers will refuse it");
            }
        }
        Ok(Self {
            policy: Arc::new(policy),
            identity,
            local_id,
        })
    }

    /// The same context, refusing peers whose certificate is revoked by one of `lists`, on
    /// both sides of every handshake. Replaces earlier lists; empty lists turn checking off.
    pub fn with_revocation(self, lists: RevocationLists) -> Self {
        let policy = TrustPolicy {
            cluster: self.policy.cluster.clone(),
            roots: Arc::clone(&self.policy.roots),
            provider: Arc::clone(&self.policy.provider),
            revocation: lists,
        };
        Self {
            policy: Arc::new(policy),
            ..self
        }
    }

    /// Checks a peer's certificate chain (leaf first) as a handshake would now: it chains to
    /// the CA roots, is valid, is not revoked, and names a node of this cluster. Used to
    /// re-check live connections when the trust policy changes.
    ///
    /// # Errors
    /// [`TlsError::NoCertificate`], [`TlsError::Rustls`] with the verification failure, or
    /// the identity errors of [`SpiffeId::from_certificate`].
    pub fn verify_peer_chain(&self, chain: &[CertificateDer<'_>]) -> Result<SpiffeId, TlsError> {
        let (leaf, intermediates) = chain.split_first().ok_or_else(|| TlsError::NoCertificate {
            what: "the peer's chain".to_owned(),
        })?;
        self.policy.verify_chain(leaf, intermediates)?;
        let id = SpiffeId::from_certificate(leaf)?;
        self.policy.check_cluster(&id)?;
        Ok(id)
    }

    /// This node's SPIFFE id (from its certificate).
    pub fn local_id(&self) -> &SpiffeId {
        &self.local_id
    }

    /// The cluster name.
    pub fn cluster(&self) -> &str {
        &self.policy.cluster
    }

    /// This node's certificate chain and key.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The quinn server configuration: TLS 1.3, ALPN [`ALPN`], 0-RTT off, and a client
    /// certificate required that chains to the CA roots, is valid now, and names exactly one
    /// node of this cluster. Transport parameters are left at quinn's defaults for the
    /// caller to set.
    ///
    /// # Errors
    /// [`TlsError::ClientVerifier`], [`TlsError::Rustls`] (e.g. the key does not match the
    /// certificate), [`TlsError::Quic`].
    pub fn server_config(&self) -> Result<quinn::ServerConfig, TlsError> {
        let crypto = QuicServerConfig::try_from(self.rustls_server_config()?)?;
        Ok(quinn::ServerConfig::with_crypto(Arc::new(crypto)))
    }

    /// The quinn client configuration for dialling node `expected_node` of this cluster:
    /// TLS 1.3, ALPN [`ALPN`], 0-RTT off, this node's certificate as client certificate, and
    /// a server certificate accepted only if it chains to the CA roots, is valid now, and
    /// names exactly `spiffe://<cluster>/node/<expected_node>`.
    ///
    /// The TLS server name given to quinn is ignored (quicraft passes `"quicraft"`).
    ///
    /// # Errors
    /// [`TlsError::InvalidNodeId`], [`TlsError::Rustls`], [`TlsError::Quic`].
    pub fn client_config(&self, expected_node: &str) -> Result<quinn::ClientConfig, TlsError> {
        let crypto = QuicClientConfig::try_from(self.rustls_client_config(expected_node)?)?;
        Ok(quinn::ClientConfig::new(Arc::new(crypto)))
    }

    /// The rustls half of [`TlsContext::server_config`].
    pub(crate) fn rustls_server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let provider = Arc::clone(&self.policy.provider);
        let mut webpki = WebPkiClientVerifier::builder_with_provider(
            Arc::clone(&self.policy.roots),
            Arc::clone(&provider),
        );
        if !self.policy.revocation.is_empty() {
            // The CA's lists cover the certificates it issued: the leaf is what to check.
            webpki = webpki
                .with_crls(self.policy.revocation.lists().iter().cloned())
                .only_check_end_entity_revocation();
            if self.policy.revocation.enforces_next_update() {
                webpki = webpki.enforce_revocation_expiration();
            }
        }
        let webpki = webpki.build()?;
        let verifier = Arc::new(ClusterClientVerifier {
            policy: Arc::clone(&self.policy),
            webpki,
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                self.identity.chain().to_vec(),
                self.identity.key().clone_key(),
            )?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        config.max_early_data_size = 0;
        // No resumption: every connection verifies the client certificate afresh.
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(NoServerSessionStorage {});
        Ok(config)
    }

    /// The rustls half of [`TlsContext::client_config`].
    pub(crate) fn rustls_client_config(
        &self,
        expected_node: &str,
    ) -> Result<rustls::ClientConfig, TlsError> {
        let expected = SpiffeId::new(self.policy.cluster.as_str(), expected_node)?;
        let verifier = Arc::new(NodeServerVerifier {
            policy: Arc::clone(&self.policy),
            expected,
        });
        let mut config =
            rustls::ClientConfig::builder_with_provider(Arc::clone(&self.policy.provider))
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_client_auth_cert(
                    self.identity.chain().to_vec(),
                    self.identity.key().clone_key(),
                )?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        config.enable_early_data = false;
        // The server name carries no meaning here, so do not send it.
        config.enable_sni = false;
        // No resumption: every connection verifies the server certificate afresh.
        config.resumption = Resumption::disabled();
        Ok(config)
    }
}

impl fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsContext")
            .field("cluster", &self.policy.cluster)
            .field("local_id", &self.local_id.to_uri())
            .field("roots", &self.policy.roots.len())
            .finish_non_exhaustive()
    }
}

/// The SPIFFE id of the peer of a quinn connection, from `Connection::peer_identity()`.
///
/// Works on both sides: quinn's rustls session reports the peer's chain as
/// `Vec<CertificateDer<'static>>`, leaf first. Call it only on an established connection,
/// whose handshake already verified the chain and the SPIFFE id.
///
/// # Errors
/// [`TlsError::NoCertificate`] if there is no chain (or not of the expected type), or an
/// error of [`SpiffeId::from_certificate`].
pub(crate) fn peer_spiffe_id(peer_identity: Option<Box<dyn Any>>) -> Result<SpiffeId, TlsError> {
    let missing = || TlsError::NoCertificate {
        what: "the peer's identity".to_owned(),
    };
    let chain = peer_identity
        .ok_or_else(missing)?
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| missing())?;
    let leaf = chain.first().ok_or_else(missing)?;
    SpiffeId::from_certificate(leaf)
}

impl TrustPolicy {
    /// Refuses an identity of another cluster.
    fn check_cluster(&self, id: &SpiffeId) -> Result<(), TlsError> {
        if id.cluster() == self.cluster {
            return Ok(());
        }
        Err(TlsError::IdentityMismatch {
            expected: format!("a node of cluster {}", self.cluster),
            found: id.to_uri(),
        })
    }

    /// Verifies that `leaf` (with `intermediates`) chains to the roots and is valid at `now`,
    /// for TLS server use, and has the usages of a node certificate.
    fn verify_chain_at(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let parsed = ParsedCertificate::try_from(leaf)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        check_usages(leaf)?;
        self.check_revocation(leaf, intermediates, now)
    }

    /// Refuses `leaf` if a revocation list of the policy lists it. Unknown status (a leaf
    /// whose issuer published no list) is refused too once lists are configured.
    fn check_revocation(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        if self.revocation.is_empty() {
            return Ok(());
        }
        let crls = self
            .revocation
            .lists()
            .iter()
            .map(|der| webpki::BorrowedCertRevocationList::from_der(der).map(Into::into))
            .collect::<Result<Vec<webpki::CertRevocationList<'_>>, _>>()
            .map_err(pki_error)?;
        let crls: Vec<&webpki::CertRevocationList<'_>> = crls.iter().collect();
        let options = webpki::RevocationOptionsBuilder::new(&crls)
            .map_err(|_| rustls::Error::General("no revocation lists".to_owned()))?
            .with_depth(webpki::RevocationCheckDepth::EndEntity)
            .with_expiration_policy(if self.revocation.enforces_next_update() {
                webpki::ExpirationPolicy::Enforce
            } else {
                webpki::ExpirationPolicy::Ignore
            })
            .build();
        let cert = webpki::EndEntityCert::try_from(leaf).map_err(pki_error)?;
        cert.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &self.roots.roots,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            Some(options),
            None,
        )
        .map(|_| ())
        .map_err(pki_error)
    }

    /// [`TrustPolicy::verify_chain_at`] the current time.
    fn verify_chain(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), rustls::Error> {
        self.verify_chain_at(leaf, intermediates, UnixTime::now())
    }
}

/// Server side: accepts a client certificate only if rustls's WebPKI verifier accepts its
/// chain (CA roots, validity, clientAuth usage) and it names exactly one node of this
/// cluster.
#[derive(Debug)]
struct ClusterClientVerifier {
    policy: Arc<TrustPolicy>,
    webpki: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for ClusterClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.webpki
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|error| {
                let words = explain::refusal(error, end_entity, &explain::whose(end_entity));
                tracing::warn!("refusing a peer that dialled this node: {words}");
            })?;
        check_usages(end_entity)?;
        let id = SpiffeId::from_certificate(end_entity).map_err(|e| reject("client", e))?;
        self.policy
            .check_cluster(&id)
            .map_err(|e| reject("client", e))?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Client side: accepts a server certificate only if its chain leads to the CA roots, is
/// valid now (serverAuth usage), and names exactly the expected node. The TLS server name is
/// ignored.
#[derive(Debug)]
struct NodeServerVerifier {
    policy: Arc<TrustPolicy>,
    expected: SpiffeId,
}

impl ServerCertVerifier for NodeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.policy
            .verify_chain_at(end_entity, intermediates, now)
            .inspect_err(|error| {
                let words = explain::refusal(error, end_entity, &explain::whose(end_entity));
                tracing::warn!(
                    "refusing node {} (dialled by this node): {words}",
                    self.expected.node()
                );
            })?;
        let id = SpiffeId::from_certificate(end_entity).map_err(|e| reject("server", e))?;
        if id != self.expected {
            return Err(reject(
                "server",
                TlsError::IdentityMismatch {
                    expected: self.expected.to_uri(),
                    found: id.to_uri(),
                },
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.policy.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.policy
            .provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Logs a rejected peer certificate and turns the reason into the rustls error that aborts
/// the handshake (sent to the peer as a `certificate_unknown` alert; the full reason stays
/// in the local error).
fn reject(peer: &'static str, error: TlsError) -> rustls::Error {
    tracing::warn!(
        "refusing a peer ({peer} side of the handshake): its certificate names the wrong node or cluster: {error}"
    );
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(error))))
}

/// Refuses a leaf without the usages of a node certificate: `digitalSignature`, `serverAuth`
/// and `clientAuth` (TLS alert `unsupported_certificate`, or `bad_certificate` when an
/// extension does not parse).
fn check_usages(leaf: &CertificateDer<'_>) -> Result<(), rustls::Error> {
    check_node_usages(leaf).map_err(|error| {
        tracing::warn!(
            "refusing a peer: {} is not a node certificate: {error}",
            explain::whose(leaf)
        );
        let error = match error {
            TlsError::NotANodeCertificate { .. } => CertificateError::InvalidPurpose,
            _ => CertificateError::BadEncoding,
        };
        rustls::Error::InvalidCertificate(error)
    })
}

/// A rustls-webpki verification error as rustls reports certificate errors.
fn pki_error(error: webpki::Error) -> rustls::Error {
    let error = match error {
        webpki::Error::CertRevoked => CertificateError::Revoked,
        webpki::Error::UnknownRevocationStatus => CertificateError::UnknownRevocationStatus,
        webpki::Error::CertExpired { .. } => CertificateError::Expired,
        webpki::Error::CertNotValidYet { .. } => CertificateError::NotValidYet,
        webpki::Error::UnknownIssuer => CertificateError::UnknownIssuer,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(error)
}

/// The error for a TLS 1.2 signature check: quicraft is TLS 1.3 only (so is QUIC).
fn tls12_refused() -> rustls::Error {
    rustls::Error::PeerIncompatible(PeerIncompatible::Tls13RequiredForQuic)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::generate::test_support::{ca, context, context_with, node_with};
    use crate::tls::{ClusterCa, NodeCertOptions};
    use quinn::{Connection, ConnectionError, Endpoint, TransportErrorCode};
    use rustls::AlertDescription;
    use std::net::{Ipv4Addr, SocketAddr};
    use time::{Duration, OffsetDateTime};

    /// Both sides of one handshake attempt, with the endpoints kept alive.
    struct Outcome {
        client: Result<Connection, ConnectionError>,
        server: Result<Connection, ConnectionError>,
        _endpoints: (Endpoint, Endpoint),
    }

    fn loopback() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
    }

    /// Runs one handshake between fresh endpoints on 127.0.0.1.
    async fn handshake(server: quinn::ServerConfig, client: quinn::ClientConfig) -> Outcome {
        let server_ep = Endpoint::server(server, loopback()).expect("bind server");
        let client_ep = Endpoint::client(loopback()).expect("bind client");
        let addr = server_ep.local_addr().expect("server address");
        let accept = async {
            let incoming = server_ep.accept().await.expect("an incoming connection");
            incoming.await
        };
        let connect = async {
            client_ep
                .connect_with(client, addr, SERVER_NAME)
                .expect("connect starts")
                .await
        };
        let (server, client) = tokio::join!(accept, connect);
        Outcome {
            client,
            server,
            _endpoints: (server_ep, client_ep),
        }
    }

    /// Handshake between two contexts, the client dialling `expected`.
    async fn handshake_contexts(
        server: &TlsContext,
        client: &TlsContext,
        expected: &str,
    ) -> Outcome {
        handshake(
            server.server_config().expect("server config"),
            client.client_config(expected).expect("client config"),
        )
        .await
    }

    fn crypto_code(alert: AlertDescription) -> TransportErrorCode {
        TransportErrorCode::crypto(u8::from(alert))
    }

    /// The alert code of a handshake failure seen locally (this side's verifier refused).
    fn local_failure(result: Result<Connection, ConnectionError>) -> (TransportErrorCode, String) {
        match result {
            Err(ConnectionError::TransportError(e)) => (e.code, e.reason),
            Err(other) => panic!("expected a local TLS failure, got {other:?}"),
            Ok(_) => panic!("expected a local TLS failure, got a connection"),
        }
    }

    /// The alert code a peer closed with, whether the failure shows at once or, as for a
    /// client whose certificate the server refuses under TLS 1.3, only after the handshake
    /// seemed to succeed.
    async fn remote_failure(result: Result<Connection, ConnectionError>) -> TransportErrorCode {
        let error = match result {
            Err(error) => error,
            Ok(conn) => {
                // The first stream fails too, and close_reason() holds the cause.
                let stream_error = conn.accept_bi().await.expect_err("no stream");
                let closed = conn.closed().await;
                assert_eq!(conn.close_reason(), Some(closed.clone()));
                assert_eq!(stream_error, closed);
                closed
            }
        };
        match error {
            ConnectionError::ConnectionClosed(close) => close.error_code,
            other => panic!("expected the peer to close the connection, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn mutual_tls_succeeds_and_both_sides_see_the_peer_id() {
        let ca = ca("prod");
        let n1 = context(&ca, "n1");
        let n2 = context(&ca, "n2");
        let outcome = handshake_contexts(&n1, &n2, "n1").await;
        let client = outcome.client.expect("client connects");
        let server = outcome.server.expect("server accepts");

        assert_eq!(
            peer_spiffe_id(client.peer_identity()).expect("id"),
            *n1.local_id()
        );
        assert_eq!(
            peer_spiffe_id(server.peer_identity()).expect("id"),
            *n2.local_id()
        );
        for conn in [&client, &server] {
            let data = conn
                .handshake_data()
                .expect("handshake data")
                .downcast::<quinn::crypto::rustls::HandshakeData>()
                .expect("rustls handshake data");
            assert_eq!(data.protocol.as_deref(), Some(ALPN));
        }

        let (mut send, mut recv) = client.open_bi().await.expect("open");
        send.write_all(b"ping").await.expect("write");
        send.finish().expect("finish");
        let (mut s_send, mut s_recv) = server.accept_bi().await.expect("accept stream");
        assert_eq!(s_recv.read_to_end(16).await.expect("read"), b"ping");
        s_send.write_all(b"pong").await.expect("write");
        s_send.finish().expect("finish");
        assert_eq!(recv.read_to_end(16).await.expect("read"), b"pong");
    }

    #[tokio::test]
    async fn server_with_another_node_id_is_rejected() {
        let ca = ca("prod");
        let n3 = context(&ca, "n3");
        let n1 = context(&ca, "n1");
        let outcome = handshake_contexts(&n3, &n1, "n2").await;
        let (code, reason) = local_failure(outcome.client);
        assert_eq!(code, crypto_code(AlertDescription::CertificateUnknown));
        assert!(reason.contains("spiffe://prod/node/n2"), "{reason}");
        assert!(reason.contains("spiffe://prod/node/n3"), "{reason}");
        assert_eq!(
            remote_failure(outcome.server).await,
            crypto_code(AlertDescription::CertificateUnknown)
        );
    }

    #[tokio::test]
    async fn server_of_another_cluster_signed_by_the_same_ca_is_rejected() {
        let ca = ca("prod");
        let staging = node_with(&ca, "n1", &NodeCertOptions::default().cluster("staging"));
        let server =
            TlsContext::new("staging", staging.identity, ca.roots()).expect("staging context");
        let client = context(&ca, "n2");
        let outcome = handshake_contexts(&server, &client, "n1").await;
        let (code, reason) = local_failure(outcome.client);
        assert_eq!(code, crypto_code(AlertDescription::CertificateUnknown));
        assert!(reason.contains("spiffe://staging/node/n1"), "{reason}");
        assert!(outcome.server.is_err());
    }

    #[tokio::test]
    async fn client_from_another_ca_is_rejected() {
        let name = Some("quicraft prod CA");
        let validity = time::Duration::days(1);
        let ca_a = ClusterCa::generate_with("prod", name, validity).expect("CA");
        let server = context(&ca_a, "n1");
        // Another CA with the same name (as an attacker would make): its signature does not
        // verify under our root's key. Another CA with another name: unknown issuer.
        let same_name = ClusterCa::generate_with("prod", name, validity).expect("second CA");
        let other_name = ClusterCa::generate("other").expect("third CA");
        for (ca_b, alert) in [
            (same_name, AlertDescription::DecryptError),
            (other_name, AlertDescription::UnknownCA),
        ] {
            // Trusts the right roots, but its own certificate comes from another CA.
            let opts = NodeCertOptions::default().cluster("prod");
            let foreign = node_with(&ca_b, "n2", &opts);
            let client = TlsContext::new("prod", foreign.identity, ca_a.roots()).expect("context");
            let outcome = handshake_contexts(&server, &client, "n1").await;
            let (code, _) = local_failure(outcome.server);
            assert_eq!(code, crypto_code(alert), "{}", ca_b.cluster());
            // TLS 1.3: the client may believe it connected; the refusal arrives afterwards.
            assert_eq!(remote_failure(outcome.client).await, crypto_code(alert));
        }
    }

    #[tokio::test]
    async fn client_of_another_cluster_signed_by_the_same_ca_is_rejected() {
        let ca = ca("prod");
        let server = context(&ca, "n1");
        // A client of cluster "prod" (so it expects spiffe://prod/node/n1) holding a
        // certificate that says "staging": TlsContext::new refuses that pairing, so build it
        // by hand to see what the server does with it.
        let staging = node_with(&ca, "n2", &NodeCertOptions::default().cluster("staging"));
        let mut client = context(&ca, "n2");
        client.local_id = staging.identity.spiffe_id().clone();
        client.identity = staging.identity;
        let outcome = handshake_contexts(&server, &client, "n1").await;
        let (code, reason) = local_failure(outcome.server);
        assert_eq!(code, crypto_code(AlertDescription::CertificateUnknown));
        assert!(reason.contains("spiffe://staging/node/n2"), "{reason}");
        assert_eq!(
            remote_failure(outcome.client).await,
            crypto_code(AlertDescription::CertificateUnknown)
        );
    }

    #[tokio::test]
    async fn client_without_certificate_is_rejected() {
        let ca = ca("prod");
        let server = context(&ca, "n1");
        let client = context(&ca, "n2");
        let verifier = Arc::new(NodeServerVerifier {
            policy: Arc::clone(&client.policy),
            expected: server.local_id().clone(),
        });
        let mut rustls_client =
            rustls::ClientConfig::builder_with_provider(Arc::clone(&client.policy.provider))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .expect("TLS 1.3")
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth();
        rustls_client.alpn_protocols = vec![ALPN.to_vec()];
        let quic = QuicClientConfig::try_from(rustls_client).expect("QUIC client");
        let outcome = handshake(
            server.server_config().expect("server config"),
            quinn::ClientConfig::new(Arc::new(quic)),
        )
        .await;
        let (code, _) = local_failure(outcome.server);
        assert_eq!(code, crypto_code(AlertDescription::CertificateRequired));
        assert_eq!(
            remote_failure(outcome.client).await,
            crypto_code(AlertDescription::CertificateRequired)
        );
    }

    #[tokio::test]
    async fn expired_server_certificate_is_rejected() {
        let ca = ca("prod");
        let now = OffsetDateTime::now_utc();
        let expired = NodeCertOptions::default()
            .not_before(now - Duration::days(30))
            .not_after(now - Duration::days(1));
        let server = context_with(&ca, "n1", &expired);
        let client = context(&ca, "n2");
        let outcome = handshake_contexts(&server, &client, "n1").await;
        let (code, _) = local_failure(outcome.client);
        assert_eq!(code, crypto_code(AlertDescription::CertificateExpired));
        assert_eq!(
            remote_failure(outcome.server).await,
            crypto_code(AlertDescription::CertificateExpired)
        );
    }

    #[tokio::test]
    async fn expired_client_certificate_is_rejected() {
        let ca = ca("prod");
        let now = OffsetDateTime::now_utc();
        let expired = NodeCertOptions::default()
            .not_before(now - Duration::days(30))
            .not_after(now - Duration::days(1));
        let server = context(&ca, "n1");
        let client = context_with(&ca, "n2", &expired);
        let outcome = handshake_contexts(&server, &client, "n1").await;
        let (code, _) = local_failure(outcome.server);
        assert_eq!(code, crypto_code(AlertDescription::CertificateExpired));
        assert_eq!(
            remote_failure(outcome.client).await,
            crypto_code(AlertDescription::CertificateExpired)
        );
    }

    #[tokio::test]
    async fn alpn_mismatch_is_rejected() {
        let ca = ca("prod");
        let server = context(&ca, "n1");
        let client = context(&ca, "n2");
        let mut rustls_server = server.rustls_server_config().expect("server config");
        rustls_server.alpn_protocols = vec![b"quicraft/2".to_vec()];
        let quic = QuicServerConfig::try_from(rustls_server).expect("QUIC server");
        let outcome = handshake(
            quinn::ServerConfig::with_crypto(Arc::new(quic)),
            client.client_config("n1").expect("client config"),
        )
        .await;
        let (code, _) = local_failure(outcome.server);
        assert_eq!(code, crypto_code(AlertDescription::NoApplicationProtocol));
        assert_eq!(
            remote_failure(outcome.client).await,
            crypto_code(AlertDescription::NoApplicationProtocol)
        );
    }

    #[test]
    fn configs_have_alpn_and_no_0rtt_or_resumption() {
        let ca = ca("prod");
        let tls = context(&ca, "n1");
        let server = tls.rustls_server_config().expect("server config");
        assert_eq!(server.alpn_protocols, vec![ALPN.to_vec()]);
        assert_eq!(server.max_early_data_size, 0);
        assert_eq!(server.send_tls13_tickets, 0);
        assert!(!server.session_storage.can_cache());
        let client = tls.rustls_client_config("n2").expect("client config");
        assert_eq!(client.alpn_protocols, vec![ALPN.to_vec()]);
        assert!(!client.enable_early_data);
        assert!(!client.enable_sni);
        assert!(tls.server_config().is_ok());
        assert!(tls.client_config("n2").is_ok());
        assert!(matches!(
            tls.client_config("n/2"),
            Err(TlsError::InvalidNodeId { .. })
        ));
    }

    /// Runs a handshake between two in-memory rustls connections (no QUIC, so that TLS 1.2
    /// can be tried); returns the first error of each side.
    fn memory_handshake(
        client: rustls::ClientConfig,
        server: rustls::ServerConfig,
    ) -> (Option<rustls::Error>, Option<rustls::Error>) {
        let name = ServerName::try_from(SERVER_NAME).expect("valid name");
        let mut client = rustls::ClientConnection::new(Arc::new(client), name).expect("client");
        let mut server = rustls::ServerConnection::new(Arc::new(server)).expect("server");
        let (mut client_err, mut server_err) = (None, None);
        for _ in 0..16 {
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).expect("write to memory");
            }
            if !wire.is_empty() && server_err.is_none() {
                server
                    .read_tls(&mut wire.as_slice())
                    .expect("read from memory");
                server_err = server.process_new_packets().err();
            }
            let mut wire = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut wire).expect("write to memory");
            }
            if !wire.is_empty() && client_err.is_none() {
                client
                    .read_tls(&mut wire.as_slice())
                    .expect("read from memory");
                client_err = client.process_new_packets().err();
            }
            if client_err.is_some() || server_err.is_some() {
                break;
            }
        }
        (client_err, server_err)
    }

    #[test]
    fn tls12_is_refused_by_both_verifiers() {
        let ca = ca("prod");
        // The plain WebPKI client below checks the server name.
        let server = context_with(
            &ca,
            "n1",
            &NodeCertOptions::default().dns_names([SERVER_NAME]),
        );
        let client = context(&ca, "n2");
        let provider = Arc::clone(&server.policy.provider);
        let tls12 = [&rustls::version::TLS12];
        let chain = |tls: &TlsContext| tls.identity().chain().to_vec();
        let key = |tls: &TlsContext| tls.identity().key().clone_key();

        // Our server verifier inside a TLS 1.2 client: the server's TLS 1.2 signature is
        // refused.
        let verifier = Arc::new(NodeServerVerifier {
            policy: Arc::clone(&client.policy),
            expected: server.local_id().clone(),
        });
        let tls12_client = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&tls12)
            .expect("TLS 1.2")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(chain(&client), key(&client))
            .expect("client config");
        let plain_server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&tls12)
            .expect("TLS 1.2")
            .with_no_client_auth()
            .with_single_cert(chain(&server), key(&server))
            .expect("server config");
        let (client_err, _) = memory_handshake(tls12_client, plain_server);
        assert_eq!(
            client_err,
            Some(rustls::Error::PeerIncompatible(
                PeerIncompatible::Tls13RequiredForQuic
            ))
        );

        // Our client verifier inside a TLS 1.2 server: the client's TLS 1.2 signature is
        // refused.
        let webpki = WebPkiClientVerifier::builder_with_provider(
            Arc::clone(&server.policy.roots),
            Arc::clone(&provider),
        )
        .build()
        .expect("verifier");
        let verifier = Arc::new(ClusterClientVerifier {
            policy: Arc::clone(&server.policy),
            webpki,
        });
        assert!(verifier.offer_client_auth() && verifier.client_auth_mandatory());
        let tls12_server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&tls12)
            .expect("TLS 1.2")
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain(&server), key(&server))
            .expect("server config");
        let plain_client = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&tls12)
            .expect("TLS 1.2")
            .with_root_certificates(Arc::clone(&client.policy.roots))
            .with_client_auth_cert(chain(&client), key(&client))
            .expect("client config");
        let (_, server_err) = memory_handshake(plain_client, tls12_server);
        assert_eq!(
            server_err,
            Some(rustls::Error::PeerIncompatible(
                PeerIncompatible::Tls13RequiredForQuic
            ))
        );

        // Our configs themselves never speak TLS 1.2.
        let plain_server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&tls12)
            .expect("TLS 1.2")
            .with_no_client_auth()
            .with_single_cert(chain(&server), key(&server))
            .expect("server config");
        let ours = client.rustls_client_config("n1").expect("client config");
        let (client_err, server_err) = memory_handshake(ours, plain_server);
        assert!(client_err.is_some() || server_err.is_some());
    }

    #[test]
    fn context_requires_an_identity_of_its_cluster() {
        let ca = ca("prod");
        let staging = node_with(&ca, "n1", &NodeCertOptions::default().cluster("staging"));
        let err = TlsContext::new("prod", staging.identity.clone(), ca.roots())
            .expect_err("wrong cluster");
        assert!(matches!(err, TlsError::IdentityMismatch { .. }), "{err}");
        assert!(matches!(
            TlsContext::new("Prod", staging.identity, ca.roots()),
            Err(TlsError::InvalidClusterName { .. })
        ));
        let tls = context(&ca, "n1");
        assert_eq!(tls.local_id().to_uri(), "spiffe://prod/node/n1");
        assert_eq!(tls.cluster(), "prod");
        assert!(!format!("{tls:?}").contains("PRIVATE"));
    }

    #[test]
    fn peer_spiffe_id_needs_a_certificate_chain() {
        assert!(matches!(
            peer_spiffe_id(None),
            Err(TlsError::NoCertificate { .. })
        ));
        assert!(matches!(
            peer_spiffe_id(Some(Box::new(42u32))),
            Err(TlsError::NoCertificate { .. })
        ));
        let empty: Vec<CertificateDer<'static>> = Vec::new();
        assert!(matches!(
            peer_spiffe_id(Some(Box::new(empty))),
            Err(TlsError::NoCertificate { .. })
        ));
        let ca = ca("prod");
        let tls = context(&ca, "n4");
        let chain = tls.identity().chain().to_vec();
        assert_eq!(
            peer_spiffe_id(Some(Box::new(chain))).expect("id").node(),
            "n4"
        );
    }
}
