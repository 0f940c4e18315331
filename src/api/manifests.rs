//! `GET|HEAD /v2/<name>/manifests/<reference>`. By digest: immutable, a hit never contacts
//! upstream. By tag: fresh records are served from cache; stale ones are revalidated with one
//! upstream HEAD (free on Docker Hub), and served stale within `stale_if_error` when the
//! upstream fails. Every fetched manifest is verified (digest, size cap, type) before it is
//! stored; tag records move only after the new manifest is stored.

use std::sync::Arc;
use std::time::SystemTime;

use http::header::{CONTENT_LENGTH, CONTENT_TYPE, ETAG};
use http::{HeaderValue, Response};

use super::{CacheStatus, RequestInfo};
use crate::cache::{freshness, Freshness, Manifest, TagKey};
use crate::error::{Error, Result};
use crate::http::body::{self, Body};
use crate::oci::{inspect_manifest, Algorithm, Digest, Reference, RepoName, Tag, MANIFEST_TYPES};
use crate::state::{AppState, FlightKey, FlightResult};
use crate::store::TagRecord;
use crate::upstream::{FetchedManifest, Upstream};

/// Every manifest type berth understands, as one `Accept` line for upstream requests.
fn all_types() -> Vec<HeaderValue> {
    vec![HeaderValue::from_str(&MANIFEST_TYPES.join(", ")).expect("media types are valid header text")]
}

/// Answer a manifest request.
pub async fn get(
    state: &AppState,
    req: &RequestInfo,
    up: Arc<Upstream>,
    repo: RepoName,
    reference: Reference,
) -> Result<Response<Body>> {
    let (m, cache) = match &reference {
        Reference::Digest(d) => by_digest(state, &up, &repo, d).await?,
        Reference::Tag(t) => by_tag(state, &up, &repo, t).await?,
    };
    state
        .metrics
        .cache_lookups
        .with_label_values(&["manifest", up.name(), cache])
        .inc();
    if m.media_type.is_accepted_by(req.accept_strs()) {
        return Ok(respond(&m, req.is_head, cache));
    }
    // A digest names exact bytes: no other representation exists.
    if let Reference::Digest(_) = reference {
        return Err(Error::ManifestUnknown(format!(
            "{reference} is a {}, which the client does not accept",
            m.media_type
        )));
    }
    let m = negotiate(state, &up, &repo, &reference, req).await?;
    Ok(respond(&m, req.is_head, "miss"))
}

async fn by_digest(
    state: &AppState,
    up: &Arc<Upstream>,
    repo: &RepoName,
    d: &Digest,
) -> Result<(Arc<Manifest>, &'static str)> {
    if let Some(m) = state.manifests.load(d).await? {
        return Ok((m, "hit"));
    }
    fetch_by_digest(state, up, repo, d).await
}

/// Fetch, verify and store a manifest by digest; concurrent calls share one upstream GET.
async fn fetch_by_digest(
    state: &AppState,
    up: &Arc<Upstream>,
    repo: &RepoName,
    d: &Digest,
) -> Result<(Arc<Manifest>, &'static str)> {
    let key = FlightKey::Digest(up.name().to_string(), d.clone());
    let (st, up2, repo2, d2) = (state.clone(), up.clone(), repo.clone(), d.clone());
    let work = async move {
        let fetched = up2.fetch_manifest(&repo2, &d2.to_string(), &all_types()).await;
        let fetched = fetched.map_err(|e| Error::from_upstream(up2.name(), &repo2, e))?;
        let fetched = fetched.ok_or_else(|| Error::ManifestUnknown(d2.to_string()))?;
        let m = Arc::new(verify(&up2, &d2.to_string(), fetched, Some(&d2))?);
        st.manifests.store(m.clone()).await?;
        Ok((m, "miss"))
    };
    joined_result(state, up, "manifest", state.flights.run(key, flight(work)).await)
}

async fn by_tag(
    state: &AppState,
    up: &Arc<Upstream>,
    repo: &RepoName,
    tag: &Tag,
) -> Result<(Arc<Manifest>, &'static str)> {
    let key = TagKey {
        upstream: up.name().to_string(),
        repo: repo.clone(),
        tag: tag.clone(),
    };
    let rec = state.manifests.tag(&key)?;
    if let Some(r) = &rec {
        let f = freshness(
            r.checked_at,
            SystemTime::now(),
            up.manifest_ttl(),
            state.config.cache.stale_if_error,
        );
        if f == Freshness::Fresh {
            if let Some(m) = state.manifests.load(&r.digest).await? {
                return Ok((m, "hit"));
            }
        }
    } else if state.manifests.is_known_missing(&key) {
        state
            .metrics
            .cache_lookups
            .with_label_values(&["manifest", up.name(), "negative"])
            .inc();
        return Err(Error::ManifestUnknown(format!("{repo}:{tag}")));
    }
    let work = revalidate(state.clone(), up.clone(), key.clone(), rec);
    joined_result(
        state,
        up,
        "manifest",
        state.flights.run(FlightKey::Tag(key), flight(work)).await,
    )
}

/// Ask upstream about a tag: HEAD when berth has a record, GET otherwise (or when the HEAD
/// carried no digest). Serves the stale record when the upstream fails within `stale_if_error`.
async fn revalidate(
    state: AppState,
    up: Arc<Upstream>,
    key: TagKey,
    rec: Option<TagRecord>,
) -> Result<(Arc<Manifest>, &'static str)> {
    let now = SystemTime::now();
    let stale = match &rec {
        Some(r)
            if freshness(r.checked_at, now, up.manifest_ttl(), state.config.cache.stale_if_error)
                != Freshness::Expired =>
        {
            state.manifests.load(&r.digest).await?
        }
        _ => None,
    };
    let serve_stale = |e: Error| match &stale {
        Some(m) if e.origin() == crate::error::Origin::Upstream => {
            tracing::warn!(upstream = up.name(), repo = %key.repo, reference = %key.tag, error = %e, "serving stale tag");
            Ok((m.clone(), "stale"))
        }
        _ => Err(e),
    };
    let upstream_err = |e| Error::from_upstream(up.name(), &key.repo, e);
    let missing = |state: &AppState| -> Result<(Arc<Manifest>, &'static str)> {
        state.manifests.tag_missing(&key)?;
        Err(Error::ManifestUnknown(format!("{}:{}", key.repo, key.tag)))
    };
    if let Some(r) = &rec {
        match up.head_manifest(&key.repo, key.tag.as_str(), &all_types()).await {
            Ok(None) => return missing(&state),
            Err(e) => return serve_stale(upstream_err(e)),
            Ok(Some(head)) => {
                if let Some(d) = head.digest {
                    let (m, result) = if d == r.digest {
                        match state.manifests.load(&d).await? {
                            Some(m) => (m, "revalidated"),
                            None => (fetch_by_digest(&state, &up, &key.repo, &d).await?.0, "refreshed"),
                        }
                    } else {
                        (fetch_by_digest(&state, &up, &key.repo, &d).await?.0, "refreshed")
                    };
                    save_tag(&state, &key, &m, now).await?;
                    return Ok((m, result));
                }
            }
        }
    }
    let fetched = match up.fetch_manifest(&key.repo, key.tag.as_str(), &all_types()).await {
        Ok(Some(f)) => f,
        Ok(None) => return missing(&state),
        Err(e) => return serve_stale(upstream_err(e)),
    };
    let m = Arc::new(verify(&up, &format!("{}:{}", key.repo, key.tag), fetched, None)?);
    state.manifests.store(m.clone()).await?;
    save_tag(&state, &key, &m, now).await?;
    Ok((m, "miss"))
}

async fn save_tag(state: &AppState, key: &TagKey, m: &Manifest, now: SystemTime) -> Result<()> {
    let rec = TagRecord {
        digest: m.digest.clone(),
        media_type: m.media_type.clone(),
        checked_at: now,
    };
    Ok(state.manifests.set_tag(key, rec).await?)
}

/// The client accepts none of the stored type: ask upstream with the client's own `Accept`
/// (not coalesced, not moving the tag), verify and store what comes back by digest.
async fn negotiate(
    state: &AppState,
    up: &Upstream,
    repo: &RepoName,
    reference: &Reference,
    req: &RequestInfo,
) -> Result<Arc<Manifest>> {
    let fetched = up.fetch_manifest(repo, &reference.to_string(), &req.accept).await;
    let fetched = fetched.map_err(|e| Error::from_upstream(up.name(), repo, e))?;
    let fetched = fetched.ok_or_else(|| Error::ManifestUnknown(reference.to_string()))?;
    let m = Arc::new(verify(up, &reference.to_string(), fetched, None)?);
    if !m.media_type.is_accepted_by(req.accept_strs()) {
        return Err(Error::ManifestUnknown(format!(
            "{reference}: no representation the client accepts"
        )));
    }
    state.manifests.store(m.clone()).await?;
    Ok(m)
}

/// Check an upstream manifest: its digest (against the requested one and the upstream's own
/// header), and its type and structure. The digest served is always the one computed here.
fn verify(up: &Upstream, reference: &str, f: FetchedManifest, expected: Option<&Digest>) -> Result<Manifest> {
    let bad = |reason: String| Error::BadContent {
        upstream: up.name().to_string(),
        reference: reference.to_string(),
        reason,
    };
    let alg = expected.map_or(Algorithm::Sha256, Digest::algorithm);
    let digest = Digest::of(alg, &f.bytes);
    if let Some(e) = expected {
        if *e != digest {
            return Err(bad(format!("content hashes to {digest}")));
        }
    }
    if let Some(claimed) = f.digest.as_deref().and_then(|d| d.parse::<Digest>().ok()) {
        let ours = if claimed.algorithm() == alg {
            digest.clone()
        } else {
            Digest::of(claimed.algorithm(), &f.bytes)
        };
        if claimed != ours {
            return Err(bad(format!(
                "Docker-Content-Digest {claimed} does not match the content"
            )));
        }
    }
    let media_type = inspect_manifest(&f.bytes, f.content_type.as_deref()).map_err(|e| bad(e.to_string()))?;
    Ok(Manifest {
        digest,
        media_type,
        bytes: f.bytes,
    })
}

async fn flight<F>(work: F) -> FlightResult
where
    F: std::future::Future<Output = Result<(Arc<Manifest>, &'static str)>> + Send + 'static,
{
    work.await.map_err(Error::shared)
}

fn joined_result(
    state: &AppState,
    up: &Upstream,
    kind: &str,
    (res, joined): (Option<FlightResult>, bool),
) -> Result<(Arc<Manifest>, &'static str)> {
    if joined {
        state.metrics.coalesced.with_label_values(&[kind, up.name()]).inc();
    }
    let res = res.ok_or_else(|| Error::Store(std::io::Error::other("manifest fetch task failed").into()))?;
    let (m, result) = res.map_err(Error::Shared)?;
    Ok((m, if joined { "coalesced" } else { result }))
}

fn respond(m: &Manifest, is_head: bool, cache: &'static str) -> Response<Body> {
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
    resp.extensions_mut().insert(CacheStatus(cache));
    resp
}
