//! Peer-provided strings in the node's log and errors (issue 14, item 4): a header id with a
//! newline cannot forge a log line, and an 8 MiB header id is refused at decode without
//! reaching the log.
//!
//! Each test runs on a current-thread runtime with a subscriber installed for that thread, so
//! every line both nodes log (their tasks run on that thread) is captured.

#![allow(clippy::unwrap_used)]

mod common;

use common::Fixture;
use common::logs::capture;
use quicraft::{
    Error, ErrorCode, MAX_HEADER_ID_LEN, QuicTransport, RequestVoteRequest, RpcHeader, Transport,
};

/// `n1` sends `n2` a RequestVote whose header claims `id`.
async fn vote_claiming(from: &QuicTransport, to: &QuicTransport, id: &str) -> Error {
    let request = RequestVoteRequest {
        header: RpcHeader::new(id, from.local_addr()),
        ..common::vote_from(from, 1)
    };
    from.request_vote(to.local_id(), &to.local_addr(), request)
        .await
        .expect_err("the request is refused")
}

async fn two_nodes(fixture: &Fixture) -> (QuicTransport, QuicTransport, quicraft::Incoming) {
    let (n1, _) = fixture.node("n1").await;
    let (n2, n2_incoming) = fixture.node("n2").await;
    (n1, n2, n2_incoming)
}

/// A header id `n1\n<a forged log line>`: the refusal's warning shows the id escaped (`\n`),
/// so no captured line starts with the forged text, and the error the caller gets has no
/// newline either.
#[tokio::test]
async fn a_header_id_with_a_newline_does_not_forge_a_log_line() {
    let (captured, _guard) = capture();
    let fixture = Fixture::new("logs");
    let (n1, n2, _incoming) = two_nodes(&fixture).await;
    let forged = "2030-01-01T00:00:00.000000Z  INFO quicraft: FORGED admin logged in";
    let error = vote_claiming(&n1, &n2, &format!("n1\n{forged}")).await;
    // IDENTITY_MISMATCH reaches the caller as an authentication failure.
    assert!(matches!(error, Error::Authentication(_)), "{error:?}");
    assert!(error.to_string().contains("n1\\n2030-01-01"), "{error}");
    assert!(!error.to_string().contains('\n'), "{error}");
    n1.close().await;
    n2.close().await;

    let log = captured.text();
    assert!(
        log.contains("request header names another node than the certificate"),
        "the refusal was not logged:\n{log}"
    );
    assert!(
        log.contains("n1\\n2030-01-01"),
        "the id is not escaped:\n{log}"
    );
    for line in log.lines() {
        assert!(!line.starts_with(forged), "forged log line:\n{log}");
    }
}

/// An 8 MiB header id (under the 16 MiB message limit) is refused at decode (`BAD_REQUEST`,
/// not the identity check's `IDENTITY_MISMATCH`), and neither the log nor the caller's error carries it.
#[tokio::test]
async fn an_8_mib_header_id_is_refused_at_decode_without_being_logged() {
    let (captured, _guard) = capture();
    let fixture = Fixture::new("logs");
    let (n1, n2, _incoming) = two_nodes(&fixture).await;
    let huge = "A".repeat(8 * 1024 * 1024);
    let error = vote_claiming(&n1, &n2, &huge).await;
    match &error {
        Error::Remote(remote) => {
            assert_eq!(remote.code, ErrorCode::BAD_REQUEST, "{remote}");
            assert!(
                remote.message.len() < 1024,
                "{} bytes",
                remote.message.len()
            );
        }
        other => panic!("expected BAD_REQUEST, got {other:?}"),
    }
    // One byte over the limit is refused the same way; at the limit it is an identity check.
    let over = vote_claiming(&n1, &n2, &"A".repeat(MAX_HEADER_ID_LEN + 1)).await;
    assert!(
        matches!(&over, Error::Remote(r) if r.code == ErrorCode::BAD_REQUEST),
        "{over:?}"
    );
    let at = vote_claiming(&n1, &n2, &"A".repeat(MAX_HEADER_ID_LEN)).await;
    assert!(matches!(&at, Error::Authentication(_)), "{at:?}");
    n1.close().await;
    n2.close().await;

    let log = captured.text();
    assert!(
        log.contains("bad input on a request stream"),
        "the refusal was not logged:\n{log}"
    );
    assert!(log.len() < 64 * 1024, "the log grew by {} bytes", log.len());
    assert!(!log.contains(&"A".repeat(MAX_HEADER_ID_LEN + 1)));
}
