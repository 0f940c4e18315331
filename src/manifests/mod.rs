//! The manifest service: everything about answering "which manifest is `repo:reference` on
//! this upstream", independent of HTTP. By digest: immutable, a stored copy never contacts the
//! upstream, and only content stored as a manifest (its type recorded) is one; a cached layer
//! or config asked for here is not served. By tag: a fresh record is served from the cache; a
//! stale one is revalidated with one upstream HEAD (free on Docker Hub) and served stale within
//! `stale_if_error` when the upstream fails, or when it has not answered within
//! `revalidate_timeout` (the revalidation finishes in the background); an upstream 404 is
//! remembered for `negative_ttl`. Concurrent fetches of one digest and revalidations of one tag
//! share one upstream exchange (flight keys). Every fetched manifest is verified (`verify.rs`)
//! before it is stored, and a tag record moves only after the manifest it names is stored: two
//! separate steps, [`Manifests::store_manifest`] then [`Manifests::move_tag`]. In a cluster a
//! manifest by digest, or a tag, that another replica owns is asked of that replica first
//! (`result="peer"`): it fetches and revalidates for the whole cluster, and its tag's
//! confirmation time is kept, so the tag expires everywhere at once. A store write
//! that fails never fails the request: the verified manifest is served uncached, the old tag
//! record stays, and the failure goes to [`StoreHealth`]. Stale serves are logged per outage,
//! not per pull (`stale_log.rs`). The api layer keeps only `Accept` negotiation and headers.

mod cache;
mod freshness;
mod stale_log;
mod verify;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::HeaderValue;
use tokio_util::task::TaskTracker;

pub use cache::ManifestCache;
pub use freshness::{freshness, Freshness};
pub use stale_log::StaleLog;
pub use verify::verify;

use crate::cache_result::CacheResult;
use crate::cluster::Cluster;
use crate::coalesce::SingleFlight;
use crate::error::{Error, Origin, Result};
use crate::metrics::Metrics;
use crate::oci::{Digest, MediaType, Reference, RepoName, Tag, MANIFEST_TYPES};
pub use crate::store::TagKey;
use crate::store::{StoreHealth, TagRecord};
use crate::upstream::Upstream;

/// A verified manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Its digest (computed by berth from `bytes`).
    pub digest: Digest,
    /// The type it is served as.
    pub media_type: MediaType,
    /// The exact bytes.
    pub bytes: Bytes,
}

/// A manifest and how it was found.
pub type Resolved = (Arc<Manifest>, CacheResult);

/// What a coalesced manifest fetch is keyed by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum FlightKey {
    /// Resolving or revalidating a tag.
    Tag(TagKey),
    /// Fetching a manifest by digest from an upstream.
    Digest(String, Digest),
}

/// The shared result of a coalesced manifest fetch.
type FlightResult = std::result::Result<Resolved, Arc<Error>>;

/// Every manifest type berth understands, as one `Accept` line for upstream requests.
pub fn all_types() -> Vec<HeaderValue> {
    vec![HeaderValue::from_str(&MANIFEST_TYPES.join(", ")).expect("media types are valid header text")]
}

/// The manifest service. Cheap to clone.
#[derive(Clone)]
pub struct Manifests {
    cache: ManifestCache,
    health: Arc<StoreHealth>,
    flights: SingleFlight<FlightKey, FlightResult>,
    metrics: Arc<Metrics>,
    stale_if_error: Duration,
    revalidate_timeout: Duration,
    stale_log: Arc<StaleLog>,
    /// The other replicas: a manifest by digest or a tag that another replica owns is asked
    /// of it (it fetches and revalidates for the whole cluster) before the upstream.
    cluster: Option<Cluster>,
    /// False for a peer's request: the owner answers it itself, never forwarding again.
    forward: bool,
}

impl Manifests {
    /// A service over `cache`, serving stale tags within `stale_if_error` of their TTL (and
    /// while a revalidation takes longer than `revalidate_timeout`); failed store writes are
    /// reported to `health`; coalesced fetches run on `tasks` (shutdown waits for them).
    pub fn new(
        cache: ManifestCache,
        health: Arc<StoreHealth>,
        metrics: Arc<Metrics>,
        stale_if_error: Duration,
        revalidate_timeout: Duration,
        tasks: TaskTracker,
    ) -> Manifests {
        Manifests {
            cache,
            health,
            flights: SingleFlight::new(tasks),
            metrics,
            stale_if_error,
            revalidate_timeout,
            stale_log: Arc::default(),
            cluster: None,
            forward: true,
        }
    }

    /// This service, asking the owner replica of a manifest or tag in `cluster` first.
    pub fn with_cluster(self, cluster: Option<Cluster>) -> Manifests {
        Manifests { cluster, ..self }
    }

    /// This service for a peer's request: answered here, never forwarded to another replica.
    pub fn without_forwarding(&self) -> Manifests {
        Manifests {
            forward: false,
            ..self.clone()
        }
    }

    /// When the upstream last confirmed the tag `key` (for a peer's request).
    pub async fn checked_at(&self, key: &TagKey) -> Option<SystemTime> {
        self.cache.tag(key).await.ok().flatten().map(|r| r.checked_at)
    }

    /// The manifest `reference` names, from the replica that owns it, if that is another
    /// replica and it answers (verified; by digest against `expected`); `None` otherwise (the
    /// owner is then marked down), and the caller asks the upstream.
    async fn ask_owner(
        &self,
        up: &Upstream,
        repo: &RepoName,
        reference: &str,
        owner_key: &Digest,
        expected: Option<&Digest>,
    ) -> Option<(Arc<Manifest>, Option<SystemTime>)> {
        let cluster = self.cluster.as_ref().filter(|_| self.forward)?;
        let owner = cluster.owner(owner_key)?;
        let path = crate::cluster::manifest_path(up.name(), repo, reference);
        let (fetched, checked_at) = cluster.fetch_manifest(&owner, &path).await?;
        match verify(up.name(), reference, fetched, expected) {
            Ok(m) => Some((Arc::new(m), checked_at)),
            Err(e) => {
                cluster.mark_down(&owner, &e.to_string());
                None
            }
        }
    }

    /// The manifest `repo:reference` names on `up`, and how it was found (counted in
    /// `berth_cache_lookups_total`).
    pub async fn resolve(&self, up: &Arc<Upstream>, repo: &RepoName, reference: &Reference) -> Result<Resolved> {
        let (m, result) = match reference {
            Reference::Digest(d) => self.by_digest(up, repo, d).await?,
            Reference::Tag(t) => self.by_tag(up, repo, t).await?,
        };
        self.metrics.record_lookup("manifest", up.name(), result);
        // A pull starts with the tag (docker GETs it, containerd HEADs it); digests follow.
        if let Reference::Tag(t) = reference {
            self.metrics.activity().record_pull(up.name(), &format!("{repo}:{t}"));
        }
        Ok((m, result))
    }

    /// The client accepts none of the stored type: ask upstream with the client's own `Accept`
    /// (not coalesced, not moving the tag), verify, and store what comes back by digest.
    pub async fn fetch_accepting(
        &self,
        up: &Upstream,
        repo: &RepoName,
        reference: &Reference,
        accept: &[HeaderValue],
    ) -> Result<Arc<Manifest>> {
        let fetched = up.fetch_manifest(repo, &reference.to_string(), accept).await;
        let fetched = fetched.map_err(|e| Error::from_upstream(up.name(), repo, e))?;
        let fetched = fetched.ok_or_else(|| Error::ManifestUnknown(reference.to_string()))?;
        let m = Arc::new(verify(up.name(), &reference.to_string(), fetched, None)?);
        if !m
            .media_type
            .is_accepted_by(accept.iter().filter_map(|v| v.to_str().ok()))
        {
            return Err(Error::ManifestUnknown(format!(
                "{reference}: no representation the client accepts"
            )));
        }
        self.store_manifest(&m).await;
        Ok(m)
    }

    /// Step one of every fetch: persist a verified manifest (and keep it in memory). A store
    /// that cannot be written does not fail the request: the manifest is served uncached.
    pub async fn store_manifest(&self, m: &Arc<Manifest>) {
        if let Err(e) = self.cache.store(m.clone()).await {
            self.health.write_failed("manifest", &e);
        }
    }

    /// Step two of a tag fetch: point the tag at a stored manifest, confirmed at `checked_at`.
    /// If the record cannot be written the old one stays, and the tag is revalidated again on
    /// its next pull.
    pub async fn move_tag(&self, key: &TagKey, m: &Manifest, checked_at: SystemTime) {
        let rec = TagRecord {
            digest: m.digest.clone(),
            media_type: m.media_type.clone(),
            checked_at,
        };
        if let Err(e) = self.cache.set_tag(key, rec).await {
            self.health.write_failed("tag", &e);
        }
    }

    async fn by_digest(&self, up: &Arc<Upstream>, repo: &RepoName, d: &Digest) -> Result<Resolved> {
        if let Some(m) = self.cache.load(d).await? {
            return Ok((m, CacheResult::Hit));
        }
        // A cached layer or blob that no manifest parser accepts: that digest is no manifest
        // anywhere, so no need to ask (a registry may answer 5xx to it).
        if self.cache.holds_non_manifest(d).await? {
            return Err(Error::ManifestUnknown(format!("{d} is not a manifest")));
        }
        self.fetch_by_digest(up, repo, d).await
    }

    /// Fetch, verify and store a manifest by digest; concurrent calls share one upstream GET.
    async fn fetch_by_digest(&self, up: &Arc<Upstream>, repo: &RepoName, d: &Digest) -> Result<Resolved> {
        let key = FlightKey::Digest(up.name().to_string(), d.clone());
        let (this, up2, repo2, d2) = (self.clone(), up.clone(), repo.clone(), d.clone());
        let work = async move {
            if let Some((m, _)) = this.ask_owner(&up2, &repo2, &d2.to_string(), &d2, Some(&d2)).await {
                this.store_manifest(&m).await;
                return Ok((m, CacheResult::Peer));
            }
            let fetched = up2.fetch_manifest(&repo2, &d2.to_string(), &all_types()).await;
            let fetched = fetched.map_err(|e| Error::from_upstream(up2.name(), &repo2, e))?;
            let fetched = fetched.ok_or_else(|| Error::ManifestUnknown(d2.to_string()))?;
            let m = Arc::new(verify(up2.name(), &d2.to_string(), fetched, Some(&d2))?);
            this.store_manifest(&m).await;
            Ok((m, CacheResult::Miss))
        };
        self.join(up, self.flights.run(key, flight(work)).await)
    }

    async fn by_tag(&self, up: &Arc<Upstream>, repo: &RepoName, tag: &Tag) -> Result<Resolved> {
        let key = TagKey {
            upstream: up.name().to_string(),
            repo: repo.clone(),
            tag: tag.clone(),
        };
        let rec = self.cache.tag(&key).await?;
        // The stored manifest of a stale record: served if the upstream fails or is slow.
        let mut stale = None;
        match &rec {
            Some(r) => match freshness(r.checked_at, SystemTime::now(), up.manifest_ttl(), self.stale_if_error) {
                Freshness::Fresh => {
                    if let Some(m) = self.cache.load_tagged(r).await? {
                        return Ok((m, CacheResult::Hit));
                    }
                }
                Freshness::Stale => stale = self.cache.load_tagged(r).await?,
                Freshness::Expired => {}
            },
            None if self.cache.is_known_missing(&key) => {
                self.metrics.record_lookup("manifest", up.name(), CacheResult::Negative);
                return Err(Error::ManifestUnknown(format!("{repo}:{tag}")));
            }
            None => {}
        }
        let work = self.clone().revalidate(up.clone(), key.clone(), rec, stale.clone());
        let flight = self.flights.run(FlightKey::Tag(key), flight(work));
        let Some(m) = stale else {
            return self.join(up, flight.await);
        };
        // The flight runs in its own task: a pull that stops waiting does not cancel it, and it
        // moves the tag when the upstream answers.
        match tokio::time::timeout(self.revalidate_timeout, flight).await {
            Ok(res) => self.join(up, res),
            Err(_) => {
                let reason = format!("no answer within revalidate_timeout ({:?})", self.revalidate_timeout);
                self.stale_log.served(up.name(), &reason, Instant::now());
                Ok((m, CacheResult::Stale))
            }
        }
    }

    /// Ask upstream about a tag: HEAD when berth has a record, GET otherwise (or when the HEAD
    /// carried no digest). Serves `stale` (the record's manifest, within `stale_if_error`)
    /// when the upstream fails.
    async fn revalidate(
        self,
        up: Arc<Upstream>,
        key: TagKey,
        rec: Option<TagRecord>,
        stale: Option<Arc<Manifest>>,
    ) -> Result<Resolved> {
        let now = SystemTime::now();
        // Another flight for this tag may have ended between the caller's lookup and the start
        // of this one (a slow record read, e.g. from the shared tier, widens that window): its
        // fresh record answers without asking anyone again.
        if let Some(r) = self.cache.tag(&key).await? {
            if freshness(r.checked_at, now, up.manifest_ttl(), self.stale_if_error) == Freshness::Fresh {
                if let Some(m) = self.cache.load_tagged(&r).await? {
                    return Ok((m, CacheResult::Hit));
                }
            }
        }
        let serve_stale = |e: Error| match &stale {
            Some(m) if e.origin() == Origin::Upstream => {
                self.stale_log.served(up.name(), &e, Instant::now());
                Ok((m.clone(), CacheResult::Stale))
            }
            _ => Err(e),
        };
        let upstream_err = |e| Error::from_upstream(up.name(), &key.repo, e);
        let owner_key = crate::cluster::tag_key(up.name(), &key.repo, key.tag.as_str());
        if let Some((m, checked_at)) = self.ask_owner(&up, &key.repo, key.tag.as_str(), &owner_key, None).await {
            self.store_manifest(&m).await;
            // The owner's confirmation time: every replica's record expires with the owner's.
            self.move_tag(&key, &m, checked_at.unwrap_or(now)).await;
            return Ok((m, CacheResult::Peer));
        }
        if let Some(r) = &rec {
            match up.head_manifest(&key.repo, key.tag.as_str(), &all_types()).await {
                Ok(None) => return self.missing(&key).await,
                Err(e) => return serve_stale(upstream_err(e)),
                Ok(Some(head)) => {
                    if let Some(d) = head.digest {
                        let stored = match d == r.digest {
                            true => self.cache.load_tagged(r).await?,
                            false => None,
                        };
                        let (m, result) = match stored {
                            Some(m) => (m, CacheResult::Revalidated),
                            None => match self.fetch_by_digest(&up, &key.repo, &d).await {
                                Ok((m, _)) => (m, CacheResult::Refreshed),
                                Err(e) => return serve_stale(e),
                            },
                        };
                        self.move_tag(&key, &m, now).await;
                        self.stale_log.answered(up.name(), Instant::now());
                        return Ok((m, result));
                    }
                }
            }
        }
        let fetched = match up.fetch_manifest(&key.repo, key.tag.as_str(), &all_types()).await {
            Ok(Some(f)) => f,
            Ok(None) => return self.missing(&key).await,
            Err(e) => return serve_stale(upstream_err(e)),
        };
        let m = Arc::new(verify(up.name(), &format!("{}:{}", key.repo, key.tag), fetched, None)?);
        self.store_manifest(&m).await;
        self.move_tag(&key, &m, now).await;
        self.stale_log.answered(up.name(), Instant::now());
        Ok((m, CacheResult::Miss))
    }

    /// The upstream says the tag does not exist: drop the record, remember the 404.
    async fn missing(&self, key: &TagKey) -> Result<Resolved> {
        if let Err(e) = self.cache.tag_missing(key).await {
            self.health.write_failed("tag", &e);
        }
        Err(Error::ManifestUnknown(format!("{}:{}", key.repo, key.tag)))
    }

    /// Unpack a flight's result for one caller: joiners are counted and see `coalesced`.
    fn join(&self, up: &Upstream, (res, joined): (Option<FlightResult>, bool)) -> Result<Resolved> {
        if joined {
            self.metrics.record_coalesced("manifest", up.name());
        }
        let res = res.ok_or(Error::TaskFailed("manifest fetch"))?;
        let (m, result) = res.map_err(Error::Shared)?;
        Ok((m, if joined { result.joined() } else { result }))
    }
}

/// `work` as a flight: boxed (see `SingleFlight::run`), its error shared.
fn flight<F>(work: F) -> Pin<Box<dyn Future<Output = FlightResult> + Send>>
where
    F: Future<Output = Result<Resolved>> + Send + 'static,
{
    Box::pin(async move { work.await.map_err(Error::shared) })
}
