//! Small committed blobs kept in memory, in front of any [`ContentStore`]: config blobs and
//! small layers, which every pull asks for, are answered without a blocking-pool hop, a file
//! open or a reader task. An object enters memory when it is opened from the store behind
//! (`open`), after its bytes hashed to its digest here; memory holds verified bytes only, at
//! most `max_object` bytes each and `capacity` in all (least recently used out first).
//! Deleting content through this store drops it from memory too; `berth cache rm` and `gc`,
//! separate processes, act on the disk only, so a running server keeps answering the small
//! blobs they removed from memory (the same verified content) until it needs the room or
//! restarts. Every other call goes to the store behind unchanged. What to serve and to whom is
//! decided by the callers, as for any store.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;

use super::{Blob, Chunks, ContentStore, LinkKey, ObjectInfo, StoreFuture, TagEntry, TagKey, TagRecord, VerifiedSpool};
use crate::oci::{Digest, MediaType};

/// The store behind, with small blobs in memory in front of it.
pub struct Memory {
    inner: Arc<dyn ContentStore>,
    blobs: moka::sync::Cache<Digest, Bytes>,
    max_object: u64,
}

impl Memory {
    /// Keep blobs of at most `max_object` bytes, `capacity` bytes in all, in front of `inner`.
    pub fn new(inner: Arc<dyn ContentStore>, capacity: u64, max_object: u64) -> Memory {
        let blobs = moka::sync::Cache::builder()
            .max_capacity(capacity)
            .weigher(|_: &Digest, b: &Bytes| u32::try_from(b.len()).unwrap_or(u32::MAX))
            .build();
        Memory {
            inner,
            blobs,
            max_object,
        }
    }

    /// Read a small opened blob whole and keep it if it hashes to its digest. A blob whose
    /// bytes do not match (changed on disk since it was checked) is deleted: a miss, fetched
    /// again, never served.
    async fn keep(&self, digest: &Digest, blob: Blob) -> Result<Option<Blob>, super::Error> {
        let size = blob.size;
        let bytes = match blob.read(0, Some(size)) {
            Chunks::Whole(b) => b,
            Chunks::File(body) => body.collect().await?.to_bytes(),
        };
        let (b, algorithm) = (bytes.clone(), digest.algorithm());
        let hashed = tokio::task::spawn_blocking(move || Digest::of(algorithm, &b))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        if bytes.len() as u64 != size || hashed != *digest {
            tracing::warn!(digest = %digest, "stored blob does not match its digest: removed");
            self.inner.delete(digest).await?;
            return Ok(None);
        }
        self.blobs.insert(digest.clone(), bytes.clone());
        Ok(Some(Blob::in_memory(bytes)))
    }
}

impl ContentStore for Memory {
    fn stat<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, Option<u64>> {
        match self.blobs.get(digest) {
            Some(b) => Box::pin(std::future::ready(Ok(Some(b.len() as u64)))),
            None => self.inner.stat(digest),
        }
    }

    fn open<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, Option<Blob>> {
        if let Some(bytes) = self.blobs.get(digest) {
            // Recency for the store behind's own eviction: a blob hot in memory stays on disk.
            self.inner.touch(digest);
            return Box::pin(std::future::ready(Ok(Some(Blob::in_memory(bytes)))));
        }
        Box::pin(async move {
            match self.inner.open(digest).await? {
                Some(blob) if blob.size <= self.max_object => self.keep(digest, blob).await,
                other => Ok(other),
            }
        })
    }

    fn load<'a>(&'a self, digest: &'a Digest, max: u64) -> StoreFuture<'a, Option<Bytes>> {
        self.inner.load(digest, max)
    }

    fn commit(&self, spool: VerifiedSpool) -> StoreFuture<'_, ()> {
        self.inner.commit(spool)
    }

    fn commit_manifest(&self, spool: VerifiedSpool, media_type: MediaType) -> StoreFuture<'_, ()> {
        self.inner.commit_manifest(spool, media_type)
    }

    fn manifest_type<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, Option<MediaType>> {
        self.inner.manifest_type(digest)
    }

    fn delete<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, ()> {
        self.blobs.invalidate(digest);
        Box::pin(async move {
            self.inner.delete(digest).await?;
            // Again: a first read that was hashing the object meanwhile may have kept it.
            self.blobs.invalidate(digest);
            Ok(())
        })
    }

    fn list(&self) -> StoreFuture<'_, Vec<ObjectInfo>> {
        self.inner.list()
    }

    fn touch(&self, digest: &Digest) {
        self.inner.touch(digest)
    }

    fn load_tag<'a>(&'a self, key: &'a TagKey) -> StoreFuture<'a, Option<TagRecord>> {
        self.inner.load_tag(key)
    }

    fn save_tag<'a>(&'a self, key: &'a TagKey, rec: &'a TagRecord) -> StoreFuture<'a, ()> {
        self.inner.save_tag(key, rec)
    }

    fn remove_tag<'a>(&'a self, key: &'a TagKey) -> StoreFuture<'a, ()> {
        self.inner.remove_tag(key)
    }

    fn list_tags(&self) -> StoreFuture<'_, Vec<TagEntry>> {
        self.inner.list_tags()
    }

    fn has_link<'a>(&'a self, key: &'a LinkKey) -> StoreFuture<'a, bool> {
        self.inner.has_link(key)
    }

    fn save_link<'a>(&'a self, key: &'a LinkKey) -> StoreFuture<'a, ()> {
        self.inner.save_link(key)
    }
}
