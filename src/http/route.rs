//! Pure request routing: `(method, path, query)` to a [`Route`], validating every component.
//! Repository names contain slashes, so paths are parsed from the right. No I/O here.

use http::Method;

use crate::error::Error;
use crate::oci::{Digest, NameError, Reference, RepoName};

/// The longest request path accepted (a name is at most 255 bytes; digests up to 135).
const MAX_PATH_LEN: usize = 1024;

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /`: a plain-text hint for people who open berth in a browser.
    Root,
    /// `GET /v2/`
    Base,
    /// `GET /livez`
    Live,
    /// `GET /readyz`
    Ready,
    /// `GET /token`: berth's token endpoint (Docker token spec).
    Token,
    /// `GET|HEAD /v2/<name>/manifests/<reference>`
    Manifest(RepoName, Reference),
    /// `GET|HEAD /v2/<name>/blobs/<digest>`
    Blob(RepoName, Digest),
    /// `GET /v2/<name>/tags/list`
    Tags(RepoName),
    /// `GET|HEAD /v2/<name>/referrers/<digest>` (OCI distribution-spec 1.1)
    Referrers(RepoName, Digest),
    /// `GET /_berth/peer/<upstream>/<name>/blobs/<digest>`: another replica asks the owner of
    /// a blob for it (signed; see `crate::cluster`).
    PeerBlob(String, RepoName, Digest),
    /// `GET /_berth/peer/<upstream>/<name>/manifests/<reference>`: the same for a manifest.
    PeerManifest(String, RepoName, Reference),
}

/// The query parameters berth uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// containerd's `ns=<registry>`: which upstream the client means.
    pub ns: Option<String>,
    /// The rest: passed upstream for `tags/list` (`n`, `last`); `artifactType` filters
    /// referrers.
    pub passthrough: Vec<(String, String)>,
}

/// Parse the request target. Errors are already the client-facing OCI errors.
pub fn parse(method: &Method, path: &str) -> Result<Route, Error> {
    if path.len() > MAX_PATH_LEN {
        return Err(Error::NameInvalid);
    }
    match path {
        "/" => return only_get(method, Route::Root),
        "/livez" | "/healthz" => return only_get(method, Route::Live),
        "/readyz" => return only_get(method, Route::Ready),
        // containerd tries an OAuth POST first and falls back to GET on 405.
        "/token" => return only_get(method, Route::Token),
        _ => {}
    }
    if let Some(rest) = path.strip_prefix(crate::cluster::PEER_PREFIX) {
        let (upstream, rest) = rest.split_once('/').ok_or(Error::NotFound)?;
        if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
            let route = Route::PeerManifest(upstream.to_string(), name.parse()?, reference.parse()?);
            return only_get(method, route);
        }
        let (name, digest) = rest.rsplit_once("/blobs/").ok_or(Error::NotFound)?;
        let route = Route::PeerBlob(upstream.to_string(), name.parse()?, digest.parse()?);
        return only_get(method, route);
    }
    let rest = match path.strip_prefix("/v2") {
        Some("") | Some("/") => return only_get(method, Route::Base),
        Some(r) => r.strip_prefix('/').ok_or(Error::NotFound)?,
        None => return Err(Error::NotFound),
    };
    if rest == "_catalog" {
        return Err(Error::Unsupported("catalog"));
    }
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        let name: RepoName = name.parse()?;
        let reference: Reference = reference.parse().map_err(|e| match e {
            // distribution-spec v1.1 (and its conformance suite): a manifest that cannot be
            // found is 404 MANIFEST_UNKNOWN, and a string that is no tag names none.
            NameError::InvalidTag => Error::ManifestUnknown(reference.to_string()),
            e => Error::from(e),
        })?;
        return pull_only(method, "manifest push and delete", Route::Manifest(name, reference));
    }
    if let Some((name, tail)) = rest.rsplit_once("/blobs/") {
        let name: RepoName = name.parse()?;
        if tail == "uploads" || tail.starts_with("uploads/") {
            return Err(Error::Unsupported("blob upload"));
        }
        let digest: Digest = tail.parse()?;
        return pull_only(method, "blob delete", Route::Blob(name, digest));
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return only_get(method, Route::Tags(name.parse()?));
    }
    if let Some((name, subject)) = rest.rsplit_once("/referrers/") {
        let name: RepoName = name.parse()?;
        let subject: Digest = subject.parse()?;
        return only_get(method, Route::Referrers(name, subject));
    }
    Err(Error::NotFound)
}

fn only_get(method: &Method, route: Route) -> Result<Route, Error> {
    pull_only(method, "this method", route)
}

fn pull_only(method: &Method, what: &'static str, route: Route) -> Result<Route, Error> {
    if method == Method::GET || method == Method::HEAD {
        Ok(route)
    } else {
        Err(Error::Unsupported(what))
    }
}

/// Split a raw query string; keys and values are percent-decoded.
pub fn parse_query(query: Option<&str>) -> Query {
    let mut out = Query::default();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (percent_decode(k), percent_decode(v));
        if k == "ns" {
            out.ns = Some(v.to_ascii_lowercase());
        } else {
            out.passthrough.push((k, v));
        }
    }
    out
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte.
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn code(method: Method, path: &str) -> Result<&'static str, &'static str> {
        match parse(&method, path) {
            Ok(Route::Root) => Ok("root"),
            Ok(Route::Base) => Ok("base"),
            Ok(Route::Live) => Ok("live"),
            Ok(Route::Ready) => Ok("ready"),
            Ok(Route::Token) => Ok("token"),
            Ok(Route::Manifest(_, Reference::Tag(_))) => Ok("manifest-tag"),
            Ok(Route::Manifest(_, Reference::Digest(_))) => Ok("manifest-digest"),
            Ok(Route::Blob(..)) => Ok("blob"),
            Ok(Route::Tags(_)) => Ok("tags"),
            Ok(Route::Referrers(..)) => Ok("referrers"),
            Ok(Route::PeerBlob(..)) => Ok("peer-blob"),
            Ok(Route::PeerManifest(..)) => Ok("peer-manifest"),
            Err(e) => Err(e.status_and_code().1),
        }
    }

    #[test]
    fn routes_parse_from_the_right_and_validate_every_part() {
        use Method as M;
        let deep = format!("/v2/{}/manifests/latest", "a/".repeat(20) + "z");
        let cases: Vec<(Method, String, Result<&str, &str>)> = vec![
            (M::GET, "/".into(), Ok("root")),
            (M::HEAD, "/".into(), Ok("root")),
            (M::POST, "/".into(), Err("UNSUPPORTED")),
            (M::GET, "/v2/".into(), Ok("base")),
            (M::GET, "/v2".into(), Ok("base")),
            (M::GET, "/livez".into(), Ok("live")),
            (M::GET, "/readyz".into(), Ok("ready")),
            (M::GET, "/token".into(), Ok("token")),
            (M::POST, "/token".into(), Err("UNSUPPORTED")),
            (M::GET, format!("/_berth/peer/hub/library/a/blobs/{D}"), Ok("peer-blob")),
            (M::GET, format!("/_berth/peer/hub/blobs/{D}"), Err("NAME_UNKNOWN")),
            (M::GET, format!("/_berth/peer/hub/Bad/blobs/{D}"), Err("NAME_INVALID")),
            (M::GET, "/_berth/peer/hub".into(), Err("NAME_UNKNOWN")),
            (
                M::GET,
                "/_berth/peer/hub/library/a/manifests/v1".into(),
                Ok("peer-manifest"),
            ),
            (
                M::GET,
                format!("/_berth/peer/hub/library/a/manifests/{D}"),
                Ok("peer-manifest"),
            ),
            (
                M::HEAD,
                format!("/_berth/peer/hub/library/a/blobs/{D}"),
                Ok("peer-blob"),
            ),
            (M::GET, "/v2/library/alpine/manifests/3.20".into(), Ok("manifest-tag")),
            (
                M::HEAD,
                format!("/v2/library/alpine/manifests/{D}"),
                Ok("manifest-digest"),
            ),
            (M::GET, format!("/v2/library/alpine/blobs/{D}"), Ok("blob")),
            (M::GET, "/v2/a/manifests/b/manifests/c".into(), Ok("manifest-tag")),
            (M::GET, "/v2/ghcr.io/org/app/tags/list".into(), Ok("tags")),
            (M::GET, "/v2/ghcr-io/org/app/tags/list".into(), Ok("tags")),
            (M::GET, deep, Ok("manifest-tag")),
            (M::GET, "/v2/Library/Nginx/manifests/latest".into(), Err("NAME_INVALID")),
            (M::GET, "/v2/a/../../x/manifests/latest".into(), Err("NAME_INVALID")),
            (M::GET, "/v2/a%2Fb/manifests/latest".into(), Err("NAME_INVALID")),
            (M::GET, "/v2/a//b/manifests/latest".into(), Err("NAME_INVALID")),
            (M::GET, "/v2/a/manifests/.hidden".into(), Err("MANIFEST_UNKNOWN")),
            (M::GET, "/v2/a/manifests/sha256:abc".into(), Err("DIGEST_INVALID")),
            (M::GET, "/v2/a/blobs/latest".into(), Err("DIGEST_INVALID")),
            (
                M::GET,
                "/v2/a/blobs/md5:d41d8cd98f00b204e9800998ecf8427e".into(),
                Err("DIGEST_INVALID"),
            ),
            (
                M::GET,
                format!("/v2/{}/manifests/x", "a".repeat(300)),
                Err("NAME_INVALID"),
            ),
            (M::PUT, "/v2/a/manifests/latest".into(), Err("UNSUPPORTED")),
            (M::DELETE, format!("/v2/a/manifests/{D}"), Err("UNSUPPORTED")),
            (M::DELETE, format!("/v2/a/blobs/{D}"), Err("UNSUPPORTED")),
            (M::POST, "/v2/a/blobs/uploads/".into(), Err("UNSUPPORTED")),
            (M::PATCH, "/v2/a/blobs/uploads/1234".into(), Err("UNSUPPORTED")),
            (M::GET, "/v2/_catalog".into(), Err("UNSUPPORTED")),
            (M::GET, format!("/v2/a/referrers/{D}"), Ok("referrers")),
            (M::HEAD, format!("/v2/org/a/b/referrers/{D}"), Ok("referrers")),
            (M::GET, "/v2/a/referrers/latest".into(), Err("DIGEST_INVALID")),
            (M::GET, format!("/v2/A/referrers/{D}"), Err("NAME_INVALID")),
            (M::PUT, format!("/v2/a/referrers/{D}"), Err("UNSUPPORTED")),
            (M::POST, "/v2/".into(), Err("UNSUPPORTED")),
            (M::GET, "/v2/a/unknown".into(), Err("NAME_UNKNOWN")),
            (M::GET, "/other".into(), Err("NAME_UNKNOWN")),
        ];
        for (m, path, want) in cases {
            assert_eq!(code(m.clone(), &path), want, "{m} {path}");
        }
    }

    #[test]
    fn query_keeps_ns_apart_and_decodes() {
        let q = parse_query(Some("ns=Docker.IO&n=10&last=a%2Fb"));
        assert_eq!(q.ns.as_deref(), Some("docker.io"));
        assert_eq!(
            q.passthrough,
            vec![("n".into(), "10".into()), ("last".into(), "a/b".into())]
        );
        assert_eq!(parse_query(None), Query::default());
        assert_eq!(
            parse_query(Some("x=%zz%")).passthrough,
            vec![("x".into(), "%zz%".into())]
        );
    }
}
