//! Storage. `content.rs` is the seam, the [`ContentStore`] trait every backend implements
//! (what a backend must guarantee is written there); the local disk is the backend here:
//! content-addressed blobs and manifests (`cas`, with `local.rs` implementing the trait),
//! spools that fills write to and readers tail (`spool`, `reader`), the in-memory index and
//! eviction (`index`, `evict`), tag records (`tags`), repository links (`links`), which
//! objects are manifests (`manifest_types`), pins, the server's lock (`lock`), and whether the
//! disk can be written now (`health`). With `[storage.s3]` the shared tier (`shared`, an
//! S3-compatible object store) sits behind the local disk, the two joined by `tiered`; small
//! blobs are kept in memory in front of either (`memory`).
//! Layout under the configured root:
//! ```text
//! blobs/sha256/ab/abcdef...          verified content, visible only after verify + fsync + rename
//! manifests/sha256/ab/abcdef...      media type of an object committed as a manifest
//! tmp/                               writes in progress; emptied at start
//! tags/<upstream>/<repo>/_tags/<tag> JSON tag record (digest, media type, checked_at)
//! links/<upstream>/<repo>/_links/sha256/<hex>  empty: the repository holds the digest
//! pins.json                          digests exempt from eviction (with their references)
//! serve.lock                         held (flock) by the one server using the store; its pid
//! ```
//! Paths are built only from validated names, tags and digest hex. No network I/O here.

mod atomic;
mod buffers;
mod cas;
mod content;
mod evict;
mod health;
mod index;
mod links;
mod local;
mod lock;
mod manifest_types;
mod memory;
mod pins;
mod reader;
mod shared;
mod spool;
mod tags;
mod tiered;

pub use cas::BlobStore;
pub use content::{Blob, ByteStream, Chunks, ContentStore, ObjectInfo, RangeReader, StoreFuture};
pub use evict::{free_space, EvictReport, Evictor, Limits};
pub use health::{StoreHealth, PROBE_BYTES};
pub use index::{Entry, ReadGuard, StoreIndex};
pub use links::{LinkKey, LinkStore};
pub use lock::{LockError, StoreLock};
pub use manifest_types::ManifestTypes;
pub use memory::Memory;
pub use pins::{Pin, Pins};
pub use reader::{read_file, FileBody, Follow, CHUNK};
pub use shared::{CheckError, SharedError, SharedEviction, SharedStore};
pub use spool::{Spool, VerifiedSpool};
pub use tags::{TagEntry, TagKey, TagRecord, TagStore};
pub use tiered::Tiered;

use std::path::PathBuf;

use crate::oci::Digest;

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file system failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The directory holds no store.
    #[error("{} is not a berth store (no blobs/)", .0.display())]
    NotAStore(PathBuf),
    /// Content to commit did not hash to its digest; nothing was stored.
    #[error("content for {expected} hashes to {actual}")]
    Mismatch {
        /// The digest it was stored under.
        expected: Digest,
        /// What it hashed to.
        actual: Digest,
    },
}
