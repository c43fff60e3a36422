//! Real QUIC handshakes over UDP on 127.0.0.1 between the rustls configurations of
//! [`TlsContext`]: mutual TLS succeeds between nodes of one cluster, and every way a peer can
//! fail to prove it is the expected node ends the handshake with the TLS alert that says why.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use quicraft::tls::{ALPN, ClusterCa, NodeCertOptions, SpiffeId, TlsContext};
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{Connection, ConnectionError, Endpoint, TransportErrorCode};
use rustls::AlertDescription;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};

use common::Fixture;
use common::tls::{client_presenting, client_without_certificate};

/// The server name quicraft's diallers pass to quinn (neither side checks it).
const SERVER_NAME: &str = "quicraft";

/// Both sides of one handshake attempt, with the endpoints kept alive.
struct Outcome {
    client: Result<Connection, ConnectionError>,
    server: Result<Connection, ConnectionError>,
    _endpoints: (Endpoint, Endpoint),
}

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// Runs one handshake between fresh endpoints on 127.0.0.1, the client passing
/// `server_name`.
async fn handshake_named(
    server: quinn::ServerConfig,
    client: quinn::ClientConfig,
    server_name: &str,
) -> Outcome {
    let server_ep = Endpoint::server(server, loopback()).expect("bind server");
    let client_ep = Endpoint::client(loopback()).expect("bind client");
    let addr = server_ep.local_addr().expect("server address");
    let accept = async {
        let incoming = server_ep.accept().await.expect("an incoming connection");
        incoming.await
    };
    let connect = async {
        client_ep
            .connect_with(client, addr, server_name)
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

/// [`handshake_named`] with quicraft's server name.
async fn handshake(server: quinn::ServerConfig, client: quinn::ClientConfig) -> Outcome {
    handshake_named(server, client, SERVER_NAME).await
}

/// Handshake between two contexts, the client dialling `expected`.
async fn handshake_contexts(server: &TlsContext, client: &TlsContext, expected: &str) -> Outcome {
    handshake(
        server.server_config().expect("server config"),
        client.client_config(expected).expect("client config"),
    )
    .await
}

/// A context for `node` of the fixture's cluster.
fn context(fx: &Fixture, node: &str) -> TlsContext {
    TlsContext::new(fx.cluster(), fx.identity(node), fx.ca.roots()).expect("TLS context")
}

/// A context for `node` of the fixture's cluster, its certificate issued with `opts`.
fn context_with(fx: &Fixture, node: &str, opts: &NodeCertOptions) -> TlsContext {
    let identity = fx.issue_with(node, opts).identity;
    TlsContext::new(fx.cluster(), identity, fx.ca.roots()).expect("TLS context")
}

/// Options for a certificate that expired yesterday.
fn expired() -> NodeCertOptions {
    let now = OffsetDateTime::now_utc();
    NodeCertOptions::default()
        .not_before(now - Duration::days(30))
        .not_after(now - Duration::days(1))
}

/// The SPIFFE id of a connection's peer, from the chain quinn reports.
fn peer_id(conn: &Connection) -> SpiffeId {
    let chain = conn
        .peer_identity()
        .expect("a peer identity")
        .downcast::<Vec<CertificateDer<'static>>>()
        .expect("a certificate chain");
    SpiffeId::from_certificate(&chain[0]).expect("a SPIFFE id")
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
    let fx = Fixture::new("prod");
    let n1 = context(&fx, "n1");
    let n2 = context(&fx, "n2");
    let outcome = handshake_contexts(&n1, &n2, "n1").await;
    let client = outcome.client.expect("client connects");
    let server = outcome.server.expect("server accepts");

    assert_eq!(peer_id(&client), *n1.local_id());
    assert_eq!(peer_id(&server), *n2.local_id());
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
    let fx = Fixture::new("prod");
    let n3 = context(&fx, "n3");
    let n1 = context(&fx, "n1");
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
    let fx = Fixture::new("prod");
    let staging = fx.issue_of_cluster("staging", "n1");
    let server = TlsContext::new("staging", staging.identity, fx.ca.roots()).expect("context");
    let client = context(&fx, "n2");
    let outcome = handshake_contexts(&server, &client, "n1").await;
    let (code, reason) = local_failure(outcome.client);
    assert_eq!(code, crypto_code(AlertDescription::CertificateUnknown));
    assert!(reason.contains("spiffe://staging/node/n1"), "{reason}");
    assert!(outcome.server.is_err());
}

#[tokio::test]
async fn client_from_another_ca_is_rejected() {
    let name = Some("quicraft prod CA");
    let validity = Duration::days(1);
    let ca_a = Fixture {
        ca: ClusterCa::generate_with("prod", name, validity).expect("CA"),
    };
    let server = context(&ca_a, "n1");
    // Another CA with the same name (as an attacker would make): its signature does not
    // verify under our root's key. Another CA with another name: unknown issuer.
    let same_name = ClusterCa::generate_with("prod", name, validity).expect("second CA");
    let other_name = ClusterCa::generate_with("prod", Some("other"), validity).expect("third");
    for (ca_b, alert) in [
        (same_name, AlertDescription::DecryptError),
        (other_name, AlertDescription::UnknownCA),
    ] {
        // Trusts the right roots, but its own certificate comes from another CA.
        let foreign = ca_b.issue_node("n2", &NodeCertOptions::default()).unwrap();
        let client = TlsContext::new("prod", foreign.identity, ca_a.ca.roots()).expect("context");
        let outcome = handshake_contexts(&server, &client, "n1").await;
        let (code, _) = local_failure(outcome.server);
        assert_eq!(code, crypto_code(alert), "{alert:?}");
        // TLS 1.3: the client may believe it connected; the refusal arrives afterwards.
        assert_eq!(remote_failure(outcome.client).await, crypto_code(alert));
    }
}

#[tokio::test]
async fn client_of_another_cluster_signed_by_the_same_ca_is_rejected() {
    let fx = Fixture::new("prod");
    let server = context(&fx, "n1");
    // A client that accepts any server and presents a certificate that says "staging"
    // (TlsContext::new refuses that pairing): what does the server do with it?
    let staging = fx.issue_of_cluster("staging", "n2");
    let outcome = handshake(
        server.server_config().expect("server config"),
        client_presenting(&staging),
    )
    .await;
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
    let fx = Fixture::new("prod");
    let server = context(&fx, "n1");
    // The plain WebPKI client checks the server name against the certificate's localhost.
    let outcome = handshake_named(
        server.server_config().expect("server config"),
        client_without_certificate(&fx),
        "localhost",
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
    let fx = Fixture::new("prod");
    let server = context_with(&fx, "n1", &expired());
    let client = context(&fx, "n2");
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
    let fx = Fixture::new("prod");
    let server = context(&fx, "n1");
    let client = context_with(&fx, "n2", &expired());
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
    let fx = Fixture::new("prod");
    let n1 = fx.issue("n1");
    let client = context(&fx, "n2");
    // Node n1's certificate served with another protocol version's ALPN.
    let key = PrivateKeyDer::from_pem_slice(n1.key_pem.as_bytes()).expect("key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut rustls_server = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(n1.identity.chain().to_vec(), key)
        .expect("server config");
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
