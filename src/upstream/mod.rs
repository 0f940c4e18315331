//! One configured upstream registry: its HTTP client, credentials and token cache, and the
//! pull requests berth makes to it (`fetch_*` and `head_*`). Handles the 401 challenge flow
//! (one token fetch and one retry), caps manifest and token bodies, and records upstream
//! metrics. It never decides what to cache; that is the api layer's job.

mod auth;
mod breaker;
mod client;
mod client_check;
mod referrers;
mod request;
mod set;

use std::collections::HashSet;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, RANGE};
use http::{HeaderMap, HeaderValue, Method, Response, Uri};
use hyper::body::Incoming;

pub use auth::{parse_challenge, realm_allowed, Challenge, TokenCache};
pub use breaker::{parse_retry_after, Admit, Breaker, CircuitState, Failure, Opened, Verdict};
pub use client::{error_chain, is_public, same_origin, HttpClient};
pub use referrers::ReferrersPage;
use request::{check_status, header_string};
pub use request::{content_length, encode_query, read_capped};
pub use set::{RouteError, UpstreamSet};

use crate::config::{ClientCredentials, Secret, UpstreamConfig};
use crate::metrics::Metrics;
use crate::oci::{Digest, RepoName, MAX_MANIFEST_BYTES};

/// What went wrong talking to an upstream.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// TCP, DNS or TLS failure: `to host:port: root cause`.
    #[error("connect {0}")]
    Connect(String),
    /// No answer in time: what was awaited, from which host.
    #[error("timed out waiting for {0}")]
    Timeout(String),
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
    #[error("circuit open since {since} after: {cause}")]
    CircuitOpen {
        /// UTC time of day the circuit opened (`HH:MM:SS`).
        since: String,
        /// The failure that opened it.
        cause: String,
    },
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
    /// The referrers API.
    Referrers,
    /// Token endpoint.
    Token,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Manifest => "manifest",
            Kind::Blob => "blob",
            Kind::Tags => "tag_list",
            Kind::Referrers => "referrers",
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
    fill_resume_window: Duration,
    breaker: Breaker,
    client_credentials: ClientCredentials,
    client_check_ttl: Duration,
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
        let up = Upstream {
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
            fill_resume_window: cfg.fill_resume_window,
            breaker: Breaker::new(cfg.circuit_failures, cfg.circuit_cooldown),
            client_credentials: cfg.client_credentials,
            client_check_ttl: cfg.client_check_ttl,
            metrics,
        };
        up.metrics.register_upstream(name);
        up.record_circuit();
        Ok(up)
    }

    /// The config name (metrics label, store directory).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The breaker's position and, unless closed, why it opened.
    pub fn circuit(&self) -> (CircuitState, Option<Opened>) {
        self.breaker.status()
    }

    /// The configured base URL (`scheme://host[:port]`): the origin its credentials belong to.
    pub fn base(&self) -> &Uri {
        &self.base
    }

    /// Docker Hub adds `library/` to one-component names.
    pub fn is_docker_hub(&self) -> bool {
        self.is_docker_hub
    }

    /// berth pulls with credentials: what it fetches is private (DESIGN invariant 6).
    pub fn is_private(&self) -> bool {
        self.username.is_some()
    }

    /// Whether clients' own credentials are checked against this upstream.
    pub fn verifies_clients(&self) -> bool {
        self.client_credentials == ClientCredentials::Verify
    }

    /// How long a client-credential check is remembered.
    pub fn client_check_ttl(&self) -> Duration {
        self.client_check_ttl
    }

    /// How long a tag answer from this upstream is trusted.
    pub fn manifest_ttl(&self) -> Duration {
        self.manifest_ttl
    }

    /// How long a blob fill broken mid-body keeps resuming.
    pub fn fill_resume_window(&self) -> Duration {
        self.fill_resume_window
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
            .record_fetched_bytes("manifest", &self.name, bytes.len() as u64);
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
        self.metrics.record_fetched_bytes("blob", &self.name, n);
    }
}

fn accept_headers(accept: &[HeaderValue]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for v in accept {
        h.append(ACCEPT, v.clone());
    }
    h
}
