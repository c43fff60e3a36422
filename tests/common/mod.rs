//! The one fixture factory for certificates and nodes used by the integration tests.

#![allow(dead_code, unreachable_pub)]

pub mod pattern;

use std::time::Duration;

use quicraft::{
    ClusterCa, GeneratedNode, Identity, Incoming, NodeCertOptions, QuicConfig, QuicTransport,
};

/// A cluster CA and the nodes it certifies, all on 127.0.0.1 with test-sized timeouts.
pub struct Fixture {
    pub ca: ClusterCa,
}

impl Fixture {
    /// A fresh CA for `cluster`.
    pub fn new(cluster: &str) -> Self {
        Self {
            ca: ClusterCa::generate(cluster).expect("generate CA"),
        }
    }

    pub fn cluster(&self) -> &str {
        self.ca.cluster()
    }

    /// A certificate for `node` with the default options (valid now, localhost SANs).
    pub fn issue(&self, node: &str) -> GeneratedNode {
        self.issue_with(node, &NodeCertOptions::default())
    }

    pub fn issue_with(&self, node: &str, options: &NodeCertOptions) -> GeneratedNode {
        self.ca
            .issue_node(node, options)
            .expect("issue node certificate")
    }

    pub fn identity(&self, node: &str) -> Identity {
        self.issue(node).identity
    }

    /// A config for `node` bound to 127.0.0.1:0, with timeouts short enough for tests.
    pub fn config(&self, node: &str) -> QuicConfig {
        self.config_for(self.identity(node))
    }

    pub fn config_for(&self, identity: Identity) -> QuicConfig {
        QuicConfig::new(self.cluster(), identity, self.ca.roots())
            .bind("127.0.0.1:0".parse().expect("address"))
            .rpc_timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(2))
            .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
    }

    /// A started node.
    pub async fn node(&self, node: &str) -> (QuicTransport, Incoming) {
        QuicTransport::bind(self.config(node))
            .await
            .expect("bind node")
    }
}

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
