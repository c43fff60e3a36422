//! A consumer that stops reading.

use super::*;

/// The follower's consumer (capacity 8) never reads; 40 appends arrive at once, twice. Each
/// caller first waits (backpressure), then fails: the 8 that were queued time out on the
/// caller's deadline (`Error::Timeout`), the others are refused with `UNAVAILABLE` once the
/// follower's wait for its consumer (twice its RPC timeout, far shorter than the caller's
/// here) passes without room in the queue (or, for those whose frame waited for the
/// connection's byte budget, once its RPC timeout passes without room in the budget). Nothing beyond the 8
/// is ever queued (the consumer, when it finally reads, finds exactly the first 8), the
/// follower's tasks stay within `max_streams` plus its fixed ones, the bytes it holds for
/// incoming frames (`TransportStats`) never exceed its per-connection budget (four appends
/// here, so the budget is what holds the others back) and return to zero, and it serves
/// again once the consumer reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_that_stops_reading_gives_backpressure_then_timeouts_with_bounded_queues() {
    common::init_tracing();
    const CAPACITY: usize = 8;
    const MAX_STREAMS: u32 = 16;
    const CALLS: u64 = 40;
    let caller_timeout = Duration::from_secs(4);
    // The follower waits twice this for its consumer, 400 ms.
    let follower_timeout = Duration::from_millis(200);
    let fx = Fixture::new("stuck-consumer");
    let (a, _a_in) = bind(fx.config("n1").rpc_timeout(caller_timeout)).await;
    // The largest append body of the test (the warm-up's: varints grow with the sequence
    // number); frames of four of them at most. The peer's budget holds the queued requests
    // (at their decoded size, about a kilobyte each here) and the frames under way.
    let frame_max = postcard::to_stdvec(&append(&a, 999)).unwrap().len();
    let budget = CAPACITY * 2048 + MAX_STREAMS as usize * 4 * frame_max;
    let (b, mut b_in) = bind(
        fx.config("n2")
            .rpc_timeout(follower_timeout)
            .consumer_capacity(CAPACITY)
            .max_streams(MAX_STREAMS)
            .max_message_size(4 * frame_max)
            .max_buffered_bytes_per_peer(budget),
    )
    .await;
    let (id, addr) = (b.local_id().clone(), b.local_addr());
    // The node's own tasks (accept loop, metrics sampler), before any connection.
    let own_tasks = b.task_count();

    // Connect first (answering one call), so only the flood's tasks come and go below.
    let warmup = {
        let (a, id, addr) = (a.clone(), id.clone(), addr.clone());
        tokio::spawn(async move { a.append_entries(&id, &addr, append(&a, 999)).await })
    };
    let rpc = guarded("the warm-up call", b_in.recv()).await.unwrap();
    answer(header(&b), rpc, Taps::default()).await;
    guarded("the warm-up call", warmup).await.unwrap().unwrap();
    // Left: the node's own tasks and the connection's.
    eventually("the warm-up stream's task ending", || {
        b.task_count() <= own_tasks + 1
    })
    .await;
    let baseline = b.task_count();
    let sampler = TaskSampler::start(&b);

    let wave = |first: u64| {
        (first..first + CALLS)
            .map(|seq| {
                let (a, id, addr) = (a.clone(), id.clone(), addr.clone());
                tokio::spawn(async move {
                    let started = Instant::now();
                    let result = a.append_entries(&id, &addr, append(&a, seq)).await;
                    (seq, result, started.elapsed())
                })
            })
            .collect::<Vec<_>>()
    };
    // Sorts a wave's outcomes: (timed out on the caller's deadline, refused as unavailable).
    let judge = |outcomes: Vec<(u64, Result<AppendEntriesResponse, Error>, Duration)>| {
        let (mut timeouts, mut refused) = (Vec::new(), Vec::new());
        for (seq, result, elapsed) in outcomes {
            match result {
                Err(Error::Timeout { rpc, after }) => {
                    assert_eq!(rpc, RpcKind::AppendEntries);
                    assert!(after <= caller_timeout);
                    assert!(elapsed >= caller_timeout, "append {seq}: early timeout");
                    timeouts.push(seq);
                }
                Err(Error::Remote(e)) if e.code == ErrorCode::UNAVAILABLE => {
                    // It waited for room in the queue until the follower's deadline.
                    assert!(
                        elapsed >= follower_timeout,
                        "append {seq}: refused after {elapsed:?}, without waiting"
                    );
                    refused.push(seq);
                }
                other => panic!("append {seq}: expected a timeout or UNAVAILABLE, got {other:?}"),
            }
        }
        (timeouts, refused)
    };

    let mut first = Vec::new();
    for call in wave(0) {
        first.push(guarded("an append", call).await.unwrap());
    }
    let (timeouts, refused) = judge(first);
    assert_eq!(
        (timeouts.len(), refused.len()),
        (CAPACITY, CALLS as usize - CAPACITY),
        "expected exactly the queue's capacity to be queued"
    );
    assert_eq!(b_in.len(), CAPACITY);
    assert_eq!(b.stats().consumer_queued, CAPACITY);

    // The queue is still full: a second wave is refused whole, and queues nothing more.
    let mut second = Vec::new();
    for call in wave(CALLS) {
        second.push(guarded("an append", call).await.unwrap());
    }
    let (timeouts_2, refused_2) = judge(second);
    assert!(timeouts_2.is_empty(), "{timeouts_2:?} were queued");
    assert_eq!(refused_2.len(), CALLS as usize);

    let peak = sampler.finish().await;
    eprintln!(
        "follower tasks: baseline {baseline}, peak {peak} (max_streams {MAX_STREAMS}); \
         queued {CAPACITY} of {} appends",
        2 * CALLS
    );
    assert!(
        peak <= baseline + MAX_STREAMS as usize + 1,
        "the follower ran {peak} tasks (baseline {baseline}, max_streams {MAX_STREAMS})"
    );
    // The streams of the abandoned calls end too, and with them every byte held for them.
    eventually("the follower's stream tasks ending", || {
        b.task_count() <= baseline
    })
    .await;
    let stats = b.stats();
    eprintln!("follower after the waves: {stats:?} (budget {budget} bytes)");
    assert!(
        stats.frame_bytes_buffered_high_water <= budget,
        "the follower held {} bytes of frames from one connection (budget {budget})",
        stats.frame_bytes_buffered_high_water
    );
    // What is still held is exactly what the queued requests hold, until the consumer takes
    // them.
    let queued_hold = stats.frame_bytes_buffered;
    assert!(
        queued_hold >= CAPACITY * frame_max,
        "the queued requests hold their share of the budget ({stats:?})"
    );
    assert_eq!(stats.request_streams, 0, "{stats:?}");
    assert_eq!(stats.consumer_queued, CAPACITY, "{stats:?}");

    // The consumer finally reads: exactly the 8 queued appends, the first 8 of the first wave.
    let mut drained = Vec::new();
    while let Some(rpc) = b_in.try_recv() {
        match rpc.command() {
            Command::AppendEntries(r) => drained.push(r.prev_log_entry),
            other => panic!("unexpected {other:?}"),
        }
        answer(header(&b), rpc, Taps::default()).await;
    }
    assert!(b_in.is_empty());
    assert_eq!(b.stats().consumer_queued, 0);
    assert_eq!(
        b.stats().frame_bytes_buffered,
        0,
        "taken by the consumer, the requests no longer count"
    );
    drained.sort_unstable();
    let mut queued = timeouts.clone();
    queued.sort_unstable();
    assert_eq!(
        drained, queued,
        "the consumer found other RPCs than the queued ones"
    );

    // With the consumer reading again, the follower serves at once.
    serve(&b, b_in, Taps::default());
    let response = guarded(
        "a call after the drain",
        a.append_entries(&id, &addr, append(&a, 7)),
    )
    .await
    .unwrap();
    assert_eq!(response.last_log, 7);
    a.close().await;
    b.close().await;
}
