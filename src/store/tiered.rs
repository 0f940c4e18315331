//! The local disk in front of the shared tier, as one [`ContentStore`]. Reads ask the local
//! disk first and the shared tier only on a local miss (and only while it is available, see
//! [`SharedStore::is_available`]); writes go to the local disk, then to the shared tier in
//! the background, so a slow or unreachable object store never slows a request. Blob bytes
//! that only the shared tier holds are not opened here: the blob handler's fill streams them
//! from the shared tier while writing them locally (`fill`). Content served from either tier
//! refreshes its recency in the shared tier ([`SharedStore::mark_used`]), which has its own
//! bound; deletion and listing are the local tier's.

use bytes::Bytes;
use tokio_util::task::TaskTracker;

use super::shared::{SharedError, SharedStore};
use super::{
    Blob, BlobStore, ContentStore, LinkKey, ObjectInfo, StoreFuture, TagEntry, TagKey, TagRecord, VerifiedSpool,
};
use crate::oci::{Digest, MediaType};

/// The two tiers. Cheap to clone.
#[derive(Clone)]
pub struct Tiered {
    local: BlobStore,
    shared: SharedStore,
    /// Background writes to the shared tier (shutdown waits for them).
    tasks: TaskTracker,
}

impl Tiered {
    /// `local` in front of `shared`; background writes run on `tasks`.
    pub fn new(local: BlobStore, shared: SharedStore, tasks: TaskTracker) -> Tiered {
        Tiered { local, shared, tasks }
    }

    /// Ask the shared tier (if available) on a local miss; a failure is a miss.
    async fn read<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<Option<T>, SharedError>>,
    ) -> Option<T> {
        if !self.shared.is_available() {
            return None;
        }
        self.shared.noted("read", what, fut.await).ok().flatten()
    }

    /// Write to the shared tier in the background (skipped while it is unavailable).
    fn write<F>(&self, what: &'static str, work: impl FnOnce(SharedStore) -> F + Send + 'static)
    where
        F: std::future::Future<Output = Result<(), SharedError>> + Send,
    {
        if !self.shared.is_available() {
            return;
        }
        let shared = self.shared.clone();
        self.tasks.spawn(async move {
            let res = work(shared.clone()).await;
            let _ = shared.noted("write", what, res);
        });
    }
}

impl ContentStore for Tiered {
    fn stat<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, Option<u64>> {
        Box::pin(async move {
            if let Some(size) = self.local.stat(digest).await? {
                return Ok(Some(size));
            }
            Ok(self.read("stat", self.shared.stat(digest)).await)
        })
    }

    fn open<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, Option<Blob>> {
        Box::pin(async move {
            let blob = self.local.open(digest).await?;
            if blob.is_some() {
                self.shared.mark_used(digest);
            }
            Ok(blob)
        })
    }

    fn load<'a>(&'a self, digest: &'a Digest, max: u64) -> StoreFuture<'a, Option<Bytes>> {
        Box::pin(async move {
            let bytes = match self.local.load(digest, max).await? {
                Some(b) => Some(b),
                None => self.read("load", self.shared.load(digest, max)).await,
            };
            if bytes.is_some() {
                self.shared.mark_used(digest);
            }
            Ok(bytes)
        })
    }

    fn commit(&self, spool: VerifiedSpool) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let (digest, file, size) = (spool.digest().clone(), spool.file().clone(), spool.size());
            ContentStore::commit(&self.local, spool).await?;
            // The committed file keeps its inode: the open handle reads it even if evicted.
            self.write("blob", move |shared| async move {
                if shared.stat(&digest).await?.is_some() {
                    return Ok(());
                }
                shared.upload(&digest, file, size).await
            });
            Ok(())
        })
    }

    fn commit_manifest(&self, spool: VerifiedSpool, media_type: MediaType) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let (digest, file, size) = (spool.digest().clone(), spool.file().clone(), spool.size());
            self.local.commit_manifest(spool, media_type.clone()).await?;
            self.write("manifest", move |shared| async move {
                shared.upload(&digest, file, size).await?;
                shared.save_manifest_type(&digest, &media_type).await
            });
            Ok(())
        })
    }

    fn manifest_type<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, Option<MediaType>> {
        Box::pin(async move {
            if let Some(t) = self.local.manifest_type(digest).await? {
                return Ok(Some(t));
            }
            Ok(self.read("manifest type", self.shared.manifest_type(digest)).await)
        })
    }

    fn delete<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, ()> {
        self.local.delete(digest)
    }

    fn list(&self) -> StoreFuture<'_, Vec<ObjectInfo>> {
        self.local.list()
    }

    fn touch(&self, digest: &Digest) {
        ContentStore::touch(&self.local, digest);
        self.shared.mark_used(digest);
    }

    /// The newer of the two records: another replica may have revalidated the tag since.
    fn load_tag<'a>(&'a self, key: &'a TagKey) -> StoreFuture<'a, Option<TagRecord>> {
        Box::pin(async move {
            let local = self.local.load_tag(key).await?;
            let shared = self.read("tag", self.shared.load_tag(key)).await;
            Ok(match (local, shared) {
                (Some(l), Some(s)) if s.checked_at > l.checked_at => Some(s),
                (Some(l), _) => Some(l),
                (None, s) => s,
            })
        })
    }

    fn save_tag<'a>(&'a self, key: &'a TagKey, rec: &'a TagRecord) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.local.save_tag(key, rec).await?;
            let (k, r) = (key.clone(), rec.clone());
            self.write("tag", move |shared| async move { shared.save_tag(&k, &r).await });
            Ok(())
        })
    }

    fn remove_tag<'a>(&'a self, key: &'a TagKey) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.local.remove_tag(key).await?;
            let k = key.clone();
            self.write("tag", move |shared| async move { shared.remove_tag(&k).await });
            Ok(())
        })
    }

    fn list_tags(&self) -> StoreFuture<'_, Vec<TagEntry>> {
        self.local.list_tags()
    }

    fn has_link<'a>(&'a self, key: &'a LinkKey) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            if self.local.has_link(key).await? {
                return Ok(true);
            }
            let shared = self.read("link", async { self.shared.has_link(key).await.map(Some) });
            Ok(shared.await.unwrap_or(false))
        })
    }

    fn save_link<'a>(&'a self, key: &'a LinkKey) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.local.save_link(key).await?;
            let k = key.clone();
            self.write("link", move |shared| async move { shared.save_link(&k).await });
            Ok(())
        })
    }
}
