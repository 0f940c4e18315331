//! Per-upstream failure state: a circuit breaker that stops waiting on an upstream whose
//! health is failing (fail fast for a cool-down, then let one probe through), and the 429
//! back-off that honours `Retry-After`. It measures the upstream, not one client's requests:
//! connect failures and timeouts count towards opening; 5xx answers only ask the caller to
//! confirm with a probe of `/v2/` (one request key can make a registry answer 500 forever while
//! the registry is healthy). It remembers why it opened, for error messages. Pure state; the
//! caller passes the current time, so the rules are tested without clocks.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// Longest `Retry-After` honoured; a longer one is clamped.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// Back-off after a 429 without `Retry-After`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(10);

/// Why and since when a circuit is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// Wall-clock time the circuit opened.
    pub since: SystemTime,
    /// The failure that opened it (names the host and the root cause).
    pub cause: String,
}

/// Whether a request may go out now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// Go ahead.
    Yes,
    /// The circuit is open: fail fast.
    CircuitOpen(Opened),
    /// The upstream asked us to wait this long.
    Throttled(Duration),
}

/// What kind of failure a request met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Connect, DNS or TLS failure, or no answer in time: the upstream itself is unwell.
    Transport,
    /// A 5xx answer: maybe the upstream, maybe only this request.
    Status,
}

/// What the breaker made of a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Counted; nothing changes yet.
    Counted,
    /// This failure opened the circuit.
    Opened,
    /// Enough 5xx: probe the upstream's `/v2/` and report with [`Breaker::confirmed`].
    Confirm,
}

/// The circuit's position, for the `berth_upstream_circuit_state` gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Requests go out.
    Closed = 0,
    /// Failing fast.
    Open = 1,
    /// One probe is out after the cool-down.
    HalfOpen = 2,
}

#[derive(Debug, Default)]
struct State {
    /// Consecutive transport failures.
    failures: u32,
    /// Consecutive 5xx answers.
    server_errors: u32,
    /// A `/v2/` probe is out to tell whether the 5xx are the upstream's.
    confirming: bool,
    open: Option<(Instant, Opened)>,
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
        let probing = s.probing;
        match &s.open {
            Some((until, o)) if now < *until || probing => Admit::CircuitOpen(o.clone()),
            Some(_) => {
                s.probing = true;
                Admit::Yes
            }
            None => Admit::Yes,
        }
    }

    /// The upstream answered below 500: it is alive.
    pub fn success(&self) {
        let mut s = self.lock();
        if s.open.is_some() {
            tracing::info!("upstream answered again: circuit closed");
        }
        *s = State {
            throttled_until: s.throttled_until,
            ..State::default()
        };
    }

    /// A failed request at `now`; `cause` names the host and the root cause.
    pub fn failure(&self, now: Instant, kind: Failure, cause: &str) -> Verdict {
        let mut s = self.lock();
        match kind {
            Failure::Transport => {
                s.failures += 1;
                let reopen = s.probing || (s.open.is_none() && s.failures >= self.threshold);
                s.probing = false;
                if reopen {
                    self.open(&mut s, now, cause);
                    return Verdict::Opened;
                }
                Verdict::Counted
            }
            Failure::Status => {
                s.server_errors += 1;
                let suspect = s.probing || (s.open.is_none() && s.server_errors >= self.threshold);
                if s.confirming || !suspect {
                    return Verdict::Counted;
                }
                s.confirming = true;
                Verdict::Confirm
            }
        }
    }

    /// The outcome of the `/v2/` probe asked for by [`Verdict::Confirm`]: `Ok` when the upstream
    /// answered below 500, else the probe's failure. Returns true if this opened the circuit.
    pub fn confirmed(&self, now: Instant, probe: Result<(), String>) -> bool {
        let mut s = self.lock();
        s.confirming = false;
        match probe {
            Ok(()) => {
                // Healthy: the 5xx were about particular requests, not the upstream.
                s.server_errors = 0;
                if s.probing {
                    s.open = None;
                    s.probing = false;
                    s.failures = 0;
                }
                false
            }
            Err(cause) => {
                s.probing = false;
                self.open(&mut s, now, &cause);
                true
            }
        }
    }

    fn open(&self, s: &mut State, now: Instant, cause: &str) {
        let since = match &s.open {
            Some((_, o)) => o.since,
            None => SystemTime::now(),
        };
        let opened = Opened {
            since,
            cause: cause.to_string(),
        };
        s.open = Some((now + self.cooldown, opened));
    }

    /// A 429: hold requests back for `retry_after` (clamped), or a default.
    pub fn throttled(&self, now: Instant, retry_after: Option<Duration>) {
        let wait = retry_after.unwrap_or(DEFAULT_RETRY_AFTER).min(MAX_RETRY_AFTER);
        self.lock().throttled_until = Some(now + wait);
    }

    /// Whether the circuit is open (or half-open).
    pub fn is_open(&self) -> bool {
        self.lock().open.is_some()
    }

    /// Closed, open or half-open (for metrics).
    pub fn state(&self) -> CircuitState {
        self.status().0
    }

    /// The position and, unless closed, why and since when it opened (for the status page).
    pub fn status(&self) -> (CircuitState, Option<Opened>) {
        let s = self.lock();
        match (&s.open, s.probing) {
            (None, _) => (CircuitState::Closed, None),
            (Some((_, o)), true) => (CircuitState::HalfOpen, Some(o.clone())),
            (Some((_, o)), false) => (CircuitState::Open, Some(o.clone())),
        }
    }
}

/// `Retry-After` as delay-seconds (the HTTP-date form is treated as absent).
pub fn parse_retry_after(v: Option<&http::HeaderValue>) -> Option<Duration> {
    v?.to_str().ok()?.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOWN: &str = "connect to up:443: connection refused";

    #[test]
    fn circuit_opens_after_threshold_and_probes_after_cooldown() {
        let b = Breaker::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        let open = |a: Admit| matches!(a, Admit::CircuitOpen(o) if o.cause == DOWN);
        assert_eq!(b.admit(t0), Admit::Yes);
        assert_eq!(b.failure(t0, Failure::Transport, DOWN), Verdict::Counted);
        assert_eq!(b.failure(t0, Failure::Transport, DOWN), Verdict::Counted);
        assert_eq!(
            b.failure(t0, Failure::Transport, DOWN),
            Verdict::Opened,
            "third failure opens"
        );
        assert_eq!(b.state(), CircuitState::Open);
        assert!(open(b.admit(t0 + Duration::from_secs(9))), "open, with its cause");
        let t1 = t0 + Duration::from_secs(11);
        assert_eq!(b.admit(t1), Admit::Yes, "one probe after the cool-down");
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert!(open(b.admit(t1)), "only one probe at a time");
        assert_eq!(
            b.failure(t1, Failure::Transport, DOWN),
            Verdict::Opened,
            "a failed probe reopens"
        );
        assert!(open(b.admit(t1 + Duration::from_secs(5))));
        let t2 = t1 + Duration::from_secs(11);
        assert_eq!(b.admit(t2), Admit::Yes);
        b.success();
        assert_eq!(b.admit(t2), Admit::Yes, "closed after a good probe");
        assert_eq!(b.state(), CircuitState::Closed);
        assert_eq!(
            b.failure(t2, Failure::Transport, DOWN),
            Verdict::Counted,
            "the count starts again"
        );
    }

    #[test]
    fn server_errors_open_the_circuit_only_when_a_probe_confirms_them() {
        let b = Breaker::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        // One request key that always makes the upstream answer 500, the upstream healthy.
        for round in 0..50 {
            assert_eq!(
                b.failure(t0, Failure::Status, "status 500"),
                Verdict::Counted,
                "round {round}"
            );
            assert_eq!(
                b.failure(t0, Failure::Status, "status 500"),
                Verdict::Confirm,
                "round {round}"
            );
            assert_eq!(
                b.failure(t0, Failure::Status, "status 500"),
                Verdict::Counted,
                "one probe at a time"
            );
            assert!(!b.confirmed(t0, Ok(())), "/v2/ answers: the circuit stays closed");
            assert_eq!(b.admit(t0), Admit::Yes);
        }
        // The upstream itself fails: the probe confirms and the circuit opens.
        b.failure(t0, Failure::Status, "status 503");
        assert_eq!(b.failure(t0, Failure::Status, "status 503"), Verdict::Confirm);
        assert!(b.confirmed(t0, Err("GET /v2/: status 503".into())));
        assert!(matches!(b.admit(t0), Admit::CircuitOpen(o) if o.cause == "GET /v2/: status 503"));
        // A half-open probe that meets a 500 for its own key is confirmed, not reopened.
        let t1 = t0 + Duration::from_secs(11);
        assert_eq!(b.admit(t1), Admit::Yes);
        assert_eq!(b.failure(t1, Failure::Status, "status 500"), Verdict::Confirm);
        assert!(!b.confirmed(t1, Ok(())));
        assert_eq!(b.state(), CircuitState::Closed, "a healthy /v2/ closes it");
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
