//! Peers that never answer: one that completes the handshake and then keeps silent, one
//! that never completes it.

use super::*;

/// A raw quinn server with a valid certificate of the cluster: it completes every handshake
/// and keeps the connection, but never accepts a stream.
struct MutePeer {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    endpoint: quinn::Endpoint,
}

impl MutePeer {
    fn start(fx: &Fixture, node: &str) -> Self {
        let tls = TlsContext::new(fx.cluster(), fx.identity(node), fx.ca.roots()).unwrap();
        let endpoint = quinn::Endpoint::server(tls.server_config().unwrap(), loopback()).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (accepting, count) = (endpoint.clone(), accepted.clone());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Some(incoming) = accepting.accept().await {
                if let Ok(conn) = incoming.await {
                    count.fetch_add(1, Ordering::SeqCst);
                    held.push(conn);
                }
            }
        });
        Self {
            addr: endpoint.local_addr().unwrap(),
            accepted,
            endpoint,
        }
    }
}

/// Every kind of call to a peer that completed the handshake and never answers fails with
/// `Error::Timeout` on schedule (at least the 500 ms RPC timeout, well under a generous bound),
/// pipelined appends in order (the first times out, those behind it fail with it as
/// `PipelineClosed`); meanwhile calls to a healthy peer succeed, the first of them
/// while every stuck call is still pending. The stuck peer's connection is reused: a timeout
/// is no dial failure, so no backoff makes a later call fail differently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_that_never_answers_times_out_on_schedule_and_other_peers_are_unaffected() {
    common::init_tracing();
    let timeout = Duration::from_millis(500);
    let late = timeout + Duration::from_millis(2500);
    let fx = Fixture::new("mute-peer");
    let mute = MutePeer::start(&fx, "mute");
    let (a, _a_in) = bind(fx.config("n1").rpc_timeout(timeout)).await;
    let (c, c_in) = fx.node("n3").await;
    serve(&c, c_in, Taps::default());
    let (c_id, c_addr) = (c.local_id().clone(), c.local_addr());
    guarded("warming up the healthy peer", async {
        a.request_vote(&c_id, &c_addr, vote_from(&a, 1)).await
    })
    .await
    .unwrap();

    let (id, addr) = (ServerId::from("mute"), ServerAddress::from(mute.addr));
    let pending = Arc::new(AtomicUsize::new(6));
    let first_done = Arc::new(std::sync::Mutex::new(None::<Instant>));
    // Runs one stuck call on its own task: its outcome, how long it took.
    let stuck = |kind: RpcKind| {
        let (a, id, addr) = (a.clone(), id.clone(), addr.clone());
        let (pending, first_done) = (pending.clone(), first_done.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let result: Result<(), Error> = match kind {
                RpcKind::RequestVote => {
                    a.request_vote(&id, &addr, vote_from(&a, 2)).await.map(drop)
                }
                RpcKind::RequestPreVote => {
                    let request = RequestPreVoteRequest {
                        header: header(&a),
                        term: 2,
                        last_log_index: 1,
                        last_log_term: 1,
                    };
                    a.request_pre_vote(&id, &addr, request).await.map(drop)
                }
                RpcKind::TimeoutNow => {
                    let request = TimeoutNowRequest { header: header(&a) };
                    a.timeout_now(&id, &addr, request).await.map(drop)
                }
                RpcKind::AppendEntries => {
                    let heartbeat = AppendEntriesRequest::heartbeat(header(&a), 2);
                    a.append_entries(&id, &addr, heartbeat).await.map(drop)
                }
                RpcKind::InstallSnapshot => {
                    // Small enough that its deadline is the plain RPC timeout.
                    let size = 64 * 1024;
                    a.install_snapshot(
                        &id,
                        &addr,
                        snapshot_request(&a, size),
                        Pattern::new(3, size),
                    )
                    .await
                    .map(drop)
                }
                other => unreachable!("{other:?}"),
            };
            let elapsed = started.elapsed();
            first_done.lock().unwrap().get_or_insert_with(Instant::now);
            pending.fetch_sub(1, Ordering::SeqCst);
            (kind, result, elapsed)
        })
    };
    let calls: Vec<_> = [
        RpcKind::RequestVote,
        RpcKind::RequestPreVote,
        RpcKind::TimeoutNow,
        RpcKind::AppendEntries,
        RpcKind::InstallSnapshot,
    ]
    .into_iter()
    .map(stuck)
    .collect();
    // Pipelined appends: the pipeline opens (nothing to wait for), its appends time out.
    let pipelined = {
        let (a, id, addr) = (a.clone(), id.clone(), addr.clone());
        let (pending, first_done) = (pending.clone(), first_done.clone());
        tokio::spawn(async move {
            let pipeline = a.append_entries_pipeline(&id, &addr).await.unwrap();
            for seq in 0..3 {
                pipeline.send(append(&a, seq)).await.unwrap();
            }
            let mut completions = Vec::new();
            for _ in 0..3 {
                let done = pipeline.next().await.unwrap();
                completions.push((done.seq, done.response.map(drop), done.started.elapsed()));
            }
            first_done.lock().unwrap().get_or_insert_with(Instant::now);
            pending.fetch_sub(1, Ordering::SeqCst);
            completions
        })
    };

    // The healthy peer answers throughout (bounded: at most 10,000 calls).
    let mut healthy = Vec::new();
    for term in 10..10_010 {
        if pending.load(Ordering::SeqCst) == 0 {
            break;
        }
        let result = guarded("a call to the healthy peer", async {
            a.request_vote(&c_id, &c_addr, vote_from(&a, term)).await
        })
        .await;
        let response = result.unwrap_or_else(|e| panic!("the healthy peer's call failed: {e}"));
        assert_eq!(response.term, term);
        healthy.push(Instant::now());
    }
    let first_stuck_done = first_done.lock().unwrap().unwrap();
    assert!(
        healthy.first().is_some_and(|t| *t < first_stuck_done),
        "no call to the healthy peer completed while the stuck calls were pending"
    );
    eprintln!(
        "{} calls to the healthy peer while the stuck ones were pending",
        healthy.iter().filter(|t| **t < first_stuck_done).count()
    );

    for call in calls {
        let (kind, result, elapsed) = guarded("a stuck call", call).await.unwrap();
        match result {
            Err(Error::Timeout { rpc, after }) => {
                assert_eq!(rpc, kind);
                assert!(after <= timeout, "{kind}: deadline {after:?}");
            }
            other => panic!("{kind}: expected Error::Timeout, got {other:?}"),
        }
        assert!(
            (timeout..late).contains(&elapsed),
            "{kind}: timed out after {elapsed:?}"
        );
    }
    let completions = guarded("the stuck pipeline", pipelined).await.unwrap();
    for (expected, (seq, result, elapsed)) in completions.into_iter().enumerate() {
        assert_eq!(seq, expected as u64, "pipelined completions out of order");
        // The first times out on schedule and closes the pipeline; those behind it fail with
        // it (`PipelineClosed`), sent a moment after it, so a moment short of their own timeout.
        if seq == 0 {
            assert!(
                matches!(
                    result,
                    Err(Error::Timeout {
                        rpc: RpcKind::AppendEntries,
                        ..
                    })
                ),
                "pipelined append {seq}: {result:?}"
            );
            assert!(
                (timeout..late).contains(&elapsed),
                "pipelined append {seq}: completed after {elapsed:?}"
            );
        } else {
            assert!(
                matches!(result, Err(Error::PipelineClosed)),
                "pipelined append {seq}: {result:?}"
            );
            assert!(
                elapsed < late,
                "pipelined append {seq}: completed after {elapsed:?}"
            );
        }
    }

    // Still on schedule, on the same connection.
    let started = Instant::now();
    let again = a.request_vote(&id, &addr, vote_from(&a, 3)).await;
    assert!(matches!(again, Err(Error::Timeout { .. })), "{again:?}");
    assert!((timeout..late).contains(&started.elapsed()));
    assert_eq!(
        mute.accepted.load(Ordering::SeqCst),
        1,
        "the stuck peer was re-dialled"
    );

    a.close().await;
    c.close().await;
    mute.endpoint.close(0u32.into(), b"done");
}

/// A UDP port that swallows every packet (no handshake ever completes): the call fails as
/// unreachable after the connect timeout, within its RPC timeout; the next call during the
/// backoff fails at once; a healthy peer is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_that_never_completes_the_handshake_fails_within_the_connect_timeout() {
    common::init_tracing();
    let connect_timeout = Duration::from_millis(300);
    let fx = Fixture::new("black-hole");
    let hole = std::net::UdpSocket::bind(loopback()).unwrap();
    let (a, _a_in) = bind(
        fx.config("n1")
            .rpc_timeout(Duration::from_secs(5))
            .connect_timeout(connect_timeout)
            .reconnect_backoff(Duration::from_secs(60), Duration::from_secs(60)),
    )
    .await;
    let (c, c_in) = fx.node("n3").await;
    serve(&c, c_in, Taps::default());
    let (id, addr) = (
        ServerId::from("hole"),
        ServerAddress::from(hole.local_addr().unwrap()),
    );

    let stuck = {
        let (a, id, addr) = (a.clone(), id.clone(), addr.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            (
                a.request_vote(&id, &addr, vote_from(&a, 1)).await,
                started.elapsed(),
            )
        })
    };
    let healthy = guarded(
        "a call to the healthy peer",
        a.request_vote(c.local_id(), &c.local_addr(), vote_from(&a, 2)),
    )
    .await;
    assert_eq!(healthy.unwrap().term, 2);
    let (result, elapsed) = guarded("the stuck call", stuck).await.unwrap();
    assert!(
        matches!(result, Err(Error::Unreachable { .. })),
        "{result:?}"
    );
    assert!(
        (connect_timeout..connect_timeout + Duration::from_secs(3)).contains(&elapsed),
        "failed after {elapsed:?}"
    );
    let started = Instant::now();
    let again = a.request_vote(&id, &addr, vote_from(&a, 3)).await;
    assert!(matches!(again, Err(Error::Unreachable { .. })), "{again:?}");
    assert!(
        started.elapsed() < connect_timeout,
        "dialled again within the backoff"
    );
    a.close().await;
    c.close().await;
}
