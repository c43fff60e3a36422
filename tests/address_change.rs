//! A node whose IP address changes is reachable again, both ways, within two seconds, whether
//! it dialled its connection or accepted it (issue 16, item 3). In QUIC only the dialler
//! migrates: a connection the moved node dialled follows it, one it accepted cannot, so the
//! moved node notices that its address is gone and dials the peer anew (`docs/PROTOCOL.md`
//! §3.6).
//!
//! Two `examples/rpc_node.rs` processes in two network namespaces joined by a veth pair
//! (198.18.6.0/24). Needs root and `ip` (iproute2); skips, printing why, without them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::rpc_node::RpcNode;
use common::{Fixture, TempDir};

const CLUSTER: &str = "moving";
/// Calls in both directions succeed again within this long after the address changed.
const REACHABLE_WITHIN_MS: u64 = 2_000;
const PORT: u16 = 7100;

/// Runs `ip ARGS`, failing the test on error.
fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Why the test cannot run here, if it cannot.
fn unsupported() -> Option<String> {
    let uid = std::process::Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("needs root (network namespaces)".to_owned());
    }
    match std::process::Command::new("ip").arg("-V").output() {
        Ok(out) if out.status.success() => None,
        _ => Some("needs ip (iproute2)".to_owned()),
    }
}

/// Two namespaces joined by a veth pair, deleted on drop.
struct Hosts {
    names: [String; 2],
}

impl Hosts {
    /// Host 0 at 198.18.6.1, host 1 at 198.18.6.2.
    fn new(tag: &str) -> Self {
        let pid = std::process::id();
        let names = [format!("qr-mv{pid}-{tag}0"), format!("qr-mv{pid}-{tag}1")];
        for name in &names {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", name])
                .output();
            ip(&["netns", "add", name]);
            ip(&["-n", name, "link", "set", "lo", "up"]);
            // So that removing the old address keeps the new one (by default the kernel drops
            // every secondary address of a subnet with its primary).
            let sysctl = std::process::Command::new("ip")
                .args(["netns", "exec", name, "sysctl", "-qw"])
                .arg("net.ipv4.conf.all.promote_secondaries=1")
                .status()
                .expect("run sysctl");
            assert!(sysctl.success(), "sysctl promote_secondaries in {name}");
        }
        ip(&[
            "link", "add", "qrv0", "netns", &names[0], "type", "veth", "peer", "name", "qrv1",
            "netns", &names[1],
        ]);
        for (i, name) in names.iter().enumerate() {
            let dev = format!("qrv{i}");
            ip(&[
                "-n",
                name,
                "addr",
                "add",
                &format!("198.18.6.{}/24", i + 1),
                "dev",
                &dev,
            ]);
            ip(&["-n", name, "link", "set", &dev, "up"]);
        }
        Self { names }
    }

    /// Moves host 0 from 198.18.6.1 to `new` (in the same /24).
    fn move_host0(&self, new: &str) {
        let ns = &self.names[0];
        ip(&["-n", ns, "addr", "add", &format!("{new}/24"), "dev", "qrv0"]);
        ip(&["-n", ns, "addr", "del", "198.18.6.1/24", "dev", "qrv0"]);
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", name])
                .output();
        }
    }
}

/// `ip` at the nodes' port.
fn at(ip: &str) -> String {
    format!("{ip}:{PORT}")
}

/// Starts node `id` in `namespace`, listening on the wildcard address.
async fn start(certs: &TempDir, id: &'static str, namespace: &str) -> RpcNode {
    let listen = format!("0.0.0.0:{PORT}");
    let wrapper = ["ip", "netns", "exec", namespace];
    RpcNode::start(&wrapper, CLUSTER, id, &listen, certs, &[]).await
}

/// Asserts that `reply` is `ok ...` within the bound; returns the milliseconds it took.
fn assert_reached(reply: &str, what: &str) -> f64 {
    let words: Vec<&str> = reply.split_whitespace().collect();
    assert_eq!(words.first(), Some(&"ok"), "{what}: not reached: {reply}");
    let micros: u64 = words[2].parse().unwrap();
    eprintln!("{what}: {reply}");
    assert!(micros < REACHABLE_WITHIN_MS * 1000, "{what}: {reply}");
    micros as f64 / 1000.0
}

/// Node `mover` on host 0 and `other` on host 1; the connection between them is dialled by
/// the mover when `mover_dials`, else by the other. Then host 0's address changes and both
/// directions must work again within [`REACHABLE_WITHIN_MS`], the mover calling first and
/// then the other (at the mover's new address), and the other way round.
async fn reachable_after_the_address_changes(mover_dials: bool) {
    if let Some(why) = unsupported() {
        eprintln!("skipped: {why}");
        return;
    }
    common::init_tracing();
    let fixture = Fixture::new(CLUSTER);
    let certs = TempDir::new("quicraft-moving");
    // Both id orders: the tie-break between the old and the new connection differs.
    for (mover_id, other_id) in [("a", "b"), ("b", "a")] {
        fixture.write_certs(certs.path(), &[mover_id, other_id]);
        for mover_first in [true, false] {
            let tag = format!("{}{}", u8::from(mover_dials), u8::from(mover_first));
            let hosts = Hosts::new(&tag);
            let mut mover = start(&certs, mover_id, &hosts.names[0]).await;
            let mut other = start(&certs, other_id, &hosts.names[1]).await;
            // Who dials: the first call opens the connection both then use.
            let when = format!("mover {mover_id}, dialled by the mover: {mover_dials}");
            if mover_dials {
                assert_reached(&mover.call(other_id, &at("198.18.6.2"), 5_000).await, &when);
            } else {
                assert_reached(&other.call(mover_id, &at("198.18.6.1"), 5_000).await, &when);
            }
            hosts.move_host0("198.18.6.11");
            let when = format!("{when}, after the move, mover calling first: {mover_first}");
            if mover_first {
                let reply = mover
                    .call(other_id, &at("198.18.6.2"), REACHABLE_WITHIN_MS)
                    .await;
                assert_reached(&reply, &format!("{when}: mover -> other"));
                let reply = other
                    .call(mover_id, &at("198.18.6.11"), REACHABLE_WITHIN_MS)
                    .await;
                assert_reached(&reply, &format!("{when}: other -> mover"));
            } else {
                let reply = other
                    .call(mover_id, &at("198.18.6.11"), REACHABLE_WITHIN_MS)
                    .await;
                assert_reached(&reply, &format!("{when}: other -> mover"));
                let reply = mover
                    .call(other_id, &at("198.18.6.2"), REACHABLE_WITHIN_MS)
                    .await;
                assert_reached(&reply, &format!("{when}: mover -> other"));
            }
            mover.stop().await;
            other.stop().await;
        }
    }
}

#[tokio::test]
async fn a_node_that_dialled_is_reachable_after_its_address_changes() {
    reachable_after_the_address_changes(true).await;
}

#[tokio::test]
async fn a_node_that_accepted_is_reachable_after_its_address_changes() {
    reachable_after_the_address_changes(false).await;
}
