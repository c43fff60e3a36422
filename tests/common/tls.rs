//! Raw rustls clients for tests that need to get past the client's own checks: one that
//! accepts any server, one without a client certificate.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use quicraft::tls::GeneratedNode;
use quinn::crypto::rustls::QuicClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::Fixture;

/// Accepts any server certificate (but still checks the handshake signature), so that a test
/// can get far enough for the *server* to judge the client certificate.
#[derive(Debug)]
pub struct AcceptAnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // QUIC is TLS 1.3 only.
        Err(rustls::Error::General("TLS 1.2 is not used by QUIC".into()))
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

pub fn ring() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn tls13_client() -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier> {
    rustls::ClientConfig::builder_with_provider(ring())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
}

pub fn quinn_client(mut config: rustls::ClientConfig) -> quinn::ClientConfig {
    config.alpn_protocols = vec![quicraft::tls::ALPN.to_vec()];
    quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(config).unwrap()))
}

/// A raw client that trusts the cluster CA (standard WebPKI name check against the node
/// certificate's `localhost` SAN) and presents no client certificate at all.
pub fn client_without_certificate(fixture: &Fixture) -> quinn::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in fixture.ca.roots().certificates() {
        roots.add(cert.clone()).unwrap();
    }
    quinn_client(
        tls13_client()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A raw client that accepts any server and presents `node`'s certificate.
pub fn client_presenting(node: &GeneratedNode) -> quinn::ClientConfig {
    let key = PrivateKeyDer::from_pem_slice(node.key_pem.as_bytes()).unwrap();
    quinn_client(
        tls13_client()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(ring())))
            .with_client_auth_cert(node.identity.chain().to_vec(), key)
            .unwrap(),
    )
}
