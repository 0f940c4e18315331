//! Debian's `docker-registry` (CNCF distribution 2.8) as the upstream registry.
//!
//! Its access log has one line per request in combined log format, written to **stdout**
//! (its own logrus messages go to stderr):
//! `127.0.0.1 - - [25/Nov/2026:19:09:18 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1"`.
//! Both streams are appended to files that survive restarts, so counts span the whole test.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::{free_port, http, kill_and_wait, require_tool, tail_file, wait_until_ready, NotReady};

/// How long the registry may take to answer `GET /v2/` after spawning.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One parsed access-log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLine {
    pub method: String,
    /// Request target as sent: path plus query.
    pub path: String,
    pub status: u16,
    pub user_agent: String,
    pub raw: String,
}

/// A running (or stopped, restartable) `docker-registry serve` with its own storage.
pub struct Registry {
    dir: TempDir,
    port: u16,
    child: Option<Child>,
    /// Set once [`Registry::require_htpasswd`] turned on basic authentication.
    htpasswd: bool,
}

impl Registry {
    /// Starts a registry on a free 127.0.0.1 port with empty storage and waits for `/v2/`.
    pub fn start() -> Registry {
        require_tool("docker-registry");
        let dir = tempfile::Builder::new()
            .prefix("berth-e2e-registry-")
            .tempdir()
            .expect("create the registry temp dir");
        let mut registry = Registry {
            dir,
            port: 0,
            child: None,
            htpasswd: false,
        };
        // A free port can be taken by a parallel test between probe and bind: retry.
        for attempt in 1..=5 {
            registry.port = free_port();
            registry.write_config();
            match registry.spawn() {
                Ok(()) => return registry,
                Err(NotReady::Exited(status)) if attempt < 5 && registry.port_was_taken() => {
                    eprintln!(
                        "docker-registry exited ({status}) on port {}, retrying with another port",
                        registry.port
                    );
                }
                Err(e) => registry.fail_start(e),
            }
        }
        unreachable!("the last attempt either returns or panics")
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The registry's storage root (kept across restarts).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().expect("try_wait on docker-registry").is_none(),
            None => false,
        }
    }

    /// Kills the registry and waits for it to exit; the port then refuses connections.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_wait(&mut child);
        }
    }

    /// Stops the registry if it runs, then starts it again on the same port and storage.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn() {
            self.fail_start(e);
        }
    }

    /// From now on every request needs `user:password` (htpasswd auth, bcrypt, as
    /// `htpasswd -B` writes it): a private upstream. Restarts the registry on the same port
    /// and storage, so push what it should hold first.
    pub fn require_htpasswd(&mut self, user: &str, password: &str) {
        let hash = bcrypt::hash(password, 4).expect("bcrypt a test password");
        std::fs::write(self.htpasswd_path(), format!("{user}:{hash}\n")).expect("write the registry htpasswd");
        self.htpasswd = true;
        self.write_config();
        self.restart();
    }

    /// Every access-log line so far, across restarts, in order.
    pub fn access_log(&self) -> Vec<AccessLine> {
        let text = std::fs::read_to_string(self.access_log_path()).unwrap_or_default();
        text.lines().filter_map(parse_access_line).collect()
    }

    /// Number of access-log lines with exactly `method` whose request target contains
    /// `path_contains`, e.g. `count("GET", "/v2/library/alpine/blobs/sha256:ab...")`.
    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        self.access_log()
            .iter()
            .filter(|l| l.method == method && l.path.contains(path_contains))
            .count()
    }

    /// Access-log lines other than the harness's own `GET /v2/` readiness probes.
    pub fn requests_excluding_probes(&self) -> Vec<AccessLine> {
        self.access_log()
            .into_iter()
            .filter(|l| !(l.path == "/v2/" && l.user_agent == "berth-e2e"))
            .collect()
    }

    /// The access log as text (for assertion messages), without the harness's own requests
    /// (readiness probes and pushes, user agent `berth-e2e`), which are only counted.
    pub fn access_log_text(&self) -> String {
        let log = self.access_log();
        let (harness, others): (Vec<_>, Vec<_>) = log.iter().partition(|l| l.user_agent == "berth-e2e");
        let mut out = format!(
            "[{} request(s) by the test harness itself (probes, pushes) omitted]\n",
            harness.len()
        );
        let skip = others.len().saturating_sub(400);
        if skip > 0 {
            out.push_str(&format!("[... {skip} earlier lines omitted ...]\n"));
        }
        for line in &others[skip..] {
            out.push_str(&line.raw);
            out.push('\n');
        }
        out
    }

    /// The registry's own (stderr) log, last lines.
    pub fn stderr_text(&self) -> String {
        tail_file(&self.stderr_path(), 200)
    }

    fn access_log_path(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }

    fn stderr_path(&self) -> PathBuf {
        self.dir.path().join("stderr.log")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yml")
    }

    fn htpasswd_path(&self) -> PathBuf {
        self.dir.path().join("htpasswd")
    }

    fn write_config(&self) {
        let mut config = format!(
            "version: 0.1\n\
             log: {{level: warn, accesslog: {{disabled: false}}}}\n\
             storage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\n\
             http: {{addr: {}, secret: berth-e2e-not-a-secret}}\n\
             health: {{storagedriver: {{enabled: false}}}}\n",
            self.storage_dir().display(),
            self.addr()
        );
        if self.htpasswd {
            config.push_str(&format!(
                "auth: {{htpasswd: {{realm: berth-e2e, path: {}}}}}\n",
                self.htpasswd_path().display()
            ));
        }
        std::fs::write(self.config_path(), config).expect("write the docker-registry config");
    }

    fn spawn(&mut self) -> Result<(), NotReady> {
        let stdout = append(&self.access_log_path());
        let stderr = append(&self.stderr_path());
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn docker-registry serve");
        let (addr, htpasswd) = (self.addr(), self.htpasswd);
        let result = wait_until_ready(&mut child, READY_TIMEOUT, || match http::get(&addr, "/v2/", &[]) {
            Ok(r) if r.status == 200 => Ok(()),
            // With htpasswd the anonymous probe gets the challenge: the registry is up.
            Ok(r) if r.status == 401 && htpasswd => Ok(()),
            Ok(r) => Err(format!("GET /v2/ answered {}", r.status)),
            Err(e) => Err(format!("GET /v2/ failed: {e}")),
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
            "docker-registry on {} did not become ready ({e:?}) within {READY_TIMEOUT:?}\n\
             --- stderr ---\n{}",
            self.addr(),
            self.stderr_text()
        );
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "--- upstream docker-registry {} access log ---\n{}--- upstream stderr ---\n{}",
                self.addr(),
                self.access_log_text(),
                self.stderr_text()
            );
        }
    }
}

fn append(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open log file {}: {e}", path.display()))
}

/// Parses `IP - USER [DATE] "METHOD TARGET PROTO" STATUS SIZE "REFERER" "UA"`.
/// Returns `None` for anything else (the file holds only access lines, but be lenient).
fn parse_access_line(line: &str) -> Option<AccessLine> {
    let (_, rest) = line.split_once("] \"")?;
    let (request, rest) = rest.split_once('"')?;
    let mut req = request.split(' ');
    let method = req.next()?.to_string();
    let path = req.next()?.to_string();
    let status = rest.split_whitespace().next()?.parse().ok()?;
    let user_agent = rest
        .trim_end()
        .strip_suffix('"')
        .and_then(|s| s.rsplit_once('"'))
        .map(|(_, ua)| ua.to_string())
        .unwrap_or_default();
    Some(AccessLine {
        method,
        path,
        status,
        user_agent,
        raw: line.to_string(),
    })
}

#[test]
fn access_line_parses_when_docker_registry_2_8_format() {
    let line = r#"127.0.0.1 - - [25/Nov/2026:19:09:18 +0000] "HEAD /v2/library/x/manifests/latest HTTP/1.1" 404 96 "" "curl/7.88.1""#;
    let parsed = parse_access_line(line).expect("a docker-registry access line must parse");
    assert_eq!(parsed.method, "HEAD");
    assert_eq!(parsed.path, "/v2/library/x/manifests/latest");
    assert_eq!(parsed.status, 404);
    assert_eq!(parsed.user_agent, "curl/7.88.1");
    assert!(parse_access_line("time=\"...\" level=warning msg=x").is_none());
}
