//! `GET /v2/`: the API version check (after `auth` has let the client in); and `GET /`, a
//! plain-text hint for a person who opens berth's address in a browser.

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use std::net::SocketAddr;

use http::{HeaderValue, Response};

use crate::body::{self, Body};

/// `200 {}` with JSON headers, as distribution answers.
pub fn get(is_head: bool) -> Response<Body> {
    let mut resp = Response::new(if is_head { body::empty() } else { body::full("{}") });
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from_static("2"));
    resp
}

/// What berth is, that clients use `/v2/`, and where the status page is (`status_page`: the
/// metrics listener's address, if one is configured).
pub fn root(is_head: bool, status_page: Option<SocketAddr>) -> Response<Body> {
    let page = match status_page {
        Some(addr) => format!("http://{addr}/ (Prometheus metrics: http://{addr}/metrics)"),
        None => "not enabled: set [metrics] listen to serve it and /metrics".to_string(),
    };
    let text = format!(
        "berth {}: a pull-through caching proxy for OCI and Docker registries.\n\
         Container clients use the registry API under /v2/, for example\n\
         \x20 docker pull <this host:port>/library/alpine\n\
         or name this address as a registry mirror. There is nothing to browse here.\n\
         Status page: {page}\n\
         Health: /livez and /readyz\n",
        env!("CARGO_PKG_VERSION")
    );
    let mut resp = Response::new(if is_head { body::empty() } else { body::full(text) });
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}
