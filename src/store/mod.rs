//! The on-disk store: content-addressed blobs and manifests (`cas`) and the tag index (`tags`).
//! Layout under the configured root:
//! ```text
//! blobs/sha256/ab/abcdef...          verified content, visible only after verify + fsync + rename
//! tmp/                               writes in progress; emptied at start
//! tags/<upstream>/<repo>/_tags/<tag> JSON tag record (digest, media type, checked_at)
//! pins.json                          digests exempt from eviction (with their references)
//! ```
//! Paths are built only from validated names, tags and digest hex. No network I/O here.

mod cas;
mod evict;
mod index;
mod pins;
mod tags;

pub use cas::{BlobStore, TempFile};
pub use evict::{free_space, EvictReport, Evictor, Limits};
pub use index::{Entry, ReadGuard, StoreIndex};
pub use pins::{Pin, Pins};
pub use tags::{TagEntry, TagRecord, TagStore};

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file system failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}
