//! Endpoint handlers, one file per family: thin layers over the services (`manifests`, `fill`,
//! `store`, `upstream`) that build the success response and put the request's
//! [`CacheResult`](crate::cache_result::CacheResult) in its extensions for the access log;
//! errors go back to `http/`, which renders them through `error.rs`.

pub mod base;
pub mod blobs;
pub mod link;
pub mod manifests;
pub mod referrers;
pub mod tags;
pub mod token;

use http::HeaderValue;

use crate::body::sendfile::Sink;

/// What handlers need to know about the client's request.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    /// HEAD: same headers as GET, no body.
    pub is_head: bool,
    /// Every `Accept` header line, in order.
    pub accept: Vec<HeaderValue>,
    /// The `Range` header.
    pub range: Option<String>,
    /// Whether this is another replica's signed peer request (its fills never forward).
    pub from_peer: bool,
    /// Where a committed file's bytes may go with `sendfile` (plain HTTP/1 connections only).
    pub sendfile: Option<Sink>,
}

impl RequestInfo {
    /// The `Accept` lines as text (invalid UTF-8 lines are skipped).
    pub fn accept_strs(&self) -> impl Iterator<Item = &str> {
        self.accept.iter().filter_map(|v| v.to_str().ok())
    }
}
