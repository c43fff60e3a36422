//! The WAN link emulator of `benches/wan` measured from outside: a UDP echo between its two
//! namespaces sees the configured round trip, loss and rate. Needs root and /dev/net/tun;
//! skips (printing why) without them.

#[path = "../benches/wan/emulator.rs"]
mod emulator;

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use emulator::{LinkConfig, Side, WanLink, check_supported};

const ECHO_PORT: u16 = 7777;

/// One test at a time: they measure timing, and a rate-cap blast beside a round-trip
/// measurement would measure the CPU instead.
static SERIAL: Mutex<()> = Mutex::new(());

/// Starts the link (holding [`SERIAL`]), or prints why the test is skipped.
fn start(config: LinkConfig) -> Option<(MutexGuard<'static, ()>, WanLink)> {
    if let Err(reason) = check_supported() {
        eprintln!("skipped: {reason}");
        println!("skipped: {reason}");
        return None;
    }
    let serial = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    Some((serial, WanLink::start(config).expect("start the WAN link")))
}

/// An echo server on B's address until `stop`.
fn echo_server(link: &WanLink, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    link.spawn_in(Side::B, "echo", move || {
        let socket = UdpSocket::bind(SocketAddrV4::new(Side::B.addr(), ECHO_PORT)).expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, from)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(&buf[..n], from);
            }
        }
    })
}

/// Sends `count` datagrams from A to the echo server, one per `interval`, and returns the
/// round trip of each one that came back.
fn echo_run(link: &WanLink, count: u64, interval: Duration) -> Vec<Duration> {
    let base = Instant::now();
    link.spawn_in(Side::A, "echo-client", move || {
        let socket = UdpSocket::bind(SocketAddrV4::new(Side::A.addr(), 0)).expect("bind");
        socket
            .connect(SocketAddr::from(SocketAddrV4::new(
                Side::B.addr(),
                ECHO_PORT,
            )))
            .expect("connect");
        let receiver = socket.try_clone().expect("clone the socket");
        receiver
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        let sent_all = Arc::new(AtomicBool::new(false));
        let done = sent_all.clone();
        let collect = thread::spawn(move || {
            let mut rtts = Vec::new();
            let mut buf = [0u8; 64];
            let mut quiet_since: Option<Instant> = None;
            loop {
                match receiver.recv(&mut buf) {
                    Ok(16) => {
                        let nanos = u64::from_be_bytes(buf[8..16].try_into().expect("8 bytes"));
                        rtts.push(base.elapsed() - Duration::from_nanos(nanos));
                        quiet_since = None;
                    }
                    _ if done.load(Ordering::Relaxed) => {
                        // Everything in flight is back within a second (or lost).
                        let since = *quiet_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > Duration::from_millis(500) {
                            return rtts;
                        }
                    }
                    _ => {}
                }
            }
        });
        let start = Instant::now();
        for seq in 0..count {
            let due = start + interval * u32::try_from(seq).expect("small count");
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            let mut payload = [0u8; 16];
            payload[..8].copy_from_slice(&seq.to_be_bytes());
            let nanos = u64::try_from(base.elapsed().as_nanos()).expect("fits");
            payload[8..].copy_from_slice(&nanos.to_be_bytes());
            socket.send(&payload).expect("send");
        }
        sent_all.store(true, Ordering::Relaxed);
        collect.join().expect("collector")
    })
    .join()
    .expect("echo client")
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[test]
fn round_trip_matches_the_configured_delay() {
    let Some((_serial, link)) = start(LinkConfig::new(Duration::from_millis(20))) else {
        return;
    };
    let stop = Arc::new(AtomicBool::new(false));
    let server = echo_server(&link, stop.clone());
    let mut rtts = echo_run(&link, 200, Duration::from_millis(5));
    stop.store(true, Ordering::Relaxed);
    server.join().expect("echo server");

    assert_eq!(rtts.len(), 200, "no loss configured: {:?}", link.stats());
    rtts.sort();
    let (p50, p95) = (quantile(&rtts, 0.5), quantile(&rtts, 0.95));
    println!(
        "RTT over 20 ms one way: min {:?} p50 {p50:?} p95 {p95:?} max {:?}",
        rtts[0],
        rtts[rtts.len() - 1]
    );
    // 40 ms ± 5 ms; the slowest few percent may meet a busy CPU (2 cores, debug build).
    let (low, high) = (Duration::from_millis(35), Duration::from_millis(45));
    assert!(rtts[0] >= low && p50 <= high && p95 <= high, "RTT {rtts:?}");
    assert!(
        rtts[0] >= Duration::from_millis(40),
        "a packet left before its delay: {:?}",
        rtts[0]
    );
}

#[test]
fn loss_matches_the_configured_probability() {
    let config = LinkConfig::new(Duration::from_millis(5)).loss(0.10);
    let Some((_serial, link)) = start(config) else {
        return;
    };
    let stop = Arc::new(AtomicBool::new(false));
    let server = echo_server(&link, stop.clone());
    let sent = 1000u64;
    let received = echo_run(&link, sent, Duration::from_millis(1)).len() as u64;
    stop.store(true, Ordering::Relaxed);
    server.join().expect("echo server");

    let stats = link.stats();
    println!("A->B: {}\nB->A: {}", stats.a_to_b, stats.b_to_a);
    // Each direction loses 10%: a round trip survives with probability 0.81. Four standard
    // deviations of the binomial either side.
    let expected = 0.81 * sent as f64;
    let sigma = (sent as f64 * 0.81 * 0.19).sqrt();
    assert!(
        (received as f64 - expected).abs() <= 4.0 * sigma,
        "{received} of {sent} came back, expected {expected:.0} ± {:.0}",
        4.0 * sigma
    );
    for (name, direction) in [("A->B", stats.a_to_b), ("B->A", stats.b_to_a)] {
        let rate = direction.dropped_loss as f64 / direction.packets_in as f64;
        let sigma = (0.1 * 0.9 / direction.packets_in as f64).sqrt();
        assert!(
            (rate - 0.1).abs() <= 4.0 * sigma,
            "{name} lost {rate:.3} of its packets"
        );
        assert_eq!(direction.dropped_queue, 0, "{name}: no rate cap configured");
    }
    // The forwarder accounts for every datagram it saw that did not come back. (The kernel
    // may drop one before the forwarder sees it on a loaded machine: its TUN TX counter.)
    assert!(
        sent - stats.a_to_b.packets_in <= 3,
        "{stats:?}, kernel drops {:?}",
        link.kernel_drops(Side::A)
    );
    assert_eq!(
        stats.a_to_b.dropped_loss + stats.b_to_a.dropped_loss,
        stats.a_to_b.packets_in - received,
        "{stats:?}"
    );
}

#[test]
fn rate_cap_holds_and_tail_drops_count() {
    // 20 Mbit/s with a 64 KiB queue; A sends 3000 datagrams of 1000 bytes at ~41 Mbit/s.
    let rate = 20_000_000u64;
    let config = LinkConfig::new(Duration::from_millis(5)).rate(rate, 64 * 1024);
    let Some((_serial, link)) = start(config) else {
        return;
    };
    let sink = link.spawn_in(Side::B, "sink", || {
        let socket = UdpSocket::bind(SocketAddrV4::new(Side::B.addr(), ECHO_PORT)).expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let mut buf = [0u8; 2048];
        let (mut first, mut last, mut bytes, mut count) = (None, Instant::now(), 0u64, 0u64);
        while let Ok(n) = socket.recv(&mut buf) {
            let now = Instant::now();
            if first.is_none() {
                first = Some(now);
            } else {
                bytes += n as u64 + 28; // IP and UDP headers cross the bottleneck too
            }
            last = now;
            count += 1;
        }
        let elapsed = last - first.unwrap_or(last);
        (count, bytes, elapsed)
    });
    let sent = 3000u64;
    link.spawn_in(Side::A, "blast", move || {
        let socket = UdpSocket::bind(SocketAddrV4::new(Side::A.addr(), 0)).expect("bind");
        let to = SocketAddrV4::new(Side::B.addr(), ECHO_PORT);
        // About twice the cap: 10 datagrams every 2 ms.
        let start = Instant::now();
        for i in 0..sent {
            if i % 10 == 0 {
                let due = start + Duration::from_millis(2 * i / 10);
                thread::sleep(due.saturating_duration_since(Instant::now()));
            }
            let _ = socket.send_to(&[7u8; 1000], to);
        }
    })
    .join()
    .expect("blast");
    let (count, bytes, elapsed) = sink.join().expect("sink");
    let stats = link.stats();
    let measured = bytes as f64 * 8.0 / elapsed.as_secs_f64();
    println!(
        "A->B: {}; kernel drops {:?}; {count} received at {:.1} Mbit/s",
        stats.a_to_b,
        link.kernel_drops(Side::A),
        measured / 1e6
    );
    assert!(
        (measured / rate as f64 - 1.0).abs() < 0.1,
        "measured {measured:.0} bit/s against a cap of {rate}"
    );
    assert!(
        stats.a_to_b.dropped_queue > 0,
        "a blast overflows the queue"
    );
    assert_eq!(count, stats.a_to_b.delivered, "{stats:?}");
    assert_eq!(
        stats.a_to_b.packets_in,
        stats.a_to_b.delivered + stats.a_to_b.dropped_queue,
        "every packet is delivered or tail-dropped: {stats:?}"
    );
}
