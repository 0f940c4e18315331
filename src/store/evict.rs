//! Keeping the store inside its budget: `max_size` and `min_free_space`. Before content is
//! written, `make_room` evicts least recently used objects down to the low-water mark and
//! reserves the incoming bytes, so the store stays under the cap on disk at every moment.
//! Never evicted: objects being read (readers keep their file open anyway), fills in progress
//! (they are not in the index yet), and pinned images with everything they reference. Evicting
//! a manifest removes the tag records pointing at it, so no tag points at missing bytes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use super::{BlobStore, Error, Pins, TagEntry, TagStore};
use crate::metrics::Metrics;
use crate::oci::{reachable, Digest, MAX_MANIFEST_BYTES};

/// The configured budget.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most bytes the store may hold.
    pub max_size: Option<u64>,
    /// Least free space to leave on the file system.
    pub min_free_space: Option<u64>,
    /// When evicting, go down to this fraction of `max_size` (hysteresis).
    pub target_ratio: f64,
}

/// What one eviction pass removed.
#[derive(Debug, Clone, Default)]
pub struct EvictReport {
    /// `size` or `free_space`.
    pub reason: &'static str,
    /// Objects removed.
    pub evicted: Vec<Digest>,
    /// Bytes removed.
    pub bytes: u64,
    /// Tag records removed with their manifests.
    pub tags_removed: Vec<TagEntry>,
}

/// Runs eviction passes; one at a time.
#[derive(Debug)]
pub struct Evictor {
    store: BlobStore,
    tags: TagStore,
    pins: Pins,
    limits: Limits,
    metrics: Arc<Metrics>,
    // A std Mutex: a pass is blocking file work, always run off the async threads.
    pass: Mutex<()>,
}

/// Bytes of free space on the file system holding `path`, for unprivileged users.
pub fn free_space(path: &std::path::Path) -> Option<u64> {
    let s = rustix::fs::statvfs(path).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

impl Evictor {
    /// An evictor for the store at `store.root()`.
    pub fn new(store: BlobStore, limits: Limits, metrics: Arc<Metrics>) -> Evictor {
        let root = store.root().to_path_buf();
        Evictor {
            tags: TagStore::new(&root),
            pins: Pins::new(&root),
            store,
            limits,
            metrics,
            pass: Mutex::new(()),
        }
    }

    /// The store this evictor manages.
    pub fn store(&self) -> &BlobStore {
        &self.store
    }

    /// The budget.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Make room for `n` incoming bytes (evicting if needed, off the async threads) and
    /// reserve them; the caller releases the reservation with `store().index().release(n)`
    /// once the bytes are committed or dropped. `Ok(false)`: the object cannot be stored (over
    /// `max_size`, or the disk is too full even after eviction); nothing is reserved then.
    /// `reserve(0)` just runs the budget check and refreshes the storage gauges.
    pub async fn reserve(self: &Arc<Self>, n: u64) -> Result<bool, Error> {
        if !self.fits(n) {
            return Ok(false);
        }
        let ev = self.clone();
        let blocking = move || Ok::<_, Error>((ev.make_room(n)?, free_space(ev.store.root())));
        let (report, free) = tokio::task::spawn_blocking(blocking)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))??;
        if let Some(r) = report {
            tracing::info!(
                reason = r.reason,
                objects = r.evicted.len(),
                bytes = r.bytes,
                tags = r.tags_removed.len(),
                "evicted"
            );
            self.metrics.record_eviction(r.reason, r.evicted.len(), r.bytes);
        }
        let index = self.store.index();
        self.metrics
            .record_storage(index.used(), self.limits.max_size, free, index.objects());
        if free.is_some_and(|f| f < n) {
            index.release(n);
            return Ok(false);
        }
        Ok(true)
    }

    /// Whether an object of `n` bytes can be stored at all.
    pub fn fits(&self, n: u64) -> bool {
        self.limits.max_size.is_none_or(|m| n <= m)
    }

    /// Evict as needed so that `incoming` more bytes fit, then reserve them (release with
    /// `store.index().release`). Blocking: call from `spawn_blocking`.
    pub fn make_room(&self, incoming: u64) -> Result<Option<EvictReport>, Error> {
        let _pass = self.pass.lock().unwrap_or_else(|p| p.into_inner());
        let index = self.store.index();
        let mut need = 0u64;
        let mut reason = "size";
        if let Some(max) = self.limits.max_size {
            let used = index.used();
            if used + incoming > max {
                let low_water = (max as f64 * self.limits.target_ratio) as u64;
                need = (used + incoming).saturating_sub(low_water.max(incoming).min(max));
            }
        }
        if let Some(min_free) = self.limits.min_free_space {
            if let Some(free) = free_space(self.store.root()) {
                if free < min_free + incoming {
                    let more = min_free + incoming - free + min_free / 10;
                    if more > need {
                        need = more;
                        reason = "free_space";
                    }
                }
            }
        }
        index.reserve(incoming);
        if need == 0 {
            return Ok(None);
        }
        let protected = self.protected()?;
        let mut by_manifest: Option<HashMap<Digest, Vec<TagEntry>>> = None;
        let mut report = EvictReport {
            reason,
            ..EvictReport::default()
        };
        for (digest, size) in index.eviction_candidates() {
            if report.bytes >= need {
                break;
            }
            if protected.contains(&digest) {
                continue;
            }
            // Tags first: a crash between the two steps leaves an orphan blob, never a tag
            // pointing at nothing.
            let tags = by_manifest.get_or_insert_with(|| self.tags_by_digest());
            for t in tags.remove(&digest).unwrap_or_default() {
                self.tags.remove(&t.upstream, &t.repo, &t.tag)?;
                report.tags_removed.push(t);
            }
            self.store.remove(&digest)?;
            report.bytes += size;
            report.evicted.push(digest);
        }
        if report.bytes < need {
            tracing::warn!(
                need,
                freed = report.bytes,
                "store budget cannot be met: everything left is pinned or in use"
            );
        }
        Ok(Some(report))
    }

    fn tags_by_digest(&self) -> HashMap<Digest, Vec<TagEntry>> {
        let mut map: HashMap<Digest, Vec<TagEntry>> = HashMap::new();
        for t in self.tags.all().unwrap_or_default() {
            map.entry(t.record.digest.clone()).or_default().push(t);
        }
        map
    }

    /// Pinned manifests and everything they reference (config, layers, index children).
    fn protected(&self) -> Result<HashSet<Digest>, Error> {
        reachable(self.pins.digests()?, |d| {
            self.store.load_verified(d, MAX_MANIFEST_BYTES as u64)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::{Algorithm, MediaType, Tag};
    use crate::store::{Pin, TagRecord};

    fn put(store: &BlobStore, bytes: &[u8]) -> Digest {
        let d = Digest::of(Algorithm::Sha256, bytes);
        store.store_bytes(&d, bytes).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(3));
        d
    }

    #[test]
    fn eviction_keeps_the_cap_and_spares_pins_readers_and_tags_consistency() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let limits = Limits {
            max_size: Some(1000),
            min_free_space: None,
            target_ratio: 0.5,
        };
        let ev = Evictor::new(store.clone(), limits, Arc::new(Metrics::new()));
        let layer = put(&store, &[1u8; 300]);
        let man_json = format!("{{\"schemaVersion\":2,\"config\":{{\"digest\":\"{layer}\"}},\"layers\":[]}}");
        let manifest = put(&store, man_json.as_bytes());
        let pinned_layer = put(&store, &[2u8; 200]);
        let pinned = put(
            &store,
            format!("{{\"schemaVersion\":2,\"config\":{{}},\"layers\":[{{\"digest\":\"{pinned_layer}\"}}]}}")
                .as_bytes(),
        );
        Pins::new(dir.path())
            .add(Pin {
                reference: "x:1".into(),
                digest: pinned.to_string(),
            })
            .unwrap();
        let read = put(&store, &[3u8; 250]);
        let _guard = store.read_guard(&read);
        let tags = TagStore::new(dir.path());
        let (repo, tag) = ("library/a".parse().unwrap(), "v1".parse::<Tag>().unwrap());
        let rec = TagRecord {
            digest: manifest.clone(),
            media_type: MediaType::new("application/vnd.oci.image.manifest.v1+json"),
            checked_at: std::time::SystemTime::now(),
        };
        tags.save("hub", &repo, &tag, &rec).unwrap();

        let report = ev.make_room(400).unwrap().expect("over the cap: evicts");
        store.index().release(400);
        assert_eq!(report.reason, "size");
        assert!(
            report.evicted.contains(&layer) && report.evicted.contains(&manifest),
            "LRU first: {report:?}"
        );
        assert!(
            !report.evicted.contains(&pinned) && !report.evicted.contains(&pinned_layer),
            "pins and what they reference stay"
        );
        assert!(!report.evicted.contains(&read), "objects being read stay");
        assert!(store.index().used() + 400 <= 1000);
        assert_eq!(
            tags.load("hub", &repo, &tag).unwrap(),
            None,
            "the tag went with its manifest"
        );
        assert_eq!(report.tags_removed.len(), 1);
        assert!(ev.make_room(10).unwrap().is_none(), "under the cap: nothing to do");
        store.index().release(10);
        assert!(!ev.fits(1001) && ev.fits(1000));
    }
}
