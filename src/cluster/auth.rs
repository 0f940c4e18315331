//! Peer request signatures: `x-berth-peer: <hex HMAC-SHA256(secret, "GET <path>")>`. A
//! signature covers exactly one path, so one seen on the wire opens nothing else; checked in
//! constant time. The secret never leaves the replica.

use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header peer requests carry their signature in.
pub const PEER_HEADER: &str = "x-berth-peer";

/// The cluster's shared secret.
#[derive(Clone)]
pub struct PeerKey(Vec<u8>);

impl PeerKey {
    /// Read the secret (at least 16 bytes, surrounding whitespace ignored).
    pub fn from_file(path: &Path) -> Result<PeerKey, String> {
        let raw = std::fs::read(path).map_err(|e| format!("cluster.secret_file {}: {e}", path.display()))?;
        let secret = raw.trim_ascii().to_vec();
        if secret.len() < 16 {
            return Err(format!(
                "cluster.secret_file {}: at least 16 bytes (head -c 32 /dev/urandom | base64)",
                path.display()
            ));
        }
        Ok(PeerKey(secret))
    }

    fn mac(&self, path: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(b"GET ");
        mac.update(path.as_bytes());
        mac
    }

    /// The signature for a GET of `path`.
    pub fn sign(&self, path: &str) -> String {
        self.mac(path)
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Whether `signature` is this key's for a GET of `path`.
    pub fn verify(&self, path: &str, signature: &str) -> bool {
        let Some(bytes) = decode_hex(signature) else {
            return false;
        };
        self.mac(path).verify_slice(&bytes).is_ok()
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_opens_only_its_own_path_under_its_own_key() {
        let k = PeerKey(b"0123456789abcdef-secret".to_vec());
        let other = PeerKey(b"0123456789abcdef-other!".to_vec());
        let sig = k.sign("/_berth/peer/hub/library/a/blobs/sha256:00");
        assert!(k.verify("/_berth/peer/hub/library/a/blobs/sha256:00", &sig));
        assert!(!k.verify("/_berth/peer/hub/library/b/blobs/sha256:00", &sig));
        assert!(!other.verify("/_berth/peer/hub/library/a/blobs/sha256:00", &sig));
        assert!(!k.verify("/_berth/peer/hub/library/a/blobs/sha256:00", "zz"));
        assert!(!k.verify("/_berth/peer/hub/library/a/blobs/sha256:00", ""));
    }
}
