//! Walking what a manifest refers to: the digests one manifest or index names, and the
//! transitive closure from a set of roots. Pure: the caller supplies how a digest's bytes are
//! loaded (the store, a cache), so eviction, gc and the `cache` commands share one walk.

use std::collections::HashSet;

use super::Digest;

/// Largest manifest berth accepts or reads back (distribution, containers/image: 4 MiB).
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// Digests a manifest or index refers to: `config`, `layers`, `manifests`, `blobs`, `subject`.
/// Anything that is not JSON refers to nothing.
pub fn references(manifest: &[u8]) -> Vec<Digest> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(manifest) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut push = |d: &serde_json::Value| {
        if let Some(d) = d.get("digest").and_then(|x| x.as_str()).and_then(|s| s.parse().ok()) {
            out.push(d);
        }
    };
    for key in ["config", "subject"] {
        if let Some(x) = v.get(key) {
            push(x);
        }
    }
    for key in ["layers", "manifests", "blobs"] {
        for x in v.get(key).and_then(|l| l.as_array()).into_iter().flatten() {
            push(x);
        }
    }
    out
}

/// Every digest reachable from `roots` (the roots included). `load` returns the bytes of a
/// digest when it is a manifest worth reading (`None`: absent, a layer, or too large); each
/// digest is loaded at most once. The first `load` error ends the walk.
pub fn reachable<B, E>(
    roots: impl IntoIterator<Item = Digest>,
    mut load: impl FnMut(&Digest) -> Result<Option<B>, E>,
) -> Result<HashSet<Digest>, E>
where
    B: AsRef<[u8]>,
{
    let mut seen = HashSet::new();
    let mut todo: Vec<Digest> = roots.into_iter().collect();
    while let Some(d) = todo.pop() {
        if seen.contains(&d) {
            continue;
        }
        if let Some(bytes) = load(&d)? {
            todo.extend(references(bytes.as_ref()));
        }
        seen.insert(d);
    }
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Algorithm;

    #[test]
    fn references_cover_manifests_and_indexes() {
        let d1 = Digest::of(Algorithm::Sha256, b"1");
        let d2 = Digest::of(Algorithm::Sha256, b"2");
        let m = format!(
            "{{\"config\":{{\"digest\":\"{d1}\"}},\"layers\":[{{\"digest\":\"{d2}\"}},{{\"digest\":\"bad\"}}]}}"
        );
        assert_eq!(references(m.as_bytes()), vec![d1.clone(), d2.clone()]);
        let i = format!("{{\"manifests\":[{{\"digest\":\"{d1}\"}}]}}");
        assert_eq!(references(i.as_bytes()), vec![d1]);
        assert!(references(b"not json").is_empty());
    }

    #[test]
    fn reachable_walks_an_index_to_its_layers_once_each() {
        let layer = Digest::of(Algorithm::Sha256, b"layer");
        let manifest = format!("{{\"config\":{{\"digest\":\"{layer}\"}},\"layers\":[{{\"digest\":\"{layer}\"}}]}}");
        let m = Digest::of(Algorithm::Sha256, manifest.as_bytes());
        let index = format!("{{\"manifests\":[{{\"digest\":\"{m}\"}},{{\"digest\":\"{m}\"}}]}}");
        let i = Digest::of(Algorithm::Sha256, index.as_bytes());
        let mut loads = Vec::new();
        let got = reachable([i.clone()], |d| {
            loads.push(d.clone());
            Ok::<_, ()>(match d {
                d if *d == i => Some(index.clone()),
                d if *d == m => Some(manifest.clone()),
                _ => None,
            })
        })
        .unwrap();
        assert_eq!(got, HashSet::from([i, m, layer]), "index, manifest and layer");
        assert_eq!(loads.len(), 3, "each digest loaded once: {loads:?}");
        let err = reachable([Digest::of(Algorithm::Sha256, b"x")], |_| {
            Err::<Option<Vec<u8>>, _>("disk")
        });
        assert_eq!(err, Err("disk"), "a load error ends the walk");
    }
}
