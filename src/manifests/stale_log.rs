//! Logging stale-served tags without a line per pull: during an outage every pull of a cached
//! tag is served stale, so the log says when an upstream starts being served stale, a summary
//! at most once per [`SUMMARY_EVERY`] while it lasts, and when the upstream answers again.
//! The per-request count is `berth_cache_lookups_total{result="stale"}`, not the log.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Shortest time between two summaries for one upstream.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// One upstream's run of stale serves.
#[derive(Debug)]
struct Episode {
    started: Instant,
    served: u64,
    last_summary: Instant,
    since_summary: u64,
}

/// Stale-serve episodes by upstream.
#[derive(Debug, Default)]
pub struct StaleLog {
    // A std Mutex: a map update, never across an await.
    episodes: Mutex<HashMap<String, Episode>>,
}

/// What the log should say after an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Note {
    /// Nothing.
    Quiet,
    /// The first stale serve for this upstream since it last answered.
    Started,
    /// Stale serves since the last summary.
    Summary(u64),
    /// The upstream answered again after this many stale serves over this long.
    Recovered(u64, Duration),
}

impl StaleLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Episode>> {
        self.episodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A tag of `upstream` was served stale at `now` because of `reason`; logs a state change
    /// or a due summary.
    pub fn served(&self, upstream: &str, reason: &dyn std::fmt::Display, now: Instant) {
        match self.note_served(upstream, now) {
            Note::Started => tracing::warn!(
                upstream,
                reason = %reason,
                "upstream failing or slow: serving cached tags stale until it answers"
            ),
            Note::Summary(n) => tracing::warn!(
                upstream,
                stale_served = n,
                last_reason = %reason,
                "still serving cached tags stale"
            ),
            _ => {}
        }
    }

    /// A revalidation with `upstream` succeeded at `now`; logs the end of an episode.
    pub fn answered(&self, upstream: &str, now: Instant) {
        if let Note::Recovered(n, took) = self.note_answered(upstream, now) {
            tracing::info!(upstream, stale_served = n, over = ?took, "upstream answers again: tags revalidated");
        }
    }

    fn note_served(&self, upstream: &str, now: Instant) -> Note {
        let mut map = self.lock();
        let Some(e) = map.get_mut(upstream) else {
            let e = Episode {
                started: now,
                served: 1,
                last_summary: now,
                since_summary: 0,
            };
            map.insert(upstream.to_string(), e);
            return Note::Started;
        };
        e.served += 1;
        e.since_summary += 1;
        if now.duration_since(e.last_summary) < SUMMARY_EVERY {
            return Note::Quiet;
        }
        e.last_summary = now;
        Note::Summary(std::mem::take(&mut e.since_summary))
    }

    fn note_answered(&self, upstream: &str, now: Instant) -> Note {
        match self.lock().remove(upstream) {
            Some(e) => Note::Recovered(e.served, now.duration_since(e.started)),
            None => Note::Quiet,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_logs_its_start_a_summary_per_interval_and_its_end() {
        let log = StaleLog::default();
        let t0 = Instant::now();
        assert_eq!(log.note_served("hub", t0), Note::Started);
        for i in 1..1000 {
            let t = t0 + Duration::from_millis(i);
            assert_eq!(log.note_served("hub", t), Note::Quiet, "pull {i}");
        }
        assert_eq!(log.note_served("ghcr", t0), Note::Started, "per upstream");
        assert_eq!(log.note_served("hub", t0 + SUMMARY_EVERY), Note::Summary(1000));
        assert_eq!(log.note_served("hub", t0 + SUMMARY_EVERY), Note::Quiet);
        assert_eq!(
            log.note_answered("hub", t0 + 2 * SUMMARY_EVERY),
            Note::Recovered(1002, 2 * SUMMARY_EVERY)
        );
        assert_eq!(log.note_answered("hub", t0), Note::Quiet, "once");
        assert_eq!(log.note_served("hub", t0), Note::Started, "a new outage starts afresh");
    }
}
