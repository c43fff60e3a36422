//! A receiver shut down in the middle of a snapshot.

use super::*;

/// 256 MiB, streamed from a generator: the receiver is closed after 32 MiB arrived. The
/// sender fails with `ConnectionLost` within moments (its own deadline is 80 s), the reader
/// fails instead of ending short, and a retry once the receiver is back on the same address
/// delivers the whole snapshot byte-exact (SHA-256).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_shut_down_mid_snapshot_fails_both_ends_and_a_retry_is_byte_exact() {
    common::init_tracing();
    const SIZE: u64 = 256 * 1024 * 1024;
    const CUT_AFTER: u64 = 32 * 1024 * 1024;
    let fx = Fixture::new("snapshot-cut");
    // A short idle timeout bounds the sender's wait even if the close were lost on the way;
    // 16 MiB per rpc_timeout (5 s) gives the 256 MiB snapshot an 80 s deadline.
    let tune = |c: QuicConfig| {
        c.tuning(
            quicraft::QuicTuning::default()
                .idle_timeout(Duration::from_secs(5))
                .keep_alive(Some(Duration::from_secs(1))),
        )
        .snapshot_timeout_scale(16 * 1024 * 1024)
    };
    let snapshot_deadline = Duration::from_secs(80);
    let (a, _a_in) = bind(tune(fx.config("n1"))).await;
    let (b, b_in) = bind(tune(fx.config("n2"))).await;
    let (progress_tx, mut progress) = watch::channel(0u64);
    let (outcome_tx, mut outcomes) = mpsc::unbounded_channel();
    serve(
        &b,
        b_in,
        Taps {
            progress: Some(progress_tx),
            snapshots: Some(outcome_tx),
            ..Taps::default()
        },
    );
    let expected = expected_digest(1, SIZE).await;

    let (id, addr) = (b.local_id().clone(), b.local_addr());
    let send = {
        let (a, id, addr) = (a.clone(), id.clone(), addr.clone());
        let request = snapshot_request(&a, SIZE);
        tokio::spawn(async move {
            let result = a
                .install_snapshot(&id, &addr, request, Pattern::new(1, SIZE))
                .await;
            (result, Instant::now())
        })
    };
    guarded(
        "32 MiB reaching the receiver's reader",
        progress.wait_for(|n| *n >= CUT_AFTER),
    )
    .await
    .unwrap();
    assert!(!send.is_finished(), "the snapshot ended before the cut");
    let b_socket = b.local_socket_addr();
    let closed_at = Instant::now();
    guarded("closing the receiver", b.close()).await;
    assert_eq!(b.task_count(), 0);

    // The sender: a typed error, soon, far inside its own deadline.
    let (result, failed_at) = guarded("the sender's error", send).await.unwrap();
    let waited = failed_at.saturating_duration_since(closed_at);
    assert!(
        matches!(result, Err(Error::ConnectionLost { .. })),
        "the sender got {result:?}"
    );
    assert!(
        waited < Duration::from_secs(10),
        "the sender learnt of the shutdown {waited:?} after it (deadline {snapshot_deadline:?})"
    );

    // The receiver's reader: an error after part of the data, never a clean short end.
    let outcome = guarded("the reader's outcome", outcomes.recv())
        .await
        .unwrap();
    assert_eq!(outcome.declared, SIZE);
    assert!(
        outcome.result.is_err(),
        "a snapshot cut after {} of {SIZE} bytes was read as complete",
        outcome.read
    );
    assert!(
        (CUT_AFTER..SIZE).contains(&outcome.read),
        "read {} bytes",
        outcome.read
    );

    // The receiver restarts on the same address: the same snapshot again arrives whole.
    let (b2, b2_in) = rebind(tune(fx.config("n2")).bind(b_socket)).await;
    let (outcome_tx, mut outcomes) = mpsc::unbounded_channel();
    serve(
        &b2,
        b2_in,
        Taps {
            snapshots: Some(outcome_tx),
            ..Taps::default()
        },
    );
    let retry = guarded(
        "the retry",
        a.install_snapshot(
            &id,
            &addr,
            snapshot_request(&a, SIZE),
            Pattern::new(1, SIZE),
        ),
    )
    .await;
    let response = retry.unwrap_or_else(|e| panic!("the retry failed: {e}"));
    let outcome = guarded("the retry's reader", outcomes.recv())
        .await
        .unwrap();
    assert_eq!(outcome.read, SIZE);
    assert_eq!(
        outcome.result.as_deref(),
        Ok(&expected[..]),
        "the retried snapshot differs"
    );
    assert!(response.success);
    assert_eq!(response.term, digest_word(&expected));
    a.close().await;
    b2.close().await;
}
