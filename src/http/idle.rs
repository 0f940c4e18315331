//! Per-connection activity: how many requests are in flight on a connection and since when it
//! has had none, so the accept loop can close connections that sit idle (no request head yet,
//! or between keep-alive requests). A request counts as in flight from the moment hyper hands
//! it to the service until its response body is finished or dropped. No I/O here.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
struct State {
    /// When the connection was accepted; `idle_since` counts from here.
    origin: Instant,
    in_flight: AtomicUsize,
    /// Nanoseconds from `origin` to the end of the last request (0: none yet).
    idle_since: AtomicU64,
}

/// The activity of one connection; clones share it. Plain atomics: a request's start and end
/// wake no one and arm no timer; the idle timer reads them when its deadline comes.
#[derive(Debug, Clone)]
pub struct Activity {
    state: Arc<State>,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    /// A connection accepted now, with no request yet: idle from this moment.
    pub fn new() -> Activity {
        Activity {
            state: Arc::new(State {
                origin: Instant::now(),
                in_flight: AtomicUsize::new(0),
                idle_since: AtomicU64::new(0),
            }),
        }
    }

    /// A request started; the connection is busy until the returned guard is dropped.
    pub fn begin(&self) -> Busy {
        self.state.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy {
            state: self.state.clone(),
        }
    }

    /// Completes once the connection has had no request in flight for `timeout`. It sleeps
    /// until the deadline the last request's end set; while requests are in flight it looks
    /// again every `timeout`, and the first look after the last one ends still finds that end's
    /// deadline ahead. Cancel-safe: it only reads the shared state.
    pub async fn idle_for(&self, timeout: Duration) {
        let s = &self.state;
        loop {
            let now = Instant::now();
            let deadline = match s.in_flight.load(Ordering::Acquire) {
                0 => s.origin + Duration::from_nanos(s.idle_since.load(Ordering::Acquire)) + timeout,
                _ => now + timeout,
            };
            if deadline <= now {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// One request in flight; dropping it (with the response body's access log, `http/mod.rs`)
/// may make the connection idle.
#[derive(Debug)]
pub struct Busy {
    state: Arc<State>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        // The end time first: a timer that sees no request in flight sees this end too.
        let since = self.state.origin.elapsed().as_nanos();
        self.state
            .idle_since
            .fetch_max(u64::try_from(since).unwrap_or(u64::MAX), Ordering::AcqRel);
        self.state.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_is_idle_only_while_no_request_is_in_flight() {
        let a = Activity::new();
        let t = Duration::from_millis(100);
        let busy = a.begin();
        let held = tokio::time::timeout(Duration::from_millis(500), a.idle_for(t)).await;
        assert!(held.is_err(), "a request in flight keeps the connection open");
        drop(busy);
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(10), a.idle_for(t))
            .await
            .expect("idle once the request is done");
        assert!(
            started.elapsed() >= t,
            "idle time counts from the end of the last request"
        );
    }

    #[tokio::test]
    async fn a_request_that_begins_while_the_timer_waits_keeps_the_connection_open() {
        let a = Activity::new();
        let t = Duration::from_millis(200);
        let timer = tokio::spawn({
            let a = a.clone();
            async move { a.idle_for(t).await }
        });
        // The request's start wakes no one: the timer finds it when its deadline comes.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let busy = a.begin();
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(!timer.is_finished(), "busy past the deadline: still open");
        drop(busy);
        tokio::time::timeout(Duration::from_secs(10), timer)
            .await
            .expect("idle once the request is done")
            .unwrap();
    }
}
