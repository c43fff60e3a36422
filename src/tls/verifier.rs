//! The two rustls certificate verifiers of a node. Both hand the peer's chain to the
//! [`TrustPolicy`], log a refusal in plain words (one line), and refuse TLS 1.2.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, PeerIncompatible, SignatureScheme};

use super::SpiffeId;
use super::explain;
use super::policy::{Accept, Side, TrustPolicy};

/// Listener side: requires a client certificate and accepts it only if the policy accepts
/// its chain for client use and it names a node of `cluster`.
#[derive(Debug)]
pub(crate) struct ClusterClientVerifier {
    pub(crate) policy: Arc<TrustPolicy>,
    pub(crate) cluster: String,
}

/// The signature checks both verifiers share: TLS 1.3 only, through the trust policy's
/// algorithms.
macro_rules! signatures_by_policy {
    () => {
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
            self.policy.verify_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.policy.signature_schemes()
        }
    };
}

impl ClientCertVerifier for ClusterClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.policy.root_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let accept = Accept::NodeOf(&self.cluster);
        check(
            &self.policy,
            (end_entity, intermediates),
            now,
            Side::Client,
            accept,
        )
        .map(|()| ClientCertVerified::assertion())
        .map_err(|(words, error)| {
            tracing::warn!("refusing a peer that dialled this node: {words}");
            error
        })
    }

    signatures_by_policy!();
}

/// Dialler side: accepts a server certificate only if the policy accepts its chain for
/// server use and it names exactly the `expected` node. The TLS server name is ignored.
#[derive(Debug)]
pub(crate) struct NodeServerVerifier {
    pub(crate) policy: Arc<TrustPolicy>,
    pub(crate) expected: SpiffeId,
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
        let accept = Accept::Only(&self.expected);
        check(
            &self.policy,
            (end_entity, intermediates),
            now,
            Side::Server,
            accept,
        )
        .map(|()| ServerCertVerified::assertion())
        .map_err(|(words, error)| {
            let node = self.expected.node();
            tracing::warn!("refusing node {node} (dialled by this node): {words}");
            error
        })
    }

    signatures_by_policy!();
}

/// Runs the policy on a peer's chain; a refusal comes back in plain words (for the one
/// warning line each side logs) with rustls' error (for the alert).
fn check(
    policy: &TrustPolicy,
    (end_entity, intermediates): (&CertificateDer<'_>, &[CertificateDer<'_>]),
    now: UnixTime,
    side: Side,
    accept: Accept<'_>,
) -> Result<(), (String, rustls::Error)> {
    match policy.verify(end_entity, intermediates, now, side, accept) {
        Ok(_) => Ok(()),
        Err(refusal) => {
            let words = explain::refusal(&refusal, end_entity, &explain::whose(end_entity));
            Err((words, refusal.into_rustls()))
        }
    }
}

/// The error for a TLS 1.2 signature check: quicraft is TLS 1.3 only (so is QUIC).
fn tls12_refused() -> rustls::Error {
    rustls::Error::PeerIncompatible(PeerIncompatible::Tls13RequiredForQuic)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::generate::test_support::{ca, context, context_with};
    use crate::tls::{NodeCertOptions, RevocationLists, SERVER_NAME, TlsContext};

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
        let policy =
            Arc::new(TrustPolicy::new(&ca.roots(), RevocationLists::none()).expect("policy"));
        let provider = Arc::clone(policy.provider());
        let tls12 = [&rustls::version::TLS12];
        let chain = |tls: &TlsContext| tls.identity().chain().to_vec();
        let key = |tls: &TlsContext| tls.identity().key().clone_key();

        // Our server verifier inside a TLS 1.2 client: the server's TLS 1.2 signature is
        // refused.
        let verifier = Arc::new(NodeServerVerifier {
            policy: Arc::clone(&policy),
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
        let verifier = Arc::new(ClusterClientVerifier {
            policy: Arc::clone(&policy),
            cluster: "prod".to_owned(),
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
            .with_root_certificates(ca.roots().root_store().expect("roots"))
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
}
