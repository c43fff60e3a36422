//! Connections this node closes: a duplicate retired by the tie-break (a pipeline moves to
//! the winner, a snapshot finishes), a connection closed under a call.

use super::*;

/// Two nodes, "a" < "b", made to hold two connections at once, as simultaneous dials do (every
/// node of a cluster dials the others at start): `b` dials `a` directly while a relay holds
/// `a`'s dial to `b`; whatever the test starts on `b`'s connection runs there; then
/// [`let_a_win`](Self::let_a_win) lets `a`'s handshake through, `a`'s connection wins the
/// tie-break at both ends, and `b` retires its own, closing it once idle after
/// `rpc_timeout` + `connect_timeout` = 1.5 s.
struct Duplicate {
    a: QuicTransport,
    b: QuicTransport,
    /// What `a`'s consumer was given, in order.
    a_commands: mpsc::UnboundedReceiver<Command>,
    /// Snapshot bytes `a`'s reader has read.
    a_progress: watch::Receiver<u64>,
    relay: Relay,
    a_call: JoinHandle<Result<RequestVoteResponse, Error>>,
}

impl Duplicate {
    /// `b`'s grace before it closes a retired connection (`rpc_timeout` + `connect_timeout`),
    /// after which it waits until nothing is under way on it.
    const GRACE: Duration = Duration::from_millis(1500);

    async fn start(fx: &Fixture) -> Self {
        let (b, b_in) = bind(
            fx.config("b")
                .rpc_timeout(Duration::from_secs(1))
                .connect_timeout(Duration::from_millis(500)),
        )
        .await;
        let (a, a_in) = bind(fx.config("a").connect_timeout(Duration::from_secs(10))).await;
        let (commands_tx, a_commands) = mpsc::unbounded_channel();
        let (progress_tx, a_progress) = watch::channel(0);
        serve(
            &a,
            a_in,
            Taps {
                commands: Some(commands_tx),
                progress: Some(progress_tx),
                ..Taps::default()
            },
        );
        serve(&b, b_in, Taps::default());
        let mut relay = Relay::start(b.local_socket_addr()).await;
        relay.set(Link::Held).await;
        let a_call = {
            let (a, b_id) = (a.clone(), b.local_id().clone());
            let via_relay = ServerAddress::from(relay.addr);
            tokio::spawn(async move { a.request_vote(&b_id, &via_relay, vote_from(&a, 1)).await })
        };
        guarded(
            "a's dial reaching the relay",
            relay.held.wait_for(|n| *n > 0),
        )
        .await
        .unwrap();
        Self {
            a,
            b,
            a_commands,
            a_progress,
            relay,
            a_call,
        }
    }

    fn a_id(&self) -> &ServerId {
        self.a.local_id()
    }

    async fn let_a_win(mut self) -> Self {
        assert!(
            self.b.connections()[0].dialled_by_us,
            "b is not on its own connection"
        );
        self.relay.set(Link::Up).await;
        guarded("a's call", &mut self.a_call)
            .await
            .unwrap()
            .unwrap();
        let (a_id, b) = (self.a.local_id().clone(), self.b.clone());
        eventually("b keeping a's connection", || {
            b.connections()
                .iter()
                .any(|c| c.peer == a_id && !c.dialled_by_us)
        })
        .await;
        self
    }

    async fn close(self) {
        self.a.close().await;
        self.b.close().await;
    }
}

/// A pipeline must survive the retirement of a duplicate connection: `b` opens a pipeline on
/// its own connection, then `a`'s connection wins the tie-break and `b` retires (and within
/// 3 s closes) its own. The pipeline must go on working, in order and without a failure.
///
/// Found by the 60 s load test: `pool::retire` used to close the retired connection with a
/// pipeline still on it, failing every append in flight and after. Pipelines now finish their
/// stream on the retiring connection, wait for its answers, and reopen on the winner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_on_a_duplicate_connection_survives_its_retirement() {
    common::init_tracing();
    let fx = Fixture::new("retire-pipeline");
    let mut d = Duplicate::start(&fx).await;
    let (a_id, a_addr) = (d.a_id().clone(), d.a.local_addr());
    let b = d.b.clone();
    let pipeline = guarded("b's pipeline", b.append_entries_pipeline(&a_id, &a_addr))
        .await
        .unwrap();
    guarded("b's first append", pipeline.send(append(&b, 0)))
        .await
        .unwrap();
    let first = guarded("b's first completion", pipeline.next())
        .await
        .unwrap();
    assert!(first.response.is_ok(), "{:?}", first.response);
    d = d.let_a_win().await;

    // The retired connection closes within 2 × grace; the pipeline must carry on past that.
    let until = Instant::now() + 2 * Duplicate::GRACE + Duration::from_secs(1);
    let mut seq = 1;
    while Instant::now() < until && seq < 100_000 {
        let sent = guarded("an append", pipeline.send(append(&b, seq))).await;
        assert_eq!(
            sent.as_ref().ok(),
            Some(&seq),
            "append {seq} not sent: {sent:?}"
        );
        let done = guarded("a completion", pipeline.next()).await.unwrap();
        assert_eq!(done.seq, seq);
        let response = done
            .response
            .unwrap_or_else(|e| panic!("append {seq} failed: {e:?}"));
        assert_eq!(response.last_log, seq);
        seq += 1;
    }
    // Every append reached a once, in order.
    let mut positions = Vec::new();
    while let Ok(command) = d.a_commands.try_recv() {
        if let Command::AppendEntries(r) = command {
            positions.push(r.prev_log_entry);
        }
    }
    assert_eq!(positions, (0..seq).collect::<Vec<_>>());
    pipeline.close();
    d.close().await;
}

/// An AsyncRead fed by the test: yields what is sent on the channel, pends in between.
fn fed_source() -> (
    mpsc::UnboundedSender<io::Result<bytes::Bytes>>,
    impl AsyncRead + Send + Unpin + 'static,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    (tx, tokio_util::io::StreamReader::new(Box::pin(stream)))
}

/// A snapshot under way on a connection that loses the tie-break is not cut: the retired
/// connection closes only once nothing runs on it. `b` streams a snapshot to `a` on its own
/// connection, holding back the rest of its data past the retirement's grace, then sends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_on_a_retired_connection_finishes() {
    common::init_tracing();
    let fx = Fixture::new("retire-snapshot");
    let mut d = Duplicate::start(&fx).await;
    let (a_id, a_addr) = (d.a_id().clone(), d.a.local_addr());
    let b = d.b.clone();
    let size = 8 * 1024 * 1024;
    let (feed, source) = fed_source();
    let snapshot = {
        let b = b.clone();
        let request = snapshot_request(&b, size);
        tokio::spawn(async move { b.install_snapshot(&a_id, &a_addr, request, source).await })
    };
    let mib = || Ok(bytes::Bytes::from(vec![7u8; 1024 * 1024]));
    feed.send(mib()).unwrap();
    guarded(
        "the first MiB reaching a's reader",
        d.a_progress.wait_for(|n| *n >= 1024 * 1024),
    )
    .await
    .unwrap();
    d = d.let_a_win().await;
    // Time passing is what is tested here: the retirement's grace runs out while the snapshot
    // is still under way on the retired connection.
    tokio::time::sleep(Duplicate::GRACE * 2).await;
    for _ in 1..8 {
        feed.send(mib()).unwrap();
    }
    drop(feed);
    let response = guarded("the snapshot", snapshot).await.unwrap();
    let response = response.expect("a snapshot on a retired connection was cut");
    assert!(
        response.success,
        "the receiver did not read the whole snapshot"
    );
    d.close().await;
}

/// A call cut because this node closed its connection while the transport runs must fail
/// with a retryable error, `ConnectionLost`: `Error::Shutdown` means "this transport was
/// closed, give up".
///
/// `codes::connection_error` used to map every `ConnectionError::LocallyClosed` to
/// `Error::Shutdown` (an engine gives up on that) even while the transport was open: a retired
/// duplicate or, as here, a revoked peer's connection. It is `ConnectionLost` now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_cut_by_a_local_connection_close_is_connection_lost_not_shutdown() {
    common::init_tracing();
    let fx = Fixture::new("local-close");
    let (a, _a_in) = fx.node("n1").await;
    let (b, mut b_in) = fx.node("n2").await;
    // A call from a that b holds unanswered.
    let call = {
        let (a, id, addr) = (a.clone(), b.local_id().clone(), b.local_addr());
        tokio::spawn(async move {
            let request = TimeoutNowRequest {
                header: RpcHeader::new(a.local_id().clone(), a.local_addr()),
            };
            a.timeout_now(&id, &addr, request).await
        })
    };
    let _held = guarded("the held call", b_in.recv()).await.unwrap();
    // a revokes b: its live connection to b is closed by a, while a keeps running.
    let b_cert = b.tls_identity().leaf().clone();
    let crl = fx
        .ca
        .revocation_list_pem(&[&b_cert], 1, time::Duration::days(1))
        .unwrap();
    let lists = quicraft::RevocationLists::from_pem(crl.as_bytes()).unwrap();
    a.reload_tls(a.tls_identity(), fx.ca.roots(), lists)
        .unwrap();
    let result = guarded("the cut call", call).await.unwrap();
    assert!(
        matches!(result, Err(Error::ConnectionLost { .. })),
        "a call cut by a local close of a live transport's connection gave {result:?}"
    );
    a.close().await;
    b.close().await;
}
