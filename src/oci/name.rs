//! Repository names, tags and references, validated by the distribution-spec grammar before
//! anything uses them to build a path or an upstream URL.

use std::fmt;
use std::str::FromStr;

use super::digest::{Digest, DigestError};

/// Longest repository name accepted (distribution's `RepositoryNameTotalLengthMax`).
const MAX_NAME_LEN: usize = 255;
/// Longest tag accepted (spec: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`).
const MAX_TAG_LEN: usize = 128;

/// Why a name, tag or reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The repository name does not match the spec grammar or is too long.
    #[error("invalid repository name")]
    InvalidName,
    /// The tag does not match the spec grammar.
    #[error("invalid tag")]
    InvalidTag,
    /// A reference containing `:` that is not a valid, supported digest.
    #[error("invalid digest: {0}")]
    InvalidDigest(#[from] DigestError),
}

/// A repository name such as `library/alpine` (path components joined by `/`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

impl RepoName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path components.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The name without its first component, if it has more than one.
    pub fn strip_first(&self) -> Option<RepoName> {
        self.0.split_once('/').map(|(_, rest)| RepoName(rest.to_string()))
    }

    /// Docker Hub official images: a one-component name gets `library/`. The result is
    /// validated again: a 249-byte or longer name would exceed the spec's 255 with it.
    pub fn with_library_prefix(self) -> Result<RepoName, NameError> {
        if self.0.contains('/') {
            Ok(self)
        } else {
            format!("library/{}", self.0).parse()
        }
    }
}

/// Whether the first component of an image reference names a registry host, the way docker
/// reads references: it has a dot or a port, or is `localhost`.
pub fn is_registry_host(component: &str) -> bool {
    component.contains(['.', ':']) || component == "localhost"
}

/// spec: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn is_valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

impl FromStr for RepoName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > MAX_NAME_LEN || !s.split('/').all(is_valid_component) {
            return Err(NameError::InvalidName);
        }
        Ok(RepoName(s.to_string()))
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated tag; safe to use as a file name (it can contain no `/` and cannot start with `.`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    /// The tag as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        let first_ok = b.first().is_some_and(|&x| x.is_ascii_alphanumeric() || x == b'_');
        let rest_ok = b
            .iter()
            .all(|&x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'));
        if !first_ok || !rest_ok || b.len() > MAX_TAG_LEN {
            return Err(NameError::InvalidTag);
        }
        Ok(Tag(s.to_string()))
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The `<reference>` of a manifest request: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    /// A mutable tag.
    Tag(Tag),
    /// An immutable digest.
    Digest(Digest),
}

impl FromStr for Reference {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // A tag can never contain ':', so anything with one must be a valid digest.
        if s.contains(':') {
            Ok(Reference::Digest(s.parse()?))
        } else {
            Ok(Reference::Tag(s.parse()?))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_names_follow_the_spec_grammar() {
        let long_ok = format!("a/{}", "b".repeat(253));
        let too_long = format!("a/{}", "b".repeat(254));
        let cases: &[(&str, bool)] = &[
            ("library/alpine", true),
            ("alpine", true),
            ("a/b/c/d/e/f/g/h/i/j", true),
            ("my-org/my_app.v2", true),
            ("a__b/c---d", true),
            ("0/9", true),
            (&long_ok, true),
            (&too_long, false),
            ("", false),
            ("Library/nginx", false),
            ("a//b", false),
            ("/a", false),
            ("a/", false),
            ("a/../b", false),
            ("..", false),
            (".", false),
            ("a/./b", false),
            ("-a", false),
            ("a-", false),
            ("a___b", false),
            ("a_-b", false),
            ("a%2fb", false),
            ("a\\b", false),
            ("a\0b", false),
            ("a b", false),
        ];
        for (input, ok) in cases {
            assert_eq!(input.parse::<RepoName>().is_ok(), *ok, "name {input:?}");
        }
    }

    #[test]
    fn tags_follow_the_spec_grammar() {
        let cases: &[(&str, bool)] = &[
            ("latest", true),
            ("v1.2.3-rc_1", true),
            ("_x", true),
            ("A", true),
            (&"a".repeat(128), true),
            (&"a".repeat(129), false),
            ("", false),
            (".hidden", false),
            ("-x", false),
            ("a+b", false),
            ("a/b", false),
        ];
        for (input, ok) in cases {
            assert_eq!(input.parse::<Tag>().is_ok(), *ok, "tag {input:?}");
        }
    }

    #[test]
    fn reference_with_colon_is_a_digest_or_invalid() {
        let hex = "a".repeat(64);
        assert!(matches!(
            format!("sha256:{hex}").parse::<Reference>(),
            Ok(Reference::Digest(_))
        ));
        assert!(matches!("latest".parse::<Reference>(), Ok(Reference::Tag(_))));
        assert!(matches!(
            "sha256:zz".parse::<Reference>(),
            Err(NameError::InvalidDigest(_))
        ));
        assert!(matches!("a:b".parse::<Reference>(), Err(NameError::InvalidDigest(_))));
    }

    #[test]
    fn one_component_names_get_library_prefix() {
        let n: RepoName = "alpine".parse().unwrap();
        assert_eq!(n.with_library_prefix().unwrap().as_str(), "library/alpine");
        let n: RepoName = "org/app".parse().unwrap();
        assert_eq!(n.with_library_prefix().unwrap().as_str(), "org/app");
        let longest: RepoName = "a".repeat(255).parse().unwrap();
        assert_eq!(
            longest.with_library_prefix(),
            Err(NameError::InvalidName),
            "a name is checked again after the rewrite"
        );
    }
}
