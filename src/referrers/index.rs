//! The referrers answer as data: descriptors read from an upstream page or a fallback-tag
//! index, merged, rendered as the OCI image index berth serves, and filtered by
//! `artifactType`; the fallback tag name and the upstream's `Link` to its next page. Pure: no
//! I/O, no HTTP types.

use std::collections::HashSet;

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::oci::{Digest, Tag, OCI_INDEX};

/// The referrers of one subject: the descriptors and the index berth serves for them.
#[derive(Debug, Clone, PartialEq)]
pub struct Listing {
    descriptors: Vec<Map<String, Value>>,
    /// The unfiltered index, rendered once.
    bytes: Bytes,
}

impl Listing {
    /// The index over `descriptors`, in order, the first of each digest kept.
    pub fn new(descriptors: Vec<Map<String, Value>>) -> Listing {
        let mut seen = HashSet::new();
        let descriptors: Vec<_> = descriptors
            .into_iter()
            .filter(|d| seen.insert(d.get("digest").and_then(Value::as_str).unwrap_or("").to_string()))
            .collect();
        let bytes = render(descriptors.iter());
        Listing { descriptors, bytes }
    }

    /// No referrers: an index with an empty `manifests` list.
    pub fn empty() -> Listing {
        Listing::new(Vec::new())
    }

    /// The index as served without a filter.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// How many referrers.
    pub fn len(&self) -> usize {
        self.descriptors.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.descriptors.is_empty()
    }

    /// The index of the referrers whose `artifactType` is one of `types`.
    pub fn filtered(&self, types: &[&str]) -> Bytes {
        render(self.descriptors.iter().filter(|d| {
            d.get("artifactType")
                .and_then(Value::as_str)
                .is_some_and(|t| types.contains(&t))
        }))
    }
}

fn render<'a>(descriptors: impl Iterator<Item = &'a Map<String, Value>>) -> Bytes {
    let doc = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": descriptors.collect::<Vec<_>>(),
    });
    Bytes::from(serde_json::to_vec(&doc).expect("a JSON value always serializes"))
}

/// Why a body is not a referrers index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAnIndex {
    /// Not a JSON object.
    #[error("not a JSON object")]
    NotJson,
    /// A `mediaType` (field or `Content-Type`) other than the OCI image index.
    #[error("media type {0:?} is not an OCI image index")]
    MediaType(String),
    /// No `manifests` array.
    #[error("no manifests list")]
    NoManifests,
}

/// The descriptors of an image index (a referrers page or a fallback-tag index). Entries that
/// are not descriptors (no valid `digest`, no `mediaType`, no `size`) are dropped.
pub fn parse_descriptors(bytes: &[u8], content_type: Option<&str>) -> Result<Vec<Map<String, Value>>, NotAnIndex> {
    let mut doc: Map<String, Value> = serde_json::from_slice(bytes).map_err(|_| NotAnIndex::NotJson)?;
    let base = |t: &str| t.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    // Some registries send `application/json`; the document's own `mediaType` then decides.
    if let Some(ct) = content_type
        .map(base)
        .filter(|t| t != "application/json" && !t.is_empty())
    {
        if ct != OCI_INDEX {
            return Err(NotAnIndex::MediaType(ct));
        }
    }
    if let Some(mt) = doc.get("mediaType").and_then(Value::as_str).map(base) {
        if mt != OCI_INDEX {
            return Err(NotAnIndex::MediaType(mt));
        }
    }
    let Some(Value::Array(list)) = doc.remove("manifests") else {
        return Err(NotAnIndex::NoManifests);
    };
    Ok(list
        .into_iter()
        .filter_map(|v| match v {
            Value::Object(d) if is_descriptor(&d) => Some(d),
            _ => None,
        })
        .collect())
}

fn is_descriptor(d: &Map<String, Value>) -> bool {
    d.get("digest")
        .and_then(Value::as_str)
        .is_some_and(|s| s.parse::<Digest>().is_ok())
        && d.get("mediaType").is_some_and(Value::is_string)
        && d.get("size").is_some_and(Value::is_u64)
}

/// The referrers tag schema: `<alg>-<first 64 of the encoded digest>`.
pub fn fallback_tag(subject: &Digest) -> Tag {
    let hex = subject.hex();
    format!("{}-{}", subject.algorithm().as_str(), &hex[..hex.len().min(64)])
        .parse()
        .expect("an algorithm name and hex digits make a valid tag")
}

/// The query of the next page named by an upstream `Link` header (RFC 8288, `rel="next"`), if
/// its path is this subject's referrers path. Only the query is taken: the next request goes
/// to the configured upstream, never to a host a response names.
pub fn next_page_query(link: &str, referrers_path: &str) -> Option<String> {
    link.split(',').find_map(|entry| {
        let (target, params) = entry.trim().strip_prefix('<')?.split_once('>')?;
        let is_next = params.split(';').any(|p| {
            let p = p.trim().replace(' ', "");
            p == "rel=\"next\"" || p == "rel=next"
        });
        if !is_next {
            return None;
        }
        let path_and_query = match target.split_once("://") {
            Some((_, rest)) => &rest[rest.find('/')?..],
            None => target,
        };
        let (path, query) = path_and_query.split_once('?')?;
        (path.ends_with(referrers_path) && !query.is_empty()).then(|| query.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn desc(digest: &str, artifact_type: Option<&str>) -> Value {
        let mut d = serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": 10,
            "annotations": {"a": "b"},
        });
        if let Some(t) = artifact_type {
            d["artifactType"] = t.into();
        }
        d
    }

    #[test]
    fn fallback_tag_follows_the_referrers_tag_schema() {
        let d: Digest = D.parse().unwrap();
        assert_eq!(fallback_tag(&d).as_str(), D.replace(':', "-"));
        let long: Digest = format!("sha512:{}", "ab".repeat(64)).parse().unwrap();
        assert_eq!(
            fallback_tag(&long).as_str(),
            format!("sha512-{}", "ab".repeat(32)),
            "encoded part truncated to 64"
        );
    }

    #[test]
    fn only_image_indexes_are_referrers_answers() {
        let list = |ds: Vec<Value>| {
            serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": ds}))
                .unwrap()
        };
        let good = list(vec![
            desc(D, Some("x/sbom")),
            serde_json::json!({"digest": "nope"}),
            serde_json::json!(3),
        ]);
        let parsed = parse_descriptors(&good, Some(OCI_INDEX)).unwrap();
        assert_eq!(parsed.len(), 1, "non-descriptors are dropped");
        assert_eq!(parse_descriptors(&good, Some("application/json")).unwrap().len(), 1);
        assert_eq!(parse_descriptors(&good, None).unwrap().len(), 1);
        let cases: Vec<(Vec<u8>, Option<&str>, NotAnIndex)> = vec![
            (b"<html>".to_vec(), Some("text/html"), NotAnIndex::NotJson),
            (
                good.clone(),
                Some("text/html"),
                NotAnIndex::MediaType("text/html".into()),
            ),
            (
                br#"{"errors":[]}"#.to_vec(),
                Some("application/json"),
                NotAnIndex::NoManifests,
            ),
            (
                br#"{"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#.to_vec(),
                None,
                NotAnIndex::MediaType("application/vnd.oci.image.manifest.v1+json".into()),
            ),
        ];
        for (body, ct, want) in cases {
            assert_eq!(parse_descriptors(&body, ct), Err(want), "{ct:?}");
        }
    }

    #[test]
    fn listing_dedups_renders_and_filters() {
        let other = format!("sha256:{}", "1".repeat(64));
        let ds: Vec<_> = [
            desc(D, Some("x/sbom")),
            desc(&other, Some("x/sig")),
            desc(D, Some("x/sbom")),
        ]
        .into_iter()
        .map(|v| v.as_object().unwrap().clone())
        .collect();
        let l = Listing::new(ds);
        assert_eq!(l.len(), 2, "one entry per digest");
        let all: Value = serde_json::from_slice(l.bytes()).unwrap();
        assert_eq!(all["mediaType"], OCI_INDEX);
        assert_eq!(all["schemaVersion"], 2);
        assert_eq!(all["manifests"][1]["annotations"]["a"], "b", "annotations kept");
        let sig: Value = serde_json::from_slice(&l.filtered(&["x/sig"])).unwrap();
        assert_eq!(sig["manifests"].as_array().unwrap().len(), 1);
        assert_eq!(sig["manifests"][0]["digest"], other.as_str());
        let none: Value = serde_json::from_slice(&l.filtered(&["x/other"])).unwrap();
        assert_eq!(none["manifests"], serde_json::json!([]));
        let empty: Value = serde_json::from_slice(Listing::empty().bytes()).unwrap();
        assert_eq!(
            empty["manifests"],
            serde_json::json!([]),
            "no referrers: empty list, not absent"
        );
    }

    #[test]
    fn next_page_is_taken_only_from_this_subjects_path() {
        let p = format!("/v2/org/app/referrers/{D}");
        let cases = [
            (format!("<{p}?n=2&last=x>; rel=\"next\""), Some("n=2&last=x")),
            (format!("<https://reg.example{p}?last=x>; rel=next"), Some("last=x")),
            (
                format!("<{p}?last=p>; rel=\"prev\", <{p}?last=n>; rel=\"next\""),
                Some("last=n"),
            ),
            (
                format!("<https://evil.example/v2/other/referrers/{D}?last=x>; rel=\"next\""),
                None,
            ),
            (format!("<{p}>; rel=\"next\""), None),
            ("garbage".to_string(), None),
        ];
        for (link, want) in cases {
            assert_eq!(next_page_query(&link, &p).as_deref(), want, "{link}");
        }
    }
}
