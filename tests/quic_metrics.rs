//! What a QuicTransport records through the `metrics` facade, seen by a test recorder
//! (metrics-util's `DebuggingRecorder`, installed for this test binary alone): an RPC between
//! two in-process nodes counts its outcome and latency on the calling side and on the serving
//! side, with the peer and kind labels; a handler's error is a `remote_error`; the sampler
//! reports the path of the connection per peer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::Fixture;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use quicraft::{
    AppendEntriesRequest, AppendEntriesResponse, Command, Error, ErrorCode, RemoteError,
    RequestVoteRequest, RequestVoteResponse, Response, RpcHeader, Transport,
};

/// One series of the snapshot: its name, its labels sorted, its value.
type Series = (String, Vec<(String, String)>, DebugValue);

fn series(snapshotter: &Snapshotter) -> Vec<Series> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            (key.name().to_owned(), labels, value)
        })
        .collect()
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut labels: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    labels.sort();
    labels
}

fn find<'a>(all: &'a [Series], name: &str, pairs: &[(&str, &str)]) -> Option<&'a DebugValue> {
    let want = labels(pairs);
    all.iter()
        .find(|(n, l, _)| n == name && *l == want)
        .map(|(_, _, v)| v)
}

fn counter(all: &[Series], name: &str, pairs: &[(&str, &str)]) -> u64 {
    match find(all, name, pairs) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{name} {pairs:?}: {other:?}"),
    }
}

fn histogram_len(all: &[Series], name: &str, pairs: &[(&str, &str)]) -> usize {
    match find(all, name, pairs) {
        Some(DebugValue::Histogram(values)) => values.len(),
        other => panic!("{name} {pairs:?}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rpc_records_outcome_and_latency_on_both_sides_per_peer() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");

    let fixture = Fixture::new("metrics");
    let (n1, _incoming1) = fixture.node("n1").await;
    let (n2, mut incoming2) = fixture.node("n2").await;
    let me = RpcHeader::new(n2.local_id().clone(), n2.local_addr());
    // n2 grants votes and refuses appends with entries (a handler's error); heartbeats go to
    // the consumer too (no heartbeat handler).
    let server = tokio::spawn(async move {
        while let Some(rpc) = incoming2.recv().await {
            let answer: Result<Response, RemoteError> = match rpc.command() {
                Command::RequestVote(req) => Ok(RequestVoteResponse {
                    header: me.clone(),
                    term: req.term,
                    granted: true,
                }
                .into()),
                Command::AppendEntries(req) if req.entries.is_empty() => {
                    Ok(AppendEntriesResponse {
                        header: me.clone(),
                        term: req.term,
                        last_log: 0,
                        success: true,
                        no_retry_backoff: false,
                    }
                    .into())
                }
                _ => Err(RemoteError::new(ErrorCode::HANDLER, "refused by the test")),
            };
            rpc.respond(answer);
        }
    });

    let header = RpcHeader::new(n1.local_id().clone(), n1.local_addr());
    let (to, at) = (n2.local_id().clone(), n2.local_addr());
    for term in 1..=3 {
        let vote = RequestVoteRequest {
            header: header.clone(),
            term,
            last_log_index: 0,
            last_log_term: 0,
            leadership_transfer: false,
        };
        n1.request_vote(&to, &at, vote).await.expect("vote");
    }
    n1.append_entries(&to, &at, AppendEntriesRequest::heartbeat(header.clone(), 3))
        .await
        .expect("heartbeat");
    let mut append = AppendEntriesRequest::heartbeat(header.clone(), 3);
    append.entries = vec![quicraft::Log::command(1, 3, &b"x"[..])];
    let refused = n1.append_entries(&to, &at, append).await;
    assert!(matches!(refused, Err(Error::Remote(_))), "{refused:?}");

    let all = series(&snapshotter);
    // The calling side, by the peer it called.
    let vote_ok = [("peer", "n2"), ("kind", "request_vote"), ("outcome", "ok")];
    assert_eq!(counter(&all, "quicraft_rpc_calls_total", &vote_ok), 3);
    let heartbeat_ok = [("peer", "n2"), ("kind", "heartbeat"), ("outcome", "ok")];
    assert_eq!(counter(&all, "quicraft_rpc_calls_total", &heartbeat_ok), 1);
    let append_error = [
        ("peer", "n2"),
        ("kind", "append_entries"),
        ("outcome", "remote_error"),
    ];
    assert_eq!(counter(&all, "quicraft_rpc_calls_total", &append_error), 1);
    let vote_kind = [("peer", "n2"), ("kind", "request_vote")];
    assert_eq!(
        histogram_len(&all, "quicraft_rpc_call_duration_seconds", &vote_kind),
        3
    );
    // The serving side, by the peer that called (answers written before the caller saw them).
    let served_ok = [("peer", "n1"), ("kind", "request_vote"), ("outcome", "ok")];
    assert_eq!(counter(&all, "quicraft_rpc_served_total", &served_ok), 3);
    let served_error = [
        ("peer", "n1"),
        ("kind", "append_entries"),
        ("outcome", "error"),
    ];
    assert_eq!(counter(&all, "quicraft_rpc_served_total", &served_error), 1);
    let served_kind = [("peer", "n1"), ("kind", "request_vote")];
    assert_eq!(
        histogram_len(&all, "quicraft_rpc_serve_duration_seconds", &served_kind),
        3
    );
    // One connection, dialled by n1 and accepted by n2.
    let dialled = [("peer", "n2"), ("direction", "dialled")];
    assert_eq!(
        counter(&all, "quicraft_connections_opened_total", &dialled),
        1
    );
    let accepted = [("peer", "n1"), ("direction", "accepted")];
    assert_eq!(
        counter(&all, "quicraft_connections_opened_total", &accepted),
        1
    );
    // No label is a stream id or an address: every label is one of the bounded ones.
    for (name, labels, _) in &all {
        for (key, _) in labels {
            assert!(
                ["peer", "kind", "outcome", "direction", "reason"].contains(&key.as_str()),
                "{name} has label {key}"
            );
        }
    }

    // The sampler (once a second) reports the connection's path and bytes per peer.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let all = series(&snapshotter);
        let rtt = find(&all, "quicraft_path_rtt_seconds", &[("peer", "n2")]);
        let sent = find(&all, "quicraft_sent_bytes_total", &[("peer", "n2")]);
        if let (Some(DebugValue::Gauge(rtt)), Some(DebugValue::Counter(sent))) = (rtt, sent)
            && rtt.into_inner() > 0.0
            && *sent > 0
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no path metrics for n2 within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    n1.close().await;
    n2.close().await;
    server.await.unwrap();
}
