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

use common::netns::{VethHosts, ip, unsupported};
use common::rpc_node::RpcNode;
use common::{Fixture, TempDir};

const CLUSTER: &str = "moving";
/// Calls in both directions succeed again within this long after the address changed.
const REACHABLE_WITHIN_MS: u64 = 2_000;
const PORT: u16 = 7100;

/// Two hosts at 198.18.6.1 and .2 whose address can move (secondary addresses promoted, so
/// removing the old address keeps the new one; by default the kernel drops every secondary
/// address of a subnet with its primary).
fn hosts(tag: &str) -> VethHosts {
    let hosts = VethHosts::new(&format!("mv{tag}"), "qrv", "198.18.6");
    for i in 0..2 {
        hosts.sysctl(i, "net.ipv4.conf.all.promote_secondaries=1");
    }
    hosts
}

/// Moves host 0 from 198.18.6.1 to `new` (in the same /24).
fn move_host0(hosts: &VethHosts, new: &str) {
    let ns = &hosts.names[0];
    ip(&["-n", ns, "addr", "add", &format!("{new}/24"), "dev", "qrv0"]);
    ip(&["-n", ns, "addr", "del", "198.18.6.1/24", "dev", "qrv0"]);
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
            let hosts = hosts(&tag);
            let mut mover = start(&certs, mover_id, &hosts.names[0]).await;
            let mut other = start(&certs, other_id, &hosts.names[1]).await;
            // Who dials: the first call opens the connection both then use.
            let when = format!("mover {mover_id}, dialled by the mover: {mover_dials}");
            if mover_dials {
                assert_reached(&mover.call(other_id, &at("198.18.6.2"), 5_000).await, &when);
            } else {
                assert_reached(&other.call(mover_id, &at("198.18.6.1"), 5_000).await, &when);
            }
            move_host0(&hosts, "198.18.6.11");
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
