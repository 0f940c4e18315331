//! Checking a manifest the upstream sent before berth stores or serves it: its digest (against
//! the requested one and the upstream's own header), and its type and structure. The digest
//! served is always the one computed here. Pure.

use crate::error::{Error, Result};
use crate::oci::{inspect_manifest, Algorithm, Digest};
use crate::upstream::FetchedManifest;

use super::Manifest;

/// Verify `f`, fetched from `upstream` for `reference`; `expected` when asked by digest.
pub fn verify(upstream: &str, reference: &str, f: FetchedManifest, expected: Option<&Digest>) -> Result<Manifest> {
    let bad = |reason: String| Error::BadContent {
        upstream: upstream.to_string(),
        reference: reference.to_string(),
        reason,
    };
    let alg = expected.map_or(Algorithm::Sha256, Digest::algorithm);
    let digest = Digest::of(alg, &f.bytes);
    if let Some(e) = expected {
        if *e != digest {
            return Err(bad(format!("content hashes to {digest}")));
        }
    }
    if let Some(claimed) = f.digest.as_deref().and_then(|d| d.parse::<Digest>().ok()) {
        let ours = if claimed.algorithm() == alg {
            digest.clone()
        } else {
            Digest::of(claimed.algorithm(), &f.bytes)
        };
        if claimed != ours {
            return Err(bad(format!(
                "Docker-Content-Digest {claimed} does not match the content"
            )));
        }
    }
    let media_type = inspect_manifest(&f.bytes, f.content_type.as_deref()).map_err(|e| bad(e.to_string()))?;
    Ok(Manifest {
        digest,
        media_type,
        bytes: f.bytes,
    })
}
