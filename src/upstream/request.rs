//! How every upstream request goes out: the URL, credentials (cached bearer token or Basic),
//! the circuit breaker and 429 back-off, bounded retries with jitter, one answer to a 401
//! challenge (token fetch from a validated realm), metrics, and the small helpers that read
//! statuses, headers and capped bodies. Callers are the `fetch_*`/`head_*` methods in `mod.rs`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http::header::{AUTHORIZATION, CONTENT_LENGTH, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::{
    parse_challenge, parse_retry_after, realm_allowed, Admit, Challenge, Error, Failure, Kind, Upstream, Verdict,
};
use crate::config::Secret;
use crate::oci::RepoName;

/// Largest token response read.
const MAX_TOKEN_BYTES: usize = 1 << 20;

impl Upstream {
    pub(super) fn url(&self, path_and_query: &str) -> Result<Uri, Error> {
        let base = self.base.to_string();
        format!("{}{}", base.trim_end_matches('/'), path_and_query)
            .parse()
            .map_err(|_| Error::Protocol("bad url".into()))
    }

    fn basic_header(&self) -> Option<HeaderValue> {
        let (user, pass) = (self.username.as_ref()?, self.password.as_ref()?);
        let raw = STANDARD.encode(format!("{user}:{}", pass.0));
        let mut v = HeaderValue::from_str(&format!("Basic {raw}")).ok()?;
        v.set_sensitive(true);
        Some(v)
    }

    fn authorization(&self, scope: &str) -> Option<HeaderValue> {
        if let Some(t) = self.tokens.get(scope) {
            let mut v = HeaderValue::from_str(&format!("Bearer {}", t.value.0)).ok()?;
            v.set_sensitive(true);
            return Some(v);
        }
        if self.basic.load(Ordering::Relaxed) {
            return self.basic_header();
        }
        None
    }

    /// Send a pull request for `repo`, answering one 401 challenge.
    pub(super) async fn request(
        &self,
        kind: Kind,
        method: Method,
        repo: &RepoName,
        path_and_query: &str,
        extra: HeaderMap,
    ) -> Result<Response<Incoming>, Error> {
        let scope = format!("repository:{repo}:pull");
        let url = self.url(path_and_query)?;
        let mut retried = false;
        loop {
            let mut headers = extra.clone();
            if let Some(a) = self.authorization(&scope) {
                headers.insert(AUTHORIZATION, a);
            }
            let resp = self.send(kind, &method, &url, headers).await?;
            if resp.status() != StatusCode::UNAUTHORIZED || retried {
                return Ok(resp);
            }
            retried = true;
            let challenge = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_challenge);
            match challenge {
                Some(Challenge::Bearer { realm, service, .. }) => {
                    self.tokens.remove(&scope);
                    self.fetch_token(&realm, service.as_deref(), &scope).await?;
                }
                Some(Challenge::Basic) if self.password.is_some() => self.basic.store(true, Ordering::Relaxed),
                _ => return Ok(resp),
            }
        }
    }

    /// Send through the breaker: fail fast while it is open or while a 429 back-off runs;
    /// retry connect failures and 5xx (nothing of the body was read yet) with jittered backoff.
    pub(super) async fn send(
        &self,
        kind: Kind,
        method: &Method,
        url: &Uri,
        headers: HeaderMap,
    ) -> Result<Response<Incoming>, Error> {
        let mut attempt = 0;
        loop {
            let admitted = self.breaker.admit(Instant::now());
            self.record_circuit();
            match admitted {
                Admit::Yes => {}
                Admit::CircuitOpen(opened) => {
                    self.count_error("circuit_open");
                    let since = humantime::format_rfc3339_seconds(opened.since).to_string();
                    return Err(Error::CircuitOpen {
                        since: since.get(11..19).unwrap_or(&since).to_string(),
                        cause: opened.cause,
                    });
                }
                Admit::Throttled(wait) => {
                    self.count_error("throttled");
                    return Err(Error::Throttled(Some(HeaderValue::from(wait.as_secs().max(1)))));
                }
            }
            let resp = self.client.send(method.clone(), url.clone(), headers.clone()).await;
            let code = match &resp {
                Ok(r) => r.status().as_str().to_string(),
                Err(Error::Timeout(_)) => "timeout".to_string(),
                Err(_) => "error".to_string(),
            };
            self.metrics
                .record_upstream_request(&self.name, kind.as_str(), method, &code);
            let retryable = match &resp {
                Ok(r) if r.status().is_server_error() => {
                    self.count_error("status_5xx");
                    let cause = format!("{} answered status {}", host_of(url), r.status().as_u16());
                    if self.breaker.failure(Instant::now(), Failure::Status, &cause) == Verdict::Confirm {
                        self.confirm_health(cause).await;
                    }
                    true
                }
                Ok(r) => {
                    self.metrics.record_ratelimit(&self.name, r.headers());
                    self.breaker.success();
                    if r.status() == StatusCode::TOO_MANY_REQUESTS {
                        self.count_error("status_429");
                        self.breaker
                            .throttled(Instant::now(), parse_retry_after(r.headers().get(RETRY_AFTER)));
                    }
                    false
                }
                Err(e @ (Error::Connect(_) | Error::Timeout(_))) => {
                    self.count_error(if matches!(e, Error::Timeout(_)) {
                        "timeout"
                    } else {
                        "connect"
                    });
                    if self.breaker.failure(Instant::now(), Failure::Transport, &e.to_string()) == Verdict::Opened {
                        tracing::warn!(upstream = %self.name, error = %e, "upstream keeps failing: circuit open");
                    }
                    // A timeout already cost the full wait; do not double it.
                    matches!(e, Error::Connect(_))
                }
                Err(_) => false,
            };
            self.record_circuit();
            if !retryable || attempt >= self.retries || self.breaker.is_open() {
                return resp;
            }
            attempt += 1;
            // 100 ms, 200 ms, 400 ms... with +-50% jitter.
            let base = 100u64 << (attempt - 1).min(5);
            tokio::time::sleep(Duration::from_millis(base / 2 + fastrand::u64(..=base))).await;
        }
    }

    /// 5xx keep coming: is it the upstream, or only what clients ask for? Ask its `/v2/`
    /// (any answer below 500, 401 included, means it is alive) and let the breaker decide.
    async fn confirm_health(&self, last: String) {
        let probe = match self.url("/v2/") {
            Ok(url) => match self.client.send(Method::GET, url, HeaderMap::new()).await {
                Ok(r) if !r.status().is_server_error() => Ok(()),
                Ok(r) => Err(format!("{last}; GET /v2/ answered status {}", r.status().as_u16())),
                Err(e) => Err(format!("{last}; GET /v2/: {e}")),
            },
            Err(e) => Err(e.to_string()),
        };
        if self.breaker.confirmed(Instant::now(), probe) {
            tracing::warn!(upstream = %self.name, "upstream answers 5xx to /v2/ as well: circuit open");
        }
    }

    /// Publish the breaker's position as `berth_upstream_circuit_state{upstream}`.
    pub(super) fn record_circuit(&self) {
        self.metrics
            .upstream_circuit_state
            .with_label_values(&[&self.name])
            .set(self.breaker.state() as i64);
    }

    fn count_error(&self, reason: &str) {
        self.metrics.record_upstream_error(&self.name, reason);
    }

    async fn fetch_token(&self, realm: &str, service: Option<&str>, scope: &str) -> Result<(), Error> {
        let (token, expires_in) = self
            .request_token(realm, service, scope, self.basic_header())
            .await
            .map_err(|e| match e {
                Error::Denied(code) => Error::Token(format!("status {code}")),
                e => e,
            })?;
        self.tokens.insert(scope, token, expires_in);
        Ok(())
    }

    /// Ask the upstream's token service (a realm on its own domain) for a token for `scope`,
    /// sending `auth` (Basic credentials, berth's or a client's). A 401/403 is `Denied`.
    pub(super) async fn request_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        auth: Option<HeaderValue>,
    ) -> Result<(Secret, Duration), Error> {
        let realm_uri: Uri = realm.parse().map_err(|_| Error::Realm("unparsable".into()))?;
        if !realm_allowed(&self.base, &realm_uri) {
            return Err(Error::Realm(realm_uri.host().unwrap_or("?").to_string()));
        }
        let mut query = format!("scope={}", encode_query(scope));
        if let Some(s) = service {
            query.push_str(&format!("&service={}", encode_query(s)));
        }
        let sep = if realm.contains('?') { '&' } else { '?' };
        let url: Uri = format!("{realm}{sep}{query}")
            .parse()
            .map_err(|_| Error::Realm("unparsable".into()))?;
        let mut headers = HeaderMap::new();
        if let Some(b) = auth {
            headers.insert(AUTHORIZATION, b);
        }
        let resp = self.send(Kind::Token, &Method::GET, &url, headers).await?;
        match resp.status().as_u16() {
            200..=299 => {}
            code @ (401 | 403) => return Err(Error::Denied(code)),
            code => return Err(Error::Token(format!("status {code}"))),
        }
        let body = read_capped(resp.into_body(), MAX_TOKEN_BYTES).await?;
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let t: TokenResponse = serde_json::from_slice(&body).map_err(|_| Error::Token("unparsable response".into()))?;
        let token = t
            .token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::Token("no token".into()))?;
        // Spec: expires_in defaults to 60 s.
        Ok((Secret(token), Duration::from_secs(t.expires_in.unwrap_or(60).max(1))))
    }
}

/// 2xx passes, 404 is `None`, everything else an error.
pub(super) fn check_status(resp: Response<Incoming>) -> Result<Option<Response<Incoming>>, Error> {
    let s = resp.status();
    match s.as_u16() {
        200..=299 => Ok(Some(resp)),
        404 => Ok(None),
        401 | 403 => Err(Error::Denied(s.as_u16())),
        429 => Err(Error::Throttled(resp.headers().get(RETRY_AFTER).cloned())),
        code => Err(Error::Status(code)),
    }
}

/// Read a whole body, failing once it passes `max` bytes.
pub async fn read_capped(mut body: Incoming, max: usize) -> Result<Bytes, Error> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Error::Protocol(e.to_string()))?;
        if let Some(data) = frame.data_ref() {
            if buf.len() + data.len() > max {
                return Err(Error::TooLarge(max));
            }
            buf.extend_from_slice(data);
        }
    }
    Ok(buf.freeze())
}

fn host_of(url: &Uri) -> &str {
    url.authority().map_or("?", |a| a.as_str())
}

pub(super) fn header_string(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// `Content-Length`, if present and numeric.
pub fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// RFC 3986 unreserved characters; everything else in a query value is percent-encoded.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encode a query value (RFC 3986 unreserved characters pass).
pub fn encode_query(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, QUERY_VALUE).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode_query("repository:a/b:pull"), "repository%3Aa%2Fb%3Apull");
    }
}
