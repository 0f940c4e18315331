//! `berth cache stats|ls|rm|pin|unpin`: read and edit the store through the storage seam
//! ([`ContentStore`]) and its pins; no directory walking here.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::{human_bytes, time_ago, CliError, ImageRef};
use crate::cache_result::CacheResult;
use crate::config::Config;
use crate::oci::{self, Digest, Reference, MAX_MANIFEST_BYTES};
use crate::store::{BlobStore, ContentStore, ObjectInfo, Pin, Pins, TagEntry, TagKey};

struct Store {
    blobs: BlobStore,
    pins: Pins,
}

fn open(config: &Config) -> Result<Store, CliError> {
    let root = &config.storage.path;
    Ok(Store {
        blobs: BlobStore::attach(root)?,
        pins: Pins::new(root),
    })
}

/// Every committed object by digest.
async fn objects(s: &Store) -> Result<HashMap<Digest, ObjectInfo>, CliError> {
    Ok(s.blobs
        .list()
        .await?
        .into_iter()
        .map(|o| (o.digest.clone(), o))
        .collect())
}

/// `cache stats`: objects, bytes, limit, free space, tags and bytes per upstream, pins, and the hit
/// ratio from the running server's metrics when `[metrics] listen` is set and answers.
pub async fn stats(config: &Config, as_json: bool) -> Result<String, CliError> {
    let s = open(config)?;
    let index = objects(&s).await?;
    let bytes: u64 = index.values().map(|e| e.size).sum();
    // Per upstream: its tags, and the bytes of everything they reach (each object once per
    // upstream; layers shared between upstreams count for each).
    let mut by_upstream: BTreeMap<String, (usize, HashSet<Digest>)> = BTreeMap::new();
    for t in s.blobs.list_tags().await? {
        let (tags, reach) = by_upstream.entry(t.upstream).or_default();
        *tags += 1;
        reach.extend(reachable(&s, &index, &t.record.digest));
    }
    let upstream_bytes =
        |reach: &HashSet<Digest>| reach.iter().filter_map(|d| index.get(d)).map(|e| e.size).sum::<u64>();
    let free = crate::store::free_space(&config.storage.path);
    let hit_ratio = match config.metrics.listen {
        Some(addr) => super::warm::fetch_text(config, &format!("http://{}/metrics", loopback(addr)))
            .await
            .ok()
            .and_then(|t| hit_ratio(&t)),
        None => None,
    };
    let pins = s.pins.load()?.len();
    if as_json {
        let v = json!({
            "objects": index.len(), "bytes": bytes, "max_size": config.storage.max_size,
            "filesystem_free_bytes": free, "pins": pins, "hit_ratio": hit_ratio,
            "upstreams": by_upstream.iter().map(|(u, (tags, reach))| (u.clone(), json!({"tags": tags, "bytes": upstream_bytes(reach)}))).collect::<serde_json::Map<_, _>>(),
        });
        return Ok(v.to_string());
    }
    let mut out = format!(
        "objects      {}\nbytes        {} ({bytes})\n",
        index.len(),
        human_bytes(bytes)
    );
    out += &format!(
        "max_size     {}\n",
        config.storage.max_size.map_or("none".into(), human_bytes)
    );
    out += &format!("free space   {}\n", free.map_or("unknown".into(), human_bytes));
    out += &format!("pins         {pins}\n");
    for (u, (tags, reach)) in &by_upstream {
        out += &format!(
            "upstream     {u}: {tags} tags, {}\n",
            human_bytes(upstream_bytes(reach))
        );
    }
    out += &format!(
        "hit ratio    {}\n",
        hit_ratio.map_or("(server metrics not reachable)".into(), |r| format!(
            "{:.1}%",
            r * 100.0
        ))
    );
    Ok(out)
}

fn loopback(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    match addr.ip() {
        ip if ip.is_unspecified() => std::net::SocketAddr::from(([127, 0, 0, 1], addr.port())),
        _ => addr,
    }
}

/// hits / lookups over manifests and blobs, from Prometheus text.
fn hit_ratio(metrics: &str) -> Option<f64> {
    let (mut hits, mut all) = (0f64, 0f64);
    for line in metrics.lines().filter(|l| l.starts_with("berth_cache_lookups_total{")) {
        let v: f64 = line.rsplit(' ').next()?.parse().ok()?;
        all += v;
        let result = line.split("result=\"").nth(1).and_then(|r| r.split('"').next());
        if result.is_some_and(CacheResult::is_hit_label) {
            hits += v;
        }
    }
    (all > 0.0).then_some(hits / all)
}

/// A manifest and everything it references that is in the store.
fn reachable(s: &Store, index: &HashMap<Digest, ObjectInfo>, root: &Digest) -> HashSet<Digest> {
    let load = |d: &Digest| {
        let small = index.get(d).is_some_and(|e| e.size <= MAX_MANIFEST_BYTES as u64);
        // An unreadable object is skipped: listing goes on.
        let bytes = small.then(|| s.blobs.load_verified(d, MAX_MANIFEST_BYTES as u64).ok().flatten());
        Ok::<_, std::convert::Infallible>(bytes.flatten())
    };
    let Ok(all) = oci::reachable([root.clone()], load);
    all.into_iter().filter(|d| index.contains_key(d)).collect()
}

/// Total bytes of a manifest and everything it references that is in the store.
fn image_size(s: &Store, index: &HashMap<Digest, ObjectInfo>, root: &Digest) -> u64 {
    reachable(s, index, root)
        .iter()
        .filter_map(|d| index.get(d))
        .map(|e| e.size)
        .sum()
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// `cache ls`: every cached tag with its digest, size on disk, last use and last check.
pub async fn ls(config: &Config, as_json: bool) -> Result<String, CliError> {
    let s = open(config)?;
    let index = objects(&s).await?;
    let pinned: Vec<String> = s.pins.load()?.into_iter().map(|p| p.digest).collect();
    let rows: Vec<serde_json::Value> = s
        .blobs
        .list_tags()
        .await?
        .into_iter()
        .map(|t: TagEntry| {
            let d = &t.record.digest;
            json!({
                "upstream": t.upstream, "repository": t.repo.to_string(), "tag": t.tag.to_string(),
                "digest": d.to_string(), "media_type": t.record.media_type.as_str(),
                "cached": index.contains_key(d), "bytes": image_size(&s, &index, d),
                "last_used": index.get(d).map(|e| unix(e.last_access)), "checked_at": unix(t.record.checked_at),
                "pinned": pinned.contains(&d.to_string()),
            })
        })
        .collect();
    if as_json {
        return Ok(serde_json::Value::Array(rows).to_string());
    }
    let now = unix(SystemTime::now());
    let ago = |v: &serde_json::Value| v.as_u64().map_or("-".into(), |t| time_ago(now.saturating_sub(t)));
    let mut table = vec![[
        "UPSTREAM",
        "REPOSITORY:TAG",
        "DIGEST",
        "SIZE",
        "LAST USED",
        "CHECKED",
        "PINNED",
    ]
    .map(String::from)];
    for r in &rows {
        let digest = r["digest"].as_str().unwrap_or("");
        table.push([
            r["upstream"].as_str().unwrap_or("").to_string(),
            format!(
                "{}:{}",
                r["repository"].as_str().unwrap_or(""),
                r["tag"].as_str().unwrap_or("")
            ),
            // sha256: and 12 hex digits, like `docker images`.
            digest.chars().take(19).collect(),
            human_bytes(r["bytes"].as_u64().unwrap_or(0)),
            ago(&r["last_used"]),
            ago(&r["checked_at"]),
            if r["pinned"].as_bool().unwrap_or(false) {
                "yes"
            } else {
                ""
            }
            .to_string(),
        ]);
    }
    Ok(aligned(&table))
}

/// Rows as columns padded to their widest cell, two spaces apart; no trailing spaces.
fn aligned<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out += line.join("  ").trim_end();
        out.push('\n');
    }
    out
}

/// The manifest digest a reference names in this store: the digest itself, or the tag's record.
async fn resolve(config: &Config, s: &Store, r: &ImageRef) -> Result<(Digest, Option<TagKey>), CliError> {
    match &r.reference {
        Reference::Digest(d) => Ok((d.clone(), None)),
        Reference::Tag(tag) => {
            let key = TagKey {
                upstream: r.upstream(config)?.to_string(),
                repo: r.repo.clone(),
                tag: tag.clone(),
            };
            let rec = s
                .blobs
                .load_tag(&key)
                .await?
                .ok_or_else(|| CliError::new(format!("{r} is not cached")))?;
            Ok((rec.digest, Some(key)))
        }
    }
}

/// `cache rm [--force] <ref>...`: a tag drops its record and its manifest; a digest
/// (`repo@sha256:…` or a bare `sha256:…`) drops that object and every tag pointing at it.
/// Shared layers are left for `gc` and eviction. Without `force`, nothing is removed when any
/// object to remove is still needed by a tag or pin that stays. A running server notices
/// within 10 s.
pub async fn rm(config: &Config, refs: &[String], force: bool) -> Result<String, CliError> {
    let s = open(config)?;
    let mut plan: Vec<(Digest, Vec<TagKey>)> = Vec::new();
    for raw in refs {
        let (digest, tag) = match raw.parse::<Digest>() {
            Ok(d) => (d, None),
            Err(_) => resolve(config, &s, &ImageRef::parse(raw)?).await?,
        };
        let tags: Vec<TagKey> = match tag {
            Some(t) => vec![t],
            None => s
                .blobs
                .list_tags()
                .await?
                .iter()
                .filter(|t| t.record.digest == digest)
                .map(TagEntry::key)
                .collect(),
        };
        if tags.is_empty() && s.blobs.stat(&digest).await?.is_none() {
            return Err(CliError::new(format!("{raw} is not cached")));
        }
        plan.push((digest, tags));
    }
    if !force {
        let removed: Vec<&TagKey> = plan.iter().flat_map(|(_, tags)| tags).collect();
        let index = objects(&s).await?;
        for (digest, _) in &plan {
            let users = users(&s, &index, digest, &removed).await?;
            if !users.is_empty() {
                return Err(CliError::new(format!(
                    "refusing to remove {digest}: needed by {}; remove or unpin those images first, or pass --force",
                    users.join(", ")
                )));
            }
        }
    }
    let mut out = String::new();
    for (digest, tags) in plan {
        for t in &tags {
            s.blobs.remove_tag(t).await?;
            out += &format!("removed tag {}/{}:{}\n", t.upstream, t.repo, t.tag);
        }
        s.blobs.delete(&digest).await?;
        out += &format!("removed {digest}\n");
    }
    Ok(out)
}

/// The images that need `digest`, other than the `removed` tags: each tag whose walk reaches
/// it (`upstream/repo:tag`, marked `(pinned)` when its manifest is pinned) and each pin whose
/// walk reaches it (by the pinned reference).
async fn users(
    s: &Store,
    index: &HashMap<Digest, ObjectInfo>,
    digest: &Digest,
    removed: &[&TagKey],
) -> Result<Vec<String>, CliError> {
    let pins = s.pins.load()?;
    let pinned = |d: &Digest| pins.iter().any(|p| p.digest == d.to_string());
    let mut named: HashSet<Digest> = HashSet::new();
    let mut out = Vec::new();
    for t in s.blobs.list_tags().await? {
        let root = &t.record.digest;
        if removed.contains(&&t.key()) || !reachable(s, index, root).contains(digest) {
            continue;
        }
        let mark = if pinned(root) { " (pinned)" } else { "" };
        out.push(format!("{}/{}:{}{mark}", t.upstream, t.repo, t.tag));
        named.insert(root.clone());
    }
    for p in &pins {
        let Ok(root) = p.digest.parse::<Digest>() else { continue };
        if !named.contains(&root) && reachable(s, index, &root).contains(digest) {
            out.push(format!("{} (pinned)", p.reference));
        }
    }
    Ok(out)
}

/// `cache pin <ref>`: exempt the image (and everything it references) from eviction.
pub async fn pin(config: &Config, raw: &str) -> Result<String, CliError> {
    let s = open(config)?;
    let r = ImageRef::parse(raw)?;
    let (digest, _) = resolve(config, &s, &r).await?;
    if s.blobs.stat(&digest).await?.is_none() {
        return Err(CliError::new(format!(
            "{raw}: {digest} is not cached; `berth warm` it first"
        )));
    }
    s.pins.add(Pin {
        reference: r.to_string(),
        digest: digest.to_string(),
    })?;
    Ok(format!("pinned {r} ({digest})\n"))
}

/// `cache unpin <ref>`: by the pinned reference or its digest.
pub fn unpin(config: &Config, raw: &str) -> Result<String, CliError> {
    let s = open(config)?;
    let key = match ImageRef::parse(raw) {
        Ok(r) if !raw.starts_with("sha256:") => r.to_string(),
        _ => raw.to_string(),
    };
    match s.pins.remove(&key)? {
        0 => Err(CliError::new(format!("{raw} is not pinned"))),
        n => Ok(format!("unpinned {key} ({n})\n")),
    }
}
