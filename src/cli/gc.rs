//! `berth gc [--dry-run]`: remove what can no longer be useful. Roots: tag records that can
//! still be served (within `manifest_ttl + stale_if_error` of their last check), pins, and
//! anything used within that window; everything they reference is kept. Removed: expired tag
//! records, tag records whose manifest is gone, and objects no root reaches.

use std::collections::HashSet;
use std::time::SystemTime;

use super::{human_bytes, CliError};
use crate::config::Config;
use crate::oci::{reachable, Digest, MAX_MANIFEST_BYTES};
use crate::store::{BlobStore, Pins, TagStore};

/// Run a collection; with `dry_run` only report.
pub fn run(config: &Config, dry_run: bool) -> Result<String, CliError> {
    let root = &config.storage.path;
    let blobs = BlobStore::attach(root)?;
    let tags = TagStore::new(root);
    let now = SystemTime::now();
    let window = config.cache.manifest_ttl + config.cache.stale_if_error;
    let recent = |t: SystemTime| now.duration_since(t).unwrap_or_default() < window;
    let entries = blobs.index().entries();
    let mut out = String::new();
    let verb = if dry_run { "would remove" } else { "removed" };

    let mut roots: Vec<Digest> = Pins::new(root).digests()?;
    for t in tags.all()? {
        let gone = !blobs.contains(&t.record.digest);
        if gone || !recent(t.record.checked_at) {
            let why = if gone { "manifest missing" } else { "expired" };
            out += &format!("{verb} tag {}/{}:{} ({why})\n", t.upstream, t.repo, t.tag);
            if !dry_run {
                tags.remove(&t.upstream, &t.repo, &t.tag)?;
            }
        } else {
            roots.push(t.record.digest);
        }
    }
    roots.extend(
        entries
            .iter()
            .filter(|(_, e)| recent(e.last_access))
            .map(|(d, _)| d.clone()),
    );

    // An unreadable object is read as "references nothing": gc goes on.
    let load = |d: &Digest| {
        Ok::<_, std::convert::Infallible>(blobs.load_verified(d, MAX_MANIFEST_BYTES as u64).ok().flatten())
    };
    let Ok(keep): Result<HashSet<Digest>, _> = reachable(roots, load);
    let (mut n, mut bytes) = (0, 0);
    for (d, e) in entries.iter().filter(|(d, _)| !keep.contains(d)) {
        out += &format!("{verb} {d} ({})\n", human_bytes(e.size));
        if !dry_run {
            blobs.remove(d)?;
        }
        n += 1;
        bytes += e.size;
    }
    out += &format!("{verb} {n} objects, {}\n", human_bytes(bytes));
    Ok(out)
}
