//! A WAN link emulator for the benchmarks and tests (no netem on this kernel).
//!
//! [`WanLink::start`] creates two network namespaces of its own (`qrwan-<pid>-<n>-a` and `-b`),
//! a TUN device `qrwan0` in each (`198.18.0.1` in A and `198.18.0.2` in B, as /32 peers, IPv6
//! off), and a forwarder: per direction, one thread reads IP packets from one TUN device and
//! one writes them into the other after the configured one-way delay, jitter, random loss and
//! rate cap (a bottleneck with a bounded queue and tail drop), in order unless reordering is
//! asked for. It works on IP packets, so TCP and UDP see the same link. Code that must run
//! inside a namespace runs on a thread that entered it first ([`WanLink::spawn_in`]): sockets
//! created there belong to that namespace.
//!
//! Dropping the [`WanLink`] (also while a panic unwinds) stops the forwarder and deletes both
//! namespaces; namespaces left behind by a killed process are deleted by the next start.
//! [`check_supported`] says why it cannot run (not root, no `/dev/net/tun`, no `ip`).
//!
//! No unsafe code: `setns` is nix's safe wrapper, the TUNSETIFF ioctl is the `tun-tap` crate's.

#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use tun_tap::{Iface, Mode};

/// The TUN device's name, the same in both namespaces.
const TUN_NAME: &str = "qrwan0";
/// Largest IP packet read from a TUN device (its MTU is 1500; room to spare).
const MAX_PACKET: usize = 65_536;
/// Prefix of every namespace this module creates.
const NS_PREFIX: &str = "qrwan-";
/// Port the wake-up datagrams of a shutdown go to (nothing listens; the forwarder drops them).
const WAKE_PORT: u16 = 9;

/// Links started by this process, for unique namespace names.
static LINKS: AtomicU64 = AtomicU64::new(0);

/// One end of the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// Namespace A, address 198.18.0.1.
    A,
    /// Namespace B, address 198.18.0.2.
    B,
}

impl Side {
    /// This side's address on the link.
    pub(crate) fn addr(self) -> Ipv4Addr {
        match self {
            Self::A => Ipv4Addr::new(198, 18, 0, 1),
            Self::B => Ipv4Addr::new(198, 18, 0, 2),
        }
    }

    /// The other side.
    pub(crate) fn peer(self) -> Self {
        match self {
            Self::A => Self::B,
            Self::B => Self::A,
        }
    }

    fn index(self) -> usize {
        match self {
            Self::A => 0,
            Self::B => 1,
        }
    }
}

/// What the link does to packets, the same in both directions.
#[derive(Debug, Clone)]
pub(crate) struct LinkConfig {
    /// One-way propagation delay.
    pub(crate) delay: Duration,
    /// Each packet's delay varies uniformly within ± this (never below zero).
    pub(crate) jitter: Duration,
    /// Probability that a packet is lost, 0.0 to 1.0.
    pub(crate) loss: f64,
    /// Bottleneck rate in bits per second (IP bytes), or `None` for no cap.
    pub(crate) rate_bps: Option<u64>,
    /// Bytes the bottleneck queue holds before it drops arrivals (tail drop). Only with a rate.
    pub(crate) queue_bytes: usize,
    /// With jitter, lets packets overtake each other; otherwise a packet never leaves before
    /// the one that arrived before it.
    pub(crate) reorder: bool,
    /// Seed of the loss and jitter generator (each direction derives its own).
    pub(crate) seed: u64,
}

impl LinkConfig {
    /// A link with `delay` one way, no jitter, loss or rate cap.
    pub(crate) fn new(delay: Duration) -> Self {
        Self {
            delay,
            jitter: Duration::ZERO,
            loss: 0.0,
            rate_bps: None,
            queue_bytes: 1 << 20,
            reorder: false,
            seed: 0x5eed_1234_abcd_0001,
        }
    }

    /// Sets the loss probability (0.0 to 1.0).
    pub(crate) fn loss(mut self, probability: f64) -> Self {
        self.loss = probability.clamp(0.0, 1.0);
        self
    }

    /// Sets the jitter.
    pub(crate) fn jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// Caps the rate at `bits_per_second` with a queue of `queue_bytes`.
    pub(crate) fn rate(mut self, bits_per_second: u64, queue_bytes: usize) -> Self {
        self.rate_bps = Some(bits_per_second.max(1));
        self.queue_bytes = queue_bytes;
        self
    }

    /// Lets packets be reordered by jitter.
    pub(crate) fn reorder(mut self, reorder: bool) -> Self {
        self.reorder = reorder;
        self
    }

    /// Sets the random seed.
    pub(crate) fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

/// Counters of one direction of the link.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DirectionStats {
    /// Packets read from the sending side's TUN device.
    pub(crate) packets_in: u64,
    /// Their bytes.
    pub(crate) bytes_in: u64,
    /// Packets written to the receiving side's TUN device.
    pub(crate) delivered: u64,
    /// Packets dropped at random (the configured loss).
    pub(crate) dropped_loss: u64,
    /// Packets dropped because the bottleneck queue was full (tail drop).
    pub(crate) dropped_queue: u64,
    /// Packets the receiving TUN device refused (write errors).
    pub(crate) write_errors: u64,
}

/// Counters of both directions.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LinkStats {
    /// From A to B.
    pub(crate) a_to_b: DirectionStats,
    /// From B to A.
    pub(crate) b_to_a: DirectionStats,
}

impl fmt::Display for DirectionStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} packets in, {} delivered, {} lost (random), {} tail-dropped, {} write errors",
            self.packets_in,
            self.delivered,
            self.dropped_loss,
            self.dropped_queue,
            self.write_errors
        )
    }
}

#[derive(Default)]
struct Counters {
    packets_in: AtomicU64,
    bytes_in: AtomicU64,
    delivered: AtomicU64,
    dropped_loss: AtomicU64,
    dropped_queue: AtomicU64,
    write_errors: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> DirectionStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DirectionStats {
            packets_in: get(&self.packets_in),
            bytes_in: get(&self.bytes_in),
            delivered: get(&self.delivered),
            dropped_loss: get(&self.dropped_loss),
            dropped_queue: get(&self.dropped_queue),
            write_errors: get(&self.write_errors),
        }
    }
}

/// Why the emulator cannot run here, in a sentence; `Ok` when it can.
pub(crate) fn check_supported() -> Result<(), String> {
    if !is_root() {
        return Err("the WAN emulator needs root (network namespaces and TUN devices)".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Err("the WAN emulator needs /dev/net/tun, which this machine lacks".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(out) if out.status.success() => Ok(()),
        _ => Err("the WAN emulator needs the `ip` command (iproute2)".into()),
    }
}

/// Effective uid 0, read from /proc (no unsafe `geteuid` binding needed).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Uid:"))?;
            // Real, effective, saved, filesystem.
            line.split_whitespace().nth(2).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

/// Runs `ip ARGS`, failing with its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("run ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Joins the calling thread to the network namespace `name` (until the thread ends).
fn enter_namespace(name: &str) -> io::Result<()> {
    let file = File::open(format!("/var/run/netns/{name}"))?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

/// Deletes namespaces of this module whose process is gone (a killed run leaves them).
fn delete_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        if !pid.is_empty() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// The packet source of the loss and jitter decisions: xorshift64*.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A packet waiting out its delay.
type Scheduled = Reverse<(Instant, u64, Vec<u8>)>;

/// The packets of one direction waiting for their departure time, earliest first.
#[derive(Default)]
struct DelayLine {
    queue: Mutex<BinaryHeap<Scheduled>>,
    ready: Condvar,
}

/// A running emulated link. Dropping it stops the forwarder and deletes the namespaces.
pub(crate) struct WanLink {
    namespaces: Vec<String>,
    config: LinkConfig,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    lines: Vec<Arc<DelayLine>>,
    counters: [Arc<Counters>; 2],
}

impl fmt::Debug for WanLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WanLink")
            .field("namespaces", &self.namespaces)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl WanLink {
    /// Creates the namespaces and TUN devices and starts the forwarder. Fails with a sentence
    /// saying why (see [`check_supported`]); whatever was created is removed again.
    pub(crate) fn start(config: LinkConfig) -> Result<Self, String> {
        check_supported()?;
        delete_stale_namespaces();
        let n = LINKS.fetch_add(1, Ordering::Relaxed);
        let base = format!("{NS_PREFIX}{}-{n}", std::process::id());
        let mut link = Self {
            namespaces: Vec::new(),
            config,
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            lines: Vec::new(),
            counters: Default::default(),
        };
        // From here on, `link`'s Drop removes what exists if a step fails.
        for side in [Side::A, Side::B] {
            let name = format!("{base}-{}", if side == Side::A { "a" } else { "b" });
            ip(&["netns", "add", &name])?;
            link.namespaces.push(name.clone());
            setup_namespace(&name, side)?;
        }
        link.start_forwarder()?;
        Ok(link)
    }

    fn start_forwarder(&mut self) -> Result<(), String> {
        // TUNSETIFF looks the device up in the caller's namespace: open each device from a
        // thread that entered its namespace. The descriptors then work from any thread.
        let names = self.namespaces.clone();
        let ifaces = thread::spawn(move || -> io::Result<Vec<Arc<Iface>>> {
            let mut ifaces = Vec::new();
            for name in &names {
                enter_namespace(name)?;
                ifaces.push(Arc::new(Iface::without_packet_info(TUN_NAME, Mode::Tun)?));
            }
            Ok(ifaces)
        })
        .join()
        .map_err(|_| "the TUN opening thread panicked".to_owned())?
        .map_err(|e| format!("open the TUN devices: {e}"))?;

        for (from, to) in [(Side::A, Side::B), (Side::B, Side::A)] {
            let line = Arc::new(DelayLine::default());
            let counters = self.counters[from.index()].clone();
            let seed = self.config.seed ^ (from.index() as u64 + 1).wrapping_mul(0x9e37_79b9);
            let reader = Reader {
                iface: ifaces[from.index()].clone(),
                line: line.clone(),
                counters: counters.clone(),
                config: self.config.clone(),
                rng: Rng::new(seed),
                stop: self.stop.clone(),
            };
            let writer = Writer {
                iface: ifaces[to.index()].clone(),
                line: line.clone(),
                counters,
                stop: self.stop.clone(),
            };
            let label = if from == Side::A { "a2b" } else { "b2a" };
            let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
                thread::Builder::new()
                    .name(name)
                    .spawn(f)
                    .map_err(|e| format!("spawn a forwarder thread: {e}"))
            };
            self.threads.push(spawn(
                format!("wan-{label}-rx"),
                Box::new(move || reader.run()),
            )?);
            self.threads.push(spawn(
                format!("wan-{label}-tx"),
                Box::new(move || writer.run()),
            )?);
            self.lines.push(line);
        }
        Ok(())
    }

    /// The configuration the link runs with.
    pub(crate) fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// The name of `side`'s network namespace.
    pub(crate) fn namespace(&self, side: Side) -> &str {
        &self.namespaces[side.index()]
    }

    /// Runs `f` on a new thread that first enters `side`'s namespace: sockets it (or a tokio
    /// runtime it builds) creates belong there.
    pub(crate) fn spawn_in<F, T>(&self, side: Side, name: &str, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let namespace = self.namespace(side).to_owned();
        thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                if let Err(e) = enter_namespace(&namespace) {
                    panic!("enter network namespace {namespace}: {e}");
                }
                f()
            })
            .expect("spawn a thread")
    }

    /// The forwarder's counters so far.
    pub(crate) fn stats(&self) -> LinkStats {
        LinkStats {
            a_to_b: self.counters[0].snapshot(),
            b_to_a: self.counters[1].snapshot(),
        }
    }

    /// Packets `side`'s TUN device dropped before the forwarder read them (its TX `dropped`
    /// counter): drops the forwarder did not choose. `None` when `ip` does not say.
    pub(crate) fn kernel_drops(&self, side: Side) -> Option<u64> {
        let out = Command::new("ip")
            .args([
                "-n",
                self.namespace(side),
                "-s",
                "link",
                "show",
                "dev",
                TUN_NAME,
            ])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        lines.find(|l| l.trim_start().starts_with("TX:"))?;
        lines.next()?.split_whitespace().nth(3)?.parse().ok()
    }

    /// Wakes a forwarder reader blocked on `side`'s TUN device: a datagram from inside the
    /// namespace to the peer goes out through the device.
    fn wake_reader(&self, side: Side) {
        let peer = SocketAddrV4::new(side.peer().addr(), WAKE_PORT);
        let handle = self.spawn_in(side, "wan-wake", move || {
            if let Ok(socket) = UdpSocket::bind("0.0.0.0:0") {
                let _ = socket.send_to(b"wake", peer);
            }
        });
        let _ = handle.join();
    }
}

impl Drop for WanLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for line in &self.lines {
            line.ready.notify_all();
        }
        if self.namespaces.len() == 2 && !self.threads.is_empty() {
            self.wake_reader(Side::A);
            self.wake_reader(Side::B);
        }
        // Join what stopped within a second; a thread still blocked is left behind (it only
        // holds a descriptor of a device about to be deleted).
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline && self.threads.iter().any(|t| !t.is_finished()) {
            thread::sleep(Duration::from_millis(5));
        }
        for handle in self.threads.drain(..) {
            if handle.is_finished() {
                let _ = handle.join();
            }
        }
        for name in &self.namespaces {
            let _ = ip(&["-n", name, "link", "del", TUN_NAME]);
            if let Err(e) = ip(&["netns", "del", name]) {
                eprintln!("WAN emulator: could not delete namespace {name}: {e}");
            }
        }
    }
}

/// Creates `side`'s TUN device and addresses inside the (new, empty) namespace `name`.
fn setup_namespace(name: &str, side: Side) -> Result<(), String> {
    let local = side.addr().to_string();
    let peer = side.peer().addr().to_string();
    // No IPv6: no neighbour discovery or router solicitations on the link.
    let out = Command::new("ip")
        .args(["netns", "exec", name, "sysctl", "-qw"])
        .args([
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ])
        .output()
        .map_err(|e| format!("run sysctl in {name}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "disable IPv6 in {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    ip(&["-n", name, "link", "set", "lo", "up"])?;
    ip(&["-n", name, "tuntap", "add", "dev", TUN_NAME, "mode", "tun"])?;
    ip(&[
        "-n", name, "addr", "add", &local, "peer", &peer, "dev", TUN_NAME,
    ])?;
    ip(&[
        "-n",
        name,
        "link",
        "set",
        TUN_NAME,
        "txqueuelen",
        "1000",
        "up",
    ])
}

/// Reads one direction's packets and schedules them: tail drop at the bottleneck queue,
/// random loss, then delay and jitter.
struct Reader {
    iface: Arc<Iface>,
    line: Arc<DelayLine>,
    counters: Arc<Counters>,
    config: LinkConfig,
    rng: Rng,
    stop: Arc<AtomicBool>,
}

impl Reader {
    fn run(mut self) {
        let mut buffer = vec![0u8; MAX_PACKET];
        let mut seq = 0u64;
        // When the bottleneck finishes sending what it already holds.
        let mut busy_until = Instant::now();
        let mut last_departure = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            let len = match self.iface.recv(&mut buffer) {
                Ok(len) => len,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            let now = Instant::now();
            self.counters.packets_in.fetch_add(1, Ordering::Relaxed);
            self.counters
                .bytes_in
                .fetch_add(len as u64, Ordering::Relaxed);

            // The bottleneck: a packet waits for those queued before it, then takes its
            // serialization time; a full queue drops it.
            let mut departure = now;
            if let Some(rate) = self.config.rate_bps {
                let start = busy_until.max(now);
                let backlog = start.duration_since(now);
                let queued_bytes = backlog.as_secs_f64() * rate as f64 / 8.0;
                if queued_bytes + len as f64 > self.config.queue_bytes as f64 {
                    self.counters.dropped_queue.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                busy_until = start + Duration::from_secs_f64(len as f64 * 8.0 / rate as f64);
                departure = busy_until;
            }
            // Lost on the wire, after taking its share of the bottleneck.
            if self.config.loss > 0.0 && self.rng.next_f64() < self.config.loss {
                self.counters.dropped_loss.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let mut delay = self.config.delay.as_secs_f64();
            if !self.config.jitter.is_zero() {
                let jitter = self.config.jitter.as_secs_f64();
                delay = (delay + (self.rng.next_f64() * 2.0 - 1.0) * jitter).max(0.0);
            }
            departure += Duration::from_secs_f64(delay);
            if !self.config.reorder {
                departure = departure.max(last_departure);
                last_departure = departure;
            }
            seq += 1;
            let packet = buffer[..len].to_vec();
            let mut queue = self.line.queue.lock().expect("delay line lock");
            let earliest = queue
                .peek()
                .is_none_or(|Reverse((at, _, _))| departure < *at);
            queue.push(Reverse((departure, seq, packet)));
            drop(queue);
            if earliest {
                self.line.ready.notify_one();
            }
        }
    }
}

/// Writes one direction's packets into the receiving TUN device when their time comes.
struct Writer {
    iface: Arc<Iface>,
    line: Arc<DelayLine>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
}

impl Writer {
    fn run(self) {
        loop {
            let mut queue = self.line.queue.lock().expect("delay line lock");
            let packet = loop {
                if self.stop.load(Ordering::Relaxed) {
                    return;
                }
                let now = Instant::now();
                let wait = match queue.peek() {
                    None => Duration::from_millis(100),
                    Some(Reverse((at, _, _))) if *at <= now => {
                        let Some(Reverse((_, _, packet))) = queue.pop() else {
                            unreachable!("peeked")
                        };
                        break packet;
                    }
                    Some(Reverse((at, _, _))) => *at - now,
                };
                queue = self
                    .line
                    .ready
                    .wait_timeout(queue, wait)
                    .expect("delay line lock")
                    .0;
            };
            drop(queue);
            match self.iface.send(&packet) {
                Ok(_) => self.counters.delivered.fetch_add(1, Ordering::Relaxed),
                Err(_) => self.counters.write_errors.fetch_add(1, Ordering::Relaxed),
            };
        }
    }
}
