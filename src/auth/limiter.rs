//! The failed-login limiter: at most `max` failed logins per client address in a fixed
//! window; past that, logins from the address are refused (429 with `Retry-After`) without
//! checking the password, until the window ends. A success does not reset the count, so one
//! valid account cannot be used to keep guessing another's password. In memory only.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Addresses tracked before expired windows are swept.
const SWEEP_AT: usize = 10_000;

/// Failed logins per address.
pub struct LoginLimiter {
    max: u32,
    window: Duration,
    // std Mutex: held for a map lookup only, never across an await.
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl LoginLimiter {
    /// Allow `max` failures per `window` per address.
    pub fn new(max: u32, window: Duration) -> LoginLimiter {
        LoginLimiter {
            max,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(retry_after)` while `ip` has used up its failures in the current window.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let map = self.failures.lock().expect("limiter lock is never poisoned");
        match map.get(&ip) {
            Some(&(n, since)) if n >= self.max && now.duration_since(since) < self.window => {
                Err(self.window - now.duration_since(since))
            }
            _ => Ok(()),
        }
    }

    /// Count a failed login from `ip`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut map = self.failures.lock().expect("limiter lock is never poisoned");
        if map.len() >= SWEEP_AT {
            map.retain(|_, (_, since)| now.duration_since(*since) < self.window);
        }
        let e = map.entry(ip).or_insert((0, now));
        if now.duration_since(e.1) >= self.window {
            *e = (0, now);
        }
        e.0 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins_are_refused_when_an_address_failed_too_often_until_the_window_ends() {
        let l = LoginLimiter::new(3, Duration::from_secs(60));
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(l.check(a, t0).is_ok(), "attempt {i} allowed");
            l.failed(a, t0);
        }
        let wait = l.check(a, t0 + Duration::from_secs(10)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(50), "Retry-After is the rest of the window");
        assert!(l.check(b, t0).is_ok(), "other addresses are not affected");
        assert!(l.check(a, t0 + Duration::from_secs(60)).is_ok(), "a new window starts");
        l.failed(a, t0 + Duration::from_secs(61));
        assert!(l.check(a, t0 + Duration::from_secs(61)).is_ok(), "count restarted");
    }
}
