//! In-process test harness: `FakeRegistry` (a hyper server on 127.0.0.1:0 that serves scripted
//! manifests and blobs, counts every request, requires a bearer token if asked, and injects
//! faults) and `TestProxy` (berth::run on another ephemeral port with a temp store), plus a
//! small HTTP client. No test reaches beyond loopback.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::Digest as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub mod tls;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

pub fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex(&sha2::Sha256::digest(b)))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn random_bytes(n: usize) -> Bytes {
    let mut rng = fastrand::Rng::with_seed(n as u64 ^ 0x5eed);
    Bytes::from((0..n).map(|_| rng.u8(..)).collect::<Vec<u8>>())
}

/// A fault the fake applies to the next GET of a blob (consumed in order).
#[derive(Debug, Clone)]
pub enum Fault {
    /// Same length, one byte flipped.
    WrongBytes,
    /// Send this many bytes, then abort the body (connection reset mid-body).
    ResetAfter(usize),
    /// Answer with this status and an OCI error body.
    Status(u16, Option<&'static str>),
    /// Never answer.
    Stall,
    /// Redirect to this URL.
    Redirect(String),
}

type FakeBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// A scripted referrers API page: Content-Type, body, Link.
pub type ReferrersPage = (String, Bytes, Option<String>);

#[derive(Default)]
pub struct FakeState {
    pub blobs: Mutex<HashMap<String, Bytes>>,
    pub manifests: Mutex<HashMap<(String, String), (String, Bytes)>>,
    pub hits: Mutex<HashMap<String, usize>>,
    pub faults: Mutex<HashMap<String, VecDeque<Fault>>>,
    /// Faults for every request (manifests included) until cleared.
    pub global_fault: Mutex<Option<Fault>>,
    pub token: Mutex<Option<String>>,
    /// Delay between 64 KiB chunks of blob bodies.
    pub chunk_delay: Mutex<Duration>,
    pub honour_range: Mutex<bool>,
    /// Representations served to clients that do not accept the primary one.
    pub alternatives: Mutex<HashMap<(String, String), (String, Bytes)>>,
    /// Require `Authorization: Basic <this>` (base64 of user:password) on /v2/ requests.
    pub basic: Mutex<Option<String>>,
    /// Further Basic credentials accepted besides `basic` (other users of the upstream).
    pub basic_also: Mutex<Vec<String>>,
    /// Bearer realm to advertise instead of our own /token.
    pub realm: Mutex<Option<String>>,
    /// Paths that always answer this status (a request the registry chokes on).
    pub path_status: Mutex<HashMap<String, u16>>,
    /// Blob bodies being sent now, and the most sent at once.
    pub blob_bodies: Mutex<(usize, usize)>,
    /// Referrers API pages by path and query: (Content-Type, body, Link). Without an entry a
    /// referrers request gets 404, as from a registry without the API (distribution 2.8).
    pub referrers: Mutex<HashMap<String, ReferrersPage>>,
    /// Every `Authorization` header received, in order.
    pub authorizations: Mutex<Vec<String>>,
    /// `Link` header put on every tags/list answer.
    pub tags_link: Mutex<Option<String>>,
}

pub struct FakeRegistry {
    pub addr: SocketAddr,
    pub state: Arc<FakeState>,
    stop: CancellationToken,
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl FakeRegistry {
    pub async fn start() -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(
            listener,
            Arc::new(FakeState {
                honour_range: Mutex::new(true),
                ..Default::default()
            }),
        )
    }

    /// Serve `state` on `listener` (restarting a stopped fake on its old port).
    pub fn start_on(listener: TcpListener, state: Arc<FakeState>) -> FakeRegistry {
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let (st, stop2) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) =
                    tokio::select! { r = listener.accept() => r.unwrap(), _ = stop2.cancelled() => return };
                let st = st.clone();
                let stop3 = stop2.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(serve(st, addr, req).await) }
                    });
                    let conn = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .into_owned();
                    tokio::select! { _ = conn => {}, _ = stop3.cancelled() => {} }
                });
            }
        });
        FakeRegistry { addr, state, stop }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serve the same state on the same port again after `stop()`.
    pub async fn restart(&self) -> FakeRegistry {
        for _ in 0..200 {
            if let Ok(l) = TcpListener::bind(self.addr).await {
                return Self::start_on(l, self.state.clone());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("port {} did not become free", self.addr);
    }

    /// Stop accepting and drop every connection (the port closes).
    pub fn stop(&self) {
        self.stop.cancel();
    }

    pub fn put_blob(&self, bytes: Bytes) -> String {
        let d = sha256(&bytes);
        self.state.blobs.lock().unwrap().insert(d.clone(), bytes);
        d
    }

    /// Store a manifest under its digest and, if given, a tag. Returns its digest.
    pub fn put_manifest(&self, repo: &str, tag: Option<&str>, media_type: &str, bytes: Bytes) -> String {
        let d = sha256(&bytes);
        let mut m = self.state.manifests.lock().unwrap();
        m.insert((repo.to_string(), d.clone()), (media_type.to_string(), bytes.clone()));
        if let Some(t) = tag {
            m.insert((repo.to_string(), t.to_string()), (media_type.to_string(), bytes));
        }
        d
    }

    /// An image manifest (OCI or Docker) over a config and the given layers; returns its bytes.
    pub fn image(&self, repo: &str, tag: &str, media_type: &str, layers: &[Bytes]) -> (String, Bytes) {
        let config = Bytes::from(format!(
            "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"n\":{}}}",
            layers.len()
        ));
        let cd = self.put_blob(config.clone());
        let layer_type = if media_type == DOCKER_MANIFEST {
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        } else {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        };
        let ls: Vec<String> = layers
            .iter()
            .map(|l| {
                format!(
                    "{{\"mediaType\":\"{layer_type}\",\"digest\":\"{}\",\"size\":{}}}",
                    self.put_blob(l.clone()),
                    l.len()
                )
            })
            .collect();
        let cfg_type = if media_type == DOCKER_MANIFEST {
            "application/vnd.docker.container.image.v1+json"
        } else {
            "application/vnd.oci.image.config.v1+json"
        };
        let body = format!(
            "{{\"schemaVersion\":2,\"mediaType\":\"{media_type}\",\"config\":{{\"mediaType\":\"{cfg_type}\",\"digest\":\"{cd}\",\"size\":{}}},\"layers\":[{}]}}",
            config.len(),
            ls.join(",")
        );
        let bytes = Bytes::from(body);
        (self.put_manifest(repo, Some(tag), media_type, bytes.clone()), bytes)
    }

    pub fn require_token(&self, token: &str) {
        *self.state.token.lock().unwrap() = Some(token.to_string());
    }

    pub fn fault(&self, digest: &str, f: Fault) {
        self.state
            .faults
            .lock()
            .unwrap()
            .entry(digest.to_string())
            .or_default()
            .push_back(f);
    }

    pub fn set_global_fault(&self, f: Option<Fault>) {
        *self.state.global_fault.lock().unwrap() = f;
    }

    pub fn set_chunk_delay(&self, d: Duration) {
        *self.state.chunk_delay.lock().unwrap() = d;
    }

    /// Serve `body` at `path_and_query` (a referrers API page) with this type and `Link`.
    pub fn put_referrers_page(&self, path_and_query: &str, content_type: &str, body: Bytes, link: Option<&str>) {
        self.state.referrers.lock().unwrap().insert(
            path_and_query.to_string(),
            (content_type.to_string(), body, link.map(str::to_string)),
        );
    }

    /// How many requests matched `METHOD path` exactly (path without query).
    pub fn hits(&self, method: &str, path: &str) -> usize {
        *self
            .state
            .hits
            .lock()
            .unwrap()
            .get(&format!("{method} {path}"))
            .unwrap_or(&0)
    }

    /// The most blob bodies that were being sent at the same time.
    pub fn max_parallel_blob_bodies(&self) -> usize {
        self.state.blob_bodies.lock().unwrap().1
    }

    /// Blob bodies being sent right now.
    pub fn blob_bodies_in_flight(&self) -> usize {
        self.state.blob_bodies.lock().unwrap().0
    }

    /// All requests so far.
    pub fn total_hits(&self) -> usize {
        self.state.hits.lock().unwrap().values().sum()
    }
}

fn oci_error(status: u16, code: &str) -> Response<FakeBody> {
    let body = format!("{{\"errors\":[{{\"code\":\"{code}\",\"message\":\"fake\"}}]}}");
    let mut r = Response::new(full(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn full(b: impl Into<Bytes>) -> FakeBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed_unsync()
}

async fn serve(st: Arc<FakeState>, addr: SocketAddr, req: Request<Incoming>) -> Response<FakeBody> {
    let path = req.uri().path().to_string();
    *st.hits
        .lock()
        .unwrap()
        .entry(format!("{} {}", req.method(), path))
        .or_default() += 1;
    if let Some(a) = req.headers().get("authorization").and_then(|v| v.to_str().ok()) {
        st.authorizations.lock().unwrap().push(a.to_string());
    }
    if path == "/token" {
        let token = st.token.lock().unwrap().clone().unwrap_or_default();
        return Response::new(full(format!("{{\"token\":\"{token}\",\"expires_in\":300}}")));
    }
    if let Some(status) = st.path_status.lock().unwrap().get(&path).copied() {
        return oci_error(status, "UNKNOWN");
    }
    let fault = st.global_fault.lock().unwrap().clone();
    match fault {
        Some(Fault::Stall) => std::future::pending::<()>().await,
        Some(Fault::Status(s, retry)) => {
            let mut r = oci_error(s, if s == 429 { "TOOMANYREQUESTS" } else { "UNAVAILABLE" });
            if let Some(ra) = retry {
                r.headers_mut().insert("retry-after", ra.parse().unwrap());
            }
            return r;
        }
        _ => {}
    }
    if let Some(basic) = st.basic.lock().unwrap().clone() {
        let sent = req.headers().get("authorization").and_then(|v| v.to_str().ok());
        let sent = sent.and_then(|s| s.strip_prefix("Basic "));
        let ok = sent.is_some_and(|s| s == basic || st.basic_also.lock().unwrap().iter().any(|b| b == s));
        if !ok {
            let mut r = oci_error(401, "UNAUTHORIZED");
            r.headers_mut()
                .insert("www-authenticate", "Basic realm=\"fake\"".parse().unwrap());
            return r;
        }
    }
    if let Some(token) = st.token.lock().unwrap().clone() {
        let ok = req.headers().get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {token}"));
        if !ok {
            let mut r = oci_error(401, "UNAUTHORIZED");
            let repo = path
                .trim_start_matches("/v2/")
                .split("/manifests/")
                .next()
                .unwrap_or("")
                .split("/blobs/")
                .next()
                .unwrap_or("");
            let realm = st
                .realm
                .lock()
                .unwrap()
                .clone()
                .unwrap_or_else(|| format!("http://{addr}/token"));
            let challenge = format!("Bearer realm=\"{realm}\",service=\"fake\",scope=\"repository:{repo}:pull\"");
            r.headers_mut().insert("www-authenticate", challenge.parse().unwrap());
            return r;
        }
    }
    if path == "/v2/" {
        return Response::new(full("{}"));
    }
    let rest = path.trim_start_matches("/v2/");
    let page = req.uri().path_and_query().map_or(path.as_str(), |p| p.as_str());
    if let Some((ct, body, link)) = st.referrers.lock().unwrap().get(page).cloned() {
        let mut r = Response::new(full(body));
        r.headers_mut().insert("content-type", ct.parse().unwrap());
        if let Some(l) = link {
            r.headers_mut().insert("link", l.parse().unwrap());
        }
        return r;
    }
    if let Some(repo) = rest.strip_suffix("/tags/list") {
        let mut tags: Vec<String> = st
            .manifests
            .lock()
            .unwrap()
            .keys()
            .filter(|(r, t)| r == repo && !t.contains(':'))
            .map(|(_, t)| t.clone())
            .collect();
        if tags.is_empty() {
            return oci_error(404, "NAME_UNKNOWN");
        }
        tags.sort();
        let mut r = Response::new(full(serde_json::json!({ "name": repo, "tags": tags }).to_string()));
        if let Some(link) = st.tags_link.lock().unwrap().clone() {
            r.headers_mut().insert("link", link.parse().unwrap());
        }
        return r;
    }
    if let Some((repo, reference)) = rest.rsplit_once("/manifests/") {
        let found = st
            .manifests
            .lock()
            .unwrap()
            .get(&(repo.to_string(), reference.to_string()))
            .cloned();
        let Some((mut ct, mut bytes)) = found else {
            return oci_error(404, "MANIFEST_UNKNOWN");
        };
        // Like a real registry: a client that does not accept the stored type gets the
        // alternative representation if one exists (a Docker v2 manifest for an index).
        let accepts: Vec<String> = req
            .headers()
            .get_all("accept")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect();
        let accepted = accepts.is_empty() || accepts.iter().any(|a| a.contains(ct.as_str()));
        if !accepted {
            match st
                .alternatives
                .lock()
                .unwrap()
                .get(&(repo.to_string(), reference.to_string()))
                .cloned()
            {
                Some((alt_ct, alt)) if accepts.iter().any(|a| a.contains(alt_ct.as_str())) => {
                    (ct, bytes) = (alt_ct, alt)
                }
                _ => return oci_error(404, "MANIFEST_UNKNOWN"),
            }
        }
        let mut r = Response::new(if req.method() == Method::HEAD {
            Empty::new().map_err(|n| match n {}).boxed_unsync()
        } else {
            full(bytes.clone())
        });
        let h = r.headers_mut();
        h.insert("content-type", ct.parse().unwrap());
        h.insert("content-length", bytes.len().into());
        h.insert("docker-content-digest", sha256(&bytes).parse().unwrap());
        h.insert("ratelimit-limit", "100;w=21600".parse().unwrap());
        h.insert("ratelimit-remaining", "99;w=21600".parse().unwrap());
        return r;
    }
    if let Some((_, digest)) = rest.rsplit_once("/blobs/") {
        let Some(bytes) = st.blobs.lock().unwrap().get(digest).cloned() else {
            return oci_error(404, "BLOB_UNKNOWN");
        };
        if req.method() == Method::HEAD {
            let mut r = Response::new(Empty::new().map_err(|n| match n {}).boxed_unsync());
            r.headers_mut().insert("content-length", bytes.len().into());
            r.headers_mut().insert("docker-content-digest", digest.parse().unwrap());
            return r;
        }
        let fault = st.faults.lock().unwrap().get_mut(digest).and_then(|q| q.pop_front());
        return blob_response(&st, req.headers(), bytes, fault).await;
    }
    oci_error(404, "NAME_UNKNOWN")
}

async fn blob_response(
    st: &Arc<FakeState>,
    headers: &HeaderMap,
    bytes: Bytes,
    fault: Option<Fault>,
) -> Response<FakeBody> {
    let total = bytes.len();
    let mut data = bytes;
    let mut start = 0;
    let range = headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse::<usize>().ok());
    let partial = range
        .filter(|_| *st.honour_range.lock().unwrap())
        .filter(|s| *s < total);
    if let Some(s) = partial {
        start = s;
        data = data.slice(s..);
    }
    let mut abort_after = None;
    match fault {
        Some(Fault::WrongBytes) => {
            let mut v = data.to_vec();
            let mid = v.len() / 2;
            v[mid] ^= 0xff;
            data = Bytes::from(v);
        }
        Some(Fault::ResetAfter(n)) => abort_after = Some(n),
        Some(Fault::Status(s, _)) => return oci_error(s, "UNAVAILABLE"),
        Some(Fault::Stall) => std::future::pending::<()>().await,
        Some(Fault::Redirect(url)) => {
            let mut r = Response::new(full(""));
            *r.status_mut() = StatusCode::TEMPORARY_REDIRECT;
            r.headers_mut().insert("location", url.parse().unwrap());
            return r;
        }
        None => {}
    }
    let delay = *st.chunk_delay.lock().unwrap();
    let len = data.len();
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(1);
    let mut sending = Some(BodyCount::start(st));
    tokio::spawn(async move {
        let mut sent = 0;
        for chunk in data.chunks(64 << 10) {
            let mut chunk = Bytes::copy_from_slice(chunk);
            if let Some(n) = abort_after {
                if sent + chunk.len() > n {
                    chunk.truncate(n - sent);
                    let _ = tx.send(Ok(chunk)).await;
                    let _ = tx.send(Err(std::io::Error::other("injected reset"))).await;
                    return;
                }
            }
            sent += chunk.len();
            if tx.send(Ok(chunk)).await.is_err() {
                return;
            }
            if sent == len {
                sending.take();
            }
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
    });
    let mut r = Response::new(berth::body::channel(rx, None));
    r.headers_mut().insert("content-length", len.into());
    if partial.is_some() {
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        r.headers_mut().insert(
            "content-range",
            format!("bytes {start}-{}/{total}", total - 1).parse().unwrap(),
        );
    }
    r
}

/// Counts a blob body in `FakeState::blob_bodies` while it is alive.
struct BodyCount(Arc<FakeState>);

impl BodyCount {
    fn start(st: &Arc<FakeState>) -> BodyCount {
        let mut n = st.blob_bodies.lock().unwrap();
        n.0 += 1;
        n.1 = n.1.max(n.0);
        BodyCount(st.clone())
    }
}

impl Drop for BodyCount {
    fn drop(&mut self) {
        self.0.blob_bodies.lock().unwrap().0 -= 1;
    }
}

// === TestProxy ===

/// berth's log lines (`berth=info`, no colours), captured from the moment `capture_logs` is
/// called. Call it before starting a `TestProxy` (whose own subscriber then stays unused);
/// nextest runs each test in its own process, so the global subscriber is the test's own.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    /// Lines logged so far that contain every one of `words`.
    pub fn lines_with(&self, words: &[&str]) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| words.iter().all(|w| l.contains(w)))
            .map(str::to_string)
            .collect()
    }
}

pub fn capture_logs() -> LogCapture {
    let logs = LogCapture::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_env_filter("berth=info")
        .with_writer(move || writer.clone())
        .init();
    logs
}

/// berth::run in-process on 127.0.0.1:0 with a temp store.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub dir: tempfile::TempDir,
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<Result<(), String>>>,
}

impl TestProxy {
    /// Start with one default upstream `hub` (alias docker.io) at `upstream_url`; `extra` is
    /// appended to the config (e.g. a `[cache]` table or more upstreams).
    pub async fn start(upstream_url: &str, extra: &str) -> TestProxy {
        Self::start_in(tempfile::tempdir().unwrap(), upstream_url, extra).await
    }

    pub async fn start_in(dir: tempfile::TempDir, upstream_url: &str, extra: &str) -> TestProxy {
        Self::start_with(dir, upstream_url, "", extra).await
    }

    /// Like `start_in`, with extra `[storage]` keys.
    pub async fn start_with(dir: tempfile::TempDir, upstream_url: &str, storage: &str, extra: &str) -> TestProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, dir, upstream_url, storage, extra).await
    }

    /// Like `start_with`, serving on `listener` (bound already, so its address can be in the
    /// config of other instances, as cluster peers).
    pub async fn start_on(
        listener: TcpListener,
        dir: tempfile::TempDir,
        upstream_url: &str,
        storage: &str,
        extra: &str,
    ) -> TestProxy {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("berth=debug")
            .try_init();
        let text = format!(
            "[storage]\npath = {:?}\n{storage}\n[upstreams.hub]\nurl = \"{upstream_url}\"\naliases = [\"docker.io\"]\ndefault = true\nconnect_timeout = \"1s\"\ntimeout = \"2s\"\n{extra}",
            dir.path().join("store")
        );
        let config = berth::Config::from_toml_str(&text).expect("test config parses");
        let problems: Vec<_> = config
            .validate()
            .into_iter()
            .filter(|p| p.severity == berth::config::Severity::Error)
            .collect();
        assert!(problems.is_empty(), "test config is valid: {problems:?}");
        let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, metrics_addr) = (listener.local_addr().unwrap(), metrics.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(berth::run(Arc::new(config), listener, Some(metrics), shutdown.clone()));
        TestProxy {
            addr,
            metrics_addr,
            dir,
            shutdown,
            handle: Some(handle),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stop berth and wait for it; returns the store dir for a restart.
    pub async fn stop(mut self) -> tempfile::TempDir {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    pub fn store(&self) -> std::path::PathBuf {
        self.dir.path().join("store")
    }

    /// Files under blobs/ (committed content).
    pub fn stored_files(&self) -> Vec<std::path::PathBuf> {
        walk(&self.store().join("blobs"))
    }

    /// Wait (bounded) until `n` objects are committed and no temp file is left: the commit
    /// (fsync, rename) follows the moment readers got their verified bytes.
    pub async fn wait_committed(&self, n: usize) {
        for _ in 0..500 {
            if self.stored_files().len() == n && self.temp_files().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "expected {n} committed objects, found {:?} and temp files {:?}",
            self.stored_files(),
            self.temp_files()
        );
    }

    /// Files under tmp/.
    pub fn temp_files(&self) -> Vec<std::path::PathBuf> {
        walk(&self.store().join("tmp"))
    }

    pub async fn metrics(&self) -> String {
        let r = get(&format!("http://{}/metrics", self.metrics_addr), &[]).await;
        String::from_utf8(r.body.unwrap().to_vec()).unwrap()
    }

    /// The value of one series, written exactly as `/metrics` prints it
    /// (`name{label="v",...}`, labels sorted), or `None` when it is not served.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        self.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Where a store under `store` keeps the committed blob `digest` (`sha256:<hex>`).
pub fn blob_path(store: &std::path::Path, digest: &str) -> std::path::PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    store.join("blobs/sha256").join(&hex[..2]).join(hex)
}

pub fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return out };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A finished client request: status, headers, and the body or the error that broke it.
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Result<Bytes, String>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn bytes(&self) -> &Bytes {
        self.body.as_ref().expect("body completed")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(self.bytes()).expect("JSON body")
    }
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    request(Method::GET, url, headers).await
}

pub async fn head(url: &str, headers: &[(&str, &str)]) -> Reply {
    request(Method::HEAD, url, headers).await
}

/// Like `get`, but a refused or dropped connection is an `Err` instead of a panic.
pub async fn try_get(url: &str) -> Result<Reply, String> {
    try_request(Method::GET, url, &[]).await
}

/// One request on a fresh connection (so tests do not share pooled state).
pub async fn request(method: Method, url: &str, headers: &[(&str, &str)]) -> Reply {
    try_request(method, url, headers).await.expect("request completes")
}

async fn try_request(method: Method, url: &str, headers: &[(&str, &str)]) -> Result<Reply, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{e}"))?;
    let addr = format!("{}:{}", uri.host().unwrap(), uri.port_u16().unwrap());
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(uri.path_and_query().unwrap().as_str())
        .header("host", uri.authority().unwrap().as_str());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| e.to_string());
    Ok(Reply { status, headers, body })
}
