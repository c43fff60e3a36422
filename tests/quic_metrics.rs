//! What a QuicTransport records through the `metrics` facade, seen by a test recorder
//! (metrics-util's `DebuggingRecorder`, installed for this test binary alone): an RPC between
//! two in-process nodes counts its outcome and latency on the calling side and on the serving
//! side, with the peer and kind labels; a handler's error is a `remote_error`; the sampler
//! reports the path of the connection per peer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::Fixture;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use quicraft::{
    AppendEntriesRequest, AppendEntriesResponse, Command, Error, ErrorCode, RemoteError,
    RequestVoteRequest, RequestVoteResponse, Response, RpcHeader, Transport,
};

/// A series: its name and its labels, sorted.
type SeriesKey = (String, Vec<(String, String)>);

/// What the recorder showed over all snapshots so far: a snapshot hands over counters as
/// deltas and histograms drained, so they are added up here; gauges keep their last value.
#[derive(Default)]
struct Seen {
    counters: HashMap<SeriesKey, u64>,
    histograms: HashMap<SeriesKey, usize>,
    gauges: HashMap<SeriesKey, f64>,
}

impl Seen {
    fn absorb(&mut self, snapshotter: &Snapshotter) {
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let key = key.key();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            let series = (key.name().to_owned(), labels);
            match value {
                DebugValue::Counter(n) => *self.counters.entry(series).or_default() += n,
                DebugValue::Histogram(values) => {
                    *self.histograms.entry(series).or_default() += values.len();
                }
                DebugValue::Gauge(v) => {
                    self.gauges.insert(series, v.into_inner());
                }
            }
        }
    }

    fn counter(&self, name: &str, pairs: &[(&str, &str)]) -> u64 {
        self.counters
            .get(&key(name, pairs))
            .copied()
            .unwrap_or_default()
    }

    fn histogram_len(&self, name: &str, pairs: &[(&str, &str)]) -> usize {
        self.histograms
            .get(&key(name, pairs))
            .copied()
            .unwrap_or_default()
    }

    fn gauge(&self, name: &str, pairs: &[(&str, &str)]) -> Option<f64> {
        self.gauges.get(&key(name, pairs)).copied()
    }

    fn labels(&self) -> impl Iterator<Item = &SeriesKey> {
        self.counters
            .keys()
            .chain(self.histograms.keys())
            .chain(self.gauges.keys())
    }
}

fn key(name: &str, pairs: &[(&str, &str)]) -> SeriesKey {
    let mut labels: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    labels.sort();
    (name.to_owned(), labels)
}

/// Absorbs snapshots until `done` holds (the sampler publishes counts once a second).
async fn until(
    seen: &mut Seen,
    snapshotter: &Snapshotter,
    what: &str,
    done: impl Fn(&Seen) -> bool,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        seen.absorb(snapshotter);
        if done(seen) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} not recorded within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
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

    let vote_ok = [("peer", "n2"), ("kind", "request_vote"), ("outcome", "ok")];
    let heartbeat_ok = [("peer", "n2"), ("kind", "heartbeat"), ("outcome", "ok")];
    let append_error = [
        ("peer", "n2"),
        ("kind", "append_entries"),
        ("outcome", "remote_error"),
    ];
    let served_ok = [("peer", "n1"), ("kind", "request_vote"), ("outcome", "ok")];
    let served_error = [
        ("peer", "n1"),
        ("kind", "append_entries"),
        ("outcome", "error"),
    ];
    let mut seen = Seen::default();
    until(
        &mut seen,
        &snapshotter,
        "the calls and their service",
        |seen| {
            seen.counter("quicraft_rpc_calls_total", &append_error) >= 1
                && seen.counter("quicraft_rpc_served_total", &served_error) >= 1
        },
    )
    .await;
    // The calling side, by the peer it called.
    assert_eq!(seen.counter("quicraft_rpc_calls_total", &vote_ok), 3);
    assert_eq!(seen.counter("quicraft_rpc_calls_total", &heartbeat_ok), 1);
    assert_eq!(seen.counter("quicraft_rpc_calls_total", &append_error), 1);
    let vote_kind = [("peer", "n2"), ("kind", "request_vote")];
    assert_eq!(
        seen.histogram_len("quicraft_rpc_call_duration_seconds", &vote_kind),
        3
    );
    // The serving side, by the peer that called.
    assert_eq!(seen.counter("quicraft_rpc_served_total", &served_ok), 3);
    assert_eq!(seen.counter("quicraft_rpc_served_total", &served_error), 1);
    let served_kind = [("peer", "n1"), ("kind", "request_vote")];
    assert_eq!(
        seen.histogram_len("quicraft_rpc_serve_duration_seconds", &served_kind),
        3
    );
    // One connection, dialled by n1 and accepted by n2.
    let dialled = [("peer", "n2"), ("direction", "dialled")];
    assert_eq!(
        seen.counter("quicraft_connections_opened_total", &dialled),
        1
    );
    let accepted = [("peer", "n1"), ("direction", "accepted")];
    assert_eq!(
        seen.counter("quicraft_connections_opened_total", &accepted),
        1
    );

    // The sampler reports the connection's path and bytes per peer.
    until(
        &mut seen,
        &snapshotter,
        "the path of n1's connection to n2",
        |seen| {
            let rtt = seen.gauge("quicraft_path_rtt_seconds", &[("peer", "n2")]);
            let sent = seen.counter("quicraft_sent_bytes_total", &[("peer", "n2")]);
            rtt.is_some_and(|rtt| rtt > 0.0) && sent > 0
        },
    )
    .await;
    // No label is a stream id or an address: every label is one of the bounded ones.
    for (name, labels) in seen.labels() {
        for (key, _) in labels {
            assert!(
                ["peer", "kind", "outcome", "direction", "reason"].contains(&key.as_str()),
                "{name} has label {key}"
            );
        }
    }

    n1.close().await;
    n2.close().await;
    server.await.unwrap();
}
