//! The HTTP client every upstream request goes through: rustls (webpki roots plus an optional
//! CA file), HTTP/1.1 and h2 with pooling, connect and header timeouts, server-side redirects
//! with a hop limit, and a resolver that refuses private addresses for hosts the operator did
//! not configure, so nothing a registry says can make berth dial into the local network.

use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, LOCATION, USER_AGENT};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::Error;

/// Most redirects followed for one request.
const MAX_REDIRECTS: usize = 5;

type Inner = Client<HttpsConnector<HttpConnector<GuardedResolver>>, Empty<Bytes>>;

/// A pooled client for one upstream.
#[derive(Clone)]
pub struct HttpClient {
    inner: Inner,
    header_timeout: Duration,
    trusted: Arc<HashSet<String>>,
}

/// Hosts configured as upstreams may resolve anywhere; any other host (a CDN we were
/// redirected to) must resolve only to public addresses.
#[derive(Clone)]
pub struct GuardedResolver {
    trusted: Arc<HashSet<String>>,
}

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let host = name.as_str().to_ascii_lowercase();
        let trusted = self.trusted.contains(&host);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| trusted || is_public(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("{host} has no public address"),
                ));
            }
            Ok(addrs.into_iter())
        })
    }
}

/// Not loopback, private, link-local, CGNAT, unique-local, multicast or unspecified.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1])))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80)
        }
    }
}

impl HttpClient {
    /// Build a client. `trusted` holds the configured upstream host names; `ca_pem` is an
    /// extra PEM bundle for this upstream.
    pub fn new(
        trusted: Arc<HashSet<String>>,
        ca_pem: Option<&[u8]>,
        connect_timeout: Duration,
        header_timeout: Duration,
    ) -> Result<HttpClient, String> {
        let tls = crate::dial::client_config(ca_pem, "ca_file")?;
        let mut http = HttpConnector::new_with_resolver(GuardedResolver {
            trusted: trusted.clone(),
        });
        http.enforce_http(false);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(https);
        Ok(HttpClient {
            inner,
            header_timeout,
            trusted,
        })
    }

    /// Send one request and follow redirects (GET and HEAD only, http(s) only, no downgrade
    /// from https, `Authorization` dropped for good once the origin, scheme, host or port,
    /// changes).
    pub async fn send(&self, method: Method, url: Uri, mut headers: HeaderMap) -> Result<Response<Incoming>, Error> {
        let mut url = url;
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("berth/", env!("CARGO_PKG_VERSION"))),
        );
        for _ in 0..=MAX_REDIRECTS {
            let mut req = Request::builder().method(method.clone()).uri(url.clone());
            *req.headers_mut().expect("builder has no error yet") = headers.clone();
            let req = req.body(Empty::new()).map_err(|e| Error::Protocol(e.to_string()))?;
            let host = url.authority().map_or("?", |a| a.as_str()).to_string();
            let resp = match tokio::time::timeout(self.header_timeout, self.inner.request(req)).await {
                Err(_) => {
                    let waited = humantime::format_duration(self.header_timeout);
                    return Err(Error::Timeout(format!("response headers from {host} ({waited})")));
                }
                Ok(Err(e)) => return Err(classify(e, &host)),
                Ok(Ok(r)) => r,
            };
            if !resp.status().is_redirection() || resp.status() == http::StatusCode::NOT_MODIFIED {
                return Ok(resp);
            }
            let next = redirect_target(&url, resp.headers().get(LOCATION), &self.trusted)?;
            if !same_origin(&next, &url) {
                headers.remove(AUTHORIZATION);
            }
            url = next;
        }
        Err(Error::Redirect(format!("more than {MAX_REDIRECTS} redirects")))
    }
}

/// RFC 6454 origin equality: scheme, host and port (the scheme's default when omitted).
/// Credentials belong to one origin; another port of the same host is another server.
pub fn same_origin(a: &Uri, b: &Uri) -> bool {
    let origin = |u: &Uri| {
        let scheme = u.scheme_str().map(str::to_ascii_lowercase);
        let port = u.port_u16().or(match scheme.as_deref() {
            Some("https") => Some(443),
            Some("http") => Some(80),
            _ => None,
        });
        (scheme, u.host().map(str::to_ascii_lowercase), port)
    };
    origin(a) == origin(b)
}

/// Where a redirect may lead: an absolute or relative `Location`, http(s), no https->http
/// downgrade, and an IP literal only if it is configured or public.
fn redirect_target(from: &Uri, location: Option<&HeaderValue>, trusted: &HashSet<String>) -> Result<Uri, Error> {
    let loc = location
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Error::Redirect("redirect without Location".into()))?;
    let next: Uri = if loc.starts_with('/') {
        let base = format!(
            "{}://{}",
            from.scheme_str().unwrap_or("https"),
            from.authority().map_or("", |a| a.as_str())
        );
        format!("{base}{loc}").parse()
    } else {
        loc.parse()
    }
    .map_err(|_| Error::Redirect("unparsable Location".into()))?;
    let scheme_ok = matches!(
        (from.scheme_str(), next.scheme_str()),
        (Some("https"), Some("https")) | (Some("http"), Some("http" | "https"))
    );
    let Some(auth) = next.authority() else {
        return Err(Error::Redirect("Location has no host".into()));
    };
    if !scheme_ok || auth.as_str().contains('@') {
        return Err(Error::Redirect(format!(
            "refused redirect to {}://{}",
            next.scheme_str().unwrap_or("?"),
            auth.host()
        )));
    }
    let host = auth.host().trim_matches(['[', ']']).to_ascii_lowercase();
    if let Ok(ip) = host.parse::<IpAddr>() {
        if !trusted.contains(&host) && !is_public(ip) {
            return Err(Error::Redirect(format!("refused redirect to private address {ip}")));
        }
    }
    Ok(next)
}

/// An error and its sources, outermost first, joined with `": "`, skipping hyper's generic
/// wrappers ("client error (Connect)") that say nothing a source does not.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        let generic = text.starts_with("client error (") || text.starts_with("error trying to connect");
        if !generic || err.source().is_none() {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}

/// Whether any error in the chain is an I/O timeout (hyper-util's connect timeout is an
/// `io::Error` of kind `TimedOut`, as is a kernel's `ETIMEDOUT`).
fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        next = err.source();
    }
    false
}

fn classify(e: hyper_util::client::legacy::Error, host: &str) -> Error {
    let msg = error_chain(&e);
    if timed_out(&e) {
        Error::Timeout(format!("a connection to {host}"))
    } else if e.is_connect() {
        Error::Connect(format!("to {host}: {msg}"))
    } else {
        Error::Protocol(format!("{host}: {msg}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed CA certificate (openssl req -x509, P-256, CN=berth-test-ca).
    const TEST_CA_PEM: &str = "\
-----BEGIN CERTIFICATE-----
MIIBhjCCAS2gAwIBAgIUS2ikSelBH0fTkTiXtR75kF844dkwCgYIKoZIzj0EAwIw
GDEWMBQGA1UEAwwNYmVydGgtdGVzdC1jYTAgFw0yNjEyMDMyMDIxMTVaGA8yMTI2
MTEwOTIwMjExNVowGDEWMBQGA1UEAwwNYmVydGgtdGVzdC1jYTBZMBMGByqGSM49
AgEGCCqGSM49AwEHA0IABGm7hJBFy/JmPGhuAoJWZZMW0sAfreZkAo7oIvsXE0Q4
kpF76Xrsz3T+ySFQQti8STbqznUQ37PALkkRHxp7hK+jUzBRMB0GA1UdDgQWBBR+
7so4uVXGQA3OUgC0w8DFA1w5ijAfBgNVHSMEGDAWgBR+7so4uVXGQA3OUgC0w8DF
A1w5ijAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0cAMEQCIFTS/94X2xEM
YRXUoTSA2GG9vxwsWFkh2S0AzBPPWPbnAiAqk4DkjCD99iUlCsNTgyj+aNPMUBlC
71akLK1kwOHvMQ==
-----END CERTIFICATE-----
";

    fn client_with_ca(pem: &str) -> Result<HttpClient, String> {
        let t = Duration::from_secs(1);
        HttpClient::new(Arc::new(HashSet::new()), Some(pem.as_bytes()), t, t)
    }

    #[test]
    fn timeouts_are_recognised_by_kind_not_by_message() {
        #[derive(Debug, thiserror::Error)]
        #[error("wrapper")]
        struct Wrap(#[source] std::io::Error);
        let t = Wrap(std::io::Error::new(std::io::ErrorKind::TimedOut, "something"));
        let r = Wrap(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "timed out"));
        assert!(timed_out(&t));
        assert!(!timed_out(&r));
    }

    #[test]
    fn http_client_accepts_ca_file_when_pem_holds_a_certificate() {
        let bundle = format!("some text before\n{TEST_CA_PEM}");
        assert!(client_with_ca(&bundle).is_ok());
    }

    #[test]
    fn http_client_names_ca_file_when_pem_is_malformed() {
        let bad_base64 = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        let not_a_cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        for pem in [bad_base64, not_a_cert] {
            let err = client_with_ca(pem).err().expect("malformed PEM is refused");
            assert!(err.starts_with("ca_file: "), "{err}");
        }
    }

    #[test]
    fn redirects_are_limited_to_safe_targets() {
        let trusted: HashSet<String> = ["127.0.0.1".to_string(), "registry.example.com".to_string()].into();
        let from_https: Uri = "https://registry.example.com/v2/x/blobs/sha256:1".parse().unwrap();
        let from_http: Uri = "http://127.0.0.1:5001/v2/x/blobs/sha256:1".parse().unwrap();
        let cases: &[(&Uri, &str, bool)] = &[
            (&from_https, "https://cdn.example.net/blob?sig=1", true),
            (&from_https, "/other/path", true),
            (&from_https, "http://cdn.example.net/blob", false),
            (&from_https, "https://169.254.169.254/latest", false),
            (&from_https, "https://10.1.2.3/x", false),
            (&from_https, "https://[::1]/x", false),
            (&from_https, "https://[fd00::1]/x", false),
            (&from_https, "https://8.8.8.8/x", true),
            (&from_https, "ftp://cdn.example.net/x", false),
            (&from_https, "https://user:pw@cdn.example.net/x", false),
            (&from_http, "http://127.0.0.1:6000/blob", true),
            (&from_http, "http://192.168.1.1/blob", false),
        ];
        for (from, loc, ok) in cases {
            let got = redirect_target(from, Some(&HeaderValue::from_str(loc).unwrap()), &trusted);
            assert_eq!(got.is_ok(), *ok, "{from} -> {loc}: {got:?}");
        }
        assert!(redirect_target(&from_https, None, &trusted).is_err());
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let cases: &[(&str, &str, bool)] = &[
            ("https://r.example/v2/", "https://r.example/x", true),
            ("https://r.example/v2/", "https://R.EXAMPLE:443/x", true),
            ("http://127.0.0.1:5000/a", "http://127.0.0.1:5000/b", true),
            ("http://127.0.0.1:5000/a", "http://127.0.0.1:5001/a", false),
            ("https://r.example/v2/", "http://r.example/v2/", false),
            ("https://r.example/v2/", "https://r.example:8443/v2/", false),
            ("https://r.example/v2/", "https://cdn.example/v2/", false),
        ];
        for (a, b, same) in cases {
            assert_eq!(
                same_origin(&a.parse().unwrap(), &b.parse().unwrap()),
                *same,
                "{a} vs {b}"
            );
        }
    }

    #[tokio::test]
    async fn resolver_refuses_private_addresses_for_unconfigured_hosts() {
        use tower_service::Service;
        let mut r = GuardedResolver {
            trusted: Arc::new(HashSet::new()),
        };
        let err = r.call("localhost".parse().unwrap()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        let mut r = GuardedResolver {
            trusted: Arc::new(["localhost".to_string()].into()),
        };
        assert!(
            r.call("localhost".parse().unwrap()).await.is_ok(),
            "configured hosts may be local"
        );
    }
}
