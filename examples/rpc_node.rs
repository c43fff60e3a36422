//! A bare quicraft node in its own process, driven line by line on stdin: what the restart
//! tests (`tests/restart_processes.rs`) and the `restart` scenario of `cargo bench --bench
//! transport` kill with SIGKILL and start again on the same address.
//!
//! ```text
//! cargo run --example rpc_node -- --cluster demo --id 1 --listen 127.0.0.1:7001 --certs certs
//! ```
//!
//! `--certs DIR` holds `ca.pem`, `ID.pem` and `ID.key` (the layout `certgen` writes). The node
//! prints `ready ADDR` once bound and answers every AppendEntries with success (heartbeats on
//! the fast path, the rest through the consumer). Commands, one per line, each answered with
//! one line:
//!
//! - `call ID ADDR MAX_MS`: heartbeats to `ID` at `ADDR`, one after another, until one
//!   succeeds or `MAX_MS` milliseconds pass; answers `ok ATTEMPTS MICROS` or
//!   `err ATTEMPTS MICROS REASON`, timed from when the command was read.
//! - `quit`: closes the transport (sending SHUTDOWN to the peers) and exits.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use quicraft::{
    AppendEntriesRequest, AppendEntriesResponse, Command, ErrorCode, QuicConfig, QuicTransport,
    RemoteError, RpcHeader, Transport,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::time::Instant;

#[derive(Parser)]
#[command(about = "A bare quicraft node driven on stdin (restart tests and bench)")]
struct Args {
    /// The cluster name (the SPIFFE trust domain of the certificates).
    #[arg(long)]
    cluster: String,
    /// This node's server id.
    #[arg(long)]
    id: String,
    /// The UDP address to bind.
    #[arg(long)]
    listen: std::net::SocketAddr,
    /// Directory with ca.pem, ID.pem and ID.key.
    #[arg(long)]
    certs: PathBuf,
    /// The secret the stateless-reset keys are derived from (default: the node's private key).
    /// A different secret on a restart is what a key rotation does.
    #[arg(long)]
    reset_secret: Option<String>,
    /// The RPC timeout, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    rpc_timeout_ms: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let args = Args::parse();
    let file = |name: String| args.certs.join(name);
    let config = QuicConfig::from_pem_files(
        &args.cluster,
        file(format!("{}.pem", args.id)),
        file(format!("{}.key", args.id)),
        file("ca.pem".to_owned()),
    )?
    .bind(args.listen)
    .rpc_timeout(Duration::from_millis(args.rpc_timeout_ms))
    .connect_timeout(Duration::from_millis(args.rpc_timeout_ms))
    .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100));
    let config = match &args.reset_secret {
        Some(secret) => config.stateless_reset_secret(secret),
        None => config,
    };
    let (transport, mut incoming) = QuicTransport::bind(config).await?;
    let header = RpcHeader::new(args.id.as_str(), transport.local_addr());

    let answer = header.clone();
    let success = move |term| AppendEntriesResponse {
        header: answer.clone(),
        term,
        last_log: 0,
        success: true,
        no_retry_backoff: false,
    };
    let respond = move |rpc: quicraft::Rpc| {
        let result = match rpc.command() {
            Command::AppendEntries(request) => Ok(success(request.term).into()),
            other => Err(RemoteError::new(
                ErrorCode::HANDLER,
                format!("rpc_node answers only AppendEntries, not {}", other.kind()),
            )),
        };
        rpc.respond(result);
    };
    let fast = respond.clone();
    transport.set_heartbeat_handler(Some(Arc::new(fast)));
    tokio::spawn(async move {
        while let Some(rpc) = incoming.recv().await {
            respond(rpc);
        }
    });

    let mut stdout = tokio::io::stdout();
    let ready = format!("ready {}\n", transport.local_socket_addr());
    stdout.write_all(ready.as_bytes()).await?;
    stdout.flush().await?;

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let words: Vec<&str> = line.split_whitespace().collect();
        let reply = match words.as_slice() {
            ["call", id, addr, max_ms] => match max_ms.parse() {
                Ok(max_ms) => call_until_ok(&transport, &header, id, addr, max_ms).await,
                Err(_) => format!("err 0 0 bad MAX_MS {max_ms:?}"),
            },
            ["quit"] => break,
            _ => format!("err 0 0 unknown command {line:?}"),
        };
        stdout.write_all(format!("{reply}\n").as_bytes()).await?;
        stdout.flush().await?;
    }
    transport.close().await;
    Ok(())
}

/// Heartbeats `id` until one succeeds or `max_ms` pass; the reply line.
async fn call_until_ok(
    transport: &QuicTransport,
    header: &RpcHeader,
    id: &str,
    addr: &str,
    max_ms: u64,
) -> String {
    let start = Instant::now();
    let deadline = start + Duration::from_millis(max_ms);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let request = AppendEntriesRequest::heartbeat(header.clone(), 1);
        let (id, addr) = (id.into(), addr.into());
        let call = transport.append_entries(&id, &addr, request);
        let outcome = tokio::time::timeout_at(deadline, call).await;
        let micros = start.elapsed().as_micros();
        match outcome {
            Ok(Ok(_)) => return format!("ok {attempts} {micros}"),
            Ok(Err(e)) if Instant::now() < deadline => {
                // Back off a little so a peer that refuses at once is not spun on.
                tracing::debug!(attempt = attempts, error = %e, "call failed; retrying");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(Err(e)) => return format!("err {attempts} {micros} {e}"),
            Err(_) => return format!("err {attempts} {micros} no answer within {max_ms} ms"),
        }
    }
}
