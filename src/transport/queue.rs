//! The consumer's queue: one queue per peer, served in turn, votes and heartbeats before
//! appends and snapshots, so that one member's traffic cannot delay another member's.
//!
//! Each peer may have at most `per_peer` RPCs queued; a peer at its limit waits (backpressure
//! on that peer only). The consumer takes, in order of preference:
//! 1. a *control* RPC (vote, pre-vote, TimeoutNow, heartbeat), peers in turn;
//! 2. a *bulk* RPC (AppendEntries with entries, InstallSnapshot), peers in turn.
//!
//! After [`CONTROL_BURST`] control RPCs in a row a waiting bulk RPC goes first, so a member
//! flooding votes cannot starve the others' appends either.
//!
//! A queued RPC may carry what it holds of its transport's memory budget; that is given back
//! when the consumer takes the RPC, or when the RPC is withdrawn ([`Queued`] dropped, e.g.
//! because its connection closed).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::Rpc;
use crate::command::{Command, ServerId};
use crate::error::{ErrorCode, RemoteError};

/// Control RPCs taken in a row before a waiting bulk RPC goes first.
pub(crate) const CONTROL_BURST: u32 = 4;

/// Something a queued RPC keeps alive until the consumer takes it (a share of a memory
/// budget, given back on drop).
pub(crate) type Held = Box<dyn Send + Sync>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Class {
    Control,
    Bulk,
}

impl Class {
    fn of(command: &Command) -> Self {
        match command {
            Command::AppendEntries(request) if !request.is_heartbeat() => Self::Bulk,
            Command::InstallSnapshot(_) => Self::Bulk,
            _ => Self::Control,
        }
    }
}

struct Item {
    id: u64,
    rpc: Rpc,
    _held: Option<Held>,
}

#[derive(Default)]
struct PeerQueue {
    control: VecDeque<Item>,
    bulk: VecDeque<Item>,
}

impl PeerQueue {
    fn class(&mut self, class: Class) -> &mut VecDeque<Item> {
        match class {
            Class::Control => &mut self.control,
            Class::Bulk => &mut self.bulk,
        }
    }

    fn len(&self) -> usize {
        self.control.len() + self.bulk.len()
    }
}

#[derive(Default)]
struct State {
    peers: HashMap<ServerId, PeerQueue>,
    /// Peers with control RPCs waiting, in turn order.
    control_turns: VecDeque<ServerId>,
    /// Peers with bulk RPCs waiting, in turn order.
    bulk_turns: VecDeque<ServerId>,
    queued: usize,
    next_id: u64,
    control_streak: u32,
    /// No more RPCs are accepted; the consumer drains what is queued.
    closed: bool,
    /// The consumer is gone: nothing will ever be taken.
    consumer_gone: bool,
}

impl State {
    fn turns(&mut self, class: Class) -> &mut VecDeque<ServerId> {
        match class {
            Class::Control => &mut self.control_turns,
            Class::Bulk => &mut self.bulk_turns,
        }
    }

    fn take(&mut self) -> Option<Item> {
        let bulk_first = self.control_streak >= CONTROL_BURST && !self.bulk_turns.is_empty();
        let order = if bulk_first {
            [Class::Bulk, Class::Control]
        } else {
            [Class::Control, Class::Bulk]
        };
        for class in order {
            if let Some(item) = self.take_class(class) {
                self.control_streak = match class {
                    Class::Control => self.control_streak.saturating_add(1),
                    Class::Bulk => 0,
                };
                return Some(item);
            }
        }
        None
    }

    fn take_class(&mut self, class: Class) -> Option<Item> {
        // A peer is in a class's turns exactly while it has RPCs of that class queued.
        let peer = self.turns(class).pop_front()?;
        let queue = self.peers.get_mut(&peer)?;
        let item = queue.class(class).pop_front()?;
        let more = !queue.class(class).is_empty();
        if queue.len() == 0 {
            self.peers.remove(&peer);
        }
        if more {
            self.turns(class).push_back(peer);
        }
        self.queued -= 1;
        Some(item)
    }

    /// Removes the item `id` of `peer` if the consumer has not taken it.
    fn withdraw(&mut self, peer: &ServerId, class: Class, id: u64) -> Option<Item> {
        let queue = self.peers.get_mut(peer)?;
        let items = queue.class(class);
        let at = items.iter().position(|item| item.id == id)?;
        let item = items.remove(at)?;
        let class_empty = items.is_empty();
        let peer_empty = queue.len() == 0;
        if class_empty {
            self.turns(class).retain(|p| p != peer);
        }
        if peer_empty {
            self.peers.remove(peer);
        }
        self.queued -= 1;
        Some(item)
    }
}

/// The queue between a transport's receive path and its consumer. Cheap to share.
pub(crate) struct ConsumerQueue {
    state: Mutex<State>,
    per_peer: usize,
    /// Wakes the consumer when an RPC is queued or the queue closes.
    arrived: Notify,
    /// Wakes senders waiting for room when an RPC leaves the queue.
    left: Notify,
}

/// The queue refused an RPC: it is closed or its consumer is gone.
#[derive(Debug)]
pub(crate) struct Refused(pub(crate) Rpc);

impl ConsumerQueue {
    pub(crate) fn new(per_peer: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::default(),
            per_peer: per_peer.max(1),
            arrived: Notify::new(),
            left: Notify::new(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the queues consistent: a poisoned lock is still sound.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `rpc` under the peer its header names, waiting while that peer has `per_peer`
    /// RPCs queued. The returned [`Queued`] withdraws the RPC if dropped before the consumer
    /// takes it; [`Queued::detach`] leaves it queued.
    ///
    /// Cancel-safe: cancelled while waiting for room, nothing is queued (the RPC is dropped,
    /// and with it `held`).
    pub(crate) async fn push(
        self: &Arc<Self>,
        rpc: Rpc,
        held: Option<Held>,
    ) -> Result<Queued, Refused> {
        let peer = rpc.command().header().id.clone();
        let class = Class::of(rpc.command());
        let mut held = held;
        let mut rpc = Some(rpc);
        loop {
            let room = self.left.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut state = self.state();
                if state.closed || state.consumer_gone {
                    // `rpc` is still here: it is taken only when queued, below.
                    return Err(Refused(rpc.take().expect("the RPC is queued only once")));
                }
                let queued = state.peers.get(&peer).map_or(0, PeerQueue::len);
                if queued < self.per_peer {
                    let id = state.next_id;
                    state.next_id += 1;
                    let item = Item {
                        id,
                        rpc: rpc.take().expect("the RPC is queued only once"),
                        _held: held.take(),
                    };
                    let queue = state.peers.entry(peer.clone()).or_default().class(class);
                    let was_empty = queue.is_empty();
                    queue.push_back(item);
                    if was_empty {
                        state.turns(class).push_back(peer.clone());
                    }
                    state.queued += 1;
                    drop(state);
                    self.arrived.notify_one();
                    return Ok(Queued {
                        queue: Some(self.clone()),
                        peer,
                        class,
                        id,
                    });
                }
            }
            room.await;
        }
    }

    /// The next RPC for the consumer, waiting for one; `None` once closed and drained.
    ///
    /// Cancel-safe: an RPC is taken only when the call returns it.
    pub(crate) async fn pop(&self) -> Option<Rpc> {
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if let Some(taken) = self.try_pop() {
                return taken;
            }
            arrived.await;
        }
    }

    /// `Some(Some(rpc))` when one was queued, `Some(None)` when closed and drained, `None`
    /// when the consumer must wait.
    pub(crate) fn try_pop(&self) -> Option<Option<Rpc>> {
        let mut state = self.state();
        match state.take() {
            Some(item) => {
                drop(state);
                self.left.notify_waiters();
                // Dropping the item's `held` here gives its budget back: the consumer has it.
                Some(Some(item.rpc))
            }
            None if state.closed => Some(None),
            None => None,
        }
    }

    /// RPCs queued and not yet taken.
    pub(crate) fn len(&self) -> usize {
        self.state().queued
    }

    /// Accepts no more RPCs; the consumer drains what is queued, then ends.
    pub(crate) fn close(&self) {
        self.state().closed = true;
        self.arrived.notify_waiters();
        self.left.notify_waiters();
    }

    /// The consumer is gone: what is queued is answered `UNAVAILABLE`, and so is what comes.
    pub(crate) fn consumer_gone(&self) {
        let items: Vec<Item> = {
            let mut state = self.state();
            state.consumer_gone = true;
            let mut items = Vec::with_capacity(state.queued);
            while let Some(item) = state.take() {
                items.push(item);
            }
            items
        };
        self.left.notify_waiters();
        for item in items {
            item.rpc.respond(Err(unavailable()));
        }
    }
}

/// The answer to an RPC no consumer will take.
pub(crate) fn unavailable() -> RemoteError {
    RemoteError::new(
        ErrorCode::UNAVAILABLE,
        "no consumer takes RPCs: the node is closing or dropped its consumer",
    )
}

/// An RPC in the consumer's queue. Dropped before the consumer takes the RPC, it withdraws
/// it: the RPC is dropped (its caller sees no answer) and what it held is given back at once.
#[must_use = "dropping it withdraws the RPC"]
pub(crate) struct Queued {
    queue: Option<Arc<ConsumerQueue>>,
    peer: ServerId,
    class: Class,
    id: u64,
}

impl Queued {
    /// Leaves the RPC queued whatever happens to this handle.
    pub(crate) fn detach(mut self) {
        self.queue = None;
    }

    /// True while the RPC waits in the queue (the consumer has not taken it).
    pub(crate) fn is_queued(&self) -> bool {
        let Some(queue) = &self.queue else {
            return false;
        };
        let mut state = queue.state();
        state
            .peers
            .get_mut(&self.peer)
            .is_some_and(|peer| peer.class(self.class).iter().any(|item| item.id == self.id))
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        let Some(queue) = self.queue.take() else {
            return;
        };
        let withdrawn = queue.state().withdraw(&self.peer, self.class, self.id);
        if withdrawn.is_some() {
            queue.left.notify_waiters();
        }
        // `withdrawn` drops here, outside the lock: its RPC and what it held.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{AppendEntriesRequest, Log, RequestVoteRequest, RpcHeader, RpcKind};
    use crate::transport::Responder;

    fn rpc(command: Command) -> Rpc {
        let (responder, _rx) = Responder::new(command.kind());
        Rpc::new(command, None, responder)
    }

    fn vote(peer: &str) -> Rpc {
        rpc(Command::RequestVote(RequestVoteRequest {
            header: RpcHeader::new(peer, peer),
            term: 1,
            last_log_index: 0,
            last_log_term: 0,
            leadership_transfer: false,
        }))
    }

    fn append(peer: &str) -> Rpc {
        let mut request = AppendEntriesRequest::heartbeat(RpcHeader::new(peer, peer), 1);
        request
            .entries
            .push(Log::command(1, 1, bytes::Bytes::new()));
        rpc(Command::AppendEntries(request))
    }

    fn from(rpc: &Rpc) -> (String, RpcKind) {
        (rpc.command().header().id.to_string(), rpc.command().kind())
    }

    #[tokio::test]
    async fn peers_are_served_in_turn_and_control_goes_first() {
        let queue = ConsumerQueue::new(16);
        for _ in 0..3 {
            queue.push(vote("a"), None).await.unwrap().detach();
        }
        queue.push(append("b"), None).await.unwrap().detach();
        queue.push(vote("b"), None).await.unwrap().detach();
        let order: Vec<_> = std::iter::from_fn(|| queue.try_pop().flatten())
            .map(|rpc| from(&rpc))
            .collect();
        let v = RpcKind::RequestVote;
        let a = RpcKind::AppendEntries;
        assert_eq!(
            order,
            vec![
                ("a".into(), v),
                ("b".into(), v),
                ("a".into(), v),
                ("a".into(), v),
                ("b".into(), a)
            ]
        );
    }

    #[tokio::test]
    async fn a_control_flood_leaves_room_for_bulk() {
        let queue = ConsumerQueue::new(64);
        for _ in 0..20 {
            queue.push(vote("a"), None).await.unwrap().detach();
        }
        queue.push(append("b"), None).await.unwrap().detach();
        let position = std::iter::from_fn(|| queue.try_pop().flatten())
            .position(|rpc| rpc.command().kind() == RpcKind::AppendEntries)
            .unwrap();
        assert_eq!(position, CONTROL_BURST as usize);
    }

    #[tokio::test]
    async fn one_peer_at_its_limit_waits_while_others_queue() {
        let queue = ConsumerQueue::new(2);
        queue.push(vote("a"), None).await.unwrap().detach();
        queue.push(vote("a"), None).await.unwrap().detach();
        let mut third = Box::pin(queue.push(vote("a"), None));
        assert!(futures_util::poll!(third.as_mut()).is_pending());
        queue.push(vote("b"), None).await.unwrap().detach();
        assert_eq!(queue.len(), 3);
        assert!(queue.try_pop().flatten().is_some());
        third.await.unwrap().detach();
        assert_eq!(queue.len(), 3);
    }

    #[tokio::test]
    async fn a_dropped_handle_withdraws_its_rpc_and_gives_back_what_it_held() {
        let queue = ConsumerQueue::new(4);
        let held = Arc::new(());
        let queued = queue
            .push(vote("a"), Some(Box::new(held.clone())))
            .await
            .unwrap();
        queue.push(vote("b"), None).await.unwrap().detach();
        assert_eq!(Arc::strong_count(&held), 2);
        drop(queued);
        assert_eq!(Arc::strong_count(&held), 1, "withdrawn at once");
        assert_eq!(queue.len(), 1);
        let next = queue.try_pop().flatten().unwrap();
        assert_eq!(from(&next).0, "b");
        assert!(queue.try_pop().is_none());
    }

    #[tokio::test]
    async fn taking_an_rpc_gives_back_what_it_held() {
        let queue = ConsumerQueue::new(4);
        let held = Arc::new(());
        let queued = queue
            .push(vote("a"), Some(Box::new(held.clone())))
            .await
            .unwrap();
        let rpc = queue.try_pop().flatten().unwrap();
        assert_eq!(Arc::strong_count(&held), 1);
        drop(queued);
        drop(rpc);
        assert_eq!(queue.len(), 0);
    }

    #[tokio::test]
    async fn closed_queue_drains_then_ends_and_refuses_more() {
        let queue = ConsumerQueue::new(4);
        queue.push(vote("a"), None).await.unwrap().detach();
        queue.close();
        assert!(queue.push(vote("b"), None).await.is_err());
        assert!(queue.pop().await.is_some());
        assert!(queue.pop().await.is_none());
    }
}
