//! The conformance suite against [`InmemTransport`].

use std::sync::atomic::{AtomicUsize, Ordering};

use quicraft::{InmemConfig, InmemTransport, ServerAddress, ServerId};

use crate::suite::{Harness, NodeOptions, TestNode};

pub struct InmemHarness;

static NEXT_NODE: AtomicUsize = AtomicUsize::new(1);

impl Harness for InmemHarness {
    type T = InmemTransport;

    async fn node(&self, options: NodeOptions) -> TestNode<InmemTransport> {
        let name = format!("inmem-{}", NEXT_NODE.fetch_add(1, Ordering::Relaxed));
        let mut config = InmemConfig::default().max_in_flight(options.max_in_flight);
        if let Some(provider) = options.address_provider {
            config = config.address_provider(provider);
        }
        if let Some(timeout) = options.timeout {
            config = config.timeout(timeout);
        }
        if let Some(capacity) = options.consumer_capacity {
            config = config.consumer_capacity(capacity);
        }
        if let Some(max) = options.max_message_size {
            config = config.max_message_size(max);
        }
        let (transport, incoming) = InmemTransport::with_config(name.as_str(), config);
        TestNode {
            transport,
            incoming,
            id: ServerId::from(name.as_str()),
            addr: ServerAddress::from(name),
        }
    }

    fn link(&self, from: &TestNode<InmemTransport>, to: &TestNode<InmemTransport>) {
        from.transport.connect(&to.transport);
    }

    async fn absent_peer(&self) -> (ServerId, ServerAddress) {
        (ServerId::from("nobody"), ServerAddress::from("nowhere"))
    }

    fn break_connection(
        &self,
        (sender, _): (&InmemTransport, &ServerId),
        (receiver, addr): (&InmemTransport, &ServerAddress),
    ) {
        sender.disconnect(addr);
        sender.connect(receiver);
    }
}

crate::conformance_suite!(InmemHarness);
