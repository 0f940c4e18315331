//! The closed set of configured upstreams and the routing rule that picks one for a request:
//! `?ns=` alias, else a path-prefix alias, else the default upstream. A request can only choose
//! among these; nothing in it can add a host. A name bound for Docker Hub whose first component
//! is a registry host (`example.org/foo`) names a registry that is not configured: Docker Hub
//! has no such names, so it is refused without asking.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::Upstream;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::oci::{is_registry_host, RepoName};

/// Why a request names no usable upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// `?ns=` is not an alias of any configured upstream.
    #[error("unknown namespace {0:?}")]
    UnknownNamespace(String),
    /// The name starts with a registry host that no upstream has as an alias.
    #[error("no upstream is configured for registry {host:?}; configured upstreams: {known}")]
    UnknownRegistry {
        /// The first component of the name.
        host: String,
        /// The configured upstreams with their aliases, for the message.
        known: String,
    },
    /// The name the upstream would be asked for is not valid (too long with `library/`).
    #[error("the upstream name is not valid")]
    NameInvalid,
}

/// Every configured upstream, indexed by alias.
pub struct UpstreamSet {
    all: Vec<Arc<Upstream>>,
    by_alias: HashMap<String, usize>,
    default: usize,
    /// `hub (docker.io, index.docker.io), ghcr (ghcr.io)`: named in routing errors.
    known: String,
}

impl UpstreamSet {
    /// Build every upstream from a validated config.
    pub fn from_config(config: &Config, metrics: Arc<Metrics>) -> Result<UpstreamSet, String> {
        let trusted: Arc<HashSet<String>> = Arc::new(
            config
                .upstreams
                .values()
                .filter_map(|u| u.url.host())
                .map(|h| h.trim_matches(['[', ']']).to_ascii_lowercase())
                .collect(),
        );
        let mut all = Vec::new();
        let mut by_alias = HashMap::new();
        let mut default = None;
        for (name, cfg) in &config.upstreams {
            let up = Upstream::new(
                name,
                cfg,
                cfg.manifest_ttl(&config.cache),
                trusted.clone(),
                metrics.clone(),
            )
            .map_err(|e| format!("upstreams.{name}: {e}"))?;
            let idx = all.len();
            for alias in &cfg.aliases {
                by_alias.insert(alias.to_ascii_lowercase(), idx);
            }
            if cfg.default {
                default = Some(idx);
            }
            all.push(Arc::new(up));
        }
        let default = default.ok_or("no default upstream")?;
        let known = config
            .upstreams
            .iter()
            .map(|(name, u)| format!("{name} ({})", u.aliases.join(", ")))
            .collect::<Vec<_>>()
            .join(", ");
        Ok(UpstreamSet {
            all,
            by_alias,
            default,
            known,
        })
    }

    /// Every upstream.
    pub fn all(&self) -> &[Arc<Upstream>] {
        &self.all
    }

    /// The upstream configured as `[upstreams.<name>]`.
    pub fn by_name(&self, name: &str) -> Option<Arc<Upstream>> {
        self.all.iter().find(|u| u.name() == name).cloned()
    }

    /// Pick the upstream for a request and the repository name to ask it for.
    pub fn resolve(&self, ns: Option<&str>, name: RepoName) -> Result<(Arc<Upstream>, RepoName), RouteError> {
        let first = name.components().next().unwrap_or("").to_string();
        let prefixed = self
            .by_alias
            .get(first.as_str())
            .copied()
            .filter(|_| name.strip_first().is_some());
        let (idx, name) = match ns {
            Some(ns) => {
                let idx = *self
                    .by_alias
                    .get(ns)
                    .ok_or_else(|| RouteError::UnknownNamespace(ns.to_string()))?;
                // containerd `override_path`: the path repeats the same registry; strip it.
                match prefixed {
                    Some(p) if p == idx => (idx, name.strip_first().expect("checked above")),
                    _ => (idx, name),
                }
            }
            None => match prefixed {
                Some(p) => (p, name.strip_first().expect("checked above")),
                None => (self.default, name),
            },
        };
        let up = self.all[idx].clone();
        if !up.is_docker_hub() {
            return Ok((up, name));
        }
        if let (Some(first), Some(_)) = (name.components().next(), name.strip_first()) {
            if is_registry_host(first) {
                return Err(RouteError::UnknownRegistry {
                    host: first.to_string(),
                    known: self.known.clone(),
                });
            }
        }
        let name = name.with_library_prefix().map_err(|_| RouteError::NameInvalid)?;
        Ok((up, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> UpstreamSet {
        let cfg = Config::from_toml_str(
            r#"
            [storage]
            path = "/tmp/x"
            [upstreams.hub]
            url = "https://registry-1.docker.io"
            aliases = ["docker.io", "index.docker.io"]
            default = true
            [upstreams.ghcr]
            url = "https://ghcr.io"
            aliases = ["ghcr.io"]
            [upstreams.corp]
            url = "https://harbor.corp"
            aliases = ["harbor.corp"]
            "#,
        )
        .unwrap();
        UpstreamSet::from_config(&cfg, Arc::new(Metrics::new())).unwrap()
    }

    fn unknown(host: &str) -> RouteError {
        RouteError::UnknownRegistry {
            host: host.into(),
            known: "corp (harbor.corp), ghcr (ghcr.io), hub (docker.io, index.docker.io)".into(),
        }
    }

    #[test]
    fn requests_route_by_ns_then_prefix_then_default() {
        let s = set();
        type Case<'a> = (Option<&'a str>, &'a str, Result<(&'a str, &'a str), RouteError>);
        let cases: &[Case] = &[
            (None, "library/alpine", Ok(("hub", "library/alpine"))),
            (None, "alpine", Ok(("hub", "library/alpine"))),
            (None, "ghcr.io/org/app", Ok(("ghcr", "org/app"))),
            (None, "docker.io/alpine", Ok(("hub", "library/alpine"))),
            (None, "docker.io/library/alpine", Ok(("hub", "library/alpine"))),
            (None, "ghcr.io", Ok(("hub", "library/ghcr.io"))),
            (None, "my.org", Ok(("hub", "library/my.org"))),
            (None, "example.org/foo", Err(unknown("example.org"))),
            (None, "docker.io/example.org/foo", Err(unknown("example.org"))),
            (Some("docker.io"), "quay.io/org/app", Err(unknown("quay.io"))),
            (Some("harbor.corp"), "my.project/app", Ok(("corp", "my.project/app"))),
            (Some("ghcr.io"), "org/app", Ok(("ghcr", "org/app"))),
            (Some("ghcr.io"), "ghcr.io/org/app", Ok(("ghcr", "org/app"))),
            (Some("docker.io"), "library/nginx", Ok(("hub", "library/nginx"))),
            (Some("docker.io"), "nginx", Ok(("hub", "library/nginx"))),
            (
                Some("harbor.corp"),
                "docker.io/library/x",
                Ok(("corp", "docker.io/library/x")),
            ),
            (
                Some("evil.example"),
                "org/app",
                Err(RouteError::UnknownNamespace("evil.example".into())),
            ),
            (
                Some("169.254.169.254"),
                "org/app",
                Err(RouteError::UnknownNamespace("169.254.169.254".into())),
            ),
        ];
        for (ns, name, want) in cases {
            let got = s
                .resolve(*ns, name.parse().unwrap())
                .map(|(u, n)| (u.name().to_string(), n.to_string()));
            let want = want.clone().map(|(u, n)| (u.to_string(), n.to_string()));
            assert_eq!(got, want, "ns={ns:?} name={name}");
        }
    }
}
