//! The in-memory layer over the store for the manifest hot path: manifests by digest (bounded
//! by bytes), tag records (mirroring the tag records on disk), and remembered upstream 404s for
//! tags. Reads fall through to disk (off the async threads) and re-verify; writes go to disk
//! first, then memory. No policy here: when to ask upstream is decided in `mod.rs`.

use std::sync::Arc;
use std::time::Duration;

use crate::oci::{inspect_manifest, Digest, MAX_MANIFEST_BYTES};
use crate::store::{self, BlobStore, Evictor, TagRecord, TagStore};

use super::{Manifest, TagKey};

/// Run blocking store work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, store::Error> + Send + 'static,
) -> Result<T, store::Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?
}

/// Manifests and tags, memory over disk. Cheap to clone.
#[derive(Clone)]
pub struct ManifestCache {
    blobs: BlobStore,
    evictor: Arc<Evictor>,
    tags: TagStore,
    by_digest: moka::sync::Cache<Digest, Arc<Manifest>>,
    tag_records: moka::sync::Cache<TagKey, TagRecord>,
    negative: moka::sync::Cache<TagKey, ()>,
}

impl ManifestCache {
    /// A cache over the evictor's store and `tags`, keeping up to `memory_bytes` of manifests
    /// in memory and upstream 404s for `negative_ttl`.
    pub fn new(evictor: Arc<Evictor>, tags: TagStore, memory_bytes: u64, negative_ttl: Duration) -> ManifestCache {
        ManifestCache {
            blobs: evictor.store().clone(),
            evictor,
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
        let (blobs, d) = (self.blobs.clone(), digest.clone());
        let Some(bytes) = blocking(move || blobs.load_verified(&d, MAX_MANIFEST_BYTES as u64)).await? else {
            return Ok(None);
        };
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

    /// Persist a verified manifest (making room for it first), then remember it. Not storable
    /// (disk full): still served from memory for now.
    pub async fn store(&self, m: Arc<Manifest>) -> Result<(), store::Error> {
        let n = m.bytes.len() as u64;
        if self.evictor.reserve(n).await? {
            let (blobs, m2) = (self.blobs.clone(), m.clone());
            let res = blocking(move || blobs.store_bytes(&m2.digest, &m2.bytes)).await;
            self.blobs.index().release(n);
            res?;
        }
        self.by_digest.insert(m.digest.clone(), m);
        Ok(())
    }

    /// The tag record, from memory or (off the async threads) disk.
    pub async fn tag(&self, key: &TagKey) -> Result<Option<TagRecord>, store::Error> {
        if let Some(r) = self.tag_records.get(key) {
            return Ok(Some(r));
        }
        let (tags, k) = (self.tags.clone(), key.clone());
        let rec = blocking(move || tags.load(&k.upstream, &k.repo, &k.tag)).await?;
        if let Some(r) = &rec {
            self.tag_records.insert(key.clone(), r.clone());
        }
        Ok(rec)
    }

    /// Save a tag record (disk, then memory) and forget any remembered 404.
    pub async fn set_tag(&self, key: &TagKey, rec: TagRecord) -> Result<(), store::Error> {
        let (tags, k, r) = (self.tags.clone(), key.clone(), rec.clone());
        blocking(move || tags.save(&k.upstream, &k.repo, &k.tag, &r)).await?;
        self.tag_records.insert(key.clone(), rec);
        self.negative.invalidate(key);
        Ok(())
    }

    /// The upstream says the tag does not exist: forget it and remember the 404 briefly.
    pub async fn tag_missing(&self, key: &TagKey) -> Result<(), store::Error> {
        self.tag_records.invalidate(key);
        self.negative.insert(key.clone(), ());
        let (tags, k) = (self.tags.clone(), key.clone());
        blocking(move || tags.remove(&k.upstream, &k.repo, &k.tag)).await
    }

    /// Whether an upstream 404 for this tag is still remembered.
    pub fn is_known_missing(&self, key: &TagKey) -> bool {
        self.negative.contains_key(key)
    }
}
