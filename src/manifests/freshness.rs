//! Tag freshness: how far a tag record is from its last upstream confirmation. Pure.

use std::time::{Duration, SystemTime};

/// How far a tag record is from its last upstream confirmation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Within `manifest_ttl`: serve without asking upstream.
    Fresh,
    /// Past the TTL: revalidate; still servable if the upstream fails.
    Stale,
    /// Past `manifest_ttl + stale_if_error`: never served without upstream confirmation.
    Expired,
}

/// Classify a record checked at `checked_at`. A clock that went backwards counts as age 0.
pub fn freshness(checked_at: SystemTime, now: SystemTime, ttl: Duration, stale_if_error: Duration) -> Freshness {
    let age = now.duration_since(checked_at).unwrap_or_default();
    if age < ttl {
        Freshness::Fresh
    } else if age < ttl + stale_if_error {
        Freshness::Stale
    } else {
        Freshness::Expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_freshness_follows_ttl_and_stale_if_error() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let (ttl, stale) = (Duration::from_secs(600), Duration::from_secs(3600));
        let cases = [
            (0, Freshness::Fresh),
            (599, Freshness::Fresh),
            (600, Freshness::Stale),
            (4199, Freshness::Stale),
            (4200, Freshness::Expired),
        ];
        for (age, want) in cases {
            let got = freshness(t0, t0 + Duration::from_secs(age), ttl, stale);
            assert_eq!(got, want, "age {age}s");
        }
        assert_eq!(
            freshness(t0, t0 - Duration::from_secs(5), ttl, stale),
            Freshness::Fresh,
            "clock went back"
        );
        assert_eq!(
            freshness(t0, t0, Duration::ZERO, stale),
            Freshness::Stale,
            "ttl 0 always revalidates"
        );
    }
}
