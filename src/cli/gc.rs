//! `berth gc [--dry-run]`: remove what can no longer be useful. Roots: tag records that can
//! still be served (within `manifest_ttl + stale_if_error` of their last check), pins, and
//! anything used within that window; everything they reference is kept. Removed: expired tag
//! records, tag records whose manifest is gone, and objects no root reaches.

use std::collections::HashSet;
use std::time::SystemTime;

use super::{human_bytes, CliError};
use crate::config::Config;
use crate::oci::{reachable, Digest, MAX_MANIFEST_BYTES};
use crate::store::{BlobStore, ContentStore, Pins};

/// Run a collection; with `dry_run` only report.
pub async fn run(config: &Config, dry_run: bool) -> Result<String, CliError> {
    let root = &config.storage.path;
    let blobs = BlobStore::attach(root)?;
    let now = SystemTime::now();
    let window = config.cache.manifest_ttl + config.cache.stale_if_error;
    let recent = |t: SystemTime| now.duration_since(t).unwrap_or_default() < window;
    let entries = blobs.list().await?;
    let mut out = String::new();
    let verb = if dry_run { "would remove" } else { "removed" };

    let mut roots: Vec<Digest> = Pins::new(root).digests()?;
    for t in blobs.list_tags().await? {
        let gone = blobs.stat(&t.record.digest).await?.is_none();
        if gone || !recent(t.record.checked_at) {
            let why = if gone { "manifest missing" } else { "expired" };
            out += &format!("{verb} tag {}/{}:{} ({why})\n", t.upstream, t.repo, t.tag);
            if !dry_run {
                blobs.remove_tag(&t.key()).await?;
            }
        } else {
            roots.push(t.record.digest);
        }
    }
    roots.extend(
        entries
            .iter()
            .filter(|o| recent(o.last_access))
            .map(|o| o.digest.clone()),
    );

    // An unreadable object is read as "references nothing": gc goes on.
    let load = |d: &Digest| {
        Ok::<_, std::convert::Infallible>(blobs.load_verified(d, MAX_MANIFEST_BYTES as u64).ok().flatten())
    };
    let Ok(keep): Result<HashSet<Digest>, _> = reachable(roots, load);
    let (mut n, mut bytes) = (0, 0);
    for o in entries.iter().filter(|o| !keep.contains(&o.digest)) {
        out += &format!("{verb} {} ({})\n", o.digest, human_bytes(o.size));
        if !dry_run {
            blobs.delete(&o.digest).await?;
        }
        n += 1;
        bytes += o.size;
    }
    out += &format!("{verb} {n} objects, {}\n", human_bytes(bytes));
    Ok(out)
}
