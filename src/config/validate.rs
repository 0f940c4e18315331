//! `Config::validate`: every problem in a parsed config, errors and warnings, in a stable
//! order. The only I/O is checking that secret and CA files are readable and that the TLS
//! certificate, key and client CA load.

use std::collections::BTreeMap;

use super::{redact_userinfo, AuthConfig, Config, Problem, Severity, USERINFO_HINT};

/// The shortest token-signing key accepted, in bytes.
pub const MIN_TOKEN_KEY_BYTES: usize = 32;

/// The largest `cache.blob_memory_max_object`.
const MAX_MEMORY_OBJECT: u64 = 16 << 20;

impl Config {
    /// Every problem in the config, errors and warnings, in a stable order.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut err = |m: String| {
            out.push(Problem {
                severity: Severity::Error,
                message: m,
            })
        };
        if self.upstreams.is_empty() {
            err("no [upstreams.<name>] table: at least one upstream is required".into());
        }
        let defaults: Vec<&str> = self
            .upstreams
            .iter()
            .filter(|(_, u)| u.default)
            .map(|(n, _)| n.as_str())
            .collect();
        if !self.upstreams.is_empty() && defaults.len() != 1 {
            err(format!(
                "exactly one upstream must have default = true, found {}: {defaults:?}",
                defaults.len()
            ));
        }
        let mut seen: BTreeMap<String, &str> = BTreeMap::new();
        let mut warnings = Vec::new();
        for (name, up) in &self.upstreams {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                err(format!("upstream name {name:?}: use letters, digits, '-' and '_' only"));
            }
            let url = up.url.to_string();
            match (up.url.scheme_str(), up.url.authority()) {
                (Some("http" | "https"), Some(a)) if !a.as_str().contains('@') => {}
                (_, Some(a)) if a.as_str().contains('@') => err(format!(
                    "upstreams.{name}.url {:?}: must be http(s)://host[:port]{USERINFO_HINT}",
                    redact_userinfo(&url)
                )),
                _ => err(format!(
                    "upstreams.{name}.url {:?}: must be http(s)://host[:port] without credentials",
                    redact_userinfo(&url)
                )),
            }
            if !matches!(up.url.path(), "" | "/") || up.url.query().is_some() {
                err(format!("upstreams.{name}.url: must not have a path or query"));
            }
            for alias in &up.aliases {
                let a = alias.to_ascii_lowercase();
                if a.is_empty() || a.contains('/') || a.contains(char::is_whitespace) {
                    err(format!(
                        "upstreams.{name}.aliases: {alias:?} is not a registry host name"
                    ));
                    continue;
                }
                if let Some(other) = seen.insert(a.clone(), name) {
                    err(format!(
                        "alias {alias:?} is used by both upstreams.{other} and upstreams.{name}"
                    ));
                }
                if !a.contains('.') && !a.contains(':') && a != "localhost" {
                    warnings.push(format!(
                        "upstreams.{name}.aliases: {alias:?} has no dot; as a path prefix it can collide with a Docker Hub organisation"
                    ));
                }
            }
            if up.password_file.is_some() && up.password_env.is_some() {
                err(format!("upstreams.{name}: set password_file or password_env, not both"));
            }
            let has_password = up.password_file.is_some() || up.password_env.is_some();
            if up.username.is_some() != has_password {
                err(format!(
                    "upstreams.{name}: username and a password (password_file or password_env) go together"
                ));
            }
            if let Err(e) = up.load_password() {
                err(format!("upstreams.{name}: {e}"));
            }
            if let Some(ca) = &up.ca_file {
                if let Err(e) = std::fs::metadata(ca) {
                    err(format!("upstreams.{name}.ca_file {}: {e}", ca.display()));
                }
            }
            if up.retries > 5 {
                err(format!("upstreams.{name}.retries: at most 5"));
            }
            if up.circuit_failures == 0 {
                err(format!("upstreams.{name}.circuit_failures: at least 1"));
            }
            if up.timeout.is_zero() || up.connect_timeout.is_zero() {
                err(format!("upstreams.{name}: timeouts must be greater than zero"));
            }
        }
        if let Some(auth) = &self.auth {
            self.validate_auth(auth, &mut err);
        }
        if self.storage.path.as_os_str().is_empty() {
            err("storage.path is empty".into());
        }
        if !(0.1..=1.0).contains(&self.storage.target_ratio) {
            err("storage.target_ratio must be between 0.1 and 1.0".into());
        }
        if self.storage.max_size == Some(0) {
            err("storage.max_size must be greater than zero".into());
        }
        if self.cache.blob_memory_max_object > MAX_MEMORY_OBJECT {
            err(format!(
                "cache.blob_memory_max_object must be at most {}MiB (a blob is read whole into memory)",
                MAX_MEMORY_OBJECT >> 20
            ));
        }
        if let Some(s3) = &self.storage.s3 {
            validate_s3(s3, &mut err);
        }
        if let Some(cluster) = &self.cluster {
            validate_cluster(cluster, &mut err);
        }
        if self.server.max_connections == 0 || self.server.max_connections_per_ip == 0 {
            err("server.max_connections and max_connections_per_ip must be at least 1".into());
        }
        if self.server.idle_timeout.is_zero() || self.server.header_timeout.is_zero() {
            err("server.idle_timeout and header_timeout must be greater than zero".into());
        }
        if let Some(tls) = &self.server.tls {
            if let Err(e) = crate::tls::load_server_config(tls) {
                err(format!("server.tls: {e}"));
            }
            if tls.reload_interval.is_zero() {
                err("server.tls.reload_interval must be greater than zero".into());
            }
        }
        out.extend(warnings.into_iter().map(|m| Problem {
            severity: Severity::Warning,
            message: m,
        }));
        out
    }

    fn validate_auth(&self, auth: &AuthConfig, err: &mut impl FnMut(String)) {
        if let Some(p) = &auth.htpasswd {
            if let Err(e) = std::fs::metadata(p) {
                err(format!("auth.htpasswd {}: {e}", p.display()));
            }
        }
        if let Some(p) = &auth.token_key_file {
            match std::fs::read(p) {
                Ok(k) if k.trim_ascii().len() < MIN_TOKEN_KEY_BYTES => err(format!(
                    "auth.token_key_file {}: at least {MIN_TOKEN_KEY_BYTES} bytes are needed",
                    p.display()
                )),
                Ok(_) => {}
                Err(e) => err(format!("auth.token_key_file {}: {e}", p.display())),
            }
        }
        if let Some(realm) = &auth.realm {
            let ok = realm
                .parse::<http::Uri>()
                .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some());
            if !ok {
                err(format!("auth.realm {realm:?}: must be an http(s) URL"));
            }
        }
        if auth.token_ttl.is_zero() || auth.failed_login_window.is_zero() {
            err("auth: token_ttl and failed_login_window must be greater than zero".into());
        }
        for (i, rule) in auth.rules.iter().enumerate() {
            if rule.users.is_empty() || rule.upstreams.is_empty() || rule.repositories.is_empty() {
                err(format!(
                    "auth.rules[{i}]: users, upstreams and repositories must not be empty"
                ));
            }
            for up in rule.upstreams.iter().filter(|u| *u != "*") {
                if !self.upstreams.contains_key(up) {
                    err(format!("auth.rules[{i}]: no upstream named {up:?}"));
                }
            }
        }
    }
}

/// `[storage.s3]`: a bucket, an endpoint that is a URL (https unless `allow_http`), the key id
/// and its secret file together, and a readable secret file.
fn validate_s3(s3: &crate::config::S3Config, err: &mut impl FnMut(String)) {
    if s3.bucket.is_empty() {
        err("storage.s3.bucket is empty".into());
    }
    if let Some(endpoint) = &s3.endpoint {
        match endpoint.parse::<http::Uri>() {
            Ok(u) if u.scheme_str() == Some("https") && u.host().is_some() => {}
            Ok(u) if u.scheme_str() == Some("http") && u.host().is_some() => {
                if !s3.allow_http {
                    err(format!(
                        "storage.s3.endpoint {endpoint} is plain HTTP: set allow_http = true to allow it"
                    ));
                }
            }
            _ => err(format!("storage.s3.endpoint {endpoint:?} is not an http(s) URL")),
        }
    }
    if s3.access_key_id.is_some() != s3.secret_access_key_file.is_some() {
        err("storage.s3: access_key_id and secret_access_key_file go together".into());
    }
    if let Some(file) = &s3.secret_access_key_file {
        if let Err(e) = std::fs::metadata(file) {
            err(format!("storage.s3.secret_access_key_file {}: {e}", file.display()));
        }
    }
    if s3.timeout.is_zero() || s3.eviction_interval.is_zero() || s3.down_for.is_zero() {
        err("storage.s3.timeout, eviction_interval and down_for must be greater than zero".into());
    }
    if s3.max_size == Some(0) {
        err("storage.s3.max_size must be greater than zero".into());
    }
}

/// `[cluster]`: http(s) URLs for this replica and its peers, a readable secret, and nonzero
/// timers.
fn validate_cluster(c: &crate::config::ClusterConfig, err: &mut impl FnMut(String)) {
    let is_url = |u: &str| {
        u.parse::<http::Uri>()
            .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() && u.path() == "/")
    };
    if !is_url(&c.advertise) {
        err(format!(
            "cluster.advertise {:?} is not an http(s) URL without a path",
            c.advertise
        ));
    }
    for p in &c.peers {
        if !is_url(p) {
            err(format!("cluster.peers: {p:?} is not an http(s) URL without a path"));
        }
    }
    if c.peers.is_empty() && c.peers_dns.is_none() {
        err("cluster: set peers or peers_dns".into());
    }
    if let Err(e) = crate::cluster::PeerKey::from_file(&c.secret_file) {
        err(e);
    }
    if let Some(ca) = &c.ca_file {
        if let Err(e) = std::fs::metadata(ca) {
            err(format!("cluster.ca_file {}: {e}", ca.display()));
        }
    }
    if c.refresh_interval.is_zero() || c.peer_timeout.is_zero() || c.down_for.is_zero() {
        err("cluster: refresh_interval, peer_timeout and down_for must be greater than zero".into());
    }
}
