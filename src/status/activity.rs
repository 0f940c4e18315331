//! What the status page remembers that Prometheus counters cannot say: hit ratio and bytes
//! saved since start, each upstream's last error and rate-limit headers, the most pulled
//! images (a bounded counter) and the last errors (a bounded ring). Fed by the metrics
//! recorders and the error log at the HTTP boundary; read by [`super::snapshot`]. Memory is
//! bounded whatever clients send. No I/O and no HTTP here.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

/// How many recent errors are kept.
pub const RECENT_ERRORS: usize = 20;
/// How many distinct images the pull counter tracks.
pub const TRACKED_IMAGES: usize = 256;

/// One remembered error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorEntry {
    /// When it happened.
    pub at: SystemTime,
    /// The upstream involved, if one was.
    pub upstream: Option<String>,
    /// What went wrong (as logged).
    pub message: String,
}

/// What is known about one upstream beyond its breaker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamActivity {
    /// The last error that involved it.
    pub last_error: Option<ErrorEntry>,
    /// The last `ratelimit-limit` it sent.
    pub ratelimit_limit: Option<i64>,
    /// The last `ratelimit-remaining` it sent.
    pub ratelimit_remaining: Option<i64>,
}

/// Since-start totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Manifest and blob lookups.
    pub lookups: u64,
    /// Lookups answered without fetching content ([`crate::cache_result::CacheResult::is_hit`]).
    pub hits: u64,
    /// Body bytes served from the store: the upstream transfer berth saved.
    pub bytes_from_cache: u64,
    /// Body bytes served that came from an upstream.
    pub bytes_from_upstream: u64,
}

/// A counter of at most `cap` keys. When a new key arrives and the map is full, the key with
/// the lowest count goes, so images pulled often stay and one-off names (clients choose
/// them) cannot grow memory.
#[derive(Debug)]
struct TopCounter {
    cap: usize,
    counts: HashMap<String, u64>,
}

impl TopCounter {
    fn add(&mut self, key: &str) {
        if let Some(n) = self.counts.get_mut(key) {
            *n += 1;
            return;
        }
        if self.counts.len() >= self.cap {
            let lowest = self.counts.iter().min_by_key(|(_, n)| **n).map(|(k, _)| k.clone());
            if let Some(k) = lowest {
                self.counts.remove(&k);
            }
        }
        self.counts.insert(key.to_string(), 1);
    }

    /// The `n` highest counts, highest first (ties by name).
    fn top(&self, n: usize) -> Vec<(String, u64)> {
        let mut all: Vec<(String, u64)> = self.counts.iter().map(|(k, v)| (k.clone(), *v)).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }
}

#[derive(Debug)]
struct Recorded {
    upstreams: HashMap<String, UpstreamActivity>,
    errors: VecDeque<ErrorEntry>,
    pulls: TopCounter,
}

/// The recorder. One per process, owned by [`crate::metrics::Metrics`].
#[derive(Debug)]
pub struct Activity {
    started: SystemTime,
    lookups: AtomicU64,
    hits: AtomicU64,
    bytes_from_cache: AtomicU64,
    bytes_from_upstream: AtomicU64,
    // A std Mutex: every section is a map update or a copy, never across an await.
    recorded: Mutex<Recorded>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            started: SystemTime::now(),
            lookups: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            bytes_from_cache: AtomicU64::new(0),
            bytes_from_upstream: AtomicU64::new(0),
            recorded: Mutex::new(Recorded {
                upstreams: HashMap::new(),
                errors: VecDeque::with_capacity(RECENT_ERRORS),
                pulls: TopCounter {
                    cap: TRACKED_IMAGES,
                    counts: HashMap::new(),
                },
            }),
        }
    }
}

impl Activity {
    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.recorded.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the process started recording.
    pub fn started(&self) -> SystemTime {
        self.started
    }

    /// A manifest or blob lookup.
    pub fn record_lookup(&self, is_hit: bool) {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        if is_hit {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Body bytes sent to a client, by whether they came from the store.
    pub fn record_served(&self, from_cache: bool, bytes: u64) {
        let total = match from_cache {
            true => &self.bytes_from_cache,
            false => &self.bytes_from_upstream,
        };
        total.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The rate-limit headers an upstream sent (either may be absent).
    pub fn record_ratelimit(&self, upstream: &str, limit: Option<i64>, remaining: Option<i64>) {
        let mut r = self.lock();
        let u = r.upstreams.entry(upstream.to_string()).or_default();
        u.ratelimit_limit = limit.or(u.ratelimit_limit);
        u.ratelimit_remaining = remaining.or(u.ratelimit_remaining);
    }

    /// An error worth an operator's look. `upstream` must be a configured upstream's name
    /// (never a client-chosen string: it keys a map).
    pub fn record_error(&self, upstream: Option<&str>, message: String) {
        let entry = ErrorEntry {
            at: SystemTime::now(),
            upstream: upstream.map(str::to_string),
            message,
        };
        let mut r = self.lock();
        if let Some(name) = upstream {
            r.upstreams.entry(name.to_string()).or_default().last_error = Some(entry.clone());
        }
        if r.errors.len() >= RECENT_ERRORS {
            r.errors.pop_front();
        }
        r.errors.push_back(entry);
    }

    /// A client pulled `image` (`repo:tag`) from `upstream`.
    pub fn record_pull(&self, upstream: &str, image: &str) {
        self.lock().pulls.add(&format!("{upstream}\u{0}{image}"));
    }

    /// The since-start totals.
    pub fn totals(&self) -> Totals {
        Totals {
            lookups: self.lookups.load(Ordering::Relaxed),
            hits: self.hits.load(Ordering::Relaxed),
            bytes_from_cache: self.bytes_from_cache.load(Ordering::Relaxed),
            bytes_from_upstream: self.bytes_from_upstream.load(Ordering::Relaxed),
        }
    }

    /// What is known about `upstream`.
    pub fn upstream(&self, upstream: &str) -> UpstreamActivity {
        self.lock().upstreams.get(upstream).cloned().unwrap_or_default()
    }

    /// The recent errors, newest first.
    pub fn recent_errors(&self) -> Vec<ErrorEntry> {
        self.lock().errors.iter().rev().cloned().collect()
    }

    /// The `n` most pulled images as `(upstream, image, pulls)`, most pulled first.
    pub fn top_pulls(&self, n: usize) -> Vec<(String, String, u64)> {
        self.lock()
            .pulls
            .top(n)
            .into_iter()
            .map(|(k, count)| {
                let (up, image) = k.split_once('\u{0}').unwrap_or(("", &k));
                (up.to_string(), image.to_string(), count)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_counter_stays_bounded_and_keeps_frequent_images() {
        let a = Activity::default();
        for _ in 0..5 {
            a.record_pull("hub", "library/alpine:3");
        }
        a.record_pull("hub", "library/busybox:1");
        for i in 0..TRACKED_IMAGES * 4 {
            a.record_pull("hub", &format!("one-off/{i}:x"));
        }
        let r = a.lock();
        assert!(
            r.pulls.counts.len() <= TRACKED_IMAGES,
            "bounded: {}",
            r.pulls.counts.len()
        );
        drop(r);
        let top = a.top_pulls(3);
        assert_eq!(
            top[0],
            ("hub".to_string(), "library/alpine:3".to_string(), 5),
            "the most pulled image survives a flood of one-off names"
        );
    }

    #[test]
    fn error_ring_keeps_the_newest_and_each_upstreams_last() {
        let a = Activity::default();
        for i in 0..RECENT_ERRORS + 5 {
            a.record_error(Some("hub"), format!("e{i}"));
        }
        a.record_error(None, "internal".into());
        let errors = a.recent_errors();
        assert_eq!(errors.len(), RECENT_ERRORS, "bounded ring");
        assert_eq!(errors[0].message, "internal", "newest first");
        assert_eq!(errors[1].message, format!("e{}", RECENT_ERRORS + 4));
        let hub = a.upstream("hub");
        assert_eq!(
            hub.last_error.map(|e| e.message),
            Some(format!("e{}", RECENT_ERRORS + 4))
        );
    }

    #[test]
    fn totals_count_hits_and_saved_bytes() {
        let a = Activity::default();
        a.record_lookup(true);
        a.record_lookup(false);
        a.record_served(true, 100);
        a.record_served(false, 7);
        a.record_ratelimit("hub", Some(100), Some(76));
        a.record_ratelimit("hub", None, Some(75));
        assert_eq!(
            a.totals(),
            Totals {
                lookups: 2,
                hits: 1,
                bytes_from_cache: 100,
                bytes_from_upstream: 7
            }
        );
        let hub = a.upstream("hub");
        assert_eq!((hub.ratelimit_limit, hub.ratelimit_remaining), (Some(100), Some(75)));
    }
}
