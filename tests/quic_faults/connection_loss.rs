//! A connection killed under pipelined appends: by the follower shutting down, or by the
//! link going silent.

use super::*;

/// Opens a pipeline, waiting out the reconnect backoff: a call during the backoff fails at
/// once as unreachable, so retry (at most 100 times) after a pause of one backoff.
async fn pipeline_after_backoff(
    node: &QuicTransport,
    id: &ServerId,
    addr: &ServerAddress,
    backoff: Duration,
) -> AppendPipeline {
    for _ in 0..100 {
        match guarded("opening a pipeline", node.append_entries_pipeline(id, addr)).await {
            Ok(pipeline) => return pipeline,
            Err(e) if e.is_unreachable() => tokio::time::sleep(backoff).await,
            Err(e) => panic!("opening a pipeline failed: {e:?}"),
        }
    }
    panic!("no pipeline after 100 backoffs of {backoff:?}");
}

/// The follower takes 50 pipelined appends and holds them unanswered; then it shuts down.
/// The first of the 50 completes with `ConnectionLost` and the 49 behind it with
/// `PipelineClosed`, in send order, long before the pipeline's own timeout; the broken pipeline
/// refuses further appends at once. After the
/// follower restarts on the same address (and the tiny reconnect backoff has passed), a new
/// pipeline delivers 50 more in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connection_fails_50_pipelined_appends_in_order_and_a_new_pipeline_works() {
    common::init_tracing();
    const OUTSTANDING: u64 = 50;
    let fx = Fixture::new("pipeline-kill");
    let backoff = Duration::from_millis(20);
    let rpc_timeout = Duration::from_secs(10);
    let (a, _a_in) = bind(
        fx.config("n1")
            .rpc_timeout(rpc_timeout)
            .connect_timeout(Duration::from_millis(500))
            .reconnect_backoff(backoff, backoff),
    )
    .await;
    let (b, mut b_in) = fx.node("n2").await;
    let (id, addr) = (b.local_id().clone(), b.local_addr());

    let pipeline = guarded("opening a pipeline", a.append_entries_pipeline(&id, &addr))
        .await
        .unwrap();
    for seq in 0..OUTSTANDING {
        let sent = guarded("an append", pipeline.send(append(&a, seq))).await;
        assert_eq!(sent.unwrap(), seq);
    }
    let mut held = Vec::new();
    for seq in 0..OUTSTANDING {
        let rpc = guarded("an append reaching the follower", b_in.recv())
            .await
            .unwrap();
        match rpc.command() {
            Command::AppendEntries(r) => assert_eq!(r.prev_log_entry, seq, "follower order"),
            other => panic!("unexpected {other:?}"),
        }
        held.push(rpc);
    }
    assert_eq!(pipeline.in_flight(), OUTSTANDING as usize);

    let b_socket = b.local_socket_addr();
    let killed_at = Instant::now();
    guarded("closing the follower", b.close()).await;
    for seq in 0..OUTSTANDING {
        let done = guarded("a completion", pipeline.next())
            .await
            .unwrap_or_else(|| panic!("no completion for append {seq}"));
        assert_eq!(done.seq, seq, "completions out of send order");
        assert_eq!(done.request.prev_log_entry, seq);
        // The first failure closes the pipeline: the appends behind it are `PipelineClosed`.
        assert!(
            match seq {
                0 => matches!(done.response, Err(Error::ConnectionLost { .. })),
                _ => matches!(done.response, Err(Error::PipelineClosed)),
            },
            "append {seq}: {:?}",
            done.response
        );
    }
    let waited = killed_at.elapsed();
    assert!(
        waited < rpc_timeout / 2,
        "the completions took {waited:?} (pipeline timeout {rpc_timeout:?})"
    );
    assert_eq!(pipeline.in_flight(), 0);
    let refused = guarded(
        "an append on the broken pipeline",
        pipeline.send(append(&a, 50)),
    )
    .await;
    assert!(refused.is_err(), "{refused:?}");
    drop(pipeline);
    drop(held);

    // While the follower is down the dial fails, which starts the backoff.
    let down = guarded(
        "a pipeline while the follower is down",
        a.append_entries_pipeline(&id, &addr),
    )
    .await;
    assert!(matches!(down, Err(Error::Unreachable { .. })), "{down:?}");

    let (b2, b2_in) = rebind(fx.config("n2").bind(b_socket)).await;
    let (commands_tx, mut commands) = mpsc::unbounded_channel();
    serve(
        &b2,
        b2_in,
        Taps {
            commands: Some(commands_tx),
            ..Taps::default()
        },
    );
    let pipeline = pipeline_after_backoff(&a, &id, &addr, backoff).await;
    for seq in 0..OUTSTANDING {
        let sent = guarded("an append", pipeline.send(append(&a, 1000 + seq))).await;
        assert_eq!(sent.unwrap(), seq);
    }
    for seq in 0..OUTSTANDING {
        let done = guarded("a completion", pipeline.next()).await.unwrap();
        assert_eq!(done.seq, seq);
        let response = done
            .response
            .unwrap_or_else(|e| panic!("append {seq} after the restart: {e}"));
        assert_eq!(response.last_log, 1000 + seq, "answers out of step");
    }
    for seq in 0..OUTSTANDING {
        match commands.try_recv() {
            Ok(Command::AppendEntries(r)) => assert_eq!(r.prev_log_entry, 1000 + seq),
            other => panic!("the restarted follower saw {other:?}"),
        }
    }
    pipeline.close();
    a.close().await;
    b2.close().await;
}

/// The same 50 held appends, but the link goes silent instead of the follower closing: no
/// close reaches the leader. The idle timeout (2 s) ends the connection long before the
/// pipeline's own 10 s timeout: the first of the 50 completes with `ConnectionLost`, the others
/// with `PipelineClosed`, in send order. Once the
/// link is back, a new pipeline (a new connection through the relay) delivers 50 more in
/// order to the same follower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silently_cut_link_fails_50_pipelined_appends_in_order_and_a_new_pipeline_works() {
    common::init_tracing();
    const OUTSTANDING: u64 = 50;
    let idle_timeout = Duration::from_secs(2);
    let rpc_timeout = Duration::from_secs(10);
    let backoff = Duration::from_millis(20);
    let fx = Fixture::new("pipeline-cut");
    let tune = |c: QuicConfig| {
        c.tuning(
            quicraft::QuicTuning::default()
                .idle_timeout(idle_timeout)
                .keep_alive(Some(Duration::from_millis(300))),
        )
        .rpc_timeout(rpc_timeout)
    };
    let (b, mut b_in) = bind(tune(fx.config("n2"))).await;
    let relay = Relay::start(b.local_socket_addr()).await;
    let (a, _a_in) = bind(
        tune(fx.config("n1"))
            .connect_timeout(Duration::from_millis(500))
            .reconnect_backoff(backoff, backoff),
    )
    .await;
    let (id, addr) = (b.local_id().clone(), ServerAddress::from(relay.addr));

    let pipeline = guarded("opening a pipeline", a.append_entries_pipeline(&id, &addr))
        .await
        .unwrap();
    for seq in 0..OUTSTANDING {
        guarded("an append", pipeline.send(append(&a, seq)))
            .await
            .unwrap();
    }
    let mut held = Vec::new();
    for seq in 0..OUTSTANDING {
        let rpc = guarded("an append reaching the follower", b_in.recv())
            .await
            .unwrap();
        match rpc.command() {
            Command::AppendEntries(r) => assert_eq!(r.prev_log_entry, seq, "follower order"),
            other => panic!("unexpected {other:?}"),
        }
        held.push(rpc);
    }

    relay.set(Link::Cut).await;
    let cut_at = Instant::now();
    for seq in 0..OUTSTANDING {
        let done = guarded("a completion", pipeline.next())
            .await
            .unwrap_or_else(|| panic!("no completion for append {seq}"));
        assert_eq!(done.seq, seq, "completions out of send order");
        // The first failure closes the pipeline: the appends behind it are `PipelineClosed`.
        assert!(
            match seq {
                0 => matches!(done.response, Err(Error::ConnectionLost { .. })),
                _ => matches!(done.response, Err(Error::PipelineClosed)),
            },
            "append {seq}: {:?}",
            done.response
        );
    }
    let waited = cut_at.elapsed();
    eprintln!("the cut was noticed after {waited:?}");
    assert!(
        waited < rpc_timeout - Duration::from_secs(2),
        "the completions took {waited:?}: not the idle timeout ({idle_timeout:?})"
    );
    drop(pipeline);
    drop(held);

    relay.set(Link::Up).await;
    let (commands_tx, mut commands) = mpsc::unbounded_channel();
    serve(
        &b,
        b_in,
        Taps {
            commands: Some(commands_tx),
            ..Taps::default()
        },
    );
    let pipeline = pipeline_after_backoff(&a, &id, &addr, backoff).await;
    for seq in 0..OUTSTANDING {
        guarded("an append", pipeline.send(append(&a, 1000 + seq)))
            .await
            .unwrap();
    }
    for seq in 0..OUTSTANDING {
        let done = guarded("a completion", pipeline.next()).await.unwrap();
        assert_eq!(done.seq, seq);
        assert_eq!(done.response.unwrap().last_log, 1000 + seq);
    }
    for seq in 0..OUTSTANDING {
        match commands.try_recv() {
            Ok(Command::AppendEntries(r)) => assert_eq!(r.prev_log_entry, 1000 + seq),
            other => panic!("the follower saw {other:?}"),
        }
    }
    pipeline.close();
    a.close().await;
    b.close().await;
}
