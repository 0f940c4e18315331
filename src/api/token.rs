//! `GET /token`: berth's token endpoint (the Docker token spec). Basic credentials (or none,
//! for an anonymous token) and `scope=repository:<name>:pull` parameters in; a short-lived
//! signed token out, granting the scopes the caller may pull. The decisions are `auth`'s.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Response};

use crate::auth::{Caller, Presented};
use crate::body::{self, Body};
use crate::error::Result;
use crate::http::route::Query;
use crate::oci::RepoName;
use crate::state::AppState;
use crate::upstream::Upstream;

/// Scopes read from one request; more are ignored.
const MAX_SCOPES: usize = 16;

/// Issue a token.
pub async fn get(state: &AppState, presented: &Presented, caller: &Caller, query: &Query) -> Result<Response<Body>> {
    let scopes: Vec<(Arc<Upstream>, RepoName)> = query
        .passthrough
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split_whitespace())
        .filter_map(pull_scope)
        .filter_map(|name| state.upstreams.resolve(query.ns.as_deref(), name).ok())
        .take(MAX_SCOPES)
        .collect();
    let (token, claims) = state.auth.issue(presented, caller, &scopes).await?;
    let issued = SystemTime::UNIX_EPOCH + Duration::from_secs(claims.iat);
    let doc = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": claims.exp - claims.iat,
        "issued_at": humantime::format_rfc3339_seconds(issued).to_string(),
    });
    let mut resp = Response::new(body::full(doc.to_string()));
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// The repository of `repository:<name>:<actions>` when the actions include `pull`.
fn pull_scope(scope: &str) -> Option<RepoName> {
    let rest = scope.strip_prefix("repository:")?;
    let (name, actions) = rest.rsplit_once(':')?;
    if !actions.split(',').any(|a| a == "pull" || a == "*") {
        return None;
    }
    name.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_name_a_repository_only_when_they_ask_for_pull() {
        let cases = [
            ("repository:library/alpine:pull", Some("library/alpine")),
            ("repository:org/app:push,pull", Some("org/app")),
            ("repository:org/app:*", Some("org/app")),
            ("repository:org/app:push", None),
            ("registry:catalog:*", None),
            ("repository:Bad/Name:pull", None),
            ("repository:nopull", None),
        ];
        for (scope, want) in cases {
            assert_eq!(pull_scope(scope).map(|n| n.to_string()).as_deref(), want, "{scope}");
        }
    }
}
