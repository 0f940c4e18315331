//! The crate error, its origin (client, upstream, internal), and the one place where an error
//! becomes an HTTP response: the OCI JSON envelope with the spec's code and status. Nothing else
//! in the crate builds error bodies, and nothing here logs (the HTTP boundary logs once).

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};

use crate::body::{self, Body};
use crate::oci::{DigestError, NameError, RepoName};
use crate::{store, upstream};

/// Who is at fault; picks the log level and the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A bad or impossible request.
    Client,
    /// The upstream registry failed or misbehaved.
    Upstream,
    /// berth itself (disk, bug).
    Internal,
}

/// Everything that can go wrong while answering a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The repository name is not valid.
    #[error("repository name is not valid")]
    NameInvalid,
    /// The tag is not valid.
    #[error("tag is not valid")]
    TagInvalid,
    /// The digest is malformed or uses an algorithm berth cannot verify.
    #[error("digest is not valid: {0}")]
    DigestInvalid(DigestError),
    /// A `Range` that lies outside the blob.
    #[error("range not satisfiable for a blob of {size} bytes")]
    RangeNotSatisfiable {
        /// The blob size, for `Content-Range: bytes */size`.
        size: u64,
    },
    /// A path under `/v2/` that is no pull endpoint.
    #[error("no such endpoint")]
    NotFound,
    /// Push, delete and catalog on a pull-through cache.
    #[error("{0} is not supported by a pull-through cache")]
    Unsupported(&'static str),
    /// `?ns=` names no configured upstream.
    #[error("no upstream is configured for namespace {0:?}")]
    UnknownNamespace(String),
    /// The name starts with a registry host that is no upstream's alias.
    #[error("no upstream is configured for registry {host:?}; configured upstreams: {known}")]
    UnknownRegistry {
        /// The name's first component.
        host: String,
        /// The configured upstreams and their aliases.
        known: String,
    },
    /// The upstream does not know the repository.
    #[error("repository {0} is not known upstream")]
    NameUnknown(String),
    /// No such manifest (upstream 404, a cached 404, or no acceptable type).
    #[error("manifest {0} is not known")]
    ManifestUnknown(String),
    /// No such blob upstream.
    #[error("blob {0} is not known")]
    BlobUnknown(String),
    /// The client must authenticate (or its token lacks the scope): 401 with this challenge.
    #[error("authentication required")]
    Unauthorized {
        /// The `WWW-Authenticate` value.
        challenge: HeaderValue,
    },
    /// The client is authenticated but not allowed this repository.
    #[error("access to this repository is denied")]
    Denied,
    /// Too many failed logins from this address.
    #[error("too many failed logins; try again later")]
    LoginThrottled {
        /// Seconds until logins are accepted again.
        retry_after: u64,
    },
    /// The upstream refused our credentials or anonymous access.
    #[error("{upstream} denied access to {repo}")]
    UpstreamDenied {
        /// Upstream name.
        upstream: String,
        /// Repository.
        repo: String,
    },
    /// The upstream answers 429; pass `Retry-After` through.
    #[error("{upstream} is rate limiting us")]
    UpstreamThrottled {
        /// Upstream name.
        upstream: String,
        /// The upstream's `Retry-After`, if any.
        retry_after: Option<HeaderValue>,
    },
    /// The upstream failed (connect, TLS, timeout, 5xx, protocol); the message names the
    /// upstream, the host and the root cause.
    #[error("upstream {upstream} failed: {source}")]
    Upstream {
        /// Upstream name.
        upstream: String,
        /// What happened.
        #[source]
        source: upstream::Error,
    },
    /// The upstream sent content that failed verification; nothing was stored.
    #[error("{upstream} sent bad content for {reference}: {reason}")]
    BadContent {
        /// Upstream name.
        upstream: String,
        /// What was requested.
        reference: String,
        /// Why it was refused (digest mismatch, too large, ambiguous manifest).
        reason: String,
    },
    /// berth is shutting down; the work was stopped.
    #[error("shutting down")]
    ShuttingDown,
    /// A task doing shared work (a fill, a coalesced fetch) ended without a result: it
    /// panicked or was cancelled.
    #[error("{0} task ended without a result")]
    TaskFailed(&'static str),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] store::Error),
    /// An error shared by every request that joined one coalesced fetch.
    #[error(transparent)]
    Shared(Arc<Error>),
}

/// Result alias for handlers.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<NameError> for Error {
    fn from(e: NameError) -> Self {
        match e {
            NameError::InvalidName => Error::NameInvalid,
            NameError::InvalidTag => Error::TagInvalid,
            NameError::InvalidDigest(d) => Error::DigestInvalid(d),
        }
    }
}

impl From<DigestError> for Error {
    fn from(e: DigestError) -> Self {
        Error::DigestInvalid(e)
    }
}

impl Error {
    /// Fold an upstream failure for `repo` into the client-facing error.
    pub fn from_upstream(upstream: &str, repo: &RepoName, e: upstream::Error) -> Error {
        match e {
            upstream::Error::Denied(_) => Error::UpstreamDenied {
                upstream: upstream.into(),
                repo: repo.to_string(),
            },
            upstream::Error::Throttled(retry_after) => Error::UpstreamThrottled {
                upstream: upstream.into(),
                retry_after,
            },
            source => Error::Upstream {
                upstream: upstream.into(),
                source,
            },
        }
    }

    /// Status and OCI code the client sees; change both together, in this table only.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        use upstream::Error as U;
        match self {
            Error::NameInvalid => (StatusCode::BAD_REQUEST, "NAME_INVALID"),
            // A manifest reference that is no tag is MANIFEST_UNKNOWN (route.rs); this is
            // for tags given elsewhere.
            Error::TagInvalid => (StatusCode::BAD_REQUEST, "TAG_INVALID"),
            Error::DigestInvalid(_) => (StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
            Error::RangeNotSatisfiable { .. } => (StatusCode::RANGE_NOT_SATISFIABLE, "RANGE_INVALID"),
            Error::NotFound => (StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
            Error::Unsupported(_) => (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
            Error::UnknownNamespace(_) | Error::UnknownRegistry { .. } | Error::NameUnknown(_) => {
                (StatusCode::NOT_FOUND, "NAME_UNKNOWN")
            }
            Error::ManifestUnknown(_) => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
            Error::BlobUnknown(_) => (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
            Error::Unauthorized { .. } => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            Error::UpstreamDenied { .. } | Error::Denied => (StatusCode::FORBIDDEN, "DENIED"),
            Error::LoginThrottled { .. } => (StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS"),
            Error::UpstreamThrottled { .. } => (StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS"),
            Error::Upstream {
                source: U::Timeout(_), ..
            } => (StatusCode::GATEWAY_TIMEOUT, "UNAVAILABLE"),
            Error::Upstream {
                source: U::CircuitOpen { .. },
                ..
            } => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
            Error::Upstream { .. } | Error::BadContent { .. } => (StatusCode::BAD_GATEWAY, "UNAVAILABLE"),
            Error::Store(_) | Error::TaskFailed(_) => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
            Error::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
            Error::Shared(e) => e.status_and_code(),
        }
    }

    /// Who caused it.
    pub fn origin(&self) -> Origin {
        match self {
            Error::Shared(e) => e.origin(),
            Error::Store(_) | Error::ShuttingDown | Error::TaskFailed(_) => Origin::Internal,
            Error::UpstreamDenied { .. }
            | Error::UpstreamThrottled { .. }
            | Error::Upstream { .. }
            | Error::BadContent { .. } => Origin::Upstream,
            _ => Origin::Client,
        }
    }

    /// The message shown to clients: no paths, upstream bodies or credentials.
    fn public_message(&self) -> String {
        match self {
            Error::Store(_) => "internal storage error".to_string(),
            Error::TaskFailed(_) => "internal error".to_string(),
            Error::Shared(e) => e.public_message(),
            other => other.to_string(),
        }
    }

    /// Wrap for sharing between coalesced requests.
    pub fn shared(self) -> Arc<Error> {
        match self {
            Error::Shared(e) => e,
            other => Arc::new(other),
        }
    }

    /// The OCI error response (no body on HEAD).
    pub fn to_response(&self, is_head: bool) -> Response<Body> {
        let (status, code) = self.status_and_code();
        let envelope = serde_json::json!({
            "errors": [{ "code": code, "message": self.public_message(), "detail": null }]
        });
        let bytes = Bytes::from(envelope.to_string());
        let len = bytes.len();
        let mut resp = Response::new(if is_head { body::empty() } else { body::full(bytes) });
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(CONTENT_LENGTH, HeaderValue::from(len));
        match self.innermost() {
            Error::UpstreamThrottled {
                retry_after: Some(v), ..
            } => {
                h.insert(RETRY_AFTER, v.clone());
            }
            Error::Upstream {
                source: upstream::Error::CircuitOpen { .. },
                ..
            } => {
                h.insert(RETRY_AFTER, HeaderValue::from_static("10"));
            }
            Error::Unauthorized { challenge } => {
                h.insert(WWW_AUTHENTICATE, challenge.clone());
            }
            Error::LoginThrottled { retry_after } => {
                h.insert(RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            Error::RangeNotSatisfiable { size } => {
                let v = HeaderValue::from_str(&format!("bytes */{size}")).expect("digits are a valid header value");
                h.insert(CONTENT_RANGE, v);
            }
            _ => {}
        }
        resp
    }

    fn innermost(&self) -> &Error {
        match self {
            Error::Shared(e) => e.innermost(),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn errors_render_the_oci_envelope_with_the_spec_status() {
        let cases: Vec<(Error, u16, &str)> = vec![
            (Error::NameInvalid, 400, "NAME_INVALID"),
            (Error::TagInvalid, 400, "TAG_INVALID"),
            (Error::DigestInvalid(DigestError::Malformed), 400, "DIGEST_INVALID"),
            (Error::RangeNotSatisfiable { size: 9 }, 416, "RANGE_INVALID"),
            (Error::Unsupported("push"), 405, "UNSUPPORTED"),
            (Error::UnknownNamespace("evil.example".into()), 404, "NAME_UNKNOWN"),
            (Error::ManifestUnknown("x".into()), 404, "MANIFEST_UNKNOWN"),
            (Error::BlobUnknown("x".into()), 404, "BLOB_UNKNOWN"),
            (
                Error::UpstreamDenied {
                    upstream: "u".into(),
                    repo: "r".into(),
                },
                403,
                "DENIED",
            ),
            (
                Error::UpstreamThrottled {
                    upstream: "u".into(),
                    retry_after: Some(HeaderValue::from_static("7")),
                },
                429,
                "TOOMANYREQUESTS",
            ),
            (
                Error::Unauthorized {
                    challenge: HeaderValue::from_static("Bearer realm=\"x\""),
                },
                401,
                "UNAUTHORIZED",
            ),
            (Error::Denied, 403, "DENIED"),
            (Error::LoginThrottled { retry_after: 5 }, 429, "TOOMANYREQUESTS"),
            (
                Error::Upstream {
                    upstream: "u".into(),
                    source: upstream::Error::Timeout("headers".into()),
                },
                504,
                "UNAVAILABLE",
            ),
            (
                Error::Upstream {
                    upstream: "u".into(),
                    source: upstream::Error::CircuitOpen {
                        since: "12:03:04".into(),
                        cause: "connect to up:443: connection refused".into(),
                    },
                },
                503,
                "UNAVAILABLE",
            ),
            (
                Error::Upstream {
                    upstream: "u".into(),
                    source: upstream::Error::Status(500),
                },
                502,
                "UNAVAILABLE",
            ),
            (
                Error::BadContent {
                    upstream: "u".into(),
                    reference: "r".into(),
                    reason: "digest".into(),
                },
                502,
                "UNAVAILABLE",
            ),
            (
                Error::Store(store::Error::Io(std::io::Error::other("/secret/path"))),
                500,
                "UNKNOWN",
            ),
            (
                Error::Shared(Arc::new(Error::BlobUnknown("x".into()))),
                404,
                "BLOB_UNKNOWN",
            ),
        ];
        for (err, status, code) in cases {
            let resp = err.to_response(false);
            assert_eq!(resp.status().as_u16(), status, "{err:?}");
            assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["errors"][0]["code"], code, "{err:?}");
            assert!(
                !body.windows(7).any(|w| w == b"/secret"),
                "internal detail leaked: {err:?}"
            );
        }
    }

    #[tokio::test]
    async fn head_errors_have_no_body_and_429_keeps_retry_after() {
        let err = Error::UpstreamThrottled {
            upstream: "u".into(),
            retry_after: Some(HeaderValue::from_static("7")),
        };
        let resp = err.to_response(true);
        assert_eq!(resp.headers()[RETRY_AFTER], "7");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(body.is_empty());
        let resp = Error::RangeNotSatisfiable { size: 20 }.to_response(false);
        assert_eq!(resp.headers()[CONTENT_RANGE], "bytes */20");
        let resp = Error::LoginThrottled { retry_after: 30 }.to_response(false);
        assert_eq!(resp.headers()[RETRY_AFTER], "30");
        let challenge = HeaderValue::from_static("Bearer realm=\"http://b/token\",service=\"berth\"");
        let resp = Error::Unauthorized {
            challenge: challenge.clone(),
        }
        .to_response(false);
        assert_eq!(resp.headers()[WWW_AUTHENTICATE], challenge);
    }
}
