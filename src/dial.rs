//! The TLS client configuration berth dials out with: upstreams, the shared tier's object
//! store and cluster peers all trust the same public roots (webpki) plus the extra CA
//! certificates their config names, with rustls on ring; and the plain HTTP/1.1 connector
//! of the object store's and the peers' clients. A leaf: imports nothing of the crate, does
//! no I/O.

use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// A client configuration trusting the public roots and the certificates in `extra_ca_pem`
/// (errors name `what`, the config key the PEM came from).
pub fn client_config(extra_ca_pem: Option<&[u8]>, what: &str) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for cert in extra_ca_pem.map(CertificateDer::pem_slice_iter).into_iter().flatten() {
        let cert = cert.map_err(|e| format!("{what}: {e}"))?;
        roots.add(cert).map_err(|e| format!("{what}: {e}"))?;
    }
    Ok(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// An HTTP/1.1 connector for `http` and `https` URLs over `tls`, with no Nagle delay, that
/// gives up connecting after `connect_timeout` (the object store's and the peers' clients).
pub fn https_connector(tls: rustls::ClientConfig, connect_timeout: Duration) -> HttpsConnector<HttpConnector> {
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_connect_timeout(Some(connect_timeout));
    tcp.set_nodelay(true);
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp)
}
