//! Operator commands beside `serve`: inspect and prune the store (`cache`, `gc`), pre-fetch
//! images through a running berth (`warm`), and `healthcheck`. Store commands work on the
//! store directory directly and are safe while a server runs: they never touch `tmp/`, write
//! only with atomic renames, and a server treats a file that vanished as a miss.

pub mod cache;
pub mod gc;
mod trust;
pub mod warm;

use std::fmt;

use crate::config::Config;
use crate::oci::{is_registry_host, Reference, RepoName};

/// A command failed; the message is for the operator.
#[derive(Debug)]
pub struct CliError {
    /// Process exit code.
    pub code: u8,
    /// What went wrong.
    pub message: String,
}

impl CliError {
    /// A failure with exit code 1.
    pub fn new(message: impl Into<String>) -> CliError {
        CliError {
            code: 1,
            message: message.into(),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<crate::store::Error> for CliError {
    fn from(e: crate::store::Error) -> Self {
        CliError::new(e.to_string())
    }
}

/// An image reference as users type it: `[registry/]repo[:tag|@digest]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Registry host (`docker.io` when none is given).
    pub registry: String,
    /// Repository as the registry knows it (`library/` added for Docker Hub).
    pub repo: RepoName,
    /// Tag (default `latest`) or digest.
    pub reference: Reference,
}

impl ImageRef {
    /// Parse like docker does: the first component is a registry if it has a dot, a colon,
    /// or is `localhost`.
    pub fn parse(s: &str) -> Result<ImageRef, CliError> {
        let bad = |why: &str| CliError::new(format!("{s:?}: {why}"));
        let (rest, reference) = match s.split_once('@') {
            Some((r, d)) => (r, Reference::Digest(d.parse().map_err(|e| bad(&format!("{e}")))?)),
            None => match s.rsplit_once(':').filter(|(_, t)| !t.contains('/')) {
                Some((r, t)) => (r, Reference::Tag(t.parse().map_err(|_| bad("invalid tag"))?)),
                None => (s, Reference::Tag("latest".parse().expect("a valid tag"))),
            },
        };
        let (registry, path) = match rest.split_once('/') {
            Some((first, path)) if is_registry_host(first) => (first.to_string(), path),
            _ => ("docker.io".to_string(), rest),
        };
        let mut repo: RepoName = path.parse().map_err(|_| bad("invalid repository name"))?;
        if matches!(registry.as_str(), "docker.io" | "index.docker.io") {
            repo = repo.with_library_prefix().map_err(|_| bad("invalid repository name"))?;
        }
        Ok(ImageRef {
            registry,
            repo,
            reference,
        })
    }

    /// The upstream (config table name) whose aliases include this registry.
    pub fn upstream<'c>(&self, config: &'c Config) -> Result<&'c str, CliError> {
        config
            .upstreams
            .iter()
            .find(|(_, u)| u.aliases.iter().any(|a| a.eq_ignore_ascii_case(&self.registry)))
            .map(|(n, _)| n.as_str())
            .ok_or_else(|| CliError::new(format!("no upstream has the alias {:?}", self.registry)))
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reference {
            Reference::Tag(t) => write!(f, "{}/{}:{t}", self.registry, self.repo),
            Reference::Digest(d) => write!(f, "{}/{}@{d}", self.registry, self.repo),
        }
    }
}

/// `12.3 MiB`
pub fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < units.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

/// `just now`, `42 s ago`, `3 min ago`, `5 h ago`, `2 days ago`.
pub fn time_ago(secs: u64) -> String {
    match secs {
        0..=4 => "just now".into(),
        5..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86_399 => format!("{} h ago", secs / 3600),
        86_400..=172_799 => "1 day ago".into(),
        _ => format!("{} days ago", secs / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_parse_like_docker() {
        let d = format!("sha256:{}", "a".repeat(64));
        let cases: Vec<(String, &str)> = vec![
            ("alpine".into(), "docker.io/library/alpine:latest"),
            ("alpine:3.20".into(), "docker.io/library/alpine:3.20"),
            ("docker.io/alpine".into(), "docker.io/library/alpine:latest"),
            ("bitnami/redis:7".into(), "docker.io/bitnami/redis:7"),
            ("ghcr.io/org/app:v1".into(), "ghcr.io/org/app:v1"),
            ("localhost:5000/x/y".into(), "localhost:5000/x/y:latest"),
            (format!("quay.io/a/b@{d}"), "quay.io/a/b@"),
        ];
        for (input, want) in cases {
            let got = ImageRef::parse(&input).unwrap().to_string();
            assert!(got.starts_with(want), "{input}: {got}");
        }
        for bad in ["UPPER/x", "x:bad tag", "x@sha256:zz", ""] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sizes_print_in_iec_units() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
    }

    #[test]
    fn times_print_relative_to_now() {
        let cases = [
            (0, "just now"),
            (42, "42 s ago"),
            (180, "3 min ago"),
            (5 * 3600 + 59, "5 h ago"),
            (86_400, "1 day ago"),
            (3 * 86_400, "3 days ago"),
        ];
        for (secs, want) in cases {
            assert_eq!(time_ago(secs), want, "{secs}");
        }
    }
}
