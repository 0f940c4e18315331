//! `berth warm <ref>... [-f FILE] [--platform os/arch|all]`: pull images into the cache through
//! a running berth over HTTP(S), exactly as a client would (manifest, index children, config and
//! layers), discarding the bytes. Images go side by side, blobs at most [`PARALLEL_BLOBS`] at a
//! time; each image's result is printed as it finishes, and a progress bar (bytes, rate) is
//! drawn on stderr when it is a terminal.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{human_bytes, CliError, ImageRef};
use crate::config::Config;
use crate::oci::MANIFEST_TYPES;
use crate::upstream::error_chain;

/// EX_UNAVAILABLE: the server could not be reached.
const EXIT_UNAVAILABLE: u8 = 69;
/// EX_TEMPFAIL: some images failed; retry later.
const EXIT_TEMPFAIL: u8 = 75;

type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// A client for http:// and https:// URLs that trusts berth's own certificate (see `trust`).
fn client(config: &Config) -> Result<HttpClient, String> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(super::trust::client_config(config)?)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// GET a URL and return the body as text (for `cache stats` and `healthcheck`).
pub async fn fetch_text(config: &Config, url: &str) -> Result<String, String> {
    let (status, body) = get(&client(config)?, url, true, &mut |_| {}).await?;
    if status != StatusCode::OK {
        return Err(format!("{url}: status {status}"));
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// GET `url`; keep the body only if `keep`, else just count it through `progress`.
async fn get(
    c: &HttpClient,
    url: &str,
    keep: bool,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<(StatusCode, Vec<u8>), String> {
    let req = Request::get(url)
        .header("accept", MANIFEST_TYPES.join(", "))
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = c
        .request(req)
        .await
        .map_err(|e| format!("{url}: {}", error_chain(&e)))?;
    let status = resp.status();
    let mut body = resp.into_body();
    let mut kept = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("{url}: transfer broke: {}", error_chain(&e)))?;
        if let Some(d) = frame.data_ref() {
            progress(d.len() as u64);
            if keep || !status.is_success() {
                kept.extend_from_slice(d);
            }
        }
    }
    Ok((status, kept))
}

/// The server to warm through: `--server`, else `[server] listen` on loopback (https when
/// `[server.tls]` is set).
pub fn default_server(config: &Config) -> String {
    let a = config.server.listen;
    let host = if a.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        a.ip().to_string()
    };
    let host = if host.contains(':') { format!("[{host}]") } else { host };
    let scheme = if config.server.tls.is_some() { "https" } else { "http" };
    format!("{scheme}://{host}:{}", a.port())
}

/// Blob downloads in flight at once, over all images.
const PARALLEL_BLOBS: usize = 4;

/// Warm every reference; `platform` is `None` for all platforms of an index. Images are
/// warmed side by side and each one's result is printed as it finishes: `warmed …` on stdout,
/// `FAILED …` on stderr. On a terminal a progress bar shows bytes and rate.
pub async fn run(config: &Config, server: &str, refs: &[String], platform: Option<&str>) -> Result<String, CliError> {
    let c = client(config).map_err(CliError::new)?;
    if let Err(e) = get(&c, &format!("{server}/v2/"), false, &mut |_| {}).await {
        return Err(CliError {
            code: EXIT_UNAVAILABLE,
            message: format!("cannot reach berth at {server}: {e}"),
        });
    }
    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(0);
        let style = ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}")
            .map_err(|e| CliError::new(e.to_string()))?;
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    } else {
        ProgressBar::hidden()
    };
    let job = Arc::new(Job {
        client: c,
        server: server.to_string(),
        platform: platform.map(str::to_string),
        blobs: Arc::new(Semaphore::new(PARALLEL_BLOBS)),
        bar: bar.clone(),
    });
    let mut images = JoinSet::new();
    let mut failed = 0;
    let report_failure = |raw: &str, e: &str| bar.suspend(|| eprintln!("FAILED {raw}: {e}"));
    for raw in refs {
        let image = ImageRef::parse(raw).and_then(|r| r.upstream(config).map(|_| r));
        match image {
            Ok(r) => {
                let (job, raw) = (job.clone(), raw.clone());
                images.spawn(async move {
                    let result = job.warm(&r).await;
                    (raw, result)
                });
            }
            Err(e) => {
                failed += 1;
                report_failure(raw, &e.message);
            }
        }
    }
    bar.set_message(format!("0 of {} images", refs.len()));
    let mut done = failed;
    while let Some(joined) = images.join_next().await {
        done += 1;
        bar.set_message(format!("{done} of {} images", refs.len()));
        match joined {
            Ok((_, Ok(line))) => bar.suspend(|| println!("{line}")),
            Ok((raw, Err(e))) => {
                failed += 1;
                report_failure(&raw, &e);
            }
            Err(e) => {
                failed += 1;
                report_failure("?", &e.to_string());
            }
        }
    }
    bar.finish_and_clear();
    if failed > 0 {
        return Err(CliError {
            code: EXIT_TEMPFAIL,
            message: format!("{failed} of {} images failed", refs.len()),
        });
    }
    Ok(String::new())
}

/// What every image's warm-up shares.
struct Job {
    client: HttpClient,
    server: String,
    platform: Option<String>,
    /// Bounds blob downloads over all images.
    blobs: Arc<Semaphore>,
    bar: ProgressBar,
}

impl Job {
    /// Fetch an image's manifests one by one and its blobs side by side.
    async fn warm(self: Arc<Self>, r: &ImageRef) -> Result<String, String> {
        let base = format!("{}/v2/{}/{}", self.server, r.registry, r.repo);
        let (mut manifests, mut blobs, mut bytes) = (0usize, 0usize, 0u64);
        let mut todo = vec![r.reference.to_string()];
        let mut fetches: JoinSet<Result<u64, String>> = JoinSet::new();
        while let Some(reference) = todo.pop() {
            let url = format!("{base}/manifests/{reference}");
            let (status, body) = get(&self.client, &url, true, &mut |_| {}).await?;
            if status != StatusCode::OK {
                return Err(format!(
                    "manifest {reference}: {status} {}",
                    String::from_utf8_lossy(&body)
                ));
            }
            manifests += 1;
            let v: serde_json::Value =
                serde_json::from_slice(&body).map_err(|e| format!("manifest {reference}: {e}"))?;
            for child in v["manifests"].as_array().into_iter().flatten() {
                let p = &child["platform"];
                let name = format!(
                    "{}/{}",
                    p["os"].as_str().unwrap_or(""),
                    p["architecture"].as_str().unwrap_or("")
                );
                let wanted = self
                    .platform
                    .as_deref()
                    .is_none_or(|want| name == want || want.starts_with(&format!("{name}/")));
                if let (true, Some(d)) = (wanted, child["digest"].as_str()) {
                    todo.push(d.to_string());
                }
            }
            let layers = v["layers"].as_array().into_iter().flatten();
            for b in std::iter::once(&v["config"]).chain(layers) {
                let Some(d) = b["digest"].as_str() else { continue };
                self.bar.inc_length(b["size"].as_u64().unwrap_or(0));
                let (job, url) = (self.clone(), format!("{base}/blobs/{d}"));
                fetches.spawn(async move { job.blob(&url).await });
            }
        }
        while let Some(joined) = fetches.join_next().await {
            bytes += joined.map_err(|e| e.to_string())??;
            blobs += 1;
        }
        Ok(format!(
            "warmed {r}: {manifests} manifests, {blobs} blobs, {}",
            human_bytes(bytes)
        ))
    }

    /// Download one blob, discarding it; returns its size.
    async fn blob(&self, url: &str) -> Result<u64, String> {
        let _permit = self.blobs.acquire().await.map_err(|e| e.to_string())?;
        let mut n = 0;
        let bar = &self.bar;
        let (status, body) = get(&self.client, url, false, &mut |k| {
            n += k;
            bar.inc(k);
        })
        .await?;
        if status != StatusCode::OK {
            let d = url.rsplit('/').next().unwrap_or(url);
            return Err(format!("blob {d}: {status} {}", String::from_utf8_lossy(&body)));
        }
        Ok(n)
    }
}
