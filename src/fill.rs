//! Single-flight blob fills. The first miss for a digest starts one fill task that owns the
//! upstream GET and writes into a temp file while hashing; it publishes how many bytes are
//! written through a `watch` channel. Every request for the digest, the first included, reads
//! the temp file through its own positional reads up to the published length, at its own pace,
//! so a slow or vanished client never slows or cancels the fill. On success the fill verifies,
//! fsyncs and renames the file into the store; on any failure the temp file is removed and every
//! reader's stream ends with an error. A mid-body upstream failure is resumed with `Range`,
//! and the digest is still checked over every byte. No HTTP response types here.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::CONTENT_RANGE;
use http::StatusCode;
use http_body_util::BodyExt;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::reserve_space;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::oci::{Digest, Hasher, RepoName};
use crate::store::{BlobStore, Evictor, ReadGuard, TempFile};
use crate::upstream::{content_length, Upstream};

/// Bytes per read and per disk write; readers hold at most a few of these each.
pub const CHUNK: usize = 256 << 10;
/// Resumed upstream requests per fill after a mid-body failure.
const MAX_RESUMES: u32 = 3;
/// An upstream body that sends nothing for this long is treated as broken (and resumed).
const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a fill stands, as seen by its readers.
#[derive(Debug, Clone)]
pub enum Progress {
    /// Waiting for the upstream's response headers.
    Connecting,
    /// Bytes `0..written` are on disk; `total` is the size if the upstream said.
    Streaming {
        /// Bytes written so far (a prefix of the blob).
        written: u64,
        /// Expected size.
        total: Option<u64>,
    },
    /// Verified and committed.
    Done {
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
                Progress::Done { size } => return Ok(Some(*size)),
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
            self.metrics
                .coalesced
                .with_label_values(&["blob", upstream.name()])
                .inc();
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
        let result = tokio::select! {
            r = self.fetch(&upstream, &repo, &digest, &file, &tx, &mut reserved) => r,
            _ = self.shutdown.cancelled() => Err(Error::Store(io::Error::other("shutting down").into())),
        };
        let result = match result {
            Ok(size) => {
                let store = self.store.clone();
                let d = digest.clone();
                match tokio::task::spawn_blocking(move || store.commit(tmp, &d)).await {
                    Ok(Ok(())) => Ok(size),
                    Ok(Err(e)) => Err(Error::Store(e)),
                    Err(e) => Err(Error::Store(io::Error::other(e.to_string()).into())),
                }
            }
            Err(e) => {
                drop(tmp);
                Err(e)
            }
        };
        match reserved {
            Some(n) => self.store.index().release(n),
            // The size was unknown up front: get back under the budget now.
            None if result.is_ok() => {
                if let Ok(true) = reserve_space(&self.evictor, &self.metrics, 0).await {
                    self.store.index().release(0);
                }
            }
            None => {}
        }
        if let Err(e) = &result {
            let reason = match e {
                Error::BadContent { .. } => "digest_mismatch",
                Error::Store(_) => "store",
                Error::Uncacheable => "uncacheable",
                _ => "fetch",
            };
            self.metrics
                .upstream_errors
                .with_label_values(&[upstream.name(), reason])
                .inc();
            tracing::warn!(upstream = upstream.name(), repo = %repo, digest = %digest, error = %e, "blob fill failed");
        }
        // Leave the map first: a request arriving now sees the committed file or starts afresh.
        self.inflight
            .lock()
            .expect("fill map lock is never poisoned")
            .remove(&digest);
        let _ = tx.send(match result {
            Ok(size) => Progress::Done { size },
            Err(e) => Progress::Failed(e.shared()),
        });
        gauge.dec();
    }
}

impl Fills {
    /// Fetch the whole blob into `file`, resuming after mid-body failures, and verify it. Room
    /// for the blob is reserved (evicting if needed) before the first byte is written; the
    /// reservation is left in `reserved` for the caller to release.
    async fn fetch(
        &self,
        upstream: &Upstream,
        repo: &RepoName,
        digest: &Digest,
        file: &Arc<File>,
        tx: &watch::Sender<Progress>,
        reserved: &mut Option<u64>,
    ) -> Result<u64, Error> {
        let up_err = |e| Error::from_upstream(upstream.name(), repo, e);
        let mut hasher = Some(digest.hasher());
        let mut written: u64 = 0;
        let mut total: Option<u64> = None;
        let mut resumes = 0;
        loop {
            let resp = upstream.fetch_blob(repo, digest, written).await.map_err(up_err)?;
            let Some(resp) = resp else {
                return Err(Error::BlobUnknown(digest.to_string()));
            };
            let resumed = written > 0;
            if resumed && resp.status() != StatusCode::PARTIAL_CONTENT {
                // The upstream ignored Range: start over (same bytes, if the digest is right).
                written = 0;
                hasher = Some(digest.hasher());
            }
            if total.is_none() {
                total = if resp.status() == StatusCode::PARTIAL_CONTENT {
                    resp.headers()
                        .get(CONTENT_RANGE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.rsplit('/').next()?.parse().ok())
                } else {
                    content_length(resp.headers())
                };
            }
            if resumes == 0 {
                if let Some(n) = total {
                    if !reserve_space(&self.evictor, &self.metrics, n).await? {
                        return Err(Error::Uncacheable);
                    }
                    *reserved = Some(n);
                }
            }
            let _ = tx.send(Progress::Streaming { written, total });
            let mut body = resp.into_body();
            let mut buf = BytesMut::with_capacity(CHUNK);
            let outcome: Result<(), String> = loop {
                let frame = match tokio::time::timeout(BODY_IDLE_TIMEOUT, body.frame()).await {
                    Err(_) => break Err("upstream body stalled".into()),
                    Ok(None) => break Ok(()),
                    Ok(Some(Err(e))) => break Err(e.to_string()),
                    Ok(Some(Ok(f))) => f,
                };
                let Ok(data) = frame.into_data() else { continue };
                upstream.record_blob_bytes(data.len() as u64);
                buf.extend_from_slice(&data);
                if buf.len() >= CHUNK {
                    written = write_chunk(file, &mut hasher, written, buf.split().freeze()).await?;
                    let _ = tx.send(Progress::Streaming { written, total });
                }
            };
            if !buf.is_empty() {
                written = write_chunk(file, &mut hasher, written, buf.split().freeze()).await?;
                let _ = tx.send(Progress::Streaming { written, total });
            }
            let complete = outcome.is_ok() && total.is_none_or(|t| written == t);
            if complete {
                break;
            }
            if total.is_some_and(|t| written > t) || resumes >= MAX_RESUMES {
                let reason = outcome
                    .err()
                    .unwrap_or_else(|| format!("size {written} does not match {total:?}"));
                return Err(Error::BadContent {
                    upstream: upstream.name().into(),
                    reference: digest.to_string(),
                    reason,
                });
            }
            resumes += 1;
            tracing::info!(upstream = upstream.name(), digest = %digest, offset = written, "resuming blob fill");
        }
        let actual = hasher.take().expect("hasher is present until the end").finish();
        if actual != *digest {
            return Err(Error::BadContent {
                upstream: upstream.name().into(),
                reference: digest.to_string(),
                reason: format!("content hashes to {actual}"),
            });
        }
        Ok(written)
    }
}

/// Write and hash one chunk off the async threads; returns the new length.
async fn write_chunk(file: &Arc<File>, hasher: &mut Option<Hasher>, offset: u64, data: Bytes) -> Result<u64, Error> {
    let file = file.clone();
    let mut h = hasher.take().expect("hasher is present until the end");
    let (h, res) = tokio::task::spawn_blocking(move || {
        let r = file.write_all_at(&data, offset).map(|()| data.len() as u64);
        h.update(&data);
        (h, r)
    })
    .await
    .map_err(|e| Error::Store(io::Error::other(e.to_string()).into()))?;
    *hasher = Some(h);
    Ok(offset + res.map_err(|e| Error::Store(e.into()))?)
}

/// Stream `start..start+len` of `file` in [`CHUNK`]s. With `progress`, the file is a fill in
/// progress: wait for bytes to be written, and end with an error if the fill fails. Stops as
/// soon as the receiver is dropped (the client went away). `guard` is held until then.
pub fn read_file(
    file: Arc<File>,
    start: u64,
    len: Option<u64>,
    progress: Option<watch::Receiver<Progress>>,
    guard: Option<ReadGuard>,
) -> mpsc::Receiver<io::Result<Bytes>> {
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(async move {
        let _guard = guard;
        let mut progress = progress;
        let mut pos = start;
        let end = len.map(|l| start + l);
        loop {
            if end.is_some_and(|e| pos >= e) {
                return;
            }
            let available = match progress.as_mut() {
                None => end.unwrap_or(u64::MAX),
                Some(rx) => match wait_for(rx, pos).await {
                    Ok(a) => a,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                },
            };
            let limit = end.map_or(available, |e| e.min(available));
            if pos >= limit {
                return; // the fill is done and we have everything
            }
            let n = (limit - pos).min(CHUNK as u64) as usize;
            let f = file.clone();
            let chunk = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; n];
                f.read_exact_at(&mut buf, pos).map(|()| Bytes::from(buf))
            })
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
            // The chunk that completes a known-length body is held until the fill is verified:
            // once the client has every byte it would take the transfer as clean.
            let last = end.is_some_and(|e| pos + n as u64 >= e);
            let chunk = match (last, progress.as_mut()) {
                (true, Some(rx)) if chunk.is_ok() => match wait_verified(rx).await {
                    Ok(()) => chunk,
                    Err(e) => Err(e),
                },
                _ => chunk,
            };
            let failed = chunk.is_err();
            if tx.send(chunk).await.is_err() || failed {
                return;
            }
            pos += n as u64;
        }
    });
    rx
}

/// Wait until the fill is committed (Ok) or failed (Err).
async fn wait_verified(rx: &mut watch::Receiver<Progress>) -> io::Result<()> {
    loop {
        match &*rx.borrow_and_update() {
            Progress::Done { .. } => return Ok(()),
            Progress::Failed(e) => return Err(io::Error::other(e.to_string())),
            _ => {}
        }
        if rx.changed().await.is_err() {
            return Err(io::Error::other("fill ended without a result"));
        }
    }
}

/// How far a reader at `pos` may read now: waits while nothing new is written; returns the
/// written length, or the final size once done.
async fn wait_for(rx: &mut watch::Receiver<Progress>, pos: u64) -> io::Result<u64> {
    loop {
        match &*rx.borrow_and_update() {
            Progress::Streaming { written, .. } if *written > pos => return Ok(*written),
            Progress::Done { size } => return Ok(*size),
            Progress::Failed(e) => return Err(io::Error::other(e.to_string())),
            _ => {}
        }
        if rx.changed().await.is_err() {
            return Err(io::Error::other("fill ended without a result"));
        }
    }
}
