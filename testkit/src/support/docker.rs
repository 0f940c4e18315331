//! The machine's Docker engine as a client: `docker pull` / `image inspect` / `rmi`, an
//! inter-process lock around everything that touches the daemon, and a guard that adds a
//! `registry-mirrors` entry to the daemon's `daemon.json`, reloads it with SIGHUP and puts
//! the original back on drop.
//!
//! dockerd (20.10) reloads `registry-mirrors` on SIGHUP only when the key is *present* in the
//! file: writing the original file back (without the key) would leave the mirror active. So
//! the guard first writes the original with `registry-mirrors` set explicitly to its old value
//! (`[]` if there was none), reloads, waits until `docker info` shows that, and only then puts
//! the original bytes back. A backup next to `daemon.json` lets the next run repair the file
//! if a run was killed before its guard dropped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::cmd::{self, CmdRun};
use super::require_tool;

/// Upper bound for one docker command.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(180);
/// How long dockerd may take to apply a SIGHUP reload.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(15);
/// Serialises every test that uses the Docker engine (they run in separate processes).
const LOCK_PATH: &str = "/tmp/berth-e2e-docker-daemon.lock";
/// Where dockerd reads its config unless started with `--config-file`.
const DEFAULT_DAEMON_JSON: &str = "/etc/docker/daemon.json";

/// Panics (with a hint) unless the `docker` CLI is installed and its daemon answers.
pub fn require_docker_engine() {
    require_tool("docker");
    let run = docker(&["info", "--format", "{{.ServerVersion}}"]);
    assert!(
        run.success() && !run.stdout.trim().is_empty(),
        "these tests need a running Docker engine that the `docker` CLI reaches (Debian: \
         apt-get install docker.io, then start dockerd); `docker info` failed: {}",
        run.describe()
    );
}

/// Runs `docker <args>`.
pub fn docker(args: &[&str]) -> CmdRun {
    let mut command = Command::new("docker");
    command.args(args);
    cmd::run(&mut command, DOCKER_TIMEOUT)
}

/// `docker image inspect --format <format> <reference>`, trimmed.
pub fn inspect(reference: &str, format: &str) -> String {
    let run = docker(&["image", "inspect", "--format", format, reference]);
    run.assert_success(&format!("docker image inspect {reference}"));
    run.stdout.trim().to_string()
}

/// `RepoDigests` of image `reference`.
pub fn repo_digests(reference: &str) -> Vec<String> {
    let json = inspect(reference, "{{json .RepoDigests}}");
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("RepoDigests of {reference} is not a JSON list: {e}: {json}"))
}

/// Holds an inter-process file lock (e.g. on the Docker daemon) while alive.
pub struct DaemonLock {
    _file: File,
}

/// Takes the lock that serialises every test using the Docker engine (blocks until free).
pub fn lock_daemon() -> DaemonLock {
    lock_file(Path::new(LOCK_PATH))
}

/// Takes an exclusive `flock` on `path` (created if missing), blocking until it is free.
pub fn lock_file(path: &Path) -> DaemonLock {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    // Released when the file is closed (also when the process dies).
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
        .unwrap_or_else(|e| panic!("flock {}: {e}", path.display()));
    DaemonLock { _file: file }
}

/// Removes the listed image references on drop (`docker rmi -f`), so pulled images never
/// outlive the test, whatever its outcome.
#[derive(Default)]
pub struct PulledImages {
    refs: Vec<String>,
}

impl PulledImages {
    /// Registers `reference` for removal, and removes any leftover from a killed run now.
    pub fn track(&mut self, reference: &str) {
        let _ = docker(&["rmi", "-f", reference]);
        if !self.refs.iter().any(|r| r == reference) {
            self.refs.push(reference.to_string());
        }
    }

    /// Removes `reference` now (it stays registered; removing twice is harmless).
    pub fn remove(&self, reference: &str) {
        docker(&["rmi", "-f", reference]).assert_success(&format!("docker rmi -f {reference}"));
        let gone = docker(&["image", "inspect", reference]);
        assert!(!gone.success(), "{reference} must be gone after docker rmi");
    }
}

impl Drop for PulledImages {
    fn drop(&mut self) {
        for reference in &self.refs {
            let _ = docker(&["rmi", "-f", reference]);
        }
    }
}

/// While alive, dockerd runs with `registry-mirrors = [<mirror>]`.
pub struct MirrorGuard {
    change: DaemonJsonChange,
}

/// A change to dockerd's config file and how to undo it (the guard's Drop calls `restore`).
struct DaemonJsonChange {
    daemon_json: PathBuf,
    backup: PathBuf,
    dockerd_pid: i32,
    /// The file's original bytes; `None` if it did not exist.
    original: Option<Vec<u8>>,
}

impl MirrorGuard {
    /// Adds `mirror_url` as dockerd's only registry mirror and reloads the daemon. Returns why
    /// not if this machine's daemon cannot be reconfigured from here (no local dockerd,
    /// mirrors set on its command line, config not writable, reload not applied). Hold a
    /// [`DaemonLock`] while calling this and while the guard lives.
    pub fn install(mirror_url: &str) -> Result<MirrorGuard, String> {
        let pid = find_dockerd()?;
        let cmdline =
            std::fs::read(format!("/proc/{pid}/cmdline")).map_err(|e| format!("read dockerd cmdline: {e}"))?;
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a.starts_with("--registry-mirror")) {
            return Err(format!(
                "dockerd {pid} sets --registry-mirror on its command line: {args:?}"
            ));
        }
        let daemon_json = args
            .iter()
            .position(|a| a == "--config-file")
            .and_then(|i| args.get(i + 1).cloned())
            .or_else(|| {
                args.iter()
                    .find_map(|a| a.strip_prefix("--config-file=").map(str::to_string))
            })
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DAEMON_JSON));
        let backup = PathBuf::from(format!("{}.berth-e2e-backup", daemon_json.display()));

        // A run killed before its guard dropped left a backup: repair the daemon first.
        if backup.exists() {
            eprintln!(
                "note: {} exists (a previous run was killed); restoring {} from it",
                backup.display(),
                daemon_json.display()
            );
            let saved = std::fs::read(&backup).map_err(|e| format!("read {}: {e}", backup.display()))?;
            let stale = DaemonJsonChange {
                daemon_json: daemon_json.clone(),
                backup: backup.clone(),
                dockerd_pid: pid,
                original: decode_backup(&saved).map_err(|e| format!("{}: {e}", backup.display()))?,
            };
            stale.restore()?;
        }

        let original = match std::fs::read(&daemon_json) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("read {}: {e}", daemon_json.display())),
        };
        let mut config = parse_object(original.as_deref(), &daemon_json)?;
        config.insert("registry-mirrors".into(), serde_json::json!([mirror_url]));
        std::fs::write(&backup, encode_backup(original.as_deref())).map_err(|e| {
            format!(
                "cannot write {} (daemon config not writable here): {e}",
                backup.display()
            )
        })?;
        let change = DaemonJsonChange {
            daemon_json,
            backup,
            dockerd_pid: pid,
            original,
        };
        if let Err(e) = write_json(&change.daemon_json, &config) {
            let restored = change.restore();
            return Err(format!("{e} (restore: {restored:?})"));
        }
        if let Err(e) = change.reload_until(&[mirror_url.to_string()]) {
            let restored = change.restore();
            return Err(format!("{e} (restore: {restored:?})"));
        }
        Ok(MirrorGuard { change })
    }

    /// The config file the guard changed.
    pub fn daemon_json(&self) -> &Path {
        &self.change.daemon_json
    }
}

impl DaemonJsonChange {
    /// Puts the original mirrors into effect, then the original bytes back; removes the backup.
    fn restore(&self) -> Result<(), String> {
        let mut config = parse_object(self.original.as_deref(), &self.daemon_json)?;
        let mirrors: Vec<String> = config
            .get("registry-mirrors")
            .and_then(|m| m.as_array())
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        config.insert("registry-mirrors".into(), serde_json::json!(mirrors));
        write_json(&self.daemon_json, &config)?;
        let applied = self.reload_until(&mirrors);
        // The daemon now runs with the original settings; the file gets its original bytes.
        let put_back = match &self.original {
            Some(bytes) => std::fs::write(&self.daemon_json, bytes),
            None => std::fs::remove_file(&self.daemon_json),
        };
        put_back.map_err(|e| format!("put back {}: {e}", self.daemon_json.display()))?;
        applied?;
        std::fs::remove_file(&self.backup).map_err(|e| format!("remove {}: {e}", self.backup.display()))
    }

    /// Sends SIGHUP to dockerd and waits until `docker info` lists exactly `mirrors`.
    fn reload_until(&self, mirrors: &[String]) -> Result<(), String> {
        // The shell's `kill` builtin: no signal API among this crate's dependencies.
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg("kill -HUP \"$1\"")
            .arg("sh")
            .arg(self.dockerd_pid.to_string());
        let sent = cmd::run(&mut command, Duration::from_secs(10));
        if !sent.success() {
            return Err(format!("SIGHUP to dockerd {}: {}", self.dockerd_pid, sent.describe()));
        }
        let want: Vec<String> = mirrors.iter().map(|m| m.trim_end_matches('/').to_string()).collect();
        let deadline = Instant::now() + RELOAD_TIMEOUT;
        let mut last;
        loop {
            last = current_mirrors();
            if last.as_ref().is_ok_and(|got| *got == want) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "dockerd did not apply registry-mirrors {want:?} within {RELOAD_TIMEOUT:?} of SIGHUP \
                     (docker info: {last:?})"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for MirrorGuard {
    fn drop(&mut self) {
        if let Err(e) = self.change.restore() {
            let msg = format!(
                "restoring {} failed: {e}; the original is in {}",
                self.change.daemon_json.display(),
                self.change.backup.display()
            );
            if std::thread::panicking() {
                eprintln!("{msg}");
            } else {
                panic!("{msg}");
            }
        }
    }
}

/// The registry mirrors dockerd currently uses, without trailing slashes.
pub fn current_mirrors() -> Result<Vec<String>, String> {
    let run = docker(&["info", "--format", "{{json .RegistryConfig.Mirrors}}"]);
    if !run.success() {
        return Err(run.describe());
    }
    let list: Option<Vec<String>> =
        serde_json::from_str(run.stdout.trim()).map_err(|e| format!("docker info mirrors {:?}: {e}", run.stdout))?;
    Ok(list
        .unwrap_or_default()
        .into_iter()
        .map(|m| m.trim_end_matches('/').to_string())
        .collect())
}

/// The pid of the one `dockerd` process on this machine.
fn find_dockerd() -> Result<i32, String> {
    let mut pids = Vec::new();
    let entries = std::fs::read_dir("/proc").map_err(|e| format!("read /proc: {e}"))?;
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if std::fs::read_to_string(entry.path().join("comm")).is_ok_and(|c| c.trim() == "dockerd") {
            pids.push(pid);
        }
    }
    match pids.as_slice() {
        [pid] => Ok(*pid),
        [] => Err("no dockerd process on this machine (the engine may be remote)".into()),
        many => Err(format!(
            "several dockerd processes {many:?}: cannot tell which one to reload"
        )),
    }
}

fn parse_object(bytes: Option<&[u8]>, path: &Path) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match bytes {
        None => Ok(serde_json::Map::new()),
        Some(b) if b.iter().all(u8::is_ascii_whitespace) => Ok(serde_json::Map::new()),
        Some(b) => match serde_json::from_slice(b) {
            Ok(serde_json::Value::Object(map)) => Ok(map),
            Ok(_) => Err(format!("{} is not a JSON object", path.display())),
            Err(e) => Err(format!("{} is not valid JSON: {e}", path.display())),
        },
    }
}

fn write_json(path: &Path, config: &serde_json::Map<String, serde_json::Value>) -> Result<(), String> {
    let text = serde_json::to_string_pretty(config).expect("serialize daemon.json");
    std::fs::write(path, text + "\n").map_err(|e| format!("cannot write {} (not writable here): {e}", path.display()))
}

/// Backup format: `present\n<original bytes>` or `absent\n`.
fn encode_backup(original: Option<&[u8]>) -> Vec<u8> {
    match original {
        Some(bytes) => [b"present\n".as_slice(), bytes].concat(),
        None => b"absent\n".to_vec(),
    }
}

fn decode_backup(saved: &[u8]) -> Result<Option<Vec<u8>>, String> {
    if let Some(bytes) = saved.strip_prefix(b"present\n".as_slice()) {
        Ok(Some(bytes.to_vec()))
    } else if saved == b"absent\n" {
        Ok(None)
    } else {
        Err("not a berth-e2e backup (expected `present` or `absent` on the first line)".into())
    }
}

/// Where dockerd looks for a registry's CA certificates (`<dir>/<host:port>/ca.crt`).
const CERTS_D: &str = "/etc/docker/certs.d";

/// While alive, dockerd trusts `ca.crt` for one registry host (`/etc/docker/certs.d/<host>/`,
/// read per connection, no reload needed). On drop the host's directory is removed, and
/// `certs.d` itself too if the guard created it: the daemon's configuration is as before.
pub struct CertsDirGuard {
    host_dir: PathBuf,
    created_certs_d: bool,
}

impl CertsDirGuard {
    /// Installs `ca` for `host` (`127.0.0.1:PORT`, a fresh port: no earlier entry exists).
    pub fn install(host: &str, ca: &Path) -> CertsDirGuard {
        let certs_d = Path::new(CERTS_D);
        let created_certs_d = !certs_d.exists();
        let host_dir = certs_d.join(host);
        assert!(!host_dir.exists(), "{} exists already", host_dir.display());
        let guard = CertsDirGuard {
            host_dir,
            created_certs_d,
        };
        std::fs::create_dir_all(&guard.host_dir).unwrap_or_else(|e| panic!("create {}: {e}", guard.host_dir.display()));
        std::fs::copy(ca, guard.host_dir.join("ca.crt"))
            .unwrap_or_else(|e| panic!("copy the CA to {}: {e}", guard.host_dir.display()));
        guard
    }
}

impl Drop for CertsDirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.host_dir);
        if self.created_certs_d {
            let _ = std::fs::remove_dir(CERTS_D);
        }
    }
}
