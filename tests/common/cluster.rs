//! Processes of the cluster example (`--id` mode) and a client of its line protocol.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// How long a client waits for an answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(20);

/// The `--peers` argument: `1=ADDR,2=ADDR,...`.
pub fn peers_arg(addrs: &BTreeMap<u64, SocketAddr>) -> String {
    addrs
        .iter()
        .map(|(id, addr)| format!("{id}={addr}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The command of node `id` of `cluster`, listening on `listen`: its certificates in `dir`
/// (`Fixture::write_certs`), its data in `dir/data-ID`, its client protocol on a free port,
/// its stdout piped, killed when dropped.
pub fn node_command(
    binary: &Path,
    cluster: &str,
    id: u64,
    listen: SocketAddr,
    peers: &str,
    dir: &Path,
) -> Command {
    let mut command = Command::new(binary);
    command
        .args(["--cluster", cluster, "--id", &id.to_string()])
        .args(["--listen", &listen.to_string(), "--peers", peers])
        .arg("--certs")
        .arg(dir)
        .arg("--data-dir")
        .arg(dir.join(format!("data-{id}")))
        .args(["--client", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Sends every line `child` prints on stdout to `lines`, tagged with `id`.
pub fn forward_stdout(child: &mut Child, id: u64, lines: &mpsc::UnboundedSender<(u64, String)>) {
    let mut out = BufReader::new(child.stdout.take().expect("stdout piped")).lines();
    let lines = lines.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = out.next_line().await {
            let _ = lines.send((id, line));
        }
    });
}

/// A free TCP port on 127.0.0.1 (released again, for a node process to bind).
pub fn free_tcp_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free TCP port")
}

/// A connection to a node's line protocol.
pub struct LineClient {
    reader: tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl LineClient {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect to the node");
        let (read, writer) = stream.into_split();
        Self {
            reader: BufReader::new(read).lines(),
            writer,
        }
    }

    /// Sends `line` and returns the answer.
    pub async fn call(&mut self, line: &str) -> String {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("send a request");
        tokio::time::timeout(ANSWER_WITHIN, self.reader.next_line())
            .await
            .expect("no answer")
            .expect("read an answer")
            .expect("connection closed")
    }
}
