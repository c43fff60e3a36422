//! Pipelined AppendEntries: many in flight, completions in send order, bounded by
//! `max_in_flight`.
//!
//! The ordering and backpressure rules live here, once; a transport supplies only a
//! [`PipelineSink`] that puts requests on the wire in the order it is given them.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::command::{AppendEntriesRequest, AppendEntriesResponse, RpcKind};
use crate::error::Error;

/// The `max_in_flight` used when a configuration says 0.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 128;

/// A `max_in_flight` setting as both transports read it: 0 means the default.
pub(crate) fn max_in_flight_or_default(max_in_flight: usize) -> usize {
    if max_in_flight == 0 {
        DEFAULT_MAX_IN_FLIGHT
    } else {
        max_in_flight
    }
}

pub(crate) use futures_util::future::BoxFuture;

/// Resolves to the response of one pipelined request.
pub(crate) type ResponseFuture = BoxFuture<'static, Result<AppendEntriesResponse, Error>>;

/// What a transport provides to build an [`AppendPipeline`]: an ordered way to the peer.
pub(crate) trait PipelineSink: Send + Sync + 'static {
    /// Puts `request` on its way, after every request started before it, and returns the
    /// future of its response. [`AppendPipeline`] calls this from one task at a time.
    fn start<'a>(
        &'a self,
        request: &'a AppendEntriesRequest,
    ) -> BoxFuture<'a, Result<ResponseFuture, Error>>;

    /// Stops sending; called once when the pipeline closes.
    fn close(&self);
}

/// A completed pipelined AppendEntries, as [`AppendPipeline::next`] yields it.
#[derive(Debug)]
pub struct AppendCompletion {
    /// Position in send order, from 0.
    pub seq: u64,
    /// The request that was sent.
    pub request: AppendEntriesRequest,
    /// When it was sent.
    pub started: Instant,
    /// The peer's answer, or why there is none.
    pub response: Result<AppendEntriesResponse, Error>,
}

struct InFlight {
    seq: u64,
    request: AppendEntriesRequest,
    started: Instant,
    response: ResponseFuture,
}

/// The receiving end of the in-flight queue, with the request `next` waits on.
struct Completions {
    queue: mpsc::UnboundedReceiver<InFlight>,
    /// Taken off `queue` and not yet yielded: kept here so a cancelled `next` loses nothing.
    head: Option<InFlight>,
}

/// Pipelined AppendEntries to one peer (hashicorp/raft's `AppendPipeline`).
///
/// [`send`](Self::send) puts a request on its way and returns its sequence number;
/// [`next`](Self::next) yields completions in send order. At most `max_in_flight` requests
/// are outstanding, counting those completed but not yet taken by `next`: at the limit
/// `send` waits, which is the pipeline's backpressure. The follower sees the requests in the
/// order they were sent. Both methods take `&self`, so one task can `select!` over them or
/// two tasks can share the pipeline. Closing (or dropping) the pipeline fails every
/// outstanding request, and so does the first request that fails (see [`next`](Self::next)).
pub struct AppendPipeline {
    sink: Box<dyn PipelineSink>,
    max_in_flight: usize,
    permits: Semaphore,
    next_seq: Mutex<u64>,
    queue_tx: mpsc::UnboundedSender<InFlight>,
    completions: Mutex<Completions>,
    closed: CancellationToken,
    sink_closed: AtomicBool,
    shutdown: CancellationToken,
    timeout: Duration,
}

impl AppendPipeline {
    /// A pipeline over `sink` allowing `max_in_flight` outstanding requests (at least 2),
    /// failing a response not received within `timeout`, and closing when `shutdown` (the
    /// transport's) is cancelled.
    pub(crate) fn new(
        sink: impl PipelineSink,
        max_in_flight: usize,
        timeout: Duration,
        shutdown: &CancellationToken,
    ) -> Result<Self, Error> {
        if max_in_flight < 2 {
            return Err(Error::PipelineNotSupported);
        }
        let (queue_tx, queue_rx) = mpsc::unbounded_channel();
        Ok(Self {
            sink: Box::new(sink),
            max_in_flight,
            permits: Semaphore::new(max_in_flight),
            next_seq: Mutex::new(0),
            queue_tx,
            completions: Mutex::new(Completions {
                queue: queue_rx,
                head: None,
            }),
            closed: shutdown.child_token(),
            sink_closed: AtomicBool::new(false),
            shutdown: shutdown.clone(),
            timeout,
        })
    }

    /// The most requests that may be outstanding.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// Requests sent whose completions `next` has not yet yielded.
    pub fn in_flight(&self) -> usize {
        self.max_in_flight - self.permits.available_permits()
    }

    /// True once the pipeline is closed.
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    fn closed_error(&self) -> Error {
        if self.shutdown.is_cancelled() {
            Error::Shutdown
        } else {
            Error::PipelineClosed
        }
    }

    /// Sends `request` after every request sent before it; returns its sequence number.
    /// Waits while `max_in_flight` requests are outstanding.
    ///
    /// Cancel-safe while waiting for room; cancelled while writing, the pipeline closes, since
    /// the peer may have seen part of the request.
    pub async fn send(&self, request: AppendEntriesRequest) -> Result<u64, Error> {
        let permit = tokio::select! {
            biased;
            _ = self.closed.cancelled() => return Err(self.closed_error()),
            permit = self.permits.acquire() => permit.map_err(|_| self.closed_error())?,
        };
        let mut next_seq = self.next_seq.lock().await;
        if self.closed.is_cancelled() {
            return Err(self.closed_error());
        }
        let close_if_cancelled = self.closed.clone().drop_guard();
        let started = Instant::now();
        let response = match self.sink.start(&request).await {
            Ok(response) => response,
            Err(e) => {
                close_if_cancelled.disarm();
                return Err(e);
            }
        };
        close_if_cancelled.disarm();
        let seq = *next_seq;
        *next_seq += 1;
        // The permit comes back when `next` yields this request's completion.
        permit.forget();
        // The receiver lives in `self`, so the queue cannot be closed here.
        let _ = self.queue_tx.send(InFlight {
            seq,
            request,
            started,
            response,
        });
        Ok(seq)
    }

    /// The next completion, in send order: waits until something was sent and its response
    /// came (or failed). Yields `None` once the pipeline is closed and every outstanding
    /// request has been yielded, failed.
    ///
    /// The first failed completion (a timeout, a lost connection, an error the peer answered)
    /// closes the pipeline, as in hashicorp/raft: the follower handles appends in order, so
    /// those sent after a failed one cannot be trusted to have been applied. Every request
    /// behind it completes with [`Error::PipelineClosed`] (or [`Error::Shutdown`]), even one
    /// whose answer had already arrived, and `send` fails from then on.
    ///
    /// Cancel-safe: the request being waited on stays at the head of the pipeline, so a
    /// cancelled call (say, the losing branch of a `select!`) loses no completion; the next
    /// call yields it.
    pub async fn next(&self) -> Option<AppendCompletion> {
        let mut completions = self.completions.lock().await;
        let completions = &mut *completions;
        if completions.head.is_none() {
            completions.head = if self.closed.is_cancelled() {
                completions.queue.try_recv().ok()
            } else {
                tokio::select! {
                    biased;
                    item = completions.queue.recv() => item,
                    _ = self.closed.cancelled() => completions.queue.try_recv().ok(),
                }
            };
        }
        let head = completions.head.as_mut()?;
        let response = if self.closed.is_cancelled() {
            Err(self.closed_error())
        } else {
            let deadline = head.started + self.timeout;
            tokio::select! {
                biased;
                result = tokio::time::timeout_at(deadline, &mut head.response) => {
                    result.unwrap_or(Err(Error::Timeout {
                        rpc: RpcKind::AppendEntries,
                        after: self.timeout,
                    }))
                }
                _ = self.closed.cancelled() => Err(self.closed_error()),
            }
        };
        // From here on nothing awaits: the completion is taken and returned as one step.
        let InFlight {
            seq,
            request,
            started,
            response: _,
        } = completions.head.take()?;
        if let Err(error) = &response
            && !self.closed.is_cancelled()
        {
            tracing::debug!(seq, %error, "pipelined append failed: closing the pipeline");
            self.close();
        }
        self.permits.add_permits(1);
        Some(AppendCompletion {
            seq,
            request,
            started,
            response,
        })
    }

    /// Closes the pipeline: `send` fails from now on and every outstanding request completes
    /// with [`Error::PipelineClosed`]. Idempotent.
    pub fn close(&self) {
        self.closed.cancel();
        if !self.sink_closed.swap(true, Ordering::AcqRel) {
            self.sink.close();
        }
    }
}

impl Drop for AppendPipeline {
    fn drop(&mut self) {
        self.close();
    }
}

impl fmt::Debug for AppendPipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppendPipeline")
            .field("max_in_flight", &self.max_in_flight)
            .field("in_flight", &self.in_flight())
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}
