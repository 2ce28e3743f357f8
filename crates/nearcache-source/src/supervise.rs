//! What every source does around its sessions: bypass whenever a session ends, reconnect with
//! exponential backoff and jitter, stop on shutdown. A source supplies only its session.

use std::error::Error;
use std::future::Future;
use std::pin::{pin, Pin};
use std::time::Duration;

use crate::{Handler, SourceState, SourceStatus};

/// Runs `session` until `shutdown` completes, again and again: whenever one ends (it returns
/// why, and whether it got as far as delivering), the handler goes to bypass at once, and the
/// next starts after a delay that doubles from `backoff_min` up to `backoff_max` (reset by a
/// session that delivered), with jitter between half and all of it. On shutdown the handler
/// is put in bypass too, since nobody will tell it about changes any more.
pub async fn supervise<H, S, F, E>(
    source: &'static str,
    backoff: (Duration, Duration),
    handler: &H,
    status: &SourceStatus,
    shutdown: impl Future<Output = ()>,
    mut session: S,
) where
    H: Handler + ?Sized,
    S: FnMut() -> F,
    F: Future<Output = (E, bool)>,
    E: Error,
{
    let (backoff_min, backoff_max) = backoff;
    let mut shutdown = pin!(shutdown);
    let mut delay = backoff_min;
    loop {
        status.set_state(SourceState::Connecting);
        let ended = tokio::select! {
            biased;
            () = &mut shutdown => None,
            ended = session() => Some(ended),
        };
        // Whatever happened, nobody guarantees the cache hears about changes now.
        status.set_state(SourceState::Connecting);
        handler.bypass();
        let Some((error, delivered)) = ended else {
            break;
        };
        let error = explain(&error);
        status.ended(error.clone(), delivered);
        if delivered {
            delay = backoff_min;
        }
        tracing::warn!(source, error = %error, "bypassing the cache and reconnecting in {delay:?}");
        // Full jitter between half and all of the delay, so that instances spread out.
        let jittered = delay.mul_f64(rand::random_range(0.5..=1.0));
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            () = tokio::time::sleep(jittered) => {}
        }
        delay = (delay * 2).min(backoff_max);
    }
    status.set_state(SourceState::Stopped);
    tracing::info!(source, "stopped");
}

/// An error with its causes, each said once: tokio-postgres' "error performing TLS handshake"
/// alone does not tell an operator that the certificate's issuer is unknown; its source does.
pub fn explain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let more = e.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = e.source();
    }
    text
}

/// Sleeps until `deadline`, or forever without one: a heartbeat's deadline in a `select!`.
pub async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A deadline a session's loop may set on every turn, armed anew only when it moves: a
/// `select!` over [`sleep_until_opt`] registers (and drops) a timer each turn, which is most
/// of what a turn costs when a stream wakes the loop thousands of times a second.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// use nearcache_source::Timer;
/// use tokio::time::{Duration, Instant};
/// let mut timer = Timer::default();
/// timer.set(Some(Instant::now() + Duration::from_millis(5)));
/// timer.wait().await; // elapses
/// timer.set(None); // disarmed: wait() would never end
/// # });
/// ```
#[derive(Debug)]
pub struct Timer {
    sleep: Pin<Box<tokio::time::Sleep>>,
    armed: bool,
}

impl Default for Timer {
    fn default() -> Self {
        // Far enough never to elapse unarmed; tokio caps a deadline at about two years.
        let never = tokio::time::Instant::now() + std::time::Duration::from_secs(86_400 * 365);
        Self {
            sleep: Box::pin(tokio::time::sleep_until(never)),
            armed: false,
        }
    }
}

impl Timer {
    /// Sets the deadline (`None`: none); a deadline already set and unchanged stays armed
    /// as it is.
    pub fn set(&mut self, deadline: Option<tokio::time::Instant>) {
        match deadline {
            Some(d) => {
                if !self.armed || self.sleep.deadline() != d {
                    self.sleep.as_mut().reset(d);
                }
                self.armed = true;
            }
            None => self.armed = false,
        }
    }

    /// Waits until the deadline, or forever without one: at once if it has passed, as
    /// [`sleep_until_opt`] does.
    pub async fn wait(&mut self) {
        if self.armed {
            self.sleep.as_mut().await;
        } else {
            std::future::pending().await
        }
    }
}

/// Awaits the query in flight, if any, or waits forever: a source's side query (a check, a
/// poll) as one arm of its session's `select!`, beside the stream it must keep reading.
pub async fn in_flight<F: Future + Unpin>(query: &mut Option<F>) -> F::Output {
    match query {
        Some(q) => q.await,
        None => std::future::pending().await,
    }
}

/// Aborts a task when dropped: a connection driver that must not outlive its session.
#[derive(Debug)]
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("connecting: {0}")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("error performing TLS handshake")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn an_explanation_names_every_cause_once() {
        let e = Outer(Middle(std::io::Error::other("invalid peer certificate")));
        assert_eq!(
            super::explain(&e),
            "connecting: error performing TLS handshake: invalid peer certificate"
        );
    }
}
