//! Mutual TLS and identity binding of the QUIC transport, seen from outside: every way a
//! peer can fail to prove who it is ends in the typed [`Error::Authentication`] (not a generic
//! connection error), and nothing it sent reaches the consumer.

#![allow(clippy::unwrap_used)]

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use quicraft::tls::{NodeCertOptions, TlsContext};
use quicraft::{
    AppendEntriesRequest, Command, Error, Incoming, InstallSnapshotRequest, Log, QuicTransport,
    RequestPreVoteRequest, RequestVoteRequest, RequestVoteResponse, RpcHeader, ServerAddress,
    ServerId, TimeoutNowRequest, Transport,
};
use quinn::{ConnectionError, Endpoint};
use time::OffsetDateTime;

use common::Fixture;
use common::tls::{client_presenting, client_without_certificate};

/// Bound on any single wait, so a broken transport fails the test instead of hanging it.
const GUARD: Duration = Duration::from_secs(10);

/// A backoff long enough that a second call in the same test is always within it.
const LONG_BACKOFF: Duration = Duration::from_secs(60);

/// TLS alerts travel as QUIC transport error codes 0x100 + alert description.
const TLS_ALERT_CODES: std::ops::Range<u64> = 0x100..0x200;
/// rustls's `certificate_required` alert (116), as a QUIC error code.
const CERTIFICATE_REQUIRED: u64 = 0x100 + 116;

async fn guarded<F: Future>(what: &str, fut: F) -> F::Output {
    common::within(GUARD, what, fut).await
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn vote(id: &str, addr: impl Into<ServerAddress>, term: u64) -> RequestVoteRequest {
    RequestVoteRequest {
        header: RpcHeader::new(id, addr),
        term,
        last_log_index: 10,
        last_log_term: 2,
        leadership_transfer: false,
    }
}

/// `from` asks the node `id` at `at` for a vote, with `from`'s own id in the header.
async fn call(
    from: &QuicTransport,
    id: &str,
    at: SocketAddr,
    term: u64,
) -> Result<RequestVoteResponse, Error> {
    let request = vote(from.local_id().as_str(), from.local_addr(), term);
    guarded(
        "the RequestVote call",
        from.request_vote(&ServerId::from(id), &ServerAddress::from(at), request),
    )
    .await
}

/// The message of an [`Error::Authentication`]; any other outcome fails the test.
#[track_caller]
fn expect_authentication<T: std::fmt::Debug>(result: Result<T, Error>, what: &str) -> String {
    match result {
        Err(Error::Authentication(message)) => message,
        other => panic!("{what}: expected Error::Authentication, got {other:?}"),
    }
}

#[track_caller]
fn assert_nothing_delivered(incoming: &mut Incoming, what: &str) {
    if let Some(rpc) = incoming.try_recv() {
        panic!("{what}: the consumer received {:?}", rpc.command());
    }
}

/// Answers every RequestVote with a granted vote from `name`, echoing the term.
fn spawn_voter(mut incoming: Incoming, name: &'static str) {
    tokio::spawn(async move {
        while let Some(rpc) = incoming.recv().await {
            let Command::RequestVote(request) = rpc.command() else {
                panic!("unexpected RPC {:?}", rpc.command());
            };
            let response = RequestVoteResponse {
                header: RpcHeader::new(name, name),
                term: request.term,
                granted: true,
            };
            rpc.respond(Ok(response.into()));
        }
    });
}

/// `kind | len u32 BE | body`, a quicraft frame.
fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A well-formed RequestVote frame whose header names `id`.
fn vote_frame(id: &str, term: u64) -> Vec<u8> {
    frame(
        0x02,
        &postcard::to_stdvec(&vote(id, "127.0.0.1:1", term)).unwrap(),
    )
}

/// Dials `addr` from a fresh raw endpoint with `config` and tries one RequestVote (header
/// `id`) on it. The handshake or the stream must fail; returns the connection error that
/// ended it (for a client the server refused after TLS 1.3 let it believe it was connected,
/// this is the connection's close reason).
async fn raw_attempt(
    config: quinn::ClientConfig,
    addr: SocketAddr,
    server_name: &str,
    id: &str,
) -> ConnectionError {
    let endpoint = Endpoint::client(loopback()).unwrap();
    let connecting = endpoint.connect_with(config, addr, server_name).unwrap();
    let error = match guarded("the raw handshake", connecting).await {
        Err(error) => error,
        Ok(conn) => {
            let exchange = async {
                let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
                send.write_all(&vote_frame(id, 1))
                    .await
                    .map_err(|e| e.to_string())?;
                send.finish().map_err(|e| e.to_string())?;
                recv.read_to_end(1 << 20).await.map_err(|e| e.to_string())
            };
            let outcome = guarded("the raw exchange", exchange).await;
            assert!(
                outcome.is_err(),
                "a refused client got an answer: {outcome:?}"
            );
            let closed = guarded("the connection close", conn.closed()).await;
            assert_eq!(conn.close_reason(), Some(closed.clone()));
            closed
        }
    };
    endpoint.close(0u32.into(), b"done");
    error
}

/// The QUIC error code of a connection the *peer* closed.
#[track_caller]
fn remote_close_code(error: &ConnectionError) -> u64 {
    match error {
        ConnectionError::ConnectionClosed(close) => u64::from(close.error_code),
        other => panic!("expected the peer to close the connection, got {other:?}"),
    }
}

/// The QUIC error code of a handshake this side refused.
#[track_caller]
fn local_refusal_code(error: &ConnectionError) -> u64 {
    match error {
        ConnectionError::TransportError(e) => u64::from(e.code),
        other => panic!("expected a local TLS refusal, got {other:?}"),
    }
}

/// A raw QUIC server that counts the connection attempts it sees. quinn does not start a
/// handshake before the `Incoming` is accepted, so every handshake is counted before it can
/// complete or fail.
struct CountingServer {
    addr: SocketAddr,
    attempts: Arc<AtomicUsize>,
    _endpoint: Endpoint,
}

fn counting_server(config: quinn::ServerConfig) -> CountingServer {
    let endpoint = Endpoint::server(config, loopback()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let attempts = Arc::new(AtomicUsize::new(0));
    let counter = attempts.clone();
    let accepting = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(conn) = incoming.await {
                    conn.closed().await;
                }
            });
        }
    });
    CountingServer {
        addr,
        attempts,
        _endpoint: endpoint,
    }
}

fn expired() -> NodeCertOptions {
    let now = OffsetDateTime::now_utc();
    NodeCertOptions::default()
        .not_before(now - time::Duration::days(30))
        .not_after(now - time::Duration::days(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_certificate_is_refused_with_a_tls_alert() {
    common::init_tracing();
    let fixture = Fixture::new("prod");
    let (n1, mut incoming) = fixture.node("n1").await;
    let addr = n1.local_socket_addr();

    for attempt in ["first", "second"] {
        let error = raw_attempt(
            client_without_certificate(&fixture),
            addr,
            "localhost",
            "n2",
        )
        .await;
        let code = remote_close_code(&error);
        assert!(
            TLS_ALERT_CODES.contains(&code),
            "{attempt} attempt: close reason is not a TLS alert: {error:?}"
        );
        assert_eq!(code, CERTIFICATE_REQUIRED, "{attempt} attempt: {error:?}");
        assert_nothing_delivered(&mut incoming, attempt);
    }
    assert!(n1.connections().is_empty(), "{:?}", n1.connections());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_of_another_ca_with_the_same_cluster_name_is_refused_both_ways() {
    common::init_tracing();
    let ours = Fixture::new("prod");
    let theirs = Fixture::new("prod");
    let (n1, mut n1_incoming) = ours.node("n1").await;
    let (n2, mut n2_incoming) = theirs.node("n2").await;

    // n2 (other CA) calls n1; then n1 calls n2 (a server from the other CA).
    for (caller, id, at, incoming) in [
        (&n2, "n1", n1.local_socket_addr(), &mut n1_incoming),
        (&n1, "n2", n2.local_socket_addr(), &mut n2_incoming),
    ] {
        for attempt in ["first", "second"] {
            let what = format!("{} -> {id}, {attempt} call", caller.local_id());
            expect_authentication(call(caller, id, at, 1).await, &what);
            assert_nothing_delivered(incoming, &what);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_of_another_ca_is_refused_by_the_server() {
    common::init_tracing();
    let ours = Fixture::new("prod");
    let theirs = Fixture::new("prod");
    let (n1, mut incoming) = ours.node("n1").await;
    // Trusts our CA (so it accepts n1), but its own certificate is signed by another CA: only
    // the server's check can stop it.
    let forged = ours.config_for(theirs.identity("n2"));
    let (n2, _) = QuicTransport::bind(forged).await.unwrap();

    for attempt in ["first", "second"] {
        let message = expect_authentication(
            call(&n2, "n1", n1.local_socket_addr(), 1).await,
            &format!("{attempt} call"),
        );
        assert!(!message.is_empty());
        assert_nothing_delivered(&mut incoming, attempt);
    }
}

#[tokio::test]
async fn transport_cannot_bind_with_a_certificate_of_another_cluster() {
    let fixture = Fixture::new("prod");
    let other = fixture.issue_of_cluster("other", "n1");
    match QuicTransport::bind(fixture.config_for(other.identity)).await {
        Err(Error::Config(quicraft::ConfigError::Tls(error))) => {
            let message = error.to_string();
            assert!(message.contains("spiffe://other/node/n1"), "{message}");
        }
        Err(other) => panic!("expected Error::Config, got {other:?}"),
        Ok(_) => panic!("a node of cluster prod was bound with a certificate of cluster other"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_of_another_cluster_signed_by_the_same_ca_is_refused() {
    common::init_tracing();
    let fixture = Fixture::new("prod");
    let (n2, mut incoming) = fixture.node("n2").await;
    let addr = n2.local_socket_addr();
    let other = fixture.issue_of_cluster("other", "n1");

    // As a node of cluster "other" would dial: its own verifier refuses n2 (wrong cluster), so
    // no connection is made and nothing is delivered.
    let context = TlsContext::new("other", other.identity.clone(), fixture.ca.roots()).unwrap();
    for attempt in ["first", "second"] {
        let error = raw_attempt(context.client_config("n2").unwrap(), addr, "quicraft", "n1").await;
        let code = local_refusal_code(&error);
        assert!(TLS_ALERT_CODES.contains(&code), "{attempt}: {error:?}");
        assert_nothing_delivered(&mut incoming, attempt);
    }

    // A client that accepts any server and presents the other-cluster certificate: now the
    // server's own check is all that stands in the way, and it refuses with a TLS alert.
    for attempt in ["first", "second"] {
        let error = raw_attempt(client_presenting(&other), addr, "quicraft", "n1").await;
        let code = remote_close_code(&error);
        assert!(TLS_ALERT_CODES.contains(&code), "{attempt}: {error:?}");
        assert_nothing_delivered(&mut incoming, attempt);
    }
    assert!(n2.connections().is_empty(), "{:?}", n2.connections());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_certificate_of_another_cluster_signed_by_the_same_ca_is_refused() {
    common::init_tracing();
    let fixture = Fixture::new("prod");
    let other = fixture.issue_of_cluster("other", "n1");
    // A QuicTransport cannot run with that certificate, so serve it from raw quinn.
    let server_config = TlsContext::new("other", other.identity, fixture.ca.roots())
        .unwrap()
        .server_config()
        .unwrap();
    let server = counting_server(server_config);
    let (n2, _) = fixture.node("n2").await;

    for attempt in ["first", "second"] {
        expect_authentication(
            call(&n2, "n1", server.addr, 1).await,
            &format!("{attempt} call"),
        );
    }
    assert!(server.attempts.load(Ordering::SeqCst) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_presenting_another_id_than_expected_is_refused() {
    common::init_tracing();
    let fixture = Fixture::new("prod");
    let (n1, _) = fixture.node("n1").await;
    let (n3, mut incoming) = fixture.node("n3").await;

    for attempt in ["first", "second"] {
        let message = expect_authentication(
            call(&n1, "n2", n3.local_socket_addr(), 1).await,
            &format!("{attempt} call"),
        );
        assert!(!message.is_empty());
        assert_nothing_delivered(&mut incoming, attempt);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_header_naming_another_node_is_refused() {
    common::init_tracing();
    let fixture = Fixture::new("prod");
    let (n1, _) = fixture.node("n1").await;
    let (n2, mut incoming) = fixture.node("n2").await;
    let target = (ServerId::from("n2"), n2.local_addr());

    for attempt in ["first", "second"] {
        let forged = vote("n9", n1.local_addr(), 1);
        let result = guarded(
            "the forged call",
            n1.request_vote(&target.0, &target.1, forged),
        )
        .await;
        let message = expect_authentication(result, &format!("{attempt} forged call"));
        assert!(message.contains("n9"), "{message}");
        assert_nothing_delivered(&mut incoming, attempt);
    }

    // The refusal concerned that request only: an honest one on the same transport works.
    spawn_voter(incoming, "n2");
    let honest = vote("n1", n1.local_addr(), 5);
    let response = guarded(
        "the honest call",
        n1.request_vote(&target.0, &target.1, honest),
    )
    .await
    .unwrap();
    assert_eq!(response.term, 5);
    assert!(response.granted);
}

/// The header check covers every kind of request, pipelined appends and heartbeats included,
/// not only votes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_request_with_a_forged_header_is_refused() {
    common::init_tracing();
    let fixture = Fixture::new("prod");
    let (n1, _) = fixture.node("n1").await;
    let (n2, mut incoming) = fixture.node("n2").await;
    let (id, at) = (ServerId::from("n2"), n2.local_addr());
    let forged = RpcHeader::new("n9", n1.local_addr());

    let heartbeat = AppendEntriesRequest::heartbeat(forged.clone(), 1);
    let append = AppendEntriesRequest {
        entries: vec![Log::command(1, 1, Bytes::from_static(b"x"))],
        ..AppendEntriesRequest::heartbeat(forged.clone(), 1)
    };
    let pre_vote = RequestPreVoteRequest {
        header: forged.clone(),
        term: 1,
        last_log_index: 0,
        last_log_term: 0,
    };
    let timeout_now = TimeoutNowRequest {
        header: forged.clone(),
    };
    let snapshot = InstallSnapshotRequest {
        header: forged.clone(),
        snapshot_version: 1,
        term: 1,
        last_log_index: 1,
        last_log_term: 1,
        configuration: Bytes::from_static(b"n1,n2"),
        configuration_index: 1,
        size: 4,
    };

    let result = guarded("heartbeat", n1.append_entries(&id, &at, heartbeat)).await;
    expect_authentication(result, "heartbeat");
    let result = guarded("append", n1.append_entries(&id, &at, append.clone())).await;
    expect_authentication(result, "append");
    let result = guarded("pre-vote", n1.request_pre_vote(&id, &at, pre_vote)).await;
    expect_authentication(result, "pre-vote");
    let result = guarded("timeout-now", n1.timeout_now(&id, &at, timeout_now)).await;
    expect_authentication(result, "timeout-now");
    let data: &'static [u8] = b"data";
    let result = guarded(
        "install-snapshot",
        n1.install_snapshot(&id, &at, snapshot, data),
    )
    .await;
    expect_authentication(result, "install-snapshot");

    let pipeline = guarded("pipeline open", n1.append_entries_pipeline(&id, &at))
        .await
        .unwrap();
    guarded("pipeline send", pipeline.send(append))
        .await
        .unwrap();
    let completion = guarded("pipeline completion", pipeline.next())
        .await
        .expect("a completion");
    expect_authentication(completion.response, "pipelined append");
    pipeline.close();

    assert_nothing_delivered(&mut incoming, "forged requests of every kind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_client_certificate_is_refused() {
    common::init_tracing();
    let fixture = Fixture::new("prod");
    let (n1, mut incoming) = fixture.node("n1").await;
    let expired_n2 = fixture.config_for(fixture.issue_with("n2", &expired()).identity);
    let (n2, _) = QuicTransport::bind(expired_n2).await.unwrap();

    for attempt in ["first", "second"] {
        expect_authentication(
            call(&n2, "n1", n1.local_socket_addr(), 1).await,
            &format!("{attempt} call"),
        );
        assert_nothing_delivered(&mut incoming, attempt);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_server_certificate_is_refused() {
    common::init_tracing();
    let fixture = Fixture::new("prod");
    let expired_n1 = fixture.config_for(fixture.issue_with("n1", &expired()).identity);
    let (n1, mut incoming) = QuicTransport::bind(expired_n1).await.unwrap();
    let (n2, _) = fixture.node("n2").await;

    for attempt in ["first", "second"] {
        expect_authentication(
            call(&n2, "n1", n1.local_socket_addr(), 1).await,
            &format!("{attempt} call"),
        );
        assert_nothing_delivered(&mut incoming, attempt);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_of_different_clusters_never_talk() {
    common::init_tracing();
    let alpha = Fixture::new("alpha");
    let beta = Fixture::new("beta");
    let (a1, mut a1_incoming) = alpha.node("a1").await;
    let (b1, mut b1_incoming) = beta.node("b1").await;

    for (caller, id, at, incoming) in [
        (&a1, "b1", b1.local_socket_addr(), &mut b1_incoming),
        (&b1, "a1", a1.local_socket_addr(), &mut a1_incoming),
    ] {
        for attempt in ["first", "second"] {
            let what = format!("{} -> {id}, {attempt} call", caller.local_id());
            expect_authentication(call(caller, id, at, 1).await, &what);
            assert_nothing_delivered(incoming, &what);
        }
    }
    // Same node ids on both sides do not help either.
    let (a2, _) = alpha.node("x").await;
    let (b2, mut b2_incoming) = beta.node("x").await;
    expect_authentication(
        call(&a2, "x", b2.local_socket_addr(), 1).await,
        "a x -> b x",
    );
    assert_nothing_delivered(&mut b2_incoming, "a x -> b x");
}

/// A server refused by the caller's own verifier: the repeated call within the backoff gets
/// the same typed error without another handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_server_is_not_dialled_again_within_the_backoff() {
    common::init_tracing();
    let ours = Fixture::new("prod");
    let theirs = Fixture::new("prod");
    let server_config = TlsContext::new("prod", theirs.identity("n1"), theirs.ca.roots())
        .unwrap()
        .server_config()
        .unwrap();
    let server = counting_server(server_config);
    let config = ours
        .config("n2")
        .reconnect_backoff(LONG_BACKOFF, LONG_BACKOFF);
    let (n2, _) = QuicTransport::bind(config).await.unwrap();

    expect_authentication(call(&n2, "n1", server.addr, 1).await, "first call");
    assert_eq!(server.attempts.load(Ordering::SeqCst), 1);

    let started = tokio::time::Instant::now();
    expect_authentication(call(&n2, "n1", server.addr, 2).await, "call within backoff");
    assert_eq!(
        server.attempts.load(Ordering::SeqCst),
        1,
        "the call within the backoff made a new handshake"
    );
    assert!(started.elapsed() < Duration::from_secs(1), "not fast");
}

/// A caller whose certificate the server refused (seen only after TLS 1.3 let the caller
/// believe it was connected): the repeated call within the backoff gets the same typed error
/// without another handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_client_does_not_dial_again_within_the_backoff() {
    common::init_tracing();
    let ours = Fixture::new("prod");
    let theirs = Fixture::new("prod");
    let server_config = TlsContext::new("prod", ours.identity("n1"), ours.ca.roots())
        .unwrap()
        .server_config()
        .unwrap();
    let server = counting_server(server_config);
    let forged = ours
        .config_for(theirs.identity("n2"))
        .reconnect_backoff(LONG_BACKOFF, LONG_BACKOFF);
    let (n2, _) = QuicTransport::bind(forged).await.unwrap();

    expect_authentication(call(&n2, "n1", server.addr, 1).await, "first call");
    assert_eq!(server.attempts.load(Ordering::SeqCst), 1);

    let started = tokio::time::Instant::now();
    expect_authentication(call(&n2, "n1", server.addr, 2).await, "call within backoff");
    assert_eq!(
        server.attempts.load(Ordering::SeqCst),
        1,
        "the call within the backoff made a new handshake"
    );
    assert!(started.elapsed() < Duration::from_secs(1), "not fast");
}
