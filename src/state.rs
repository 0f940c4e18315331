//! `AppState`: the cheap-to-clone bundle of shared handles every request and task uses, built
//! once at start from the config. Every field is a handle; nothing here does request work.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::RepoAccess;
use crate::auth::Auth;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::fill::Fills;
use crate::manifests::{ManifestCache, Manifests};
use crate::metrics::Metrics;
use crate::referrers::Referrers;
use crate::store::{BlobStore, ContentStore, Evictor, Limits, Memory, SharedStore, StoreHealth, Tiered};
use crate::upstream::UpstreamSet;

/// Shared handles for request handlers and background tasks.
#[derive(Clone)]
pub struct AppState {
    /// The loaded config.
    pub config: Arc<Config>,
    /// The closed set of upstreams.
    pub upstreams: Arc<UpstreamSet>,
    /// Client authentication and access rules.
    pub auth: Arc<Auth>,
    /// Where verified content and tag records are read and committed (the storage seam): the
    /// local disk, or the local disk in front of the shared tier (`[storage.s3]`), with small
    /// blobs in memory in front (`[cache] blob_memory_bytes`).
    pub store: Arc<dyn ContentStore>,
    /// The local disk: the local tier, and the spool fills write to and readers tail.
    pub blobs: BlobStore,
    /// The shared tier (`[storage.s3]`), if configured.
    pub shared: Option<SharedStore>,
    /// The other replicas (`[cluster]`), if configured.
    pub cluster: Option<Cluster>,
    /// Keeps the store inside its budget.
    pub evictor: Arc<Evictor>,
    /// Which repository may read which stored digest of a private upstream.
    pub access: RepoAccess,
    /// The manifest service (tags, freshness, revalidation, coalesced fetches).
    pub manifests: Manifests,
    /// The referrers service (API answers cached per subject, or the fallback tag).
    pub referrers: Referrers,
    /// Blob fills in progress.
    pub fills: Fills,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// False while starting and draining.
    pub ready: Arc<AtomicBool>,
    /// Whether the store can take a fill now (checked on a timer and after failed writes).
    pub health: Arc<StoreHealth>,
    /// Background tasks (fills, coalesced manifest fetches) to wait for on shutdown.
    pub tasks: TaskTracker,
    /// Cancelled when the process shuts down.
    pub shutdown: CancellationToken,
}

impl AppState {
    /// Open the store (removing temp files) and build every upstream.
    pub fn build(config: Arc<Config>, metrics: Arc<Metrics>) -> Result<AppState, String> {
        let blobs = BlobStore::open(&config.storage.path)
            .map_err(|e| format!("storage.path {}: {e}", config.storage.path.display()))?;
        let st = &config.storage;
        let limits = Limits {
            max_size: st.max_size,
            min_free_space: st.min_free_space,
            target_ratio: st.target_ratio,
        };
        let evictor = Arc::new(Evictor::new(blobs.clone(), limits, metrics.clone()));
        let tasks = TaskTracker::new();
        let shared = match &st.s3 {
            Some(s3) => Some(SharedStore::new(s3, metrics.clone())?),
            None => None,
        };
        let tiers: Arc<dyn ContentStore> = match &shared {
            Some(shared) => Arc::new(Tiered::new(blobs.clone(), shared.clone(), tasks.clone())),
            None => Arc::new(blobs.clone()),
        };
        let c = &config.cache;
        let store: Arc<dyn ContentStore> = match c.blob_memory_bytes {
            0 => tiers,
            n => Arc::new(Memory::new(tiers, n, c.blob_memory_max_object)),
        };
        let health = Arc::new(StoreHealth::new(blobs.clone(), metrics.clone()));
        let shutdown = CancellationToken::new();
        let cache = ManifestCache::new(
            store.clone(),
            evictor.clone(),
            config.cache.memory_bytes,
            config.cache.negative_ttl,
        );
        let cluster = match &config.cluster {
            Some(c) => Some(Cluster::new(c, metrics.clone())?),
            None => None,
        };
        let manifests = Manifests::new(
            cache,
            health.clone(),
            metrics.clone(),
            config.cache.stale_if_error,
            config.cache.revalidate_timeout,
            tasks.clone(),
        )
        .with_cluster(cluster.clone());
        let referrers = Referrers::new(
            manifests.clone(),
            metrics.clone(),
            config.cache.referrers_ttl,
            config.cache.stale_if_error,
            config.cache.memory_bytes / 4,
            tasks.clone(),
        );
        let upstreams = Arc::new(UpstreamSet::from_config(&config, metrics.clone())?);
        let auth = Arc::new(Auth::from_config(&config, metrics.clone())?);
        let fills = Fills::new(
            evictor.clone(),
            store.clone(),
            health.clone(),
            metrics.clone(),
            tasks.clone(),
            shutdown.clone(),
        )
        .with_sources(shared.clone(), cluster.clone());
        let access = RepoAccess::new(store.clone());
        Ok(AppState {
            config,
            upstreams,
            auth,
            store,
            blobs,
            shared,
            cluster,
            evictor,
            access,
            manifests,
            referrers,
            fills,
            metrics,
            ready: Arc::new(AtomicBool::new(false)),
            health,
            tasks,
            shutdown,
        })
    }

    /// What `/readyz` says: `Ok` when started, not draining and the store can be written,
    /// else the reason. An upstream outage does not count: the cache still serves.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.ready.load(Ordering::Relaxed) {
            return Err("starting or shutting down".into());
        }
        self.health.problem().map_or(Ok(()), Err)
    }
}
