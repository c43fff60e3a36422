//! The in-memory transport's own knobs: links, partitions and injected faults, under paused
//! tokio time so every timing is deterministic.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use quicraft::{
    Error, Faults, InmemConfig, InmemTransport, RpcHeader, RpcKind, TimeoutNowRequest,
    TimeoutNowResponse, Transport,
};
use tokio::time::Instant;

const TIMEOUT: Duration = Duration::from_millis(500);

fn node(name: &str) -> (InmemTransport, quicraft::Incoming) {
    InmemTransport::with_config(name, InmemConfig::default().timeout(TIMEOUT))
}

fn ping(from: &str) -> TimeoutNowRequest {
    TimeoutNowRequest {
        header: RpcHeader::new(from, from),
    }
}

/// Answers every RPC with a TimeoutNow response until the consumer ends.
fn serve(mut incoming: quicraft::Incoming, name: &'static str) {
    tokio::spawn(async move {
        while let Some(rpc) = incoming.recv().await {
            rpc.respond(Ok(TimeoutNowResponse {
                header: RpcHeader::new(name, name),
            }
            .into()));
        }
    });
}

#[tokio::test(start_paused = true)]
async fn unconnected_peer_is_unreachable_and_connect_fixes_it() {
    let (a, _) = node("a");
    let (b, incoming) = node("b");
    serve(incoming, "b");
    let got = a.timeout_now(&"b".into(), &"b".into(), ping("a")).await;
    assert!(matches!(got, Err(Error::Unreachable { .. })), "{got:?}");
    a.connect(&b);
    a.timeout_now(&"b".into(), &"b".into(), ping("a"))
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn disconnect_and_disconnect_all_cut_links() {
    let (a, _) = node("a");
    let (b, incoming_b) = node("b");
    let (c, incoming_c) = node("c");
    serve(incoming_b, "b");
    serve(incoming_c, "c");
    a.connect(&b);
    a.connect(&c);
    a.disconnect(&"b".into());
    let got = a.timeout_now(&"b".into(), &"b".into(), ping("a")).await;
    assert!(matches!(got, Err(Error::Unreachable { .. })), "{got:?}");
    a.timeout_now(&"c".into(), &"c".into(), ping("a"))
        .await
        .unwrap();
    a.disconnect_all();
    let got = a.timeout_now(&"c".into(), &"c".into(), ping("a")).await;
    assert!(matches!(got, Err(Error::Unreachable { .. })), "{got:?}");
}

#[tokio::test(start_paused = true)]
async fn disconnect_fails_a_call_under_way() {
    let (a, _) = node("a");
    let (b, mut incoming) = node("b");
    a.connect(&b);
    let call = tokio::spawn({
        let a = a.clone();
        async move { a.timeout_now(&"b".into(), &"b".into(), ping("a")).await }
    });
    let _held = incoming.recv().await.unwrap();
    a.disconnect(&"b".into());
    let got = call.await.unwrap();
    assert!(matches!(got, Err(Error::ConnectionLost { .. })), "{got:?}");
}

#[tokio::test(start_paused = true)]
async fn unreachable_fault_fails_fast() {
    let (a, _) = node("a");
    let (b, incoming) = node("b");
    serve(incoming, "b");
    a.connect(&b);
    assert!(a.set_faults(&"b".into(), Faults::unreachable()));
    let start = Instant::now();
    let got = a.timeout_now(&"b".into(), &"b".into(), ping("a")).await;
    assert!(matches!(got, Err(Error::Unreachable { .. })), "{got:?}");
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "an unreachable peer must fail without waiting"
    );
    assert!(a.set_faults(&"b".into(), Faults::none()));
    a.timeout_now(&"b".into(), &"b".into(), ping("a"))
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn dropped_requests_time_out_after_exactly_the_timeout() {
    let (a, _) = node("a");
    let (b, mut incoming) = node("b");
    a.connect(&b);
    a.set_faults(&"b".into(), Faults::drop_requests());
    let start = Instant::now();
    let got = a.timeout_now(&"b".into(), &"b".into(), ping("a")).await;
    assert!(
        matches!(got, Err(Error::Timeout { rpc: RpcKind::TimeoutNow, after }) if after == TIMEOUT),
        "{got:?}"
    );
    assert_eq!(start.elapsed(), TIMEOUT);
    assert!(
        incoming.try_recv().is_none(),
        "a dropped request reached the consumer"
    );
}

/// A black-holed link loses pipelined appends the way it loses unary calls: each waits out
/// the timeout (`Error::Timeout`), none fails early with another error, and nothing reaches
/// the consumer.
#[tokio::test(start_paused = true)]
async fn dropped_requests_on_a_pipeline_time_out_like_unary_calls() {
    let (a, _) = node("a");
    let (b, mut incoming) = node("b");
    a.connect(&b);
    a.set_faults(&"b".into(), Faults::drop_requests());
    let start = Instant::now();
    let unary = a.append_entries(&"b".into(), &"b".into(), append(0)).await;
    assert!(
        matches!(unary, Err(Error::Timeout { rpc: RpcKind::AppendEntries, after }) if after == TIMEOUT),
        "{unary:?}"
    );
    assert_eq!(start.elapsed(), TIMEOUT);

    let pipeline = a
        .append_entries_pipeline(&"b".into(), &"b".into())
        .await
        .unwrap();
    let start = Instant::now();
    pipeline.send(append(1)).await.unwrap();
    let done = pipeline.next().await.unwrap();
    assert!(
        matches!(done.response, Err(Error::Timeout { rpc: RpcKind::AppendEntries, after }) if after == TIMEOUT),
        "{:?}",
        done.response
    );
    assert_eq!(
        start.elapsed(),
        TIMEOUT,
        "the pipelined append failed early"
    );
    assert!(
        incoming.try_recv().is_none(),
        "a dropped request reached the consumer"
    );
}

#[tokio::test(start_paused = true)]
async fn unanswered_call_times_out() {
    let (a, _) = node("a");
    let (b, mut incoming) = node("b");
    a.connect(&b);
    let call = tokio::spawn({
        let a = a.clone();
        async move { a.timeout_now(&"b".into(), &"b".into(), ping("a")).await }
    });
    let _held = incoming.recv().await.unwrap();
    let got = call.await.unwrap();
    assert!(matches!(got, Err(Error::Timeout { .. })), "{got:?}");
}

#[tokio::test(start_paused = true)]
async fn delay_fault_delays_each_request_and_keeps_pipeline_order() {
    let (a, _) = node("a");
    let (b, incoming) = node("b");
    serve_appends(incoming);
    a.connect(&b);
    let delay = Duration::from_millis(40);
    a.set_faults(&"b".into(), Faults::delay(delay));

    let start = Instant::now();
    a.timeout_now(&"b".into(), &"b".into(), ping("a"))
        .await
        .unwrap();
    assert_eq!(start.elapsed(), delay);

    // Pipelined requests overlap their delays: 20 of them take one delay, not twenty.
    let pipeline = a
        .append_entries_pipeline(&"b".into(), &"b".into())
        .await
        .unwrap();
    let start = Instant::now();
    for seq in 0..20 {
        pipeline.send(append(seq)).await.unwrap();
    }
    for seq in 0..20 {
        let done = pipeline.next().await.unwrap();
        assert_eq!(done.response.unwrap().last_log, seq);
    }
    assert_eq!(start.elapsed(), delay);
}

fn append(seq: u64) -> quicraft::AppendEntriesRequest {
    quicraft::AppendEntriesRequest {
        header: RpcHeader::new("a", "a"),
        term: 1,
        prev_log_entry: seq,
        prev_log_term: 1,
        entries: vec![quicraft::Log::command(seq + 1, 1, vec![1, 2, 3])],
        leader_commit_index: 0,
    }
}

fn serve_appends(mut incoming: quicraft::Incoming) {
    tokio::spawn(async move {
        while let Some(rpc) = incoming.recv().await {
            let response: quicraft::Response = match rpc.command() {
                quicraft::Command::AppendEntries(req) => quicraft::AppendEntriesResponse {
                    header: RpcHeader::new("b", "b"),
                    term: 1,
                    last_log: req.prev_log_entry,
                    success: true,
                    no_retry_backoff: false,
                }
                .into(),
                _ => TimeoutNowResponse {
                    header: RpcHeader::new("b", "b"),
                }
                .into(),
            };
            rpc.respond(Ok(response));
        }
    });
}

#[tokio::test(start_paused = true)]
async fn closed_peer_is_unreachable() {
    let (a, _) = node("a");
    let (b, _incoming) = node("b");
    a.connect(&b);
    b.close().await;
    let got = a.timeout_now(&"b".into(), &"b".into(), ping("a")).await;
    assert!(matches!(got, Err(Error::Unreachable { .. })), "{got:?}");
}

/// A resumable snapshot whose link is cut waits for it: restored within the receiver's grace
/// period, the snapshot goes on where the reader stopped; restored after it, the reader has
/// failed (`TimedOut`, at the end of the grace period) and the sender's resume is refused
/// with `TRANSFER_UNKNOWN`.
#[tokio::test(start_paused = true)]
async fn a_cut_link_under_a_resumable_snapshot_waits_for_the_grace_period() {
    use tokio::io::AsyncReadExt;

    let grace = Duration::from_millis(300);
    for restored_after in [Duration::from_millis(200), Duration::from_millis(400)] {
        let (a, _) = node("a");
        let (b, mut incoming) = InmemTransport::with_config(
            "b",
            InmemConfig::default()
                .timeout(TIMEOUT)
                .snapshot_resume_grace(grace),
        );
        a.connect(&b);
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let request = quicraft::InstallSnapshotRequest {
            header: RpcHeader::new("a", "a"),
            snapshot_version: 1,
            term: 1,
            last_log_index: 1,
            last_log_term: 1,
            configuration: Default::default(),
            configuration_index: 1,
            size: data.len() as u64,
        };
        let sender = {
            let (a, source) = (a.clone(), std::io::Cursor::new(data.clone()));
            tokio::spawn(async move {
                a.install_snapshot_resumable(&"b".into(), &"b".into(), request, source)
                    .await
            })
        };
        let mut rpc = incoming.recv().await.unwrap();
        let mut reader = rpc.take_snapshot().unwrap();
        let mut got = vec![0u8; 300_000];
        reader.read_exact(&mut got).await.unwrap();
        a.disconnect(&"b".into());
        let restore = {
            let (a, b) = (a.clone(), b.clone());
            tokio::spawn(async move {
                tokio::time::sleep(restored_after).await;
                a.connect(&b);
            })
        };
        let cut = Instant::now();
        let rest = reader.read_to_end(&mut got).await;
        if restored_after < grace {
            rest.unwrap();
            assert!(got == data, "the snapshot's bytes differ");
            rpc.respond(Ok(quicraft::InstallSnapshotResponse {
                header: RpcHeader::new("b", "b"),
                term: 1,
                success: true,
            }
            .into()));
            assert!(sender.await.unwrap().unwrap().success);
        } else {
            let error = rest.unwrap_err();
            assert_eq!(error.kind(), std::io::ErrorKind::TimedOut, "{error}");
            assert_eq!(cut.elapsed(), grace);
            drop(rpc);
            match sender.await.unwrap() {
                Err(Error::Remote(e)) => {
                    assert_eq!(e.code, quicraft::ErrorCode::TRANSFER_UNKNOWN, "{e:?}")
                }
                other => panic!("expected TRANSFER_UNKNOWN, got {other:?}"),
            }
        }
        restore.await.unwrap();
    }
}
