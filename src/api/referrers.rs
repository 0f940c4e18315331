//! `GET|HEAD /v2/<name>/referrers/<digest>`: ask the referrers service for the subject's
//! listing, apply the `artifactType` filter, and build the headers. No cache or upstream
//! policy here (that is `crate::referrers`).

use std::sync::Arc;

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Response};

use super::RequestInfo;
use crate::body::{self, Body};
use crate::error::Result;
use crate::oci::{Digest, RepoName, OCI_INDEX};
use crate::state::AppState;
use crate::upstream::Upstream;

/// Answer a referrers request; `query` holds the client's `artifactType` values, if any.
pub async fn get(
    state: &AppState,
    req: &RequestInfo,
    up: &Arc<Upstream>,
    repo: &RepoName,
    subject: &Digest,
    query: &[(String, String)],
) -> Result<Response<Body>> {
    let (listing, result) = state.referrers.list(up, repo, subject).await?;
    let types: Vec<&str> = query
        .iter()
        .filter(|(k, _)| k == "artifactType")
        .map(|(_, v)| v.as_str())
        .collect();
    let bytes = match types.is_empty() {
        true => listing.bytes().clone(),
        false => listing.filtered(&types),
    };
    let len = bytes.len();
    let mut resp = Response::new(if req.is_head { body::empty() } else { body::full(bytes) });
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(OCI_INDEX));
    h.insert(CONTENT_LENGTH, HeaderValue::from(len));
    if !types.is_empty() {
        // Spec: a registry that filtered says so; berth always filters when asked.
        h.insert("oci-filters-applied", HeaderValue::from_static("artifactType"));
    }
    resp.extensions_mut().insert(result);
    Ok(resp)
}
