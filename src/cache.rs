//! The in-memory layer over the store for the manifest hot path: manifests by digest (bounded
//! by bytes), tag records (mirroring `tags/` on disk), and remembered upstream 404s for tags.
//! Reads fall through to disk and re-verify; writes go to disk first, then memory.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::metrics::Metrics;
use crate::oci::{inspect_manifest, Digest, MediaType, RepoName, Tag};
use crate::store::{self, BlobStore, Evictor, TagRecord, TagStore};
use crate::upstream::MAX_MANIFEST_BYTES;

/// Make room for `n` incoming bytes (evicting if needed) and reserve them; the caller releases
/// the reservation with `store.index().release(n)` once the bytes are committed or dropped.
/// `Ok(false)`: the object cannot be stored (bigger than `max_size`, or the disk is too full
/// even after eviction); nothing is reserved then.
pub async fn reserve_space(evictor: &Arc<Evictor>, metrics: &Metrics, n: u64) -> Result<bool, store::Error> {
    if !evictor.fits(n) {
        return Ok(false);
    }
    let ev = evictor.clone();
    let report = tokio::task::spawn_blocking(move || ev.make_room(n))
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))??;
    if let Some(r) = report {
        tracing::info!(
            reason = r.reason,
            objects = r.evicted.len(),
            bytes = r.bytes,
            tags = r.tags_removed.len(),
            "evicted"
        );
        metrics.record_eviction(r.reason, r.evicted.len(), r.bytes);
    }
    let store = evictor.store();
    let free = store::free_space(store.root());
    metrics.record_storage(
        store.index().used(),
        evictor.limits().max_size,
        free,
        store.index().objects(),
    );
    if free.is_some_and(|f| f < n) {
        store.index().release(n);
        return Ok(false);
    }
    Ok(true)
}

/// A verified manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Its digest (computed by berth from `bytes`).
    pub digest: Digest,
    /// The type it is served as.
    pub media_type: MediaType,
    /// The exact bytes.
    pub bytes: Bytes,
}

/// `(upstream, repository, tag)`: tags never mix across upstreams.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TagKey {
    /// Upstream name.
    pub upstream: String,
    /// Repository as sent upstream.
    pub repo: RepoName,
    /// Tag.
    pub tag: Tag,
}

/// Manifests and tags, memory over disk. Cheap to clone.
#[derive(Clone)]
pub struct ManifestCache {
    blobs: BlobStore,
    evictor: Arc<Evictor>,
    metrics: Arc<Metrics>,
    tags: TagStore,
    by_digest: moka::sync::Cache<Digest, Arc<Manifest>>,
    tag_records: moka::sync::Cache<TagKey, TagRecord>,
    negative: moka::sync::Cache<TagKey, ()>,
}

impl ManifestCache {
    /// A cache over `blobs` and `tags` keeping up to `memory_bytes` of manifests in memory.
    pub fn new(
        evictor: Arc<Evictor>,
        metrics: Arc<Metrics>,
        tags: TagStore,
        memory_bytes: u64,
        negative_ttl: Duration,
    ) -> ManifestCache {
        ManifestCache {
            blobs: evictor.store().clone(),
            evictor,
            metrics,
            tags,
            by_digest: moka::sync::Cache::builder()
                .max_capacity(memory_bytes)
                .weigher(|_, m: &Arc<Manifest>| u32::try_from(m.bytes.len()).unwrap_or(u32::MAX))
                .build(),
            // A short TTL, so `berth cache rm` and eviction on disk show through within seconds.
            tag_records: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(10))
                .build(),
            negative: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(negative_ttl.max(Duration::from_millis(1)))
                .build(),
        }
    }

    /// A stored manifest, verified against its digest. Disk reads run off the async threads.
    pub async fn load(&self, digest: &Digest) -> Result<Option<Arc<Manifest>>, store::Error> {
        if let Some(m) = self.by_digest.get(digest) {
            // Keep the on-disk copy's recency current, or LRU would evict a hot manifest.
            self.blobs.touch(digest, None);
            return Ok(Some(m));
        }
        let blobs = self.blobs.clone();
        let d = digest.clone();
        let bytes = tokio::task::spawn_blocking(move || blobs.load_verified(&d, MAX_MANIFEST_BYTES as u64))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))??;
        let Some(bytes) = bytes else { return Ok(None) };
        // Stored manifests passed inspection before; one that no longer does is not served.
        let Ok(media_type) = inspect_manifest(&bytes, None) else {
            return Ok(None);
        };
        let m = Arc::new(Manifest {
            digest: digest.clone(),
            media_type,
            bytes,
        });
        self.by_digest.insert(digest.clone(), m.clone());
        Ok(Some(m))
    }

    /// Persist a verified manifest (making room for it first), then remember it.
    pub async fn store(&self, m: Arc<Manifest>) -> Result<(), store::Error> {
        let n = m.bytes.len() as u64;
        let stored = reserve_space(&self.evictor, &self.metrics, n).await?;
        if stored {
            let blobs = self.blobs.clone();
            let m2 = m.clone();
            let res = tokio::task::spawn_blocking(move || blobs.store_bytes(&m2.digest, &m2.bytes)).await;
            self.blobs.index().release(n);
            res.map_err(|e| std::io::Error::other(e.to_string()))??;
        }
        // Not storable (disk full): still served from memory for now.
        self.by_digest.insert(m.digest.clone(), m);
        Ok(())
    }

    /// The tag record, from memory or disk.
    pub fn tag(&self, key: &TagKey) -> Result<Option<TagRecord>, store::Error> {
        if let Some(r) = self.tag_records.get(key) {
            return Ok(Some(r));
        }
        let rec = self.tags.load(&key.upstream, &key.repo, &key.tag)?;
        if let Some(r) = &rec {
            self.tag_records.insert(key.clone(), r.clone());
        }
        Ok(rec)
    }

    /// Save a tag record (disk, then memory) and forget any remembered 404.
    pub async fn set_tag(&self, key: &TagKey, rec: TagRecord) -> Result<(), store::Error> {
        let (tags, k, r) = (self.tags.clone(), key.clone(), rec.clone());
        tokio::task::spawn_blocking(move || tags.save(&k.upstream, &k.repo, &k.tag, &r))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))??;
        self.tag_records.insert(key.clone(), rec);
        self.negative.invalidate(key);
        Ok(())
    }

    /// The upstream says the tag does not exist: forget it and remember the 404 briefly.
    pub fn tag_missing(&self, key: &TagKey) -> Result<(), store::Error> {
        self.tag_records.invalidate(key);
        self.negative.insert(key.clone(), ());
        self.tags.remove(&key.upstream, &key.repo, &key.tag)
    }

    /// Whether an upstream 404 for this tag is still remembered.
    pub fn is_known_missing(&self, key: &TagKey) -> bool {
        self.negative.contains_key(key)
    }
}

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
