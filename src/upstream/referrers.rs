//! One page of the upstream's referrers API (`GET /v2/<name>/referrers/<digest>`), read with
//! the manifest cap. Whether the answer is an index, and following `Link` pages, is the
//! referrers service's job; this file only sends the request and reads the body.

use http::header::{ACCEPT, CONTENT_TYPE, LINK};
use http::{HeaderMap, HeaderValue, Method};

use super::request::{check_status, header_string};
use super::{content_length, read_capped, Error, Kind, Upstream};
use crate::oci::{Digest, RepoName, MAX_MANIFEST_BYTES, OCI_INDEX};

/// What the upstream answered for one referrers page.
#[derive(Debug, Clone)]
pub enum ReferrersPage {
    /// 404 (or 400/405): the upstream has no referrers API.
    Unsupported,
    /// A 2xx body (not yet checked to be an index).
    Body {
        /// The exact bytes (at most [`MAX_MANIFEST_BYTES`]).
        bytes: bytes::Bytes,
        /// The upstream's `Content-Type`.
        content_type: Option<String>,
        /// The upstream's `Link` header, naming the next page.
        link: Option<String>,
    },
}

impl Upstream {
    /// GET one page of the referrers of `subject` in `repo`; `query` is the page's query
    /// string (from the previous page's `Link`), without `?`.
    pub async fn fetch_referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        query: Option<&str>,
    ) -> Result<ReferrersPage, Error> {
        let mut path = format!("/v2/{repo}/referrers/{subject}");
        if let Some(q) = query.filter(|q| !q.is_empty()) {
            path.push('?');
            path.push_str(q);
        }
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(OCI_INDEX));
        let resp = self.request(Kind::Referrers, Method::GET, repo, &path, headers).await?;
        let resp = match check_status(resp) {
            Ok(Some(r)) => r,
            // Registries without the API route it nowhere: distribution 2.8 answers 404.
            Ok(None) | Err(Error::Status(400 | 405)) => return Ok(ReferrersPage::Unsupported),
            Err(e) => return Err(e),
        };
        if content_length(resp.headers()).is_some_and(|n| n > MAX_MANIFEST_BYTES as u64) {
            return Err(Error::TooLarge(MAX_MANIFEST_BYTES));
        }
        let content_type = header_string(resp.headers(), CONTENT_TYPE.as_str());
        let link = header_string(resp.headers(), LINK.as_str());
        let bytes = read_capped(resp.into_body(), MAX_MANIFEST_BYTES).await?;
        self.metrics
            .record_fetched_bytes("referrers", &self.name, bytes.len() as u64);
        Ok(ReferrersPage::Body {
            bytes,
            content_type,
            link,
        })
    }
}
