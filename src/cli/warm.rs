//! `berth warm <ref>... [-f FILE] [--platform os/arch|all]`: pull images into the cache through
//! a running berth over HTTP(S), exactly as a client would (manifest, index children, config and
//! layers), discarding the bytes. Progress goes to stderr.

use std::io::{IsTerminal, Write};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

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
    progress: &mut dyn FnMut(u64),
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

/// Warm every reference; `platform` is `None` for all platforms of an index.
pub async fn run(config: &Config, server: &str, refs: &[String], platform: Option<&str>) -> Result<String, CliError> {
    let c = client(config).map_err(CliError::new)?;
    if let Err(e) = get(&c, &format!("{server}/v2/"), false, &mut |_| {}).await {
        return Err(CliError {
            code: EXIT_UNAVAILABLE,
            message: format!("cannot reach berth at {server}: {e}"),
        });
    }
    let mut out = String::new();
    let mut failed = 0;
    for raw in refs {
        match warm_one(config, &c, server, raw, platform).await {
            Ok(line) => out += &line,
            Err(e) => {
                failed += 1;
                out += &format!("FAILED {raw}: {e}\n");
            }
        }
    }
    if failed > 0 {
        return Err(CliError {
            code: EXIT_TEMPFAIL,
            message: format!("{out}{failed} of {} images failed", refs.len()),
        });
    }
    Ok(out)
}

async fn warm_one(
    config: &Config,
    c: &HttpClient,
    server: &str,
    raw: &str,
    platform: Option<&str>,
) -> Result<String, String> {
    let r = ImageRef::parse(raw).map_err(|e| e.message)?;
    r.upstream(config).map_err(|e| e.message)?;
    let base = format!("{server}/v2/{}/{}", r.registry, r.repo);
    let tty = std::io::stderr().is_terminal();
    let (mut manifests, mut blobs, mut bytes) = (0usize, 0usize, 0u64);
    let mut todo = vec![r.reference.to_string()];
    while let Some(reference) = todo.pop() {
        let url = format!("{base}/manifests/{reference}");
        let (status, body) = get(c, &url, true, &mut |_| {}).await?;
        if status != StatusCode::OK {
            return Err(format!(
                "manifest {reference}: {status} {}",
                String::from_utf8_lossy(&body)
            ));
        }
        manifests += 1;
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| format!("manifest {reference}: {e}"))?;
        for child in v["manifests"].as_array().into_iter().flatten() {
            let p = &child["platform"];
            let name = format!(
                "{}/{}",
                p["os"].as_str().unwrap_or(""),
                p["architecture"].as_str().unwrap_or("")
            );
            let wanted = platform.is_none_or(|want| name == want || want.starts_with(&format!("{name}/")));
            if let (true, Some(d)) = (wanted, child["digest"].as_str()) {
                todo.push(d.to_string());
            }
        }
        let layers = v["layers"].as_array().into_iter().flatten();
        for b in std::iter::once(&v["config"]).chain(layers) {
            let Some(d) = b["digest"].as_str() else { continue };
            let mut report = |n: u64| {
                bytes += n;
                if tty {
                    eprint!(
                        "\r{raw}: {manifests} manifests, {blobs} blobs, {}   ",
                        human_bytes(bytes)
                    );
                    let _ = std::io::stderr().flush();
                }
            };
            let (status, body) = get(c, &format!("{base}/blobs/{d}"), false, &mut report).await?;
            if status != StatusCode::OK {
                return Err(format!("blob {d}: {status} {}", String::from_utf8_lossy(&body)));
            }
            blobs += 1;
        }
    }
    if tty {
        eprintln!();
    }
    Ok(format!(
        "warmed {r}: {manifests} manifests, {blobs} blobs, {}\n",
        human_bytes(bytes)
    ))
}
