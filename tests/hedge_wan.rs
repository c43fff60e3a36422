//! Hedged heartbeats by default on a long path: across the WAN emulator of `benches/wan`
//! (40 ms round trip), a node with the default configuration ([`HeartbeatHedge::Auto`]) sends
//! every heartbeat twice, 5 ms apart, so a heartbeat whose original is lost (here: held by the
//! peer) is answered through its copy about one round trip later. The loopback counterpart,
//! no copies on a short path, is in tests/quic_transport.rs. Needs root and /dev/net/tun;
//! skips, printing why, without them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../benches/wan/emulator.rs"]
mod emulator;

use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use common::Fixture;
use emulator::{LinkConfig, Side, WanLink, check_supported};
use quicraft::{
    AppendEntriesRequest, AppendEntriesResponse, HeartbeatHedge, QuicConfig, QuicTransport, Rpc,
    Transport,
};

const ONE_WAY: Duration = Duration::from_millis(20);
const PORT: u16 = 7300;
/// A bound on every wait, so a broken transport fails the test instead of hanging it.
const LIMIT: Duration = Duration::from_secs(20);

fn config(fixture: &Fixture, node: &str, side: Side) -> QuicConfig {
    fixture
        .config(node)
        .bind(format!("{}:{PORT}", side.addr()).parse().unwrap())
}

/// Runs `f` on a current-thread runtime on a thread inside `side`'s namespace.
fn on_side<T: Send + 'static>(
    link: &WanLink,
    side: Side,
    f: impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = T>>> + Send + 'static,
) -> std::thread::JoinHandle<T> {
    link.spawn_in(side, "node", move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f())
    })
}

#[test]
fn on_a_long_path_a_lost_heartbeat_is_answered_through_its_copy_by_default() {
    if let Err(reason) = check_supported() {
        eprintln!("skipped: {reason}");
        println!("skipped: {reason}");
        return;
    }
    common::init_tracing();
    let fixture = Arc::new(Fixture::new("hedge-wan"));
    let link = WanLink::start(LinkConfig::new(ONE_WAY)).expect("start the WAN link");

    // The follower: holds the first heartbeat it gets (as if it were lost), answers the rest.
    let (b_tx, b_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let follower = {
        let fixture = fixture.clone();
        on_side(&link, Side::B, move || {
            Box::pin(async move {
                let (b, _incoming) = QuicTransport::bind(config(&fixture, "n2", Side::B))
                    .await
                    .expect("bind n2");
                let held = Arc::new(Mutex::new(Vec::<Rpc>::new()));
                let slot = held.clone();
                let me = common::header(&b);
                b.set_heartbeat_handler(Some(Arc::new(move |rpc: Rpc| {
                    let mut held = slot.lock().unwrap();
                    if held.is_empty() {
                        held.push(rpc);
                    } else {
                        let answer = AppendEntriesResponse {
                            header: me.clone(),
                            term: 1,
                            last_log: 0,
                            success: true,
                            no_retry_backoff: false,
                        };
                        rpc.respond(Ok(answer.into()));
                    }
                })));
                b_tx.send((b.local_id().clone(), b.local_addr())).unwrap();
                let _ = tokio::time::timeout(LIMIT, stop_rx).await;
                b.close().await;
                held.lock().unwrap().len()
            })
        })
    };
    let (b_id, b_addr) = b_rx.recv_timeout(LIMIT).expect("n2 started");

    // The leader, with the default configuration: two heartbeats.
    let leader = on_side(&link, Side::A, move || {
        Box::pin(async move {
            let (a, _incoming) = QuicTransport::bind(config(&fixture, "n1", Side::A))
                .await
                .expect("bind n1");
            let mut took = Vec::new();
            for _ in 0..2 {
                let started = Instant::now();
                let heartbeat = AppendEntriesRequest::heartbeat(common::header(&a), 1);
                let answer =
                    tokio::time::timeout(LIMIT, a.append_entries(&b_id, &b_addr, heartbeat))
                        .await
                        .expect("the heartbeat did not finish in time")
                        .expect("heartbeat");
                assert!(answer.success);
                took.push(started.elapsed());
            }
            let stats = a.stats();
            let rtt = a.connections()[0].rtt;
            a.close().await;
            (
                took,
                stats.heartbeat_copies,
                stats.heartbeat_copies_won,
                rtt,
            )
        })
    });
    let (took, copies, won, rtt) = leader.join().expect("the leader panicked");
    let _ = stop_tx.send(());
    let held = follower.join().expect("the follower panicked");
    println!("heartbeats took {took:?}; copies {copies}, won {won}; rtt {rtt:?}");

    assert_eq!(
        held, 1,
        "the first heartbeat reached the follower and was held"
    );
    assert!(rtt >= HeartbeatHedge::AUTO_DELAY, "a long path: {rtt:?}");
    // Both heartbeats got a copy (the round trip is longer than the hedge's delay); the
    // first, whose original is never answered, was answered through it, long before its
    // deadline (5 s).
    assert_eq!(copies, 2);
    assert_eq!(won, 1);
    assert!(
        took[0] < Duration::from_secs(1),
        "the held heartbeat took {:?}",
        took[0]
    );
}
