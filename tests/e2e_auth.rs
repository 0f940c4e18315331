//! End to end, "shared safely": berth (the real binary) listens on HTTPS only, with a
//! certificate from a CA the test makes with openssl, and with `[auth] htpasswd` users of its
//! own. Behind it are two real `docker-registry` upstreams: a public one, and a private one
//! that needs htpasswd credentials, which berth holds (`username`/`password_file`). With the
//! default access rules anonymous clients may pull only from the public upstream; berth's own
//! users may pull from both.
//!
//! Real clients authenticate to berth the way each does in production, trusting only the
//! test CA: skopeo `--src-creds`, `podman login`, `ctr --user` (hosts.toml `ca`), and the
//! Docker engine (`/etc/docker/certs.d/<host:port>/ca.crt`, removed after) with `docker login`.
//! Every pull checks the digests the client got. A pull that is refused must fail with an
//! authentication error and must not reach the private upstream at all.

use berth_testkit::common;
use berth_testkit::support;

use std::path::{Path, PathBuf};

use common::tls::TestCa;
use support::berth::{Berth, BerthConfig, TlsFiles};
use support::cmd::CmdRun;
use support::containerd::Containerd;
use support::docker::{self, CertsDirGuard, PulledImages};
use support::image::{self, Format, Image};
use support::podman::Podman;
use support::registry::Registry;
use support::skopeo::{assert_dir_has_image, run_skopeo, SkopeoRun};

const KIB: usize = 1024;
/// berth's own user (htpasswd on berth).
const USER: &str = "alice";
const PASSWORD: &str = "wonderland-3f1c";
/// The account berth pulls the private upstream with.
const UPSTREAM_USER: &str = "berth-robot";
const UPSTREAM_PASSWORD: &str = "robot-secret-77a2";
const PUBLIC_REPO: &str = "team/app";
const PRIVATE_REPO: &str = "team/secret";
const TAG: &str = "v1";

/// Both upstreams, berth over TLS, and the images they hold.
struct World {
    ca: TestCa,
    public: Registry,
    private: Registry,
    berth: Berth,
    app: Image,
    secret: Image,
    scratch: tempfile::TempDir,
}

impl World {
    fn start() -> World {
        let ca = TestCa::new("berth e2e auth CA");
        let server = ca.issue_server("berth");
        let scratch = tempfile::Builder::new()
            .prefix("berth-e2e-auth-")
            .tempdir()
            .expect("create the scratch dir");
        let mut rng = fastrand::Rng::new();
        let app = Image::generate(&mut rng, Format::DockerV2, "amd64", &[40 * KIB, 200 * KIB]);
        let secret = Image::generate(&mut rng, Format::Oci, "amd64", &[64 * KIB, 24 * KIB]);
        let public = Registry::start();
        image::push_image(&public.addr(), PUBLIC_REPO, TAG, &app);
        let mut private = Registry::start();
        image::push_image(&private.addr(), PRIVATE_REPO, TAG, &secret);
        private.require_htpasswd(UPSTREAM_USER, UPSTREAM_PASSWORD);
        assert_eq!(
            support::http::get(&private.addr(), &format!("/v2/{PRIVATE_REPO}/manifests/{TAG}"), &[])
                .expect("GET the private manifest anonymously")
                .status,
            401,
            "the private upstream must refuse anonymous pulls"
        );

        let htpasswd = scratch.path().join("htpasswd");
        let hash = bcrypt::hash(PASSWORD, 4).expect("bcrypt the test password");
        std::fs::write(&htpasswd, format!("{USER}:{hash}\n")).expect("write berth's htpasswd");
        let upstream_password = scratch.path().join("upstream-password");
        std::fs::write(&upstream_password, UPSTREAM_PASSWORD).expect("write the upstream password file");
        let config = BerthConfig::new(&public.url())
            .without_hub()
            .tls(TlsFiles {
                cert_file: server.cert.clone(),
                key_file: server.key.clone(),
                ca_file: ca.cert.clone(),
            })
            .extra(&format!(
                "[auth]\nhtpasswd = {htpasswd:?}\n\n\
                 [upstreams.public]\nurl = \"{}\"\naliases = [\"public.test\"]\ndefault = true\n\n\
                 [upstreams.private]\nurl = \"{}\"\naliases = [\"private.test\"]\n\
                 username = \"{UPSTREAM_USER}\"\npassword_file = {upstream_password:?}\n",
                public.url(),
                private.url()
            ));
        let berth = Berth::start_with(config);
        World {
            ca,
            public,
            private,
            berth,
            app,
            secret,
            scratch,
        }
    }

    fn public_ref(&self) -> String {
        format!("{}/public.test/{PUBLIC_REPO}:{TAG}", self.berth.addr())
    }

    fn private_ref(&self) -> String {
        format!("{}/private.test/{PRIVATE_REPO}:{TAG}", self.berth.addr())
    }

    /// Requests for the private repository that reached the private upstream.
    fn private_upstream_requests(&self) -> usize {
        self.private
            .requests_excluding_probes()
            .iter()
            .filter(|l| l.path.starts_with(&format!("/v2/{PRIVATE_REPO}/")))
            .count()
    }

    /// A directory holding only the test CA as `ca.crt` (skopeo's and podman's `--cert-dir`).
    fn cert_dir(&self) -> PathBuf {
        let dir = self.scratch.path().join("certs");
        std::fs::create_dir_all(&dir).expect("create the cert dir");
        std::fs::copy(&self.ca.cert, dir.join("ca.crt")).expect("copy the CA");
        dir
    }

    fn out(&self, label: &str) -> PathBuf {
        let out = self.scratch.path().join("out");
        std::fs::create_dir_all(&out).expect("create the output dir");
        out.join(label)
    }

    /// `skopeo copy` from berth over TLS, trusting only the test CA, with `creds` if given.
    fn skopeo(&self, reference: &str, creds: Option<&str>, label: &str) -> (SkopeoRun, PathBuf) {
        let dest = self.out(label);
        let mut args: Vec<String> = [
            "--insecure-policy",
            "--command-timeout",
            "120s",
            "copy",
            "--retry-times",
            "0",
        ]
        .map(str::to_string)
        .to_vec();
        args.extend(["--src-cert-dir".to_string(), self.cert_dir().display().to_string()]);
        if let Some(creds) = creds {
            args.extend(["--src-creds".to_string(), creds.to_string()]);
        }
        args.extend([format!("docker://{reference}"), format!("dir:{}", dest.display())]);
        (run_skopeo(&args), dest)
    }

    /// Asserts a refused pull failed for lack of authentication and that the private upstream
    /// saw no request meanwhile (`before`: its count when the pull started).
    fn assert_refused(&self, what: &str, output: &str, before: usize) {
        let lower = output.to_ascii_lowercase();
        assert!(
            [
                "unauthorized",
                "authentication required",
                "no basic auth credentials",
                "401"
            ]
            .iter()
            .any(|w| lower.contains(w)),
            "{what}: the failure must say authentication is needed:\n{output}"
        );
        assert_eq!(
            self.private_upstream_requests(),
            before,
            "{what}: a refused pull must not reach the private upstream\n{}",
            self.private.access_log_text()
        );
    }
}

fn combined(run: &CmdRun) -> String {
    format!("{}\n{}", run.stderr, run.stdout)
}

#[test]
fn skopeo_podman_and_ctr_pull_private_images_only_as_berths_users_over_tls() {
    let w = World::start();

    // skopeo: anonymous pulls the public image, not the private one; wrong creds are refused.
    let (run, dest) = w.skopeo(&w.public_ref(), None, "skopeo-public");
    run.assert_success("anonymous skopeo copy of the public image");
    assert_dir_has_image(&dest, &w.app);
    for (label, creds) in [
        ("skopeo-anonymous", None),
        ("skopeo-wrong", Some("alice:not-the-password")),
    ] {
        let before = w.private_upstream_requests();
        let (run, _) = w.skopeo(&w.private_ref(), creds, label);
        assert!(!run.success(), "{label}: skopeo must be refused the private image");
        w.assert_refused(label, &format!("{}\n{}", run.stderr, run.stdout), before);
    }
    let (run, dest) = w.skopeo(&w.private_ref(), Some(&format!("{USER}:{PASSWORD}")), "skopeo-creds");
    run.assert_success("skopeo copy --src-creds of the private image");
    assert_dir_has_image(&dest, &w.secret);

    // podman: login, pull, logout; after logout the pull is refused.
    let podman = Podman::new(&[]);
    let cert_dir = w.cert_dir().display().to_string();
    let host = w.berth.addr();
    let before = w.private_upstream_requests();
    let refused = podman.pull(&w.private_ref(), &["--cert-dir", &cert_dir]);
    assert!(
        !refused.success(),
        "podman without login must be refused the private image"
    );
    w.assert_refused("podman pull before login", &combined(&refused), before);
    podman
        .run(&["login", "--cert-dir", &cert_dir, "-u", USER, "-p", PASSWORD, &host])
        .assert_success("podman login to berth");
    podman
        .pull(&w.private_ref(), &["--cert-dir", &cert_dir])
        .assert_success("podman pull after login");
    let digest = podman.inspect(&w.private_ref(), "{{.Digest}}");
    assert_eq!(digest, w.secret.manifest.digest, "podman got the private manifest");
    podman.rmi(&w.private_ref());
    podman.run(&["logout", &host]).assert_success("podman logout");
    let before = w.private_upstream_requests();
    let refused = podman.pull(&w.private_ref(), &["--cert-dir", &cert_dir]);
    assert!(
        !refused.success(),
        "podman after logout must be refused the private image"
    );
    w.assert_refused("podman pull after logout", &combined(&refused), before);

    // ctr: hosts.toml names berth's HTTPS endpoint and the CA; --user authenticates.
    let ctd = Containerd::start();
    let hosts = ctd.scratch("certs.d");
    write_tls_hosts_toml(&hosts, &host, &w.ca.cert);
    let before = w.private_upstream_requests();
    let refused = ctd.pull(&hosts, &w.private_ref(), &[]);
    assert!(
        !refused.run.success(),
        "ctr without --user must be refused the private image"
    );
    w.assert_refused("ctr pull without --user", &combined(&refused.run), before);
    let creds = format!("{USER}:{PASSWORD}");
    ctd.pull(&hosts, &w.private_ref(), &["--user", &creds])
        .run
        .assert_success("ctr pull --user");
    assert_eq!(
        ctd.image_digest(&w.private_ref()).as_deref(),
        Some(w.secret.manifest.digest.as_str()),
        "ctr got the private manifest"
    );
    // Anonymous ctr still pulls the public image.
    ctd.pull(&hosts, &w.public_ref(), &[])
        .run
        .assert_success("anonymous ctr pull of the public image");

    // The public upstream served berth, never the private image's name.
    assert_eq!(
        w.public.count("GET", PRIVATE_REPO),
        0,
        "public upstream asked for the private repo"
    );
}

/// `<hosts_dir>/<host>/hosts.toml` for pulling `host` itself over HTTPS, trusting `ca`.
fn write_tls_hosts_toml(hosts_dir: &Path, host: &str, ca: &Path) {
    let dir = hosts_dir.join(host);
    std::fs::create_dir_all(&dir).expect("create the hosts.toml dir");
    let toml = format!(
        "server = \"https://{host}\"\n\n[host.\"https://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = {:?}\n",
        ca.display().to_string()
    );
    std::fs::write(dir.join("hosts.toml"), toml).expect("write hosts.toml");
}

#[test]
fn docker_logs_in_to_berth_then_pulls_the_private_image_over_tls() {
    docker::require_docker_engine();
    let _lock = docker::lock_daemon();
    let w = World::start();
    let host = w.berth.addr();
    let _certs = CertsDirGuard::install(&host, &w.ca.cert);
    // The client's credentials live in a config dir of the test's own.
    let config_dir = w.scratch.path().join("docker-config");
    std::fs::create_dir_all(&config_dir).expect("create the docker config dir");
    let config = config_dir.display().to_string();
    let mut pulled = PulledImages::default();
    pulled.track(&w.private_ref());
    pulled.track(&w.public_ref());

    let before = w.private_upstream_requests();
    let refused = docker::docker(&["--config", &config, "pull", &w.private_ref()]);
    assert!(
        !refused.success(),
        "docker pull without login must be refused the private image"
    );
    w.assert_refused("docker pull before login", &combined(&refused), before);
    docker::docker(&["--config", &config, "pull", &w.public_ref()])
        .assert_success("anonymous docker pull of the public image");

    let wrong = docker::docker(&[
        "--config",
        &config,
        "login",
        "-u",
        USER,
        "-p",
        "not-the-password",
        &host,
    ]);
    assert!(!wrong.success(), "docker login with a wrong password must fail");
    docker::docker(&["--config", &config, "login", "-u", USER, "-p", PASSWORD, &host])
        .assert_success("docker login to berth");
    docker::docker(&["--config", &config, "pull", &w.private_ref()]).assert_success("docker pull after login");
    let digests = docker::repo_digests(&w.private_ref());
    let want = format!("{host}/private.test/{PRIVATE_REPO}@{}", w.secret.manifest.digest);
    assert!(
        digests.contains(&want),
        "docker RepoDigests {digests:?} must contain {want}"
    );
    assert_eq!(
        docker::inspect(&w.private_ref(), "{{.Id}}"),
        w.secret.config.digest,
        "docker: the image ID is the private image's config digest"
    );
    docker::docker(&["--config", &config, "logout", &host]).assert_success("docker logout");
}
