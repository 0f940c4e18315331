//! One configured upstream registry: its HTTP client, credentials and token cache, and the
//! pull requests berth makes to it (`fetch_*` and `head_*`). Handles the 401 challenge flow
//! (one token fetch and one retry), caps manifest and token bodies, and records upstream
//! metrics. It never decides what to cache; that is the api layer's job.

mod auth;
mod breaker;
mod client;
mod set;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RANGE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;

pub use auth::{parse_challenge, realm_allowed, Challenge, TokenCache};
pub use breaker::{parse_retry_after, Admit, Breaker};
pub use client::{is_public, HttpClient};
pub use set::{RouteError, UpstreamSet};

use crate::config::{Secret, UpstreamConfig};
use crate::metrics::Metrics;
use crate::oci::{Digest, RepoName};

/// Largest manifest accepted from upstream (distribution, containers/image: 4 MiB).
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Largest token response read.
const MAX_TOKEN_BYTES: usize = 1 << 20;

/// What went wrong talking to an upstream.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// TCP, DNS or TLS failure.
    #[error("connect: {0}")]
    Connect(String),
    /// No answer in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// An unexpected status.
    #[error("unexpected status {0}")]
    Status(u16),
    /// 401/403 after authenticating (or anonymously).
    #[error("access denied (status {0})")]
    Denied(u16),
    /// 429.
    #[error("rate limited")]
    Throttled(Option<HeaderValue>),
    /// Broken HTTP exchange or body.
    #[error("protocol: {0}")]
    Protocol(String),
    /// A body over its limit.
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
    /// The bearer realm is not on the upstream's domain; no credentials were sent.
    #[error("refused auth realm {0}")]
    Realm(String),
    /// The token service failed.
    #[error("token service: {0}")]
    Token(String),
    /// A redirect that berth will not follow.
    #[error("redirect: {0}")]
    Redirect(String),
    /// The upstream is failing; berth is not trying it for a while.
    #[error("upstream unavailable (circuit open)")]
    CircuitOpen,
}

/// The request families, for metrics.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Manifest GET/HEAD.
    Manifest,
    /// Blob GET/HEAD.
    Blob,
    /// tags/list.
    Tags,
    /// Token endpoint.
    Token,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Manifest => "manifest",
            Kind::Blob => "blob",
            Kind::Tags => "tag_list",
            Kind::Token => "token",
        }
    }
}

/// A manifest as the upstream sent it (not yet verified).
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// The exact bytes.
    pub bytes: Bytes,
    /// The upstream's `Content-Type`.
    pub content_type: Option<String>,
    /// The upstream's `Docker-Content-Digest`, to cross-check, never to trust.
    pub digest: Option<String>,
}

/// The headers of a manifest HEAD.
#[derive(Debug, Clone)]
pub struct ManifestHead {
    /// `Docker-Content-Digest`, when the upstream sent a valid one.
    pub digest: Option<Digest>,
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// `Content-Length`.
    pub size: Option<u64>,
}

/// One configured upstream registry. Created once at start from config; never from a request.
pub struct Upstream {
    name: String,
    base: Uri,
    client: HttpClient,
    username: Option<String>,
    password: Option<Secret>,
    tokens: TokenCache,
    /// Set once the upstream asked for Basic auth; later requests send it up front.
    basic: AtomicBool,
    is_docker_hub: bool,
    manifest_ttl: Duration,
    retries: u32,
    breaker: Breaker,
    metrics: Arc<Metrics>,
}

impl Upstream {
    /// Build from config. `trusted` is every configured upstream host.
    pub fn new(
        name: &str,
        cfg: &UpstreamConfig,
        manifest_ttl: Duration,
        trusted: Arc<HashSet<String>>,
        metrics: Arc<Metrics>,
    ) -> Result<Upstream, String> {
        let ca = match &cfg.ca_file {
            Some(p) => Some(std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?),
            None => None,
        };
        let client = HttpClient::new(trusted, ca.as_deref(), cfg.connect_timeout, cfg.timeout)?;
        let hub_names = ["docker.io", "index.docker.io", "registry-1.docker.io"];
        let is_docker_hub = cfg
            .aliases
            .iter()
            .any(|a| hub_names.contains(&a.to_ascii_lowercase().as_str()))
            || cfg.url.host() == Some("registry-1.docker.io");
        Ok(Upstream {
            name: name.to_string(),
            base: cfg.url.clone(),
            client,
            username: cfg.username.clone(),
            password: cfg.load_password()?,
            tokens: TokenCache::default(),
            basic: AtomicBool::new(false),
            is_docker_hub,
            manifest_ttl,
            retries: cfg.retries,
            breaker: Breaker::new(cfg.circuit_failures, cfg.circuit_cooldown),
            metrics,
        })
    }

    /// The config name (metrics label, store directory).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Docker Hub adds `library/` to one-component names.
    pub fn is_docker_hub(&self) -> bool {
        self.is_docker_hub
    }

    /// How long a tag answer from this upstream is trusted.
    pub fn manifest_ttl(&self) -> Duration {
        self.manifest_ttl
    }

    fn url(&self, path_and_query: &str) -> Result<Uri, Error> {
        let base = self.base.to_string();
        format!("{}{}", base.trim_end_matches('/'), path_and_query)
            .parse()
            .map_err(|_| Error::Protocol("bad url".into()))
    }

    fn basic_header(&self) -> Option<HeaderValue> {
        let (user, pass) = (self.username.as_ref()?, self.password.as_ref()?);
        let raw = base64_encode(format!("{user}:{}", pass.0).as_bytes());
        let mut v = HeaderValue::from_str(&format!("Basic {raw}")).ok()?;
        v.set_sensitive(true);
        Some(v)
    }

    fn authorization(&self, scope: &str) -> Option<HeaderValue> {
        if let Some(t) = self.tokens.get(scope) {
            let mut v = HeaderValue::from_str(&format!("Bearer {}", t.value.0)).ok()?;
            v.set_sensitive(true);
            return Some(v);
        }
        if self.basic.load(Ordering::Relaxed) {
            return self.basic_header();
        }
        None
    }

    /// Send a pull request for `repo`, answering one 401 challenge.
    async fn request(
        &self,
        kind: Kind,
        method: Method,
        repo: &RepoName,
        path_and_query: &str,
        extra: HeaderMap,
    ) -> Result<Response<Incoming>, Error> {
        let scope = format!("repository:{repo}:pull");
        let url = self.url(path_and_query)?;
        let mut retried = false;
        loop {
            let mut headers = extra.clone();
            if let Some(a) = self.authorization(&scope) {
                headers.insert(AUTHORIZATION, a);
            }
            let resp = self.send(kind, &method, &url, headers).await?;
            if resp.status() != StatusCode::UNAUTHORIZED || retried {
                return Ok(resp);
            }
            retried = true;
            let challenge = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_challenge);
            match challenge {
                Some(Challenge::Bearer { realm, service, .. }) => {
                    self.tokens.remove(&scope);
                    self.fetch_token(&realm, service.as_deref(), &scope).await?;
                }
                Some(Challenge::Basic) if self.password.is_some() => self.basic.store(true, Ordering::Relaxed),
                _ => return Ok(resp),
            }
        }
    }

    /// Send through the breaker: fail fast while it is open or while a 429 back-off runs;
    /// retry connect failures and 5xx (nothing of the body was read yet) with jittered backoff.
    async fn send(
        &self,
        kind: Kind,
        method: &Method,
        url: &Uri,
        headers: HeaderMap,
    ) -> Result<Response<Incoming>, Error> {
        let mut attempt = 0;
        loop {
            match self.breaker.admit(Instant::now()) {
                Admit::Yes => {}
                Admit::CircuitOpen => {
                    self.count_error("circuit_open");
                    return Err(Error::CircuitOpen);
                }
                Admit::Throttled(wait) => {
                    self.count_error("throttled");
                    return Err(Error::Throttled(Some(HeaderValue::from(wait.as_secs().max(1)))));
                }
            }
            let resp = self.client.send(method.clone(), url.clone(), headers.clone()).await;
            let code = match &resp {
                Ok(r) => r.status().as_str().to_string(),
                Err(Error::Timeout(_)) => "timeout".to_string(),
                Err(_) => "error".to_string(),
            };
            self.metrics
                .upstream_requests
                .with_label_values(&[&self.name, kind.as_str(), method.as_str(), &code])
                .inc();
            let retryable = match &resp {
                Ok(r) if r.status().is_server_error() => {
                    self.count_error("status_5xx");
                    self.breaker.failure(Instant::now());
                    true
                }
                Ok(r) => {
                    self.metrics.record_ratelimit(&self.name, r.headers());
                    self.breaker.success();
                    if r.status() == StatusCode::TOO_MANY_REQUESTS {
                        self.count_error("status_429");
                        self.breaker
                            .throttled(Instant::now(), parse_retry_after(r.headers().get(RETRY_AFTER)));
                    }
                    false
                }
                Err(e @ (Error::Connect(_) | Error::Timeout(_))) => {
                    self.count_error(if matches!(e, Error::Timeout(_)) {
                        "timeout"
                    } else {
                        "connect"
                    });
                    if self.breaker.failure(Instant::now()) {
                        tracing::warn!(upstream = %self.name, "upstream keeps failing: circuit open");
                    }
                    // A timeout already cost the full wait; do not double it.
                    matches!(e, Error::Connect(_))
                }
                Err(_) => false,
            };
            if !retryable || attempt >= self.retries || self.breaker.is_open() {
                return resp;
            }
            attempt += 1;
            // 100 ms, 200 ms, 400 ms... with +-50% jitter.
            let base = 100u64 << (attempt - 1).min(5);
            tokio::time::sleep(Duration::from_millis(base / 2 + fastrand::u64(..=base))).await;
        }
    }

    fn count_error(&self, reason: &str) {
        self.metrics
            .upstream_errors
            .with_label_values(&[&self.name, reason])
            .inc();
    }

    async fn fetch_token(&self, realm: &str, service: Option<&str>, scope: &str) -> Result<(), Error> {
        let realm_uri: Uri = realm.parse().map_err(|_| Error::Realm("unparsable".into()))?;
        if !realm_allowed(&self.base, &realm_uri) {
            return Err(Error::Realm(realm_uri.host().unwrap_or("?").to_string()));
        }
        let mut query = format!("scope={}", encode_query(scope));
        if let Some(s) = service {
            query.push_str(&format!("&service={}", encode_query(s)));
        }
        let sep = if realm.contains('?') { '&' } else { '?' };
        let url: Uri = format!("{realm}{sep}{query}")
            .parse()
            .map_err(|_| Error::Realm("unparsable".into()))?;
        let mut headers = HeaderMap::new();
        if let Some(b) = self.basic_header() {
            headers.insert(AUTHORIZATION, b);
        }
        let resp = self.send(Kind::Token, &Method::GET, &url, headers).await?;
        if !resp.status().is_success() {
            return Err(Error::Token(format!("status {}", resp.status().as_u16())));
        }
        let body = read_capped(resp.into_body(), MAX_TOKEN_BYTES).await?;
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let t: TokenResponse = serde_json::from_slice(&body).map_err(|_| Error::Token("unparsable response".into()))?;
        let token = t
            .token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::Token("no token".into()))?;
        // Spec: expires_in defaults to 60 s.
        self.tokens.insert(
            scope,
            Secret(token),
            Duration::from_secs(t.expires_in.unwrap_or(60).max(1)),
        );
        Ok(())
    }

    async fn manifest_request(
        &self,
        method: Method,
        repo: &RepoName,
        reference: &str,
        accept: &[HeaderValue],
    ) -> Result<Option<Response<Incoming>>, Error> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        check_status(
            self.request(Kind::Manifest, method, repo, &path, accept_headers(accept))
                .await?,
        )
    }

    /// GET a manifest (by tag or digest), reading at most [`MAX_MANIFEST_BYTES`].
    /// `Ok(None)` means the upstream does not have it.
    pub async fn fetch_manifest(
        &self,
        repo: &RepoName,
        reference: &str,
        accept: &[HeaderValue],
    ) -> Result<Option<FetchedManifest>, Error> {
        let Some(resp) = self.manifest_request(Method::GET, repo, reference, accept).await? else {
            return Ok(None);
        };
        if content_length(resp.headers()).is_some_and(|n| n > MAX_MANIFEST_BYTES as u64) {
            return Err(Error::TooLarge(MAX_MANIFEST_BYTES));
        }
        let content_type = header_string(resp.headers(), CONTENT_TYPE.as_str());
        let digest = header_string(resp.headers(), "docker-content-digest");
        let bytes = read_capped(resp.into_body(), MAX_MANIFEST_BYTES).await?;
        self.metrics
            .upstream_fetched_bytes
            .with_label_values(&["manifest", &self.name])
            .inc_by(bytes.len() as u64);
        Ok(Some(FetchedManifest {
            bytes,
            content_type,
            digest,
        }))
    }

    /// HEAD a manifest: free on Docker Hub's rate limit. `Ok(None)`: not found.
    pub async fn head_manifest(
        &self,
        repo: &RepoName,
        reference: &str,
        accept: &[HeaderValue],
    ) -> Result<Option<ManifestHead>, Error> {
        let Some(resp) = self.manifest_request(Method::HEAD, repo, reference, accept).await? else {
            return Ok(None);
        };
        let h = resp.headers();
        Ok(Some(ManifestHead {
            digest: header_string(h, "docker-content-digest").and_then(|d| d.parse().ok()),
            content_type: header_string(h, CONTENT_TYPE.as_str()),
            size: content_length(h),
        }))
    }

    /// GET a blob, from byte `offset` on (a resumed fill). Returns the response (status 200
    /// or 206) for the caller to stream; `Ok(None)`: not found.
    pub async fn fetch_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        offset: u64,
    ) -> Result<Option<Response<Incoming>>, Error> {
        let mut headers = HeaderMap::new();
        if offset > 0 {
            let v = HeaderValue::from_str(&format!("bytes={offset}-")).expect("digits are a valid header value");
            headers.insert(RANGE, v);
        }
        let resp = self
            .request(
                Kind::Blob,
                Method::GET,
                repo,
                &format!("/v2/{repo}/blobs/{digest}"),
                headers,
            )
            .await?;
        check_status(resp)
    }

    /// HEAD a blob: its size, or `Ok(None)` if the upstream does not have it.
    pub async fn head_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Option<Option<u64>>, Error> {
        let resp = self
            .request(
                Kind::Blob,
                Method::HEAD,
                repo,
                &format!("/v2/{repo}/blobs/{digest}"),
                HeaderMap::new(),
            )
            .await?;
        Ok(check_status(resp)?.map(|r| content_length(r.headers())))
    }

    /// GET `tags/list` with the client's pagination parameters; returns the raw response.
    pub async fn fetch_tags(
        &self,
        repo: &RepoName,
        query: &[(String, String)],
    ) -> Result<Option<Response<Incoming>>, Error> {
        let mut path = format!("/v2/{repo}/tags/list");
        let q: Vec<String> = query
            .iter()
            .filter(|(k, _)| k == "n" || k == "last")
            .map(|(k, v)| format!("{k}={}", encode_query(v)))
            .collect();
        if !q.is_empty() {
            path.push('?');
            path.push_str(&q.join("&"));
        }
        let resp = self
            .request(Kind::Tags, Method::GET, repo, &path, HeaderMap::new())
            .await?;
        check_status(resp)
    }

    /// Count bytes received for a blob fill.
    pub fn record_blob_bytes(&self, n: u64) {
        self.metrics
            .upstream_fetched_bytes
            .with_label_values(&["blob", &self.name])
            .inc_by(n);
    }
}

fn accept_headers(accept: &[HeaderValue]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for v in accept {
        h.append(ACCEPT, v.clone());
    }
    h
}

/// 2xx passes, 404 is `None`, everything else an error.
fn check_status(resp: Response<Incoming>) -> Result<Option<Response<Incoming>>, Error> {
    let s = resp.status();
    match s.as_u16() {
        200..=299 => Ok(Some(resp)),
        404 => Ok(None),
        401 | 403 => Err(Error::Denied(s.as_u16())),
        429 => Err(Error::Throttled(resp.headers().get(RETRY_AFTER).cloned())),
        code => Err(Error::Status(code)),
    }
}

/// Read a whole body, failing once it passes `max` bytes.
pub async fn read_capped(mut body: Incoming, max: usize) -> Result<Bytes, Error> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Error::Protocol(e.to_string()))?;
        if let Some(data) = frame.data_ref() {
            if buf.len() + data.len() > max {
                return Err(Error::TooLarge(max));
            }
            buf.extend_from_slice(data);
        }
    }
    Ok(buf.freeze())
}

fn header_string(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// `Content-Length`, if present and numeric.
pub fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn encode_query(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn base64_encode(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_base64_encoded() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("user:pass", "dXNlcjpwYXNz"),
        ];
        for (input, want) in cases {
            assert_eq!(base64_encode(input.as_bytes()), want, "{input:?}");
        }
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode_query("repository:a/b:pull"), "repository%3Aa%2Fb%3Apull");
    }
}
