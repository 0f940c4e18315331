//! HTTPS on berth's listener: the acceptor the accept loop hands each TCP connection to, and
//! certificate reloading. The current `rustls::ServerConfig` sits behind an `Arc` that a reload
//! swaps: a handshake takes the config current at that moment, connections already open keep
//! the one they started with, so a reload never drops a connection. Reloads happen when the
//! files' content changes (checked every `reload_interval`; content, not mtime, so the symlink
//! swap of a Kubernetes secret volume and an in-place rewrite are both seen) and on SIGHUP. A
//! reload that fails (a half-written file, a key that does not match) keeps the old config.
//! No HTTP here: the accept loop owns connections, `http` owns requests.

mod load;
mod stream;
mod subject;

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

pub use self::load::{load_server_config, TlsError, TlsFiles};
pub use self::stream::Stream;
use crate::auth::identity::{AuthMethod, Identity};
use crate::config::TlsConfig;
use crate::metrics::Metrics;

/// Turns accepted TCP connections into HTTPS ones; one per listener, shared by reference.
pub struct Acceptor {
    cfg: TlsConfig,
    /// Read on every handshake, written on reload: a std lock held only to clone an `Arc`.
    current: RwLock<Arc<rustls::ServerConfig>>,
    /// Fingerprint of the files last tried, so unchanged (or still broken) files are not
    /// reloaded (or reported) again on every check.
    seen: Mutex<[u8; 32]>,
    handshake_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Acceptor {
    /// Load the files (start-up: an error here stops berth). A handshake, a client hello
    /// included, must finish within `handshake_timeout`.
    pub fn load(cfg: &TlsConfig, handshake_timeout: Duration, metrics: Arc<Metrics>) -> Result<Acceptor, TlsError> {
        let files = TlsFiles::read(cfg)?;
        let config = files.server_config(cfg)?;
        for result in ["ok", "error"] {
            metrics.tls_reloads.with_label_values(&[result]);
        }
        Ok(Acceptor {
            cfg: cfg.clone(),
            current: RwLock::new(Arc::new(config)),
            seen: Mutex::new(files.fingerprint),
            handshake_timeout,
            metrics,
        })
    }

    /// Run the TLS handshake on `tcp`. Returns the stream and, for a verified client
    /// certificate with a subject common name, the user it authenticates.
    pub async fn accept(&self, tcp: TcpStream) -> std::io::Result<(Stream, Option<Identity>)> {
        let config = self
            .current
            .read()
            .expect("no panic while holding the config lock")
            .clone();
        let handshake = tokio_rustls::TlsAcceptor::from(config).accept(tcp);
        let tls = match tokio::time::timeout(self.handshake_timeout, handshake).await {
            Ok(r) => r?,
            Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
        };
        let identity = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| subject::common_name(leaf))
            .map(|user| Identity::new(user, AuthMethod::ClientCertificate));
        Ok((Stream::Tls(Box::new(tls)), identity))
    }

    /// Read the files again and swap the config in if they changed (or always, if `force`).
    /// Returns whether a new config is in use. Blocking file reads: call off the runtime.
    pub fn reload(&self, force: bool) -> bool {
        let files = match TlsFiles::read(&self.cfg) {
            Ok(f) => f,
            Err(e) => {
                // A missing file mid-rotation is retried at the next check; say so once.
                let mut seen = self.seen.lock().expect("no panic while holding the seen lock");
                if force || *seen != [0; 32] {
                    *seen = [0; 32];
                    self.failed(&e);
                }
                return false;
            }
        };
        {
            let mut seen = self.seen.lock().expect("no panic while holding the seen lock");
            if !force && *seen == files.fingerprint {
                return false;
            }
            *seen = files.fingerprint;
        }
        match files.server_config(&self.cfg) {
            Ok(config) => {
                *self.current.write().expect("no panic while holding the config lock") = Arc::new(config);
                self.metrics.tls_reloads.with_label_values(&["ok"]).inc();
                tracing::info!(cert_file = %self.cfg.cert_file.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                self.failed(&e);
                false
            }
        }
    }

    fn failed(&self, e: &TlsError) {
        self.metrics.tls_reloads.with_label_values(&["error"]).inc();
        tracing::error!(error = %e, "TLS reload failed; still serving the previous certificate");
    }

    /// Reload on SIGHUP and whenever the files change, until `stop`.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; TLS files are still checked for changes");
                None
            }
        };
        let mut tick = tokio::time::interval(self.cfg.reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let force = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = async { hangup.as_mut()?.recv().await } => true,
                _ = stop.cancelled() => return,
            };
            let this = self.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || this.reload(force)).await {
                tracing::error!(error = %e, "TLS reload task failed");
            }
        }
    }
}
