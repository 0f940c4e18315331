//! End-to-end test support: real peers (`docker-registry`, `skopeo`) and the real `berth`
//! binary, all on 127.0.0.1.
//!
//! - [`registry::Registry`]: Debian's `docker-registry` as the upstream, with its access log.
//! - [`image`]: generated images (random layers -> tar -> gzip, config, manifest, index) and
//!   a v2 push client.
//! - [`berth::Berth`]: the binary under test with a generated config.
//! - [`skopeo`]: `skopeo copy ... dir:` and a verifier for its output.
//! - [`http`]: a blocking HTTP/1.1 client for exact byte/header checks.
//! - [`cmd`]: runs a client command with a deadline and captured output.
//! - [`containerd::Containerd`]: a private containerd daemon and `ctr` pulls via `hosts.toml`.
//! - [`podman::Podman`]: `podman pull` with all state and config in a temp dir.
//! - [`docker`]: the machine's Docker engine, and a guard for its `registry-mirrors`.
//! - [`seaweed::SeaweedFs`]: SeaweedFS `weed mini` as an S3-compatible object store.
//!
//! Missing tools fail the test with an install hint; nothing is skipped silently.

pub mod berth;
pub mod cmd;
pub mod containerd;
pub mod docker;
pub mod http;
pub mod image;
pub mod podman;
pub mod registry;
pub mod seaweed;
pub mod skopeo;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// Debian packages that provide the tools the e2e tests run.
const INSTALL_HINT: &str = "run scripts/test.sh (it installs the test tools), or: apt-get install -y \
     --no-install-recommends docker-registry skopeo podman containerd nginx-light wrk umoci busybox-static jq curl debootstrap docker-compose";

/// Returns the absolute path of `tool` on `PATH`, or panics with an install hint.
/// End-to-end tests must never pass by skipping.
pub fn require_tool(tool: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(tool);
        if is_executable(&candidate) {
            return candidate;
        }
    }
    if tool == "docker" {
        panic!(
            "required tool `docker` is not on PATH: these tests need a running Docker engine \
             (Debian: apt-get install docker.io, then start dockerd); scripts/test.sh does not start one"
        );
    }
    panic!("required tool `{tool}` is not on PATH: {INSTALL_HINT}");
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, release it).
/// Another process may take it before we use it; starters retry with a fresh port.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to find a free port");
    listener
        .local_addr()
        .expect("local_addr of the port-probe listener")
        .port()
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(data)))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why waiting for a child process to become ready ended without success.
#[derive(Debug)]
pub enum NotReady {
    /// The process exited (e.g. the port was taken, bad config).
    Exited(std::process::ExitStatus),
    /// The deadline passed; the last probe outcome is attached.
    TimedOut(String),
}

/// Polls `probe` every 50 ms until it returns `Ok(())`, the child exits, or `timeout` passes.
/// Polling is unavoidable here: the peers are separate processes with no readiness signal.
pub fn wait_until_ready(
    child: &mut Child,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<(), String>,
) -> Result<(), NotReady> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait on a child process") {
            return Err(NotReady::Exited(status));
        }
        let last = match probe() {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(NotReady::TimedOut(last));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills and reaps `child` if it is still running.
pub fn kill_and_wait(child: &mut Child) {
    if child.try_wait().ok().flatten().is_none() {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// The last `max_lines` lines of `text`, with a note of how many were left out.
pub fn tail_text(text: &str, max_lines: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(max_lines);
    let mut out = String::new();
    if skip > 0 {
        out.push_str(&format!("[... {skip} earlier lines omitted ...]\n"));
    }
    for line in &lines[skip..] {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The last `max_lines` lines of the file at `path` (or a note that it is unreadable).
pub fn tail_file(path: &Path, max_lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => tail_text(&String::from_utf8_lossy(&bytes), max_lines),
        Err(e) => format!("[cannot read {}: {e}]", path.display()),
    }
}
