//! Requests to other replicas: a signed GET of one peer path, with a deadline for the
//! response headers (a peer that misses it counts as down). Peers are dialled only at the
//! URLs of the cluster's membership, never at anything a client sent.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::{PeerKey, PEER_HEADER};

/// The HTTP client for peer requests. Cheap to clone.
#[derive(Clone)]
pub struct PeerClient {
    inner: Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl PeerClient {
    /// A client that gives up connecting after `connect_timeout`, trusting the public roots
    /// and the certificates in `ca_pem`.
    pub fn new(connect_timeout: Duration, ca_pem: Option<&[u8]>) -> Result<PeerClient, String> {
        let tls = crate::dial::client_config(ca_pem, "cluster.ca_file")?;
        let https = crate::dial::https_connector(tls, connect_timeout);
        Ok(PeerClient {
            inner: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .build(https),
        })
    }

    /// GET `path` from `peer`, signed with `key`; the response once its headers arrive within
    /// `timeout`, if it is a 200.
    pub async fn get(
        &self,
        peer: &str,
        path: &str,
        key: &PeerKey,
        timeout: Duration,
    ) -> Result<Response<Incoming>, String> {
        let req = Request::get(format!("{peer}{path}"))
            .header(PEER_HEADER, key.sign(path))
            .header(
                http::header::USER_AGENT,
                concat!("berth-peer/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(timeout, self.inner.request(req))
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
            .map_err(|e| e.to_string())?;
        match resp.status() {
            StatusCode::OK => Ok(resp),
            s => Err(format!("answered {s}")),
        }
    }
}
