//! The storage seam: what berth needs from a place that holds verified content, as the
//! [`ContentStore`] trait. The local disk ([`BlobStore`](super::BlobStore)) implements it,
//! [`Tiered`](super::Tiered) implements it with the shared tier (an S3-compatible bucket
//! through `object_store`, `shared/`) behind the local disk, and [`Memory`](super::Memory)
//! keeps small blobs in memory in front of either. Callers never see paths or file
//! handles.
//!
//! What a backend must guarantee:
//! - Only verified content is visible: an object appears under its digest only through
//!   [`ContentStore::commit`] of a [`VerifiedSpool`], whose bytes hashed to that digest.
//! - Commit is atomic: a reader sees the whole object or none of it; a crash leaves nothing
//!   partial visible (local: fsync + rename + directory fsync; S3: multipart completion).
//! - Ranged reads: a [`Blob`] serves any byte range of one committed object; if the object
//!   vanishes or turns out wrong mid-read, the stream ends with an error, never a clean end.
//! - A missing or wrong object is a miss (`Ok(None)`), never an error that sticks.
//! - Tag records are small documents replaced atomically.
//! - Links (`(upstream, repository, digest)`: that repository holds that digest) are sets of
//!   keys: saving one is idempotent; losing one costs an upstream check, never a wrong read.
//! - Only content committed with [`ContentStore::commit_manifest`] has a manifest type, and
//!   only such content is served as a manifest (a config blob never is).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{Error, FileBody, LinkKey, TagEntry, TagKey, TagRecord, VerifiedSpool};
use crate::oci::{Digest, MediaType};

/// A stream of body chunks; an `Err` item means the transfer broke (never a clean end).
pub type ByteStream = mpsc::Receiver<io::Result<Bytes>>;

/// The future every [`ContentStore`] method returns (boxed, so the trait is object safe).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'a>>;

/// Reads byte ranges of one open object.
pub trait RangeReader: Send {
    /// `start..start+len` (to the end when `len` is `None`), in chunks.
    fn read(self: Box<Self>, start: u64, len: Option<u64>) -> Chunks;
}

/// An open committed object: its size and its bytes, in memory or behind a reader. Holding it
/// keeps the object readable (and, on the local disk, off the eviction list) until the read
/// ends.
pub struct Blob {
    /// Size in bytes.
    pub size: u64,
    content: Content,
}

enum Content {
    Memory(Bytes),
    Reader(Box<dyn RangeReader>),
}

/// A byte range of a [`Blob`]: at hand, or read as the connection asks.
pub enum Chunks {
    /// The whole range, already in memory.
    Whole(Bytes),
    /// A range of a local file, read chunk by chunk as the response body is written.
    File(FileBody),
}

impl Blob {
    /// An open object of `size` bytes read by `reader`.
    pub fn new(size: u64, reader: Box<dyn RangeReader>) -> Blob {
        Blob {
            size,
            content: Content::Reader(reader),
        }
    }

    /// An object whose verified bytes are in memory.
    pub fn in_memory(bytes: Bytes) -> Blob {
        Blob {
            size: bytes.len() as u64,
            content: Content::Memory(bytes),
        }
    }

    /// `start..start+len` (to the end when `len` is `None`), clamped to the object.
    pub fn read(self, start: u64, len: Option<u64>) -> Chunks {
        match self.content {
            Content::Memory(b) => {
                let from = usize::try_from(start).unwrap_or(usize::MAX).min(b.len());
                let to = len.map_or(b.len(), |l| {
                    usize::try_from(start.saturating_add(l)).unwrap_or(usize::MAX)
                });
                Chunks::Whole(b.slice(from..to.clamp(from, b.len())))
            }
            Content::Reader(r) => r.read(start, len),
        }
    }
}

/// One committed object, for listings (gc, `cache ls|stats`).
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    /// Its digest.
    pub digest: Digest,
    /// Bytes.
    pub size: u64,
    /// Last time it was served or committed.
    pub last_access: SystemTime,
}

/// A place that holds verified content and tag records. See the module docs for what an
/// implementation must guarantee.
pub trait ContentStore: Send + Sync {
    /// The size of committed content, or `None` if absent. Serves no bytes, so it does not
    /// re-check content (a HEAD).
    fn stat<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, Option<u64>>;
    /// Open committed content for ranged reads; `None` if absent or found not to match its
    /// digest (then it is removed, so it is refetched, never served).
    fn open<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, Option<Blob>>;
    /// Read a whole small object (a manifest) of at most `max` bytes, verified against its
    /// digest; `None` if absent, larger, or wrong.
    fn load<'a>(&'a self, digest: &'a Digest, max: u64) -> StoreFuture<'a, Option<Bytes>>;
    /// Make verified content visible under its digest, atomically.
    fn commit(&self, spool: VerifiedSpool) -> StoreFuture<'_, ()>;
    /// Commit a verified manifest and record the type it was validated as.
    fn commit_manifest(&self, spool: VerifiedSpool, media_type: MediaType) -> StoreFuture<'_, ()>;
    /// The type `digest` was committed as a manifest with; `None` for any other content.
    fn manifest_type<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, Option<MediaType>>;
    /// Remove committed content (absent is fine). Open readers may finish.
    fn delete<'a>(&'a self, digest: &'a Digest) -> StoreFuture<'a, ()>;
    /// Every committed object.
    fn list(&self) -> StoreFuture<'_, Vec<ObjectInfo>>;
    /// Note an access (for recency-based eviction); cheap, may be a no-op.
    fn touch(&self, digest: &Digest);
    /// The record for a tag, if one was saved and parses.
    fn load_tag<'a>(&'a self, key: &'a TagKey) -> StoreFuture<'a, Option<TagRecord>>;
    /// Replace the record for a tag atomically.
    fn save_tag<'a>(&'a self, key: &'a TagKey, rec: &'a TagRecord) -> StoreFuture<'a, ()>;
    /// Forget a tag (absent is fine).
    fn remove_tag<'a>(&'a self, key: &'a TagKey) -> StoreFuture<'a, ()>;
    /// Every saved tag, sorted by upstream, repository and tag.
    fn list_tags(&self) -> StoreFuture<'_, Vec<TagEntry>>;
    /// Whether a link records that the repository holds the digest.
    fn has_link<'a>(&'a self, key: &'a LinkKey) -> StoreFuture<'a, bool>;
    /// Record that the repository holds the digest (present already is fine).
    fn save_link<'a>(&'a self, key: &'a LinkKey) -> StoreFuture<'a, ()>;
}
