//! The in-memory pipeline: requests reach the peer's consumer in send order, each after the
//! link's delay, without waiting for earlier answers.

use std::sync::Mutex;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{InmemTransport, Route};
use crate::command::{AppendEntriesRequest, Command, RpcKind};
use crate::error::Error;
use crate::transport::{BoxFuture, PipelineSink, Responder, ResponseFuture, Rpc, check_request};

pub(super) struct InmemSink {
    transport: InmemTransport,
    route: std::sync::Arc<Route>,
    /// Requests for the delivery task, in send order; `None` once closed.
    deliveries: Mutex<Option<mpsc::UnboundedSender<(Instant, Rpc)>>>,
}

impl InmemSink {
    pub(super) fn new(transport: InmemTransport, route: Route) -> Self {
        let route = std::sync::Arc::new(route);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(deliver_in_order(transport.clone(), route.clone(), rx));
        Self {
            transport,
            route,
            deliveries: Mutex::new(Some(tx)),
        }
    }
}

/// Delivers each request at its time, one after another, so the consumer sees send order.
/// Ends when the pipeline closes or a route fails.
async fn deliver_in_order(
    transport: InmemTransport,
    route: std::sync::Arc<Route>,
    mut rx: mpsc::UnboundedReceiver<(Instant, Rpc)>,
) {
    while let Some((at, rpc)) = rx.recv().await {
        let delivered = transport
            .wait_or_fail(&route, async {
                tokio::time::sleep_until(at).await;
                route.peer.dispatcher.dispatch(rpc).await
            })
            .await;
        if !matches!(delivered, Ok(Ok(()))) {
            return;
        }
    }
}

impl PipelineSink for InmemSink {
    fn start<'a>(
        &'a self,
        request: &'a AppendEntriesRequest,
    ) -> BoxFuture<'a, Result<ResponseFuture, Error>> {
        Box::pin(async move {
            let command = Command::AppendEntries(request.clone());
            check_request(&command, self.transport.node.config.max_message_size)?;
            let faults = &self.route.faults;
            let (responder, rx) = Responder::new(RpcKind::AppendEntries);
            let rpc = Rpc::new(command, None, responder);
            // A black hole keeps the request, unanswered, until its completion is dropped: the
            // pipeline times it out, as the unary path times out a call.
            let mut lost = None;
            if faults.drop_requests {
                lost = Some(rpc);
            } else {
                let tx = self
                    .deliveries
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                let tx = tx.ok_or(Error::PipelineClosed)?;
                tx.send((Instant::now() + faults.delay, rpc))
                    .map_err(|_| self.route.lost("pipeline delivery stopped"))?;
            }
            let transport = self.transport.clone();
            let route = self.route.clone();
            let response: ResponseFuture = Box::pin(async move {
                let _lost = lost;
                let answer = transport.wait_or_fail(&route, rx).await?;
                route.answer(answer, RpcKind::AppendEntries)
            });
            Ok(response)
        })
    }

    fn close(&self) {
        self.deliveries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }
}
