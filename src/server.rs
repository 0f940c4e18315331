//! The accept loop: TCP -> admission (`max_connections`, `max_connections_per_ip`; a refused
//! connection gets a prompt 503 and is closed, never left waiting in the backlog) -> optional
//! TLS (`tls::Acceptor`; plain TCP is `body::sendfile::SendfileTcp`, whose HTTP/1 requests get
//! its zero-copy sink) -> hyper-util auto connection (HTTP/1.1 and h2) -> `ProxyService`,
//! with the header-read timeout, closing of connections idle for `idle_timeout` (from accept
//! until the first request, and between keep-alive requests), and graceful drain on shutdown.
//! Also the small metrics listener (`/metrics` and the status page on `/`). No request
//! logic here.

mod limits;

use std::sync::Arc;
use std::time::Duration;

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::limits::Admission;
use crate::body;
use crate::body::sendfile::SendfileTcp;
use crate::http::idle::Activity;
use crate::http::{ConnInfo, ProxyService};
use crate::state::AppState;
use crate::status;
use crate::tls::{Acceptor, Stream};

/// What a connection over a limit gets on a plain-HTTP listener before it is closed: an
/// answer the client can show, instead of a connection that hangs in the backlog.
const REFUSED: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// How long an idle connection told to close may take to do so before it is dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Bytes an HTTP/1 connection buffers, each way: request headers being read, and response
/// body chunks queued behind a slow socket (hyper's default is about 400 KiB, which a
/// thousand slow clients would multiply).
const CONNECTION_BUFFER: usize = 64 << 10;

/// Serve the registry API on `listener` (over TLS when `tls` is set) until `stop` is
/// cancelled, then drain open connections for at most `drain_timeout`.
pub async fn serve(listener: TcpListener, state: AppState, tls: Option<Arc<Acceptor>>, stop: CancellationToken) {
    let cfg = state.config.server.clone();
    let metrics = state.metrics.clone();
    let admission = Admission::new(cfg.max_connections, cfg.max_connections_per_ip);
    let connections = TaskTracker::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_timeout)
        .max_buf_size(CONNECTION_BUFFER)
        // Never `writev(false)` or `pipeline_flush`: zero-copy bodies need hyper to queue body
        // chunks as they are (see `body::sendfile`).
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = Arc::new(builder);
    let service = ProxyService::new(state);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let slot = match admission.try_admit(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                metrics.connections_closed.with_label_values(&[why.as_str()]).inc();
                tracing::debug!(%peer, reason = why.as_str(), "connection refused");
                if tls.is_none() {
                    // A fresh socket's send buffer is empty: this never blocks.
                    let _ = stream.try_write(REFUSED);
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let activity = Activity::new();
        let (tls, builder, service, stop, metrics) = (
            tls.clone(),
            builder.clone(),
            service.clone(),
            stop.clone(),
            metrics.clone(),
        );
        let (idle_timeout, drain_timeout) = (cfg.idle_timeout, cfg.drain_timeout);
        connections.spawn(async move {
            let _slot = slot;
            // The handshake runs here, not in the loop: a slow client must not stall accepting.
            let (io, identity, sendfile) = match tls {
                None => {
                    let (plain, sink) = SendfileTcp::new(stream);
                    (Stream::Plain(plain), None, Some(sink))
                }
                Some(tls) => match tls.accept(stream).await {
                    Ok((io, identity)) => (io, identity, None),
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                },
            };
            let conn_info = ConnInfo {
                peer,
                is_tls: matches!(io, Stream::Tls(_)),
            };
            let service = service
                .for_connection(conn_info)
                .with_identity(identity)
                .with_activity(activity.clone())
                .with_sendfile(sendfile);
            let conn = builder.serve_connection(TokioIo::new(io), service);
            let mut conn = std::pin::pin!(conn);
            let grace = tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = activity.idle_for(idle_timeout) => {
                    metrics.connections_closed.with_label_values(&["idle"]).inc();
                    tracing::debug!(%peer, "closing an idle connection");
                    IDLE_CLOSE_GRACE
                }
                _ = stop.cancelled() => drain_timeout,
            };
            // h1: close once the current answer is sent; h2: GOAWAY, then let streams finish.
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(grace, conn).await {
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "connection ended with an error"),
                Ok(Ok(())) => {}
                Err(_) => tracing::debug!(%peer, "connection did not close in time; dropped"),
            }
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(cfg.drain_timeout, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout reached; closing remaining connections");
    }
}

/// Serve the metrics listener until `stop`: `GET /metrics` (Prometheus text) and `GET /`
/// (the status page, HTML).
pub async fn serve_metrics(listener: TcpListener, state: AppState, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
            _ = stop.cancelled() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(metrics_listener_response(&state, req.uri().path())) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn metrics_listener_response(state: &AppState, path: &str) -> Response<body::Body> {
    let (status, content_type, body) = match path {
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            body::full(state.metrics.encode()),
        ),
        "/" => (
            StatusCode::OK,
            "text/html; charset=utf-8",
            body::full(status::render(&status::snapshot(state))),
        ),
        _ => (StatusCode::NOT_FOUND, "text/plain", body::full("not found\n")),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
