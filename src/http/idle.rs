//! Per-connection activity: how many requests are in flight on a connection and since when it
//! has had none, so the accept loop can close connections that sit idle (no request head yet,
//! or between keep-alive requests). A request counts as in flight from the moment hyper hands
//! it to the service until its response body is finished or dropped. No I/O here.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
struct State {
    in_flight: usize,
    idle_since: Instant,
}

/// The activity of one connection; clones share it. A `watch` channel rather than a lock so
/// the idle timer wakes up when the connection turns idle, without polling.
#[derive(Debug, Clone)]
pub struct Activity {
    state: Arc<watch::Sender<State>>,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    /// A connection accepted now, with no request yet: idle from this moment.
    pub fn new() -> Activity {
        let (state, _) = watch::channel(State {
            in_flight: 0,
            idle_since: Instant::now(),
        });
        Activity { state: Arc::new(state) }
    }

    /// A request started; the connection is busy until the returned guard is dropped. Wakes
    /// no one: the idle timer looks again when its deadline comes.
    pub fn begin(&self) -> Busy {
        self.state.send_if_modified(|s| {
            s.in_flight += 1;
            false
        });
        Busy {
            state: self.state.clone(),
        }
    }

    /// Completes once the connection has had no request in flight for `timeout`.
    /// Cancel-safe: it only reads the shared state.
    pub async fn idle_for(&self, timeout: Duration) {
        let mut rx = self.state.subscribe();
        loop {
            let s = *rx.borrow_and_update();
            if s.in_flight > 0 {
                if rx.changed().await.is_err() {
                    return;
                }
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(s.idle_since + timeout) => {
                    // A request that began meanwhile did not wake us: look again.
                    let now = *rx.borrow();
                    if now.in_flight == 0 && now.idle_since == s.idle_since {
                        return;
                    }
                }
                changed = rx.changed() => if changed.is_err() { return },
            }
        }
    }
}

/// One request in flight; dropping it (with the response body's access log, `http/mod.rs`)
/// may make the connection idle.
#[derive(Debug)]
pub struct Busy {
    state: Arc<watch::Sender<State>>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        // Only the last request's end wakes the idle timer (it may be waiting for it).
        self.state.send_if_modified(|s| {
            s.in_flight -= 1;
            if s.in_flight == 0 {
                s.idle_since = Instant::now();
            }
            s.in_flight == 0
        });
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
