//! Content-addressed storage on local disk. Writers stream into a [`Spool`] under
//! `tmp/<random>` that hashes what is written; only a [`VerifiedSpool`] is committed: fsync,
//! rename into `blobs/<alg>/<ab>/<hex>`, fsync the directory, so a final path always holds
//! exactly the bytes of its digest. Blocking file I/O: async callers go through the
//! [`ContentStore`](super::ContentStore) impl in `local.rs`, which runs it off the async
//! threads.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::Semaphore;

use super::index::{ReadGuard, StoreIndex};
use super::spool::TempFile;
use super::{atomic, Error, LinkStore, ManifestTypes, Spool, TagStore, VerifiedSpool};
use crate::oci::Digest;

/// Blocking calls on one store at once from the async side. A burst of a thousand cache hits
/// queues for these rather than starting a blocking-pool thread each: tokio's pool would grow
/// to hundreds of threads, each with its stack and allocator cache, kept for 10 s after.
const CONCURRENT_OPS: usize = 32;

/// Handle to the store root, its index and its tag records. Cheap to clone.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
    index: Arc<StoreIndex>,
    tags: TagStore,
    links: LinkStore,
    manifest_types: ManifestTypes,
    /// Blocking calls the async side (`local.rs`) may run at once.
    ops: Arc<Semaphore>,
}

impl BlobStore {
    /// Open (creating) the store at `root` for the server: remove leftover temp files (a
    /// crash's partial writes) and index the committed content.
    pub fn open(root: &Path) -> Result<BlobStore, Error> {
        for dir in ["blobs", "tmp", "tags"] {
            fs::create_dir_all(root.join(dir))?;
        }
        for entry in fs::read_dir(root.join("tmp"))? {
            let path = entry?.path();
            if path.is_dir() {
                fs::remove_dir_all(&path)?;
            } else {
                fs::remove_file(&path)?;
            }
        }
        Self::attach(root)
    }

    /// Index an existing store without touching `tmp/`: safe beside a running server. A
    /// directory without `blobs/` is not a store.
    pub fn attach(root: &Path) -> Result<BlobStore, Error> {
        if !root.join("blobs").is_dir() {
            return Err(Error::NotAStore(root.to_path_buf()));
        }
        let index = StoreIndex::scan(&root.join("blobs"))?;
        Ok(BlobStore {
            root: root.to_path_buf(),
            index: Arc::new(index),
            tags: TagStore::new(root),
            links: LinkStore::new(root),
            manifest_types: ManifestTypes::new(root),
            ops: Arc::new(Semaphore::new(CONCURRENT_OPS)),
        })
    }

    /// Permits for the blocking calls the async side runs on this store.
    pub(super) fn ops(&self) -> &Arc<Semaphore> {
        &self.ops
    }

    /// The tag records of this store.
    pub fn tags(&self) -> &TagStore {
        &self.tags
    }

    /// The repository links.
    pub fn links(&self) -> &LinkStore {
        &self.links
    }

    /// Which committed objects are manifests, and of which type.
    pub fn manifest_types(&self) -> &ManifestTypes {
        &self.manifest_types
    }

    /// The index of committed content.
    pub fn index(&self) -> &Arc<StoreIndex> {
        &self.index
    }

    /// Keep `digest` off the eviction list while the guard lives.
    pub fn read_guard(&self, digest: &Digest) -> ReadGuard {
        self.index.read_guard(digest)
    }

    /// Note an access (for LRU); writes it to the file's mtime at most once a minute.
    pub fn touch(&self, digest: &Digest, file: Option<&File>) {
        if !self.index.touch(digest) {
            return;
        }
        let now = SystemTime::now();
        let _ = match file {
            Some(f) => f.set_modified(now),
            None => File::open(self.blob_path(digest)).and_then(|f| f.set_modified(now)),
        };
    }

    /// The store root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the verified content of `digest` lives.
    fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root
            .join("blobs")
            .join(digest.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }

    /// Open committed content for reading: the file and its size, or `None` if absent.
    pub(super) fn open_blob(&self, digest: &Digest) -> Result<Option<(File, u64)>, Error> {
        match File::open(self.blob_path(digest)) {
            Ok(f) => {
                let len = f.metadata()?.len();
                self.touch(digest, Some(&f));
                Ok(Some((f, len)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.index.remove(digest);
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Whether committed content exists for `digest`.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// A new spool for content expected to hash to `expected`, on the store's file system (so
    /// the commit rename is atomic).
    pub fn spool(&self, expected: &Digest) -> Result<Spool, Error> {
        Ok(Spool::new(self.create_temp()?, expected))
    }

    /// Whether a fill could be written now: create a temp file, write `n` bytes and fsync
    /// them (the file is removed again). Fails on a full or read-only file system.
    pub fn probe_write(&self, n: usize) -> Result<(), Error> {
        let tmp = self.create_temp()?;
        tmp.file.write_all_at(&vec![0u8; n], 0)?;
        tmp.file.sync_all()?;
        Ok(())
    }

    fn create_temp(&self) -> Result<TempFile, Error> {
        let path = self
            .root
            .join("tmp")
            .join(format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)));
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        Ok(TempFile {
            path,
            file: Arc::new(file),
            committed: false,
        })
    }

    /// Make verified content visible under its digest: fsync, rename, fsync the directory.
    /// A reservation the spool holds becomes committed bytes in the same index update, or is
    /// given back if the commit fails.
    pub fn commit(&self, spool: VerifiedSpool) -> Result<(), Error> {
        let VerifiedSpool {
            mut tmp,
            digest,
            size,
            reserved,
        } = spool;
        let dest = self.blob_path(&digest);
        let dir = dest.parent().expect("blob paths always have a parent");
        let published = tmp
            .file
            .sync_all()
            .and_then(|()| fs::create_dir_all(dir))
            .and_then(|()| atomic::publish(&tmp.path, &dest));
        if let Err(e) = published {
            self.index.release(reserved);
            return Err(e.into());
        }
        tmp.committed = true;
        self.index.insert_reserved(&digest, size, reserved);
        Ok(())
    }

    /// Spool small content (a manifest) in one step and verify it.
    pub fn spool_bytes(&self, digest: &Digest, bytes: &[u8]) -> Result<VerifiedSpool, Error> {
        let mut spool = self.spool(digest)?;
        spool.write(bytes)?;
        spool.verify().map_err(|actual| Error::Mismatch {
            expected: digest.clone(),
            actual,
        })
    }

    /// Store small content in one step: spool, verify, commit.
    pub fn store_bytes(&self, digest: &Digest, bytes: &[u8]) -> Result<(), Error> {
        self.commit(self.spool_bytes(digest, bytes)?)
    }

    /// Read small content back, re-verifying it: a file that does not match its digest (or is
    /// over `max` bytes) is removed and reported as absent, so it is refetched, never served.
    pub fn load_verified(&self, digest: &Digest, max: u64) -> Result<Option<Bytes>, Error> {
        let Some((file, len)) = self.open_blob(digest)? else {
            return Ok(None);
        };
        if len > max {
            return Ok(None);
        }
        let mut buf = Vec::with_capacity(len as usize);
        file.take(max + 1).read_to_end(&mut buf)?;
        if Digest::of(digest.algorithm(), &buf) != *digest {
            self.remove(digest)?;
            return Ok(None);
        }
        self.index.set_verified(digest);
        Ok(Some(Bytes::from(buf)))
    }

    /// Check content found on disk at start against its digest before its first use: a match
    /// is remembered, a mismatch is removed (so it is refetched, never served). Blocking.
    pub fn verify(&self, digest: &Digest) -> Result<bool, Error> {
        if self.index.is_verified(digest) {
            return Ok(true);
        }
        let mut file = match File::open(self.blob_path(digest)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let mut hasher = digest.hasher();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        if hasher.finish() == *digest {
            self.index.set_verified(digest);
            return Ok(true);
        }
        tracing::warn!(digest = %digest, "stored content does not match its digest: removed");
        self.remove(digest)?;
        Ok(false)
    }

    /// Remove committed content (absent is fine). Open readers keep their descriptors.
    pub fn remove(&self, digest: &Digest) -> Result<(), Error> {
        self.index.remove(digest);
        self.manifest_types.remove(digest)?;
        match fs::remove_file(self.blob_path(digest)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Algorithm;

    #[test]
    fn content_is_visible_only_after_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d = Digest::of(Algorithm::Sha256, b"hello");
        let mut spool = store.spool(&d).unwrap();
        spool.write(b"hello").unwrap();
        assert!(!store.contains(&d), "not visible before commit");
        store.commit(spool.verify().unwrap()).unwrap();
        assert_eq!(store.load_verified(&d, 100).unwrap().unwrap(), &b"hello"[..]);
        assert_eq!(
            fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0,
            "temp file renamed away"
        );
    }

    #[test]
    fn dropped_temp_files_and_leftovers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let spool = store.spool(&Digest::of(Algorithm::Sha256, b"x")).unwrap();
        drop(spool);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        fs::write(dir.path().join("tmp/leftover"), b"x").unwrap();
        BlobStore::open(dir.path()).unwrap();
        assert_eq!(
            fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0,
            "start removes temp files"
        );
    }

    #[test]
    fn unverified_content_is_never_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d = Digest::of(Algorithm::Sha256, b"hello");
        let mut spool = store.spool(&d).unwrap();
        spool.write(b"hellO").unwrap();
        assert_eq!(spool.verify().unwrap_err(), Digest::of(Algorithm::Sha256, b"hellO"));
        assert!(
            !store.contains(&d),
            "a mismatch yields no VerifiedSpool, so nothing to commit"
        );
        assert_eq!(
            fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0,
            "and its file is gone"
        );
        assert!(matches!(store.store_bytes(&d, b"other"), Err(Error::Mismatch { .. })));
    }

    #[test]
    fn blobs_found_at_start_are_verified_before_first_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let good = Digest::of(Algorithm::Sha256, b"good");
        let bad = Digest::of(Algorithm::Sha256, b"bad");
        store.store_bytes(&good, b"good").unwrap();
        store.store_bytes(&bad, b"bad").unwrap();
        fs::write(store.blob_path(&bad), b"rot").unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        assert!(!store.index().is_verified(&good), "unknown after a restart");
        assert!(store.verify(&good).unwrap());
        assert!(store.index().is_verified(&good));
        assert!(!store.verify(&bad).unwrap(), "mismatch is a miss");
        assert!(!store.contains(&bad), "and is removed");
    }

    #[test]
    fn corrupt_content_is_treated_as_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d = Digest::of(Algorithm::Sha256, b"good");
        store.store_bytes(&d, b"good").unwrap();
        fs::write(store.blob_path(&d), b"evil").unwrap();
        assert!(store.load_verified(&d, 100).unwrap().is_none());
        assert!(!store.contains(&d), "corrupt file removed so it is refetched");
    }
}
