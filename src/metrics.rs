//! Prometheus metrics: one `Metrics` value with its own registry (no global statics), typed
//! fields, and the text encoder for `GET /metrics`. Labels are low-cardinality only
//! (`upstream`, `kind`, `result`, ...): never a repository or digest. Every documented family
//! is present from start: label values known in advance (and each configured upstream's, via
//! [`Metrics::register_upstream`]) are created at 0. The recorders also feed the status
//! page's [`Activity`] (since-start totals, rate limits), which is not Prometheus data.

use http::{HeaderMap, Method, StatusCode};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::cache_result::{CacheResult, Source};
use crate::status::Activity;

/// Every berth metric. Record through the `record_*` methods, which fix each metric's label
/// order in one place.
pub struct Metrics {
    registry: Registry,
    /// `berth_http_requests_total{kind,method,code}`
    pub http_requests: IntCounterVec,
    /// `berth_http_request_duration_seconds{kind,cache}` (to the last byte)
    pub http_duration: HistogramVec,
    /// `berth_http_requests_inflight`
    pub http_inflight: IntGauge,
    /// `berth_cache_lookups_total{kind,upstream,result}`
    pub cache_lookups: IntCounterVec,
    /// `berth_served_bytes_total{kind,source}` (source: cache|upstream)
    pub served_bytes: IntCounterVec,
    /// `berth_upstream_fetched_bytes_total{kind,upstream}`
    pub upstream_fetched_bytes: IntCounterVec,
    /// `berth_upstream_requests_total{upstream,kind,method,code}`
    pub upstream_requests: IntCounterVec,
    /// `berth_upstream_inflight_fetches{upstream}`
    pub inflight_fills: IntGaugeVec,
    /// `berth_coalesced_requests_total{kind,upstream}`
    pub coalesced: IntCounterVec,
    /// `berth_upstream_errors_total{upstream,reason}`
    pub upstream_errors: IntCounterVec,
    /// `berth_upstream_circuit_state{upstream}`: 0 closed, 1 open, 2 half-open
    pub upstream_circuit_state: IntGaugeVec,
    /// `berth_upstream_ratelimit_limit{upstream}`
    pub ratelimit_limit: IntGaugeVec,
    /// `berth_upstream_ratelimit_remaining{upstream}`
    pub ratelimit_remaining: IntGaugeVec,
    /// `berth_storage_used_bytes`
    pub storage_used: IntGauge,
    /// `berth_storage_limit_bytes`
    pub storage_limit: IntGauge,
    /// `berth_storage_filesystem_free_bytes`
    pub storage_free: IntGauge,
    /// `berth_storage_objects`
    pub storage_objects: IntGauge,
    /// `berth_storage_writable`: 1 while a fill can be written to the store, else 0
    pub storage_writable: IntGauge,
    /// `berth_storage_write_failures_total{kind}` (kind: manifest|tag|blob): writes that
    /// failed; the request was answered without caching
    pub storage_write_failures: IntCounterVec,
    /// `berth_shared_store_errors_total{op}` (op: read|write): shared-tier (object store)
    /// requests that failed; berth went on with its local tier and the upstream
    pub shared_store_errors: IntCounterVec,
    /// `berth_cluster_peers`: replicas in this replica's view of the cluster (itself included)
    pub cluster_peers: IntGauge,
    /// `berth_cluster_peer_requests_total{result}` (result: ok|failed): blob fills this replica
    /// asked another replica (the digest's owner) for
    pub peer_requests: IntCounterVec,
    /// `berth_evictions_total{reason}`
    pub evictions: IntCounterVec,
    /// `berth_evicted_bytes_total{reason}`
    pub evicted_bytes: IntCounterVec,
    /// `berth_auth_failures_total{reason}` (see [`AUTH_FAILURE_REASONS`])
    pub auth_failures: IntCounterVec,
    /// `berth_tls_reloads_total{result}` (result: ok|error)
    pub tls_reloads: IntCounterVec,
    /// What the status page shows besides metrics.
    activity: Activity,
    /// `berth_connections_closed_total{reason}`: connections berth closed on its own, refused
    /// at a limit (`max_connections`, `per_ip`) or idle for `idle_timeout` (`idle`)
    pub connections_closed: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Every `reason` of `berth_auth_failures_total`: wrong user or password, a forged or expired
/// token, a login refused by the failed-login limiter, no credentials where they are needed,
/// an authenticated user the rules deny, client credentials the upstream refused.
pub const AUTH_FAILURE_REASONS: [&str; 6] = [
    "bad_credentials",
    "bad_token",
    "throttled",
    "unauthenticated",
    "denied",
    "upstream_refused",
];

/// Every `reason` of `berth_upstream_errors_total`: connect/DNS/TLS failure, no answer in time,
/// a 5xx or 429 answer, a request held back by a 429 back-off or an open circuit, a blob fill
/// broken mid-body, a blob whose bytes did not match its digest.
pub const UPSTREAM_ERROR_REASONS: [&str; 8] = [
    "connect",
    "timeout",
    "status_5xx",
    "status_429",
    "throttled",
    "circuit_open",
    "fetch",
    "digest_mismatch",
];

/// Request kinds with a cache lookup (`kind` label).
const CONTENT_KINDS: [&str; 2] = ["manifest", "blob"];

/// Every `kind` of `berth_http_requests_total` except probes (which are not counted).
const REQUEST_KINDS: [&str; 5] = ["manifest", "blob", "tag_list", "token", "other"];

/// Every `reason` of the eviction counters.
const EVICTION_REASONS: [&str; 3] = ["size", "free_space", "shared_size"];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric names are valid constants");
    r.register(Box::new(c.clone())).expect("each metric is registered once");
    c
}

fn plain_gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("metric names are valid constants");
    r.register(Box::new(g.clone())).expect("each metric is registered once");
    g
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("metric names are valid constants");
    r.register(Box::new(g.clone())).expect("each metric is registered once");
    g
}

impl Metrics {
    /// A fresh set on its own registry.
    pub fn new() -> Metrics {
        let r = Registry::new();
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "berth_http_request_duration_seconds",
                "Client request time to the last byte",
            )
            .buckets(vec![0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0]),
            &["kind", "cache"],
        )
        .expect("valid histogram");
        r.register(Box::new(http_duration.clone())).expect("registered once");
        let http_inflight =
            IntGauge::new("berth_http_requests_inflight", "Client requests in progress").expect("valid gauge");
        r.register(Box::new(http_inflight.clone())).expect("registered once");
        let build = gauge(&r, "berth_build_info", "Build information", &["version"]);
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            let _ = r.register(Box::new(pc));
        }
        let m = Metrics {
            http_requests: counter(
                &r,
                "berth_http_requests_total",
                "Client requests answered",
                &["kind", "method", "code"],
            ),
            http_duration,
            http_inflight,
            cache_lookups: counter(
                &r,
                "berth_cache_lookups_total",
                "Cache lookups by result",
                &["kind", "upstream", "result"],
            ),
            served_bytes: counter(
                &r,
                "berth_served_bytes_total",
                "Body bytes sent to clients",
                &["kind", "source"],
            ),
            upstream_fetched_bytes: counter(
                &r,
                "berth_upstream_fetched_bytes_total",
                "Body bytes received from upstreams",
                &["kind", "upstream"],
            ),
            upstream_requests: counter(
                &r,
                "berth_upstream_requests_total",
                "Requests sent to upstreams",
                &["upstream", "kind", "method", "code"],
            ),
            inflight_fills: gauge(
                &r,
                "berth_upstream_inflight_fetches",
                "Blob fills in progress",
                &["upstream"],
            ),
            coalesced: counter(
                &r,
                "berth_coalesced_requests_total",
                "Requests that joined an in-flight fetch",
                &["kind", "upstream"],
            ),
            upstream_errors: counter(
                &r,
                "berth_upstream_errors_total",
                "Upstream failures by reason",
                &["upstream", "reason"],
            ),
            upstream_circuit_state: gauge(
                &r,
                "berth_upstream_circuit_state",
                "Circuit breaker per upstream: 0 closed, 1 open, 2 half-open",
                &["upstream"],
            ),
            ratelimit_limit: gauge(
                &r,
                "berth_upstream_ratelimit_limit",
                "Last ratelimit-limit seen",
                &["upstream"],
            ),
            ratelimit_remaining: gauge(
                &r,
                "berth_upstream_ratelimit_remaining",
                "Last ratelimit-remaining seen",
                &["upstream"],
            ),
            storage_used: plain_gauge(
                &r,
                "berth_storage_used_bytes",
                "Bytes in the store (committed and reserved)",
            ),
            storage_limit: plain_gauge(&r, "berth_storage_limit_bytes", "Configured max_size (0: none)"),
            storage_free: plain_gauge(
                &r,
                "berth_storage_filesystem_free_bytes",
                "Free bytes on the store's file system",
            ),
            storage_objects: plain_gauge(&r, "berth_storage_objects", "Objects in the store"),
            storage_writable: plain_gauge(
                &r,
                "berth_storage_writable",
                "1 while a fill can be written to the store (reason on /readyz when 0)",
            ),
            storage_write_failures: counter(
                &r,
                "berth_storage_write_failures_total",
                "Store writes that failed; the request was answered without caching",
                &["kind"],
            ),
            shared_store_errors: counter(
                &r,
                "berth_shared_store_errors_total",
                "Shared-tier (object store) requests that failed; served from the local tier or the upstream instead",
                &["op"],
            ),
            cluster_peers: plain_gauge(
                &r,
                "berth_cluster_peers",
                "Replicas in this replica's view of the cluster, itself included",
            ),
            peer_requests: counter(
                &r,
                "berth_cluster_peer_requests_total",
                "Blob fills this replica asked the digest's owner replica for",
                &["result"],
            ),
            evictions: counter(&r, "berth_evictions_total", "Objects evicted", &["reason"]),
            evicted_bytes: counter(&r, "berth_evicted_bytes_total", "Bytes evicted", &["reason"]),
            auth_failures: {
                let c = counter(
                    &r,
                    "berth_auth_failures_total",
                    "Client authentication and authorization failures",
                    &["reason"],
                );
                for reason in AUTH_FAILURE_REASONS {
                    c.with_label_values(&[reason]);
                }
                c
            },
            tls_reloads: counter(
                &r,
                "berth_tls_reloads_total",
                "TLS certificate reloads by result",
                &["result"],
            ),
            connections_closed: counter(
                &r,
                "berth_connections_closed_total",
                "Client connections berth closed: refused at a limit or idle too long",
                &["reason"],
            ),
            registry: r,
            activity: Activity::default(),
        };
        m.storage_writable.set(1);
        for kind in REQUEST_KINDS {
            m.http_requests.with_label_values(&[kind, "GET", "200"]);
        }
        for kind in CONTENT_KINDS {
            for cache in [CacheResult::Hit, CacheResult::Miss] {
                m.http_duration.with_label_values(&[kind, cache.as_str()]);
            }
            for source in [Source::Cache, Source::Upstream, Source::Shared, Source::Peer] {
                m.served_bytes.with_label_values(&[kind, source.as_str()]);
            }
        }
        for kind in ["manifest", "tag", "blob"] {
            m.storage_write_failures.with_label_values(&[kind]);
        }
        for op in ["read", "write"] {
            m.shared_store_errors.with_label_values(&[op]);
        }
        for result in ["ok", "failed"] {
            m.peer_requests.with_label_values(&[result]);
        }
        m.cluster_peers.set(1);
        for reason in EVICTION_REASONS {
            m.evictions.with_label_values(&[reason]);
            m.evicted_bytes.with_label_values(&[reason]);
        }
        for result in ["ok", "error"] {
            m.tls_reloads.with_label_values(&[result]);
        }
        for reason in ["max_connections", "per_ip", "idle"] {
            m.connections_closed.with_label_values(&[reason]);
        }
        m
    }

    /// Create every series labelled with `upstream` at 0, so dashboards and alerts see each
    /// configured upstream from start. A rate-limit limit of 0 means no header was seen.
    pub fn register_upstream(&self, upstream: &str) {
        for kind in CONTENT_KINDS {
            for result in [CacheResult::Hit, CacheResult::Miss] {
                self.cache_lookups.with_label_values(&[kind, upstream, result.as_str()]);
            }
            self.coalesced.with_label_values(&[kind, upstream]);
            self.upstream_requests
                .with_label_values(&[upstream, kind, "GET", "200"]);
        }
        self.upstream_fetched_bytes.with_label_values(&["blob", upstream]);
        self.inflight_fills.with_label_values(&[upstream]);
        for reason in UPSTREAM_ERROR_REASONS {
            self.upstream_errors.with_label_values(&[upstream, reason]);
        }
        self.upstream_circuit_state.with_label_values(&[upstream]);
        self.ratelimit_limit.with_label_values(&[upstream]);
        self.ratelimit_remaining.with_label_values(&[upstream]);
    }

    /// The status page's recorder.
    pub fn activity(&self) -> &Activity {
        &self.activity
    }

    /// Whether the store can be written (`berth_storage_writable`).
    pub fn record_storage_writable(&self, writable: bool) {
        self.storage_writable.set(i64::from(writable));
    }

    /// A cache lookup for a manifest or blob of `upstream`.
    pub fn record_lookup(&self, kind: &str, upstream: &str, result: CacheResult) {
        self.cache_lookups
            .with_label_values(&[kind, upstream, result.as_str()])
            .inc();
        self.activity.record_lookup(result.is_hit());
    }

    /// A request that joined another's upstream fetch.
    pub fn record_coalesced(&self, kind: &str, upstream: &str) {
        self.coalesced.with_label_values(&[kind, upstream]).inc();
    }

    /// A finished client request: count, duration, and the body bytes sent, by where they came
    /// from (responses without a cache result, such as errors, count as `upstream`).
    pub fn record_request(
        &self,
        kind: &str,
        method: &Method,
        status: StatusCode,
        result: Option<CacheResult>,
        seconds: f64,
        bytes: u64,
    ) {
        let cache = result.map_or("none", CacheResult::as_str);
        let source = result.map_or(Source::Upstream, CacheResult::source);
        self.http_requests
            .with_label_values(&[kind, method.as_str(), status.as_str()])
            .inc();
        self.http_duration.with_label_values(&[kind, cache]).observe(seconds);
        self.served_bytes
            .with_label_values(&[kind, source.as_str()])
            .inc_by(bytes);
        self.activity.record_served(source == Source::Cache, bytes);
    }

    /// A request sent to an upstream; `code` is the status, `timeout` or `error`.
    pub fn record_upstream_request(&self, upstream: &str, kind: &str, method: &Method, code: &str) {
        self.upstream_requests
            .with_label_values(&[upstream, kind, method.as_str(), code])
            .inc();
    }

    /// An upstream failure by reason.
    pub fn record_upstream_error(&self, upstream: &str, reason: &str) {
        self.upstream_errors.with_label_values(&[upstream, reason]).inc();
    }

    /// Body bytes received from an upstream.
    pub fn record_fetched_bytes(&self, kind: &str, upstream: &str, n: u64) {
        self.upstream_fetched_bytes
            .with_label_values(&[kind, upstream])
            .inc_by(n);
    }

    /// Record Docker Hub's `ratelimit-limit: 100;w=21600` style headers.
    pub fn record_ratelimit(&self, upstream: &str, h: &HeaderMap) {
        let parse = |name: &str| -> Option<i64> { h.get(name)?.to_str().ok()?.split(';').next()?.trim().parse().ok() };
        let (limit, remaining) = (parse("ratelimit-limit"), parse("ratelimit-remaining"));
        if limit.is_some() || remaining.is_some() {
            self.activity.record_ratelimit(upstream, limit, remaining);
        }
        if let Some(l) = limit {
            self.ratelimit_limit.with_label_values(&[upstream]).set(l);
        }
        if let Some(r) = remaining {
            self.ratelimit_remaining.with_label_values(&[upstream]).set(r);
            if r < 10 {
                tracing::warn!(upstream, remaining = r, "upstream rate limit nearly used up");
            }
        }
    }

    /// Record an eviction pass.
    pub fn record_eviction(&self, reason: &str, objects: usize, bytes: u64) {
        self.evictions.with_label_values(&[reason]).inc_by(objects as u64);
        self.evicted_bytes.with_label_values(&[reason]).inc_by(bytes);
    }

    /// A blob fill asked of the owner replica: `ok` (it answered) or `failed`.
    pub fn record_peer_request(&self, result: &str) {
        self.peer_requests.with_label_values(&[result]).inc();
    }

    /// A shared-tier request (`read` or `write`) that failed.
    pub fn record_shared_store_error(&self, op: &str) {
        self.shared_store_errors.with_label_values(&[op]).inc();
    }

    /// A store write of `kind` (`manifest`, `tag`, `blob`) that failed.
    pub fn record_store_write_failure(&self, kind: &str) {
        self.storage_write_failures.with_label_values(&[kind]).inc();
    }

    /// Update the storage gauges.
    pub fn record_storage(&self, used: u64, limit: Option<u64>, free: Option<u64>, objects: usize) {
        let set = |g: &IntGauge, v: u64| g.set(i64::try_from(v).unwrap_or(i64::MAX));
        set(&self.storage_used, used);
        set(&self.storage_objects, objects as u64);
        set(&self.storage_limit, limit.unwrap_or(0));
        if let Some(f) = free {
            set(&self.storage_free, f);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding into a Vec cannot fail");
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratelimit_headers_become_gauges() {
        let m = Metrics::new();
        let mut h = HeaderMap::new();
        h.insert("ratelimit-limit", "100;w=21600".parse().unwrap());
        h.insert("ratelimit-remaining", "76;w=21600".parse().unwrap());
        m.record_ratelimit("hub", &h);
        assert_eq!(m.ratelimit_limit.with_label_values(&["hub"]).get(), 100);
        assert_eq!(m.ratelimit_remaining.with_label_values(&["hub"]).get(), 76);
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(
            text.contains("berth_upstream_ratelimit_remaining{upstream=\"hub\"} 76"),
            "{text}"
        );
    }
}
