//! A private `containerd` daemon (root, state, socket and `opt` under a temp dir, CRI off)
//! and `ctr` pulls through a `--hosts-dir` of `hosts.toml` files, as a node configured with
//! `config_path` would pull. `ctr` resolves and fetches in its own process, so
//! `--http-dump` shows every registry request it makes (with containerd's `?ns=`).

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::cmd::{self, CmdRun};
use super::{kill_and_wait, require_tool, tail_file, wait_until_ready};

/// How long containerd may take to open its socket.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound for one `ctr` command.
const CTR_TIMEOUT: Duration = Duration::from_secs(180);
/// The containerd namespace the tests use (not `default`, not docker's `moby`).
pub const NAMESPACE: &str = "berth-e2e";

/// One registry request `ctr --http-dump` reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpedRequest {
    pub method: String,
    /// Request target: path and query, e.g. `/v2/org/tool/manifests/v1?ns=ghcr.io`.
    pub target: String,
    /// The `Host:` header.
    pub host: String,
}

/// Outcome of one `ctr image pull --http-dump`.
#[derive(Debug)]
pub struct CtrPull {
    pub run: CmdRun,
    pub requests: Vec<DumpedRequest>,
}

/// A running containerd with its own state; killed on drop.
pub struct Containerd {
    dir: TempDir,
    child: Option<Child>,
}

impl Containerd {
    pub fn start() -> Containerd {
        let containerd = require_tool("containerd");
        require_tool("ctr");
        let dir = tempfile::Builder::new()
            .prefix("berth-e2e-ctd-")
            .tempdir()
            .expect("create the containerd temp dir");
        let mut c = Containerd { dir, child: None };
        let config = format!(
            "version = 2\n\
             root = \"{root}\"\n\
             state = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.snapshotter.v1.devmapper\"]\n\
             [grpc]\n  address = \"{sock}\"\n\
             [ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [debug]\n  address = \"\"\n\
             [metrics]\n  address = \"\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{opt}\"\n",
            root = c.dir.path().join("root").display(),
            state = c.dir.path().join("state").display(),
            sock = c.socket().display(),
            opt = c.dir.path().join("opt").display(),
        );
        std::fs::write(c.config_path(), config).expect("write the containerd config");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(c.log_path())
            .expect("open the containerd log");
        let mut child = Command::new(containerd)
            .arg("--config")
            .arg(c.config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the containerd log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn containerd");
        let sock = c.socket();
        let ready = wait_until_ready(&mut child, READY_TIMEOUT, || {
            UnixStream::connect(&sock)
                .map(drop)
                .map_err(|e| format!("connect {}: {e}", sock.display()))
        });
        c.child = Some(child);
        if let Err(e) = ready {
            panic!(
                "containerd did not open {} ({e:?}) within {READY_TIMEOUT:?}\n--- containerd log ---\n{}",
                sock.display(),
                c.log_text()
            );
        }
        c
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// A fresh directory under this daemon's temp dir, e.g. for a hosts dir.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        path
    }

    /// Runs `ctr --address SOCK --namespace berth-e2e <args>`.
    pub fn ctr(&self, args: &[&str]) -> CmdRun {
        let mut command = Command::new("ctr");
        command
            .arg("--address")
            .arg(self.socket())
            .arg("--namespace")
            .arg(NAMESPACE)
            .args(args);
        cmd::run(&mut command, CTR_TIMEOUT)
    }

    /// `ctr image pull --http-dump --hosts-dir <hosts_dir> --snapshotter native <extra> <reference>`.
    /// http or https comes from each host URL in the hosts dir. The native snapshotter
    /// unpacks layers into plain directories, which works on any filesystem.
    pub fn pull(&self, hosts_dir: &Path, reference: &str, extra: &[&str]) -> CtrPull {
        let hosts = hosts_dir.display().to_string();
        let mut args = vec![
            "image",
            "pull",
            "--http-dump",
            "--hosts-dir",
            &hosts,
            "--snapshotter",
            "native",
        ];
        args.extend_from_slice(extra);
        args.push(reference);
        let run = self.ctr(&args);
        let requests = parse_http_dump(&run.stdout)
            .into_iter()
            .chain(parse_http_dump(&run.stderr))
            .collect();
        CtrPull { run, requests }
    }

    /// The target digest of image `reference` per `ctr images ls`, or `None` if absent.
    pub fn image_digest(&self, reference: &str) -> Option<String> {
        let run = self.ctr(&["images", "ls"]);
        run.assert_success("ctr images ls");
        // REF TYPE DIGEST SIZE PLATFORMS LABELS
        run.stdout
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|cols| cols.first() == Some(&reference))
            .map(|cols| cols.get(2).expect("ctr images ls has a DIGEST column").to_string())
    }

    /// Every digest in the content store (`ctr content ls -q`).
    pub fn content_digests(&self) -> BTreeSet<String> {
        let run = self.ctr(&["content", "ls", "-q"]);
        run.assert_success("ctr content ls -q");
        run.stdout
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Removes image `reference` and garbage-collects its content and snapshots now.
    pub fn remove_image(&self, reference: &str) {
        self.ctr(&["images", "rm", "--sync", reference])
            .assert_success(&format!("ctr images rm --sync {reference}"));
    }

    pub fn log_text(&self) -> String {
        tail_file(&self.log_path(), 80)
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("containerd.log")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_wait(&mut child);
        }
        if std::thread::panicking() {
            eprintln!("--- containerd log ---\n{}", self.log_text());
        }
    }
}

/// Writes `<hosts_dir>/<registry>/hosts.toml` sending pulls and resolves to `mirror_url`
/// (e.g. `http://127.0.0.1:PORT`). `server`, if given, is the fallback after the mirror;
/// a dead loopback port makes sure a failing mirror cannot be hidden by a fallback.
pub fn write_hosts_toml(hosts_dir: &Path, registry: &str, server: Option<&str>, mirror_url: &str) {
    let dir = hosts_dir.join(registry);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let mut toml = String::new();
    if let Some(server) = server {
        toml.push_str(&format!("server = \"{server}\"\n\n"));
    }
    toml.push_str(&format!(
        "[host.\"{mirror_url}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    ));
    std::fs::write(dir.join("hosts.toml"), toml).expect("write hosts.toml");
}

/// Parses `ctr --http-dump` output: logrus lines `msg="GET /v2/...?ns=x HTTP/1.1"` followed
/// by header lines `msg="Host: 127.0.0.1:PORT"`.
fn parse_http_dump(text: &str) -> Vec<DumpedRequest> {
    let mut out: Vec<DumpedRequest> = Vec::new();
    for line in text.lines() {
        let Some((_, msg)) = line.split_once("msg=\"") else {
            continue;
        };
        let msg = msg.strip_suffix('"').unwrap_or(msg);
        if let Some(host) = msg.strip_prefix("Host: ") {
            if let Some(last) = out.last_mut() {
                if last.host.is_empty() {
                    last.host = host.to_string();
                }
            }
            continue;
        }
        let mut parts = msg.split(' ');
        if let (Some(method), Some(target), Some(proto), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        {
            if ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"].contains(&method) && proto.starts_with("HTTP/") {
                out.push(DumpedRequest {
                    method: method.to_string(),
                    target: target.to_string(),
                    host: String::new(),
                });
            }
        }
    }
    out
}

#[test]
fn http_dump_parses_when_ctr_1_6_logrus_format() {
    let text = "time=\"2026-11-25T19:31:57Z\" level=info msg=\"HEAD /v2/org/tool/manifests/v1?ns=ghcr.io HTTP/1.1\"\n\
                time=\"2026-11-25T19:31:57Z\" level=info msg=\"Host: 127.0.0.1:5100\"\n\
                time=\"2026-11-25T19:31:57Z\" level=info msg=\"HTTP/1.1 200 OK\"\n\
                time=\"2026-11-25T19:31:57Z\" level=info msg=\"Host: example\"\n";
    let parsed = parse_http_dump(text);
    assert_eq!(
        parsed,
        vec![DumpedRequest {
            method: "HEAD".into(),
            target: "/v2/org/tool/manifests/v1?ns=ghcr.io".into(),
            host: "127.0.0.1:5100".into(),
        }]
    );
}
