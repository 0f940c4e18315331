//! `GET|HEAD /v2/<name>/manifests/<reference>`: ask the manifest service for the manifest,
//! then negotiate its type with the client's `Accept` and build the headers. No cache or
//! upstream policy here (that is `crate::manifests`; whether this repository may see it is
//! `crate::access`).

use std::sync::Arc;

use http::header::{CONTENT_LENGTH, CONTENT_TYPE, ETAG};
use http::{HeaderValue, Response};

use super::RequestInfo;
use crate::body::{self, Body};
use crate::cache_result::CacheResult;
use crate::error::{Error, Result};
use crate::manifests::{Manifest, TagKey};
use crate::oci::{Reference, RepoName};
use crate::state::AppState;
use crate::upstream::Upstream;

/// Answer a manifest request.
pub async fn get(
    state: &AppState,
    req: &RequestInfo,
    up: Arc<Upstream>,
    repo: RepoName,
    reference: Reference,
) -> Result<Response<Body>> {
    let (m, result) = state.manifests.resolve(&up, &repo, &reference).await?;
    state.access.admit_manifest(&up, &repo, &reference, &m, result).await?;
    if m.media_type.is_accepted_by(req.accept_strs()) {
        return Ok(respond(&m, req.is_head, result));
    }
    // A digest names exact bytes: no other representation exists.
    if let Reference::Digest(_) = reference {
        return Err(Error::ManifestUnknown(format!(
            "{reference} is a {}, which the client does not accept",
            m.media_type
        )));
    }
    let m = state
        .manifests
        .fetch_accepting(&up, &repo, &reference, &req.accept)
        .await?;
    state
        .access
        .admit_manifest(&up, &repo, &reference, &m, CacheResult::Miss)
        .await?;
    Ok(respond(&m, req.is_head, CacheResult::Miss))
}

/// Another replica asks this one, the owner, for a manifest: resolved here (never forwarded),
/// with the tag's confirmation time so the asking replica's record expires with this one's.
pub async fn peer_get(
    state: &AppState,
    up: Arc<Upstream>,
    repo: RepoName,
    reference: Reference,
) -> Result<Response<Body>> {
    let manifests = state.manifests.without_forwarding();
    let (m, result) = manifests.resolve(&up, &repo, &reference).await?;
    let mut resp = respond(&m, false, result);
    if let Reference::Tag(tag) = &reference {
        let key = TagKey {
            upstream: up.name().to_string(),
            repo,
            tag: tag.clone(),
        };
        if let Some(at) = manifests.checked_at(&key).await {
            let secs = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
            resp.headers_mut()
                .insert(crate::cluster::CHECKED_AT_HEADER, HeaderValue::from(secs));
        }
    }
    Ok(resp)
}

fn respond(m: &Manifest, is_head: bool, result: CacheResult) -> Response<Body> {
    let mut resp = Response::new(if is_head {
        body::empty()
    } else {
        body::full(m.bytes.clone())
    });
    let digest = HeaderValue::from_str(&m.digest.to_string()).expect("digests are valid header text");
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_str(m.media_type.as_str()).expect("media types are valid header text"),
    );
    h.insert(CONTENT_LENGTH, HeaderValue::from(m.bytes.len()));
    h.insert(
        ETAG,
        HeaderValue::from_str(&format!("\"{}\"", m.digest)).expect("digests are valid header text"),
    );
    h.insert("docker-content-digest", digest);
    resp.extensions_mut().insert(result);
    resp
}
