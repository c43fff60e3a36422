//! The conformance suite against [`QuicTransport`], over 127.0.0.1 with mutual TLS.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use quicraft::{QuicTransport, ServerAddress, ServerId, Transport};

use crate::common::Fixture;
use crate::suite::{Harness, NodeOptions, TestNode};

pub struct QuicHarness;

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| Fixture::new("conformance"));
static NEXT_NODE: AtomicUsize = AtomicUsize::new(1);

impl Harness for QuicHarness {
    type T = QuicTransport;

    async fn node(&self, options: NodeOptions) -> TestNode<QuicTransport> {
        crate::common::init_tracing();
        let name = format!("quic-{}", NEXT_NODE.fetch_add(1, Ordering::Relaxed));
        let mut config = FIXTURE.config(&name).max_in_flight(options.max_in_flight);
        if let Some(provider) = options.address_provider {
            config = config.address_provider(provider);
        }
        if let Some(timeout) = options.timeout {
            config = config.rpc_timeout(timeout).connect_timeout(timeout);
        }
        if let Some(capacity) = options.consumer_capacity {
            config = config.consumer_capacity(capacity);
        }
        if let Some(max) = options.max_message_size {
            config = config.max_message_size(max);
        }
        let (transport, incoming) = QuicTransport::bind(config).await.expect("bind");
        let addr = transport.local_addr();
        TestNode {
            transport,
            incoming,
            id: ServerId::from(name),
            addr,
        }
    }

    fn link(&self, _from: &TestNode<QuicTransport>, _to: &TestNode<QuicTransport>) {}

    async fn absent_peer(&self) -> (ServerId, ServerAddress) {
        // A port that was free a moment ago: nothing answers there.
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = socket.local_addr().expect("addr");
        drop(socket);
        (ServerId::from("ghost"), ServerAddress::from(addr))
    }

    fn break_connection(
        &self,
        (_, sender): (&QuicTransport, &ServerId),
        (receiver, _): (&QuicTransport, &ServerAddress),
    ) {
        receiver.disconnect_peer(sender);
    }
}

crate::conformance_suite!(QuicHarness);
