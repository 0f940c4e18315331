//! The replicas of one berth cluster and who owns which blob. Each blob digest has one owner
//! among the live replicas, by rendezvous hashing (highest `sha256(peer URL, digest)` wins,
//! as groupcache does): when a replica joins or leaves, only the digests it owned move. A
//! replica that misses a blob it does not own asks the owner (`fill`), which runs the single
//! fill and streams it; an owner that fails is marked down for `down_for`, and the next
//! replica in rendezvous order owns its digests meanwhile. Membership is the static `peers`
//! list or the addresses `peers_dns` resolves to, re-resolved every `refresh_interval`.
//! Manifests by digest and tags are owned the same way (a tag by the hash of its name), so
//! one replica fetches a manifest and revalidates a tag for the whole cluster. Peer requests
//! carry an HMAC of their path under the shared secret (`auth.rs`). No request handling here:
//! this owns the membership, the ownership rule, the peer signatures and the peer client.

mod auth;
mod client;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::BodyExt;

use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

pub use auth::{PeerKey, PEER_HEADER};
use client::PeerClient;

use crate::config::ClusterConfig;
use crate::metrics::Metrics;
use crate::oci::{Digest, RepoName, MAX_MANIFEST_BYTES};
use crate::upstream::FetchedManifest;

/// Where peer requests go: `/_berth/peer/<upstream>/<repo>/blobs/<digest>`.
pub const PEER_PREFIX: &str = "/_berth/peer/";

/// The peer path for a blob of `repo` on upstream `upstream`.
pub fn blob_path(upstream: &str, repo: &RepoName, digest: &Digest) -> String {
    format!("{PEER_PREFIX}{upstream}/{repo}/blobs/{digest}")
}

/// The peer path for the manifest `reference` (tag or digest) of `repo` on `upstream`.
pub fn manifest_path(upstream: &str, repo: &RepoName, reference: &str) -> String {
    format!("{PEER_PREFIX}{upstream}/{repo}/manifests/{reference}")
}

/// The header an owner answers a tag with: when the upstream last confirmed it (Unix
/// seconds), so every replica's record expires when the owner's does.
pub const CHECKED_AT_HEADER: &str = "x-berth-checked-at";

/// The key a tag is owned by (rendezvous hashing works on digests).
pub fn tag_key(upstream: &str, repo: &RepoName, tag: &str) -> Digest {
    Digest::of(
        crate::oci::Algorithm::Sha256,
        format!("{upstream}/{repo}:{tag}").as_bytes(),
    )
}

/// The cluster as this replica sees it. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    /// This replica's URL, as the others reach it.
    me: String,
    /// Every replica's URL (this one included), sorted.
    peers: RwLock<Vec<String>>,
    /// Replicas that failed, until when they are skipped.
    down: Mutex<HashMap<String, Instant>>,
    cfg: ClusterConfig,
    key: PeerKey,
    client: PeerClient,
    metrics: Arc<Metrics>,
}

impl Cluster {
    /// The cluster `cfg` describes; reads the secret file now. Membership starts as the
    /// static list (or this replica alone until DNS answers).
    pub fn new(cfg: &ClusterConfig, metrics: Arc<Metrics>) -> Result<Cluster, String> {
        let key = PeerKey::from_file(&cfg.secret_file)?;
        let ca = match &cfg.ca_file {
            Some(f) => Some(std::fs::read(f).map_err(|e| format!("cluster.ca_file {}: {e}", f.display()))?),
            None => None,
        };
        let client = PeerClient::new(cfg.peer_timeout, ca.as_deref())?;
        let me = normalize(&cfg.advertise);
        let mut peers: Vec<String> = cfg.peers.iter().map(|p| normalize(p)).collect();
        peers.push(me.clone());
        peers.sort();
        peers.dedup();
        metrics.cluster_peers.set(peers.len() as i64);
        Ok(Cluster {
            inner: Arc::new(Inner {
                me,
                peers: RwLock::new(peers),
                down: Mutex::default(),
                cfg: cfg.clone(),
                key,
                client,
                metrics,
            }),
        })
    }

    /// The key peer requests are signed and checked with.
    pub fn key(&self) -> &PeerKey {
        &self.inner.key
    }

    /// Ask `peer` (an owner) for `path`, signed; the response once its headers arrived within
    /// `peer_timeout`, if it is a 200.
    pub async fn get(&self, peer: &str, path: &str) -> Result<http::Response<hyper::body::Incoming>, String> {
        let i = &self.inner;
        i.client.get(peer, path, &i.key, i.cfg.peer_timeout).await
    }

    /// The owner of `digest` among the live replicas, if it is another replica (`None`: this
    /// replica owns it, or no other replica is live).
    pub fn owner(&self, digest: &Digest) -> Option<String> {
        let peers = self.inner.peers.read().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let down = self.inner.down.lock().unwrap_or_else(|p| p.into_inner());
        let owner = peers
            .iter()
            .filter(|p| **p == self.inner.me || down.get(*p).is_none_or(|until| *until <= now))
            .max_by_key(|p| score(p, digest))?;
        (*owner != self.inner.me).then(|| owner.clone())
    }

    /// The manifest at `path` from `peer` (an owner): its bytes, `Content-Type` and
    /// `Docker-Content-Digest` (for the caller to verify, never to trust), and for a tag when
    /// the owner last confirmed it. A failure marks the peer down.
    pub async fn fetch_manifest(&self, peer: &str, path: &str) -> Option<(FetchedManifest, Option<SystemTime>)> {
        let got = async {
            let resp = self.get(peer, path).await?;
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let (content_type, digest) = (header("content-type"), header("docker-content-digest"));
            let checked_at = header(CHECKED_AT_HEADER)
                .and_then(|v| v.parse::<u64>().ok())
                .map(|s| UNIX_EPOCH + Duration::from_secs(s));
            let limited = http_body_util::Limited::new(resp.into_body(), MAX_MANIFEST_BYTES);
            let bytes = limited.collect().await.map_err(|e| e.to_string())?.to_bytes();
            let fetched = FetchedManifest {
                bytes,
                content_type,
                digest,
            };
            Ok::<_, String>((fetched, checked_at))
        };
        match got.await {
            Ok(m) => {
                self.record_ok();
                Some(m)
            }
            Err(e) => {
                self.mark_down(peer, &e);
                None
            }
        }
    }

    /// Whether this replica leads cluster-wide chores (the shared tier's eviction): it owns a
    /// fixed key, so exactly one live replica does, without an election.
    pub fn is_leader(&self) -> bool {
        self.owner(&Digest::of(crate::oci::Algorithm::Sha256, b"berth cluster leader"))
            .is_none()
    }

    /// A blob fill the owner answered in full.
    pub fn record_ok(&self) {
        self.inner.metrics.record_peer_request("ok");
    }

    /// `peer` failed (unreachable, slow, broke off): skip it for `down_for`.
    pub fn mark_down(&self, peer: &str, why: &str) {
        let until = Instant::now() + self.inner.cfg.down_for;
        let was_up = self
            .inner
            .down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer.to_string(), until)
            .is_none_or(|old| old <= Instant::now());
        self.inner.metrics.record_peer_request("failed");
        if was_up {
            tracing::warn!(peer, reason = why, down_for = ?self.inner.cfg.down_for, "peer marked down: fetching its blobs from the upstream meanwhile");
        }
    }

    /// Keep the membership current from `peers_dns` until `stop` (no-op for a static list).
    pub async fn watch(self, stop: CancellationToken) {
        let Some(name) = self.inner.cfg.peers_dns.clone() else {
            return;
        };
        loop {
            match tokio::net::lookup_host(name.as_str()).await {
                Ok(addrs) => {
                    let scheme = self.inner.me.split("://").next().unwrap_or("http").to_string();
                    let mut peers: Vec<String> = addrs.map(|a| format!("{scheme}://{a}")).collect();
                    peers.push(self.inner.me.clone());
                    peers.sort();
                    peers.dedup();
                    self.inner.metrics.cluster_peers.set(peers.len() as i64);
                    let mut current = self.inner.peers.write().unwrap_or_else(|p| p.into_inner());
                    if *current != peers {
                        tracing::info!(peers = ?peers, "cluster membership changed");
                        *current = peers;
                    }
                }
                Err(e) => tracing::warn!(name, error = %e, "peers_dns did not resolve; keeping the last membership"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.inner.cfg.refresh_interval) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}

/// The rendezvous score of `peer` for `digest`.
fn score(peer: &str, digest: &Digest) -> u64 {
    let mut h = Sha256::new();
    h.update(peer.as_bytes());
    h.update([0]);
    h.update(digest.hex().as_bytes());
    let out = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&out[..8]);
    u64::from_be_bytes(first)
}

/// A peer URL without a trailing slash, so the same replica is always spelled alike.
fn normalize(url: &str) -> String {
    url.trim_end_matches('/').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(i: u32) -> Digest {
        Digest::of(crate::oci::Algorithm::Sha256, &i.to_be_bytes())
    }

    #[test]
    fn owners_spread_over_peers_and_only_a_leaving_peers_digests_move() {
        let three = ["http://a:1", "http://b:1", "http://c:1"];
        fn owner<'a>(peers: &[&'a str], d: &Digest) -> &'a str {
            peers.iter().copied().max_by_key(|p| score(p, d)).unwrap()
        }
        let mut counts = HashMap::new();
        for i in 0..3000 {
            let d = digest(i);
            let o = owner(&three, &d);
            *counts.entry(o).or_insert(0) += 1;
            let two = ["http://a:1", "http://b:1"];
            if o != "http://c:1" {
                assert_eq!(owner(&two, &d), o, "a digest c did not own keeps its owner");
            }
        }
        for p in three {
            let n = counts[p];
            assert!((800..1200).contains(&n), "{p} owns {n} of 3000");
        }
    }
}
