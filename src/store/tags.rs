//! The tag index on disk: `(upstream, repository, tag) -> (digest, media type, checked_at)`,
//! one small JSON file per tag, replaced atomically (`atomic::replace`).

use std::fs;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{atomic, Error};
use crate::oci::{Digest, MediaType, RepoName, Tag};

/// `(upstream, repository, tag)`: tags never mix across upstreams.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TagKey {
    /// Upstream name.
    pub upstream: String,
    /// Repository as sent upstream.
    pub repo: RepoName,
    /// Tag.
    pub tag: Tag,
}

/// What a tag pointed at when berth last asked upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRecord {
    /// The manifest digest.
    pub digest: Digest,
    /// The manifest's media type.
    pub media_type: MediaType,
    /// When upstream last confirmed it.
    pub checked_at: SystemTime,
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    digest: String,
    media_type: String,
    checked_at: u64,
}

/// A saved tag with its record (for listing, eviction and gc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagEntry {
    /// Upstream name.
    pub upstream: String,
    /// Repository.
    pub repo: RepoName,
    /// Tag.
    pub tag: Tag,
    /// What it points at.
    pub record: TagRecord,
}

impl TagEntry {
    /// The tag this entry is for.
    pub fn key(&self) -> TagKey {
        TagKey {
            upstream: self.upstream.clone(),
            repo: self.repo.clone(),
            tag: self.tag.clone(),
        }
    }
}

/// Handle to `<root>/tags`. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TagStore {
    root: PathBuf,
    tmp: PathBuf,
}

impl TagStore {
    /// The tag index under the store root (created by `BlobStore::open`).
    pub fn new(store_root: &std::path::Path) -> TagStore {
        TagStore {
            root: store_root.join("tags"),
            tmp: store_root.join("tmp"),
        }
    }

    fn path(&self, upstream: &str, repo: &RepoName, tag: &Tag) -> PathBuf {
        // `_tags` cannot clash with a repository component: those start with [a-z0-9].
        let mut p = self.root.join(upstream);
        p.extend(repo.components());
        p.join("_tags").join(tag.as_str())
    }

    /// The record for a tag, if one was saved and parses.
    pub fn load(&self, upstream: &str, repo: &RepoName, tag: &Tag) -> Result<Option<TagRecord>, Error> {
        let text = match fs::read(self.path(upstream, repo, tag)) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let Ok(raw) = serde_json::from_slice::<OnDisk>(&text) else {
            return Ok(None);
        };
        let Ok(digest) = raw.digest.parse() else {
            return Ok(None);
        };
        Ok(Some(TagRecord {
            digest,
            media_type: MediaType::new(&raw.media_type),
            checked_at: UNIX_EPOCH + Duration::from_secs(raw.checked_at),
        }))
    }

    /// Replace the record for a tag atomically.
    pub fn save(&self, upstream: &str, repo: &RepoName, tag: &Tag, rec: &TagRecord) -> Result<(), Error> {
        let dest = self.path(upstream, repo, tag);
        let dir = dest.parent().expect("tag paths always have a parent");
        fs::create_dir_all(dir)?;
        let raw = OnDisk {
            digest: rec.digest.to_string(),
            media_type: rec.media_type.as_str().to_string(),
            checked_at: rec.checked_at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs(),
        };
        let tmp = self.tmp.join(format!("tag-{:016x}", fastrand::u64(..)));
        let bytes = serde_json::to_vec(&raw).expect("plain struct serializes");
        atomic::replace(&tmp, &dest, &bytes)?;
        Ok(())
    }

    /// Every saved tag. Unparsable files and names are skipped.
    pub fn all(&self) -> Result<Vec<TagEntry>, Error> {
        let mut out = Vec::new();
        let ups = match fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e.into()),
        };
        for up in ups.flatten() {
            let upstream = up.file_name().to_string_lossy().into_owned();
            self.walk(&up.path(), &upstream, &mut Vec::new(), &mut out)?;
        }
        out.sort_by(|a, b| (&a.upstream, &a.repo, &a.tag).cmp(&(&b.upstream, &b.repo, &b.tag)));
        Ok(out)
    }

    fn walk(
        &self,
        dir: &std::path::Path,
        upstream: &str,
        repo: &mut Vec<String>,
        out: &mut Vec<TagEntry>,
    ) -> Result<(), Error> {
        for e in fs::read_dir(dir)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !e.path().is_dir() {
                continue;
            }
            if name == "_tags" {
                let Ok(r) = repo.join("/").parse::<RepoName>() else {
                    continue;
                };
                for t in fs::read_dir(e.path())?.flatten() {
                    let Ok(tag) = t.file_name().to_string_lossy().parse::<Tag>() else {
                        continue;
                    };
                    if let Some(record) = self.load(upstream, &r, &tag)? {
                        out.push(TagEntry {
                            upstream: upstream.to_string(),
                            repo: r.clone(),
                            tag,
                            record,
                        });
                    }
                }
            } else {
                repo.push(name);
                self.walk(&e.path(), upstream, repo, out)?;
                repo.pop();
            }
        }
        Ok(())
    }

    /// Forget a tag (absent is fine).
    pub fn remove(&self, upstream: &str, repo: &RepoName, tag: &Tag) -> Result<(), Error> {
        match fs::remove_file(self.path(upstream, repo, tag)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Algorithm;

    #[test]
    fn tag_records_round_trip_and_nested_repos_do_not_clash() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let tags = TagStore::new(dir.path());
        let rec = |b: &[u8]| TagRecord {
            digest: Digest::of(Algorithm::Sha256, b),
            media_type: MediaType::new(crate::oci::MANIFEST_TYPES[0]),
            checked_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        };
        let ab: RepoName = "a/b".parse().unwrap();
        let abc: RepoName = "a/b/c".parse().unwrap();
        let c: Tag = "c".parse().unwrap();
        tags.save("hub", &ab, &c, &rec(b"1")).unwrap();
        tags.save("hub", &abc, &c, &rec(b"2")).unwrap();
        assert_eq!(tags.load("hub", &ab, &c).unwrap(), Some(rec(b"1")));
        assert_eq!(tags.load("hub", &abc, &c).unwrap(), Some(rec(b"2")));
        assert_eq!(tags.load("ghcr", &ab, &c).unwrap(), None, "tags are per upstream");
        let all: Vec<String> = tags
            .all()
            .unwrap()
            .iter()
            .map(|e| format!("{}/{}:{}", e.upstream, e.repo, e.tag))
            .collect();
        assert_eq!(all, vec!["hub/a/b:c", "hub/a/b/c:c"]);
        tags.remove("hub", &ab, &c).unwrap();
        assert_eq!(tags.load("hub", &ab, &c).unwrap(), None);
    }
}
