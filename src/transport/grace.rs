//! The wait of a parked resumable snapshot's reader, shared by both transports.

use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// The timer of a reader whose transfer is parked: it waits out the grace period that began
/// when the transfer's connection (or link) was lost. Allocated at the first park only.
#[derive(Debug, Default)]
pub(crate) struct GraceTimer(Option<Pin<Box<Sleep>>>);

impl GraceTimer {
    /// Whether `grace` after `since` has passed; if not, `cx` is woken when it does. A later
    /// park (another `since`) moves the timer.
    pub(crate) fn poll_passed(
        &mut self,
        cx: &mut Context<'_>,
        since: Instant,
        grace: Duration,
    ) -> bool {
        let deadline = since + grace;
        let sleep = self
            .0
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        sleep.as_mut().poll(cx).is_ready()
    }
}
