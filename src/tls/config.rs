//! The rustls configurations of the QUIC transport: a node's listener configuration and, for
//! each peer it dials, a client configuration.
//!
//! Both directions are TLS 1.3 only (QUIC requires it), use the ring crypto provider
//! explicitly (never the process default), negotiate ALPN [`ALPN`], and keep 0-RTT and session
//! resumption off: every connection runs a full handshake in which both certificates are
//! verified against the current [`TrustPolicy`] (roots and revocation lists; a reload builds
//! a new context, see `QuicTransport::reload_tls`).

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::NoServerSessionStorage;

use super::explain;
use super::policy::{Accept, Side, TrustPolicy};
use super::verifier::{ClusterClientVerifier, NodeServerVerifier};
use super::{CaRoots, Identity, RevocationLists, SpiffeId, TlsError, validate_cluster_name};

/// The ALPN protocol id of quicraft's wire protocol, version 1.
pub const ALPN: &[u8] = b"quicraft/1";

/// The TLS server name a dialler should pass to quinn's `connect_with`.
///
/// It is not checked by either side (identity is the SPIFFE id, see
/// [`TlsContext::client_config`]) and is not sent (SNI is off), but quinn needs a
/// syntactically valid name.
pub(crate) const SERVER_NAME: &str = "quicraft";

/// A node's TLS setup: its cluster, its own certificate and key, the CA roots it trusts and
/// the revocation lists it checks. Builds the quinn server configuration and, for each peer
/// to dial, a client configuration.
///
/// Cheap to clone.
#[derive(Clone)]
pub struct TlsContext {
    policy: Arc<TrustPolicy>,
    cluster: String,
    identity: Identity,
    local_id: SpiffeId,
}

impl TlsContext {
    /// Builds the context of a node of `cluster` from its identity and the cluster's CA roots,
    /// without revocation lists (see [`with_revocation`](Self::with_revocation)).
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
        let policy = TrustPolicy::new(&roots, RevocationLists::none())?;
        let (leaf, intermediates) = (identity.leaf(), &identity.chain()[1..]);
        let checked = policy.verify(
            leaf,
            intermediates,
            UnixTime::now(),
            Side::Server,
            Accept::AnyNode,
        );
        if let Err(refusal) = checked {
            let words = explain::refusal(&refusal, leaf, "this node's own certificate");
            // Outside its validity period, the fault may be this host's clock: then peers
            // with a correct clock accept the certificate, and saying they will not misleads.
            if explain::outside_validity_period(&refusal) {
                tracing::warn!(local_id = %local_id, "{words}");
            } else {
                tracing::warn!(local_id = %local_id, "{words}; peers will refuse it");
            }
        }
        Ok(Self {
            policy: Arc::new(policy),
            cluster: cluster.to_owned(),
            identity,
            local_id,
        })
    }

    /// The same context, refusing peers whose certificate is revoked by one of `lists`, on
    /// both sides of every handshake. Replaces earlier lists; empty lists turn checking off.
    pub fn with_revocation(self, lists: RevocationLists) -> Self {
        Self {
            policy: Arc::new(self.policy.with_revocation(lists)),
            ..self
        }
    }

    /// Checks a peer's certificate chain (leaf first) as a handshake would now: it chains to
    /// the CA roots, is valid, is not revoked, is a node certificate, and names a node of this
    /// cluster. Used to re-check live connections when the trust policy changes.
    ///
    /// # Errors
    /// [`TlsError::NoCertificate`]; [`TlsError::Rustls`] with the WebPKI failure (e.g.
    /// [`rustls::CertificateError::Revoked`]); [`TlsError::NotANodeCertificate`]; the
    /// identity errors of [`SpiffeId::from_certificate`]; [`TlsError::IdentityMismatch`] for
    /// a node of another cluster.
    pub(crate) fn verify_peer_chain(
        &self,
        chain: &[CertificateDer<'_>],
    ) -> Result<SpiffeId, TlsError> {
        let (leaf, intermediates) = chain.split_first().ok_or_else(|| TlsError::NoCertificate {
            what: "the peer's chain".to_owned(),
        })?;
        let accept = Accept::NodeOf(&self.cluster);
        let now = UnixTime::now();
        Ok(self
            .policy
            .verify(leaf, intermediates, now, Side::Server, accept)?)
    }

    /// This node's SPIFFE id (from its certificate).
    pub fn local_id(&self) -> &SpiffeId {
        &self.local_id
    }

    /// The cluster name.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// This node's certificate chain and key.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The quinn server configuration: TLS 1.3, ALPN [`ALPN`], 0-RTT off, and a client
    /// certificate required that chains to the CA roots, is valid now, is not revoked, and
    /// names exactly one node of this cluster. Transport parameters are left at quinn's
    /// defaults for the caller to set.
    ///
    /// # Errors
    /// [`TlsError::Rustls`] (e.g. the key does not match the certificate), [`TlsError::Quic`].
    pub fn server_config(&self) -> Result<quinn::ServerConfig, TlsError> {
        let crypto = QuicServerConfig::try_from(self.rustls_server_config()?)?;
        Ok(quinn::ServerConfig::with_crypto(Arc::new(crypto)))
    }

    /// The quinn client configuration for dialling node `expected_node` of this cluster:
    /// TLS 1.3, ALPN [`ALPN`], 0-RTT off, this node's certificate as client certificate, and
    /// a server certificate accepted only if it chains to the CA roots, is valid now, is not
    /// revoked, and names exactly `spiffe://<cluster>/node/<expected_node>`.
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
        let verifier = Arc::new(ClusterClientVerifier {
            policy: Arc::clone(&self.policy),
            cluster: self.cluster.clone(),
        });
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::clone(self.policy.provider()))
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
        let verifier = Arc::new(NodeServerVerifier {
            policy: Arc::clone(&self.policy),
            expected: SpiffeId::new(self.cluster.as_str(), expected_node)?,
        });
        let mut config =
            rustls::ClientConfig::builder_with_provider(Arc::clone(self.policy.provider()))
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
            .field("cluster", &self.cluster)
            .field("local_id", &self.local_id.to_uri())
            .field("roots", &self.policy.root_count())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::generate::test_support::{ca, context, node_of_cluster};

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

    #[test]
    fn context_requires_an_identity_of_its_cluster() {
        let ca = ca("prod");
        let staging = node_of_cluster(&ca, "staging", "n1");
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
