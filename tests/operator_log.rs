//! What an operator reads at the default level. A refused certificate is one warning line in
//! plain words, naming the node and what to check: a certificate from another CA says so (not
//! `UnknownIssuer`); one outside its validity gives its dates and points at this host's clock
//! (not UNIX seconds, and without claiming that peers will refuse this node when the fault may
//! be the local clock). An unreachable peer is one line per failed dial (once per backoff
//! period), not one per call.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::Fixture;
use common::logs::capture;
use quicraft::tls::{ClusterCa, NodeCertOptions};
use quicraft::{QuicTransport, RequestVoteRequest, RpcHeader, Transport};

/// The captured lines at WARN.
fn warnings(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|line| line.contains(" WARN "))
        .collect()
}

/// The captured text once a line contains `needle` (polled: the log has no notification).
async fn logged_eventually(captured: &common::logs::Captured, needle: &str) -> String {
    let wait = async {
        loop {
            let text = captured.text();
            if text.contains(needle) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("nothing logged {needle:?}:\n{}", captured.text()))
}

async fn vote(from: &QuicTransport, to: &QuicTransport) -> quicraft::Error {
    let request = common::vote_from(from, 1);
    tokio::time::timeout(
        Duration::from_secs(10),
        from.request_vote(to.local_id(), &to.local_addr(), request),
    )
    .await
    .expect("the call ends")
    .expect_err("the handshake is refused")
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_one_plain_line() {
    let (captured, _guard) = capture();
    let fixture = Fixture::new("plain");
    let other = ClusterCa::generate("plain").unwrap();
    let (n1, _) = fixture.node("n1").await;
    let stranger = other.issue_node("n2", &NodeCertOptions::default()).unwrap();
    let (n2, _) = QuicTransport::bind(fixture.config_for(stranger.identity))
        .await
        .unwrap();

    let error = vote(&n1, &n2).await;
    assert!(
        matches!(error, quicraft::Error::Authentication(_)),
        "{error:?}"
    );

    let text = captured.text();
    let warned = warnings(&text);
    let refusal: Vec<_> = warned
        .iter()
        .filter(|line| line.contains("refusing node n2"))
        .collect();
    assert_eq!(
        refusal.len(),
        1,
        "one line on the refusing side: {warned:#?}"
    );
    assert!(
        refusal[0].contains("another cluster's CA"),
        "{}",
        refusal[0]
    );
    assert!(
        warned.iter().all(|line| !line.contains("UnknownIssuer")),
        "{warned:#?}"
    );
    // The refused side hears why, in words, once (when the close reaches it).
    let text = logged_eventually(&captured, "refused this node").await;
    let warned = warnings(&text);
    let heard: Vec<_> = warned
        .iter()
        .filter(|line| line.contains("refused this node"))
        .collect();
    assert_eq!(heard.len(), 1, "{warned:#?}");
    assert!(heard[0].contains("does not trust the CA"), "{}", heard[0]);
}

#[tokio::test]
async fn a_certificate_outside_its_validity_gives_dates_and_the_clock() {
    let (captured, _guard) = capture();
    let fixture = Fixture::new("plain");
    let (n1, _) = fixture.node("n1").await;
    let ended = time::OffsetDateTime::now_utc() - time::Duration::days(3);
    let expired = fixture.issue_with(
        "n2",
        &NodeCertOptions::default()
            .not_before(ended - time::Duration::days(10))
            .not_after(ended),
    );
    let (n2, _) = QuicTransport::bind(fixture.config_for(expired.identity))
        .await
        .unwrap();

    vote(&n1, &n2).await;

    let text = captured.text();
    let warned = warnings(&text);
    let day = ended.date().to_string();
    let own: Vec<_> = warned
        .iter()
        .filter(|line| line.contains("this node's own certificate"))
        .collect();
    assert_eq!(own.len(), 1, "{warned:#?}");
    assert!(
        own[0].contains(&day) && own[0].contains("check this host's clock"),
        "{}",
        own[0]
    );
    assert!(!own[0].contains("peers will refuse"), "{}", own[0]);
    let refusal: Vec<_> = warned
        .iter()
        .filter(|line| line.contains("refusing node n2"))
        .collect();
    assert_eq!(refusal.len(), 1, "{warned:#?}");
    assert!(refusal[0].contains(&day), "{}", refusal[0]);
}

#[tokio::test]
async fn an_unreachable_peer_is_one_line_per_backoff_period_not_per_call() {
    let (captured, _guard) = capture();
    let fixture = Fixture::new("plain");
    let (n1, _) = QuicTransport::bind(
        fixture
            .config("n1")
            .connect_timeout(Duration::from_millis(100))
            .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(400)),
    )
    .await
    .unwrap();
    // A port nobody listens on.
    let absent = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let request = RequestVoteRequest {
        header: RpcHeader::new("n1", n1.local_addr()),
        term: 1,
        last_log_index: 0,
        last_log_term: 0,
        leadership_transfer: false,
    };
    let mut calls = 0;
    // About 2 s of calls every 10 ms, as an engine's heartbeats would be: ~200 calls, a few
    // dials (the rest fail at once during the backoff).
    for _ in 0..200 {
        let result = n1
            .request_vote(&"n2".into(), &absent.to_string().into(), request.clone())
            .await;
        assert!(
            matches!(result, Err(quicraft::Error::Unreachable { .. })),
            "{result:?}"
        );
        calls += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let text = captured.text();
    let lines: Vec<_> = warnings(&text)
        .into_iter()
        .filter(|line| line.contains("node n2 unreachable"))
        .collect();
    assert!(
        !lines.is_empty() && lines.len() <= 8,
        "{calls} failed calls gave {} warnings: {lines:#?}",
        lines.len()
    );
    assert!(
        lines.iter().all(|line| line.contains("next dial in")),
        "{lines:#?}"
    );
}
