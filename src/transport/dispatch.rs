//! Where an incoming RPC goes: the heartbeat handler or the consumer's queue.

use std::sync::{Arc, RwLock};

use super::queue::{ConsumerQueue, Held, Queued, Refused, unavailable};
use super::{HeartbeatHandler, Incoming, Rpc};
use crate::command::Command;

/// The receiving end every transport shares: routes heartbeats to the fast-path handler and
/// everything else to the consumer's queue (one queue per peer, served in turn; see
/// `transport::queue`).
pub(crate) struct Dispatcher {
    queue: Arc<ConsumerQueue>,
    heartbeat: RwLock<Option<HeartbeatHandler>>,
}

/// The consumer is gone: the transport was closed, or its [`Incoming`] dropped.
#[derive(Debug)]
pub(crate) struct Closed;

/// Where [`Dispatcher::dispatch_held`] put an RPC.
pub(crate) enum Delivered {
    /// The heartbeat handler took it.
    Handled,
    /// It waits in the consumer's queue; dropping this withdraws it.
    Queued(Queued),
}

impl Dispatcher {
    /// A dispatcher and the consumer it feeds, which queues up to `per_peer` RPCs of each peer.
    pub(crate) fn new(per_peer: usize) -> (Self, Incoming) {
        let queue = ConsumerQueue::new(per_peer);
        let dispatcher = Self {
            queue: queue.clone(),
            heartbeat: RwLock::new(None),
        };
        (dispatcher, Incoming::new(queue))
    }

    pub(crate) fn set_heartbeat_handler(&self, handler: Option<HeartbeatHandler>) {
        // Poisoning cannot leave an `Option` half-written, so a poisoned lock is still sound.
        *self.heartbeat.write().unwrap_or_else(|e| e.into_inner()) = handler;
    }

    /// Hands `rpc` to the heartbeat handler when it is a heartbeat and a handler is set;
    /// otherwise queues it for the consumer, waiting while its peer's queue is full, and
    /// leaves it queued whatever happens to its caller. When no consumer takes RPCs any more
    /// (the node is closing, or its [`Incoming`] was dropped), the RPC is answered with
    /// `UNAVAILABLE` and `Closed` returned.
    ///
    /// Cancel-safe: cancelled while waiting, the RPC is dropped (its caller sees no answer).
    pub(crate) async fn dispatch(&self, rpc: Rpc) -> Result<(), Closed> {
        match self.dispatch_held(rpc, None).await? {
            Delivered::Handled => {}
            Delivered::Queued(queued) => queued.detach(),
        }
        Ok(())
    }

    /// As [`dispatch`](Self::dispatch), with `held` kept until the consumer takes the RPC,
    /// and the RPC withdrawn (`held` given back) if the returned [`Queued`] is dropped first.
    ///
    /// Cancel-safe: cancelled while waiting, the RPC and `held` are dropped.
    pub(crate) async fn dispatch_held(
        &self,
        rpc: Rpc,
        held: Option<Held>,
    ) -> Result<Delivered, Closed> {
        let rpc = match self.heartbeat_fast_path(rpc) {
            None => return Ok(Delivered::Handled),
            Some(rpc) => rpc,
        };
        match self.queue.push(rpc, held).await {
            Ok(queued) => Ok(Delivered::Queued(queued)),
            Err(Refused(rpc)) => {
                rpc.respond(Err(unavailable()));
                Err(Closed)
            }
        }
    }

    fn heartbeat_fast_path(&self, rpc: Rpc) -> Option<Rpc> {
        let is_heartbeat =
            matches!(rpc.command(), Command::AppendEntries(req) if req.is_heartbeat());
        if !is_heartbeat {
            return Some(rpc);
        }
        let handler = self
            .heartbeat
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match handler {
            Some(handler) => {
                handler(rpc);
                None
            }
            None => Some(rpc),
        }
    }

    /// RPCs queued for the consumer and not yet received.
    pub(crate) fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Ends the consumer (once it has drained what is queued) and drops the handler.
    pub(crate) fn close(&self) {
        self.queue.close();
        self.heartbeat
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }
}
