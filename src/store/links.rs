//! Repository links on disk: the record that repository R of an upstream is known to hold a
//! digest (it was fetched through R, a manifest cached for R names it, or the upstream
//! confirmed it), one empty file per `(upstream, repository, digest)`. Content stays shared by
//! digest in `blobs/`; a link carries only the permission. The file's existence is the whole
//! record, so creating it needs no atomic replace; a link lost in a crash costs one upstream
//! HEAD later, never a wrong answer. No policy here: who needs a link is `crate::access`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::Error;
use crate::oci::{Digest, RepoName};

/// `(upstream, repository, digest)`: repository R of this upstream holds this digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LinkKey {
    /// Upstream name.
    pub upstream: String,
    /// Repository as sent upstream.
    pub repo: RepoName,
    /// The manifest or blob digest.
    pub digest: Digest,
}

/// Handle to `<root>/links`. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LinkStore {
    root: PathBuf,
}

impl LinkStore {
    /// The links under the store root.
    pub fn new(store_root: &Path) -> LinkStore {
        LinkStore {
            root: store_root.join("links"),
        }
    }

    fn path(&self, key: &LinkKey) -> PathBuf {
        // `_links` cannot clash with a repository component: those start with [a-z0-9].
        let mut p = self.root.join(&key.upstream);
        p.extend(key.repo.components());
        p.join("_links")
            .join(key.digest.algorithm().as_str())
            .join(key.digest.hex())
    }

    /// Whether the link exists.
    pub fn exists(&self, key: &LinkKey) -> Result<bool, Error> {
        match fs::metadata(self.path(key)) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Create the link (present already is fine).
    pub fn save(&self, key: &LinkKey) -> Result<(), Error> {
        let path = self.path(key);
        fs::create_dir_all(path.parent().expect("link paths always have a parent"))?;
        fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Algorithm;

    #[test]
    fn links_are_per_upstream_and_repository() {
        let dir = tempfile::tempdir().unwrap();
        let links = LinkStore::new(dir.path());
        let key = |up: &str, repo: &str| LinkKey {
            upstream: up.to_string(),
            repo: repo.parse().unwrap(),
            digest: Digest::of(Algorithm::Sha256, b"layer"),
        };
        assert!(!links.exists(&key("hub", "a/b")).unwrap());
        links.save(&key("hub", "a/b")).unwrap();
        links.save(&key("hub", "a/b")).unwrap();
        assert!(links.exists(&key("hub", "a/b")).unwrap());
        assert!(
            !links.exists(&key("hub", "a")).unwrap(),
            "a parent repository is another one"
        );
        assert!(!links.exists(&key("hub", "a/b/c")).unwrap());
        assert!(!links.exists(&key("ghcr", "a/b")).unwrap(), "links are per upstream");
        assert!(
            LinkStore::new(dir.path()).exists(&key("hub", "a/b")).unwrap(),
            "on disk"
        );
    }
}
