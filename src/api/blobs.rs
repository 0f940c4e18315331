//! `GET|HEAD /v2/<name>/blobs/<digest>`. A hit streams the committed file (with `Range`); a
//! miss joins or starts the single fill for the digest and streams it as it is written. HEAD on
//! a miss asks upstream with HEAD and starts no fill.

use std::sync::Arc;

use http::header::{ACCEPT_RANGES, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use super::RequestInfo;
use crate::body::range::{decide, RangeDecision};
use crate::body::{self, Body};
use crate::cache_result::{CacheResult, Source as Served};
use crate::error::{Error, Result};
use crate::fill::{Source, Start};
use crate::oci::{Digest, RepoName};
use crate::state::AppState;
use crate::store::Chunks;
use crate::upstream::{content_length, Upstream};

/// Answer a blob request.
pub async fn get(
    state: &AppState,
    req: &RequestInfo,
    up: Arc<Upstream>,
    repo: RepoName,
    digest: Digest,
) -> Result<Response<Body>> {
    let lookup = |result| state.metrics.record_lookup("blob", up.name(), result);
    if state.access.check_blob(&up, &repo, &digest).await? {
        if let Some(resp) = serve_committed(state, req, &digest).await? {
            lookup(CacheResult::Hit);
            return Ok(resp);
        }
    }
    if req.is_head {
        lookup(CacheResult::Miss);
        let size = up
            .head_blob(&repo, &digest)
            .await
            .map_err(|e| Error::from_upstream(up.name(), &repo, e))?;
        let size = size.ok_or_else(|| Error::BlobUnknown(digest.to_string()))?;
        state.access.record(&up, &repo, [digest.clone()]).await?;
        return respond(&digest, size, req, CacheResult::Miss, |_, _| body::empty());
    }
    match state
        .fills
        .start_or_join(up.clone(), repo.clone(), &digest, !req.from_peer)
    {
        Source::Committed => {
            state.access.confirm_blob(&up, &repo, &digest).await?;
            lookup(CacheResult::Hit);
            serve_committed(state, req, &digest)
                .await?
                .ok_or_else(|| Error::BlobUnknown(digest.to_string()))
        }
        Source::Fill { fill, joined } => match fill.wait_started().await? {
            Start::Streaming(size) => {
                let cache = match (fill.source(), joined) {
                    (source, true) => CacheResult::Coalesced(source),
                    (Served::Shared, false) => CacheResult::Shared,
                    (Served::Peer, false) => CacheResult::Peer,
                    (_, false) => CacheResult::Miss,
                };
                state.access.after_fill(&up, &repo, &digest, joined).await?;
                lookup(cache);
                respond(&digest, size, req, cache, |start, len| {
                    body::channel(fill.read(start, len, req.sendfile.clone()), len)
                })
            }
            Start::Uncacheable => {
                lookup(CacheResult::Passthrough);
                passthrough(&up, &repo, &digest, req).await
            }
        },
    }
}

/// Serve committed content (the store re-checks content found on disk at start before its
/// first read; HEAD serves no bytes and needs no check).
async fn serve_committed(state: &AppState, req: &RequestInfo, digest: &Digest) -> Result<Option<Response<Body>>> {
    if req.is_head {
        let Some(size) = state.store.stat(digest).await? else {
            return Ok(None);
        };
        return respond(digest, Some(size), req, CacheResult::Hit, |_, _| body::empty()).map(Some);
    }
    let Some(blob) = state.store.open(digest).await? else {
        return Ok(None);
    };
    respond(
        digest,
        Some(blob.size),
        req,
        CacheResult::Hit,
        |start, len| match blob.read(start, len) {
            Chunks::Whole(bytes) => body::full(bytes),
            Chunks::File(file) => file.with_sendfile(req.sendfile.clone()).boxed_unsync(),
        },
    )
    .map(Some)
}

/// Stream a blob straight from upstream without caching it (it cannot be stored now). The
/// whole blob is sent (Range is ignored, which RFC 9110 allows), hashed on the way, and the
/// last chunk is held back until the digest checks out, so a bad transfer never ends cleanly.
async fn passthrough(up: &Upstream, repo: &RepoName, digest: &Digest, req: &RequestInfo) -> Result<Response<Body>> {
    let resp = up
        .fetch_blob(repo, digest, 0)
        .await
        .map_err(|e| Error::from_upstream(up.name(), repo, e))?;
    let resp = resp.ok_or_else(|| Error::BlobUnknown(digest.to_string()))?;
    let size = content_length(resp.headers());
    let (tx, rx) = mpsc::channel(2);
    let (mut body, mut hasher, want) = (resp.into_body(), digest.hasher(), digest.clone());
    tokio::spawn(async move {
        let mut held: Option<bytes::Bytes> = None;
        while let Some(frame) = body.frame().await {
            let data = match frame {
                Ok(f) => match f.into_data() {
                    Ok(d) => d,
                    Err(_) => continue,
                },
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return;
                }
            };
            hasher.update(&data);
            if let Some(prev) = held.replace(data) {
                if tx.send(Ok(prev)).await.is_err() {
                    return;
                }
            }
        }
        let last = if hasher.finish() == want {
            held.map(Ok)
        } else {
            Some(Err(std::io::Error::other("upstream content does not match its digest")))
        };
        if let Some(last) = last {
            let _ = tx.send(last).await;
        }
    });
    let full = RequestInfo {
        range: None,
        ..req.clone()
    };
    respond(digest, size, &full, CacheResult::Passthrough, |_, len| {
        body::channel(rx, len)
    })
}

/// Build the 200/206 response (or the 416 error) for a blob of `size` bytes (unknown: the
/// upstream sent no length; then Range is ignored and the body is sent chunked). `make_body`
/// makes the body of `len` bytes from `start` (not called for HEAD).
fn respond(
    digest: &Digest,
    size: Option<u64>,
    req: &RequestInfo,
    cache: CacheResult,
    make_body: impl FnOnce(u64, Option<u64>) -> Body,
) -> Result<Response<Body>> {
    let (status, start, len) = match size {
        None => (StatusCode::OK, 0, None),
        Some(size) => match decide(req.range.as_deref(), size) {
            RangeDecision::Full => (StatusCode::OK, 0, Some(size)),
            RangeDecision::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, Some(end - start + 1)),
            RangeDecision::Unsatisfiable => return Err(Error::RangeNotSatisfiable { size }),
        },
    };
    let body = if req.is_head {
        body::empty()
    } else {
        make_body(start, len)
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    // Spec ambiguity on 206: keep the full blob's digest, as distribution and spegel do.
    let d = HeaderValue::from_str(&digest.to_string()).expect("digests are valid header text");
    h.insert(
        ETAG,
        HeaderValue::from_str(&format!("\"{digest}\"")).expect("digests are valid header text"),
    );
    h.insert("docker-content-digest", d);
    h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=31536000"));
    if let Some(len) = len {
        h.insert(CONTENT_LENGTH, HeaderValue::from(len));
    }
    if let (StatusCode::PARTIAL_CONTENT, Some(size), Some(len)) = (status, size, len) {
        let v = format!("bytes {start}-{}/{size}", start + len - 1);
        h.insert(
            CONTENT_RANGE,
            HeaderValue::from_str(&v).expect("digits are valid header text"),
        );
    }
    resp.extensions_mut().insert(cache);
    Ok(resp)
}
