//! The hyper service: parse the route, resolve the upstream, call the api handler, turn errors
//! into OCI responses, add the common headers, and write one access-log line (and the request
//! metrics, and the end of the request's in-flight count on its connection) when the response
//! body finishes or is dropped.

pub mod idle;
pub mod route;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HOST, RANGE};
use http::uri::Authority;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;

use self::idle::{Activity, Busy};
use self::route::{Query, Route};
use crate::api::{self, RequestInfo};
use crate::auth::{Caller, Identity, Presented};
use crate::body::sendfile::Sink;
use crate::body::{self, Body};
use crate::cache_result::CacheResult;
use crate::error::{Error, Origin};
use crate::metrics::Metrics;
use crate::oci::RepoName;
use crate::state::AppState;
use crate::upstream::RouteError;

/// What berth knows about a client connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// Whether the connection is TLS (the scheme of the token realm).
    pub is_tls: bool,
}

/// The registry API service; one clone per connection.
#[derive(Clone)]
pub struct ProxyService {
    /// Shared by every connection and request: one reference count per request, not a
    /// clone of every handle in it.
    state: Arc<AppState>,
    conn: ConnInfo,
    /// The user the connection authenticated as (a verified TLS client certificate); put in
    /// every request's extensions.
    identity: Option<Identity>,
    /// The connection's activity: each request counts as in flight until its body is done.
    activity: Option<Activity>,
    /// The connection's zero-copy sink (plain TCP), handed to every HTTP/1 request.
    sendfile: Option<Sink>,
}

impl ProxyService {
    /// A service over shared state.
    pub fn new(state: AppState) -> ProxyService {
        let conn = ConnInfo {
            peer: SocketAddr::from(([0, 0, 0, 0], 0)),
            is_tls: false,
        };
        ProxyService {
            state: Arc::new(state),
            conn,
            identity: None,
            activity: None,
            sendfile: None,
        }
    }

    /// The service for one accepted connection.
    pub fn for_connection(&self, conn: ConnInfo) -> ProxyService {
        ProxyService {
            state: self.state.clone(),
            conn,
            identity: None,
            activity: None,
            sendfile: None,
        }
    }

    /// This service for a connection that authenticated as `identity`.
    pub fn with_identity(self, identity: Option<Identity>) -> ProxyService {
        ProxyService { identity, ..self }
    }

    /// This service counting its requests in `activity` (for the idle timeout).
    pub fn with_activity(self, activity: Activity) -> ProxyService {
        ProxyService {
            activity: Some(activity),
            ..self
        }
    }

    /// This service on a plain TCP connection whose HTTP/1 file bodies may use `sink`.
    pub fn with_sendfile(self, sendfile: Option<Sink>) -> ProxyService {
        ProxyService { sendfile, ..self }
    }
}

impl hyper::service::Service<Request<hyper::body::Incoming>> for ProxyService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, mut req: Request<hyper::body::Incoming>) -> Self::Future {
        if let Some(identity) = &self.identity {
            req.extensions_mut().insert(identity.clone());
        }
        // hyper's HTTP/2 writer copies body bytes into frames: placeholders are HTTP/1 only.
        let sendfile = match req.version() <= Version::HTTP_11 {
            true => self.sendfile.clone(),
            false => None,
        };
        let (state, conn) = (self.state.clone(), self.conn);
        let busy = self.activity.as_ref().map(Activity::begin);
        Box::pin(async move { Ok(handle(state, conn, req, busy, sendfile).await) })
    }
}

/// Answer one request; never fails (errors become OCI responses). `busy` keeps the request
/// counted as in flight on its connection until the response body is done or dropped;
/// `sendfile` is the connection's zero-copy sink, for an HTTP/1 request on plain TCP.
pub async fn handle<B>(
    state: Arc<AppState>,
    conn: ConnInfo,
    req: Request<B>,
    busy: Option<Busy>,
    sendfile: Option<Sink>,
) -> Response<Body> {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = route::parse_query(req.uri().query());
    let info = RequestInfo {
        is_head: method == Method::HEAD,
        accept: req.headers().get_all(ACCEPT).iter().cloned().collect(),
        range: req
            .headers()
            .get(RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        from_peer: false,
        sendfile,
    };
    let peer_signature = req
        .headers()
        .get(crate::cluster::PEER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let presented = Presented::from_headers(req.headers());
    let caller = Caller {
        addr: conn.peer.ip(),
        origin: origin(&req, conn.is_tls),
        ns: query.ns.clone(),
        certificate: req.extensions().get::<Identity>().cloned(),
    };
    drop(req);
    let route = route::parse(&method, &path);
    let kind = match &route {
        Ok(Route::Manifest(..)) => "manifest",
        Ok(Route::Blob(..)) => "blob",
        Ok(Route::Tags(..)) => "tag_list",
        Ok(Route::Referrers(..)) => "referrers",
        Ok(Route::Live | Route::Ready) => "probe",
        Ok(Route::Token) => "token",
        Ok(Route::PeerBlob(..)) => "peer_blob",
        Ok(Route::PeerManifest(..)) => "peer_manifest",
        _ => "other",
    };
    state.metrics.http_inflight.inc();
    // Set by `dispatch` once the request names an upstream (for the log and the status page).
    let upstream = OnceLock::new();
    let result = match route {
        Ok(r @ (Route::PeerBlob(..) | Route::PeerManifest(..))) => {
            let signed = (path.as_str(), peer_signature.as_deref());
            peer(&state, r, signed, info.clone(), &upstream).await
        }
        Ok(r) => dispatch(&state, r, &query, &info, &presented, &caller, &upstream).await,
        Err(e) => Err(e),
    };
    let upstream = upstream.into_inner();
    let mut resp = result.unwrap_or_else(|e| {
        let up = upstream.as_deref();
        match e.origin() {
            Origin::Client => tracing::debug!(method = %method, path, upstream = up, error = %e, "bad request"),
            Origin::Upstream => tracing::warn!(method = %method, path, upstream = up, error = %e, "upstream error"),
            Origin::Internal => tracing::error!(method = %method, path, upstream = up, error = %e, "internal error"),
        }
        if e.origin() != Origin::Client {
            state
                .metrics
                .activity()
                .record_error(up, format!("{method} {path}: {e}"));
        }
        e.to_response(info.is_head)
    });
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    if query.ns.is_some() && matches!(kind, "manifest" | "blob" | "tag_list" | "referrers") {
        if let Some(ns) = query.ns.as_deref().and_then(|ns| HeaderValue::from_str(ns).ok()) {
            resp.headers_mut().insert("oci-namespace", ns);
        }
    }
    let cache = resp.extensions().get::<CacheResult>().copied();
    // A body with nothing to send (a HEAD answer, an empty body) is complete as it stands:
    // hyper may never poll it.
    let complete = http_body::Body::is_end_stream(resp.body());
    let log = AccessLog {
        metrics: state.metrics.clone(),
        client: conn.peer,
        method,
        path,
        upstream,
        ns: query.ns,
        status: resp.status(),
        kind,
        cache,
        start,
        bytes: 0,
        complete,
        _busy: busy,
    };
    resp.map(|b| LoggedBody { inner: b, log }.boxed_unsync())
}

async fn dispatch(
    state: &AppState,
    route: Route,
    query: &Query,
    info: &RequestInfo,
    presented: &Presented,
    caller: &Caller,
    upstream: &OnceLock<String>,
) -> Result<Response<Body>, Error> {
    // Resolve the upstream, then let `auth` decide before anything touches the store or it.
    let resolve = |name: RepoName| async move {
        let (up, repo) = state
            .upstreams
            .resolve(query.ns.as_deref(), name.clone())
            .map_err(|e| match e {
                RouteError::UnknownNamespace(ns) => Error::UnknownNamespace(ns),
                RouteError::UnknownRegistry { host, known } => Error::UnknownRegistry { host, known },
                RouteError::NameInvalid => Error::NameInvalid,
            })?;
        let _ = upstream.set(up.name().to_string());
        state.auth.authorize(presented, caller, &up, &repo, &name).await?;
        Ok::<_, Error>((up, repo))
    };
    match route {
        Route::Root => Ok(api::base::root(info.is_head, state.config.metrics.listen)),
        Route::Base => {
            state.auth.check_base(presented, caller).await?;
            Ok(api::base::get(info.is_head))
        }
        Route::Token => api::token::get(state, presented, caller, query).await,
        Route::Live => Ok(plain(StatusCode::OK, "ok".into())),
        Route::Ready => Ok(match state.readiness() {
            Ok(()) => plain(StatusCode::OK, "ready".into()),
            Err(reason) => plain(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")),
        }),
        Route::Manifest(name, reference) => {
            let (up, repo) = resolve(name).await?;
            api::manifests::get(state, info, up, repo, reference).await
        }
        Route::Blob(name, digest) => {
            let (up, repo) = resolve(name).await?;
            api::blobs::get(state, info, up, repo, digest).await
        }
        Route::Tags(name) => {
            let (up, repo) = resolve(name.clone()).await?;
            let listing = api::tags::Listing {
                client_repo: &name,
                ns: query.ns.as_deref(),
                repo: &repo,
            };
            api::tags::get(&up, listing, &query.passthrough, info.is_head).await
        }
        // Answered by `peer`: checked against the cluster's key, not client auth.
        Route::PeerBlob(..) | Route::PeerManifest(..) => Err(Error::NotFound),
        Route::Referrers(name, subject) => {
            let (up, repo) = resolve(name).await?;
            api::referrers::get(state, info, &up, &repo, &subject, &query.passthrough).await
        }
    }
}

/// Another replica asks this one, the owner, for a blob or a manifest: checked against the
/// cluster's key (`signed`: the path and its signature; not client auth, the asking replica
/// authorized its client), then answered like a client's request but never forwarded again.
async fn peer(
    state: &AppState,
    route: Route,
    signed: (&str, Option<&str>),
    info: RequestInfo,
    upstream: &OnceLock<String>,
) -> Result<Response<Body>, Error> {
    let Some(cluster) = &state.cluster else {
        return Err(Error::NotFound);
    };
    let (path, signature) = signed;
    if !signature.is_some_and(|s| cluster.key().verify(path, s)) {
        return Err(Error::Denied);
    }
    let by_name = |name: &str| {
        let up = state.upstreams.by_name(name).ok_or(Error::NotFound)?;
        let _ = upstream.set(up.name().to_string());
        Ok::<_, Error>(up)
    };
    match route {
        Route::PeerBlob(up, name, digest) => {
            let info = RequestInfo {
                from_peer: true,
                ..info
            };
            api::blobs::get(state, &info, by_name(&up)?, name, digest).await
        }
        Route::PeerManifest(up, name, reference) => {
            api::manifests::peer_get(state, by_name(&up)?, name, reference).await
        }
        _ => Err(Error::NotFound),
    }
}

/// `scheme://authority` the client used (for the token realm); `localhost` if it sent none
/// that parses.
fn origin<B>(req: &Request<B>, is_tls: bool) -> String {
    let scheme = if is_tls { "https" } else { "http" };
    let authority = req.uri().authority().cloned().or_else(|| {
        req.headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse::<Authority>().ok())
    });
    match authority {
        Some(a) if !a.as_str().contains('@') => format!("{scheme}://{a}"),
        _ => format!("{scheme}://localhost"),
    }
}

fn plain(status: StatusCode, text: String) -> Response<Body> {
    let mut r = Response::new(body::full(text));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// The access-log line and request metrics, emitted once when the body is done or dropped.
struct AccessLog {
    metrics: Arc<Metrics>,
    client: SocketAddr,
    method: Method,
    path: String,
    /// The upstream the request was routed to, if it named one.
    upstream: Option<String>,
    ns: Option<String>,
    status: StatusCode,
    kind: &'static str,
    cache: Option<CacheResult>,
    start: Instant,
    bytes: u64,
    complete: bool,
    /// The connection's in-flight count for this request, released with the log line.
    _busy: Option<Busy>,
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        let m = &self.metrics;
        m.http_inflight.dec();
        if self.kind == "probe" {
            return;
        }
        let secs = self.start.elapsed().as_secs_f64();
        m.record_request(self.kind, &self.method, self.status, self.cache, secs, self.bytes);
        tracing::info!(
            client = %self.client,
            method = %self.method,
            path = %self.path,
            upstream = self.upstream.as_deref(),
            kind = self.kind,
            ns = self.ns.as_deref(),
            status = self.status.as_u16(),
            bytes = self.bytes,
            cache = self.cache.map_or("none", CacheResult::as_str),
            complete = self.complete,
            duration_ms = (secs * 1000.0) as u64,
            "request"
        );
    }
}

struct LoggedBody {
    inner: Body,
    log: AccessLog,
}

impl http_body::Body for LoggedBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    self.log.bytes += d.len() as u64;
                }
                if self.inner.is_end_stream() {
                    self.log.complete = true;
                }
            }
            Poll::Ready(None) => self.log.complete = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// Every request's future is built on the stack and moved into its task: a large one is a
    /// large `memcpy` per request, cache hits included. An upstream exchange held inline once
    /// made it 268 KiB and halved manifest-by-tag throughput; such work belongs in a box.
    #[tokio::test]
    async fn a_request_future_stays_small_enough_to_move_cheaply() {
        let dir = tempfile::tempdir().expect("temp dir");
        let text = format!(
            "[storage]\npath = {:?}\n[upstreams.hub]\nurl = \"http://127.0.0.1:9\"\ndefault = true\n",
            dir.path()
        );
        let config = Arc::new(Config::from_toml_str(&text).expect("config parses"));
        let state = AppState::build(config, Arc::new(Metrics::new())).expect("state builds");
        let conn = ConnInfo {
            peer: SocketAddr::from(([127, 0, 0, 1], 1)),
            is_tls: false,
        };
        let size = std::mem::size_of_val(&handle(Arc::new(state), conn, Request::new(()), None, None));
        assert!(size <= 16 * 1024, "the request future is {size} bytes");
    }
}
