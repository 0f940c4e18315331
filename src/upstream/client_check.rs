//! `client_credentials = "verify"`: ask the upstream whether a client's own credentials may
//! pull a repository. The client's Basic credentials go to the upstream's token service for
//! exactly `repository:<repo>:pull` (or straight to the upstream when it asks for Basic), and
//! the answer is proven with a `tags/list` request under that token. Nothing is cached here
//! (the caller keeps the answers) and the credentials are never logged.

use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use hyper::body::Incoming;

use super::{parse_challenge, Challenge, Error, Kind, Upstream};
use crate::oci::RepoName;

impl Upstream {
    /// Whether the upstream lets the holder of `basic` (an `Authorization: Basic` value) pull
    /// `repo`. `Ok(false)`: refused (401/403/404); `Err`: the upstream could not say.
    pub async fn check_client(&self, repo: &RepoName, basic: &HeaderValue) -> Result<bool, Error> {
        let url = self.url(&format!("/v2/{repo}/tags/list?n=1"))?;
        let with = |auth: HeaderValue| {
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, auth);
            h
        };
        let resp = self.send(Kind::Tags, &Method::GET, &url, with(basic.clone())).await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return verdict(resp);
        }
        let challenge = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_challenge);
        let Some(Challenge::Bearer { realm, service, .. }) = challenge else {
            // Basic was asked for and the client's Basic credentials were just refused.
            return Ok(false);
        };
        let scope = format!("repository:{repo}:pull");
        let token = match self
            .request_token(&realm, service.as_deref(), &scope, Some(basic.clone()))
            .await
        {
            Ok((t, _)) => t,
            Err(Error::Denied(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        let mut bearer =
            HeaderValue::from_str(&format!("Bearer {}", token.0)).map_err(|_| Error::Token("unusable token".into()))?;
        bearer.set_sensitive(true);
        verdict(self.send(Kind::Tags, &Method::GET, &url, with(bearer)).await?)
    }
}

fn verdict(resp: Response<Incoming>) -> Result<bool, Error> {
    match resp.status().as_u16() {
        200..=299 => Ok(true),
        401 | 403 | 404 => Ok(false),
        429 => Err(Error::Throttled(resp.headers().get(http::header::RETRY_AFTER).cloned())),
        code => Err(Error::Status(code)),
    }
}
