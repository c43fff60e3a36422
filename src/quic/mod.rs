//! The QUIC transport (layer 2, the RPC core): one connection per peer, a stream per RPC,
//! snapshots on unidirectional streams, mutual TLS with identities checked on every request.

mod admission;
mod client;
mod codes;
mod config;
mod connector;
mod hedge;
mod interfaces;
mod io;
mod metrics;
mod pacing;
mod pipeline;
mod pool;
mod reload;
mod rendezvous;
mod reset;
mod resume;
mod resume_send;
mod server;
mod snapshot_data;
mod socket;
mod stats;
mod tuning;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncSeek};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::QuicConfig;
pub use hedge::HeartbeatHedge;
pub use pacing::SnapshotPacing;
pub use reload::TlsFiles;
pub use stats::TransportStats;
pub use tuning::{CongestionController, QuicTuning};

use crate::command::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    RequestPreVoteRequest, RequestPreVoteResponse, RequestVoteRequest, RequestVoteResponse,
    ServerAddress, ServerId, TimeoutNowRequest, TimeoutNowResponse,
};
use crate::error::{ConfigError, Error};
use crate::tls::TlsContext;
use crate::transport::{
    AddressResolver, AppendPipeline, Dispatcher, HeartbeatHandler, Incoming, Transport, decode_peer,
};
use client::{CallSettings, Client};
use connector::Connector;
use pool::{Pool, PoolTiming};
use server::{ServeLimits, Server};

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
    node: Arc<Node>,
}

/// One node: its calling and serving sides, and what they share (the pool of connections,
/// the shutdown signal, the tasks).
struct Node {
    local_id: ServerId,
    local_addr: ServerAddress,
    socket_addr: SocketAddr,
    client: Arc<Client>,
    server: Arc<Server>,
    /// Resumable snapshots under way, which `disconnect_peer` ends.
    outgoing: resume::Outgoing,
    /// Whether stale revocation lists fail closed, for the files watched.
    enforce_next_update: bool,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Node {
    fn pool(&self) -> &Arc<Pool> {
        &self.client.pool
    }

    fn connector(&self) -> &Connector {
        self.client.pool.connector()
    }
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
        .map_err(|e| Error::Config(e.into()))?
        .with_revocation(config.revocation.clone());
        let local_id = ServerId::from(tls.local_id().node());
        config.check_frame_budget()?;
        let tuning = config.tuning.for_bind(config.bind.ip());
        let transport_config = Arc::new(
            tuning.transport_config(config.initial_streams(), config.max_snapshot_streams)?,
        );
        let server_config = connector::server_config(&tls, &transport_config)?;
        let socket = udp_socket(config.bind, tuning.udp_buffer_size)?;
        let runtime = quinn::default_runtime().ok_or_else(|| {
            ConfigError::Invalid("QuicTransport::bind needs a tokio runtime".to_owned())
        })?;
        let socket: Arc<dyn quinn::AsyncUdpSocket> = Arc::new(socket::QuicSocket::new(
            runtime.wrap_udp_socket(socket)?,
            tuning.udp_payload(),
            tuning.busy_poll,
        ));
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            endpoint_config(&config, &tuning)?,
            Some(server_config),
            socket,
            runtime,
        )?;
        let socket_addr = endpoint.local_addr()?;
        let connector = Connector::new(
            endpoint.clone(),
            tls,
            transport_config,
            config.connect_timeout,
        );

        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let stats = Arc::<stats::Counters>::default();
        let (dispatcher, incoming) = Dispatcher::new(config.consumer_capacity);
        let server = Arc::new(Server {
            limits: ServeLimits {
                max_message_size: config.max_message_size,
                rpc_timeout: config.rpc_timeout,
                max_in_flight: config.max_in_flight,
                max_snapshot_streams: config.max_snapshot_streams,
                initial_streams: config.initial_streams(),
                max_streams: config.max_streams,
                frame_budget: config.frame_budget(),
            },
            dispatcher,
            budgets: io::PeerBudgets::default(),
            resumable: Arc::new(resume::Table::new(
                config.max_snapshot_streams as usize,
                config.resume_grace(),
                stats.clone(),
            )),
            stats: stats.clone(),
            shutdown: shutdown.clone(),
            tasks: tasks.clone(),
        });
        let timing = PoolTiming {
            backoff_base: config.backoff_base,
            backoff_max: config.backoff_max,
            probe_max: config.connect_timeout,
            retire_grace: config.rpc_timeout + config.connect_timeout,
        };
        let pool = Arc::new(Pool::new(
            local_id.clone(),
            timing,
            connector,
            server.clone(),
            shutdown.clone(),
            tasks.clone(),
        ));
        let client = Arc::new(Client {
            pool: pool.clone(),
            resolver: AddressResolver::new(config.address_provider.clone()),
            settings: CallSettings {
                rpc_timeout: config.rpc_timeout,
                max_message_size: config.max_message_size,
                max_in_flight: config.max_in_flight,
                snapshot_bytes_per_timeout: config.snapshot_bytes_per_timeout,
                heartbeat_hedge: config.heartbeat_hedge,
                snapshot_pacing: config.snapshot_pacing,
                snapshot_resume_grace: config.resume_grace(),
            },
            stats: stats.clone(),
            shutdown: shutdown.clone(),
            tasks: tasks.clone(),
        });
        let acceptor = Arc::new(admission::Acceptor {
            pool: pool.clone(),
            limits: config.admission,
            cluster: config.cluster.clone(),
            handshake_timeout: config.connect_timeout,
            stats,
            shutdown: shutdown.clone(),
            tasks: tasks.clone(),
        });
        tasks.spawn(admission::accept_loop(acceptor, endpoint));
        metrics::describe();
        tasks.spawn(pool.clone().watch_local_addresses());
        tasks.spawn(metrics::sample(pool, server.clone()));
        let node = Arc::new(Node {
            local_id,
            local_addr: ServerAddress::from(config.advertise.unwrap_or(socket_addr)),
            socket_addr,
            client,
            server,
            outgoing: resume::Outgoing::default(),
            enforce_next_update: config.revocation.enforces_next_update(),
            shutdown,
            tasks,
        });
        if let Some((files, interval)) = config.watch {
            node.tasks
                .spawn(reload::watch_files(node.clone(), files, interval));
        }
        tracing::info!(id = %node.local_id, addr = %node.socket_addr, "quicraft transport listening");
        Ok((Self { node }, incoming))
    }

    /// This node's server id, from its certificate.
    pub fn local_id(&self) -> &ServerId {
        &self.node.local_id
    }

    /// The UDP address the endpoint is bound to (with the real port when bound to port 0).
    pub fn local_socket_addr(&self) -> SocketAddr {
        self.node.socket_addr
    }

    /// The peers this node holds a live connection to, with whether this node dialled it.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        self.node
            .pool()
            .connections()
            .into_iter()
            .filter(|(_, c)| c.is_alive())
            .map(|(peer, c)| ConnectionInfo {
                dialled_by_us: c.dialer == self.node.local_id,
                remote: c.conn.remote_address(),
                rtt: c.conn.rtt(),
                mtu: c.conn.stats().path.current_mtu,
                peer,
            })
            .collect()
    }

    /// QUIC connections open on this node's endpoint, including any being retired.
    pub fn open_connections(&self) -> usize {
        self.node
            .connector()
            .endpoint()
            .map_or(0, |e| e.open_connections())
    }

    /// Tasks the transport is running (accept loop, connections, streams). Zero after
    /// [`close`](Transport::close).
    pub fn task_count(&self) -> usize {
        self.node.tasks.len()
    }

    /// What the transport holds for its peers now: bytes of incoming frames (and their peak
    /// since bind), RPCs queued for the consumer, request streams being served. Cheap enough
    /// to poll: atomic loads and one short lock.
    pub fn stats(&self) -> TransportStats {
        let server = &self.node.server;
        server.stats.stats(server.dispatcher.queued())
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
    /// figure, at most [`QuicTuning::max_udp_payload`]).
    pub mtu: u16,
}

impl std::fmt::Debug for QuicTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTransport")
            .field("id", &self.node.local_id)
            .field("addr", &self.node.socket_addr)
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

fn endpoint_config(
    config: &QuicConfig,
    tuning: &QuicTuning,
) -> Result<quinn::EndpointConfig, Error> {
    let keys = match &config.reset_secret {
        Some(secret) if secret.len() < reset::MIN_SECRET_LEN => {
            return Err(Error::Config(ConfigError::Invalid(format!(
                "the stateless reset secret has {} bytes; at least {} are needed",
                secret.len(),
                reset::MIN_SECRET_LEN
            ))));
        }
        Some(secret) => reset::ResetKeys::derive(secret),
        None => reset::ResetKeys::derive(config.identity.key().secret_der()),
    };
    let mut endpoint = keys.endpoint_config();
    // The largest datagram this node accepts, which peers' path MTU discovery may not exceed;
    // quinn's default (1472) would cap `max_udp_payload` settings above it.
    let accept = tuning.udp_payload().max(1472);
    endpoint
        .max_udp_payload_size(accept)
        .map_err(|source| ConfigError::Quic {
            setting: format!("max UDP payload {accept}"),
            source,
        })?;
    Ok(endpoint)
}

impl Transport for QuicTransport {
    fn local_addr(&self) -> ServerAddress {
        self.node.local_addr.clone()
    }

    async fn append_entries(
        &self,
        id: &ServerId,
        target: &ServerAddress,
        request: AppendEntriesRequest,
    ) -> Result<AppendEntriesResponse, Error> {
        client::append_entries(&self.node.client, id, target, request).await
    }

    async fn request_vote(
        &self,
        id: &ServerId,
        target: &ServerAddress,
        request: RequestVoteRequest,
    ) -> Result<RequestVoteResponse, Error> {
        client::control(&self.node.client, id, target, request).await
    }

    async fn request_pre_vote(
        &self,
        id: &ServerId,
        target: &ServerAddress,
        request: RequestPreVoteRequest,
    ) -> Result<RequestPreVoteResponse, Error> {
        client::control(&self.node.client, id, target, request).await
    }

    async fn timeout_now(
        &self,
        id: &ServerId,
        target: &ServerAddress,
        request: TimeoutNowRequest,
    ) -> Result<TimeoutNowResponse, Error> {
        client::control(&self.node.client, id, target, request).await
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
        client::install_snapshot(&self.node.client, id, target, request, data).await
    }

    async fn install_snapshot_resumable<R>(
        &self,
        id: &ServerId,
        target: &ServerAddress,
        request: InstallSnapshotRequest,
        data: R,
    ) -> Result<InstallSnapshotResponse, Error>
    where
        R: AsyncRead + AsyncSeek + Send + Unpin + 'static,
    {
        let session = self.node.outgoing.session(id);
        resume_send::install_snapshot_resumable(
            &self.node.client,
            session,
            id,
            target,
            request,
            data,
        )
        .await
    }

    async fn append_entries_pipeline(
        &self,
        id: &ServerId,
        target: &ServerAddress,
    ) -> Result<AppendPipeline, Error> {
        pipeline::open(&self.node.client, id, target).await
    }

    fn encode_peer(&self, id: &ServerId, addr: &ServerAddress) -> Vec<u8> {
        self.node.client.resolver.encode_peer(id, addr)
    }

    fn decode_peer(&self, encoded: &[u8]) -> Result<ServerAddress, Error> {
        decode_peer(encoded)
    }

    fn set_heartbeat_handler(&self, handler: Option<HeartbeatHandler>) {
        self.node.server.dispatcher.set_heartbeat_handler(handler);
    }

    fn disconnect_peer(&self, id: &ServerId) {
        self.node.outgoing.disconnect(id);
        self.node.pool().disconnect(id);
    }

    async fn close(&self) {
        let node = &self.node;
        node.shutdown.cancel();
        node.server.dispatcher.close();
        node.server.resumable.fail_all();
        let endpoint = node.connector().take_endpoint();
        node.tasks.close();
        if let Some(endpoint) = endpoint {
            // Each connection is closed here, with the code, before the pool drops its handles:
            // `Endpoint::close` only asks each connection's driver to close, and a connection
            // whose last handle is dropped before its driver gets to that closes at once with
            // code 0 and no reason.
            for (_, peer) in node.pool().every_connection() {
                peer.conn.close(codes::conn::SHUTDOWN, b"shutdown");
            }
            endpoint.close(codes::conn::SHUTDOWN, b"shutdown");
            node.pool().clear();
            node.tasks.wait().await;
            // Let the peers learn of the close; bounded, so a vanished peer cannot stall it.
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(1), endpoint.wait_idle()).await;
            tracing::info!(id = %node.local_id, "quicraft transport closed");
        } else {
            node.tasks.wait().await;
        }
    }
}
