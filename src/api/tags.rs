//! `GET /v2/<name>/tags/list`: passed through to the upstream with `n`/`last`, body capped.

use http::header::{CONTENT_LENGTH, CONTENT_TYPE, LINK};
use http::{HeaderValue, Response};

use crate::body::{self, Body};
use crate::error::{Error, Result};
use crate::oci::RepoName;
use crate::upstream::{read_capped, Upstream};

/// Largest tag list passed through.
const MAX_TAG_LIST_BYTES: usize = 4 << 20;

/// Ask the upstream for the tag list of `repo`.
pub async fn get(up: &Upstream, repo: &RepoName, query: &[(String, String)], is_head: bool) -> Result<Response<Body>> {
    let fail = |e| Error::from_upstream(up.name(), repo, e);
    let resp = up
        .fetch_tags(repo, query)
        .await
        .map_err(fail)?
        .ok_or_else(|| Error::NameUnknown(repo.to_string()))?;
    let link = resp.headers().get(LINK).cloned();
    let bytes = read_capped(resp.into_body(), MAX_TAG_LIST_BYTES).await.map_err(fail)?;
    let len = bytes.len();
    let mut out = Response::new(if is_head { body::empty() } else { body::full(bytes) });
    let h = out.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CONTENT_LENGTH, HeaderValue::from(len));
    if let Some(l) = link {
        h.insert(LINK, l);
    }
    Ok(out)
}
