//! The real `berth` binary under test: `berth serve --config <file>` with a generated config,
//! a temp storage dir that survives restarts, and stderr captured to a file (printed when the
//! test panics).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::{cmd, free_port, http, kill_and_wait, require_tool, tail_file, wait_until_ready, NotReady};

/// How long berth may take to answer `GET /readyz` with 200 after spawning.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What goes into berth's config besides the listen address and storage path.
#[derive(Debug, Clone)]
pub struct BerthConfig {
    /// URL of the default upstream `[upstreams.hub]` (aliases `docker.io`); `None` omits it.
    pub hub_url: Option<String>,
    /// Body of the `[cache]` table (TOML lines).
    pub cache: String,
    /// Extra TOML appended at the end, e.g. more `[upstreams.NAME]` tables.
    pub extra: String,
    /// Adds `[metrics] listen = "127.0.0.1:PORT"` on a free port.
    pub metrics: bool,
    /// `[log] format`: `json` (what [`Berth::requests`] parses) unless a test reads the text.
    pub log_format: String,
    /// `[server.tls]`: berth listens on HTTPS only.
    pub tls: Option<TlsFiles>,
    /// Listen on this port (chosen by the test, e.g. so peers can name it) instead of a free one.
    pub port: Option<u16>,
}

/// The certificate files of an HTTPS listener, and the CA that readiness probes trust.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: PathBuf,
}

impl BerthConfig {
    /// A default upstream at `hub_url` and `manifest_ttl = "10m"`.
    pub fn new(hub_url: &str) -> BerthConfig {
        BerthConfig {
            hub_url: Some(hub_url.to_string()),
            cache: "manifest_ttl = \"10m\"\n".to_string(),
            extra: String::new(),
            metrics: false,
            log_format: "json".to_string(),
            tls: None,
            port: None,
        }
    }

    /// Listen on `port` (see [`support::free_port`](super::free_port)).
    pub fn port(mut self, port: u16) -> BerthConfig {
        self.port = Some(port);
        self
    }

    /// No `[upstreams.hub]`: the test writes every upstream (one `default = true`) in `extra`.
    pub fn without_hub(mut self) -> BerthConfig {
        self.hub_url = None;
        self
    }

    /// Serve HTTPS with `files` (`[server.tls]`).
    pub fn tls(mut self, files: TlsFiles) -> BerthConfig {
        self.tls = Some(files);
        self
    }

    /// Replaces the body of the `[cache]` table.
    pub fn cache(mut self, body: &str) -> BerthConfig {
        self.cache = body.to_string();
        self
    }

    /// Appends TOML (more tables) to the config.
    pub fn extra(mut self, toml: &str) -> BerthConfig {
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }

    pub fn metrics(mut self) -> BerthConfig {
        self.metrics = true;
        self
    }

    /// Sets `[log] format` (`json`, `text` or `auto`).
    pub fn log_format(mut self, format: &str) -> BerthConfig {
        self.log_format = format.to_string();
        self
    }
}

/// A running (or stopped, restartable) berth.
pub struct Berth {
    dir: TempDir,
    config: BerthConfig,
    port: u16,
    metrics_port: Option<u16>,
    child: Option<Child>,
}

impl Berth {
    /// Starts berth with [`BerthConfig::new`] pointing at `hub_url`.
    pub fn start(hub_url: &str) -> Berth {
        Berth::start_with(BerthConfig::new(hub_url))
    }

    /// Starts berth on a free port with a fresh storage dir and waits for `/readyz` = 200.
    pub fn start_with(config: BerthConfig) -> Berth {
        let dir = tempfile::Builder::new()
            .prefix("berth-e2e-berth-")
            .tempdir()
            .expect("create the berth temp dir");
        std::fs::create_dir_all(dir.path().join("storage")).expect("create berth storage dir");
        let mut berth = Berth {
            dir,
            config,
            port: 0,
            metrics_port: None,
            child: None,
        };
        // A free port can be taken by a parallel test between probe and bind: retry.
        for attempt in 1..=5 {
            berth.port = berth.config.port.unwrap_or_else(free_port);
            berth.metrics_port = berth.config.metrics.then(free_port);
            berth.write_config();
            match berth.spawn() {
                Ok(()) => return berth,
                Err(NotReady::Exited(status)) if attempt < 5 && berth.port_was_taken() => {
                    eprintln!(
                        "berth exited ({status}) on port {}, retrying with another port\n{}",
                        berth.port,
                        berth.stderr_text()
                    );
                }
                Err(e) => berth.fail_start(e),
            }
        }
        unreachable!("the last attempt either returns or panics")
    }

    /// `127.0.0.1:PORT` of the registry API.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT` of the metrics listener, if configured.
    pub fn metrics_addr(&self) -> Option<String> {
        self.metrics_port.map(|p| format!("127.0.0.1:{p}"))
    }

    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("berth.toml")
    }

    /// The config file as written.
    pub fn config_text(&self) -> String {
        std::fs::read_to_string(self.config_path()).unwrap_or_default()
    }

    /// The OS process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().expect("try_wait on berth").is_none(),
            None => false,
        }
    }

    /// Kills berth (SIGKILL) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_wait(&mut child);
        }
    }

    /// Stops berth if it runs and starts it again: same port, config and storage.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn() {
            self.fail_start(e);
        }
    }

    /// Every request berth logged so far (its JSON `"message":"request"` lines), in order,
    /// across restarts. Lines that are not request records are skipped.
    pub fn requests(&self) -> Vec<BerthRequest> {
        let text = std::fs::read_to_string(self.stderr_path()).unwrap_or_default();
        text.lines().filter_map(parse_request_line).collect()
    }

    /// berth's stderr (its log), last lines, across restarts.
    pub fn stderr_text(&self) -> String {
        tail_file(&self.stderr_path(), 300)
    }

    fn stderr_path(&self) -> PathBuf {
        self.dir.path().join("stderr.log")
    }

    fn write_config(&self) {
        let tls = match &self.config.tls {
            Some(t) => format!(
                "\n[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
                toml_escape(&t.cert_file),
                toml_escape(&t.key_file)
            ),
            None => String::new(),
        };
        let mut toml = format!(
            "[server]\nlisten = \"{}\"\n{tls}\n[log]\nformat = \"{}\"\n\n[storage]\npath = \"{}\"\n\n[cache]\n{}\n",
            self.addr(),
            self.config.log_format,
            toml_escape(&self.storage_dir()),
            self.config.cache.trim_end(),
        );
        if let Some(url) = &self.config.hub_url {
            toml.push_str(&format!(
                "\n[upstreams.hub]\nurl = \"{url}\"\naliases = [\"docker.io\"]\ndefault = true\n"
            ));
        }
        if let Some(addr) = self.metrics_addr() {
            toml.push_str(&format!("\n[metrics]\nlisten = \"{addr}\"\n"));
        }
        if !self.config.extra.is_empty() {
            toml.push('\n');
            toml.push_str(&self.config.extra);
        }
        std::fs::write(self.config_path(), toml).expect("write the berth config");
    }

    fn spawn(&mut self) -> Result<(), NotReady> {
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.stderr_path())
            .expect("open berth stderr log");
        let stdout = stderr.try_clone().expect("clone berth log handle");
        let mut child = Command::new(crate::berth_binary())
            .arg("serve")
            .arg("--config")
            .arg(self.config_path())
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn the berth binary");
        let (addr, tls) = (self.addr(), self.config.tls.clone());
        let result = wait_until_ready(&mut child, READY_TIMEOUT, || match &tls {
            Some(tls) => probe_https(&addr, &tls.ca_file),
            None => match http::get(&addr, "/readyz", &[]) {
                Ok(r) if r.status == 200 => Ok(()),
                Ok(r) => Err(format!("GET /readyz answered {}: {}", r.status, r.text())),
                Err(e) => Err(format!("GET /readyz failed: {e}")),
            },
        });
        match result {
            Ok(()) => {
                self.child = Some(child);
                Ok(())
            }
            Err(e) => {
                kill_and_wait(&mut child);
                Err(e)
            }
        }
    }

    /// Whether the last start failed because another process holds the port.
    fn port_was_taken(&self) -> bool {
        std::fs::read_to_string(self.stderr_path())
            .map(|log| log.to_ascii_lowercase().contains("address already in use"))
            .unwrap_or(false)
    }

    fn fail_start(&self, e: NotReady) -> ! {
        panic!(
            "berth on {} did not become ready ({e:?}) within {READY_TIMEOUT:?}\n\
             --- config ---\n{}\n--- berth stderr ---\n{}",
            self.addr(),
            self.config_text(),
            self.stderr_text()
        );
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "--- berth {} config ---\n{}\n--- berth stderr ---\n{}",
                self.addr(),
                self.config_text(),
                self.stderr_text()
            );
        }
    }
}

/// One request as berth logs it (`[log] format = "json"`): method, path without the query,
/// status and the cache outcome (`hit`, `miss`, `none`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BerthRequest {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub cache: String,
    pub raw: String,
}

fn parse_request_line(line: &str) -> Option<BerthRequest> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v.get("message")?.as_str()? != "request" {
        return None;
    }
    Some(BerthRequest {
        method: v.get("method")?.as_str()?.to_string(),
        path: v.get("path")?.as_str()?.to_string(),
        status: u16::try_from(v.get("status")?.as_u64()?).ok()?,
        cache: v.get("cache").and_then(|c| c.as_str()).unwrap_or_default().to_string(),
        raw: line.to_string(),
    })
}

/// `GET https://ADDR/readyz` with curl, trusting only `ca_file`.
fn probe_https(addr: &str, ca_file: &Path) -> Result<(), String> {
    let mut curl = Command::new(require_tool("curl"));
    curl.args([
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "5",
        "--cacert",
    ])
    .arg(ca_file)
    .arg(format!("https://{addr}/readyz"));
    let run = cmd::run(&mut curl, Duration::from_secs(10));
    match run.stdout.trim() {
        "200" => Ok(()),
        code => Err(format!(
            "GET https://{addr}/readyz answered {code:?}: {}",
            run.stderr.trim()
        )),
    }
}

fn toml_escape(path: &Path) -> String {
    path.display().to_string().replace('\\', "\\\\").replace('"', "\\\"")
}
