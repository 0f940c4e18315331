//! Client authentication and authorization: the one gate every pull passes before it can
//! reach the store or an upstream. Who the client is (a verified TLS client certificate,
//! htpasswd Basic, a token berth issued, or anonymous), whether it may pull `(upstream, repository)` (`rules`), the client's own
//! upstream rights for `client_credentials = "verify"` upstreams, the `/token` grant, the
//! challenge for 401s, the failed-login limiter, and the failure metrics. Secrets (passwords,
//! tokens, the signing key, client credentials) are never logged or put into errors.

pub mod htpasswd;
pub mod identity;
pub mod limiter;
pub mod rules;
pub mod token;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue};
use sha2::{Digest as _, Sha256};

pub use self::htpasswd::Htpasswd;
pub use self::identity::{AuthMethod, Identity};
pub use self::limiter::LoginLimiter;
pub use self::rules::{Rules, ANONYMOUS};
pub use self::token::{Claims, Grant, TokenSigner};
use crate::config::{Config, Secret};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::oci::RepoName;
use crate::upstream::{encode_query, Upstream};

/// The `service` berth names in its challenges and tokens.
pub const SERVICE: &str = "berth";

/// Credentials a request presents in `Authorization`.
#[derive(Debug, Clone)]
pub enum Presented {
    /// None (or a header berth cannot read).
    None,
    /// `Basic`: a user and password.
    Basic {
        /// User name.
        user: String,
        /// Password.
        password: Secret,
        /// The header as sent, for checking against an upstream.
        header: HeaderValue,
    },
    /// `Bearer`: a token.
    Bearer(Secret),
}

impl Presented {
    /// Read the `Authorization` header.
    pub fn from_headers(h: &HeaderMap) -> Presented {
        let Some(v) = h.get(AUTHORIZATION) else {
            return Presented::None;
        };
        let text = v.to_str().unwrap_or("").trim();
        let (scheme, rest) = text.split_once(' ').unwrap_or((text, ""));
        if scheme.eq_ignore_ascii_case("bearer") && !rest.trim().is_empty() {
            return Presented::Bearer(Secret(rest.trim().to_string()));
        }
        if !scheme.eq_ignore_ascii_case("basic") {
            return Presented::None;
        }
        let decoded = STANDARD
            .decode(rest.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        match decoded.as_deref().and_then(|s| s.split_once(':')) {
            Some((user, password)) if !user.is_empty() => {
                let mut header = v.clone();
                header.set_sensitive(true);
                Presented::Basic {
                    user: user.to_string(),
                    password: Secret(password.to_string()),
                    header,
                }
            }
            _ => Presented::None,
        }
    }
}

/// Where a request came from: for the limiter and for the challenge's realm.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The client's address.
    pub addr: IpAddr,
    /// `scheme://host[:port]` the client used to reach berth.
    pub origin: String,
    /// containerd's `?ns=`, carried into the realm so the token request resolves alike.
    pub ns: Option<String>,
    /// The user of a verified TLS client certificate, if the connection presented one.
    pub certificate: Option<Identity>,
}

/// The gate. Built once from config.
pub struct Auth {
    /// `[auth]` is set or some upstream verifies client credentials.
    enabled: bool,
    has_verifying_upstream: bool,
    htpasswd: Option<Arc<Htpasswd>>,
    signer: TokenSigner,
    limiter: LoginLimiter,
    rules: Rules,
    realm: Option<String>,
    /// Client-credential check answers: keyed hash of (upstream, repo, header) -> (allowed, until).
    checks: moka::sync::Cache<[u8; 32], (bool, Instant)>,
    check_key: [u8; 32],
    metrics: Arc<Metrics>,
}

impl Auth {
    /// Load the htpasswd file and the signing key named in config.
    pub fn from_config(config: &Config, metrics: Arc<Metrics>) -> Result<Auth, String> {
        let has_verifying_upstream = config
            .upstreams
            .values()
            .any(|u| u.client_credentials == crate::config::ClientCredentials::Verify);
        let auth = config.auth.as_ref();
        let htpasswd = match auth.and_then(|a| a.htpasswd.as_deref()) {
            Some(p) => Some(Arc::new(Htpasswd::load(p).map_err(|e| format!("auth.htpasswd {e}"))?)),
            None => None,
        };
        let ttl = auth.map_or(Duration::from_secs(300), |a| a.token_ttl);
        let signer = match auth.and_then(|a| a.token_key_file.as_deref()) {
            Some(p) => {
                let key = std::fs::read(p).map_err(|e| format!("auth.token_key_file {}: {e}", p.display()))?;
                TokenSigner::new(key.trim_ascii().to_vec(), ttl)
            }
            None => TokenSigner::random(ttl)?,
        };
        let limiter = match auth {
            Some(a) => LoginLimiter::new(a.max_failed_logins, a.failed_login_window),
            None => LoginLimiter::new(10, Duration::from_secs(60)),
        };
        let mut check_key = [0u8; 32];
        getrandom::getrandom(&mut check_key).map_err(|e| format!("no random source: {e}"))?;
        Ok(Auth {
            enabled: auth.is_some() || has_verifying_upstream,
            has_verifying_upstream,
            htpasswd,
            signer,
            limiter,
            rules: Rules::from_config(config),
            realm: auth.and_then(|a| a.realm.clone()),
            checks: moka::sync::Cache::builder().max_capacity(100_000).build(),
            check_key,
            metrics,
        })
    }

    /// Whether clients are asked for credentials at all.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// `GET /v2/`: 200 for a valid token or login (or when auth is off), else 401 with the
    /// challenge that starts the token flow.
    pub async fn check_base(&self, p: &Presented, caller: &Caller) -> Result<(), Error> {
        if !self.enabled {
            return Ok(());
        }
        match p {
            Presented::None if caller.certificate.is_some() => Ok(()),
            Presented::None => Err(self.challenge(caller, None)),
            Presented::Bearer(t) => match self.signer.verify(&t.0) {
                Ok(_) => Ok(()),
                Err(_) => Err(self.failed("bad_token", self.challenge(caller, None))),
            },
            Presented::Basic { user, password, .. } => match self.login(caller.addr, user, password).await? {
                Some(_) => Ok(()),
                // Possibly upstream credentials: they can only be checked per repository.
                None if self.has_verifying_upstream => Ok(()),
                None => Err(self.login_failed(caller, None)),
            },
        }
    }

    /// May this request pull `repo` from `up`? `name` is the repository as the client wrote it
    /// (the token scope). 401 with a challenge when the client must (re)authenticate, 403
    /// `DENIED` when it is authenticated but not allowed.
    pub async fn authorize(
        &self,
        p: &Presented,
        caller: &Caller,
        up: &Upstream,
        repo: &RepoName,
        name: &RepoName,
    ) -> Result<Option<Identity>, Error> {
        if !self.enabled {
            return Ok(caller.certificate.clone());
        }
        let (who, claims) = match p {
            Presented::None => (caller.certificate.clone(), None),
            Presented::Bearer(t) => match self.signer.verify(&t.0) {
                Ok(c) => (c.identity(), Some(c)),
                Err(_) => return Err(self.failed("bad_token", self.challenge(caller, Some(name)))),
            },
            Presented::Basic { header, .. } if up.verifies_clients() => {
                return match self.check_client(caller, up, repo, header).await? {
                    true => Ok(caller.certificate.clone()),
                    false => Err(Error::Denied),
                };
            }
            Presented::Basic { user, password, .. } => match self.login(caller.addr, user, password).await? {
                Some(who) => (Some(who), None),
                None => return Err(self.login_failed(caller, Some(name))),
            },
        };
        if up.verifies_clients() {
            return match claims.is_some_and(|c| c.allows(up.name(), repo.as_str())) {
                true => Ok(who),
                false => Err(self.failed("unauthenticated", self.challenge(caller, Some(name)))),
            };
        }
        if !self.rules.allows(who.as_ref(), up.name(), repo.as_str()) {
            return Err(match who.is_some() {
                true => self.failed("denied", Error::Denied),
                false => self.failed("unauthenticated", self.challenge(caller, Some(name))),
            });
        }
        match claims {
            // The token is good but was issued for other repositories: ask for a new one.
            Some(c) if !c.allows(up.name(), repo.as_str()) => Err(self.challenge(caller, Some(name))),
            _ => Ok(who),
        }
    }

    /// `/token`: a signed token for the presented identity, granting the requested scopes it
    /// may pull. Wrong credentials get 401 (and count toward the limiter).
    pub async fn issue(
        &self,
        p: &Presented,
        caller: &Caller,
        scopes: &[(Arc<Upstream>, RepoName)],
    ) -> Result<(String, Claims), Error> {
        if !self.enabled {
            return Err(Error::NotFound);
        }
        let (who, upstream_creds) = match p {
            Presented::Basic {
                user, password, header, ..
            } => match self.login(caller.addr, user, password).await? {
                Some(who) => (Some(who), None),
                None => (None, Some(header)),
            },
            _ => (caller.certificate.clone(), None),
        };
        let mut grants = Vec::new();
        let mut upstream_ok = false;
        for (up, repo) in scopes {
            let allowed = match (up.verifies_clients(), upstream_creds) {
                (true, Some(h)) => {
                    let ok = self.check_client(caller, up, repo, h).await?;
                    upstream_ok |= ok;
                    ok
                }
                (true, None) => false,
                (false, _) => self.rules.allows(who.as_ref(), up.name(), repo.as_str()),
            };
            if allowed {
                grants.push(Grant {
                    upstream: up.name().to_string(),
                    repo: repo.to_string(),
                });
            }
        }
        // A login without scopes (`docker login`) cannot be checked against an upstream.
        let unchecked_login = scopes.is_empty() && self.has_verifying_upstream;
        if upstream_creds.is_some() && !upstream_ok && !unchecked_login {
            return Err(self.login_failed(caller, None));
        }
        Ok(self.signer.issue(who.as_ref(), grants))
    }

    /// How long issued tokens live.
    pub fn token_ttl(&self) -> Duration {
        self.signer.ttl()
    }

    /// Check a Basic login against htpasswd. `Ok(None)`: not a valid berth user. Refused
    /// with 429 while the address is over its failed-login limit.
    async fn login(&self, addr: IpAddr, user: &str, password: &Secret) -> Result<Option<Identity>, Error> {
        let Some(db) = &self.htpasswd else { return Ok(None) };
        let who = || Identity::new(user, AuthMethod::Password);
        if db.is_remembered(user, &password.0) {
            return Ok(Some(who()));
        }
        self.limit(addr)?;
        let (db, u, pw) = (db.clone(), user.to_string(), password.clone());
        let ok = tokio::task::spawn_blocking(move || db.verify(&u, &pw.0))
            .await
            .unwrap_or(false);
        Ok(ok.then(who))
    }

    fn limit(&self, addr: IpAddr) -> Result<(), Error> {
        self.limiter.check(addr, Instant::now()).map_err(|wait| {
            self.failed(
                "throttled",
                Error::LoginThrottled {
                    retry_after: wait.as_secs().max(1),
                },
            )
        })
    }

    fn login_failed(&self, caller: &Caller, name: Option<&RepoName>) -> Error {
        self.limiter.failed(caller.addr, Instant::now());
        self.failed("bad_credentials", self.challenge(caller, name))
    }

    /// The client's own credentials against the upstream, answered from the cache within
    /// the upstream's `client_check_ttl`.
    async fn check_client(
        &self,
        caller: &Caller,
        up: &Upstream,
        repo: &RepoName,
        header: &HeaderValue,
    ) -> Result<bool, Error> {
        let mut h = Sha256::new();
        for part in [
            self.check_key.as_slice(),
            up.name().as_bytes(),
            repo.as_str().as_bytes(),
            header.as_bytes(),
        ] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        let key: [u8; 32] = h.finalize().into();
        let cached = self.checks.get(&key).filter(|(_, until)| *until > Instant::now());
        let ok = match cached {
            Some((ok, _)) => ok,
            None => {
                self.limit(caller.addr)?;
                let ok = up
                    .check_client(repo, header)
                    .await
                    .map_err(|e| Error::from_upstream(up.name(), repo, e))?;
                self.checks.insert(key, (ok, Instant::now() + up.client_check_ttl()));
                if !ok {
                    self.limiter.failed(caller.addr, Instant::now());
                }
                ok
            }
        };
        if !ok {
            self.metrics
                .auth_failures
                .with_label_values(&["upstream_refused"])
                .inc();
        }
        Ok(ok)
    }

    fn failed(&self, reason: &str, e: Error) -> Error {
        self.metrics.auth_failures.with_label_values(&[reason]).inc();
        e
    }

    /// 401 with `Bearer realm="<berth>/token",service="berth"[,scope=...]`.
    fn challenge(&self, caller: &Caller, name: Option<&RepoName>) -> Error {
        let mut realm = self.realm.clone().unwrap_or_else(|| format!("{}/token", caller.origin));
        if let Some(ns) = &caller.ns {
            realm.push(if realm.contains('?') { '&' } else { '?' });
            realm.push_str(&format!("ns={}", encode_query(ns)));
        }
        let mut v = format!("Bearer realm=\"{realm}\",service=\"{SERVICE}\"");
        if let Some(n) = name {
            v.push_str(&format!(",scope=\"repository:{n}:pull\""));
        }
        let challenge = HeaderValue::from_str(&v)
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer realm=\"/token\",service=\"berth\""));
        Error::Unauthorized { challenge }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_headers_parse_into_presented_credentials() {
        let mut h = HeaderMap::new();
        assert!(matches!(Presented::from_headers(&h), Presented::None));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic YWxpY2U6czNjcjN0OngK"));
        match Presented::from_headers(&h) {
            Presented::Basic { user, password, .. } => {
                assert_eq!(user, "alice");
                assert_eq!(password.0, "s3cr3t:x\n", "passwords may contain colons");
            }
            other => panic!("{other:?}"),
        }
        h.insert(AUTHORIZATION, HeaderValue::from_static("bearer abc.def"));
        assert!(matches!(Presented::from_headers(&h), Presented::Bearer(t) if t.0 == "abc.def"));
        for bad in ["Basic !!!", "Basic Og==", "Negotiate x", "Bearer "] {
            h.insert(AUTHORIZATION, HeaderValue::from_static(bad));
            assert!(matches!(Presented::from_headers(&h), Presented::None), "{bad}");
        }
        let printed = format!("{:?}", Presented::Bearer(Secret("tok".into())));
        assert!(!printed.contains("tok"), "tokens never print: {printed}");
    }
}
