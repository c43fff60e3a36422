//! A peer that opens streams as fast as it can, on one connection or several, and one that
//! dials again and again.

use super::*;

const REQUEST_VOTE_KIND: u8 = 0x02;

/// A raw quinn connection with a valid certificate of the cluster (node `node`) to `server`.
async fn raw_connection(
    fx: &Fixture,
    node: &str,
    server: &QuicTransport,
) -> (quinn::Endpoint, quinn::Connection) {
    let tls = TlsContext::new(fx.cluster(), fx.identity(node), fx.ca.roots()).unwrap();
    let endpoint = quinn::Endpoint::client(loopback()).unwrap();
    let connecting = endpoint
        .connect_with(
            tls.client_config(server.local_id().as_str()).unwrap(),
            server.local_socket_addr(),
            "quicraft",
        )
        .unwrap();
    let conn = guarded("the raw handshake", connecting).await.unwrap();
    (endpoint, conn)
}

/// Opens bidirectional streams on `conn` as fast as it can, at most `limit`, writing one byte
/// of a request header on each (a stream is invisible to the peer until written) and never
/// finishing it; the streams are held open. Publishes how many are open.
fn hold_streams(conn: quinn::Connection, limit: u64) -> (watch::Receiver<u64>, JoinHandle<()>) {
    let (opened_tx, opened) = watch::channel(0u64);
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        for i in 0..limit {
            let Ok((mut send, recv)) = conn.open_bi().await else {
                return;
            };
            if send.write_all(&[REQUEST_VOTE_KIND]).await.is_err() {
                return;
            }
            held.push((send, recv));
            opened_tx.send_replace(i + 1);
        }
    });
    (opened, task)
}

/// Heartbeats and votes from a regular peer to `server`: all succeed within the caller's
/// timeout; returns the slowest.
async fn still_served(from: &QuicTransport, server: &QuicTransport, calls: u64) -> Duration {
    let (id, addr) = (server.local_id().clone(), server.local_addr());
    let mut slowest = Duration::ZERO;
    for i in 0..calls {
        let started = Instant::now();
        let heartbeat = AppendEntriesRequest::heartbeat(header(from), 5);
        let beat = guarded("a heartbeat", from.append_entries(&id, &addr, heartbeat)).await;
        assert!(beat.is_ok(), "heartbeat {i} failed: {beat:?}");
        let voted = guarded(
            "a vote",
            from.request_vote(&id, &addr, vote_from(from, i + 1)),
        )
        .await;
        assert!(voted.is_ok(), "vote {i} failed: {voted:?}");
        slowest = slowest.max(started.elapsed());
    }
    slowest
}

/// The node under test, with `max_streams` and a heartbeat handler, and a 10 s RPC timeout so
/// that no held stream is refused (freeing its slot) while the test looks; and a regular peer
/// (2 s RPC timeout) already connected to it.
async fn flood_target(fx: &Fixture, max_streams: u32) -> (QuicTransport, QuicTransport) {
    let (srv, srv_in) = bind(
        fx.config("srv")
            .max_streams(max_streams)
            .rpc_timeout(Duration::from_secs(10)),
    )
    .await;
    let me = header(&srv);
    srv.set_heartbeat_handler(Some(Arc::new(move |rpc: Rpc| {
        let response = AppendEntriesResponse {
            header: me.clone(),
            term: 5,
            last_log: 0,
            success: true,
            no_retry_backoff: false,
        };
        rpc.respond(Ok(response.into()));
    })));
    serve(&srv, srv_in, Taps::default());
    let (peer, _peer_in) = bind(fx.config("peer").rpc_timeout(Duration::from_secs(2))).await;
    still_served(&peer, &srv, 1).await;
    (srv, peer)
}

/// A member that opens streams as fast as it can (at most 20,000), writing a byte of a
/// request on each and never finishing it, gets exactly `max_streams` (128 here) of them: the
/// 129th open waits for stream credit. The node runs at most one task per stream plus its
/// fixed ones, and a regular peer's heartbeats and votes still succeed within their 2 s
/// timeout. Then the same member churns 20,000 streams (open, one byte, reset): the task count
/// stays within the same bound and the peer is served throughout.
///
/// The limit, as this test documents it: per connection, a peer holds at most `max_streams`
/// request streams (default 1024), each costing one task and at most one frame buffer until
/// the request is whole or `rpc_timeout` passes.
/// A connection starts with a grant of 64 streams (an idle connection stays small) and grants
/// more as the peer uses them: a peer holding its streams open reaches `max_streams` through
/// three doublings, and no further.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_grant_grows_with_use_up_to_max_streams() {
    common::init_tracing();
    const MAX_STREAMS: u32 = 512;
    let fx = Fixture::new("stream-grant");
    let (srv, _peer) = flood_target(&fx, MAX_STREAMS).await;
    let (_endpoint, conn) = raw_connection(&fx, "flood", &srv).await;
    let (mut opened, flood) = hold_streams(conn.clone(), 2 * u64::from(MAX_STREAMS));
    guarded(
        "the held streams reaching max_streams",
        opened.wait_for(|n| *n >= u64::from(MAX_STREAMS)),
    )
    .await
    .unwrap();
    eventually("the node serving every held stream", || {
        srv.stats().request_streams >= MAX_STREAMS as usize
    })
    .await;
    assert_eq!(
        *opened.borrow(),
        u64::from(MAX_STREAMS),
        "no more than max_streams"
    );
    assert!(!flood.is_finished(), "the rest wait for a stream");
    conn.close(0u32.into(), b"done");
    guarded("the flood ending", flood).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_opening_streams_as_fast_as_it_can_is_held_to_max_streams() {
    common::init_tracing();
    const MAX_STREAMS: u32 = 128;
    const FLOOD: u64 = 20_000;
    let fx = Fixture::new("stream-flood");
    let (srv, peer) = flood_target(&fx, MAX_STREAMS).await;
    // Accept loop, and the peer's connection.
    let baseline = srv.task_count();
    let sampler = TaskSampler::start(&srv);

    // Held streams: the flood stops at the limit.
    let (endpoint, conn) = raw_connection(&fx, "flood", &srv).await;
    let started = Instant::now();
    let (mut opened, flood) = hold_streams(conn.clone(), FLOOD);
    guarded(
        "the flood reaching max_streams",
        opened.wait_for(|n| *n >= u64::from(MAX_STREAMS)),
    )
    .await
    .unwrap();
    // The node has a task on every one of them before anything else is checked.
    eventually("the node serving every flood stream", || {
        srv.task_count() >= baseline + MAX_STREAMS as usize
    })
    .await;
    let slowest = still_served(&peer, &srv, 20).await;
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "too slow to judge: held streams may have expired"
    );
    assert_eq!(
        *opened.borrow(),
        u64::from(MAX_STREAMS),
        "the flood opened more streams than max_streams"
    );
    assert!(!flood.is_finished());
    eprintln!(
        "held flood: {} streams open, node tasks peak {} (baseline {baseline}), slowest peer call {slowest:?}",
        *opened.borrow(),
        sampler.peak()
    );
    conn.close(0u32.into(), b"done");
    guarded("the flood ending", flood).await.unwrap();
    eventually("the flood's tasks ending", || srv.task_count() <= baseline).await;

    // Churned streams: open, a byte, reset, 20,000 times, while the peer calls.
    let (_endpoint2, conn) = raw_connection(&fx, "flood", &srv).await;
    let churn = tokio::spawn(async move {
        let started = Instant::now();
        for i in 0..FLOOD {
            let (mut send, recv) = conn.open_bi().await.unwrap();
            let _ = send.write_all(&[REQUEST_VOTE_KIND]).await;
            let _ = send.reset(0u32.into());
            drop(recv);
            if i % 5000 == 4999 {
                tokio::task::yield_now().await;
            }
        }
        conn.close(0u32.into(), b"done");
        started.elapsed()
    });
    let mut rounds = 0;
    let mut slowest = Duration::ZERO;
    while !churn.is_finished() && rounds < 10_000 {
        slowest = slowest.max(still_served(&peer, &srv, 1).await);
        rounds += 1;
    }
    let churned_in = guarded("the churn", churn).await.unwrap();
    let peak = sampler.finish().await;
    eprintln!(
        "churn: {FLOOD} streams in {churned_in:?}; {rounds} peer rounds meanwhile, slowest {slowest:?}; \
         node tasks peak {peak} (baseline {baseline}, max_streams {MAX_STREAMS})"
    );
    assert!(rounds > 0, "the peer was not served during the churn");
    // Per flood connection: its handshake/serving task and at most one task per stream.
    assert!(
        peak <= baseline + 1 + MAX_STREAMS as usize + 1,
        "the node ran {peak} tasks (baseline {baseline}, max_streams {MAX_STREAMS})"
    );
    eventually("the churn's tasks ending", || srv.task_count() <= baseline).await;
    endpoint.close(0u32.into(), b"done");
    peer.close().await;
    srv.close().await;
}

/// The stream limit is per connection, and a member may open several connections (a known gap
/// in SECURITY.md: duplicates are retired only after up to 2 × (`rpc_timeout` +
/// `connect_timeout`)). Four connections holding streams get `max_streams` each: the node's
/// tasks stay within 4 × (`max_streams` + 1) plus its fixed ones, and a regular peer is still
/// served within its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_limit_applies_per_connection_and_the_node_stays_responsive() {
    common::init_tracing();
    const MAX_STREAMS: u32 = 64;
    const CONNECTIONS: usize = 4;
    let fx = Fixture::new("connection-flood");
    let (srv, peer) = flood_target(&fx, MAX_STREAMS).await;
    let baseline = srv.task_count();
    let sampler = TaskSampler::start(&srv);
    let mut floods = Vec::new();
    for _ in 0..CONNECTIONS {
        let (endpoint, conn) = raw_connection(&fx, "flood", &srv).await;
        let (mut opened, task) = hold_streams(conn.clone(), 20_000);
        guarded(
            "a flood reaching max_streams",
            opened.wait_for(|n| *n >= u64::from(MAX_STREAMS)),
        )
        .await
        .unwrap();
        floods.push((endpoint, conn, opened, task));
    }
    let slowest = still_served(&peer, &srv, 20).await;
    let total: u64 = floods.iter().map(|f| *f.2.borrow()).sum();
    assert_eq!(total, CONNECTIONS as u64 * u64::from(MAX_STREAMS));
    let peak = sampler.finish().await;
    eprintln!(
        "{CONNECTIONS} flood connections: {total} streams open, node tasks peak {peak} \
         (baseline {baseline}), slowest peer call {slowest:?}"
    );
    // Per connection: its serving task, one task per stream; plus the retirement of each
    // replaced duplicate.
    let bound = baseline + CONNECTIONS * (MAX_STREAMS as usize + 2);
    assert!(peak <= bound, "the node ran {peak} tasks (bound {bound})");
    for (endpoint, conn, _, task) in floods {
        conn.close(0u32.into(), b"done");
        guarded("a flood ending", task).await.unwrap();
        endpoint.close(0u32.into(), b"done");
    }
    peer.close().await;
    srv.close().await;
}

// ---------------------------------------------------------------------------------------------
// A peer that dials again and again.

/// Six processes of one node ("n1", each on its own port) dial "n2" one after another. Each
/// new connection replaces the last (a re-dial by the same node wins the tie-break), and the
/// replaced one is retired with a grace period (here 32 s: `rpc_timeout` + `connect_timeout`).
/// Without a cap, every retired connection, each with its own frame budget, would stay open
/// through its grace period; with it, "n2" holds at most the live one and two retiring ones,
/// and the newest dialler is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_keeps_redialling_holds_at_most_three_connections() {
    common::init_tracing();
    let fx = Fixture::new("redial");
    let (b, b_in) = bind(fx.config("n2").rpc_timeout(Duration::from_secs(30))).await;
    serve(&b, b_in, Taps::default());
    let mut dialers = Vec::new();
    for term in 1..=6 {
        let (a, a_in) = bind(fx.config("n1")).await;
        let granted = guarded(
            "a vote from a new process of n1",
            a.request_vote(b.local_id(), &b.local_addr(), vote_from(&a, term)),
        )
        .await
        .unwrap();
        assert_eq!(granted.term, term);
        dialers.push((a, a_in));
    }
    eventually("n2 closing the oldest retired connections", || {
        b.open_connections() <= 3
    })
    .await;
    let (newest, _) = dialers.last().unwrap();
    let granted = guarded(
        "a vote from the newest process",
        newest.request_vote(b.local_id(), &b.local_addr(), vote_from(newest, 7)),
    )
    .await
    .unwrap();
    assert_eq!(granted.term, 7);
    assert!(b.open_connections() <= 3, "{}", b.open_connections());
    for (a, _) in dialers {
        a.close().await;
    }
    b.close().await;
}
