//! The accept loop: TCP -> optional TLS (`tls::Acceptor`) -> hyper-util auto connection
//! (HTTP/1.1 and h2) -> `ProxyService`, a connection limit taken before accept, header-read
//! timeout, and graceful drain on shutdown. Also the small metrics listener (`/metrics` and
//! the status page on `/`). No request logic here.

use std::sync::Arc;
use std::time::Duration;

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::body;
use crate::http::{ConnInfo, ProxyService};
use crate::state::AppState;
use crate::status;
use crate::tls::{Acceptor, Stream};

/// Serve the registry API on `listener` (over TLS when `tls` is set) until `stop` is
/// cancelled, then drain open connections for at most `drain_timeout`.
pub async fn serve(listener: TcpListener, state: AppState, tls: Option<Arc<Acceptor>>, stop: CancellationToken) {
    let cfg = state.config.server.clone();
    let limit = Arc::new(Semaphore::new(cfg.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = Arc::new(builder);
    let service = ProxyService::new(state);
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => p.expect("the connection semaphore is never closed"),
            _ = stop.cancelled() => break,
        };
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
        let _ = stream.set_nodelay(true);
        let (watcher, tls, builder, service) = (graceful.watcher(), tls.clone(), builder.clone(), service.clone());
        tokio::spawn(async move {
            // The handshake runs here, not in the loop: a slow client must not stall accepting.
            let (io, identity) = match tls {
                None => (Stream::Plain(stream), None),
                Some(tls) => match tls.accept(stream).await {
                    Ok(accepted) => accepted,
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
            let service = service.for_connection(conn_info).with_identity(identity);
            let conn = builder.serve_connection(TokioIo::new(io), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(cfg.drain_timeout, graceful.shutdown())
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
