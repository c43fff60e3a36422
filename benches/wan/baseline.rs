//! The comparison transport of the WAN benchmark: quicraft's Raft RPCs over ONE TLS 1.3 TCP
//! connection per peer with multiplexed request ids, as gRPC/HTTP2-based Raft transports do.
//!
//! Frames are `[u32 length][postcard Msg]`. Snapshots travel as 16 KiB chunk frames (HTTP/2's
//! default frame size) on the same connection. The writer sends control frames (heartbeats,
//! responses) before bulk frames (appends, snapshot chunks) whenever both wait, which is more
//! than gRPC does: what head-of-line blocking remains is TCP's own (the kernel send buffer and
//! in-order delivery). Both ends set the TCP congestion control explicitly (CUBIC by default;
//! this machine's default is BBR) and TCP_NODELAY, as gRPC does. Mutual TLS with the same
//! certificates as quicraft (chain checks only: no SPIFFE check, which costs nothing on the
//! wire).

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use nix::sys::socket::{getsockopt, setsockopt, sockopt};
use quicraft::tls::{ClusterCa, GeneratedNode};
use quicraft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    RpcHeader,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Snapshot chunk size: HTTP/2's default maximum frame size.
const CHUNK: usize = 16 * 1024;
/// Largest frame accepted.
const MAX_FRAME: usize = 16 * 1024 * 1024;
/// Bulk frames queued in the application before senders wait.
const BULK_QUEUE: usize = 4;

/// One frame's message.
#[derive(Debug, Serialize, Deserialize)]
enum Msg {
    Append {
        id: u64,
        request: AppendEntriesRequest,
    },
    AppendResponse {
        id: u64,
        response: AppendEntriesResponse,
    },
    SnapshotBegin {
        id: u64,
        request: InstallSnapshotRequest,
    },
    SnapshotChunk {
        id: u64,
        data: Bytes,
    },
    SnapshotEnd {
        id: u64,
    },
    SnapshotResponse {
        id: u64,
        response: InstallSnapshotResponse,
    },
}

/// Sets `algorithm` as the socket's TCP congestion control.
fn set_congestion(socket: &impl std::os::fd::AsFd, algorithm: &str) -> io::Result<()> {
    setsockopt(socket, sockopt::TcpCongestion, &OsString::from(algorithm)).map_err(io::Error::from)
}

/// The socket's TCP congestion control, as the kernel reports it.
pub(crate) fn congestion_of(socket: &impl std::os::fd::AsFd) -> String {
    getsockopt(socket, sockopt::TcpCongestion)
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// A provider-explicit rustls config pair for mutual TLS 1.3 between two nodes of `ca`.
pub(crate) struct TlsPair {
    /// The follower's (server's) config.
    pub(crate) server: Arc<rustls::ServerConfig>,
    /// The leader's (client's) config.
    pub(crate) client: Arc<rustls::ClientConfig>,
}

fn chain_and_key(node: &GeneratedNode) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let chain = CertificateDer::pem_slice_iter(node.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("node certificate PEM");
    let key = PrivateKeyDer::from_pem_slice(node.key_pem.as_bytes()).expect("node key PEM");
    (chain, key)
}

impl TlsPair {
    /// Configs for a client `leader` and a server `follower`, both certified by `ca`.
    pub(crate) fn new(ca: &ClusterCa, leader: &GeneratedNode, follower: &GeneratedNode) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in ca.roots().certificates() {
            roots.add(cert.clone()).expect("CA certificate");
        }
        let roots = Arc::new(roots);
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .expect("client verifier");
        let (chain, key) = chain_and_key(follower);
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .expect("server config");
        let (chain, key) = chain_and_key(leader);
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .expect("client config");
        Self {
            server: Arc::new(server),
            client: Arc::new(client),
        }
    }
}

/// What the follower received, for goodput.
#[derive(Debug, Default)]
pub(crate) struct ServerCounters {
    /// Snapshot bytes read.
    pub(crate) snapshot_bytes: AtomicU64,
    /// Log entry payload bytes received in non-heartbeat AppendEntries.
    pub(crate) append_bytes: AtomicU64,
}

fn encode(msg: &Msg) -> Bytes {
    let body = postcard::to_stdvec(msg).expect("encode a frame");
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&u32::try_from(body.len()).expect("frame size").to_be_bytes());
    frame.extend_from_slice(&body);
    Bytes::from(frame)
}

async fn read_frame(
    reader: &mut (impl AsyncRead + Unpin),
    buffer: &mut Vec<u8>,
) -> io::Result<Msg> {
    let len = reader.read_u32().await? as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "frame too large",
        ));
    }
    buffer.resize(len, 0);
    reader.read_exact(buffer).await?;
    postcard::from_bytes(buffer).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Writes frames, control before bulk, until both channels close.
async fn write_loop(
    mut writer: impl AsyncWrite + Unpin,
    mut control: mpsc::UnboundedReceiver<Bytes>,
    mut bulk: mpsc::Receiver<Bytes>,
) {
    loop {
        let frame = tokio::select! {
            biased;
            Some(frame) = control.recv() => frame,
            Some(frame) = bulk.recv() => frame,
            else => return,
        };
        if writer.write_all(&frame).await.is_err() || writer.flush().await.is_err() {
            return;
        }
    }
}

/// The follower: listens on `addr` (the accept loop is a task of the current runtime) and
/// answers every RPC of every connection.
pub(crate) fn serve(
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    algorithm: &str,
    counters: Arc<ServerCounters>,
) -> io::Result<()> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    set_congestion(&socket, algorithm)?;
    socket.bind(addr)?;
    let listener: TcpListener = socket.listen(64)?;
    let acceptor = TlsAcceptor::from(tls);
    let algorithm = algorithm.to_owned();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = set_congestion(&stream, &algorithm);
            let _ = stream.set_nodelay(true);
            let acceptor = acceptor.clone();
            let counters = counters.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(stream).await {
                    serve_connection(tls, counters).await;
                }
            });
        }
    });
    Ok(())
}

async fn serve_connection(
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    counters: Arc<ServerCounters>,
) {
    let (mut reader, writer) = tokio::io::split(stream);
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let (_bulk_tx, bulk_rx) = mpsc::channel(1);
    tokio::spawn(write_loop(writer, control_rx, bulk_rx));
    let header = RpcHeader::new("follower", "follower");
    let mut snapshots: HashMap<u64, (InstallSnapshotRequest, u64)> = HashMap::new();
    let mut buffer = Vec::new();
    while let Ok(msg) = read_frame(&mut reader, &mut buffer).await {
        let reply = match msg {
            Msg::Append { id, request } => {
                let bytes: usize = request.entries.iter().map(|e| e.data.len()).sum();
                counters
                    .append_bytes
                    .fetch_add(bytes as u64, Ordering::Relaxed);
                let response = AppendEntriesResponse {
                    header: header.clone(),
                    term: request.term,
                    last_log: request.prev_log_entry + request.entries.len() as u64,
                    success: true,
                    no_retry_backoff: false,
                };
                Some(Msg::AppendResponse { id, response })
            }
            Msg::SnapshotBegin { id, request } => {
                snapshots.insert(id, (request, 0));
                None
            }
            Msg::SnapshotChunk { id, data } => {
                counters
                    .snapshot_bytes
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                if let Some((_, received)) = snapshots.get_mut(&id) {
                    *received += data.len() as u64;
                }
                None
            }
            Msg::SnapshotEnd { id } => snapshots.remove(&id).map(|(request, received)| {
                let response = InstallSnapshotResponse {
                    header: header.clone(),
                    term: request.term,
                    success: received == request.size,
                };
                Msg::SnapshotResponse { id, response }
            }),
            Msg::AppendResponse { .. } | Msg::SnapshotResponse { .. } => None,
        };
        if let Some(reply) = reply
            && control_tx.send(encode(&reply)).is_err()
        {
            return;
        }
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Msg>>>>;

/// The leader's end: one TLS connection, requests multiplexed by id. Cheap to clone.
#[derive(Clone)]
pub(crate) struct TcpClient {
    control: mpsc::UnboundedSender<Bytes>,
    bulk: mpsc::Sender<Bytes>,
    pending: Pending,
    next_id: Arc<AtomicU64>,
    /// The congestion control the kernel reports for the connection.
    pub(crate) congestion: String,
}

impl TcpClient {
    /// Dials `addr` with `algorithm` as the congestion control and completes the handshake.
    pub(crate) async fn connect(
        addr: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
        algorithm: &str,
    ) -> io::Result<Self> {
        let socket = TcpSocket::new_v4()?;
        set_congestion(&socket, algorithm)?;
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        let congestion = congestion_of(&stream);
        let name = ServerName::IpAddress(addr.ip().into());
        let stream = TlsConnector::from(tls).connect(name, stream).await?;
        let (mut reader, writer) = tokio::io::split(stream);
        let (control, control_rx) = mpsc::unbounded_channel();
        let (bulk, bulk_rx) = mpsc::channel(BULK_QUEUE);
        tokio::spawn(write_loop(writer, control_rx, bulk_rx));
        let pending: Pending = Arc::default();
        let dispatch = pending.clone();
        tokio::spawn(async move {
            let mut buffer = Vec::new();
            while let Ok(msg) = read_frame(&mut reader, &mut buffer).await {
                let id = match &msg {
                    Msg::AppendResponse { id, .. } | Msg::SnapshotResponse { id, .. } => *id,
                    _ => continue,
                };
                let waiter = dispatch.lock().expect("pending lock").remove(&id);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(msg);
                }
            }
            // The connection is gone: fail every waiter.
            dispatch.lock().expect("pending lock").clear();
        });
        Ok(Self {
            control,
            bulk,
            pending,
            next_id: Arc::new(AtomicU64::new(1)),
            congestion,
        })
    }

    fn register(&self) -> (u64, oneshot::Receiver<Msg>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(id, tx);
        (id, rx)
    }

    /// An AppendEntries; heartbeats (no entries) go on the control queue.
    pub(crate) async fn append_entries(
        &self,
        request: AppendEntriesRequest,
    ) -> io::Result<AppendEntriesResponse> {
        let (id, rx) = self.register();
        let heartbeat = request.entries.is_empty();
        let frame = encode(&Msg::Append { id, request });
        let sent = if heartbeat {
            self.control.send(frame).is_ok()
        } else {
            self.bulk.send(frame).await.is_ok()
        };
        if !sent {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        match rx.await {
            Ok(Msg::AppendResponse { response, .. }) => Ok(response),
            _ => Err(io::ErrorKind::ConnectionAborted.into()),
        }
    }

    /// An InstallSnapshot with `request.size` bytes from `data`, as chunk frames.
    pub(crate) async fn install_snapshot(
        &self,
        request: InstallSnapshotRequest,
        mut data: impl AsyncRead + Unpin,
    ) -> io::Result<InstallSnapshotResponse> {
        let (id, rx) = self.register();
        let mut remaining = request.size;
        let broken = |_| io::Error::from(io::ErrorKind::BrokenPipe);
        self.bulk
            .send(encode(&Msg::SnapshotBegin { id, request }))
            .await
            .map_err(broken)?;
        let mut chunk = vec![0u8; CHUNK];
        while remaining > 0 {
            let want = CHUNK.min(usize::try_from(remaining).unwrap_or(CHUNK));
            data.read_exact(&mut chunk[..want]).await?;
            remaining -= want as u64;
            let msg = Msg::SnapshotChunk {
                id,
                data: Bytes::copy_from_slice(&chunk[..want]),
            };
            self.bulk.send(encode(&msg)).await.map_err(broken)?;
        }
        self.bulk
            .send(encode(&Msg::SnapshotEnd { id }))
            .await
            .map_err(broken)?;
        match rx.await {
            Ok(Msg::SnapshotResponse { response, .. }) => Ok(response),
            _ => Err(io::ErrorKind::ConnectionAborted.into()),
        }
    }
}
