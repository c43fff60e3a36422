//! Pairs an InstallSnapshot request (on a bidirectional stream) with its data stream (a
//! unidirectional stream), whichever arrives first. The request names its data stream by
//! QUIC stream id, which the receiver knows even for a stream reset before its first byte.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use quinn::RecvStream;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::codes::stream;

/// A snapshot data stream, not yet read.
pub(crate) type DataStream = RecvStream;

enum Slot {
    Waiting(oneshot::Sender<DataStream>),
    Arrived(DataStream, Instant),
}

/// Per connection: data streams waiting for their request and requests waiting for their
/// data, by stream id. Holds at most `max_pending` unclaimed data streams.
pub(crate) struct Rendezvous {
    slots: Mutex<HashMap<u64, Slot>>,
    max_pending: usize,
    max_age: Duration,
}

impl Rendezvous {
    pub(crate) fn new(max_pending: usize, max_age: Duration) -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            max_pending,
            max_age,
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Slot>> {
        // Each critical section is one map operation, so a poisoned lock is still sound.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A data stream arrived. Refused (stopped) when its id is already taken or too many data
    /// streams wait unclaimed.
    pub(crate) fn data_arrived(
        &self,
        transfer_id: u64,
        data: DataStream,
    ) -> Result<(), &'static str> {
        let mut slots = self.slots();
        let now = Instant::now();
        // Data nobody asked for within `max_age` is dropped, which stops its stream.
        slots.retain(|_, slot| match slot {
            Slot::Arrived(_, at) => now.duration_since(*at) < self.max_age,
            Slot::Waiting(tx) => !tx.is_closed(),
        });
        match slots.remove(&transfer_id) {
            Some(Slot::Waiting(tx)) => {
                // The request side may have given up this instant; then the data is dropped.
                let _ = tx.send(data);
                Ok(())
            }
            Some(arrived @ Slot::Arrived(..)) => {
                slots.insert(transfer_id, arrived);
                let mut recv = data;
                let _ = recv.stop(stream::REFUSED);
                Err("duplicate snapshot stream id")
            }
            None => {
                let pending = slots
                    .values()
                    .filter(|s| matches!(s, Slot::Arrived(..)))
                    .count();
                if pending >= self.max_pending {
                    let mut recv = data;
                    let _ = recv.stop(stream::REFUSED);
                    return Err("too many unclaimed snapshot data streams");
                }
                slots.insert(transfer_id, Slot::Arrived(data, now));
                Ok(())
            }
        }
    }

    /// The data stream of `transfer_id`, waiting up to `timeout` for it to arrive.
    ///
    /// Cancel-safe: a cancelled wait leaves a closed slot that the next arrival clears.
    pub(crate) async fn claim(&self, transfer_id: u64, timeout: Duration) -> Option<DataStream> {
        let rx = {
            let mut slots = self.slots();
            match slots.remove(&transfer_id) {
                Some(Slot::Arrived(data, _)) => return Some(data),
                Some(Slot::Waiting(_)) | None => {
                    let (tx, rx) = oneshot::channel();
                    slots.insert(transfer_id, Slot::Waiting(tx));
                    rx
                }
            }
        };
        let data = tokio::time::timeout(timeout, rx)
            .await
            .ok()
            .and_then(Result::ok);
        if data.is_none() {
            self.slots().remove(&transfer_id);
        }
        data
    }
}
