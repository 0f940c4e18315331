//! The referrers service (OCI distribution-spec 1.1): "what refers to this manifest", for every
//! upstream, whether it has the referrers API or not. Independent of HTTP.
//!
//! - The upstream has the API: every page it links (`Link: rel="next"`, at most
//!   [`MAX_PAGES`], at most [`MAX_MANIFEST_BYTES`] in all) is fetched and merged into one
//!   index, cached in memory by `(upstream, repository, subject)` for `referrers_ttl`. After
//!   that the next request asks again (coalesced: one upstream exchange per key); an upstream
//!   failure serves the cached answer within `stale_if_error`.
//! - The upstream lacks it (404, or a 2xx that is not an image index): the answer is read from
//!   the fallback tag `<alg>-<hex>` through the manifest service's normal tag path (its
//!   `manifest_ttl`, revalidation, stale-if-error and negative cache), an empty index if that
//!   tag does not exist. That the API is missing is remembered for `referrers_ttl`.
//!
//! Filtering by `artifactType` happens on the cached full list (the api layer), so one cache
//! entry serves every filter. Access rules are applied before this service is called.

mod index;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::task::TaskTracker;

pub use index::{fallback_tag, next_page_query, parse_descriptors, Listing, NotAnIndex};

use crate::cache_result::CacheResult;
use crate::coalesce::SingleFlight;
use crate::error::{Error, Origin, Result};
use crate::manifests::{freshness, Freshness, Manifests};
use crate::metrics::Metrics;
use crate::oci::{Digest, Reference, RepoName, MAX_MANIFEST_BYTES};
use crate::upstream::{self, ReferrersPage, Upstream};

/// Most upstream pages followed for one subject; a longer chain is refused.
pub const MAX_PAGES: usize = 32;

/// `(upstream, repository, subject)`: referrers never mix across upstreams or repositories.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReferrersKey {
    /// Upstream name.
    pub upstream: String,
    /// Repository as sent upstream.
    pub repo: RepoName,
    /// The manifest the referrers point at.
    pub subject: Digest,
}

/// What the upstream last said for a key.
#[derive(Debug, Clone)]
enum Answer {
    /// Its referrers API answered with this listing.
    Api(Arc<Listing>),
    /// It has no referrers API: read the fallback tag.
    NoApi,
}

#[derive(Debug, Clone)]
struct Record {
    answer: Answer,
    checked_at: SystemTime,
}

/// A listing and how it was found.
pub type Found = (Arc<Listing>, CacheResult);

type FlightResult = std::result::Result<Found, Arc<Error>>;

/// The referrers service. Cheap to clone.
#[derive(Clone)]
pub struct Referrers {
    manifests: Manifests,
    // moka: bounded by bytes, entries expire once past `ttl + stale_if_error` (never servable
    // then); no lock is held across an await.
    records: moka::sync::Cache<ReferrersKey, Record>,
    flights: SingleFlight<ReferrersKey, FlightResult>,
    metrics: Arc<Metrics>,
    ttl: Duration,
    stale_if_error: Duration,
}

impl Referrers {
    /// A service keeping up to `memory_bytes` of API answers fresh for `ttl` and servable for
    /// `stale_if_error` more; fallback tags go through `manifests`; coalesced fetches run on
    /// `tasks`.
    pub fn new(
        manifests: Manifests,
        metrics: Arc<Metrics>,
        ttl: Duration,
        stale_if_error: Duration,
        memory_bytes: u64,
        tasks: TaskTracker,
    ) -> Referrers {
        let records = moka::sync::Cache::builder()
            .max_capacity(memory_bytes)
            .weigher(|_, r: &Record| match &r.answer {
                Answer::Api(l) => u32::try_from(l.bytes().len() + 256).unwrap_or(u32::MAX),
                Answer::NoApi => 256,
            })
            .time_to_live((ttl + stale_if_error).max(Duration::from_millis(1)))
            .build();
        Referrers {
            manifests,
            records,
            flights: SingleFlight::new(tasks),
            metrics,
            ttl,
            stale_if_error,
        }
    }

    /// The referrers of `subject` in `repo` on `up`, and how they were found (counted in
    /// `berth_cache_lookups_total{kind="referrers"}`).
    pub async fn list(&self, up: &Arc<Upstream>, repo: &RepoName, subject: &Digest) -> Result<Found> {
        let key = ReferrersKey {
            upstream: up.name().to_string(),
            repo: repo.clone(),
            subject: subject.clone(),
        };
        let rec = self.records.get(&key);
        let fresh = rec
            .as_ref()
            .filter(|r| self.freshness(r, SystemTime::now()) == Freshness::Fresh);
        let (listing, result) = match fresh.map(|r| &r.answer) {
            Some(Answer::Api(l)) => (l.clone(), CacheResult::Hit),
            Some(Answer::NoApi) => self.read_fallback_tag(up, &key).await?,
            None => {
                let work = self.clone().revalidate(up.clone(), key.clone(), rec);
                let (res, joined) = self
                    .flights
                    .run(key, Box::pin(async move { work.await.map_err(Error::shared) }))
                    .await;
                if joined {
                    self.metrics.record_coalesced("referrers", up.name());
                }
                let (l, result) = res
                    .ok_or(Error::TaskFailed("referrers fetch"))?
                    .map_err(Error::Shared)?;
                (l, if joined { result.joined() } else { result })
            }
        };
        self.metrics.record_lookup("referrers", up.name(), result);
        Ok((listing, result))
    }

    fn freshness(&self, r: &Record, now: SystemTime) -> Freshness {
        freshness(r.checked_at, now, self.ttl, self.stale_if_error)
    }

    /// Ask the upstream's API again. A failure serves the previous API answer within
    /// `stale_if_error`, or else tries the fallback tag (which may itself be served stale).
    async fn revalidate(self, up: Arc<Upstream>, key: ReferrersKey, rec: Option<Record>) -> Result<Found> {
        let now = SystemTime::now();
        match self.fetch_all(&up, &key).await {
            Ok(Some(listing)) => {
                let result = match rec.map(|r| r.answer) {
                    Some(Answer::Api(old)) if *old == listing => CacheResult::Revalidated,
                    Some(_) => CacheResult::Refreshed,
                    None => CacheResult::Miss,
                };
                let listing = Arc::new(listing);
                let answer = Answer::Api(listing.clone());
                self.records.insert(
                    key,
                    Record {
                        answer,
                        checked_at: now,
                    },
                );
                Ok((listing, result))
            }
            Ok(None) => {
                let answer = Answer::NoApi;
                self.records.insert(
                    key.clone(),
                    Record {
                        answer,
                        checked_at: now,
                    },
                );
                self.read_fallback_tag(&up, &key).await
            }
            Err(e) if e.origin() == Origin::Upstream && !is_refused(&e) => {
                let stale = rec.filter(|r| self.freshness(r, now) != Freshness::Expired);
                if let Some(Record {
                    answer: Answer::Api(l), ..
                }) = stale
                {
                    tracing::warn!(upstream = up.name(), repo = %key.repo, digest = %key.subject, error = %e, "serving stale referrers");
                    return Ok((l, CacheResult::Stale));
                }
                // Unknown or API-less: the fallback tag may still be in the store.
                self.read_fallback_tag(&up, &key).await.map_err(|_| e)
            }
            Err(e) => Err(e),
        }
    }

    /// Every page of the upstream's referrers API, merged; `Ok(None)` if it has no API.
    async fn fetch_all(&self, up: &Upstream, key: &ReferrersKey) -> Result<Option<Listing>> {
        let fail = |e| Error::from_upstream(up.name(), &key.repo, e);
        let bad = |reason: String| Error::BadContent {
            upstream: up.name().to_string(),
            reference: format!("{}/referrers/{}", key.repo, key.subject),
            reason,
        };
        let path = format!("/v2/{}/referrers/{}", key.repo, key.subject);
        let (mut descriptors, mut total, mut query) = (Vec::new(), 0usize, None::<String>);
        let mut seen_queries = Vec::new();
        for page in 0..MAX_PAGES {
            let (bytes, content_type, link) = match up
                .fetch_referrers(&key.repo, &key.subject, query.as_deref())
                .await
                .map_err(fail)?
            {
                ReferrersPage::Body {
                    bytes,
                    content_type,
                    link,
                } => (bytes, content_type, link),
                ReferrersPage::Unsupported if page == 0 => return Ok(None),
                ReferrersPage::Unsupported => return Err(bad(format!("page {} answered 404", page + 1))),
            };
            total += bytes.len();
            if total > MAX_MANIFEST_BYTES {
                return Err(fail(upstream::Error::TooLarge(MAX_MANIFEST_BYTES)));
            }
            match parse_descriptors(&bytes, content_type.as_deref()) {
                Ok(d) => descriptors.extend(d),
                // Spec: an upstream that answers with something other than an index has no API.
                Err(e) if page == 0 => {
                    tracing::debug!(upstream = up.name(), repo = %key.repo, error = %e, "referrers API answer is not an index: using the fallback tag");
                    return Ok(None);
                }
                Err(e) => return Err(bad(format!("page {}: {e}", page + 1))),
            }
            query = link.as_deref().and_then(|l| next_page_query(l, &path));
            match &query {
                None => return Ok(Some(Listing::new(descriptors))),
                Some(q) if seen_queries.contains(q) => return Err(bad("pages link in a loop".into())),
                Some(q) => seen_queries.push(q.clone()),
            }
        }
        Err(bad(format!("more than {MAX_PAGES} pages")))
    }

    /// The referrers read from the fallback tag through the normal tag path; none if the tag
    /// does not exist or is not an image index.
    async fn read_fallback_tag(&self, up: &Arc<Upstream>, key: &ReferrersKey) -> Result<Found> {
        let tag = Reference::Tag(fallback_tag(&key.subject));
        match self.manifests.resolve(up, &key.repo, &tag).await {
            Ok((m, result)) => {
                let listing = match parse_descriptors(&m.bytes, Some(m.media_type.as_str())) {
                    Ok(d) => Listing::new(d),
                    Err(e) => {
                        tracing::debug!(upstream = up.name(), repo = %key.repo, reference = %tag, error = %e, "fallback tag is not an index: no referrers");
                        Listing::empty()
                    }
                };
                Ok((Arc::new(listing), result))
            }
            Err(e) if e.status_and_code().1 == "MANIFEST_UNKNOWN" => {
                Ok((Arc::new(Listing::empty()), CacheResult::Miss))
            }
            Err(e) => Err(e),
        }
    }
}

/// The upstream answered, but with content berth refuses (too large, malformed pages): not an
/// outage, so neither a stale answer nor the fallback tag stands in for it.
fn is_refused(e: &Error) -> bool {
    matches!(
        e,
        Error::BadContent { .. }
            | Error::Upstream {
                source: upstream::Error::TooLarge(_),
                ..
            }
    )
}
