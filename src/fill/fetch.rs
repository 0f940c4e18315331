//! The source side of a fill: create the spool, stream the shared tier's verified copy if it
//! has one, else GET the blob from the upstream (resuming with `Range` after a mid-body
//! failure, or where a broken shared read stopped, with backoff, for up to the upstream's
//! `fill_resume_window` while readers wait), hand each received frame to a writer thread that writes it into the spool (which
//! hashes it), so receiving, hashing and writing overlap, and verify the spool at the end.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::CONTENT_RANGE;
use http::StatusCode;
use http_body_util::BodyExt;
use tokio::sync::{mpsc, watch};

use super::{Fill, Fills, Outcome, Progress, Served};
use crate::error::Error;
use crate::oci::{Digest, RepoName};
use crate::store::{Spool, CHUNK};
use crate::upstream::{self, content_length, Upstream};

/// Longest wait between two resume attempts of a broken fill.
const MAX_RESUME_BACKOFF: Duration = Duration::from_secs(2);
/// An upstream body that sends nothing for this long is treated as broken (and resumed).
const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Frames queued for the writer; bounds the memory a fill holds (frames are 8-64 KiB).
const WRITER_QUEUE: usize = 64;

enum WriteOp {
    Data(Bytes),
    /// The upstream ignored `Range`: the body starts again at byte 0.
    Restart,
}

/// Fetch the whole blob into a new spool and verify it. Room for the blob is reserved
/// (evicting if needed) before the first byte is written; the reservation is left in
/// `reserved` for the caller to release. A spool that cannot be created (read-only store) or
/// no room for the blob (disk full, over `max_size`) makes it [`Outcome::Uncacheable`]: its
/// readers stream it from upstream instead.
pub(super) async fn fetch(
    fills: &Fills,
    upstream: &Upstream,
    repo: &RepoName,
    digest: &Digest,
    fill: &Fill,
    tx: &watch::Sender<Progress>,
    reserved: &mut Option<u64>,
) -> Result<Outcome, Error> {
    let (disk, d) = (fills.disk.clone(), digest.clone());
    let spool = match tokio::task::spawn_blocking(move || disk.spool(&d)).await {
        Ok(Ok(spool)) => spool,
        Ok(Err(e)) => {
            fills.health.write_failed("blob", &e);
            return Ok(Outcome::Uncacheable);
        }
        Err(_) => return Err(Error::TaskFailed("spool creation")),
    };
    // Set before any progress is published, so every reader finds it.
    let _ = fill.file.set(spool.file().clone());
    let (wtx, wrx) = mpsc::channel(WRITER_QUEUE);
    let writer = {
        let tx = tx.clone();
        tokio::task::spawn_blocking(move || write_loop(spool, wrx, &tx))
    };
    let mut t = Transfer {
        sent: 0,
        total: None,
        started: false,
        reserved,
    };
    // The writer ends once its sender is dropped (by `receive`, or here) and its queue is
    // drained.
    let mut received = receive_shared(fills, digest, fill, tx, &mut t, &wtx).await;
    if matches!(received, Ok(None)) && t.sent == 0 {
        received = receive_peer(fills, digest, fill, tx, &mut t, &wtx).await;
    }
    let received = match received {
        Ok(None) => receive(fills, upstream, repo, digest, tx, &mut t, wtx).await,
        Ok(Some(r)) => {
            drop(wtx);
            Ok(r)
        }
        Err(e) => {
            drop(wtx);
            Err(e)
        }
    };
    let written = writer.await.map_err(|_| Error::TaskFailed("fill writer"));
    let spool = match (received, written) {
        // The writer's own failure explains a receive that stopped because the writer did.
        (_, Ok(Err(e))) | (Err(e), _) | (Ok(_), Err(e)) => return Err(e),
        (Ok(Received::NoRoom), Ok(Ok(_))) => return Ok(Outcome::Uncacheable),
        (Ok(Received::All), Ok(Ok(spool))) => spool,
    };
    let verified = spool.verify().map_err(|actual| Error::BadContent {
        upstream: upstream.name().into(),
        reference: digest.to_string(),
        reason: format!("content hashes to {actual}"),
    })?;
    Ok(Outcome::Verified(verified))
}

/// How receiving the body ended, short of a failure.
enum Received {
    /// Every byte was queued for the writer.
    All,
    /// The size is known and there is no room for it: nothing was queued.
    NoRoom,
}

/// How far a fill's transfer is, across its sources.
struct Transfer<'a> {
    /// Bytes queued for the writer.
    sent: u64,
    /// The size, once known.
    total: Option<u64>,
    /// Whether room was reserved (if the size is known) and streaming was published.
    started: bool,
    /// The reservation, for the caller to release.
    reserved: &'a mut Option<u64>,
}

impl Transfer<'_> {
    /// Streaming `size` bytes from `source` starts (unless it started already): reserve room
    /// for them (false when there is none) and tell the readers.
    async fn start(
        &mut self,
        fills: &Fills,
        fill: &Fill,
        tx: &watch::Sender<Progress>,
        size: u64,
        source: Served,
    ) -> Result<bool, Error> {
        if self.started {
            return Ok(true);
        }
        if !reserve(fills, size).await? {
            return Ok(false);
        }
        *self.reserved = Some(size);
        (self.started, self.total) = (true, Some(size));
        fill.set_source(source);
        tx.send_modify(|p| {
            *p = Progress::Streaming {
                written: 0,
                total: Some(size),
            }
        });
        Ok(true)
    }
}

/// Stream the shared tier's copy of the blob, if it has one, into the writer. Its reads are
/// verified: a copy that does not match its digest ends with an error, never a clean end.
/// `Ok(None)` when there is no shared tier, it is unavailable or has no copy, or its copy
/// broke off (then `t` says how far it got, and the upstream is asked for the rest; the whole
/// spool is verified at the end).
async fn receive_shared(
    fills: &Fills,
    digest: &Digest,
    fill: &Fill,
    tx: &watch::Sender<Progress>,
    t: &mut Transfer<'_>,
    wtx: &mpsc::Sender<WriteOp>,
) -> Result<Option<Received>, Error> {
    let Some(shared) = fills.shared.as_ref().filter(|s| s.is_available()) else {
        return Ok(None);
    };
    let Ok(Some((size, mut chunks))) = shared.noted("read", "blob", shared.read(digest).await) else {
        return Ok(None);
    };
    if !t.start(fills, fill, tx, size, Served::Shared).await? {
        return Ok(Some(Received::NoRoom));
    }
    while let Some(chunk) = chunks.recv().await {
        match chunk {
            Ok(data) => {
                t.sent += data.len() as u64;
                let queued = wtx.send(WriteOp::Data(data)).await;
                queued.map_err(|_| Error::TaskFailed("fill writer"))?;
            }
            // Readers may have been sent bytes of a copy now known to be wrong: the fill
            // fails (their transfers end with an error, never a clean end). The copy is
            // deleted, so the client's retry fetches from the upstream.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(Error::BadContent {
                    upstream: "shared tier".into(),
                    reference: digest.to_string(),
                    reason: e.to_string(),
                });
            }
            Err(e) => {
                tracing::warn!(digest = %digest, offset = t.sent, error = %e, "shared tier read broke off: fetching the rest from the upstream");
                break;
            }
        }
    }
    if t.sent != size {
        return Ok(None);
    }
    shared.mark_used(digest);
    Ok(Some(Received::All))
}

/// Stream the blob from the replica that owns it in the cluster, if that is another replica
/// and this fill may ask it. `Ok(None)` when there is no such owner, or it failed (then it is
/// marked down, `t` says how far it got, and the upstream is asked for the rest; the whole
/// spool is verified at the end, so a wrong byte from a peer fails the fill, never passes).
async fn receive_peer(
    fills: &Fills,
    digest: &Digest,
    fill: &Fill,
    tx: &watch::Sender<Progress>,
    t: &mut Transfer<'_>,
    wtx: &mpsc::Sender<WriteOp>,
) -> Result<Option<Received>, Error> {
    let Some(cluster) = fills.cluster.as_ref().filter(|_| fill.forward) else {
        return Ok(None);
    };
    let Some(owner) = cluster.owner(digest) else {
        return Ok(None);
    };
    let path = crate::cluster::blob_path(&fill.upstream, &fill.repo, digest);
    let resp = match cluster.get(&owner, &path).await {
        Ok(r) => r,
        Err(e) => {
            cluster.mark_down(&owner, &e);
            return Ok(None);
        }
    };
    let Some(size) = content_length(resp.headers()) else {
        cluster.mark_down(&owner, "no Content-Length");
        return Ok(None);
    };
    if !t.start(fills, fill, tx, size, Served::Peer).await? {
        return Ok(Some(Received::NoRoom));
    }
    let mut body = resp.into_body();
    let broke = loop {
        match tokio::time::timeout(BODY_IDLE_TIMEOUT, body.frame()).await {
            Err(_) => break Some("body stalled".to_string()),
            Ok(None) => break None,
            Ok(Some(Err(e))) => break Some(e.to_string()),
            Ok(Some(Ok(f))) => {
                let Ok(data) = f.into_data() else { continue };
                t.sent += data.len() as u64;
                let queued = wtx.send(WriteOp::Data(data)).await;
                queued.map_err(|_| Error::TaskFailed("fill writer"))?;
            }
        }
    };
    match broke {
        None if t.sent == size => {
            cluster.record_ok();
            Ok(Some(Received::All))
        }
        why => {
            let why = why.unwrap_or_else(|| format!("ended after {} of {size} bytes", t.sent));
            cluster.mark_down(&owner, &why);
            tracing::warn!(peer = owner, digest = %digest, offset = t.sent, error = why, "peer transfer broke off: fetching the rest from the upstream");
            Ok(None)
        }
    }
}

/// Reserve room for `n` bytes (evicting if needed); false when there is none, and a
/// store-health note when the disk (not `max_size`) is the reason.
async fn reserve(fills: &Fills, n: u64) -> Result<bool, Error> {
    if fills.evictor.reserve(n).await? {
        return Ok(true);
    }
    // Too large for `max_size` is policy; otherwise the disk is too full.
    if fills.evictor.fits(n) {
        fills
            .health
            .write_failed("blob", &format_args!("no room for {n} bytes"));
    }
    Ok(false)
}

/// Receive the body (with resumes) and queue it for the writer.
async fn receive(
    fills: &Fills,
    upstream: &Upstream,
    repo: &RepoName,
    digest: &Digest,
    tx: &watch::Sender<Progress>,
    t: &mut Transfer<'_>,
    wtx: mpsc::Sender<WriteOp>,
) -> Result<Received, Error> {
    // The writer only stops early when a write failed; its own result carries that error.
    let writer_gone = || Error::TaskFailed("fill writer");
    // Where the shared tier's copy left off, if it broke; the reservation goes back to `t`.
    let (mut sent, mut total, mut started) = (t.sent, t.total, t.started);
    let reserved = &mut *t.reserved;
    let mut broken: Option<Break> = None;
    loop {
        let resp = match upstream.fetch_blob(repo, digest, sent).await {
            Ok(r) => r,
            // The first request's failure goes to the client; a resume keeps trying.
            Err(e) if is_transient(&e) => match broken.as_mut() {
                Some(b) => {
                    b.wait(upstream, digest, e.to_string()).await?;
                    continue;
                }
                None => return Err(Error::from_upstream(upstream.name(), repo, e)),
            },
            Err(e) => return Err(Error::from_upstream(upstream.name(), repo, e)),
        };
        let Some(resp) = resp else {
            return Err(Error::BlobUnknown(digest.to_string()));
        };
        if sent > 0 && resp.status() != StatusCode::PARTIAL_CONTENT {
            sent = 0;
            wtx.send(WriteOp::Restart).await.map_err(|_| writer_gone())?;
        }
        if total.is_none() {
            total = if resp.status() == StatusCode::PARTIAL_CONTENT {
                let range = resp.headers().get(CONTENT_RANGE).and_then(|v| v.to_str().ok());
                range.and_then(|v| v.rsplit('/').next()?.parse().ok())
            } else {
                content_length(resp.headers())
            };
        }
        if !started {
            started = true;
            if let Some(n) = total {
                if !reserve(fills, n).await? {
                    return Ok(Received::NoRoom);
                }
                *reserved = Some(n);
            }
            tx.send_modify(|p| *p = Progress::Streaming { written: 0, total });
        }
        let mut body = resp.into_body();
        let mut progressed = false;
        let outcome: Result<(), String> = loop {
            let frame = match tokio::time::timeout(BODY_IDLE_TIMEOUT, body.frame()).await {
                Err(_) => break Err("upstream body stalled".into()),
                Ok(None) => break Ok(()),
                Ok(Some(Err(e))) => break Err(e.to_string()),
                Ok(Some(Ok(f))) => f,
            };
            let Ok(data) = frame.into_data() else { continue };
            upstream.record_blob_bytes(data.len() as u64);
            sent += data.len() as u64;
            progressed |= !data.is_empty();
            wtx.send(WriteOp::Data(data)).await.map_err(|_| writer_gone())?;
        };
        if outcome.is_ok() && total.is_none_or(|t| sent == t) {
            return Ok(Received::All);
        }
        let reason = outcome
            .err()
            .unwrap_or_else(|| format!("size {sent} does not match {total:?}"));
        if total.is_some_and(|t| sent > t) {
            return Err(Error::BadContent {
                upstream: upstream.name().into(),
                reference: digest.to_string(),
                reason,
            });
        }
        // A new break, or bytes arrived since the last one: the window starts afresh.
        match broken.as_mut() {
            Some(b) if !progressed => b.wait(upstream, digest, reason).await?,
            _ => broken = Some(Break::new(upstream.fill_resume_window())),
        }
        tracing::info!(upstream = upstream.name(), digest = %digest, offset = sent, "resuming blob fill");
    }
}

/// Upstream failures worth another resume attempt: the upstream may be restarting.
fn is_transient(e: &upstream::Error) -> bool {
    use upstream::Error as U;
    match e {
        U::Connect(_) | U::Timeout(_) | U::CircuitOpen { .. } | U::Protocol(_) | U::Throttled(_) => true,
        U::Status(code) => *code >= 500,
        _ => false,
    }
}

/// A fill whose upstream broke: resume attempts back off until the window has passed.
struct Break {
    deadline: Instant,
    attempts: u32,
}

impl Break {
    fn new(window: Duration) -> Break {
        Break {
            deadline: Instant::now() + window,
            attempts: 0,
        }
    }

    /// Another attempt failed with `reason`: wait before the next one (100 ms, 200 ms, ... up
    /// to [`MAX_RESUME_BACKOFF`]), or give up once the window has passed.
    async fn wait(&mut self, upstream: &Upstream, digest: &Digest, reason: String) -> Result<(), Error> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let window = humantime::format_duration(upstream.fill_resume_window());
            return Err(Error::BadContent {
                upstream: upstream.name().into(),
                reference: digest.to_string(),
                reason: format!("transfer broke and did not resume within {window}: {reason}"),
            });
        }
        let backoff = Duration::from_millis(100 << self.attempts.min(5)).min(MAX_RESUME_BACKOFF);
        self.attempts += 1;
        tracing::debug!(upstream = upstream.name(), digest = %digest, error = %reason, "blob fill resume failed");
        tokio::time::sleep(backoff.min(left)).await;
        Ok(())
    }
}

/// The writer thread: write each frame into the spool in order (it hashes as it writes),
/// publishing progress at least every [`CHUNK`] bytes and whenever it has caught up with the
/// network. Returns the spool.
fn write_loop(mut spool: Spool, mut rx: mpsc::Receiver<WriteOp>, tx: &watch::Sender<Progress>) -> Result<Spool, Error> {
    let publish = |n: u64| {
        tx.send_modify(|p| {
            if let Progress::Streaming { written, .. } = p {
                // After a restart the same bytes are written again: never move backwards.
                *written = (*written).max(n);
            }
        })
    };
    let mut published = 0u64;
    while let Some(op) = rx.blocking_recv() {
        match op {
            WriteOp::Restart => spool.restart(),
            WriteOp::Data(d) => spool.write(&d).map_err(|e| Error::Store(e.into()))?,
        }
        if spool.len() >= published + CHUNK as u64 || rx.is_empty() {
            publish(spool.len());
            published = spool.len();
        }
    }
    publish(spool.len());
    Ok(spool)
}
