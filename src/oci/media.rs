//! Manifest media types, `Accept` matching, and the checks a manifest must pass before berth
//! stores it (CVE-2021-41190: a document must not be readable as both a manifest and an index).

use std::fmt;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest v2 schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Every manifest type berth fetches and serves, in the order we ask upstreams for them.
pub const MANIFEST_TYPES: [&str; 4] = [OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

/// A manifest media type as served in `Content-Type` (no parameters).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MediaType(String);

impl MediaType {
    /// Wrap a media type, dropping parameters and surrounding space.
    pub fn new(s: &str) -> MediaType {
        let base = s.split(';').next().unwrap_or("").trim();
        MediaType(base.to_ascii_lowercase())
    }

    /// The type as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for image indexes and manifest lists.
    pub fn is_index(&self) -> bool {
        self.0 == OCI_INDEX || self.0 == DOCKER_LIST
    }

    /// Whether a client that sent these `Accept` header values can take this type. Every
    /// `Accept` line counts (skopeo sends six); no `Accept` at all means anything goes.
    pub fn is_accepted_by<'a>(&self, accept: impl IntoIterator<Item = &'a str>) -> bool {
        let mut saw_any = false;
        for line in accept {
            for item in line.split(',') {
                let t = item.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
                if t.is_empty() {
                    continue;
                }
                saw_any = true;
                if t == self.0 || t == "*/*" || t == "application/*" {
                    return true;
                }
            }
        }
        !saw_any
    }
}

impl fmt::Display for MediaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why an upstream manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Not a JSON object.
    #[error("manifest is not a JSON object")]
    NotJson,
    /// Schema 1 manifests cannot be verified by digest the same way and are not supported.
    #[error("schema 1 manifests are not supported")]
    Schema1,
    /// The document's `mediaType` disagrees with the `Content-Type` it was served with.
    #[error("mediaType {field:?} does not match Content-Type {header:?}")]
    TypeMismatch {
        /// The `mediaType` field.
        field: String,
        /// The `Content-Type` header.
        header: String,
    },
    /// The document has both `manifests` and `config`/`layers`, or does not fit its type.
    #[error("manifest structure does not match its type {0}")]
    Ambiguous(String),
    /// A type berth does not serve as a manifest.
    #[error("unsupported manifest media type {0:?}")]
    UnknownType(String),
}

/// Check a manifest fetched from upstream and decide the media type to store and serve.
/// Pure: parses the JSON once, only its top-level keys.
pub fn inspect_manifest(bytes: &[u8], content_type: Option<&str>) -> Result<MediaType, ManifestError> {
    let doc: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(bytes).map_err(|_| ManifestError::NotJson)?;
    if doc.get("schemaVersion").and_then(|v| v.as_i64()) == Some(1) {
        return Err(ManifestError::Schema1);
    }
    let header = content_type.map(MediaType::new).filter(|m| !m.as_str().is_empty());
    let field = doc.get("mediaType").and_then(|v| v.as_str()).map(MediaType::new);
    let has_manifests = doc.contains_key("manifests");
    let has_image_parts = doc.contains_key("config") || doc.contains_key("layers");
    let structural = match (has_manifests, has_image_parts) {
        (true, false) => Some(OCI_INDEX),
        (false, true) => Some(OCI_MANIFEST),
        _ => None,
    };
    let media = match (&field, &header) {
        (Some(f), Some(h)) if f != h && h.as_str() != "application/json" => {
            return Err(ManifestError::TypeMismatch {
                field: f.0.clone(),
                header: h.0.clone(),
            })
        }
        (Some(f), _) => f.clone(),
        (None, Some(h)) if MANIFEST_TYPES.contains(&h.as_str()) => h.clone(),
        (None, _) => MediaType::new(structural.ok_or_else(|| ManifestError::Ambiguous("unknown".into()))?),
    };
    if !MANIFEST_TYPES.contains(&media.as_str()) {
        return Err(ManifestError::UnknownType(media.0));
    }
    let fits = if media.is_index() {
        has_manifests && !has_image_parts
    } else {
        has_image_parts && !has_manifests
    };
    if !fits {
        return Err(ManifestError::Ambiguous(media.0));
    }
    Ok(media)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_lists_are_merged_across_lines() {
        let m = MediaType::new(OCI_INDEX);
        assert!(m.is_accepted_by([DOCKER_MANIFEST, "application/vnd.oci.image.index.v1+json; q=0.5"]));
        assert!(m.is_accepted_by([format!("{DOCKER_MANIFEST}, {OCI_INDEX}").as_str()]));
        assert!(!m.is_accepted_by([DOCKER_MANIFEST, DOCKER_LIST]), "docker-only client");
        assert!(m.is_accepted_by(["*/*"]));
        assert!(m.is_accepted_by(std::iter::empty()), "no Accept means anything");
    }

    #[test]
    fn manifests_are_checked_before_storing() {
        let idx = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
        let man = br#"{"schemaVersion":2,"config":{},"layers":[]}"#;
        let both = br#"{"schemaVersion":2,"manifests":[],"layers":[]}"#;
        let v1 = br#"{"schemaVersion":1,"fsLayers":[]}"#;
        type Want = Result<&'static str, ()>;
        let cases: &[(&[u8], Option<&str>, Want)] = &[
            (idx, Some(OCI_INDEX), Ok(OCI_INDEX)),
            (idx, None, Ok(OCI_INDEX)),
            (idx, Some("application/json"), Ok(OCI_INDEX)),
            (idx, Some(OCI_MANIFEST), Err(())),
            (man, Some(OCI_MANIFEST), Ok(OCI_MANIFEST)),
            (man, Some(DOCKER_MANIFEST), Ok(DOCKER_MANIFEST)),
            (man, None, Ok(OCI_MANIFEST)),
            (man, Some(OCI_INDEX), Err(())),
            (both, Some(OCI_INDEX), Err(())),
            (both, None, Err(())),
            (
                v1,
                Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
                Err(()),
            ),
            (b"<html>", Some(OCI_MANIFEST), Err(())),
            (b"[]", Some(OCI_MANIFEST), Err(())),
        ];
        for (body, ct, want) in cases {
            let got = inspect_manifest(body, *ct);
            match want {
                Ok(t) => assert_eq!(got.as_ref().map(|m| m.as_str()), Ok(*t), "{ct:?}"),
                Err(()) => assert!(
                    got.is_err(),
                    "must refuse {:?} as {ct:?}",
                    String::from_utf8_lossy(body)
                ),
            }
        }
    }
}
