//! Endpoint handlers, one file per family. They pick cache or upstream and build the success
//! response; errors go back to `http/` which renders them through `error.rs`.

pub mod base;
pub mod blobs;
pub mod manifests;
pub mod tags;

use http::HeaderValue;

/// What handlers need to know about the client's request.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    /// HEAD: same headers as GET, no body.
    pub is_head: bool,
    /// Every `Accept` header line, in order.
    pub accept: Vec<HeaderValue>,
    /// The `Range` header.
    pub range: Option<String>,
}

impl RequestInfo {
    /// The `Accept` lines as text (invalid UTF-8 lines are skipped).
    pub fn accept_strs(&self) -> impl Iterator<Item = &str> {
        self.accept.iter().filter_map(|v| v.to_str().ok())
    }
}

/// The cache outcome of a request, carried in response extensions for the access log.
#[derive(Debug, Clone, Copy)]
pub struct CacheStatus(pub &'static str);
