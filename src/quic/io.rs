//! Frames on QUIC streams: reading with a size limit and a per-connection byte budget,
//! writing without extra copies.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use bytes::BytesMut;
use quinn::{ReadError, RecvStream, SendStream, WriteError};
use tokio::sync::Semaphore;

use super::stats::Counters;
use crate::codec::{self, CodecError, Frame, FrameAssembler, Need};
use crate::command::ServerId;

/// Why no frame could be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadFrameError {
    /// The bytes are not a valid frame.
    #[error(transparent)]
    Codec(CodecError),
    /// The stream or connection failed.
    #[error(transparent)]
    Read(ReadError),
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
}

/// The bytes the incoming frames of one connection may hold at once
/// (`QuicConfig::max_buffered_bytes_per_peer`), shared by its request streams and
/// pipelines. Cheap to clone: clones share the budget.
///
/// Bytes that quinn holds unread count against QUIC flow control (the receive window);
/// bytes read out of quinn into a frame buffer do not, so without a budget each of a peer's
/// `max_streams` streams could make this node hold a frame of `max_message_size`.
#[derive(Clone)]
pub(crate) struct FrameBudget(Arc<BudgetShared>);

struct BudgetShared {
    /// One permit per byte. Fair: a frame waiting for many bytes is not overtaken by later,
    /// smaller ones (it could otherwise starve while partial frames come and go).
    bytes: Semaphore,
    total: usize,
    counters: Arc<Counters>,
}

impl FrameBudget {
    /// A budget of `total` bytes (capped at what a semaphore can count), accounted in
    /// `counters`.
    pub(crate) fn new(total: usize, counters: Arc<Counters>) -> Self {
        let total = total.min(Semaphore::MAX_PERMITS);
        Self(Arc::new(BudgetShared {
            bytes: Semaphore::new(total),
            total,
            counters,
        }))
    }

    /// Bytes the budget allows in all.
    pub(crate) fn total(&self) -> usize {
        self.0.total
    }

    /// Reserves `bytes`, waiting in line while the budget has too few free. A request for
    /// more than the whole budget can never be granted and fails at once as oversize.
    ///
    /// Cancel-safe: a cancelled wait reserves nothing (and gives up its place in line).
    pub(crate) async fn reserve(&self, bytes: usize) -> Result<Reservation, CodecError> {
        let oversize = || CodecError::Oversize {
            len: bytes as u64,
            max: self.0.total,
        };
        if bytes > self.0.total {
            return Err(oversize());
        }
        let permits = u32::try_from(bytes).map_err(|_| oversize())?;
        let permit = self
            .0
            .bytes
            .acquire_many(permits)
            .await
            // The semaphore is never closed; if it were, no frame could ever be granted.
            .map_err(|_closed| oversize())?;
        // Given back by `Reservation::drop`, together with the count.
        permit.forget();
        self.0.counters.frame_bytes_held(bytes);
        Ok(Reservation {
            budget: self.0.clone(),
            bytes,
        })
    }

    #[cfg(test)]
    fn available(&self) -> usize {
        self.0.bytes.available_permits()
    }
}

/// The frame budgets of a node's peers: one per peer, shared by all of the peer's connections
/// (including those being retired or closing), so a peer cannot multiply its budget by
/// opening connections, and gone when the last of them is.
#[derive(Default)]
pub(crate) struct PeerBudgets(std::sync::Mutex<HashMap<ServerId, Weak<BudgetShared>>>);

impl PeerBudgets {
    /// The budget of `peer`, made with `total` bytes if it has none now.
    pub(crate) fn of(
        &self,
        peer: &ServerId,
        total: usize,
        counters: &Arc<Counters>,
    ) -> FrameBudget {
        // Each critical section is one map operation: a poisoned lock is still sound.
        let mut budgets = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(shared) = budgets.get(peer).and_then(Weak::upgrade) {
            return FrameBudget(shared);
        }
        // Forget the budgets of peers with no connection left (bounded by the peers known).
        budgets.retain(|_, budget| budget.strong_count() > 0);
        let budget = FrameBudget::new(total, counters.clone());
        budgets.insert(peer.clone(), Arc::downgrade(&budget.0));
        budget
    }
}

impl PeerBudgets {
    /// Bytes of `peer`'s budget in use now (0 when it has none).
    pub(crate) fn used(&self, peer: &ServerId) -> usize {
        let budgets = self.0.lock().unwrap_or_else(|e| e.into_inner());
        budgets
            .get(peer)
            .and_then(Weak::upgrade)
            .map_or(0, |shared| {
                shared
                    .total
                    .saturating_sub(shared.bytes.available_permits())
            })
    }
}

/// Bytes of a [`FrameBudget`] held by one frame; given back when dropped.
pub(crate) struct Reservation {
    budget: Arc<BudgetShared>,
    bytes: usize,
}

impl Reservation {
    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Holds `other`'s bytes too (both come from the same budget), as one reservation.
    pub(crate) fn absorb(&mut self, mut other: Reservation) {
        debug_assert!(Arc::ptr_eq(&self.budget, &other.budget));
        self.bytes += std::mem::take(&mut other.bytes);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.counters.frame_bytes_released(self.bytes);
        self.budget.bytes.add_permits(self.bytes);
    }
}

/// Reads frames from one stream, holding at most one frame of `max` bytes.
///
/// Only the bytes of the frame under way are taken off the stream ([`FrameAssembler`]): its
/// 5-byte header, then, once the header is checked and (with a budget) the declared body
/// length is reserved, exactly that many bytes. What follows stays in quinn, where QUIC flow
/// control bounds it.
pub(crate) struct FrameReader {
    frames: FrameAssembler,
    budget: Option<FrameBudget>,
    /// The budget held by the frame under way.
    reserved: Option<Reservation>,
    /// The budget held by the frame last returned, until taken or the next read.
    returned: Option<Reservation>,
}

impl FrameReader {
    /// A reader outside any budget (the answers to this node's own calls).
    pub(crate) fn new(max: usize) -> Self {
        Self {
            frames: FrameAssembler::new(max),
            budget: None,
            reserved: None,
            returned: None,
        }
    }

    /// A reader whose frames hold their body length of `budget` from their header until they
    /// are decoded, or, for the frame last returned, until
    /// [`take_reservation`](Self::take_reservation) or the next read.
    pub(crate) fn with_budget(max: usize, budget: FrameBudget) -> Self {
        Self {
            budget: Some(budget),
            ..Self::new(max)
        }
    }

    /// The next frame; `None` when the stream ended cleanly between frames.
    ///
    /// Cancel-safe: bytes already read, and budget already reserved, stay with the reader
    /// for the next call.
    pub(crate) async fn next(
        &mut self,
        recv: &mut RecvStream,
    ) -> Result<Option<Frame>, ReadFrameError> {
        // The frame returned last was not taken: it has been dealt with.
        self.returned = None;
        loop {
            let want = match self.frames.need() {
                Need::Header(want) => want,
                Need::Body { len, missing } => {
                    if let Some(budget) = &self.budget
                        && self.reserved.is_none()
                    {
                        let reservation =
                            budget.reserve(len).await.map_err(ReadFrameError::Codec)?;
                        self.reserved = Some(reservation);
                    }
                    missing
                }
            };
            let piece = recv
                .read_chunk(want, true)
                .await
                .map_err(ReadFrameError::Read)?;
            let Some(piece) = piece else {
                return if self.frames.is_idle() {
                    Ok(None)
                } else {
                    Err(ReadFrameError::Truncated)
                };
            };
            let frame = self
                .frames
                .push(piece.bytes)
                .map_err(ReadFrameError::Codec)?;
            if frame.is_some() {
                self.returned = self.reserved.take();
                return Ok(frame);
            }
        }
    }

    /// The budget held by the frame [`next`](Self::next) returned last, to keep it counted
    /// until the frame is handed on; `None` without a budget or for an empty body.
    pub(crate) fn take_reservation(&mut self) -> Option<Reservation> {
        self.returned.take()
    }

    /// True while the frame under way waits for its connection's budget (its header arrived,
    /// its body is not read yet), including after a read cancelled during that wait.
    pub(crate) fn waiting_for_budget(&self) -> bool {
        self.budget.is_some()
            && self.reserved.is_none()
            && matches!(self.frames.need(), Need::Body { .. })
    }
}

/// Encodes `frame` and writes it as one chunk.
pub(crate) async fn write_frame(
    send: &mut SendStream,
    frame: &Frame,
    max: usize,
) -> Result<(), WriteFrameError> {
    // Room for a typical control message at once, so encoding does not regrow the buffer
    // field by field; large appends grow it by doubling.
    let mut buf = BytesMut::with_capacity(256);
    codec::encode(frame, &mut buf, max).map_err(WriteFrameError::Codec)?;
    send.write_chunk(buf.freeze())
        .await
        .map_err(WriteFrameError::Write)
}

/// Why a frame could not be written.
#[derive(Debug)]
pub(crate) enum WriteFrameError {
    /// The frame could not be encoded (over the size limit).
    Codec(CodecError),
    /// The stream or connection failed.
    Write(WriteError),
}

/// A send stream that is reset with `code` when dropped before [`finish`](Self::finish), so
/// the reader sees an error instead of a clean (and short) end.
pub(crate) struct ResetOnDrop {
    stream: SendStream,
    code: quinn::VarInt,
    finished: bool,
}

impl ResetOnDrop {
    pub(crate) fn new(stream: SendStream, code: quinn::VarInt) -> Self {
        Self {
            stream,
            code,
            finished: false,
        }
    }

    /// Ends the stream cleanly: everything was written.
    pub(crate) fn finish(&mut self) {
        self.finished = true;
        // Already reset by the peer's STOP_SENDING is the only failure; nothing to do then.
        let _ = self.stream.finish();
    }
}

impl std::ops::Deref for ResetOnDrop {
    type Target = SendStream;

    fn deref(&self) -> &SendStream {
        &self.stream
    }
}

impl std::ops::DerefMut for ResetOnDrop {
    fn deref_mut(&mut self) -> &mut SendStream {
        &mut self.stream
    }
}

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.stream.reset(self.code);
        }
    }
}

/// Copies a snapshot's `size` bytes from `source` onto `stream` ([`copy_range_to_stream`]
/// from 0).
pub(crate) async fn copy_exact_to_stream<R>(
    source: &mut R,
    size: u64,
    stream: &mut SendStream,
    pacer: Option<(super::pacing::Pacer, &quinn::Connection)>,
) -> Result<(), crate::transport::CopyError>
where
    R: tokio::io::AsyncRead + Unpin + ?Sized,
{
    copy_range_to_stream(source, 0..size, stream, pacer, |_| {}).await
}

/// Copies the bytes `range` of a snapshot from `source` (positioned at `range.start`) onto
/// `stream`, 64 KiB at a time, each chunk handed to quinn as owned bytes (no copy into its
/// buffer) once `pacer` allows it. `written` gets the snapshot offset reached after every
/// write quinn takes, partial ones included (a resume needs to know exactly what went out).
/// A source that ends early, or fails, is a [`CopyError::Source`](crate::transport::CopyError).
pub(crate) async fn copy_range_to_stream<R>(
    source: &mut R,
    range: std::ops::Range<u64>,
    stream: &mut SendStream,
    mut pacer: Option<(super::pacing::Pacer, &quinn::Connection)>,
    mut written: impl FnMut(u64),
) -> Result<(), crate::transport::CopyError>
where
    R: tokio::io::AsyncRead + Unpin + ?Sized,
{
    use crate::transport::CopyError;
    use tokio::io::AsyncReadExt;

    const CHUNK: usize = 64 * 1024;
    let mut position = range.start;
    while position < range.end {
        let want = usize::try_from(range.end - position)
            .unwrap_or(usize::MAX)
            .min(CHUNK);
        let mut chunk = BytesMut::with_capacity(want);
        // `take` stops the read at `want` bytes even if the source has more.
        let read = (&mut *source).take(want as u64).read_buf(&mut chunk).await;
        let n = CopyError::check_read(position, read)?;
        if let Some((pacer, conn)) = &mut pacer {
            pacer.admit(n, conn).await;
        }
        let mut chunks: [bytes::Bytes; 1] = [chunk.freeze()];
        while !chunks[0].is_empty() {
            let taken = stream
                .write_chunks(&mut chunks)
                .await
                .map_err(|e| CopyError::Sink(std::io::Error::from(e)))?;
            position += taken.bytes as u64;
            written(position);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use super::*;

    fn budget(total: usize) -> (FrameBudget, Arc<Counters>) {
        let counters = Arc::new(Counters::default());
        (FrameBudget::new(total, counters.clone()), counters)
    }

    #[tokio::test]
    async fn reservations_are_counted_until_dropped() {
        let (budget, counters) = budget(100);
        let a = budget.reserve(60).await.unwrap();
        let b = budget.reserve(40).await.unwrap();
        assert_eq!(budget.available(), 0);
        assert_eq!(counters.stats(0).frame_bytes_buffered, 100);
        drop(a);
        assert_eq!(budget.available(), 60);
        assert_eq!(counters.stats(0).frame_bytes_buffered, 40);
        drop(b);
        let stats = counters.stats(0);
        assert_eq!(
            (
                stats.frame_bytes_buffered,
                stats.frame_bytes_buffered_high_water
            ),
            (0, 100)
        );
        assert_eq!(budget.available(), budget.total());
    }

    #[tokio::test]
    async fn more_than_the_whole_budget_is_refused_at_once() {
        let (budget, counters) = budget(100);
        assert_eq!(
            budget.reserve(101).await.err(),
            Some(CodecError::Oversize { len: 101, max: 100 })
        );
        assert_eq!(counters.stats(0).frame_bytes_buffered, 0);
        assert_eq!(budget.available(), 100);
    }

    #[tokio::test]
    async fn a_large_frame_is_not_overtaken_by_later_small_ones() {
        let (budget, counters) = budget(100);
        let mut cx = Context::from_waker(Waker::noop());
        let first = budget.reserve(60).await.unwrap();
        let mut large = pin!(budget.reserve(60));
        let mut small = pin!(budget.reserve(10));
        assert!(large.as_mut().poll(&mut cx).is_pending());
        // 40 bytes are free, but the large frame came first.
        assert!(
            small.as_mut().poll(&mut cx).is_pending(),
            "a later, smaller frame overtook a waiting one"
        );
        drop(first);
        let Poll::Ready(Ok(large)) = large.as_mut().poll(&mut cx) else {
            panic!("the large frame still waits with the budget free");
        };
        let Poll::Ready(Ok(small)) = small.as_mut().poll(&mut cx) else {
            panic!("the small frame still waits with room for it");
        };
        assert_eq!(counters.stats(0).frame_bytes_buffered, 70);
        drop((large, small));
        assert_eq!(counters.stats(0).frame_bytes_buffered, 0);
        assert_eq!(budget.available(), 100);
    }

    #[tokio::test]
    async fn a_cancelled_wait_reserves_nothing() {
        let (budget, counters) = budget(100);
        let mut cx = Context::from_waker(Waker::noop());
        let first = budget.reserve(60).await.unwrap();
        {
            let mut waiting = pin!(budget.reserve(60));
            assert!(waiting.as_mut().poll(&mut cx).is_pending());
        }
        drop(first);
        assert_eq!(budget.available(), 100);
        assert_eq!(counters.stats(0).frame_bytes_buffered, 0);
        // The line moved on: a new reservation of everything is granted at once.
        let all = budget.reserve(100).await.unwrap();
        drop(all);
    }
}
