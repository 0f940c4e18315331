//! The in-memory index of committed content: size, last access and open readers per digest,
//! and the byte totals eviction works from. Built by scanning `blobs/` at start, with each
//! file's mtime as its last access; accesses are written back to the mtime at most once a
//! minute per object, so recency survives restarts without a write per request.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::oci::Digest;

/// How stale a persisted access time may get.
const PERSIST_EVERY: Duration = Duration::from_secs(60);

/// One committed object.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Bytes on disk.
    pub size: u64,
    /// Last time it was served (or committed).
    pub last_access: SystemTime,
    persisted: SystemTime,
    readers: u32,
    /// Hashed by this process (committed by a fill, or checked since start).
    verified: bool,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<Digest, Entry>,
    used: u64,
    reserved: u64,
}

/// Shared index. All sections are short map operations under a std Mutex; no I/O under it.
#[derive(Debug, Default)]
pub struct StoreIndex {
    inner: Mutex<Inner>,
}

/// Keeps an object off the eviction list while a response reads it.
pub struct ReadGuard {
    index: Arc<StoreIndex>,
    digest: Digest,
}

impl Drop for ReadGuard {
    fn drop(&mut self) {
        if let Some(e) = self.index.lock().entries.get_mut(&self.digest) {
            e.readers = e.readers.saturating_sub(1);
        }
    }
}

impl StoreIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Build from `blobs/<alg>/<xx>/<hex>`; files whose names are not digests are ignored.
    pub fn scan(blobs: &Path) -> std::io::Result<StoreIndex> {
        let mut inner = Inner::default();
        for alg in read_dir_or_empty(blobs)? {
            let alg_name = alg.file_name().to_string_lossy().into_owned();
            for shard in read_dir_or_empty(&alg.path())? {
                for f in read_dir_or_empty(&shard.path())? {
                    let Ok(digest) = format!("{alg_name}:{}", f.file_name().to_string_lossy()).parse::<Digest>() else {
                        continue;
                    };
                    let Ok(meta) = f.metadata() else { continue };
                    if !meta.is_file() {
                        continue;
                    }
                    let t = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    inner.used += meta.len();
                    inner.entries.insert(
                        digest,
                        Entry {
                            size: meta.len(),
                            last_access: t,
                            persisted: t,
                            readers: 0,
                            verified: false,
                        },
                    );
                }
            }
        }
        Ok(StoreIndex {
            inner: Mutex::new(inner),
        })
    }

    /// Record newly committed content.
    pub fn insert(&self, digest: &Digest, size: u64) {
        self.insert_reserved(digest, size, 0);
    }

    /// Record newly committed content that `reserved` bytes were held for, releasing them
    /// under the same lock.
    pub fn insert_reserved(&self, digest: &Digest, size: u64, reserved: u64) {
        let now = SystemTime::now();
        let mut g = self.lock();
        g.reserved = g.reserved.saturating_sub(reserved);
        let old = g.entries.insert(
            digest.clone(),
            Entry {
                size,
                last_access: now,
                persisted: now,
                readers: 0,
                verified: true,
            },
        );
        g.used = g.used - old.map_or(0, |e| e.size) + size;
    }

    /// Forget an object; returns its entry.
    pub fn remove(&self, digest: &Digest) -> Option<Entry> {
        let mut g = self.lock();
        let e = g.entries.remove(digest)?;
        g.used -= e.size;
        Some(e)
    }

    /// Note an access. Returns true when the access time should be written to the file now.
    pub fn touch(&self, digest: &Digest) -> bool {
        let now = SystemTime::now();
        let mut g = self.lock();
        let Some(e) = g.entries.get_mut(digest) else {
            return false;
        };
        e.last_access = now;
        if now.duration_since(e.persisted).unwrap_or_default() >= PERSIST_EVERY {
            e.persisted = now;
            return true;
        }
        false
    }

    /// Whether the object is committed (in memory; no disk access).
    pub fn contains(&self, digest: &Digest) -> bool {
        self.lock().entries.contains_key(digest)
    }

    /// Whether the object was hashed since this process started (unknown objects: false).
    pub fn is_verified(&self, digest: &Digest) -> bool {
        self.lock().entries.get(digest).is_some_and(|e| e.verified)
    }

    /// Record that the object's content was checked.
    pub fn set_verified(&self, digest: &Digest) {
        if let Some(e) = self.lock().entries.get_mut(digest) {
            e.verified = true;
        }
    }

    /// Protect `digest` from eviction until the guard drops.
    pub fn read_guard(self: &Arc<Self>, digest: &Digest) -> ReadGuard {
        if let Some(e) = self.lock().entries.get_mut(digest) {
            e.readers += 1;
        }
        ReadGuard {
            index: self.clone(),
            digest: digest.clone(),
        }
    }

    /// Bytes committed plus bytes reserved by fills in progress.
    pub fn used(&self) -> u64 {
        let g = self.lock();
        g.used + g.reserved
    }

    /// Number of committed objects.
    pub fn objects(&self) -> usize {
        self.lock().entries.len()
    }

    /// Hold `n` bytes for a fill in progress.
    pub fn reserve(&self, n: u64) {
        self.lock().reserved += n;
    }

    /// Give back a reservation.
    pub fn release(&self, n: u64) {
        let mut g = self.lock();
        g.reserved = g.reserved.saturating_sub(n);
    }

    /// Objects nobody is reading, least recently used first.
    pub fn eviction_candidates(&self) -> Vec<(Digest, u64)> {
        let g = self.lock();
        let mut v: Vec<(&Digest, &Entry)> = g.entries.iter().filter(|(_, e)| e.readers == 0).collect();
        v.sort_by_key(|(_, e)| e.last_access);
        v.into_iter().map(|(d, e)| (d.clone(), e.size)).collect()
    }

    /// A snapshot of every entry (for `cache` commands).
    pub fn entries(&self) -> Vec<(Digest, Entry)> {
        self.lock()
            .entries
            .iter()
            .map(|(d, e)| (d.clone(), e.clone()))
            .collect()
    }
}

fn read_dir_or_empty(p: &Path) -> std::io::Result<Vec<fs::DirEntry>> {
    match fs::read_dir(p) {
        Ok(rd) => rd.collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Algorithm;

    #[test]
    fn a_commit_swaps_its_reservation_for_committed_bytes_in_one_step() {
        let idx = StoreIndex::default();
        let (a, b) = (Digest::of(Algorithm::Sha256, b"a"), Digest::of(Algorithm::Sha256, b"b"));
        idx.reserve(100);
        idx.insert_reserved(&a, 100, 100);
        assert_eq!(idx.used(), 100, "counted once, never reserved and committed at once");
        idx.reserve(50);
        idx.insert(&b, 50);
        assert_eq!(idx.used(), 200, "a plain insert leaves the reservation to its owner");
        idx.release(50);
        assert_eq!(idx.used(), 150);
    }

    #[test]
    fn candidates_are_lru_and_skip_objects_being_read() {
        let idx = Arc::new(StoreIndex::default());
        let (a, b, c) = (
            Digest::of(Algorithm::Sha256, b"a"),
            Digest::of(Algorithm::Sha256, b"b"),
            Digest::of(Algorithm::Sha256, b"c"),
        );
        idx.insert(&a, 10);
        std::thread::sleep(Duration::from_millis(5));
        idx.insert(&b, 20);
        std::thread::sleep(Duration::from_millis(5));
        idx.insert(&c, 30);
        idx.touch(&a);
        assert_eq!(idx.used(), 60);
        let order: Vec<Digest> = idx.eviction_candidates().into_iter().map(|(d, _)| d).collect();
        assert_eq!(
            order,
            vec![b.clone(), c.clone(), a.clone()],
            "least recently used first"
        );
        let guard = idx.read_guard(&b);
        assert!(
            !idx.eviction_candidates().iter().any(|(d, _)| *d == b),
            "read objects are not evictable"
        );
        drop(guard);
        assert!(idx.eviction_candidates().iter().any(|(d, _)| *d == b));
        idx.reserve(5);
        assert_eq!(idx.used(), 65);
        idx.release(5);
        idx.remove(&c);
        assert_eq!((idx.used(), idx.objects()), (30, 2));
    }
}
