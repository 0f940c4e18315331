//! Single-flight blob fills. The first miss for a digest starts one fill task that owns the
//! upstream GET; a writer thread writes the bytes into a spool on the local disk (hashing as
//! it writes) and publishes how many are written through a `watch` channel. Every request for
//! the digest, the first included, reads the spool with its own positional reads up to the
//! published length, at its own pace, so a slow or vanished client never slows or cancels the
//! fill. Once the digest checks out the fill publishes `Verified` (readers may finish), then
//! commits the verified spool to the store. On any failure the spool is removed and every
//! reader's stream ends with an error. The fill's entry in the in-flight map is held by a
//! guard, so a fill that fails or panics never wedges its digest. Sources, in order: the
//! shared tier's verified copy, the replica that owns the digest in a cluster (which runs the
//! cluster's one fill and streams it), the upstream. No HTTP types here besides the peer
//! response body.

mod fetch;

use std::fs::File;
use std::io;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::sendfile::Sink;
use crate::cache_result::Source as Served;
use crate::cluster::Cluster;
use crate::coalesce::{Inflight, Leave};
use crate::error::{Error, Origin};
use crate::metrics::Metrics;
use crate::oci::{Digest, RepoName};
use crate::store::{read_file, BlobStore, ByteStream, ContentStore, Evictor, Follow, SharedStore, StoreHealth};
use crate::upstream::Upstream;

/// Where a fill stands, as seen by its readers.
#[derive(Debug, Clone)]
pub enum Progress {
    /// Creating the spool and waiting for the upstream's response headers.
    Connecting,
    /// Bytes `0..written` are in the spool; `total` is the size if the upstream said.
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
    /// The blob cannot be stored now (store full or read-only, or larger than `max_size`);
    /// nothing was written. Readers stream it from the upstream instead.
    Uncacheable,
    /// Failed; nothing was stored.
    Failed(Arc<Error>),
}

/// How a fill started, as its readers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Bytes are coming; the size if the upstream said.
    Streaming(Option<u64>),
    /// It cannot be stored now: stream it from the upstream without caching.
    Uncacheable,
}

/// What a fill's upstream side ended with, short of a failure.
pub(super) enum Outcome {
    /// Every byte is in the spool and matches the digest.
    Verified(crate::store::VerifiedSpool),
    /// Nothing was written: the blob cannot be stored now.
    Uncacheable,
}

/// A fill in progress that readers can follow.
pub struct Fill {
    /// The upstream it fetches from.
    upstream: String,
    /// The repository it fetches under.
    repo: RepoName,
    /// The spool's file, set by the fill task before it publishes any byte.
    file: OnceLock<Arc<File>>,
    /// Whether the fill may ask the blob's owner replica (a fill started by a peer's request
    /// must not: it would forward again).
    forward: bool,
    /// Where the bytes come from: set before the first byte is published.
    source: Mutex<Served>,
    progress: watch::Receiver<Progress>,
}

/// A reader's view of a fill's progress.
struct Following(watch::Receiver<Progress>);

impl Follow for Following {
    /// How far a reader at `pos` may read now: waits while nothing new is written; returns the
    /// written length, or the final size once verified.
    async fn wait_for(&mut self, pos: u64) -> io::Result<u64> {
        loop {
            match &*self.0.borrow_and_update() {
                Progress::Streaming { written, .. } if *written > pos => return Ok(*written),
                Progress::Verified { size } => return Ok(*size),
                Progress::Failed(e) => return Err(io::Error::other(e.to_string())),
                _ => {}
            }
            if self.0.changed().await.is_err() {
                return Err(io::Error::other("fill ended without a result"));
            }
        }
    }

    async fn wait_verified(&mut self) -> io::Result<()> {
        loop {
            match &*self.0.borrow_and_update() {
                Progress::Verified { .. } => return Ok(()),
                Progress::Failed(e) => return Err(io::Error::other(e.to_string())),
                _ => {}
            }
            if self.0.changed().await.is_err() {
                return Err(io::Error::other("fill ended without a result"));
            }
        }
    }
}

impl Fill {
    /// Wait until the size is known, the blob turned out uncacheable, or the fill failed
    /// before any byte.
    pub async fn wait_started(&self) -> Result<Start, Error> {
        let mut rx = self.progress.clone();
        loop {
            match &*rx.borrow_and_update() {
                Progress::Connecting => {}
                Progress::Streaming { total, .. } => return Ok(Start::Streaming(*total)),
                Progress::Verified { size } => return Ok(Start::Streaming(Some(*size))),
                Progress::Uncacheable => return Ok(Start::Uncacheable),
                Progress::Failed(e) => return Err(Error::Shared(e.clone())),
            }
            if rx.changed().await.is_err() {
                return Err(Error::TaskFailed("blob fill"));
            }
        }
    }

    /// Where the fill's bytes come from: the upstream, the shared tier or the owner replica.
    /// Read after [`Fill::wait_started`]; a source that breaks off later falls back to the
    /// upstream.
    pub fn source(&self) -> Served {
        *self.source.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_source(&self, s: Served) {
        *self.source.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }

    /// Stream `start..start+len` (or to the end when `len` is `None`) as the fill writes it,
    /// through `sendfile` where the connection has it. Call after [`Fill::wait_started`]
    /// succeeded.
    pub fn read(&self, start: u64, len: Option<u64>, sendfile: Option<Sink>) -> ByteStream {
        match self.file.get() {
            Some(file) => read_file(file.clone(), start, len, Following(self.progress.clone()), sendfile),
            None => {
                let (tx, rx) = mpsc::channel(1);
                let _ = tx.try_send(Err(io::Error::other("the fill has not started")));
                rx
            }
        }
    }
}

/// One fill in progress, as the status page shows it.
#[derive(Debug, Clone)]
pub struct FillStatus {
    /// The upstream it fetches from.
    pub upstream: String,
    /// The repository it fetches under.
    pub repo: RepoName,
    /// The blob.
    pub digest: Digest,
    /// Bytes written so far.
    pub written: u64,
    /// The size, when known.
    pub total: Option<u64>,
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
    inflight: Inflight<Digest, Arc<Fill>>,
    /// The local disk: spools and the index of committed content.
    disk: BlobStore,
    /// Where verified content is committed.
    store: Arc<dyn ContentStore>,
    /// The shared tier, asked before the upstream.
    shared: Option<SharedStore>,
    /// The other replicas.
    cluster: Option<Cluster>,
    evictor: Arc<Evictor>,
    health: Arc<StoreHealth>,
    metrics: Arc<Metrics>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Fills {
    /// Fills spooling on the evictor's disk, fetching from the upstream and committing to
    /// `store`, reporting failed writes to `health`; tasks are tracked by `tasks` and stop on
    /// `shutdown`.
    pub fn new(
        evictor: Arc<Evictor>,
        store: Arc<dyn ContentStore>,
        health: Arc<StoreHealth>,
        metrics: Arc<Metrics>,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Fills {
        Fills {
            inflight: Inflight::default(),
            disk: evictor.store().clone(),
            store,
            shared: None,
            cluster: None,
            evictor,
            health,
            metrics,
            tasks,
            shutdown,
        }
    }

    /// These fills, asking the shared tier and then the blob's owner replica before the
    /// upstream.
    pub fn with_sources(self, shared: Option<SharedStore>, cluster: Option<Cluster>) -> Fills {
        Fills {
            shared,
            cluster,
            ..self
        }
    }

    /// The fills in progress and how far each is, largest first.
    pub fn in_progress(&self) -> Vec<FillStatus> {
        let mut all: Vec<FillStatus> = self
            .inflight
            .entries()
            .into_iter()
            .map(|(digest, fill)| {
                let (written, total) = match &*fill.progress.borrow() {
                    Progress::Streaming { written, total } => (*written, *total),
                    Progress::Verified { size } => (*size, Some(*size)),
                    Progress::Connecting | Progress::Uncacheable | Progress::Failed(_) => (0, None),
                };
                FillStatus {
                    upstream: fill.upstream.clone(),
                    repo: fill.repo.clone(),
                    digest,
                    written,
                    total,
                }
            })
            .collect();
        all.sort_by(|a, b| {
            b.total
                .cmp(&a.total)
                .then_with(|| a.digest.to_string().cmp(&b.digest.to_string()))
        });
        all
    }

    /// Join the fill for `digest`, or start one fetching it from `upstream` under `repo`
    /// (asking the blob's owner replica first if `forward`). Touches no disk: the fill task
    /// creates its spool.
    pub fn start_or_join(&self, upstream: Arc<Upstream>, repo: RepoName, digest: &Digest, forward: bool) -> Source {
        let mut sender = None;
        let entry = self.inflight.join_or_start(digest, || {
            // A fill that finished between the caller's store lookup and now.
            if self.disk.index().contains(digest) {
                return None;
            }
            let (tx, rx) = watch::channel(Progress::Connecting);
            sender = Some(tx);
            Some(Arc::new(Fill {
                upstream: upstream.name().to_string(),
                repo: repo.clone(),
                file: OnceLock::new(),
                forward,
                source: Mutex::new(Served::Upstream),
                progress: rx,
            }))
        });
        let Some((fill, leave)) = entry else {
            return Source::Committed;
        };
        let (Some(leave), Some(tx)) = (leave, sender) else {
            self.metrics.record_coalesced("blob", upstream.name());
            return Source::Fill { fill, joined: true };
        };
        let (this, f, digest) = (self.clone(), fill.clone(), digest.clone());
        self.tasks
            .spawn(async move { this.run(upstream, repo, digest, f, tx, leave).await });
        Source::Fill { fill, joined: false }
    }

    async fn run(
        self,
        upstream: Arc<Upstream>,
        repo: RepoName,
        digest: Digest,
        fill: Arc<Fill>,
        tx: watch::Sender<Progress>,
        leave: Leave<Digest, Arc<Fill>>,
    ) {
        let gauge = self.metrics.inflight_fills.with_label_values(&[upstream.name()]);
        gauge.inc();
        let mut reserved = None;
        let fetched = tokio::select! {
            r = fetch::fetch(&self, &upstream, &repo, &digest, &fill, &tx, &mut reserved) => r,
            _ = self.shutdown.cancelled() => Err(Error::ShuttingDown),
        };
        match fetched {
            Ok(Outcome::Verified(verified)) => {
                // Readers may finish now: the bytes are verified. Durability comes next.
                let _ = tx.send(Progress::Verified { size: verified.size() });
                // The commit takes over the reservation (committed bytes and reservation are
                // swapped in one step): a client whose next request arrives mid-commit must
                // not see this blob counted twice and another evicted for it.
                let verified = match reserved {
                    Some(n) => verified.holding_reservation(n),
                    None => verified,
                };
                if let Err(e) = self.store.commit(verified).await {
                    self.health.write_failed("blob", &e);
                }
                if reserved.is_none() {
                    self.release(None).await;
                }
                // Leave after the commit: a request arriving now finds the committed blob.
                drop(leave);
            }
            Ok(Outcome::Uncacheable) => {
                tracing::debug!(upstream = upstream.name(), repo = %repo, digest = %digest, "blob not cached: streamed from upstream");
                self.release(reserved).await;
                drop(leave);
                let _ = tx.send(Progress::Uncacheable);
            }
            Err(e) => {
                self.failed(&upstream, &repo, &digest, &e);
                self.release(reserved).await;
                // Leave before telling readers, so a client retrying at once starts afresh.
                drop(leave);
                let _ = tx.send(Progress::Failed(e.shared()));
            }
        }
        gauge.dec();
    }

    async fn release(&self, reserved: Option<u64>) {
        match reserved {
            Some(n) => self.disk.index().release(n),
            // The size was unknown up front: get back under the budget now.
            None => {
                let _ = self.evictor.reserve(0).await;
            }
        }
    }

    /// Log a failed fill; only the upstream's failures count as upstream errors (a shutdown
    /// or a store write that failed do not).
    fn failed(&self, upstream: &Upstream, repo: &RepoName, digest: &Digest, e: &Error) {
        match e.origin() {
            Origin::Upstream => {
                let reason = match e {
                    Error::BadContent { .. } => "digest_mismatch",
                    _ => "fetch",
                };
                self.metrics.record_upstream_error(upstream.name(), reason);
            }
            _ if matches!(e, Error::Store(_)) => self.health.write_failed("blob", e),
            _ => {}
        }
        if !matches!(e, Error::ShuttingDown) {
            self.metrics
                .activity()
                .record_error(Some(upstream.name()), format!("blob fill {repo}@{digest}: {e}"));
        }
        match e {
            Error::ShuttingDown => {
                tracing::info!(upstream = upstream.name(), repo = %repo, digest = %digest, reason = %e, "blob fill stopped")
            }
            _ => {
                tracing::warn!(upstream = upstream.name(), repo = %repo, digest = %digest, error = %e, "blob fill failed")
            }
        }
    }
}
