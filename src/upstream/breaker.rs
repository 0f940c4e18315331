//! Per-upstream failure state: a circuit breaker that stops waiting on an upstream after
//! repeated connect failures or timeouts (fail fast for a cool-down, then let one probe
//! through), and the 429 back-off that honours `Retry-After`. Pure state; the caller passes
//! the current time, so the rules are tested without clocks.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest `Retry-After` honoured; a longer one is clamped.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// Back-off after a 429 without `Retry-After`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(10);

/// Whether a request may go out now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Go ahead.
    Yes,
    /// The circuit is open: fail fast.
    CircuitOpen,
    /// The upstream asked us to wait this long.
    Throttled(Duration),
}

#[derive(Debug, Default)]
struct State {
    failures: u32,
    open_until: Option<Instant>,
    probing: bool,
    throttled_until: Option<Instant>,
}

/// Breaker and throttle for one upstream.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    // A std Mutex: every section is a few comparisons, never across an await.
    state: Mutex<State>,
}

impl Breaker {
    /// Open after `threshold` consecutive failures, for `cooldown`.
    pub fn new(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            cooldown,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May a request go out at `now`? After the cool-down exactly one probe is let through.
    pub fn admit(&self, now: Instant) -> Admit {
        let mut s = self.lock();
        if let Some(t) = s.throttled_until {
            if now < t {
                return Admit::Throttled(t - now);
            }
            s.throttled_until = None;
        }
        match s.open_until {
            Some(t) if now < t => Admit::CircuitOpen,
            Some(_) if s.probing => Admit::CircuitOpen,
            Some(_) => {
                s.probing = true;
                Admit::Yes
            }
            None => Admit::Yes,
        }
    }

    /// The upstream answered (any status below 500 counts as alive).
    pub fn success(&self) {
        let mut s = self.lock();
        if s.open_until.is_some() {
            tracing::info!("upstream answered again: circuit closed");
        }
        *s = State {
            throttled_until: s.throttled_until,
            ..State::default()
        };
    }

    /// A connect failure, timeout or 5xx. Returns true if this opened the circuit.
    pub fn failure(&self, now: Instant) -> bool {
        let mut s = self.lock();
        s.failures += 1;
        let reopen = s.probing || (s.open_until.is_none() && s.failures >= self.threshold);
        s.probing = false;
        if reopen {
            s.open_until = Some(now + self.cooldown);
        }
        reopen
    }

    /// A 429: hold requests back for `retry_after` (clamped), or a default.
    pub fn throttled(&self, now: Instant, retry_after: Option<Duration>) {
        let wait = retry_after.unwrap_or(DEFAULT_RETRY_AFTER).min(MAX_RETRY_AFTER);
        self.lock().throttled_until = Some(now + wait);
    }

    /// Whether the circuit is open (for metrics).
    pub fn is_open(&self) -> bool {
        self.lock().open_until.is_some()
    }
}

/// `Retry-After` as delay-seconds (the HTTP-date form is treated as absent).
pub fn parse_retry_after(v: Option<&http::HeaderValue>) -> Option<Duration> {
    v?.to_str().ok()?.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn circuit_opens_after_threshold_and_probes_after_cooldown() {
        let b = Breaker::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(b.admit(t0), Admit::Yes);
        assert!(!b.failure(t0));
        assert!(!b.failure(t0));
        assert!(b.failure(t0), "third failure opens");
        assert_eq!(b.admit(t0 + Duration::from_secs(9)), Admit::CircuitOpen);
        let t1 = t0 + Duration::from_secs(11);
        assert_eq!(b.admit(t1), Admit::Yes, "one probe after the cool-down");
        assert_eq!(b.admit(t1), Admit::CircuitOpen, "only one probe at a time");
        assert!(b.failure(t1), "a failed probe reopens");
        assert_eq!(b.admit(t1 + Duration::from_secs(5)), Admit::CircuitOpen);
        let t2 = t1 + Duration::from_secs(11);
        assert_eq!(b.admit(t2), Admit::Yes);
        b.success();
        assert_eq!(b.admit(t2), Admit::Yes, "closed after a good probe");
        assert!(!b.is_open());
        assert!(!b.failure(t2), "the count starts again");
    }

    #[test]
    fn throttle_honours_retry_after_within_bounds() {
        let b = Breaker::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        b.throttled(t0, Some(Duration::from_secs(7)));
        assert_eq!(
            b.admit(t0 + Duration::from_secs(2)),
            Admit::Throttled(Duration::from_secs(5))
        );
        assert_eq!(b.admit(t0 + Duration::from_secs(7)), Admit::Yes);
        b.throttled(t0, Some(Duration::from_secs(100_000)));
        assert_eq!(b.admit(t0), Admit::Throttled(MAX_RETRY_AFTER), "clamped");
        b.throttled(t0, None);
        assert_eq!(b.admit(t0), Admit::Throttled(DEFAULT_RETRY_AFTER));
    }

    #[test]
    fn retry_after_parses_seconds_only() {
        let v = |s: &str| http::HeaderValue::from_str(s).unwrap();
        assert_eq!(parse_retry_after(Some(&v("17"))), Some(Duration::from_secs(17)));
        assert_eq!(parse_retry_after(Some(&v("Wed, 21 Oct 2015 07:28:00 GMT"))), None);
        assert_eq!(parse_retry_after(None), None);
    }
}
