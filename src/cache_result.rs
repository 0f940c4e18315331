//! How a request was answered from berth's point of view: one [`CacheResult`] per manifest or
//! blob response. The access log, `berth_cache_lookups_total{result}`,
//! `berth_served_bytes_total{source}` and `berth cache stats`' hit ratio all read this one
//! type, so they cannot disagree. Pure: no I/O, no metrics registry here.

/// Where the body bytes of a response came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// berth's store (disk or its in-memory layer): no upstream transfer for these bytes.
    Cache,
    /// Transferred from the upstream for this request (or for a request it joined).
    Upstream,
    /// Read from the shared tier (the object store other replicas fill): no upstream transfer.
    Shared,
    /// Streamed from the replica that owns the blob (it ran the cluster's one fill).
    Peer,
}

impl Source {
    /// The `source` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Cache => "cache",
            Source::Upstream => "upstream",
            Source::Shared => "shared",
            Source::Peer => "peer",
        }
    }
}

/// The outcome of a cache lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    /// Served from the store with no upstream contact.
    Hit,
    /// Fetched from the upstream.
    Miss,
    /// Joined another request's fetch; the bytes came from where that request got them.
    Coalesced(Source),
    /// A stale tag the upstream confirmed unchanged (one HEAD); served from the store.
    Revalidated,
    /// A stale tag that moved (or whose manifest was gone); the new manifest was fetched.
    Refreshed,
    /// The upstream failed; a stale tag was served from the store (`stale_if_error`).
    Stale,
    /// A remembered upstream 404 (`negative_ttl`).
    Negative,
    /// Streamed from the upstream without caching (it could not be stored now).
    Passthrough,
    /// Missing locally, streamed from the shared tier (and stored locally): no upstream
    /// transfer.
    Shared,
    /// Missing locally, streamed from the replica that owns it (and stored locally): the
    /// cluster's one upstream transfer, made by the owner.
    Peer,
}

impl CacheResult {
    /// The `result` / `cache` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Coalesced(_) => "coalesced",
            CacheResult::Revalidated => "revalidated",
            CacheResult::Refreshed => "refreshed",
            CacheResult::Stale => "stale",
            CacheResult::Negative => "negative",
            CacheResult::Passthrough => "passthrough",
            CacheResult::Shared => "shared",
            CacheResult::Peer => "peer",
        }
    }

    /// Where the bytes served with this result came from.
    pub fn source(self) -> Source {
        match self {
            CacheResult::Hit | CacheResult::Revalidated | CacheResult::Stale | CacheResult::Negative => Source::Cache,
            CacheResult::Miss | CacheResult::Refreshed | CacheResult::Passthrough => Source::Upstream,
            CacheResult::Shared => Source::Shared,
            CacheResult::Peer => Source::Peer,
            CacheResult::Coalesced(s) => s,
        }
    }

    /// The result a request gets when it joined a fetch that ended with `self`.
    pub fn joined(self) -> CacheResult {
        CacheResult::Coalesced(self.source())
    }

    /// Whether a lookup counts as a hit in the hit ratio: answered without fetching content
    /// from the upstream.
    pub fn is_hit(self) -> bool {
        matches!(self, CacheResult::Hit | CacheResult::Revalidated | CacheResult::Shared)
    }

    /// [`CacheResult::is_hit`] for a `result` label read back from the metrics text.
    pub fn is_hit_label(label: &str) -> bool {
        [CacheResult::Hit, CacheResult::Revalidated, CacheResult::Shared]
            .iter()
            .any(|r| r.is_hit() && r.as_str() == label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_source_follows_where_the_bytes_were_read() {
        let cases = [
            (CacheResult::Hit, "hit", Source::Cache, true),
            (CacheResult::Revalidated, "revalidated", Source::Cache, true),
            (CacheResult::Stale, "stale", Source::Cache, false),
            (CacheResult::Miss, "miss", Source::Upstream, false),
            (CacheResult::Refreshed, "refreshed", Source::Upstream, false),
            (CacheResult::Passthrough, "passthrough", Source::Upstream, false),
            (CacheResult::Shared, "shared", Source::Shared, true),
            (CacheResult::Shared.joined(), "coalesced", Source::Shared, false),
            (CacheResult::Peer, "peer", Source::Peer, false),
            (CacheResult::Revalidated.joined(), "coalesced", Source::Cache, false),
            (CacheResult::Miss.joined(), "coalesced", Source::Upstream, false),
        ];
        for (r, label, source, hit) in cases {
            assert_eq!(r.as_str(), label);
            assert_eq!(r.source(), source, "{r:?}: bytes served from disk are source=cache");
            assert_eq!(r.is_hit(), hit, "{r:?}");
            assert_eq!(CacheResult::is_hit_label(label), hit, "{label}");
        }
    }
}
