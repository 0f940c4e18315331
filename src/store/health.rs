//! Whether the store can take a fill now, for `/readyz` and `berth_storage_writable`. The
//! check does what a fill does: create a file under `tmp/`, write [`PROBE_BYTES`] and fsync
//! it, so a full file system (where creating an empty file still succeeds) or a read-only
//! one fails it. It runs on a timer and at once after any failed store write, which callers
//! report with [`StoreHealth::write_failed`] (counted in
//! `berth_storage_write_failures_total{kind}`). Logs state changes only, never one line per
//! failed write. Never decides how a request is answered: a failed write is not fatal to one.

use std::fmt::Display;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{BlobStore, Error};
use crate::metrics::Metrics;

/// Bytes the check writes (and fsyncs): a fill's first chunk, not just an inode.
pub const PROBE_BYTES: usize = 64 << 10;
/// How often the check runs while the store cannot be written, so readiness comes back soon.
const RECHECK_WHILE_FAILING: Duration = Duration::from_secs(1);

/// The store's writability. Shared; cheap to call from any task.
#[derive(Debug)]
pub struct StoreHealth {
    disk: BlobStore,
    metrics: Arc<Metrics>,
    /// Why the store cannot be written; `None` while it can.
    problem: Mutex<Option<String>>,
    recheck: Notify,
}

impl StoreHealth {
    /// Health of the local disk `disk`, assumed writable until a check says otherwise.
    pub fn new(disk: BlobStore, metrics: Arc<Metrics>) -> StoreHealth {
        metrics.record_storage_writable(true);
        StoreHealth {
            disk,
            metrics,
            problem: Mutex::new(None),
            recheck: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.problem.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why the store cannot be written, or `None` if it can.
    pub fn problem(&self) -> Option<String> {
        self.lock().clone()
    }

    /// A write of `kind` (`manifest`, `tag`, `blob`) failed: count it and check the store now.
    /// The caller answers its request without caching.
    pub fn write_failed(&self, kind: &str, e: &dyn Display) {
        tracing::debug!(kind, error = %e, "store write failed: answering without caching");
        self.metrics.record_store_write_failure(kind);
        self.recheck.notify_one();
    }

    /// Run the check now (blocking: call off the async threads) and publish the result.
    pub fn check(&self) {
        let problem = self.disk.probe_write(PROBE_BYTES).err().map(|e| describe(&e));
        self.metrics.record_storage_writable(problem.is_none());
        let mut current = self.lock();
        match (&*current, &problem) {
            (Some(_), None) => tracing::info!("store is writable again: ready"),
            (None, Some(p)) => {
                tracing::error!(reason = %p, "store cannot be written: not ready; serving without caching")
            }
            (Some(old), Some(p)) if old != p => tracing::error!(reason = %p, "store still cannot be written"),
            _ => {}
        }
        *current = problem;
    }

    /// Check every `every` (every second while failing) and after each failed write, until
    /// `shutdown`.
    pub async fn watch(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        loop {
            let this = self.clone();
            if tokio::task::spawn_blocking(move || this.check()).await.is_err() {
                tracing::error!("store check task failed");
            }
            let wait = match self.problem() {
                Some(_) => every.min(RECHECK_WHILE_FAILING),
                None => every,
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.recheck.notified() => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

/// The reason shown on `/readyz`: what is wrong, without paths.
fn describe(e: &Error) -> String {
    let io = match e {
        Error::Io(io) => io,
        other => return format!("store cannot be written: {other}"),
    };
    match io.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => "store is full: no space left for a write".into(),
        io::ErrorKind::ReadOnlyFilesystem => "store is on a read-only file system".into(),
        io::ErrorKind::PermissionDenied => "store cannot be written: permission denied".into(),
        _ => format!("store cannot be written: {io}"),
    }
}
