//! Handshake admission (issue 14, item 5): floods of connection attempts, from an
//! unauthenticated socket and from a member re-dialling in a loop, are refused or asked to
//! validate their address before the node spends crypto work or memory on them, and a
//! legitimate peer's calls keep succeeding throughout.
//!
//! The bounds are asserted from the node's own `TransportStats`. The figures of
//! SECURITY.md ("Limits against a hostile peer") come from the `#[ignore]`d
//! `attack_figures` in a release build:
//! `cargo test --release --test quic_admission -- --ignored --nocapture`.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Fixture, peak_rss_mib, reset_peak_rss};
use quicraft::{
    AppendEntriesRequest, AppendEntriesResponse, Command, QuicConfig, QuicTransport,
    RequestVoteRequest, RequestVoteResponse, RpcHeader, Transport, TransportStats,
};
use quinn::crypto::rustls::QuicClientConfig;

// ---------------------------------------------------------------------------------------------
// The node under attack and its legitimate peer.

/// Node `n2` under attack, answering heartbeats on the fast path and votes from its consumer;
/// node `n1`, its legitimate peer, already connected to it.
struct Scene {
    fixture: Fixture,
    target: QuicTransport,
    peer: QuicTransport,
}

impl Scene {
    async fn new(configure: impl FnOnce(QuicConfig) -> QuicConfig) -> Self {
        let fixture = Fixture::new("admission");
        let (target, mut incoming) = QuicTransport::bind(configure(fixture.config("n2")))
            .await
            .expect("bind n2");
        let me = RpcHeader::new(target.local_id().clone(), target.local_addr());
        {
            let me = me.clone();
            target.set_heartbeat_handler(Some(Arc::new(move |rpc: quicraft::Rpc| {
                let term = match rpc.command() {
                    Command::AppendEntries(r) => r.term,
                    _ => 0,
                };
                rpc.respond(Ok(AppendEntriesResponse {
                    header: me.clone(),
                    term,
                    last_log: 0,
                    success: true,
                    no_retry_backoff: false,
                }
                .into()));
            })));
        }
        tokio::spawn(async move {
            while let Some(rpc) = incoming.recv().await {
                let term = match rpc.command() {
                    Command::RequestVote(r) => r.term,
                    _ => 0,
                };
                rpc.respond(Ok(RequestVoteResponse {
                    header: me.clone(),
                    term,
                    granted: true,
                }
                .into()));
            }
        });
        let (peer, _peer_incoming) = fixture.node("n1").await;
        let scene = Self {
            fixture,
            target,
            peer,
        };
        // Connected before the attack starts, as a member of a running cluster is.
        scene.call_once().await.expect("first call");
        scene
    }

    fn target_addr(&self) -> SocketAddr {
        self.target.local_socket_addr()
    }

    fn stats(&self) -> TransportStats {
        self.target.stats()
    }

    /// One heartbeat and one vote from the legitimate peer; the heartbeat's round trip.
    async fn call_once(&self) -> Result<Duration, String> {
        let id = self.target.local_id().clone();
        let addr = self.target.local_addr();
        let header = RpcHeader::new(self.peer.local_id().clone(), self.peer.local_addr());
        let started = Instant::now();
        let heartbeat = AppendEntriesRequest::heartbeat(header.clone(), 3);
        match self.peer.append_entries(&id, &addr, heartbeat).await {
            Ok(r) if r.success && r.term == 3 => {}
            other => return Err(format!("heartbeat: {other:?}")),
        }
        let rtt = started.elapsed();
        let vote = RequestVoteRequest {
            header,
            term: 3,
            last_log_index: 0,
            last_log_term: 0,
            leadership_transfer: false,
        };
        match self.peer.request_vote(&id, &addr, vote).await {
            Ok(r) if r.granted => Ok(rtt),
            other => Err(format!("vote: {other:?}")),
        }
    }

    /// Runs the legitimate peer's calls every 10 ms while `attack` runs, and one more round
    /// after it; returns what the attack returned and the peer's record.
    async fn under_attack<T>(&self, attack: impl Future<Output = T>) -> (T, Record) {
        let stop = AtomicBool::new(false);
        let record = Mutex::new(Record::default());
        let calls = async {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let outcome = self.call_once().await;
                let mut r = record.lock().unwrap();
                match outcome {
                    Ok(rtt) => r.rtts.push(rtt),
                    Err(e) => r.failures.push(e),
                }
                drop(r);
                if stop.load(Ordering::Relaxed) {
                    return;
                }
            }
        };
        let attack = async {
            let out = attack.await;
            stop.store(true, Ordering::Relaxed);
            out
        };
        let (out, ()) = tokio::join!(attack, calls);
        (out, record.into_inner().unwrap())
    }
}

/// The legitimate peer's calls during an attack.
#[derive(Default, Debug)]
struct Record {
    rtts: Vec<Duration>,
    failures: Vec<String>,
}

impl Record {
    fn p99(&self) -> Duration {
        let mut rtts = self.rtts.clone();
        rtts.sort();
        rtts.get((rtts.len() * 99).div_ceil(100).saturating_sub(1))
            .copied()
            .unwrap_or_default()
    }

    fn assert_all_succeeded(&self) {
        assert!(
            self.failures.is_empty(),
            "legitimate calls failed: {:?}",
            self.failures
        );
        assert!(!self.rtts.is_empty(), "no legitimate call was made");
    }
}

/// Attempts the node has decided on: admitted, asked to validate, or refused.
fn decided(stats: &TransportStats) -> u64 {
    stats.handshakes_accepted + stats.handshakes_retried + stats.handshakes_refused
}

/// Waits (polling, at most 20 s) until `cond` holds: the stats have no change notification.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within 20 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Attack 1: half-open handshakes from a raw UDP socket.

/// Writes QUIC Initial packets, each the first flight of a new connection (a real TLS 1.3
/// ClientHello with ALPN `quicraft/1`, built by quinn-proto), and sends them from UDP sockets
/// that never read an answer: every attempt the node admits stays half-open until its
/// `connect_timeout`. No client certificate is involved (none is sent before the server's
/// flight).
struct InitialFlood {
    endpoint: quinn_proto::Endpoint,
    config: quinn_proto::ClientConfig,
    buf: Vec<u8>,
}

impl InitialFlood {
    fn new() -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        tls.alpn_protocols = vec![quicraft::tls::ALPN.to_vec()];
        let config =
            quinn_proto::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
        Self {
            endpoint: quinn_proto::Endpoint::new(Arc::default(), None, false, None),
            config,
            buf: Vec::new(),
        }
    }

    /// Sends one new connection's Initial datagrams from `socket` to `target`.
    fn send_one(&mut self, socket: &std::net::UdpSocket, target: SocketAddr) {
        let now = Instant::now();
        let (_, mut conn) = self
            .endpoint
            .connect(now, self.config.clone(), target, "localhost")
            .unwrap();
        self.buf.clear();
        while let Some(transmit) = conn.poll_transmit(now, 1, &mut self.buf) {
            // A full socket buffer drops it, as a real flood's would.
            let _ = socket.send_to(&self.buf[..transmit.size], target);
            self.buf.clear();
        }
    }
}

fn udp_socket() -> std::net::UdpSocket {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap()
}

/// `count` half-open handshakes from ONE socket, sent in batches of `batch`, each batch once
/// the node has decided on the one before (so none is lost to a full socket buffer).
async fn initial_flood_from_one_socket(scene: &Scene, count: u64, batch: u64) -> u64 {
    let socket = udp_socket();
    let mut flood = InitialFlood::new();
    let start = decided(&scene.stats());
    let mut sent = 0;
    while sent < count {
        for _ in 0..batch.min(count - sent) {
            flood.send_one(&socket, scene.target_addr());
            sent += 1;
        }
        eventually("the node decides on every attempt sent", || {
            decided(&scene.stats()) >= start + sent
        })
        .await;
    }
    sent
}

/// 2,000 half-open handshakes from one UDP socket: at most `max_handshakes_per_address` (4)
/// are admitted at once, the rest are refused before any crypto work, and the legitimate
/// peer's heartbeats and votes all succeed meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_from_one_socket_is_refused_beyond_the_per_address_cap() {
    common::init_tracing();
    // Half-open handshakes stay in progress for the whole test.
    let scene = Scene::new(|c| c.connect_timeout(Duration::from_secs(60))).await;
    let before = scene.stats();
    assert_eq!(
        before.handshakes_accepted, 1,
        "the legitimate peer's handshake"
    );
    let (sent, record) = scene
        .under_attack(initial_flood_from_one_socket(&scene, 2_000, 100))
        .await;
    let stats = scene.stats();
    println!(
        "flood from one socket: {stats:?}; legitimate calls {} (p99 {:?})",
        record.rtts.len(),
        record.p99()
    );
    record.assert_all_succeeded();
    assert_eq!(decided(&stats) - decided(&before), sent);
    // The legitimate peer's one handshake, then at most 4 of the attacker's at once.
    assert!(
        stats.handshakes_in_progress_high_water <= 4,
        "{} handshakes were in progress at once",
        stats.handshakes_in_progress_high_water
    );
    // Each admitted one stays half-open: 4 admitted, every other one refused.
    assert_eq!(stats.handshakes_accepted - before.handshakes_accepted, 4);
    assert_eq!(stats.handshakes_refused, sent - 4);
    assert_eq!(stats.handshakes_in_progress, 4);
    assert_eq!(stats.handshakes_retried, 0, "below the retry threshold");
    // What stays open on the node: the legitimate connection and the half-open ones.
    assert!(scene.target.open_connections() <= 1 + 4);
}

/// One half-open handshake from each of 48 sockets: once 16 are in progress (the retry
/// threshold), every further unvalidated attempt gets a Retry and holds nothing; a new node
/// dialling meanwhile passes the Retry (quicraft's dialler echoes the token) and its call
/// succeeds, and the legitimate peer's calls all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_retry_threshold_unvalidated_attempts_get_a_retry() {
    common::init_tracing();
    // Half-open handshakes stay in progress for the whole test.
    let scene = Scene::new(|c| c.connect_timeout(Duration::from_secs(60))).await;
    let before = scene.stats();
    let sockets: Vec<_> = (0..48).map(|_| udp_socket()).collect();
    let flood = async {
        let mut flood = InitialFlood::new();
        for (i, socket) in sockets.iter().enumerate() {
            flood.send_one(socket, scene.target_addr());
            eventually("the node decides on the attempt", || {
                decided(&scene.stats()) > decided(&before) + i as u64
            })
            .await;
        }
    };
    let ((), record) = scene.under_attack(flood).await;
    record.assert_all_succeeded();
    let stats = scene.stats();
    assert_eq!(stats.handshakes_accepted - before.handshakes_accepted, 16);
    assert_eq!(stats.handshakes_retried, 48 - 16);
    assert_eq!(stats.handshakes_refused, 0);
    assert!(stats.handshakes_in_progress_high_water <= 16);

    // A new member dials now: Retry, then a handshake from its validated address.
    let (n3, _incoming) = scene.fixture.node("n3").await;
    let header = RpcHeader::new(n3.local_id().clone(), n3.local_addr());
    n3.append_entries(
        scene.target.local_id(),
        &scene.target.local_addr(),
        AppendEntriesRequest::heartbeat(header, 3),
    )
    .await
    .expect("a heartbeat from a node whose dial was retried");
    let after = scene.stats();
    assert_eq!(after.handshakes_retried, stats.handshakes_retried + 1);
    assert_eq!(after.handshakes_accepted, stats.handshakes_accepted + 1);
}

// ---------------------------------------------------------------------------------------------
// Attack 2: a member re-dialling as fast as it can.

/// A raw quinn client presenting member `node`'s valid certificate, checking the server as
/// quicraft does (it must be `server`).
fn member_client(fixture: &Fixture, node: &str, server: &str) -> quinn::ClientConfig {
    let context = quicraft::tls::TlsContext::new(
        fixture.cluster(),
        fixture.identity(node),
        fixture.ca.roots(),
    )
    .unwrap();
    context.client_config(server).unwrap()
}

/// Dials `target` from one endpoint, one dial after another, for `how_long`: each connection
/// that opens is dropped at once and dialled again. Returns (connections opened, refused).
async fn redial_flood(
    client: quinn::ClientConfig,
    target: SocketAddr,
    how_long: Duration,
) -> (u64, u64) {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(client);
    let (mut opened, mut refused) = (0, 0);
    let deadline = Instant::now() + how_long;
    while Instant::now() < deadline {
        match endpoint.connect(target, "localhost").unwrap().await {
            Ok(conn) => {
                opened += 1;
                conn.close(0u32.into(), b"again");
            }
            Err(quinn::ConnectionError::ConnectionClosed(close))
                if close.error_code == quinn_proto::TransportErrorCode::CONNECTION_REFUSED =>
            {
                refused += 1;
            }
            Err(e) => panic!("unexpected dial outcome: {e}"),
        }
    }
    endpoint.close(0u32.into(), b"done");
    (opened, refused)
}

/// Member `n3` (a valid certificate) re-dials the node from one socket as fast as it can for
/// 2 s: the node admits its burst (16) and then 8 handshakes per second, refuses the rest
/// before any crypto work, and the legitimate peer's calls all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_dialling_member_is_held_to_the_per_address_rate() {
    common::init_tracing();
    let scene = Scene::new(|c| c).await;
    let before = scene.stats();
    let client = member_client(&scene.fixture, "n3", "n2");
    let started = Instant::now();
    let ((opened, refused), record) = scene
        .under_attack(redial_flood(
            client,
            scene.target_addr(),
            Duration::from_secs(2),
        ))
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    let stats = scene.stats();
    println!(
        "re-dial flood: {opened} opened, {refused} refused; {stats:?}; legitimate calls {} (p99 {:?})",
        record.rtts.len(),
        record.p99()
    );
    record.assert_all_succeeded();
    let admitted = stats.handshakes_accepted - before.handshakes_accepted;
    assert_eq!(admitted, opened, "every admitted handshake opened");
    let allowed = 16 + (8.0 * elapsed).ceil() as u64;
    assert!(
        admitted <= allowed,
        "{admitted} handshakes admitted in {elapsed:.1} s"
    );
    assert!(refused > 0, "the re-dialling member was never refused");
    assert_eq!(
        stats.handshakes_refused - before.handshakes_refused,
        refused
    );
}

/// With the admission limits raised out of the way, the same re-dial flood is admitted in
/// full: the test above measures the limit, not a slow dialler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_rate_limit_the_re_dialling_member_is_admitted() {
    common::init_tracing();
    let scene = Scene::new(|c| c.handshake_rate_per_address(1_000_000, 1_000_000)).await;
    let client = member_client(&scene.fixture, "n3", "n2");
    let ((opened, refused), record) = scene
        .under_attack(redial_flood(
            client,
            scene.target_addr(),
            Duration::from_millis(500),
        ))
        .await;
    record.assert_all_succeeded();
    assert_eq!(refused, 0);
    assert!(opened > 16, "only {opened} dials in 500 ms");
}

// ---------------------------------------------------------------------------------------------
// Figures for SECURITY.md (release build).

/// Resets the process's peak resident set (Linux `clear_refs` 5) and returns a closure
/// reading it, in MiB. The node shares the process with its peer and the attacker, so this is
/// an upper bound on the node's own.
/// Per attack: the process's peak RSS, the legitimate peer's heartbeat p99 and failures.
/// Run with `cargo test --release --test quic_admission -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints the figures of SECURITY.md; run in a release build"]
async fn attack_figures() {
    let scene = Scene::new(|c| c).await;
    let quiet = scene
        .under_attack(tokio::time::sleep(Duration::from_secs(2)))
        .await
        .1;
    println!(
        "no attack: {} calls, {} failed, heartbeat p99 {:?}, peak RSS {} MiB",
        quiet.rtts.len(),
        quiet.failures.len(),
        quiet.p99(),
        peak_rss_mib()
    );

    // 2,000 half-open handshakes from one socket, unpaced (as fast as one thread writes).
    reset_peak_rss();
    let target = scene.target_addr();
    let (sent, record) = scene
        .under_attack(async {
            let socket = udp_socket();
            let mut flood = InitialFlood::new();
            for i in 0..2_000u64 {
                flood.send_one(&socket, target);
                if i % 50 == 49 {
                    tokio::task::yield_now().await;
                }
            }
            // Let the node work through what it received while the calls go on.
            tokio::time::sleep(Duration::from_secs(3)).await;
            2_000u64
        })
        .await;
    println!(
        "handshake flood ({sent} from one socket): {} calls, {} failed, heartbeat p99 {:?}, \
         peak RSS {} MiB; {:?}",
        record.rtts.len(),
        record.failures.len(),
        record.p99(),
        peak_rss_mib(),
        scene.stats()
    );

    // The same from 2,000 sockets (past the retry threshold: Retry).
    reset_peak_rss();
    let (_, record) = scene
        .under_attack(async {
            let mut flood = InitialFlood::new();
            let sockets: Vec<_> = (0..2_000).map(|_| udp_socket()).collect();
            for (i, socket) in sockets.iter().enumerate() {
                flood.send_one(socket, target);
                if i % 50 == 49 {
                    tokio::task::yield_now().await;
                }
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
        })
        .await;
    println!(
        "handshake flood (2000 sockets): {} calls, {} failed, heartbeat p99 {:?}, \
         peak RSS {} MiB; {:?}",
        record.rtts.len(),
        record.failures.len(),
        record.p99(),
        peak_rss_mib(),
        scene.stats()
    );

    // A member re-dialling as fast as it can for 10 s, from a process of its own (its own
    // connection state would otherwise count as the node's).
    reset_peak_rss();
    let n3 = scene.fixture.issue("n3");
    let attacker = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "redial_attacker_process",
            "--nocapture",
        ])
        .env("QUICRAFT_REDIAL", format!("{target} 10"))
        .env("QUICRAFT_REDIAL_CERT", &n3.cert_pem)
        .env("QUICRAFT_REDIAL_KEY", &n3.key_pem)
        .env("QUICRAFT_REDIAL_CA", scene.fixture.ca.cert_pem())
        .output();
    let (output, record) = scene.under_attack(attacker).await;
    let output = String::from_utf8_lossy(&output.unwrap().stdout).into_owned();
    let counts = output
        .lines()
        .find_map(|l| l.strip_prefix("REDIAL "))
        .unwrap_or("? ?")
        .to_owned();
    let (opened, refused) = counts.split_once(' ').unwrap();
    println!(
        "re-dial flood (10 s, attacker in its own process): {opened} admitted, {refused} \
         refused; {} calls, {} failed, heartbeat p99 {:?}, node process peak RSS {} MiB; {:?}",
        record.rtts.len(),
        record.failures.len(),
        record.p99(),
        peak_rss_mib(),
        scene.stats()
    );
}

/// The re-dialling member of `attack_figures`, run as a process of its own; does nothing
/// unless `QUICRAFT_REDIAL` ("<address> <seconds>") and the PEM variables are set.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
#[ignore = "the attacker process of attack_figures"]
async fn redial_attacker_process() {
    let Ok(spec) = std::env::var("QUICRAFT_REDIAL") else {
        return;
    };
    let (target, secs) = spec.split_once(' ').unwrap();
    let pem = |name: &str| std::env::var(name).unwrap().into_bytes();
    let context = quicraft::tls::TlsContext::new(
        "admission",
        quicraft::Identity::from_pem(&pem("QUICRAFT_REDIAL_CERT"), &pem("QUICRAFT_REDIAL_KEY"))
            .unwrap(),
        quicraft::CaRoots::from_pem(&pem("QUICRAFT_REDIAL_CA")).unwrap(),
    )
    .unwrap();
    let (opened, refused) = redial_flood(
        context.client_config("n2").unwrap(),
        target.parse().unwrap(),
        Duration::from_secs(secs.parse().unwrap()),
    )
    .await;
    println!("REDIAL {opened} {refused}");
}
