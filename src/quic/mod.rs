//! The QUIC transport (layer 2, the RPC core): one connection per peer, a stream per RPC,
//! snapshots on unidirectional streams, mutual TLS with identities checked on every request.

mod admission;
mod client;
mod codes;
mod config;
mod io;
mod metrics;
mod pipeline;
mod pool;
mod reload;
mod rendezvous;
mod reset;
mod server;
mod snapshot_data;
mod socket;
mod stats;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::io::AsyncRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{CongestionController, QuicConfig};
pub use reload::TlsFiles;
pub use stats::TransportStats;

use crate::command::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    RequestPreVoteRequest, RequestPreVoteResponse, RequestVoteRequest, RequestVoteResponse,
    ServerAddress, ServerId, TimeoutNowRequest, TimeoutNowResponse,
};
use crate::error::Error;
use crate::tls::{SERVER_NAME, TlsContext};
use crate::transport::{
    AddressResolver, AppendPipeline, Dispatcher, HeartbeatHandler, Incoming, Transport, decode_peer,
};
use metrics::HandshakeFailure;
use pool::{DialFailure, PeerConn, Pool};

/// Stream priorities: higher is sent first (quinn `SendStream::set_priority`).
mod priority {
    /// Votes, pre-votes, TimeoutNow and heartbeats: what keeps leadership stable.
    pub(crate) const CONTROL: i32 = 2;
    /// AppendEntries with entries, pipelines, snapshot requests.
    pub(crate) const APPEND: i32 = 1;
    /// Snapshot data.
    pub(crate) const SNAPSHOT_DATA: i32 = 0;
}

/// A [`Transport`] over QUIC with mutual TLS.
///
/// [`bind`](Self::bind) opens one UDP endpoint that both listens and dials. Cheap to clone:
/// clones are handles to one node.
///
/// # Observing it
///
/// - **Metrics** through the [`metrics`](https://docs.rs/metrics/0.24) facade, recorded by
///   whatever recorder the application installed (none: no-ops): per peer, RPCs called and
///   served by kind and outcome with latency histograms, snapshot bytes, connections opened,
///   failed dials and handshakes, and the path (bytes, packets sent and lost, congestion
///   events, RTT, congestion window, MTU) read from quinn once a second with the node-wide
///   [`TransportStats`]. Names (prefixed `quicraft_`, unit in the name) and labels are listed
///   in the README; labels are bounded (`peer` is a server id, never a stream or an address).
/// - **Spans** at debug level: `rpc` around each call and `serve_rpc` around each request
///   served, with `peer`, `kind`, `term` and `stream` (the QUIC stream id, the same number on
///   both nodes).
/// - **The log**: one INFO line when the transport starts listening and one when it closes;
///   warnings only for what an operator should act on (a certificate refused on either side,
///   a peer unreachable after several dials, bad input from a peer).
#[derive(Clone)]
pub struct QuicTransport {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    config: QuicConfig,
    local_id: ServerId,
    local_addr: ServerAddress,
    socket_addr: SocketAddr,
    /// Swapped whole by `reload_tls`; dials and accepts take a clone.
    tls: std::sync::RwLock<TlsContext>,
    tls_reloads: tokio::sync::watch::Sender<u64>,
    transport_config: Arc<quinn::TransportConfig>,
    endpoint: Mutex<Option<quinn::Endpoint>>,
    pool: Pool,
    /// What the node's connections hold (`QuicTransport::stats`), shared by their streams.
    stats: Arc<stats::Counters>,
    /// What each peer's requests may hold, shared by the peer's connections.
    budgets: io::PeerBudgets,
    /// Each peer's metric handles.
    peer_metrics: metrics::PeerRegistry,
    dispatcher: Dispatcher,
    resolver: AddressResolver,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl QuicTransport {
    /// Binds the endpoint and starts accepting connections; returns the transport handle and
    /// its consumer. Must be called inside a tokio runtime.
    ///
    /// Fails with [`Error::Config`] when the certificate does not name a node of the cluster
    /// or cannot be used, or when settings contradict each other (a frame budget below
    /// `max_message_size`), and [`Error::Io`] when the address cannot be bound.
    pub async fn bind(config: QuicConfig) -> Result<(Self, Incoming), Error> {
        let tls = TlsContext::new(
            &config.cluster,
            config.identity.clone(),
            config.roots.clone(),
        )
        .map_err(|e| Error::Config(e.to_string()))?
        .with_revocation(config.revocation.clone());
        let local_id = ServerId::from(tls.local_id().node());
        config.check_frame_budget()?;
        let transport_config = Arc::new(transport_config(&config)?);
        let mut server_config = tls
            .server_config()
            .map_err(|e| Error::Config(e.to_string()))?;
        server_config.transport_config(transport_config.clone());
        admission::configure(&mut server_config);
        let socket = udp_socket(config.bind, config.udp_buffer_size)?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| Error::Config("QuicTransport::bind needs a tokio runtime".to_owned()))?;
        let socket: Arc<dyn quinn::AsyncUdpSocket> = Arc::new(socket::QuicSocket::new(
            runtime.wrap_udp_socket(socket)?,
            config.max_udp_payload,
            config.busy_poll,
        ));
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            endpoint_config(&config)?,
            Some(server_config),
            socket,
            runtime,
        )?;
        let socket_addr = endpoint.local_addr()?;
        let local_addr = ServerAddress::from(config.advertise.unwrap_or(socket_addr));
        let (dispatcher, incoming) = Dispatcher::new(config.consumer_capacity);
        let inner = Arc::new(Inner {
            pool: Pool::new(
                local_id.clone(),
                config.backoff_base,
                config.backoff_max,
                config.connect_timeout,
            ),
            resolver: AddressResolver::new(config.address_provider.clone()),
            stats: Arc::default(),
            budgets: io::PeerBudgets::default(),
            peer_metrics: metrics::PeerRegistry::default(),
            local_id,
            local_addr,
            socket_addr,
            tls: std::sync::RwLock::new(tls),
            tls_reloads: tokio::sync::watch::Sender::new(0),
            transport_config,
            endpoint: Mutex::new(Some(endpoint.clone())),
            dispatcher,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            config,
        });
        inner
            .tasks
            .spawn(admission::accept_loop(inner.clone(), endpoint));
        metrics::describe();
        inner.tasks.spawn(inner.clone().sample_metrics());
        if let Some((files, interval)) = inner.config.watch.clone() {
            inner
                .tasks
                .spawn(inner.clone().watch_files(files, interval));
        }
        tracing::info!(id = %inner.local_id, addr = %inner.socket_addr, "quicraft transport listening");
        Ok((Self { inner }, incoming))
    }

    /// This node's server id, from its certificate.
    pub fn local_id(&self) -> &ServerId {
        &self.inner.local_id
    }

    /// The UDP address the endpoint is bound to (with the real port when bound to port 0).
    pub fn local_socket_addr(&self) -> SocketAddr {
        self.inner.socket_addr
    }

    /// The peers this node holds a live connection to, with whether this node dialled it.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        self.inner
            .pool
            .connections()
            .into_iter()
            .filter(|(_, c)| c.is_alive())
            .map(|(peer, c)| ConnectionInfo {
                dialled_by_us: c.dialer == self.inner.local_id,
                remote: c.conn.remote_address(),
                rtt: c.conn.rtt(),
                mtu: c.conn.stats().path.current_mtu,
                peer,
            })
            .collect()
    }

    /// QUIC connections open on this node's endpoint, including any being retired.
    pub fn open_connections(&self) -> usize {
        self.inner.endpoint().map_or(0, |e| e.open_connections())
    }

    /// Tasks the transport is running (accept loop, connections, streams). Zero after
    /// [`close`](Transport::close).
    pub fn task_count(&self) -> usize {
        self.inner.tasks.len()
    }

    /// What the transport holds for its peers now: bytes of incoming frames (and their peak
    /// since bind), RPCs queued for the consumer, request streams being served. Cheap enough
    /// to poll: atomic loads and one short lock.
    pub fn stats(&self) -> TransportStats {
        self.inner.stats.stats(self.inner.dispatcher.queued())
    }
}

/// A peer connection as [`QuicTransport::connections`] reports it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// The peer's server id, proven by its certificate.
    pub peer: ServerId,
    /// The peer's UDP address.
    pub remote: SocketAddr,
    /// Whether this node dialled the connection (else the peer did).
    pub dialled_by_us: bool,
    /// The current round-trip time estimate.
    pub rtt: std::time::Duration,
    /// The largest UDP payload the path is known to carry (path MTU discovery's current
    /// figure, at most [`QuicConfig::max_udp_payload`]).
    pub mtu: u16,
}

impl std::fmt::Debug for QuicTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTransport")
            .field("id", &self.inner.local_id)
            .field("addr", &self.inner.socket_addr)
            .finish_non_exhaustive()
    }
}

/// The endpoint's UDP socket, bound to `addr`, with buffers of `buffer` bytes if the kernel
/// allows (it caps them silently; the sizes obtained are logged).
fn udp_socket(addr: SocketAddr, buffer: usize) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Like quinn's own binding: an IPv6 wildcard also serves IPv4.
        let _ = socket.set_only_v6(false);
    }
    if buffer > 0 {
        // Best effort: a smaller buffer is still a working socket.
        let _ = socket.set_recv_buffer_size(buffer);
        let _ = socket.set_send_buffer_size(buffer);
    }
    socket.bind(&addr.into())?;
    tracing::debug!(
        %addr,
        recv_buffer = ?socket.recv_buffer_size().ok(),
        send_buffer = ?socket.send_buffer_size().ok(),
        "UDP socket bound"
    );
    Ok(socket.into())
}

fn endpoint_config(config: &QuicConfig) -> Result<quinn::EndpointConfig, Error> {
    let keys = match &config.reset_secret {
        Some(secret) if secret.len() < reset::MIN_SECRET_LEN => {
            return Err(Error::Config(format!(
                "the stateless reset secret has {} bytes; at least {} are needed",
                secret.len(),
                reset::MIN_SECRET_LEN
            )));
        }
        Some(secret) => reset::ResetKeys::derive(secret),
        None => reset::ResetKeys::derive(config.identity.key().secret_der()),
    };
    let mut endpoint = keys.endpoint_config();
    // The largest datagram this node accepts, which peers' path MTU discovery may not exceed;
    // quinn's default (1472) would cap `max_udp_payload` settings above it.
    let accept = config.max_udp_payload.max(1472);
    endpoint
        .max_udp_payload_size(accept)
        .map_err(|e| Error::Config(format!("max UDP payload {accept}: {e}")))?;
    Ok(endpoint)
}

/// Bytes of received datagrams a connection keeps (quinn drops the oldest beyond it).
const PROBE_DATAGRAM_BUFFER: usize = 1024;

fn transport_config(config: &QuicConfig) -> Result<quinn::TransportConfig, Error> {
    let mut transport = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(config.idle_timeout).map_err(|_| {
        Error::Config(format!(
            "idle timeout {:?} is too long",
            config.idle_timeout
        ))
    })?;
    transport
        .max_idle_timeout(Some(idle))
        .keep_alive_interval(config.keep_alive)
        .max_concurrent_bidi_streams(config.initial_streams().into())
        .max_concurrent_uni_streams(config.max_snapshot_streams.into())
        .receive_window(
            quinn::VarInt::from_u64(config.receive_window).unwrap_or(quinn::VarInt::MAX),
        )
        .stream_receive_window(quinn::VarInt::from_u32(config.stream_receive_window));
    let congestion: Arc<dyn quinn::congestion::ControllerFactory + Send + Sync> =
        match config.congestion {
            CongestionController::Cubic => Arc::new(quinn::congestion::CubicConfig::default()),
            CongestionController::NewReno => Arc::new(quinn::congestion::NewRenoConfig::default()),
            CongestionController::Bbr => Arc::new(quinn::congestion::BbrConfig::default()),
        };
    transport
        .congestion_controller_factory(congestion)
        .initial_rtt(config.initial_rtt)
        .send_window(config.send_window);
    // Datagrams carry only the connection probes of `pool` (empty, never read): a small
    // buffer bounds what a peer's datagrams can make this node hold per connection.
    transport.datagram_receive_buffer_size(Some(PROBE_DATAGRAM_BUFFER));
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(config.max_udp_payload);
    transport.mtu_discovery_config(Some(mtu));
    Ok(transport)
}

impl Inner {
    fn endpoint(&self) -> Option<quinn::Endpoint> {
        self.endpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn dial_failure_shutdown(&self) -> Option<DialFailure> {
        self.shutdown
            .is_cancelled()
            .then_some(DialFailure::Shutdown)
    }

    /// Dials `id` at `addr` and serves the connection; the pool learns the outcome.
    async fn dial(
        self: Arc<Self>,
        id: ServerId,
        addr: SocketAddr,
    ) -> Result<PeerConn, DialFailure> {
        let outcome = self.connect(&id, addr).await;
        if let Ok(conn) = &outcome {
            self.tasks.spawn(server::serve_connection(
                self.clone(),
                id.clone(),
                conn.clone(),
            ));
        }
        self.pool.dial_finished(&self, &id, outcome).await
    }

    async fn connect(&self, id: &ServerId, addr: SocketAddr) -> Result<PeerConn, DialFailure> {
        if let Some(failure) = self.dial_failure_shutdown() {
            return Err(failure);
        }
        let endpoint = self.endpoint().ok_or(DialFailure::Shutdown)?;
        let mut client = self
            .tls()
            .client_config(id.as_str())
            .map_err(|e| DialFailure::Unreachable(format!("cannot dial {id}: {e}")))?;
        client.transport_config(self.transport_config.clone());
        let connecting = endpoint
            .connect_with(client, addr, SERVER_NAME)
            .map_err(|e| DialFailure::Unreachable(format!("cannot dial {addr}: {e}")))?;
        let timeout = self.config.connect_timeout;
        let connected = tokio::select! {
            _ = self.shutdown.cancelled() => return Err(DialFailure::Shutdown),
            connected = tokio::time::timeout(timeout, connecting) => connected,
        };
        match connected {
            Ok(Ok(conn)) => {
                tracing::debug!(peer = %id, %addr, "connected");
                metrics::connection_opened(id, "dialled");
                Ok(PeerConn::new(
                    conn,
                    self.local_id.clone(),
                    self.peer_metrics.peer(id),
                ))
            }
            Ok(Err(e)) if codes::is_authentication_failure(&e) => {
                match codes::refused_by_peer(&e) {
                    Some(why) => {
                        tracing::warn!("node {id} at {addr} refused this node: {why}");
                        metrics::handshake_failed("outgoing", HandshakeFailure::RefusedByPeer);
                    }
                    // Refused here: the verifier logged why, in one line.
                    None => {
                        tracing::debug!(peer = %id, %addr, "handshake refused by this node");
                        metrics::handshake_failed("outgoing", HandshakeFailure::RefusedHere);
                    }
                }
                // The close reason is the peer's text.
                let e = crate::sanitize::untrusted(e);
                Err(DialFailure::Authentication(format!(
                    "handshake with {id} at {addr} refused: {e}"
                )))
            }
            Ok(Err(e)) => {
                metrics::handshake_failed("outgoing", HandshakeFailure::Failed);
                Err(DialFailure::Unreachable(format!(
                    "handshake with {addr} failed: {}",
                    crate::sanitize::untrusted(e)
                )))
            }
            Err(_) => {
                metrics::handshake_failed("outgoing", HandshakeFailure::Timeout);
                Err(DialFailure::Unreachable(format!(
                    "no handshake with {addr} within {timeout:?}"
                )))
            }
        }
    }

    /// Every [`metrics::SAMPLE_INTERVAL`] until shutdown: publishes each peer's RPC counts,
    /// mirrors [`TransportStats`] and
    /// each peer's frame budget in use, and adds what quinn counted on each connection (bytes,
    /// packets, losses) to its peer's metrics, with the path gauges (RTT, congestion window,
    /// MTU) from the connection calls use.
    async fn sample_metrics(self: Arc<Self>) {
        let mut sampler = metrics::Sampler::default();
        let mut tick = tokio::time::interval(metrics::SAMPLE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => {
                    // What was counted since the last tick.
                    self.peer_metrics.flush();
                    return;
                }
                _ = tick.tick() => {}
            }
            self.peer_metrics.flush();
            metrics::node(&self.stats.stats(self.dispatcher.queued()));
            let primary: std::collections::HashSet<usize> = self
                .pool
                .connections()
                .iter()
                .map(|(_, c)| c.conn.stable_id())
                .collect();
            let mut next = sampler.begin();
            for (peer, conn) in self.pool.every_connection() {
                let is_primary = primary.contains(&conn.conn.stable_id());
                sampler.connection(&mut next, &conn.metrics, &conn.conn, is_primary);
                if is_primary {
                    metrics::peer_frame_bytes(&conn.metrics, self.budgets.used(&peer));
                }
            }
            sampler.finish(next);
        }
    }

    /// How long a connection that lost the tie-break stays open for calls already on it.
    fn retire_grace(&self) -> std::time::Duration {
        self.config.rpc_timeout + self.config.connect_timeout
    }
}

impl pool::Dialer for Arc<Inner> {
    fn spawn_dial(
        &self,
        id: ServerId,
        addr: SocketAddr,
    ) -> BoxFuture<'static, Result<PeerConn, DialFailure>> {
        let handle = self.tasks.spawn(self.clone().dial(id, addr));
        async move { handle.await.unwrap_or(Err(DialFailure::Shutdown)) }.boxed()
    }

    fn spawn_retire(&self, loser: PeerConn) {
        let grace = self.retire_grace();
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = pool::retire(loser, grace) => {}
            }
        });
    }
}

impl Transport for QuicTransport {
    fn local_addr(&self) -> ServerAddress {
        self.inner.local_addr.clone()
    }

    async fn append_entries(
        &self,
        id: &ServerId,
        target: &ServerAddress,
        request: AppendEntriesRequest,
    ) -> Result<AppendEntriesResponse, Error> {
        client::append_entries(&self.inner, id, target, request).await
    }

    async fn request_vote(
        &self,
        id: &ServerId,
        target: &ServerAddress,
        request: RequestVoteRequest,
    ) -> Result<RequestVoteResponse, Error> {
        client::control(&self.inner, id, target, request).await
    }

    async fn request_pre_vote(
        &self,
        id: &ServerId,
        target: &ServerAddress,
        request: RequestPreVoteRequest,
    ) -> Result<RequestPreVoteResponse, Error> {
        client::control(&self.inner, id, target, request).await
    }

    async fn timeout_now(
        &self,
        id: &ServerId,
        target: &ServerAddress,
        request: TimeoutNowRequest,
    ) -> Result<TimeoutNowResponse, Error> {
        client::control(&self.inner, id, target, request).await
    }

    async fn install_snapshot<R>(
        &self,
        id: &ServerId,
        target: &ServerAddress,
        request: InstallSnapshotRequest,
        data: R,
    ) -> Result<InstallSnapshotResponse, Error>
    where
        R: AsyncRead + Send + Unpin + 'static,
    {
        client::install_snapshot(&self.inner, id, target, request, data).await
    }

    async fn append_entries_pipeline(
        &self,
        id: &ServerId,
        target: &ServerAddress,
    ) -> Result<AppendPipeline, Error> {
        pipeline::open(&self.inner, id, target).await
    }

    fn encode_peer(&self, id: &ServerId, addr: &ServerAddress) -> Vec<u8> {
        self.inner.resolver.encode_peer(id, addr)
    }

    fn decode_peer(&self, encoded: &[u8]) -> Result<ServerAddress, Error> {
        decode_peer(encoded)
    }

    fn set_heartbeat_handler(&self, handler: Option<HeartbeatHandler>) {
        self.inner.dispatcher.set_heartbeat_handler(handler);
    }

    fn disconnect_peer(&self, id: &ServerId) {
        self.inner.pool.disconnect(id);
    }

    async fn close(&self) {
        let inner = &self.inner;
        inner.shutdown.cancel();
        inner.dispatcher.close();
        let endpoint = inner
            .endpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        inner.tasks.close();
        if let Some(endpoint) = endpoint {
            // Each connection is closed here, with the code, before the pool drops its handles:
            // `Endpoint::close` only asks each connection's driver to close, and a connection
            // whose last handle is dropped before its driver gets to that closes at once with
            // code 0 and no reason.
            for (_, peer) in inner.pool.every_connection() {
                peer.conn.close(codes::conn::SHUTDOWN, b"shutdown");
            }
            endpoint.close(codes::conn::SHUTDOWN, b"shutdown");
            inner.pool.clear();
            inner.tasks.wait().await;
            // Let the peers learn of the close; bounded, so a vanished peer cannot stall it.
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(1), endpoint.wait_idle()).await;
            tracing::info!(id = %inner.local_id, "quicraft transport closed");
        } else {
            inner.tasks.wait().await;
        }
    }
}
