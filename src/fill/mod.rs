//! Single-flight blob fills. The first miss for a digest starts one fill task that owns the
//! upstream GET; a writer thread writes the bytes into a temp file while hashing and publishes
//! how many are written through a `watch` channel. Every request for the digest, the first
//! included, reads the temp file with its own positional reads up to the published length, at
//! its own pace, so a slow or vanished client never slows or cancels the fill. Once the digest
//! checks out the fill publishes `Verified` (readers may finish), then fsyncs and renames the
//! file into the store. On any failure the temp file is removed and every reader's stream ends
//! with an error. No HTTP response types here.

mod fetch;
mod reader;

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use reader::{read_file, CHUNK};

use crate::error::Error;
use crate::metrics::Metrics;
use crate::oci::{Digest, RepoName};
use crate::store::{BlobStore, Evictor, TempFile};
use crate::upstream::Upstream;

/// Where a fill stands, as seen by its readers.
#[derive(Debug, Clone)]
pub enum Progress {
    /// Waiting for the upstream's response headers.
    Connecting,
    /// Bytes `0..written` are in the temp file; `total` is the size if the upstream said.
    Streaming {
        /// Bytes written so far (a prefix of the blob).
        written: u64,
        /// Expected size.
        total: Option<u64>,
    },
    /// Every byte is written and matches the digest; the commit to the store follows.
    Verified {
        /// The blob size.
        size: u64,
    },
    /// Failed; nothing was stored.
    Failed(Arc<Error>),
}

/// A fill in progress that readers can follow.
pub struct Fill {
    file: Arc<File>,
    progress: watch::Receiver<Progress>,
}

impl Fill {
    /// Wait until the size is known (or the fill failed before any byte).
    pub async fn wait_started(&self) -> Result<Option<u64>, Error> {
        let mut rx = self.progress.clone();
        loop {
            match &*rx.borrow_and_update() {
                Progress::Connecting => {}
                Progress::Streaming { total, .. } => return Ok(*total),
                Progress::Verified { size } => return Ok(Some(*size)),
                Progress::Failed(e) => return Err(Error::Shared(e.clone())),
            }
            if rx.changed().await.is_err() {
                return Err(Error::Store(
                    io::Error::other("fill task ended without a result").into(),
                ));
            }
        }
    }

    /// Stream `start..start+len` (or to the end when `len` is `None`) as the fill writes it.
    pub fn read(&self, start: u64, len: Option<u64>) -> mpsc::Receiver<io::Result<Bytes>> {
        read_file(self.file.clone(), start, len, Some(self.progress.clone()), None)
    }
}

/// What a blob request should read from.
pub enum Source {
    /// The blob was committed while we looked; open it from the store.
    Committed,
    /// Follow this fill; `joined` is true when another request started it.
    Fill {
        /// The fill.
        fill: Arc<Fill>,
        /// Whether the request joined an existing fill.
        joined: bool,
    },
}

/// The in-flight fills, keyed by digest. Cheap to clone.
#[derive(Clone)]
pub struct Fills {
    // A std Mutex: held only to look up or insert, never across an await.
    inflight: Arc<Mutex<HashMap<Digest, Arc<Fill>>>>,
    store: BlobStore,
    evictor: Arc<Evictor>,
    metrics: Arc<Metrics>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Fills {
    /// Fills writing into the evictor's store; tasks are tracked by `tasks` and stop on
    /// `shutdown`.
    pub fn new(evictor: Arc<Evictor>, metrics: Arc<Metrics>, tasks: TaskTracker, shutdown: CancellationToken) -> Fills {
        let store = evictor.store().clone();
        Fills {
            inflight: Arc::default(),
            store,
            evictor,
            metrics,
            tasks,
            shutdown,
        }
    }

    /// Join the fill for `digest`, or start one fetching it from `upstream` under `repo`.
    pub fn start_or_join(&self, upstream: Arc<Upstream>, repo: RepoName, digest: &Digest) -> Result<Source, Error> {
        let mut map = self.inflight.lock().expect("fill map lock is never poisoned");
        if let Some(fill) = map.get(digest) {
            self.metrics.record_coalesced("blob", upstream.name());
            return Ok(Source::Fill {
                fill: fill.clone(),
                joined: true,
            });
        }
        // A fill that finished between the caller's store lookup and this lock.
        if self.store.contains(digest) {
            return Ok(Source::Committed);
        }
        let tmp = self.store.create_temp()?;
        let file = Arc::new(tmp.file().try_clone().map_err(crate::store::Error::from)?);
        let (tx, rx) = watch::channel(Progress::Connecting);
        let fill = Arc::new(Fill {
            file: file.clone(),
            progress: rx,
        });
        map.insert(digest.clone(), fill.clone());
        drop(map);
        let this = self.clone();
        let digest = digest.clone();
        self.tasks
            .spawn(async move { this.run(upstream, repo, digest, tmp, file, tx).await });
        Ok(Source::Fill { fill, joined: false })
    }

    async fn run(
        self,
        upstream: Arc<Upstream>,
        repo: RepoName,
        digest: Digest,
        tmp: TempFile,
        file: Arc<File>,
        tx: watch::Sender<Progress>,
    ) {
        let gauge = self.metrics.inflight_fills.with_label_values(&[upstream.name()]);
        gauge.inc();
        let mut reserved = None;
        let fetched = tokio::select! {
            r = fetch::fetch(&self, &upstream, &repo, &digest, &file, &tx, &mut reserved) => r,
            _ = self.shutdown.cancelled() => Err(Error::Store(io::Error::other("shutting down").into())),
        };
        match fetched {
            Ok(size) => {
                // Readers may finish now: the bytes are verified. Durability comes next.
                let _ = tx.send(Progress::Verified { size });
                let (store, d) = (self.store.clone(), digest.clone());
                let committed = tokio::task::spawn_blocking(move || store.commit(tmp, &d)).await;
                if let Err(e) = committed
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()))
                {
                    self.failed(&upstream, &repo, &digest, "store", &e);
                }
                self.release(reserved).await;
                // Leave after the commit: a request arriving now finds the committed file.
                self.leave(&digest);
            }
            Err(e) => {
                drop(tmp);
                let reason = match &e {
                    Error::BadContent { .. } => "digest_mismatch",
                    Error::Store(_) => "store",
                    Error::Uncacheable => "uncacheable",
                    _ => "fetch",
                };
                self.failed(&upstream, &repo, &digest, reason, &e.to_string());
                self.release(reserved).await;
                // Leave before telling readers, so a client retrying at once starts afresh.
                self.leave(&digest);
                let _ = tx.send(Progress::Failed(e.shared()));
            }
        }
        gauge.dec();
    }

    fn leave(&self, digest: &Digest) {
        self.inflight
            .lock()
            .expect("fill map lock is never poisoned")
            .remove(digest);
    }

    async fn release(&self, reserved: Option<u64>) {
        match reserved {
            Some(n) => self.store.index().release(n),
            // The size was unknown up front: get back under the budget now.
            None => {
                let _ = self.evictor.reserve(0).await;
            }
        }
    }

    fn failed(&self, upstream: &Upstream, repo: &RepoName, digest: &Digest, reason: &str, error: &str) {
        self.metrics.record_upstream_error(upstream.name(), reason);
        tracing::warn!(upstream = upstream.name(), repo = %repo, digest = %digest, error, "blob fill failed");
    }
}
