//! End to end: the container image. `deploy/Dockerfile` is built by the machine's Docker engine
//! from the prebuilt release binary (`--build-arg BERTH_BINARY=...`) on a Debian bookworm base
//! image the test makes itself (`debootstrap --variant=minbase` + `docker import`, cached in
//! /var/cache/berth-test and as a local image), so nothing is pulled from a registry. The
//! image then runs on the host network against a real `docker-registry` upstream on loopback,
//! and `deploy/compose.yaml` is started as shipped.
//!
//! Run under the e2e lock: `flock /tmp/berth-e2e.lock cargo nextest run --release --test e2e_image`.

use berth_testkit::support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::cmd::{self, CmdRun};
use support::docker::{self, docker, lock_daemon, lock_file};
use support::image::{self, Format, Image};
use support::registry::Registry;
use support::skopeo::{assert_dir_has_image, skopeo_copy};
use support::{free_port, require_tool, sha256_digest};

/// Where the debootstrapped base file system is kept between runs.
const CACHE_DIR: &str = "/var/cache/berth-test";
/// The locally made base image: Debian bookworm minbase plus binutils (objcopy for the build
/// stage's strip). Bump the suffix when the recipe changes.
const BASE_IMAGE: &str = "berth-test/bookworm-minbase:binutils-1";
const DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";
/// Repository of the images built here; the tag is derived from the build inputs.
const IMAGE_REPO: &str = "berth-test/berth";
/// debootstrap downloads ~50 MB of packages; an image build copies and commits ~70 MB.
const SLOW_STEP: Duration = Duration::from_secs(900);
/// How long a started container may take to report healthy.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(120);
/// Serialises making the base image and building the berth image. Building does not need the
/// Docker daemon lock (that guards the daemon's registry-mirrors config), so tests that do
/// need it are not kept waiting through a debootstrap or an image build.
const BUILD_LOCK: &str = "/tmp/berth-e2e-image-build.lock";
/// The uid:gid the image runs as.
const NONROOT_UID: &str = "65532";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command, timeout: Duration, what: &str) -> CmdRun {
    let run = cmd::run(cmd, timeout);
    run.assert_success(what);
    run
}

/// The base image, made once: from the cached root file system tarball, or by debootstrap.
fn base_image() -> &'static str {
    if docker(&["image", "inspect", BASE_IMAGE]).success() {
        return BASE_IMAGE;
    }
    let cache = Path::new(CACHE_DIR);
    let tarball = cache.join("bookworm-minbase-binutils-1.tar");
    if !tarball.exists() {
        require_tool("tar");
        let debootstrap = ["/usr/sbin/debootstrap", "/usr/bin/debootstrap"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or_else(|| {
                panic!("debootstrap is not installed: run scripts/test.sh (apt-get install debootstrap)")
            });
        std::fs::create_dir_all(cache).unwrap_or_else(|e| panic!("create {CACHE_DIR}: {e}"));
        let rootfs = cache.join("rootfs.tmp");
        let _ = std::fs::remove_dir_all(&rootfs);
        run(
            Command::new(debootstrap)
                .args(["--variant=minbase", "--include=binutils", "bookworm"])
                .arg(&rootfs)
                .arg(DEBIAN_MIRROR),
            SLOW_STEP,
            "debootstrap the base image's root file system",
        );
        let partial = cache.join("bookworm-minbase-binutils-1.tar.tmp");
        run(
            Command::new("tar")
                .arg("-C")
                .arg(&rootfs)
                .args(["--exclude=./var/cache/apt/archives/*.deb", "-cf"])
                .arg(&partial)
                .arg("."),
            SLOW_STEP,
            "tar the root file system",
        );
        std::fs::rename(&partial, &tarball).expect("move the finished tarball into place");
        std::fs::remove_dir_all(&rootfs).expect("remove the unpacked root file system");
    }
    run(
        Command::new("docker").args(["import"]).arg(&tarball).arg(BASE_IMAGE),
        SLOW_STEP,
        "docker import the base image",
    );
    BASE_IMAGE
}

/// The berth image built from the prebuilt binary of this test run, tagged by a digest of the
/// build inputs so the tests of one run share it. Older test images are removed.
fn berth_image() -> String {
    let _build = lock_file(Path::new(BUILD_LOCK));
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_berth"));
    let inputs = [
        std::fs::read(&binary).expect("read the berth binary"),
        std::fs::read(repo_root().join("deploy/Dockerfile")).expect("read deploy/Dockerfile"),
        std::fs::read(repo_root().join("deploy/config.toml")).expect("read deploy/config.toml"),
    ]
    .concat();
    let tag = format!("{IMAGE_REPO}:{}", &sha256_digest(&inputs)["sha256:".len()..][..16]);
    if docker(&["image", "inspect", &tag]).success() {
        return tag;
    }
    for old in docker(&["images", "--format", "{{.Repository}}:{{.Tag}}", IMAGE_REPO])
        .stdout
        .lines()
    {
        let _ = docker(&["rmi", "-f", old]);
    }
    let base = base_image();
    // The build context as the repository would give it: deploy/ and target/release/berth.
    let context = tempfile::Builder::new()
        .prefix("berth-e2e-image-ctx-")
        .tempdir()
        .expect("context dir");
    std::fs::create_dir_all(context.path().join("deploy")).expect("mkdir deploy");
    std::fs::create_dir_all(context.path().join("target/release")).expect("mkdir target/release");
    for file in ["deploy/Dockerfile", "deploy/config.toml"] {
        std::fs::copy(repo_root().join(file), context.path().join(file)).expect("copy into the build context");
    }
    std::fs::copy(&binary, context.path().join("target/release/berth")).expect("copy the binary");
    let base_arg = |name: &str| format!("{name}={base}");
    run(
        Command::new("docker")
            .current_dir(context.path())
            .args(["build", "--force-rm", "-f", "deploy/Dockerfile", "-t", &tag])
            .args(["--build-arg", "BERTH_BINARY=target/release/berth"])
            .args(["--build-arg", &base_arg("RUST_IMAGE")])
            .args(["--build-arg", &base_arg("RUNTIME_IMAGE")])
            .args(["--build-arg", &base_arg("DISTROLESS_IMAGE")])
            // No apt-get in the runtime stage: the test has no network beyond the package mirror.
            .args(["--build-arg", "DEBUG_PACKAGES=", "."]),
        SLOW_STEP,
        "docker build deploy/Dockerfile from the prebuilt binary",
    );
    tag
}

/// Removes the container (and its anonymous volume) on drop, whatever the test's outcome.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", "-v", &self.0]);
    }
}

fn inspect_container(name: &str, format: &str) -> String {
    let run = docker(&["inspect", "--format", format, name]);
    run.assert_success(&format!("docker inspect {name}"));
    run.stdout.trim().to_string()
}

/// Polls the container's health until `healthy`; fails on `unhealthy` or exit.
fn wait_healthy(name: &str) {
    let deadline = Instant::now() + HEALTHY_TIMEOUT;
    loop {
        let state = inspect_container(
            name,
            "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}",
        );
        match state.split_once(' ') {
            Some((_, "healthy")) => return,
            Some(("running", "starting")) if Instant::now() < deadline => {}
            _ => panic!(
                "container {name} did not become healthy: {state}\n--- logs ---\n{}",
                docker(&["logs", "--tail", "50", name]).describe()
            ),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The real uid of the container's main process, read from the host's /proc.
fn main_process_uid(name: &str) -> String {
    let pid = inspect_container(name, "{{.State.Pid}}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read the container process status");
    let uids = status.lines().find_map(|l| l.strip_prefix("Uid:")).expect("Uid line");
    uids.split_whitespace().next().expect("real uid").to_string()
}

/// Section names of the ELF file at `path` (readelf from binutils, which the Rust toolchain
/// needs as its linker's companion).
fn elf_sections(path: &Path) -> Vec<String> {
    let out = run(
        Command::new("readelf").args(["-S", "--wide"]).arg(path),
        Duration::from_secs(30),
        "readelf -S",
    );
    out.stdout
        .lines()
        .filter_map(|l| {
            l.split_once("] ")
                .map(|(_, rest)| rest.split_whitespace().next().unwrap_or("").to_string())
        })
        .collect()
}

#[test]
fn container_image_serves_a_pull_as_non_root_when_built_from_the_prebuilt_binary() {
    docker::require_docker_engine();
    let tag = berth_image();
    let _daemon = lock_daemon();

    // The binary in the image carries no debug info; the prebuilt one (Cargo's profile) does.
    let scratch = tempfile::Builder::new()
        .prefix("berth-e2e-image-")
        .tempdir()
        .expect("scratch dir");
    let created = docker(&["create", &tag]);
    created.assert_success("docker create");
    let probe = Container(created.stdout.trim().to_string());
    let in_image = scratch.path().join("berth-in-image");
    docker(&[
        "cp",
        &format!("{}:/usr/local/bin/berth", probe.0),
        &in_image.display().to_string(),
    ])
    .assert_success("docker cp the binary");
    drop(probe);
    let prebuilt = PathBuf::from(env!("CARGO_BIN_EXE_berth"));
    // .debug_gdb_scripts is a loaded section (gdb pretty-printer hints), not debug info.
    let debug = |p: &Path| {
        elf_sections(p)
            .into_iter()
            .filter(|s| s.starts_with(".debug_") && s != ".debug_gdb_scripts")
            .collect::<Vec<_>>()
    };
    assert!(
        !debug(&prebuilt).is_empty(),
        "the prebuilt binary should have debug sections (Cargo profile)"
    );
    assert_eq!(
        debug(&in_image),
        Vec::<String>::new(),
        "the image's binary must be stripped of debug info"
    );
    let size = |p: &Path| std::fs::metadata(p).expect("binary size").len();
    eprintln!(
        "binary: prebuilt {} bytes, in the image {} bytes",
        size(&prebuilt),
        size(&in_image)
    );

    let upstream = Registry::start();
    let mut rng = fastrand::Rng::new();
    let alpha = Image::generate(&mut rng, Format::DockerV2, "amd64", &[16 * 1024, 512 * 1024]);
    image::push_image(&upstream.addr(), "library/alpha", "v1", &alpha);

    let port = free_port();
    let metrics_port = free_port();
    let name = format!("berth-e2e-image-{}", std::process::id());
    let _ = docker(&["rm", "-f", "-v", &name]);
    let container = Container(name.clone());
    let listen = format!("BERTH_SERVER__LISTEN=127.0.0.1:{port}");
    let metrics = format!("BERTH_METRICS__LISTEN=127.0.0.1:{metrics_port}");
    let upstream_url = format!("BERTH_UPSTREAMS__DOCKERHUB__URL={}", upstream.url());
    // As compose.yaml runs it: read-only root, /tmp tmpfs, no capabilities; the health check
    // command comes from the image, only its interval is shortened.
    docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "host",
        "--read-only",
        "--tmpfs",
        "/tmp",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges:true",
        "--health-interval",
        "1s",
        "-e",
        &listen,
        "-e",
        &metrics,
        "-e",
        &upstream_url,
        &tag,
    ])
    .assert_success("docker run the image");
    wait_healthy(&name);
    assert_eq!(
        main_process_uid(&name),
        NONROOT_UID,
        "berth must run as the non-root user"
    );

    let dest = scratch.path().join("pulled");
    skopeo_copy(&format!("127.0.0.1:{port}/library/alpha:v1"), &dest, &[])
        .assert_success("skopeo pull through the container");
    assert_dir_has_image(&dest, &alpha);
    assert!(
        upstream.count("GET", "/blobs/") >= 1,
        "the pull must have gone through berth to the upstream"
    );

    docker(&["stop", "--time", "75", &name]).assert_success("docker stop");
    let exit = inspect_container(&name, "{{.State.ExitCode}}");
    assert_eq!(
        exit,
        "0",
        "berth must exit 0 on docker stop (SIGTERM)\n--- logs ---\n{}",
        docker(&["logs", "--tail", "30", &name]).describe()
    );
    drop(container);
}

/// A docker-compose project of deploy/compose.yaml, taken down (with its volume) on drop.
struct ComposeProject {
    compose: PathBuf,
    name: String,
    image: String,
    port: u16,
    metrics_port: u16,
}

impl ComposeProject {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.compose);
        c.current_dir(repo_root().join("deploy"))
            .args(["-p", &self.name, "-f", "compose.yaml"])
            .args(args)
            .env("BERTH_IMAGE", &self.image)
            .env("BERTH_PORT", self.port.to_string())
            .env("BERTH_METRICS_PORT", self.metrics_port.to_string());
        c
    }
}

impl Drop for ComposeProject {
    fn drop(&mut self) {
        let _ = cmd::run(&mut self.command(&["down", "-v", "--timeout", "75"]), SLOW_STEP);
    }
}

#[test]
fn compose_file_starts_healthy_when_run_as_shipped_on_a_default_docker() {
    docker::require_docker_engine();
    let compose = require_tool("docker-compose");
    let image = berth_image();
    let _daemon = lock_daemon();
    let project = ComposeProject {
        compose,
        name: format!("berthe2e{}", std::process::id()),
        image,
        port: free_port(),
        metrics_port: free_port(),
    };
    // As shipped (ulimits, security options, health check, volume); only the image and the host
    // ports are chosen, through the file's variables.
    run(
        &mut project.command(&["up", "-d", "--no-build"]),
        SLOW_STEP,
        "docker-compose up",
    );
    let id = run(
        &mut project.command(&["ps", "-q", "berth"]),
        Duration::from_secs(60),
        "docker-compose ps",
    )
    .stdout;
    let id = id.trim();
    assert!(!id.is_empty(), "docker-compose created no berth container");
    wait_healthy(id);
    assert_eq!(main_process_uid(id), NONROOT_UID);
}
