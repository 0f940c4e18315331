//! Keeping the shared tier under `max_size`: one pass lists the content and the `used/`
//! markers, and deletes the least recently used content (with its manifest type and marker)
//! until the tier is at `target_ratio` of the cap. Run by one replica at a time (the caller
//! decides who leads); a pass that races a fill deletes only what it listed, and content
//! deleted under a reader or a tag heals from the upstream on its next request.

use std::collections::HashMap;
use std::time::SystemTime;

use futures_util::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt};

use super::{SharedError, SharedStore};
use crate::oci::Digest;

/// What one pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SharedEviction {
    /// Objects deleted.
    pub objects: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Bytes held before the pass.
    pub held: u64,
}

impl SharedStore {
    /// Bring the tier under `max` bytes (down to `target` bytes) if it is over it.
    pub async fn evict(&self, max: u64, target: u64) -> Result<SharedEviction, SharedError> {
        let content = self.listing("blobs/sha256").await?;
        let held: u64 = content.values().map(|(size, _)| size).sum();
        let mut pass = SharedEviction {
            held,
            ..SharedEviction::default()
        };
        if held <= max {
            return Ok(pass);
        }
        let used = self.listing("used/sha256").await?;
        let mut order: Vec<(SystemTime, String, u64)> = content
            .into_iter()
            .map(|(hex, (size, stored))| {
                let last = used.get(&hex).map_or(stored, |(_, t)| (*t).max(stored));
                (last, hex, size)
            })
            .collect();
        order.sort();
        let mut left = held;
        for (_, hex, size) in order {
            if left <= target {
                break;
            }
            let Ok(d) = format!("sha256:{hex}").parse::<Digest>() else {
                continue;
            };
            self.store.delete(&self.blob_key(&d)).await?;
            let _ = self.store.delete(&self.type_key(&d)).await;
            let _ = self.store.delete(&self.used_key(&d)).await;
            self.marked.invalidate(&d);
            left -= size;
            pass.objects += 1;
            pass.bytes += size;
        }
        Ok(pass)
    }

    /// Every object under `dir` (relative to the prefix), by its last path component: size
    /// and last modification.
    async fn listing(&self, dir: &str) -> Result<HashMap<String, (u64, SystemTime)>, SharedError> {
        let prefix = self.key(dir);
        let mut out = HashMap::new();
        let mut objects = self.store.list(Some(&prefix));
        while let Some(meta) = objects.next().await {
            let meta = meta?;
            if let Some(name) = meta.location.filename() {
                out.insert(name.to_string(), (meta.size, SystemTime::from(meta.last_modified)));
            }
        }
        Ok(out)
    }
}
