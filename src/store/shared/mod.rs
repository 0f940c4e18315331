//! The shared tier: verified content, manifest types, tag records and repository links on an
//! S3-compatible object store (through `object_store`), shared by every replica. It sits
//! behind the local disk (`tiered.rs` puts the two together); nothing here touches the disk
//! except reading a committed local file to upload it. Layout under the configured `prefix`:
//! ```text
//! blobs/sha256/<hex>                          verified content (multipart, completed last)
//! manifests/sha256/<hex>                      media type of content committed as a manifest
//! tags/<upstream>/<repo>/_tags/<tag>          JSON tag record, replaced by one PUT
//! links/<upstream>/<repo>/_links/sha256/<hex> empty: the repository holds the digest
//! used/sha256/<hex>                           empty, rewritten when the content is used
//! ```
//! Bound (`max_size`): one replica at a time (the leader, `eviction.rs`) lists the content and
//! deletes the least recently used until the tier is under its target. Recency is the later
//! of the upload and the `used/` marker, which a replica rewrites at most once an hour per
//! digest when it serves that content (locally or from the tier), so content that is hot on
//! every local disk is not evicted from the shared tier for being unread there.
//! Invariants, as on the local disk: content becomes visible under its key only when its
//! upload completes, and berth uploads only content whose digest it verified (an upload that
//! fails is aborted; incomplete uploads left by a killed process are for the bucket's
//! `AbortIncompleteMultipartUpload` lifecycle rule). Reads verify again: a whole read that
//! does not hash to its digest ends with an error (never a clean end) and the object is
//! deleted, so it heals from the upstream; a missing object is a miss.

mod connector;
mod eviction;

pub use eviction::SharedEviction;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use tokio::sync::mpsc;

use super::{ByteStream, LinkKey, TagKey, TagRecord};
use crate::config::S3Config;
use crate::metrics::Metrics;
use crate::oci::{Digest, MediaType};

/// Bytes per multipart part (S3's minimum is 5 MiB, except for the last part).
const PART_BYTES: u64 = 8 << 20;

/// A shared-tier failure: the object store could not be reached or answered an error.
#[derive(Debug, thiserror::Error)]
#[error("object store: {0}")]
pub struct SharedError(String);

impl From<object_store::Error> for SharedError {
    fn from(e: object_store::Error) -> Self {
        SharedError(e.to_string())
    }
}

impl From<std::io::Error> for SharedError {
    fn from(e: std::io::Error) -> Self {
        SharedError(e.to_string())
    }
}

/// Why [`SharedStore::check`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The store answered: no such bucket, or the credentials are refused.
    #[error("{0}")]
    Refused(String),
    /// No usable answer (unreachable, timed out, a server error).
    #[error("{0}")]
    Unreachable(String),
}

/// How often a replica rewrites one digest's `used/` marker at most.
const MARK_USED_EVERY: Duration = Duration::from_secs(3600);

/// The object store and key layout. Cheap to clone.
#[derive(Clone)]
pub struct SharedStore {
    store: Arc<AmazonS3>,
    prefix: String,
    /// `s3://bucket/prefix`, for messages.
    location: String,
    /// Until when (ms since the Unix epoch) the store is treated as unavailable.
    down_until: Arc<AtomicU64>,
    /// How long the store is left alone after a request to it failed (`down_for`).
    down_for: Duration,
    /// Digests whose `used/` marker this replica rewrote within [`MARK_USED_EVERY`].
    marked: moka::sync::Cache<Digest, ()>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStore").field("location", &self.location).finish()
    }
}

/// The record as stored (the local disk's format, so tools read both alike).
#[derive(serde::Serialize, serde::Deserialize)]
struct TagDoc {
    digest: String,
    media_type: String,
    checked_at: u64,
}

impl SharedStore {
    /// The store `cfg` describes; reads the secret key file now.
    pub fn new(cfg: &S3Config, metrics: Arc<Metrics>) -> Result<SharedStore, String> {
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&cfg.bucket)
            .with_region(&cfg.region)
            .with_allow_http(cfg.allow_http)
            .with_retry(object_store::RetryConfig {
                max_retries: 2,
                retry_timeout: cfg.timeout,
                backoff: object_store::BackoffConfig::default(),
            })
            .with_client_options(
                object_store::ClientOptions::new()
                    .with_timeout(cfg.timeout)
                    .with_connect_timeout(cfg.timeout.min(Duration::from_secs(5))),
            )
            .with_http_connector(connector::HyperConnector {
                connect_timeout: cfg.timeout.min(Duration::from_secs(5)),
            });
        if let Some(endpoint) = &cfg.endpoint {
            b = b.with_endpoint(endpoint.trim_end_matches('/'));
        }
        if let (Some(id), Some(file)) = (&cfg.access_key_id, &cfg.secret_access_key_file) {
            let secret = std::fs::read_to_string(file)
                .map_err(|e| format!("storage.s3.secret_access_key_file {}: {e}", file.display()))?;
            b = b.with_access_key_id(id).with_secret_access_key(secret.trim());
        }
        let store = b.build().map_err(|e| format!("storage.s3: {e}"))?;
        let prefix = cfg.prefix.trim_matches('/').to_string();
        let location = format!("s3://{}/{}", cfg.bucket, prefix);
        Ok(SharedStore {
            store: Arc::new(store),
            prefix,
            location,
            down_until: Arc::default(),
            down_for: cfg.down_for,
            marked: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(MARK_USED_EVERY)
                .build(),
            metrics,
        })
    }

    /// Whether the store may be asked now (no failure within `down_for`).
    pub fn is_available(&self) -> bool {
        now_ms() >= self.down_until.load(Ordering::Relaxed)
    }

    /// Pass `res` through; a failure is counted (`op`: `read` or `write`), logged, and leaves
    /// the store alone for `down_for`: reads go straight to the upstream and writes are
    /// skipped meanwhile, so an unreachable store costs one timeout, not one per request.
    pub fn noted<T>(&self, op: &str, what: &str, res: Result<T, SharedError>) -> Result<T, SharedError> {
        if let Err(e) = &res {
            self.metrics.record_shared_store_error(op);
            let was_available = self.is_available();
            self.down_until
                .store(now_ms() + self.down_for.as_millis() as u64, Ordering::Relaxed);
            if was_available {
                tracing::warn!(location = %self.location, what, error = %e, "shared tier failed: using the local tier and the upstream for {:?}", self.down_for);
            }
        }
        res
    }

    /// `s3://bucket/prefix`.
    pub fn location(&self) -> &str {
        &self.location
    }

    fn key(&self, rest: &str) -> Path {
        match self.prefix.is_empty() {
            true => Path::from(rest),
            false => Path::from(format!("{}/{rest}", self.prefix)),
        }
    }

    fn blob_key(&self, d: &Digest) -> Path {
        self.key(&format!("blobs/{}/{}", d.algorithm().as_str(), d.hex()))
    }

    fn type_key(&self, d: &Digest) -> Path {
        self.key(&format!("manifests/{}/{}", d.algorithm().as_str(), d.hex()))
    }

    fn tag_key(&self, k: &TagKey) -> Path {
        self.key(&format!("tags/{}/{}/_tags/{}", k.upstream, k.repo, k.tag.as_str()))
    }

    fn used_key(&self, d: &Digest) -> Path {
        self.key(&format!("used/{}/{}", d.algorithm().as_str(), d.hex()))
    }

    /// Content `d` was served: refresh its recency in the shared tier (in the background, at
    /// most once per [`MARK_USED_EVERY`] per replica; skipped while the tier is unavailable).
    pub fn mark_used(&self, d: &Digest) {
        if self.marked.contains_key(d) || !self.is_available() {
            return;
        }
        self.marked.insert(d.clone(), ());
        let (this, d) = (self.clone(), d.clone());
        tokio::spawn(async move {
            let res = this.store.put(&this.used_key(&d), PutPayload::default()).await;
            let _ = this.noted("write", "used marker", res.map(|_| ()).map_err(SharedError::from));
        });
    }

    fn link_key(&self, k: &LinkKey) -> Path {
        let d = &k.digest;
        self.key(&format!(
            "links/{}/{}/_links/{}/{}",
            k.upstream,
            k.repo,
            d.algorithm().as_str(),
            d.hex()
        ))
    }

    /// The size of the object for `d`, or `None` if absent.
    pub async fn stat(&self, d: &Digest) -> Result<Option<u64>, SharedError> {
        match self.store.head(&self.blob_key(d)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Stream the whole object for `d`, verifying it: chunks as they arrive, the last one
    /// only once the digest checked out; an `InvalidData` error instead of a clean end if it
    /// does not hash to `d` (then it is deleted). `None` if absent.
    pub async fn read(&self, d: &Digest) -> Result<Option<(u64, ByteStream)>, SharedError> {
        let got = match self.store.get(&self.blob_key(d)).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let size = got.meta.size;
        let (tx, rx) = mpsc::channel(4);
        let (this, d) = (self.clone(), d.clone());
        tokio::spawn(async move {
            let mut stream = got.into_stream();
            let mut hasher = d.hasher();
            let mut held: Option<Bytes> = None;
            while let Some(chunk) = stream.next().await {
                let chunk = match chunk {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx
                            .send(Err(std::io::Error::other(format!("object store read: {e}"))))
                            .await;
                        return;
                    }
                };
                hasher.update(&chunk);
                // The last chunk goes out only once the digest checked out.
                if let Some(prev) = held.replace(chunk) {
                    if tx.send(Ok(prev)).await.is_err() {
                        return;
                    }
                }
            }
            if hasher.finish() == d {
                if let Some(last) = held {
                    let _ = tx.send(Ok(last)).await;
                }
            } else {
                tracing::warn!(digest = %d, location = this.location(), "shared object does not match its digest; deleting it");
                let _ = this.store.delete(&this.blob_key(&d)).await;
                let mismatch = std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "shared object does not match its digest (deleted)",
                );
                let _ = tx.send(Err(mismatch)).await;
            }
        });
        Ok(Some((size, rx)))
    }

    /// The whole object for `d` if it is at most `max` bytes and hashes to `d`.
    pub async fn load(&self, d: &Digest, max: u64) -> Result<Option<Bytes>, SharedError> {
        match self.stat(d).await? {
            Some(size) if size <= max => {}
            _ => return Ok(None),
        }
        let bytes = match self.store.get(&self.blob_key(d)).await {
            Ok(g) => g.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok((Digest::of(d.algorithm(), &bytes) == *d).then_some(bytes))
    }

    /// Upload `size` bytes of a verified, committed local file as the object for `d`: in
    /// parts, completed only after every part was sent, aborted on any failure.
    pub async fn upload(&self, d: &Digest, file: Arc<File>, size: u64) -> Result<(), SharedError> {
        let key = self.blob_key(d);
        if size < PART_BYTES {
            let bytes = read_at(file, 0, size).await?;
            self.store.put(&key, PutPayload::from(bytes)).await?;
            return Ok(());
        }
        let mut upload = self.store.put_multipart(&key).await?;
        let sent: Result<(), SharedError> = async {
            let mut pos = 0;
            while pos < size {
                let n = PART_BYTES.min(size - pos);
                let bytes = read_at(file.clone(), pos, n).await?;
                upload.put_part(PutPayload::from(bytes)).await?;
                pos += n;
            }
            upload.complete().await?;
            Ok(())
        }
        .await;
        if sent.is_err() {
            let _ = upload.abort().await;
        }
        sent
    }

    /// Record that `d` was committed as a manifest of `media_type`.
    pub async fn save_manifest_type(&self, d: &Digest, media_type: &MediaType) -> Result<(), SharedError> {
        let body = Bytes::from(media_type.as_str().to_string());
        self.store.put(&self.type_key(d), PutPayload::from(body)).await?;
        Ok(())
    }

    /// The type `d` was committed as a manifest with.
    pub async fn manifest_type(&self, d: &Digest) -> Result<Option<MediaType>, SharedError> {
        Ok(self
            .small(&self.type_key(d))
            .await?
            .and_then(|b| std::str::from_utf8(&b).ok().map(MediaType::new)))
    }

    /// The tag record, if one was saved and parses.
    pub async fn load_tag(&self, k: &TagKey) -> Result<Option<TagRecord>, SharedError> {
        let Some(bytes) = self.small(&self.tag_key(k)).await? else {
            return Ok(None);
        };
        let Ok(doc) = serde_json::from_slice::<TagDoc>(&bytes) else {
            return Ok(None);
        };
        let Ok(digest) = doc.digest.parse() else {
            return Ok(None);
        };
        Ok(Some(TagRecord {
            digest,
            media_type: MediaType::new(&doc.media_type),
            checked_at: UNIX_EPOCH + Duration::from_secs(doc.checked_at),
        }))
    }

    /// Replace the tag record (one PUT: readers see the old or the new one).
    pub async fn save_tag(&self, k: &TagKey, rec: &TagRecord) -> Result<(), SharedError> {
        let doc = TagDoc {
            digest: rec.digest.to_string(),
            media_type: rec.media_type.as_str().to_string(),
            checked_at: rec.checked_at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs(),
        };
        let body = serde_json::to_vec(&doc).map_err(|e| SharedError(e.to_string()))?;
        self.store.put(&self.tag_key(k), PutPayload::from(body)).await?;
        Ok(())
    }

    /// Forget a tag (absent is fine).
    pub async fn remove_tag(&self, k: &TagKey) -> Result<(), SharedError> {
        match self.store.delete(&self.tag_key(k)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether a link records that the repository holds the digest.
    pub async fn has_link(&self, k: &LinkKey) -> Result<bool, SharedError> {
        match self.store.head(&self.link_key(k)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Record that the repository holds the digest.
    pub async fn save_link(&self, k: &LinkKey) -> Result<(), SharedError> {
        self.store.put(&self.link_key(k), PutPayload::default()).await?;
        Ok(())
    }

    /// Whether the bucket exists and the credentials may write to it: one small probe object
    /// is written under the prefix and deleted again. A refusal (no such bucket, credentials
    /// refused) is a configuration error; anything else may pass (the store may be down now).
    pub async fn check(&self) -> Result<(), CheckError> {
        let probe = self.key(".berth-probe");
        let written = self.store.put(&probe, PutPayload::default()).await;
        match written {
            Ok(_) => {
                let _ = self.store.delete(&probe).await;
                Ok(())
            }
            Err(object_store::Error::NotFound { .. }) => Err(CheckError::Refused(format!(
                "{}: the bucket does not exist",
                self.location
            ))),
            Err(e @ (object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. })) => {
                Err(CheckError::Refused(format!(
                    "{}: the credentials were refused: {e}",
                    self.location
                )))
            }
            Err(e) => Err(CheckError::Unreachable(format!("{}: {e}", self.location))),
        }
    }

    /// A small object's bytes, or `None` if absent.
    async fn small(&self, key: &Path) -> Result<Option<Bytes>, SharedError> {
        match self.store.get(key).await {
            Ok(g) => Ok(Some(g.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// `len` bytes at `pos` of `file`, off the async threads.
async fn read_at(file: Arc<File>, pos: u64, len: u64) -> Result<Bytes, SharedError> {
    let len = usize::try_from(len).map_err(|_| SharedError("part too large".into()))?;
    let bytes = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, pos).map(|()| Bytes::from(buf))
    })
    .await
    .map_err(|e| SharedError(e.to_string()))??;
    Ok(bytes)
}
