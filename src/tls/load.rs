//! `[server.tls]` files -> a `rustls::ServerConfig`: the PEM certificate chain and key (which
//! must match), the optional client CA bundle, TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`.
//! Reading the files is the only I/O; nothing here watches them or touches sockets.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use sha2::{Digest as _, Sha256};

use crate::config::{ClientAuth, TlsConfig};

/// Why the TLS files cannot be used. Messages name the file and never include key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {key} {path}: {source}")]
    Read {
        /// The config key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file holds no usable PEM item of the expected kind.
    #[error("{key} {path}: {detail}")]
    Pem {
        /// The config key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// rustls refused the certificate and key (e.g. the key does not belong to the
    /// certificate) or the client CA bundle.
    #[error("{0}")]
    Rustls(String),
}

/// The raw contents of the configured files, and a fingerprint to notice when any changes.
pub struct TlsFiles {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
    /// SHA-256 over all three, so the key bytes need not be kept around to compare.
    pub fingerprint: [u8; 32],
}

impl TlsFiles {
    /// Read every configured file (following symlinks, so a Kubernetes secret volume's
    /// `..data` swap is seen as new content).
    pub fn read(cfg: &TlsConfig) -> Result<TlsFiles, TlsError> {
        let cert = read("cert_file", &cfg.cert_file)?;
        let key = read("key_file", &cfg.key_file)?;
        let client_ca = cfg
            .client_ca_file
            .as_deref()
            .map(|p| read("client_ca_file", p))
            .transpose()?;
        let mut h = Sha256::new();
        for part in [&cert[..], &key[..], client_ca.as_deref().unwrap_or_default()] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        Ok(TlsFiles {
            cert,
            key,
            client_ca,
            fingerprint: h.finalize().into(),
        })
    }

    /// Parse and check the files and build the server config.
    pub fn server_config(&self, cfg: &TlsConfig) -> Result<ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = CertificateDer::pem_slice_iter(&self.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error("cert_file", &cfg.cert_file, e))?;
        if chain.is_empty() {
            return Err(pem_error("cert_file", &cfg.cert_file, "no CERTIFICATE found"));
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key).map_err(|e| pem_error("key_file", &cfg.key_file, e))?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        let builder = match (&self.client_ca, &cfg.client_ca_file) {
            (Some(pem), Some(path)) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|e| pem_error("client_ca_file", path, e))?;
                    roots.add(cert).map_err(|e| pem_error("client_ca_file", path, e))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = match cfg.client_auth {
                    ClientAuth::Required => verifier,
                    ClientAuth::Optional => verifier.allow_unauthenticated(),
                };
                let verifier = verifier
                    .build()
                    .map_err(|e| TlsError::Rustls(format!("client_ca_file {}: {e}", path.display())))?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        // One certificate whatever name the client asks for: clients that connect by IP
        // address send no SNI.
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::Rustls(format!("cert_file and key_file: {e}")))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// Read and check the files once: what `check-config` and start-up run.
pub fn load_server_config(cfg: &TlsConfig) -> Result<ServerConfig, TlsError> {
    TlsFiles::read(cfg)?.server_config(cfg)
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key,
        path: path.into(),
        source,
    })
}

fn pem_error(key: &'static str, path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::Pem {
        key,
        path: path.into(),
        detail: e.to_string(),
    }
}
