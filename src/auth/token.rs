//! The bearer tokens berth issues at `/token`: `base64url(claims).base64url(HMAC-SHA256)`,
//! short-lived, naming the user and the `(upstream, repository)` pairs it may pull (the
//! Docker token spec's `repository:<name>:pull` scopes, resolved). The key is random per
//! start or read from `token_key_file` (shared by replicas). Pure apart from reading the
//! clock; never logs a token or the key.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::identity::{AuthMethod, Identity};

/// One resolved pull scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Upstream name.
    pub upstream: String,
    /// Repository as sent upstream.
    pub repo: String,
}

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user; `None` for an anonymous token.
    pub sub: Option<String>,
    /// What it may pull.
    pub grants: Vec<Grant>,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Expires at (Unix seconds).
    pub exp: u64,
}

impl Claims {
    /// The identity the token stands for (`None`: anonymous).
    pub fn identity(&self) -> Option<Identity> {
        self.sub.as_ref().map(|u| Identity::new(u.clone(), AuthMethod::Token))
    }

    /// Whether the token grants pulls of `repo` from `upstream`.
    pub fn allows(&self, upstream: &str, repo: &str) -> bool {
        self.grants.iter().any(|g| g.upstream == upstream && g.repo == repo)
    }
}

/// Why a presented token is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not ours, tampered with, or malformed.
    #[error("token is not valid")]
    Invalid,
    /// Past its lifetime.
    #[error("token has expired")]
    Expired,
}

/// Signs and checks tokens.
pub struct TokenSigner {
    key: Vec<u8>,
    ttl: Duration,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("key", &"***")
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl TokenSigner {
    /// A signer with `key` issuing tokens valid for `ttl`.
    pub fn new(key: Vec<u8>, ttl: Duration) -> TokenSigner {
        TokenSigner { key, ttl }
    }

    /// A signer with a fresh random key.
    pub fn random(ttl: Duration) -> Result<TokenSigner, String> {
        let mut key = vec![0u8; 32];
        getrandom::getrandom(&mut key).map_err(|e| format!("no random source: {e}"))?;
        Ok(TokenSigner::new(key, ttl))
    }

    /// How long issued tokens live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length")
    }

    /// Issue a token for `identity` (`None`: anonymous) with `grants`, starting now.
    pub fn issue(&self, identity: Option<&Identity>, grants: Vec<Grant>) -> (String, Claims) {
        let iat = unix_now();
        let claims = Claims {
            sub: identity.map(|i| i.user().to_string()),
            grants,
            iat,
            exp: iat + self.ttl.as_secs().max(1),
        };
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims serialize"));
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        (format!("{body}.{sig}"), claims)
    }

    /// Check the signature (in constant time) and the expiry.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let (body, sig) = token.split_once('.').ok_or(TokenError::Invalid)?;
        let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| TokenError::Invalid)?;
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        mac.verify_slice(&sig).map_err(|_| TokenError::Invalid)?;
        let json = URL_SAFE_NO_PAD.decode(body).map_err(|_| TokenError::Invalid)?;
        let claims: Claims = serde_json::from_slice(&json).map_err(|_| TokenError::Invalid)?;
        if claims.exp <= unix_now() {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(u: &str, r: &str) -> Grant {
        Grant {
            upstream: u.into(),
            repo: r.into(),
        }
    }

    #[test]
    fn tokens_verify_only_when_signed_with_the_same_key_and_unexpired() {
        let signer = TokenSigner::new(b"k".repeat(32), Duration::from_secs(60));
        let alice = Identity::new("alice", AuthMethod::Password);
        let (t, claims) = signer.issue(Some(&alice), vec![grant("hub", "library/a")]);
        let got = signer.verify(&t).unwrap();
        assert_eq!(got, claims);
        assert!(got.allows("hub", "library/a"));
        assert!(!got.allows("hub", "library/b"), "scopes are exact");
        assert!(!got.allows("ghcr", "library/a"), "scopes name the upstream");
        assert_eq!(got.identity().map(|i| i.user().to_string()).as_deref(), Some("alice"));

        let other = TokenSigner::new(b"x".repeat(32), Duration::from_secs(60));
        assert_eq!(other.verify(&t), Err(TokenError::Invalid), "another key");
        let (body, sig) = t.split_once('.').unwrap();
        let forged = URL_SAFE_NO_PAD.encode(br#"{"sub":"root","grants":[],"iat":0,"exp":99999999999}"#);
        assert_eq!(
            signer.verify(&format!("{forged}.{sig}")),
            Err(TokenError::Invalid),
            "tampered claims"
        );
        assert_eq!(signer.verify(body), Err(TokenError::Invalid), "no signature");
        assert_eq!(signer.verify("garbage"), Err(TokenError::Invalid));

        let mut expired = claims.clone();
        expired.exp = 1;
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&expired).unwrap());
        let mut mac = signer.mac();
        mac.update(body.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        assert_eq!(signer.verify(&format!("{body}.{sig}")), Err(TokenError::Expired));
    }

    #[test]
    fn anonymous_tokens_carry_no_subject() {
        let signer = TokenSigner::random(Duration::from_secs(60)).unwrap();
        let (t, _) = signer.issue(None, vec![]);
        assert_eq!(signer.verify(&t).unwrap().identity(), None);
    }
}
