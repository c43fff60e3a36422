//! Configuration and fault knobs of the in-memory transport.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::transport::ServerAddressProvider;

/// Settings of an [`InmemTransport`](super::InmemTransport). `Default` gives hashicorp/raft's
/// in-memory defaults.
#[derive(Clone)]
pub struct InmemConfig {
    pub(super) timeout: Duration,
    pub(super) max_in_flight: usize,
    pub(super) consumer_capacity: usize,
    pub(super) snapshot_buffer: usize,
    /// `None`: three times `timeout`.
    pub(super) snapshot_resume_grace: Option<Duration>,
    pub(super) max_message_size: usize,
    pub(super) address_provider: Option<Arc<dyn ServerAddressProvider>>,
}

impl Default for InmemConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(500),
            max_in_flight: crate::DEFAULT_MAX_IN_FLIGHT,
            consumer_capacity: 16,
            snapshot_buffer: 64 * 1024,
            snapshot_resume_grace: None,
            max_message_size: crate::DEFAULT_MAX_MESSAGE_SIZE,
            address_provider: None,
        }
    }
}

impl InmemConfig {
    /// How long a call may take in all: for the peer's consumer to take the RPC and for its
    /// answer. Snapshots scale it with their size. Default 500 ms; shorter makes partitions show
    /// sooner, longer tolerates slow handlers.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Outstanding requests allowed per pipeline. Default 128; 0 means the default, 1 turns
    /// pipelining off (as in hashicorp/raft). More overlaps more latency but holds more
    /// requests in memory.
    pub fn max_in_flight(mut self, max_in_flight: usize) -> Self {
        self.max_in_flight = crate::transport::max_in_flight_or_default(max_in_flight);
        self
    }

    /// RPCs of one peer the consumer queue holds before that peer's callers wait (each peer
    /// has its own share, served in turn, as with the QUIC transport). Default 16.
    pub fn consumer_capacity(mut self, capacity: usize) -> Self {
        self.consumer_capacity = capacity.max(1);
        self
    }

    /// Bytes of snapshot data buffered between sender and receiver. Default 64 KiB.
    pub fn snapshot_buffer(mut self, bytes: usize) -> Self {
        self.snapshot_buffer = bytes.max(1);
        self
    }

    /// How long a resumable snapshot whose link was cut waits for its sender to resume it
    /// (`Transport::install_snapshot_resumable`), as `QuicConfig::snapshot_resume_grace`.
    /// Default 3 × [`timeout`](Self::timeout). The receiver's reader waits meanwhile; after it
    /// the reader fails with [`TimedOut`](std::io::ErrorKind::TimedOut), and the sender, which
    /// waits for the link as long, fails with `TRANSFER_UNKNOWN`.
    pub fn snapshot_resume_grace(mut self, grace: Duration) -> Self {
        self.snapshot_resume_grace = Some(grace);
        self
    }

    /// The grace period in effect.
    pub(super) fn resume_grace(&self) -> Duration {
        self.snapshot_resume_grace
            .unwrap_or_else(|| self.timeout.saturating_mul(3))
    }

    /// Largest request sent, in bytes of its encoded body, as the QUIC transport would encode
    /// it. Default 16 MiB, as `QuicConfig::max_message_size`: a request the QUIC transport
    /// would refuse is refused here too, with [`Error::LimitExceeded`](crate::Error::LimitExceeded).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Consults `provider` for a peer's address on every call. Default none.
    pub fn address_provider(mut self, provider: Arc<dyn ServerAddressProvider>) -> Self {
        self.address_provider = Some(provider);
        self
    }
}

impl fmt::Debug for InmemConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InmemConfig")
            .field("timeout", &self.timeout)
            .field("max_in_flight", &self.max_in_flight)
            .field("consumer_capacity", &self.consumer_capacity)
            .field("snapshot_buffer", &self.snapshot_buffer)
            .field("snapshot_resume_grace", &self.resume_grace())
            .field("max_message_size", &self.max_message_size)
            .field("address_provider", &self.address_provider.is_some())
            .finish()
    }
}

/// Faults injected on the link to one peer, for deterministic partition tests. The default
/// is a healthy link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Faults {
    /// Calls fail at once with `Error::Unreachable`, as when the peer cannot be dialled.
    pub unreachable: bool,
    /// Requests vanish: calls wait out their timeout, as with a black-holed network.
    pub drop_requests: bool,
    /// Every request is delivered this much later (order is kept).
    pub delay: Duration,
}

impl Faults {
    /// A healthy link.
    pub fn none() -> Self {
        Self::default()
    }

    /// A link on which the peer cannot be reached.
    pub fn unreachable() -> Self {
        Self {
            unreachable: true,
            ..Self::default()
        }
    }

    /// A link that silently drops every request.
    pub fn drop_requests() -> Self {
        Self {
            drop_requests: true,
            ..Self::default()
        }
    }

    /// A link that delays every request by `delay`.
    pub fn delay(delay: Duration) -> Self {
        Self {
            delay,
            ..Self::default()
        }
    }
}
