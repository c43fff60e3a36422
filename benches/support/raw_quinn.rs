//! The raw-quinn reference: what quinn itself does on the same thread layout, with the same
//! mutual TLS (quicraft's rustls configs), a new bidirectional stream per exchange, quinn's
//! default transport settings, and no RPC layer at all. Each exchange sends a heartbeat-sized
//! request (quicraft's heartbeat frame is ~60 bytes) and gets an answer of ~40 bytes, so the
//! ratio of quicraft's figures to these is what quicraft's own work and the way it drives quinn
//! cost.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use quicraft::tls::{ClusterCa, NodeCertOptions, TlsContext};

use super::nodes::{NodeThread, RuntimeKind};
use super::report::{
    Concurrency, Report, Rtt, cpu_us_per, latency_histogram, max_us, per_second, process_cpu,
    quantile_us, record,
};

const REQUEST: [u8; 60] = [0x01; 60];
const ANSWER: [u8; 40] = [0x80; 40];

/// A server endpoint on its own thread answering every stream, and a client endpoint on
/// another, connected.
pub(crate) struct RawPair {
    server: NodeThread,
    client: NodeThread,
    conn: quinn::Connection,
    _client_endpoint: quinn::Endpoint,
}

impl RawPair {
    pub(crate) fn start(runtime: RuntimeKind) -> Self {
        let ca = ClusterCa::generate("bench").expect("a CA");
        let issue = |id: &str| {
            ca.issue_node(id, &NodeCertOptions::default())
                .expect("a node certificate")
                .identity
        };
        let server_tls = TlsContext::new("bench", issue("follower"), ca.roots()).expect("TLS");
        let client_tls = TlsContext::new("bench", issue("leader"), ca.roots()).expect("TLS");

        let server = NodeThread::start("raw-follower", runtime);
        let server_addr: SocketAddr = server.run(async move {
            let config = server_tls.server_config().expect("server config");
            let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().expect("addr"))
                .expect("server endpoint");
            let addr = endpoint.local_addr().expect("bound");
            tokio::spawn(accept(endpoint));
            addr
        });

        let client = NodeThread::start("raw-leader", runtime);
        let (conn, endpoint) = client.run(async move {
            let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr"))
                .expect("client endpoint");
            endpoint.set_default_client_config(
                client_tls.client_config("follower").expect("client config"),
            );
            let conn = endpoint
                .connect(server_addr, "quicraft")
                .expect("connect")
                .await
                .expect("handshake");
            (conn, endpoint)
        });
        Self {
            server,
            client,
            conn,
            _client_endpoint: endpoint,
        }
    }

    /// `rtt`: exchanges one after another.
    pub(crate) fn rtt(&self, warmup: u64, n: u64) -> Report {
        let conn = self.conn.clone();
        self.client.run(async move {
            sequential(&conn, warmup).await;
            let cpu = process_cpu();
            let started = Instant::now();
            let latencies = sequential(&conn, n).await;
            let elapsed = started.elapsed();
            let cpu = process_cpu().saturating_sub(cpu);
            Report::of(&Rtt {
                n: latencies.len(),
                p50_us: quantile_us(&latencies, 0.5),
                p99_us: quantile_us(&latencies, 0.99),
                max_us: max_us(&latencies),
                rpcs_per_s: per_second(latencies.len(), elapsed),
                cpu_us_per_rpc: Some(cpu_us_per(cpu, latencies.len())),
            })
        })
    }

    /// `concurrency`: `tasks` tasks exchanging back to back for `run`.
    pub(crate) fn concurrency(&self, warmup: u64, tasks: u64, run: Duration) -> Report {
        let conn = self.conn.clone();
        self.client.run(async move {
            sequential(&conn, warmup).await;
            let cpu = process_cpu();
            let started = Instant::now();
            let deadline = started + run;
            let senders: Vec<_> = (0..tasks)
                .map(|_| {
                    let conn = conn.clone();
                    tokio::spawn(async move {
                        let mut latencies = latency_histogram();
                        while Instant::now() < deadline {
                            let at = Instant::now();
                            exchange(&conn).await;
                            record(&mut latencies, at.elapsed());
                        }
                        latencies
                    })
                })
                .collect();
            let mut latencies = latency_histogram();
            for sender in senders {
                let sent = sender.await.expect("an exchange task panicked");
                latencies
                    .add(sent)
                    .expect("histograms with the same bounds");
            }
            let elapsed = started.elapsed();
            let cpu = process_cpu().saturating_sub(cpu);
            Report::of(&Concurrency {
                tasks,
                rpcs_per_s: per_second(latencies.len(), elapsed),
                p99_us: quantile_us(&latencies, 0.99),
                cpu_us_per_rpc: Some(cpu_us_per(cpu, latencies.len())),
            })
        })
    }

    pub(crate) fn close(self) {
        self.conn.close(0u32.into(), b"done");
        drop(self.client);
        drop(self.server);
    }
}

/// Answers every stream of every connection.
async fn accept(endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                tokio::spawn(async move {
                    if recv.read_to_end(1024).await.is_ok() {
                        let _ = send.write_all(&ANSWER).await;
                        let _ = send.finish();
                    }
                });
            }
        });
    }
}

async fn sequential(conn: &quinn::Connection, n: u64) -> Histogram<u64> {
    let mut latencies = latency_histogram();
    for _ in 0..n {
        let at = Instant::now();
        exchange(conn).await;
        record(&mut latencies, at.elapsed());
    }
    latencies
}

/// One request and its answer on a new bidirectional stream.
async fn exchange(conn: &quinn::Connection) {
    let (mut send, mut recv) = conn.open_bi().await.expect("open a stream");
    send.write_all(&REQUEST).await.expect("write the request");
    send.finish().expect("finish the request");
    let answer = recv.read_to_end(1024).await.expect("read the answer");
    assert_eq!(answer.len(), ANSWER.len());
}
