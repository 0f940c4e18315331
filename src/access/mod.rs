//! Which repository may be served which stored digest: the per-repository permission for
//! content of private upstreams (the cross-repository read fixed in zot GHSA-55r9-5mx9-qq7r and
//! distribution). Content is stored once per digest and shared; for an upstream berth pulls
//! with credentials, a digest is served under repository R only if R is known to hold it:
//! it was fetched through R, a manifest served for R (by R's own tag record, or itself known)
//! names it, or the upstream confirms it with a HEAD for R with berth's credentials. What is
//! known is kept as links through the store (`ContentStore::has_link|save_link`, so it survives
//! restarts and works for any backend) with a bounded memory set in front. Public upstreams
//! (no credentials) need none of this: every call returns at once.
//!
//! The handlers call this service at the points where they would serve stored content; the
//! decisions (when a HEAD is needed, what a fetch proves) are made here. Negative answers are
//! not remembered, so a repository that gains the content upstream is served at once.

use std::sync::Arc;

use crate::cache_result::CacheResult;
use crate::error::{Error, Result};
use crate::manifests::{all_types, Manifest};
use crate::oci::{references, Digest, Reference, RepoName};
use crate::store::{ContentStore, LinkKey};
use crate::upstream::Upstream;

/// How many links are kept in memory in front of the store.
const MEMORY_LINKS: u64 = 200_000;

/// The per-repository permission service. Cheap to clone.
#[derive(Clone)]
pub struct RepoAccess {
    store: Arc<dyn ContentStore>,
    known: moka::sync::Cache<LinkKey, ()>,
}

fn key(up: &Upstream, repo: &RepoName, digest: &Digest) -> LinkKey {
    LinkKey {
        upstream: up.name().to_string(),
        repo: repo.clone(),
        digest: digest.clone(),
    }
}

impl RepoAccess {
    /// The service over the store's links.
    pub fn new(store: Arc<dyn ContentStore>) -> RepoAccess {
        RepoAccess {
            store,
            known: moka::sync::Cache::new(MEMORY_LINKS),
        }
    }

    /// Whether `repo` may be served `digest` from the store without asking the upstream:
    /// always on a public upstream; on a private one when a link says `repo` holds it.
    pub async fn is_known(&self, up: &Upstream, repo: &RepoName, digest: &Digest) -> Result<bool> {
        if !up.is_private() {
            return Ok(true);
        }
        let k = key(up, repo, digest);
        if self.known.contains_key(&k) {
            return Ok(true);
        }
        if self.store.has_link(&k).await? {
            self.known.insert(k, ());
            return Ok(true);
        }
        Ok(false)
    }

    /// Record that `repo` holds `digests` (the upstream served or confirmed them for it).
    pub async fn record(
        &self,
        up: &Upstream,
        repo: &RepoName,
        digests: impl IntoIterator<Item = Digest>,
    ) -> Result<()> {
        if !up.is_private() {
            return Ok(());
        }
        for d in digests {
            let k = key(up, repo, &d);
            if !self.known.contains_key(&k) {
                self.store.save_link(&k).await?;
                self.known.insert(k, ());
            }
        }
        Ok(())
    }

    /// Before serving a stored blob under `repo`: `Ok(true)` when it may be served (public, a
    /// link, or stored and the upstream confirms `repo` holds it); `Ok(false)` when it is not
    /// stored and not known (fetch it through `repo`, which proves it); `BLOB_UNKNOWN` when it
    /// is stored but the upstream says `repo` does not hold it.
    pub async fn check_blob(&self, up: &Upstream, repo: &RepoName, digest: &Digest) -> Result<bool> {
        if self.is_known(up, repo, digest).await? {
            return Ok(true);
        }
        if self.store.stat(digest).await?.is_none() {
            return Ok(false);
        }
        self.confirm_blob(up, repo, digest).await?;
        Ok(true)
    }

    /// Make sure `repo` holds a blob about to be served: known, or one upstream HEAD for
    /// `repo` with berth's credentials confirms it (recorded); otherwise `BLOB_UNKNOWN`.
    pub async fn confirm_blob(&self, up: &Upstream, repo: &RepoName, digest: &Digest) -> Result<()> {
        if self.is_known(up, repo, digest).await? {
            return Ok(());
        }
        let found = up
            .head_blob(repo, digest)
            .await
            .map_err(|e| Error::from_upstream(up.name(), repo, e))?;
        if found.is_none() {
            return Err(Error::BlobUnknown(digest.to_string()));
        }
        self.record(up, repo, [digest.clone()]).await
    }

    /// A blob fill for the client started: this request's own upstream GET through `repo`
    /// proves `repo` holds it (recorded); a joined fill may be another repository's, so that
    /// is confirmed.
    pub async fn after_fill(&self, up: &Upstream, repo: &RepoName, digest: &Digest, joined: bool) -> Result<()> {
        match joined {
            true => self.confirm_blob(up, repo, digest).await,
            false => self.record(up, repo, [digest.clone()]).await,
        }
    }

    /// Before serving manifest `m` found for `repo:reference` (`result`: how it was found):
    /// by tag it came through `repo`'s own tag record, and a miss was this request's own
    /// fetch through `repo`; anything else found by digest (a store hit, a joined fetch) that
    /// `repo` is not known to hold is confirmed with an upstream HEAD, else `MANIFEST_UNKNOWN`.
    /// Then `repo` is recorded to hold `m` and everything `m` references.
    pub async fn admit_manifest(
        &self,
        up: &Upstream,
        repo: &RepoName,
        reference: &Reference,
        m: &Manifest,
        result: CacheResult,
    ) -> Result<()> {
        if self.is_known(up, repo, &m.digest).await? {
            return Ok(());
        }
        let proven = matches!(reference, Reference::Tag(_)) || result == CacheResult::Miss;
        if !proven {
            let head = up
                .head_manifest(repo, &m.digest.to_string(), &all_types())
                .await
                .map_err(|e| Error::from_upstream(up.name(), repo, e))?;
            if head.is_none() {
                return Err(Error::ManifestUnknown(m.digest.to_string()));
            }
        }
        // The manifest's own link last: once it exists, its references are recorded too.
        let mut digests = references(&m.bytes);
        digests.push(m.digest.clone());
        self.record(up, repo, digests).await
    }
}
