//! Upstream authentication: `WWW-Authenticate` parsing, the realm policy that decides where
//! credentials may be sent (CVE-2026-33540), and the bearer-token cache keyed by scope.
//! Parsing and policy are pure; the token fetch itself lives in `mod.rs`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Uri;

use crate::config::Secret;

/// One challenge from a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// Token flow: fetch a token from `realm` for `service` and `scope`.
    Bearer {
        /// The token endpoint.
        realm: String,
        /// `service` parameter, passed back to the realm.
        service: Option<String>,
        /// `scope` parameter, if the registry named one.
        scope: Option<String>,
    },
    /// Send credentials with every request.
    Basic,
}

/// Parse a `WWW-Authenticate` value. Unknown schemes and malformed parameters yield `None`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(char::is_whitespace).unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(rest)?;
    let get = |k: &str| {
        params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    Some(Challenge::Bearer {
        realm: get("realm")?,
        service: get("service"),
        scope: get("scope"),
    })
}

/// `key=value` or `key="quoted, value"` pairs separated by commas.
fn parse_params(s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(out);
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
        if chars.next() != Some('=') {
            return None;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => value.push(chars.next()?),
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ','))
                .collect::<String>()
                .trim()
                .to_string();
        }
        out.push((key.trim().to_string(), value));
    }
}

/// Whether berth may send this upstream's credentials to `realm`: the same authority, or an
/// https host in the same registrable domain (auth.docker.io for registry-1.docker.io). IP
/// literals and localhost are only accepted as the upstream's own authority.
pub fn realm_allowed(upstream: &Uri, realm: &Uri) -> bool {
    let scheme_ok = matches!(
        (upstream.scheme_str(), realm.scheme_str()),
        (Some("https"), Some("https")) | (Some("http"), Some("http" | "https"))
    );
    let (Some(up), Some(re)) = (upstream.authority(), realm.authority()) else {
        return false;
    };
    if !scheme_ok || re.as_str().contains('@') {
        return false;
    }
    if up.as_str().eq_ignore_ascii_case(re.as_str()) {
        return true;
    }
    let (up_host, re_host) = (up.host().to_ascii_lowercase(), re.host().to_ascii_lowercase());
    let is_literal = |h: &str| h.trim_matches(['[', ']']).parse::<IpAddr>().is_ok() || h == "localhost";
    if is_literal(&up_host) || is_literal(&re_host) || realm.scheme_str() != Some("https") {
        return false;
    }
    matches!((registrable_domain(&up_host), registrable_domain(&re_host)), (Some(a), Some(b)) if a == b)
}

/// The registrable domain (eTLD+1) by the public suffix list: `docker.io` for
/// `auth.docker.io`, `example.co.uk` for `r.example.co.uk`; none for a bare public suffix.
fn registrable_domain(host: &str) -> Option<&str> {
    psl::domain_str(host.trim_end_matches('.'))
}

/// A bearer token and when it stops being usable.
#[derive(Debug, Clone)]
pub struct Token {
    /// The token.
    pub value: Secret,
    /// Expiry, already reduced by a safety margin.
    pub expires: Instant,
}

/// Bearer tokens per scope, bounded in count; expired ones are never returned.
#[derive(Clone)]
pub struct TokenCache {
    inner: moka::sync::Cache<String, Arc<Token>>,
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache {
            inner: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
        }
    }
}

impl TokenCache {
    /// A usable token for `scope`.
    pub fn get(&self, scope: &str) -> Option<Arc<Token>> {
        self.inner.get(scope).filter(|t| t.expires > Instant::now())
    }

    /// Remember a token valid for `expires_in` (the spec's default is 60 s).
    pub fn insert(&self, scope: &str, value: Secret, expires_in: Duration) {
        // Refresh a little early so a token never expires mid-request.
        let margin = (expires_in / 10).min(Duration::from_secs(30));
        let token = Token {
            value,
            expires: Instant::now() + expires_in.saturating_sub(margin),
        };
        self.inner.insert(scope.to_string(), Arc::new(token));
    }

    /// Drop a token the upstream refused.
    pub fn remove(&self, scope: &str) {
        self.inner.invalidate(scope);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_with_quotes_commas_and_case() {
        let hub = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:samalba/my-app:pull,push""#;
        assert_eq!(
            parse_challenge(hub),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:samalba/my-app:pull,push".into()),
            })
        );
        let cases: &[(&str, Option<Challenge>)] = &[
            ("Basic realm=\"Registry\"", Some(Challenge::Basic)),
            ("basic", Some(Challenge::Basic)),
            (
                "bearer realm=https://x.io/t",
                Some(Challenge::Bearer {
                    realm: "https://x.io/t".into(),
                    service: None,
                    scope: None,
                }),
            ),
            (
                r#"Bearer realm="a\"b""#,
                Some(Challenge::Bearer {
                    realm: "a\"b".into(),
                    service: None,
                    scope: None,
                }),
            ),
            ("Bearer service=\"x\"", None),
            ("Bearer realm=\"unterminated", None),
            ("Negotiate abc", None),
            ("", None),
        ];
        for (h, want) in cases {
            assert_eq!(&parse_challenge(h), want, "{h:?}");
        }
    }

    #[test]
    fn realms_must_belong_to_the_upstream() {
        let cases: &[(&str, &str, bool)] = &[
            ("https://registry-1.docker.io", "https://auth.docker.io/token", true),
            ("https://ghcr.io", "https://ghcr.io/token", true),
            ("https://quay.io", "https://quay.io/v2/auth", true),
            ("https://registry.example.co.uk", "https://auth.example.co.uk/t", true),
            ("https://registry.example.co.uk", "https://evil.co.uk/t", false),
            // Public suffixes that the last-two-labels guess got wrong: tenants of one
            // hosting suffix are different sites.
            ("https://team.github.io", "https://evil.github.io/t", false),
            ("https://r.team.pages.dev", "https://auth.team.pages.dev/t", true),
            ("https://r.team.pages.dev", "https://other.pages.dev/t", false),
            ("https://registry-1.docker.io", "https://evil.tld/token", false),
            ("https://registry-1.docker.io", "http://auth.docker.io/token", false),
            ("https://registry-1.docker.io", "http://169.254.169.254/", false),
            ("https://registry-1.docker.io", "https://localhost:9000/", false),
            ("https://registry-1.docker.io", "https://user@auth.docker.io/", false),
            ("http://127.0.0.1:5001", "http://127.0.0.1:5001/token", true),
            ("http://127.0.0.1:5001", "http://127.0.0.1:9000/token", false),
            ("http://127.0.0.1:5001", "http://localhost:5001/token", false),
            ("https://10.0.0.1", "https://10.0.0.2/token", false),
            ("https://r.example.com", "ftp://r.example.com/t", false),
        ];
        for (up, realm, want) in cases {
            let got = realm_allowed(&up.parse().unwrap(), &realm.parse().unwrap());
            assert_eq!(got, *want, "{up} -> {realm}");
        }
    }

    #[test]
    fn tokens_expire_before_their_lifetime_ends() {
        let cache = TokenCache::default();
        cache.insert("s", Secret("t".into()), Duration::from_secs(300));
        assert!(cache.get("s").is_some());
        cache.insert("z", Secret("t".into()), Duration::from_secs(0));
        assert!(cache.get("z").is_none(), "a zero-lifetime token is never reused");
        cache.remove("s");
        assert!(cache.get("s").is_none());
    }
}
