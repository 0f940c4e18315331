//! Access rules: which identities may pull which repositories from which upstreams. The one
//! place that decides; pure (no I/O, no HTTP). Without written rules the default applies:
//! anonymous clients may pull only from upstreams that have no credentials, every
//! authenticated user from every upstream.

use std::collections::HashSet;

use super::Identity;
use crate::config::{AccessRule, Config};

/// The user name that stands for unauthenticated clients in access rules.
pub const ANONYMOUS: &str = "anonymous";

/// The compiled rule set.
#[derive(Debug, Clone)]
pub struct Rules {
    rules: Vec<AccessRule>,
    /// Upstreams berth pulls from with credentials.
    private: HashSet<String>,
}

impl Rules {
    /// The rules of `[auth]` (none when `[auth]` is unset) over the configured upstreams.
    pub fn from_config(config: &Config) -> Rules {
        Rules {
            rules: config.auth.as_ref().map(|a| a.rules.clone()).unwrap_or_default(),
            private: config
                .upstreams
                .iter()
                .filter(|(_, u)| u.has_credentials())
                .map(|(n, _)| n.clone())
                .collect(),
        }
    }

    /// Whether `who` (`None`: anonymous) may pull `repo` (as sent upstream) from `upstream`.
    pub fn allows(&self, who: Option<&Identity>, upstream: &str, repo: &str) -> bool {
        if self.rules.is_empty() {
            return who.is_some() || !self.private.contains(upstream);
        }
        let name = who.map_or(ANONYMOUS, Identity::user);
        self.rules.iter().any(|r| {
            let user_ok = r.users.iter().any(|u| u == name || (u == "*" && who.is_some()));
            user_ok
                && r.upstreams.iter().any(|u| u == "*" || u == upstream)
                && r.repositories.iter().any(|g| glob_match(g, repo))
        })
    }
}

/// `*` matches any run of characters (slashes included); everything else matches itself.
fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::identity::AuthMethod;

    fn user(name: &str) -> Identity {
        Identity::new(name, AuthMethod::Password)
    }

    fn config(rules: &str) -> Config {
        let text = format!(
            "[storage]\npath = \"/tmp/x\"\n[upstreams.hub]\nurl = \"https://r.example.com\"\ndefault = true\n[upstreams.private]\nurl = \"https://p.example.com\"\nusername = \"u\"\npassword_env = \"X\"\n[auth]\n{rules}"
        );
        Config::from_toml_str(&text).unwrap()
    }

    #[test]
    fn globs_match_any_text_for_a_star() {
        let cases = [
            ("library/*", "library/alpine", true),
            ("library/*", "library/a/b", true),
            ("library/*", "libraryx/a", false),
            ("*", "anything/at/all", true),
            ("team/app", "team/app", true),
            ("team/app", "team/app2", false),
            ("*/base-*", "org/base-image", true),
            ("*/base-*", "org/image", false),
            ("", "", true),
        ];
        for (p, t, want) in cases {
            assert_eq!(glob_match(p, t), want, "{p} ~ {t}");
        }
    }

    #[test]
    fn default_rules_keep_anonymous_clients_off_private_upstreams() {
        let r = Rules::from_config(&config(""));
        let alice = user("alice");
        let cases = [
            (None, "hub", true),
            (None, "private", false),
            (Some(&alice), "hub", true),
            (Some(&alice), "private", true),
        ];
        for (who, up, want) in cases {
            assert_eq!(r.allows(who, up, "team/app"), want, "{who:?} on {up}");
        }
    }

    #[test]
    fn written_rules_allow_only_what_some_rule_matches() {
        let r = Rules::from_config(&config(
            "[[auth.rules]]\nusers = [\"anonymous\", \"*\"]\nupstreams = [\"hub\"]\n[[auth.rules]]\nusers = [\"alice\"]\nupstreams = [\"private\"]\nrepositories = [\"team/*\"]\n",
        ));
        let (alice, bob) = (user("alice"), user("bob"));
        let cases = [
            (None, "hub", "library/x", true),
            (None, "private", "team/app", false),
            (Some(&bob), "hub", "library/x", true),
            (Some(&bob), "private", "team/app", false),
            (Some(&alice), "private", "team/app", true),
            (Some(&alice), "private", "other/app", false),
        ];
        for (who, up, repo, want) in cases {
            assert_eq!(r.allows(who, up, repo), want, "{who:?} on {up}/{repo}");
        }
    }
}
