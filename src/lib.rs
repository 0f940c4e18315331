//! berth: a pull-through caching registry proxy for the OCI Distribution API (pull side).
//!
//! # Layout
//! ```text
//! main.rs         CLI entry: serve, check-config, version, cache, gc, warm, healthcheck
//! lib.rs          run(): build state, start listeners, shut down in order
//! config.rs       config.toml structs, env overrides, validate() (config/)
//! server.rs       accept loop (total and per-address conn limits, header and idle timeouts,
//!                 graceful drain), the metrics listener (`/metrics`, and the status page on `/`)
//! status/         the status page: activity recorder, snapshot of the state, HTML
//! tls/            HTTPS acceptor: rustls config from the files, reload on change and SIGHUP
//! http/           ProxyService + access log (mod), route parser, connection idle tracking
//! api/            thin handlers: base, manifests (Accept + headers), blobs, tags/list (+ its
//!                 Link rewrite), token
//! auth/           client identity (TLS certificate, htpasswd, berth's tokens), access
//!                 rules, client upstream rights: the one gate before store and upstream
//! access/         per-repository permission for private content (links, upstream HEAD)
//! manifests/      the manifest service: freshness, revalidation, stale-if-error, flight
//!                 keys, verification, tag moves, negative cache, memory over the store
//! referrers/      the referrers API: upstream pages merged and cached, or the fallback tag
//! fill/           single-flight blob fills streamed to every reader from the temp file;
//!                 sources: the shared tier, the owner replica, the upstream
//! cluster/        replicas: membership (static or DNS), blob ownership (rendezvous
//!                 hashing), signed peer requests
//! coalesce.rs     single-flight for manifest fetches and tag revalidations
//! store/          content-addressed files (cas), index, eviction, tag records, pins; the
//!                 shared tier on S3 (shared/) behind the local disk (tiered.rs)
//! upstream/       Upstream (client, auth, breaker, requests), UpstreamSet (routing)
//! dial.rs         the TLS client configuration for upstreams, the object store and peers
//! cli/            cache stats|ls|rm|pin|unpin, gc, warm
//! body/           response body type and byte ranges (leaf: imports nothing of the crate)
//! cache_result.rs CacheResult: how a request was answered (log, metrics, hit ratio)
//! oci/            RepoName, Tag, Reference, Digest, MediaType, manifest limits and walk
//! error.rs        Error -> OCI error response (the only place)
//! metrics.rs      Metrics with its own registry and typed recorders
//! ```
//! Dependencies flow one way: `server -> http -> api -> {manifests, fill} -> {store,
//! upstream, cluster} -> oci`; `error`, `metrics`, `body`, `dial` and `cache_result` are
//! leaves below them
//! (`docs/architecture.md` has the full map).
//!
//! # Request flow
//! accept -> optional TLS (the client certificate's user goes into the request's extensions)
//! -> hyper-util auto (HTTP/1.1, h2) -> `http::handle` -> `route::parse` (validates
//! name, reference, digest) -> `UpstreamSet::resolve` (`?ns=`, path prefix, default) ->
//! `Auth::authorize` (401/403 before any store or upstream access) ->
//! `api::manifests::get` -> `Manifests::resolve` (tag record fresh? store : coalesced HEAD/GET
//! upstream -> verify -> store -> move tag) or `api::blobs::get` (store hit :
//! `Fills::start_or_join` -> stream the temp file as it grows) -> any `Err` becomes the OCI
//! error in `error.rs` -> one access-log line when the body ends.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod access;
pub mod api;
pub mod auth;
pub mod body;
pub mod cache_result;
pub mod cli;
pub mod cluster;
pub mod coalesce;
pub mod config;
pub mod dial;
pub mod error;
pub mod fill;
pub mod http;
pub mod manifests;
pub mod metrics;
pub mod oci;
pub mod referrers;
pub mod server;
pub mod state;
pub mod status;
pub mod store;
pub mod tls;
pub mod upstream;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// Longest time between two checks that the store can be written (also run after each failed
/// write).
const STORE_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
pub use state::AppState;

/// Run berth on already-bound listeners until `shutdown` is cancelled, then: report not-ready,
/// wait `shutdown_delay`, stop accepting, drain open requests (up to `drain_timeout`), stop
/// fills and wait for them. Returns an error only if start-up fails.
pub async fn run(
    config: Arc<Config>,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let metrics = Arc::new(metrics::Metrics::new());
    let state = AppState::build(config.clone(), metrics.clone())?;
    if let Some(shared) = &state.shared {
        // A wrong bucket or key is a configuration error; an object store that is down now
        // is not (berth serves its local tier and the upstream until it is back).
        match shared.check().await {
            Ok(()) => tracing::info!(location = shared.location(), "shared tier ready"),
            Err(store::CheckError::Refused(e)) => return Err(format!("storage.s3: {e}")),
            Err(store::CheckError::Unreachable(e)) => {
                tracing::warn!(error = %e, "shared tier unreachable at start: serving the local tier and the upstream until it answers")
            }
        }
    }
    let tls = match &config.server.tls {
        Some(cfg) => {
            let acceptor = tls::Acceptor::load(cfg, config.server.header_timeout, metrics.clone())
                .map_err(|e| format!("server.tls: {e}"))?;
            let acceptor = Arc::new(acceptor);
            state.tasks.spawn(acceptor.clone().watch(state.shutdown.clone()));
            Some(acceptor)
        }
        None => None,
    };
    state.tasks.spawn(storage_pass(state.clone()));
    if let Some(cluster) = &state.cluster {
        state.tasks.spawn(cluster.clone().watch(state.shutdown.clone()));
    }
    state.tasks.spawn(shared_eviction(state.clone()));
    let check_every = config.storage.eviction_interval.min(STORE_CHECK_EVERY);
    state
        .tasks
        .spawn(state.health.clone().watch(check_every, state.shutdown.clone()));
    // Ready before the first connection is accepted: a client (or probe) that reaches the
    // listener never sees a started berth answer "not ready".
    state.ready.store(true, Ordering::Relaxed);
    let accept_stop = CancellationToken::new();
    let server = tokio::spawn(server::serve(listener, state.clone(), tls, accept_stop.clone()));
    let metrics_task =
        metrics_listener.map(|l| tokio::spawn(server::serve_metrics(l, state.clone(), accept_stop.clone())));
    tracing::info!(upstreams = config.upstreams.len(), store = %config.storage.path.display(), "berth is ready");

    shutdown.cancelled().await;
    state.ready.store(false, Ordering::Relaxed);
    tracing::info!(delay = ?config.server.shutdown_delay, "shutting down: not ready");
    tokio::time::sleep(config.server.shutdown_delay).await;
    accept_stop.cancel();
    let _ = server.await;
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    state.shutdown.cancel();
    state.tasks.close();
    state.tasks.wait().await;
    tracing::info!("stopped");
    Ok(())
}

/// Every `eviction_interval`: check `min_free_space` (others may fill the disk) and refresh the
/// storage gauges.
/// Keep the shared tier under `[storage.s3] max_size`: every `eviction_interval`, on the
/// cluster's leader only (or the single replica).
async fn shared_eviction(state: AppState) {
    let (Some(shared), Some(s3)) = (state.shared.clone(), state.config.storage.s3.clone()) else {
        return;
    };
    let Some(max) = s3.max_size else {
        return;
    };
    let target = (max as f64 * state.config.storage.target_ratio) as u64;
    let mut tick = tokio::time::interval(s3.eviction_interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = state.shutdown.cancelled() => return,
        }
        let leads = state.cluster.as_ref().is_none_or(|c| c.is_leader());
        if !leads || !shared.is_available() {
            continue;
        }
        match shared.evict(max, target).await {
            Ok(pass) if pass.objects > 0 => {
                state.metrics.record_eviction("shared_size", pass.objects, pass.bytes);
                tracing::info!(
                    objects = pass.objects,
                    bytes = pass.bytes,
                    held = pass.held,
                    max,
                    "shared tier evicted least recently used content"
                );
            }
            Ok(_) => {}
            Err(e) => {
                let _ = shared.noted("write", "eviction", Err::<(), _>(e));
            }
        }
    }
}

async fn storage_pass(state: AppState) {
    let mut tick = tokio::time::interval(state.config.storage.eviction_interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = state.shutdown.cancelled() => return,
        }
        // Reserving nothing just runs the budget check (and refreshes the gauges).
        if let Err(e) = state.evictor.reserve(0).await {
            tracing::error!(error = %e, "storage pass failed");
        }
    }
}
