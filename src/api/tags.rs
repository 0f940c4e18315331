//! `GET /v2/<name>/tags/list`: passed through to the upstream with `n`/`last`, body capped,
//! the pagination `Link` rewritten to point at berth (`link.rs`).

use http::header::{CONTENT_LENGTH, CONTENT_TYPE, LINK};
use http::{HeaderValue, Response};

use super::link::next_link;
use crate::body::{self, Body};
use crate::error::{Error, Result};
use crate::oci::RepoName;
use crate::upstream::{read_capped, Upstream};

/// Largest tag list passed through.
const MAX_TAG_LIST_BYTES: usize = 4 << 20;

/// The listing a client asked for: the name and `ns` it sent, and the upstream name for it.
pub struct Listing<'a> {
    /// The repository as named in the client's path.
    pub client_repo: &'a RepoName,
    /// The client's `?ns=`.
    pub ns: Option<&'a str>,
    /// The repository as the upstream knows it.
    pub repo: &'a RepoName,
}

/// Ask the upstream for the tag list of `listing.repo`.
pub async fn get(
    up: &Upstream,
    listing: Listing<'_>,
    query: &[(String, String)],
    is_head: bool,
) -> Result<Response<Body>> {
    let repo = listing.repo;
    let fail = |e| Error::from_upstream(up.name(), repo, e);
    let resp = up
        .fetch_tags(repo, query)
        .await
        .map_err(fail)?
        .ok_or_else(|| Error::NameUnknown(repo.to_string()))?;
    let link = resp
        .headers()
        .get(LINK)
        .and_then(|l| next_link(l, up.base(), repo, listing.client_repo, listing.ns));
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
