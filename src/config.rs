//! `config.toml`: the serde structs with their defaults; reading the file with its
//! `BERTH_SECTION__KEY` environment overrides (`load`), and `validate()` (`validate`), each of
//! which reports every problem at once. No network I/O here; the only file access is reading
//! the config itself and checking that secret files are readable.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::Uri;
use serde::{Deserialize, Deserializer};

/// The whole configuration. Immutable once loaded; shared as `Arc<Config>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Client-facing listener.
    #[serde(default)]
    pub server: ServerConfig,
    /// Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// The on-disk store.
    pub storage: StorageConfig,
    /// Freshness policy.
    #[serde(default)]
    pub cache: CacheConfig,
    /// The closed set of upstream registries, keyed by a stable name (used in metrics and paths).
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// berth's own users and access rules. Unset: every client may pull everything (except
    /// from upstreams with `client_credentials = "verify"`).
    pub auth: Option<AuthConfig>,
    /// The replicas this one fetches blobs together with. Unset: a single replica.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// htpasswd file with bcrypt entries (`htpasswd -B`); re-read when it changes.
    pub htpasswd: Option<PathBuf>,
    /// File holding the token-signing key (at least 32 bytes). Unset: a random key per start,
    /// so tokens do not survive a restart or work across replicas.
    pub token_key_file: Option<PathBuf>,
    /// Lifetime of the bearer tokens berth issues.
    #[serde(default = "default_token_ttl", deserialize_with = "duration")]
    pub token_ttl: Duration,
    /// The token endpoint URL put in challenges (`https://berth.example:5443/token`). Unset:
    /// built from the request's `Host` and the listener's scheme.
    pub realm: Option<String>,
    /// Failed logins allowed per client address within `failed_login_window`; more get 429.
    #[serde(default = "default_max_failed_logins")]
    pub max_failed_logins: u32,
    /// The window for `max_failed_logins`.
    #[serde(default = "default_failed_login_window", deserialize_with = "duration")]
    pub failed_login_window: Duration,
    /// Who may pull what. None: anonymous only from upstreams without credentials, every
    /// authenticated user from every upstream.
    #[serde(default)]
    pub rules: Vec<AccessRule>,
}

fn default_token_ttl() -> Duration {
    Duration::from_secs(300)
}

fn default_max_failed_logins() -> u32 {
    10
}

fn default_failed_login_window() -> Duration {
    Duration::from_secs(60)
}

/// `[[auth.rules]]`: allows `users` to pull `repositories` from `upstreams`. A request is
/// allowed when any rule matches it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    /// User names; `anonymous` is the unauthenticated client, `*` any authenticated user.
    pub users: Vec<String>,
    /// Upstream names; `*` or unset: all.
    #[serde(default = "match_all")]
    pub upstreams: Vec<String>,
    /// Repository globs as sent upstream (`library/*`, `team/app`); `*` matches any text,
    /// slashes included. Unset: all.
    #[serde(default = "match_all")]
    pub repositories: Vec<String>,
}

fn match_all() -> Vec<String> {
    vec!["*".into()]
}

/// `[upstreams.<name>] client_credentials`: whose rights decide access to this upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCredentials {
    /// berth's own users and rules (or nothing, without `[auth]`).
    #[default]
    Ignore,
    /// The client's own credentials for the upstream are checked against the upstream for the
    /// repository's pull scope before anything is served.
    Verify,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address for the registry API and `/livez`, `/readyz`.
    pub listen: SocketAddr,
    /// Most open client connections; further ones get a 503 (plain HTTP) and are closed at
    /// once rather than left waiting in the backlog.
    pub max_connections: usize,
    /// Most open connections from one client address (IPv4-mapped IPv6 counts as IPv4), so
    /// one address cannot take the whole `max_connections` budget. Behind a proxy or NAT
    /// that hides client addresses, every client shares one address: raise it there.
    pub max_connections_per_ip: usize,
    /// Time a client has to send its request headers once it started sending them.
    #[serde(deserialize_with = "duration")]
    pub header_timeout: Duration,
    /// A connection with no request in flight for this long is closed: counted from accept
    /// until the first request head, and from the end of each answer on keep-alive
    /// connections (HTTP/1.1 and h2).
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// On SIGTERM: report not-ready for this long before closing the listener.
    #[serde(deserialize_with = "duration")]
    pub shutdown_delay: Duration,
    /// Then wait at most this long for open requests to finish.
    #[serde(deserialize_with = "duration")]
    pub drain_timeout: Duration,
    /// Serve HTTPS instead of plain HTTP.
    pub tls: Option<TlsConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 5000)),
            max_connections: 4096,
            max_connections_per_ip: 1024,
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            shutdown_delay: Duration::from_secs(0),
            drain_timeout: Duration::from_secs(60),
            tls: None,
        }
    }
}

/// `[server.tls]`: HTTPS on the listener. The files are read again when their content
/// changes (checked every `reload_interval`) and on SIGHUP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the leaf certificate.
    pub key_file: PathBuf,
    /// PEM CA bundle for client certificates: set to require mutual TLS. The verified
    /// certificate's subject common name becomes the request's user.
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: `required` refuses clients without a certificate; `optional`
    /// lets them in as anonymous (a presented certificate must still verify).
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// How often the files are checked for new content.
    #[serde(default = "default_tls_reload_interval", deserialize_with = "duration")]
    pub reload_interval: Duration,
}

/// Whether clients must present a certificate when `client_ca_file` is set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No certificate, no connection.
    #[default]
    Required,
    /// Clients without a certificate are anonymous.
    Optional,
}

fn default_tls_reload_interval() -> Duration {
    Duration::from_secs(5)
}

/// `[metrics]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address for `GET /metrics` (Prometheus text) and `GET /` (the status page). Unset: no
    /// metrics listener.
    pub listen: Option<SocketAddr>,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `error|warn|info|debug|trace`; `RUST_LOG` overrides it.
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Auto,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Text on a terminal, JSON otherwise.
    Auto,
    /// Human-readable text.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[storage]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Root of the store (blobs, tags, temp files).
    pub path: PathBuf,
    /// Most bytes the store may hold (`"50GiB"`); least recently used content is evicted.
    #[serde(default, deserialize_with = "opt_size")]
    pub max_size: Option<u64>,
    /// Least free space to leave on the file system (`"5GiB"`).
    #[serde(default, deserialize_with = "opt_size")]
    pub min_free_space: Option<u64>,
    /// When evicting, go down to this fraction of `max_size`.
    #[serde(default = "default_target_ratio")]
    pub target_ratio: f64,
    /// How often the background pass checks `min_free_space` and updates storage metrics.
    #[serde(default = "default_eviction_interval", deserialize_with = "duration")]
    pub eviction_interval: Duration,
    /// A shared tier on an S3-compatible object store behind the local disk (`[storage.s3]`).
    #[serde(default)]
    pub s3: Option<S3Config>,
}

/// `[storage.s3]`: the shared tier. Credentials: `access_key_id` with
/// `secret_access_key_file`, else the standard AWS environment variables (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, web identity) or instance credentials.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The S3 endpoint (`https://s3.example.org`, MinIO, SeaweedFS, Ceph RGW); unset for AWS.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The bucket (it must exist).
    pub bucket: String,
    /// The region (`us-east-1` unless set; most S3-compatible servers ignore it).
    #[serde(default = "default_s3_region")]
    pub region: String,
    /// A key prefix under which berth keeps everything (`"berth/"`), so a bucket can be shared.
    #[serde(default)]
    pub prefix: String,
    /// The access key id (not a secret).
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// A file holding the secret access key (never inline in the config).
    #[serde(default)]
    pub secret_access_key_file: Option<PathBuf>,
    /// Allow a plain-HTTP `endpoint` (loopback or an in-cluster service only).
    #[serde(default)]
    pub allow_http: bool,
    /// Longest wait for one object-store request (an unreachable store costs at most this).
    #[serde(default = "default_s3_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// Most bytes of content the shared tier may hold (`"1TiB"`); least recently used content
    /// is deleted by one replica at a time. Unset: unbounded (or the bucket's lifecycle rules).
    #[serde(default, deserialize_with = "opt_size")]
    pub max_size: Option<u64>,
    /// How long the shared tier is left alone after a request to it failed (reads go to the
    /// upstream, writes are skipped); then it is asked again.
    #[serde(default = "default_down_for", deserialize_with = "duration")]
    pub down_for: Duration,
    /// How often the shared tier is brought back under `max_size`.
    #[serde(default = "default_s3_eviction_interval", deserialize_with = "duration")]
    pub eviction_interval: Duration,
}

fn default_s3_eviction_interval() -> Duration {
    Duration::from_secs(600)
}

/// `[cluster]`: the replicas that share one shared tier and fetch each blob once between them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This replica's URL as the other replicas reach it (`http://10.0.0.5:5000`).
    pub advertise: String,
    /// Every replica's URL (this one may be included).
    #[serde(default)]
    pub peers: Vec<String>,
    /// A name (`host:port`) that resolves to every replica's address, re-resolved every
    /// `refresh_interval` (a Kubernetes headless Service).
    #[serde(default)]
    pub peers_dns: Option<String>,
    /// A file holding the secret every replica shares (peer requests are signed with it).
    pub secret_file: PathBuf,
    /// How often `peers_dns` is resolved again.
    #[serde(default = "default_refresh_interval", deserialize_with = "duration")]
    pub refresh_interval: Duration,
    /// Longest wait for a peer's response headers before it is marked down.
    #[serde(default = "default_peer_timeout", deserialize_with = "duration")]
    pub peer_timeout: Duration,
    /// How long a peer that failed is skipped.
    #[serde(default = "default_down_for", deserialize_with = "duration")]
    pub down_for: Duration,
    /// Extra CA certificates (PEM) trusted for `https` peers, e.g. the CA of berth's own
    /// serving certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_refresh_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_peer_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_down_for() -> Duration {
    Duration::from_secs(30)
}

fn default_s3_region() -> String {
    "us-east-1".into()
}

fn default_s3_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_target_ratio() -> f64 {
    0.9
}

fn default_eviction_interval() -> Duration {
    Duration::from_secs(30)
}

/// `[cache]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// How long a tag's digest is trusted without asking upstream.
    #[serde(deserialize_with = "duration")]
    pub manifest_ttl: Duration,
    /// How long past `manifest_ttl` a tag is still served when the upstream fails.
    #[serde(deserialize_with = "duration")]
    pub stale_if_error: Duration,
    /// How long a pull of a stale tag (within `stale_if_error`) waits for its revalidation
    /// before it is answered from the cache; the revalidation goes on in the background.
    #[serde(deserialize_with = "duration")]
    pub revalidate_timeout: Duration,
    /// How long an upstream 404 for a tag is remembered.
    #[serde(deserialize_with = "duration")]
    pub negative_ttl: Duration,
    /// How long an upstream's referrers answer (or its lack of the referrers API) is trusted.
    #[serde(deserialize_with = "duration")]
    pub referrers_ttl: Duration,
    /// Bytes of manifests kept in memory for the by-tag hot path.
    pub memory_bytes: u64,
    /// Bytes of small blobs (config blobs, small layers) kept in memory; 0 keeps none.
    #[serde(deserialize_with = "size")]
    pub blob_memory_bytes: u64,
    /// The largest blob kept in memory.
    #[serde(deserialize_with = "size")]
    pub blob_memory_max_object: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            manifest_ttl: Duration::from_secs(600),
            stale_if_error: Duration::from_secs(24 * 3600),
            revalidate_timeout: Duration::from_millis(500),
            negative_ttl: Duration::from_secs(30),
            referrers_ttl: Duration::from_secs(60),
            memory_bytes: 64 << 20,
            blob_memory_bytes: 32 << 20,
            blob_memory_max_object: 64 << 10,
        }
    }
}

/// `[upstreams.<name>]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Base URL, `https://host[:port]` (or `http://` for a registry on a trusted network).
    #[serde(deserialize_with = "uri")]
    pub url: Uri,
    /// Registry host names that select this upstream, as `?ns=` values and path prefixes.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Requests that name no upstream go here. Exactly one upstream has it.
    #[serde(default)]
    pub default: bool,
    /// Username for Basic auth or for the token service.
    pub username: Option<String>,
    /// File holding the password or token (Kubernetes secret mount, systemd credential).
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// Extra PEM CA bundle trusted for this upstream, besides the webpki roots.
    pub ca_file: Option<PathBuf>,
    /// Per-upstream override of `[cache] manifest_ttl`.
    #[serde(default, deserialize_with = "opt_duration")]
    pub manifest_ttl: Option<Duration>,
    /// TCP (and TLS) connect timeout.
    #[serde(default = "default_connect_timeout", deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// Time to wait for response headers after sending a request.
    #[serde(default = "default_header_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// Extra attempts for a request that failed to connect or got a 5xx (jittered backoff).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Consecutive connect failures or timeouts that open the circuit breaker; as many 5xx
    /// only trigger a `/v2/` probe, and the circuit opens if that fails too.
    #[serde(default = "default_circuit_failures")]
    pub circuit_failures: u32,
    /// How long an open circuit fails fast before one probe request is let through.
    #[serde(default = "default_circuit_cooldown", deserialize_with = "duration")]
    pub circuit_cooldown: Duration,
    /// `"verify"`: serve this upstream's content only to clients whose own credentials the
    /// upstream accepts for the repository (checked, then cached for `client_check_ttl`).
    #[serde(default)]
    pub client_credentials: ClientCredentials,
    /// How long a successful (or refused) client-credential check is remembered.
    #[serde(default = "default_client_check_ttl", deserialize_with = "duration")]
    pub client_check_ttl: Duration,
    /// How long a blob fill whose upstream broke mid-body keeps resuming (with backoff) while
    /// its readers wait, so a short upstream restart does not break every client's download.
    #[serde(default = "default_fill_resume_window", deserialize_with = "duration")]
    pub fill_resume_window: Duration,
}

fn default_client_check_ttl() -> Duration {
    Duration::from_secs(60)
}

fn default_retries() -> u32 {
    2
}

fn default_circuit_failures() -> u32 {
    5
}

fn default_circuit_cooldown() -> Duration {
    Duration::from_secs(10)
}

fn default_fill_resume_window() -> Duration {
    Duration::from_secs(30)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_header_timeout() -> Duration {
    Duration::from_secs(30)
}

/// A password or token; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl UpstreamConfig {
    /// Read the configured password (file or environment), if any.
    pub fn load_password(&self) -> Result<Option<Secret>, String> {
        if let Some(path) = &self.password_file {
            let raw = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read password_file {}: {e}", path.display()))?;
            return Ok(Some(Secret(raw.trim_end_matches(['\r', '\n']).to_string())));
        }
        if let Some(var) = &self.password_env {
            let raw = std::env::var(var).map_err(|_| format!("password_env {var} is not set"))?;
            return Ok(Some(Secret(raw)));
        }
        Ok(None)
    }

    /// Whether berth pulls with credentials: its content is private.
    pub fn has_credentials(&self) -> bool {
        self.username.is_some()
    }

    /// This upstream's `manifest_ttl`, falling back to the global one.
    pub fn manifest_ttl(&self, cache: &CacheConfig) -> Duration {
        self.manifest_ttl.unwrap_or(cache.manifest_ttl)
    }
}

/// How serious a config problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Refuses to start.
    Error,
    /// Starts, but the operator should look.
    Warning,
}

/// One finding of `validate()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong and where.
    pub message: String,
}

/// Parse `"30s"`, `"10m"`, `"24h"` (humantime syntax).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// Parse `"50GiB"`, `"1.5TB"`, `"1024"` (bytes). IEC (KiB, MiB, GiB, TiB) and SI units.
/// Exact integer arithmetic: a fraction is rounded down to whole bytes, overflow is an error.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let invalid = || format!("invalid size {s:?}");
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        other => return Err(format!("invalid size unit {other:?} in {s:?}")),
    };
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && frac.is_empty()) || !digits(whole) || !digits(frac) || frac.len() > 18 {
        return Err(invalid());
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| invalid())?
    };
    let frac_bytes = if frac.is_empty() {
        0
    } else {
        let f: u128 = frac.parse().map_err(|_| invalid())?;
        // f / 10^len of a unit, in bytes; < mult, so it fits in u64.
        (f * u128::from(mult) / 10u128.pow(frac.len() as u32)) as u64
    };
    whole
        .checked_mul(mult)
        .and_then(|b| b.checked_add(frac_bytes))
        .ok_or_else(|| format!("size {s:?} is too large"))
}

fn opt_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(u64),
        S(String),
    }
    match Raw::deserialize(d)? {
        Raw::N(n) => Ok(Some(n)),
        Raw::S(s) => parse_size(&s).map(Some).map_err(serde::de::Error::custom),
    }
}

fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    opt_size(d).map(Option::unwrap_or_default)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

fn uri<'de, D: Deserializer<'de>>(d: D) -> Result<Uri, D::Error> {
    let s = String::deserialize(d)?;
    s.parse::<Uri>().map_err(|e| {
        let hint = if redact_userinfo(&s) != s { USERINFO_HINT } else { "" };
        serde::de::Error::custom(format!("invalid url {:?}: {e}{hint}", redact_userinfo(&s)))
    })
}

/// Appended to every complaint about credentials in an upstream URL.
const USERINFO_HINT: &str = " (credentials do not belong in the url: set username and password_file or password_env)";

/// `url` with any userinfo (`user:password@`) replaced by `***@`, for messages and logs. Works
/// on text that does not parse as a URI too, so a password never reaches an error message.
pub fn redact_userinfo(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..].find(['/', '?', '#']).map_or(url.len(), |i| start + i);
    match url[start..end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..start], &url[start + at..]),
        None => url.to_string(),
    }
}

mod load;
mod validate;

pub use load::{KeyError, LoadError, Origin};

#[cfg(test)]
mod tests;
