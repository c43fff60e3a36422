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
    /// The request was answered without its data being read: stop the data on arrival.
    Abandoned(Instant),
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
        self.prune(&mut slots);
        match slots.remove(&transfer_id) {
            Some(Slot::Abandoned(_)) => {
                let mut recv = data;
                let _ = recv.stop(stream::STOPPED);
                Ok(())
            }
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
                slots.insert(transfer_id, Slot::Arrived(data, Instant::now()));
                Ok(())
            }
        }
    }

    /// Drops what is held for `transfer_id`: its request was answered without the data
    /// being read. A data stream still to come is stopped when it arrives. Either way its
    /// stream credit goes back to the sender.
    pub(crate) fn abandon(&self, transfer_id: u64) {
        let mut slots = self.slots();
        self.prune(&mut slots);
        match slots.remove(&transfer_id) {
            // Dropping the stream unread stops it.
            Some(Slot::Arrived(..)) | Some(Slot::Abandoned(_)) => {}
            // A reader is claiming it right now; leave it to that reader.
            Some(waiting @ Slot::Waiting(_)) => {
                slots.insert(transfer_id, waiting);
            }
            None => {
                slots.insert(transfer_id, Slot::Abandoned(Instant::now()));
            }
        }
    }

    /// Drops what expired (see `prune`); called on a timer, so that unclaimed data streams
    /// give their stream credit back even when no other data stream arrives.
    pub(crate) fn expire(&self) {
        let mut slots = self.slots();
        self.prune(&mut slots);
    }

    /// How often [`expire`](Self::expire) should run: an unclaimed stream then lives at most
    /// one and a half times `max_age`.
    pub(crate) fn expiry_interval(&self) -> Duration {
        (self.max_age / 2).max(Duration::from_millis(10))
    }

    /// Drops data nobody claimed within `max_age` (stopping its stream), stale abandon
    /// marks, and waits that were given up.
    fn prune(&self, slots: &mut HashMap<u64, Slot>) {
        let now = Instant::now();
        slots.retain(|_, slot| match slot {
            Slot::Arrived(_, at) | Slot::Abandoned(at) => now.duration_since(*at) < self.max_age,
            Slot::Waiting(tx) => !tx.is_closed(),
        });
    }

    /// The data stream of `transfer_id`, waiting up to `timeout` for it to arrive.
    ///
    /// Cancel-safe: a cancelled wait leaves a closed slot that the next arrival clears.
    pub(crate) async fn claim(&self, transfer_id: u64, timeout: Duration) -> Option<DataStream> {
        let rx = {
            let mut slots = self.slots();
            match slots.remove(&transfer_id) {
                Some(Slot::Arrived(data, _)) => return Some(data),
                Some(Slot::Waiting(_)) | Some(Slot::Abandoned(_)) | None => {
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
