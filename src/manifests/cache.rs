//! The in-memory layer over the content store for the manifest hot path: manifests by digest
//! (bounded by bytes), tag records, and remembered upstream 404s for tags. Reads fall through
//! to the store and re-verify; writes are spooled on the local disk, committed to the store,
//! then remembered. No policy here: when to ask upstream is decided in `mod.rs`.

use std::sync::Arc;
use std::time::Duration;

use crate::oci::{inspect_manifest, Digest, MediaType, MAX_MANIFEST_BYTES};
use crate::store::{self, BlobStore, ContentStore, Evictor, TagKey, TagRecord};

use super::Manifest;

/// Manifests and tags, memory over disk. Cheap to clone.
#[derive(Clone)]
pub struct ManifestCache {
    store: Arc<dyn ContentStore>,
    /// The local disk, where writes are spooled.
    disk: BlobStore,
    evictor: Arc<Evictor>,
    by_digest: moka::sync::Cache<Digest, Arc<Manifest>>,
    tag_records: moka::sync::Cache<TagKey, TagRecord>,
    negative: moka::sync::Cache<TagKey, ()>,
}

impl ManifestCache {
    /// A cache over `store` (spooling writes on the evictor's disk), keeping up to
    /// `memory_bytes` of manifests in memory and upstream 404s for `negative_ttl`.
    pub fn new(
        store: Arc<dyn ContentStore>,
        evictor: Arc<Evictor>,
        memory_bytes: u64,
        negative_ttl: Duration,
    ) -> ManifestCache {
        ManifestCache {
            store,
            disk: evictor.store().clone(),
            evictor,
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

    /// A stored manifest, verified against its digest: only content committed as a manifest
    /// (with its type recorded) is one. Disk reads run off the async threads.
    pub async fn load(&self, digest: &Digest) -> Result<Option<Arc<Manifest>>, store::Error> {
        if let Some(m) = self.remembered(digest) {
            return Ok(Some(m));
        }
        match self.store.manifest_type(digest).await? {
            Some(media_type) => self.read(digest, &media_type).await,
            None => Ok(None),
        }
    }

    /// The manifest a tag record names (the record says it was validated as a manifest).
    pub async fn load_tagged(&self, rec: &TagRecord) -> Result<Option<Arc<Manifest>>, store::Error> {
        if let Some(m) = self.remembered(&rec.digest) {
            return Ok(Some(m));
        }
        self.read(&rec.digest, &rec.media_type).await
    }

    fn remembered(&self, digest: &Digest) -> Option<Arc<Manifest>> {
        let m = self.by_digest.get(digest)?;
        // Keep the on-disk copy's recency current, or LRU would evict a hot manifest.
        self.store.touch(digest);
        Some(m)
    }

    async fn read(&self, digest: &Digest, media_type: &MediaType) -> Result<Option<Arc<Manifest>>, store::Error> {
        let Some(bytes) = self.store.load(digest, MAX_MANIFEST_BYTES as u64).await? else {
            return Ok(None);
        };
        // Stored manifests passed inspection before; one that no longer does is not served.
        let Ok(media_type) = inspect_manifest(&bytes, Some(media_type.as_str())) else {
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

    /// Whether the store holds `digest` as content that cannot be a manifest (a layer, or a
    /// blob no manifest parser accepts): no registry has a manifest with that digest.
    pub async fn holds_non_manifest(&self, digest: &Digest) -> Result<bool, store::Error> {
        match self.store.stat(digest).await? {
            None => Ok(false),
            Some(size) if size > MAX_MANIFEST_BYTES as u64 => Ok(true),
            Some(_) => Ok(self
                .store
                .load(digest, MAX_MANIFEST_BYTES as u64)
                .await?
                .is_some_and(|b| inspect_manifest(&b, None).is_err())),
        }
    }

    /// Remember a verified manifest, then persist it with its type (making room first). An
    /// error means it is not stored; it is still served from memory for now.
    pub async fn store(&self, m: Arc<Manifest>) -> Result<(), store::Error> {
        self.by_digest.insert(m.digest.clone(), m.clone());
        let n = m.bytes.len() as u64;
        if !self.evictor.reserve(n).await? {
            let no_room = std::io::Error::new(std::io::ErrorKind::StorageFull, "no room for a manifest");
            return Err(no_room.into());
        }
        let (disk, m2) = (self.disk.clone(), m.clone());
        let spooled = tokio::task::spawn_blocking(move || disk.spool_bytes(&m2.digest, &m2.bytes))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()));
        let res = match spooled {
            Ok(Ok(verified)) => self.store.commit_manifest(verified, m.media_type.clone()).await,
            Ok(Err(e)) => Err(e),
            Err(e) => Err(e.into()),
        };
        self.disk.index().release(n);
        res
    }

    /// The tag record, from memory or (off the async threads) disk.
    pub async fn tag(&self, key: &TagKey) -> Result<Option<TagRecord>, store::Error> {
        if let Some(r) = self.tag_records.get(key) {
            return Ok(Some(r));
        }
        let rec = self.store.load_tag(key).await?;
        if let Some(r) = &rec {
            self.tag_records.insert(key.clone(), r.clone());
        }
        Ok(rec)
    }

    /// Save a tag record (disk, then memory) and forget any remembered 404.
    pub async fn set_tag(&self, key: &TagKey, rec: TagRecord) -> Result<(), store::Error> {
        self.store.save_tag(key, &rec).await?;
        self.tag_records.insert(key.clone(), rec);
        self.negative.invalidate(key);
        Ok(())
    }

    /// The upstream says the tag does not exist: forget it and remember the 404 briefly.
    pub async fn tag_missing(&self, key: &TagKey) -> Result<(), store::Error> {
        self.tag_records.invalidate(key);
        self.negative.insert(key.clone(), ());
        self.store.remove_tag(key).await
    }

    /// Whether an upstream 404 for this tag is still remembered.
    pub fn is_known_missing(&self, key: &TagKey) -> bool {
        self.negative.contains_key(key)
    }
}
