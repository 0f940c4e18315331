//! The upstream side of a fill: create the spool, GET the blob (resuming with `Range` after a
//! mid-body failure, with backoff, for up to the upstream's `fill_resume_window` while readers
//! wait), hand each received frame to a writer thread that writes it into the spool (which
//! hashes it), so receiving, hashing and writing overlap, and verify the spool at the end.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::CONTENT_RANGE;
use http::StatusCode;
use http_body_util::BodyExt;
use tokio::sync::{mpsc, watch};

use super::{Fill, Fills, Outcome, Progress};
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
    let received = receive(fills, upstream, repo, digest, tx, reserved, wtx).await;
    // The writer ends once the sender is dropped (inside `receive`) and its queue is drained.
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

/// Receive the body (with resumes) and queue it for the writer.
async fn receive(
    fills: &Fills,
    upstream: &Upstream,
    repo: &RepoName,
    digest: &Digest,
    tx: &watch::Sender<Progress>,
    reserved: &mut Option<u64>,
    wtx: mpsc::Sender<WriteOp>,
) -> Result<Received, Error> {
    // The writer only stops early when a write failed; its own result carries that error.
    let writer_gone = || Error::TaskFailed("fill writer");
    let mut sent: u64 = 0;
    let mut total: Option<u64> = None;
    let mut started = false;
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
                if !fills.evictor.reserve(n).await? {
                    // Too large for `max_size` is policy; otherwise the disk is too full.
                    if fills.evictor.fits(n) {
                        fills
                            .health
                            .write_failed("blob", &format_args!("no room for {n} bytes"));
                    }
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
