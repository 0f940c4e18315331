//! `podman pull` with private state: vfs storage, `--root`/`--runroot`/`--tmpdir` under a
//! temp dir, and its own `registries.conf`, `storage.conf`, `containers.conf` and
//! `policy.json` (via `CONTAINERS_*` variables), so no global podman state is read or written.
//! Mirrors are path-prefix `[[registry.mirror]]` entries, the CRI-O/podman way.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use super::cmd::{self, CmdRun};
use super::require_tool;

/// Upper bound for one podman command.
const PODMAN_TIMEOUT: Duration = Duration::from_secs(180);

/// One `[[registry]]` entry: images under `prefix` come from `mirror` (e.g.
/// `127.0.0.1:PORT/ghcr.io`), else from `location` (a dead port in these tests).
#[derive(Debug, Clone)]
pub struct MirrorRule {
    pub prefix: String,
    pub location: String,
    pub mirror: String,
}

/// A podman whose whole state lives in a temp dir.
pub struct Podman {
    dir: TempDir,
}

impl Podman {
    pub fn new(rules: &[MirrorRule]) -> Podman {
        require_tool("podman");
        let dir = tempfile::Builder::new()
            .prefix("berth-e2e-podman-")
            .tempdir()
            .expect("create the podman temp dir");
        let p = Podman { dir };
        for sub in ["root", "runroot", "tmp", "config", "data", "runtime", "imagetmp"] {
            std::fs::create_dir_all(p.dir.path().join(sub)).expect("create a podman state dir");
        }
        let mut registries = String::from("unqualified-search-registries = []\nshort-name-mode = \"disabled\"\n");
        for rule in rules {
            registries.push_str(&format!(
                "\n[[registry]]\nprefix = \"{}\"\nlocation = \"{}\"\ninsecure = true\n\
                 [[registry.mirror]]\nlocation = \"{}\"\ninsecure = true\n",
                rule.prefix, rule.location, rule.mirror
            ));
        }
        std::fs::write(p.registries_conf(), registries).expect("write registries.conf");
        std::fs::write(
            p.dir.path().join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                p.path("root").display(),
                p.path("runroot").display()
            ),
        )
        .expect("write storage.conf");
        std::fs::write(
            p.dir.path().join("containers.conf"),
            format!(
                "[engine]\nevents_logger = \"none\"\ncgroup_manager = \"cgroupfs\"\ntmp_dir = \"{}\"\n\
                 image_copy_tmp_dir = \"{}\"\n",
                p.path("tmp").display(),
                p.path("imagetmp").display()
            ),
        )
        .expect("write containers.conf");
        std::fs::write(
            p.policy_json(),
            "{\"default\": [{\"type\": \"insecureAcceptAnything\"}]}\n",
        )
        .expect("write policy.json");
        p
    }

    /// `registries.conf` as written, for messages.
    pub fn registries_conf_text(&self) -> String {
        std::fs::read_to_string(self.registries_conf()).unwrap_or_default()
    }

    /// Runs `podman <global flags> <args>` with this instance's environment.
    pub fn run(&self, args: &[&str]) -> CmdRun {
        let mut command = Command::new("podman");
        command
            .env("CONTAINERS_REGISTRIES_CONF", self.registries_conf())
            .env("CONTAINERS_STORAGE_CONF", self.path("storage.conf"))
            .env("CONTAINERS_CONF", self.path("containers.conf"))
            .env("XDG_CONFIG_HOME", self.path("config"))
            .env("XDG_DATA_HOME", self.path("data"))
            .env("XDG_RUNTIME_DIR", self.path("runtime"))
            .env("TMPDIR", self.path("imagetmp"))
            .arg("--root")
            .arg(self.path("root"))
            .arg("--runroot")
            .arg(self.path("runroot"))
            .arg("--tmpdir")
            .arg(self.path("tmp"))
            .arg("--storage-driver")
            .arg("vfs")
            .arg("--events-backend")
            .arg("none")
            .arg("--cgroup-manager")
            .arg("cgroupfs")
            .args(args);
        cmd::run(&mut command, PODMAN_TIMEOUT)
    }

    /// `podman pull --signature-policy <policy.json> <extra> <reference>`.
    pub fn pull(&self, reference: &str, extra: &[&str]) -> CmdRun {
        let policy = self.policy_json().display().to_string();
        let mut args = vec!["pull", "--signature-policy", &policy];
        args.extend_from_slice(extra);
        args.push(reference);
        self.run(&args)
    }

    /// `podman image inspect --format <format> <reference>`, trimmed.
    pub fn inspect(&self, reference: &str, format: &str) -> String {
        let run = self.run(&["image", "inspect", "--format", format, reference]);
        run.assert_success(&format!("podman image inspect {reference}"));
        run.stdout.trim().to_string()
    }

    /// Removes image `reference` (and its layers) from local storage.
    pub fn rmi(&self, reference: &str) {
        self.run(&["rmi", reference])
            .assert_success(&format!("podman rmi {reference}"));
    }

    fn registries_conf(&self) -> PathBuf {
        self.path("registries.conf")
    }

    fn policy_json(&self) -> PathBuf {
        self.path("policy.json")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
