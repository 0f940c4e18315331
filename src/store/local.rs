//! The local disk as a [`ContentStore`]: each call runs the blocking file work of
//! [`BlobStore`] on the blocking pool, never on an async thread, and at most `CONCURRENT_OPS`
//! (cas.rs) at once. Content found on disk at start is hashed once before its first read;
//! ranged reads are positional reads of the open file (which stays readable if the object is
//! evicted meanwhile), holding a read guard that keeps the object off the eviction list.

use std::fs::File;
use std::sync::Arc;

use bytes::Bytes;

use super::{
    Blob, BlobStore, Chunks, ContentStore, Error, FileBody, LinkKey, ObjectInfo, RangeReader, ReadGuard, StoreFuture,
    TagEntry, TagKey, TagRecord, VerifiedSpool,
};
use crate::oci::{Digest, MediaType};

impl BlobStore {
    /// Run blocking store work off the async threads, at most `CONCURRENT_OPS` calls at once
    /// (the permit goes with the work, so a caller that gives up does not free it early).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let permit = self
            .ops()
            .clone()
            .acquire_owned()
            .await
            .map_err(std::io::Error::other)?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f()
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?
    }
}

/// An open committed file of `size` bytes.
struct FileReader {
    file: Arc<File>,
    size: u64,
    guard: ReadGuard,
}

impl RangeReader for FileReader {
    fn read(self: Box<Self>, start: u64, len: Option<u64>) -> Chunks {
        let end = len.map_or(self.size, |l| start.saturating_add(l).min(self.size));
        Chunks::File(FileBody::new(self.file, start, end, Some(self.guard)))
    }
}

impl ContentStore for BlobStore {
    fn stat<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, Option<u64>> {
        let (store, d) = (self.clone(), digest.clone());
        Box::pin(self.blocking(move || Ok(store.open_blob(&d)?.map(|(_, size)| size))))
    }

    fn open<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, Option<Blob>> {
        let (store, d) = (self.clone(), digest.clone());
        Box::pin(async move {
            let opened = self
                .blocking(move || {
                    if !store.verify(&d)? {
                        return Ok(None);
                    }
                    let guard = store.read_guard(&d);
                    Ok(store.open_blob(&d)?.map(|(file, size)| (file, size, guard)))
                })
                .await?;
            Ok(opened.map(|(file, size, guard)| {
                let reader = FileReader {
                    file: Arc::new(file),
                    size,
                    guard,
                };
                Blob::new(size, Box::new(reader))
            }))
        })
    }

    fn load<'a>(&'a self, digest: &'a Digest, max: u64) -> StoreFuture<'a, Option<Bytes>> {
        let (store, d) = (self.clone(), digest.clone());
        Box::pin(self.blocking(move || store.load_verified(&d, max)))
    }

    fn commit(&self, spool: VerifiedSpool) -> StoreFuture<'_, ()> {
        let store = self.clone();
        Box::pin(self.blocking(move || store.commit(spool)))
    }

    fn commit_manifest(&self, spool: VerifiedSpool, media_type: MediaType) -> StoreFuture<'_, ()> {
        let store = self.clone();
        Box::pin(self.blocking(move || {
            let digest = spool.digest().clone();
            store.commit(spool)?;
            store.manifest_types().save(&digest, &media_type)
        }))
    }

    fn manifest_type<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, Option<MediaType>> {
        let (types, d) = (self.manifest_types().clone(), digest.clone());
        Box::pin(self.blocking(move || types.load(&d)))
    }

    fn delete<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, ()> {
        let (store, d) = (self.clone(), digest.clone());
        Box::pin(self.blocking(move || store.remove(&d)))
    }

    fn list(&self) -> StoreFuture<'_, Vec<ObjectInfo>> {
        let entries = self.index().entries();
        Box::pin(async move {
            Ok(entries
                .into_iter()
                .map(|(digest, e)| ObjectInfo {
                    digest,
                    size: e.size,
                    last_access: e.last_access,
                })
                .collect())
        })
    }

    fn touch(&self, digest: &Digest) {
        BlobStore::touch(self, digest, None);
    }

    fn load_tag<'a>(&'a self, key: &'a TagKey) -> StoreFuture<'a, Option<TagRecord>> {
        let (tags, k) = (self.tags().clone(), key.clone());
        Box::pin(self.blocking(move || tags.load(&k.upstream, &k.repo, &k.tag)))
    }

    fn save_tag<'a>(&'a self, key: &'a TagKey, rec: &'a TagRecord) -> StoreFuture<'a, ()> {
        let (tags, k, r) = (self.tags().clone(), key.clone(), rec.clone());
        Box::pin(self.blocking(move || tags.save(&k.upstream, &k.repo, &k.tag, &r)))
    }

    fn remove_tag<'a>(&'a self, key: &'a TagKey) -> StoreFuture<'a, ()> {
        let (tags, k) = (self.tags().clone(), key.clone());
        Box::pin(self.blocking(move || tags.remove(&k.upstream, &k.repo, &k.tag)))
    }

    fn list_tags(&self) -> StoreFuture<'_, Vec<TagEntry>> {
        let tags = self.tags().clone();
        Box::pin(self.blocking(move || tags.all()))
    }

    fn has_link<'a>(&'a self, key: &'a LinkKey) -> StoreFuture<'a, bool> {
        let (links, k) = (self.links().clone(), key.clone());
        Box::pin(self.blocking(move || links.exists(&k)))
    }

    fn save_link<'a>(&'a self, key: &'a LinkKey) -> StoreFuture<'a, ()> {
        let (links, k) = (self.links().clone(), key.clone());
        Box::pin(self.blocking(move || links.save(&k)))
    }
}
