//! The HTTP transport `object_store` uses for the shared tier: berth's own hyper client (one
//! HTTP and TLS stack in the binary: rustls with ring and the webpki roots, as for upstreams)
//! behind `object_store`'s `HttpConnector` seam, instead of a second stack through reqwest.
//! Only the configured endpoint is ever dialled: `object_store` builds every URL from it.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector as TcpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use object_store::client::{
    ClientOptions, HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpRequestBody, HttpResponse,
    HttpResponseBody, HttpService,
};

type Inner = Client<hyper_rustls::HttpsConnector<TcpConnector>, HttpRequestBody>;

/// Connects `object_store` to the endpoint over hyper.
#[derive(Debug, Clone, Copy)]
pub struct HyperConnector {
    /// Longest wait for a TCP connection.
    pub connect_timeout: Duration,
}

impl HttpConnector for HyperConnector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        let tls = crate::dial::client_config(None, "storage.s3").map_err(|e| object_store::Error::Generic {
            store: "S3",
            source: e.into(),
        })?;
        let https = crate::dial::https_connector(tls, self.connect_timeout);
        let inner: Inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(https);
        Ok(HttpClient::new(HyperService { inner }))
    }
}

#[derive(Debug)]
struct HyperService {
    inner: Inner,
}

#[async_trait::async_trait]
impl HttpService for HyperService {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let resp = self.inner.request(req).await.map_err(|e| {
            let kind = if e.is_connect() {
                HttpErrorKind::Connect
            } else {
                HttpErrorKind::Request
            };
            HttpError::new(kind, e)
        })?;
        let (parts, body) = resp.into_parts();
        let body = body
            .map_frame(|f| f.map_data(Bytes::from))
            .map_err(|e| HttpError::new(HttpErrorKind::Decode, e));
        Ok(HttpResponse::from_parts(parts, HttpResponseBody::new(body)))
    }
}
