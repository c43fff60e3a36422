//! Where an incoming RPC goes: the heartbeat handler or the consumer queue.

use std::sync::{Mutex, RwLock};

use tokio::sync::mpsc;

use super::{HeartbeatHandler, Incoming, Rpc};
use crate::command::Command;
use crate::error::{ErrorCode, RemoteError};

/// The receiving end every transport shares: routes heartbeats to the fast-path handler and
/// everything else to the consumer.
pub(crate) struct Dispatcher {
    consumer: Mutex<Option<mpsc::Sender<Rpc>>>,
    heartbeat: RwLock<Option<HeartbeatHandler>>,
}

/// The consumer is gone: the transport was closed.
#[derive(Debug)]
pub(crate) struct Closed;

impl Dispatcher {
    /// A dispatcher and the consumer it feeds, which queues up to `capacity` RPCs.
    pub(crate) fn new(capacity: usize) -> (Self, Incoming) {
        let (tx, incoming) = Incoming::channel(capacity);
        let dispatcher = Self {
            consumer: Mutex::new(Some(tx)),
            heartbeat: RwLock::new(None),
        };
        (dispatcher, incoming)
    }

    pub(crate) fn set_heartbeat_handler(&self, handler: Option<HeartbeatHandler>) {
        // Poisoning cannot leave an `Option` half-written, so a poisoned lock is still sound.
        *self.heartbeat.write().unwrap_or_else(|e| e.into_inner()) = handler;
    }

    /// Hands `rpc` to the heartbeat handler when it is a heartbeat and a handler is set;
    /// otherwise queues it for the consumer, waiting while the queue is full. When no
    /// consumer takes RPCs any more (the node is closing, or its [`Incoming`] was dropped),
    /// the RPC is answered with [`ErrorCode::UNAVAILABLE`] and `Closed` returned.
    ///
    /// Cancel-safe: cancelled while waiting, the RPC is dropped (its caller sees no answer).
    pub(crate) async fn dispatch(&self, rpc: Rpc) -> Result<(), Closed> {
        let rpc = match self.heartbeat_fast_path(rpc) {
            None => return Ok(()),
            Some(rpc) => rpc,
        };
        let consumer = self
            .consumer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let refused = match consumer {
            Some(consumer) => match consumer.send(rpc).await {
                Ok(()) => return Ok(()),
                Err(mpsc::error::SendError(rpc)) => rpc,
            },
            None => rpc,
        };
        refused.respond(Err(RemoteError::new(
            ErrorCode::UNAVAILABLE,
            "no consumer takes RPCs: the node is closing or dropped its consumer",
        )));
        Err(Closed)
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

    /// RPCs queued for the consumer and not yet received; 0 once closed.
    pub(crate) fn queued(&self) -> usize {
        self.consumer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            // Sends take their slot and fill it at once, so the slots in use are the queue.
            .map_or(0, |tx| tx.max_capacity() - tx.capacity())
    }

    /// Ends the consumer (once it has drained what is queued) and drops the handler.
    pub(crate) fn close(&self) {
        self.consumer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        self.heartbeat
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }
}
