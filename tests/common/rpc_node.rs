//! An `examples/rpc_node.rs` process driven on stdin, for the tests that kill, restart or move
//! a node (`restart_processes.rs`, `address_change.rs`).

use std::ffi::OsStr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::{TempDir, example_binary};

/// Bound on waiting for the process to print a line.
const GUARD: Duration = Duration::from_secs(20);

/// One running `rpc_node`.
pub struct RpcNode {
    pub id: &'static str,
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl RpcNode {
    /// Starts node `id` of `cluster` listening on `listen`, with the certificates in `certs`
    /// and `extra` arguments, run through `wrapper` when given (e.g. `ip netns exec NS`);
    /// returns once it printed `ready LISTEN`.
    pub async fn start(
        wrapper: &[&str],
        cluster: &str,
        id: &'static str,
        listen: &str,
        certs: &TempDir,
        extra: &[&str],
    ) -> Self {
        let binary = example_binary("rpc_node");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&binary);
                command
            }
            None => Command::new(&binary),
        };
        let mut child = command
            .args(["--cluster", cluster, "--id", id, "--listen", listen])
            .args(extra.iter().map(OsStr::new))
            .arg("--certs")
            .arg(certs.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn rpc_node");
        let stdin = child.stdin.take().expect("piped stdin");
        let lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let mut node = Self {
            id,
            child,
            stdin,
            lines,
        };
        let ready = node.line().await;
        assert_eq!(ready, format!("ready {listen}"), "node {id} did not start");
        node
    }

    /// The next line the node prints.
    pub async fn line(&mut self) -> String {
        tokio::time::timeout(GUARD, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("node {} printed nothing within {GUARD:?}", self.id))
            .expect("read node output")
            .unwrap_or_else(|| panic!("node {} exited", self.id))
    }

    /// Heartbeats node `peer` at `addr` until one succeeds, for at most `max_ms`; the reply
    /// line (`ok ATTEMPTS MICROS` or `err ...`).
    pub async fn call(&mut self, peer: &str, addr: &str, max_ms: u64) -> String {
        let command = format!("call {peer} {addr} {max_ms}\n");
        self.stdin
            .write_all(command.as_bytes())
            .await
            .expect("write to the node");
        self.line().await
    }

    /// SIGKILL, and wait until the process is gone.
    pub async fn kill(mut self) {
        self.child.start_kill().expect("SIGKILL");
        self.child.wait().await.expect("reap the killed node");
    }

    /// Asks the node to close its transport and exit, and waits (bounded) for it.
    pub async fn stop(mut self) {
        let _ = self.stdin.write_all(b"quit\n").await;
        let _ = tokio::time::timeout(GUARD, self.child.wait()).await;
    }
}
