//! Content digests (`algorithm:hex`) as defined by the OCI image-spec descriptor grammar, limited
//! to the algorithms berth can verify (sha256, sha512), plus the incremental hasher for them.

use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;

/// A digest algorithm berth can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// `sha256`, 64 lowercase hex characters.
    Sha256,
    /// `sha512`, 128 lowercase hex characters.
    Sha512,
}

impl Algorithm {
    /// The name used in digests and store paths.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A validated content digest: a supported algorithm and its lowercase hex encoding.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

/// Why a string is not a digest berth accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// Not of the form `algorithm:encoded` per the image-spec grammar.
    #[error("not a digest")]
    Malformed,
    /// Grammar-valid, but an algorithm berth cannot verify (spec: 400 for unsupported).
    #[error("unsupported digest algorithm {0:?}")]
    Unsupported(String),
    /// The encoded part has the wrong length or characters for its algorithm.
    #[error("digest encoding is not valid for its algorithm")]
    BadEncoding,
}

impl Digest {
    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The lowercase hex encoding; safe to use as a file name (validated charset and length).
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// A fresh hasher for this digest's algorithm.
    pub fn hasher(&self) -> Hasher {
        Hasher::new(self.algorithm)
    }

    /// The digest of `bytes` with `algorithm`.
    pub fn of(algorithm: Algorithm, bytes: &[u8]) -> Digest {
        let mut h = Hasher::new(algorithm);
        h.update(bytes);
        h.finish()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (alg, enc) = s.split_once(':').ok_or(DigestError::Malformed)?;
        // image-spec: algorithm-component [a-z0-9]+ joined by [+._-]; encoded [a-zA-Z0-9=_-]+
        let alg_ok = !alg.is_empty()
            && alg
                .split(['+', '.', '_', '-'])
                .all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        let enc_ok = !enc.is_empty()
            && enc
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b'_' | b'-'));
        if !alg_ok || !enc_ok {
            return Err(DigestError::Malformed);
        }
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            other => return Err(DigestError::Unsupported(other.to_string())),
        };
        // image-spec: "[A-F] MUST NOT be used".
        let hex_ok =
            enc.len() == algorithm.hex_len() && enc.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex_ok {
            return Err(DigestError::BadEncoding);
        }
        Ok(Digest {
            algorithm,
            hex: enc.to_string(),
        })
    }
}

/// Incremental hashing for either supported algorithm.
#[derive(Clone)]
pub enum Hasher {
    /// sha256 state.
    Sha256(sha2::Sha256),
    /// sha512 state.
    Sha512(sha2::Sha512),
}

impl Hasher {
    /// A fresh hasher.
    pub fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    /// Feed bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> Digest {
        let (algorithm, raw) = match self {
            Hasher::Sha256(h) => (Algorithm::Sha256, h.finalize().to_vec()),
            Hasher::Sha512(h) => (Algorithm::Sha512, h.finalize().to_vec()),
        };
        let hex = raw.iter().map(|b| format!("{b:02x}")).collect();
        Digest { algorithm, hex }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H64: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn digest_parsing_follows_the_image_spec_grammar() {
        let h128 = "a".repeat(128);
        let cases: Vec<(String, Result<(), DigestError>)> = vec![
            (format!("sha256:{H64}"), Ok(())),
            (format!("sha512:{h128}"), Ok(())),
            (format!("sha256:{}", &H64[1..]), Err(DigestError::BadEncoding)),
            (format!("sha256:{H64}0"), Err(DigestError::BadEncoding)),
            (format!("sha256:{}", H64.to_uppercase()), Err(DigestError::BadEncoding)),
            (format!("SHA256:{H64}"), Err(DigestError::Malformed)),
            ("sha256:".into(), Err(DigestError::Malformed)),
            ("sha256:../../etc".into(), Err(DigestError::Malformed)),
            ("sha256".into(), Err(DigestError::Malformed)),
            (format!(":{H64}"), Err(DigestError::Malformed)),
            (
                "md5:d41d8cd98f00b204e9800998ecf8427e".into(),
                Err(DigestError::Unsupported("md5".into())),
            ),
            (
                format!("sha384:{}", "a".repeat(96)),
                Err(DigestError::Unsupported("sha384".into())),
            ),
            (format!("blake3:{H64}"), Err(DigestError::Unsupported("blake3".into()))),
            (format!("sha256:{}/x", &H64[..60]), Err(DigestError::Malformed)),
            ("baddigeststring".into(), Err(DigestError::Malformed)),
        ];
        for (input, want) in cases {
            let got = input.parse::<Digest>().map(|_| ());
            assert_eq!(got, want, "parsing {input:?}");
        }
    }

    #[test]
    fn digest_of_empty_input_is_the_well_known_value() {
        let d = Digest::of(Algorithm::Sha256, b"");
        assert_eq!(d.to_string(), format!("sha256:{H64}"));
        assert_eq!(d, format!("sha256:{H64}").parse().unwrap());
    }
}
