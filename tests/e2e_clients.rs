//! End to end, "every client, many upstreams": one berth in front of two real upstream
//! registries, one configured as `docker.io` (the default), the other as `ghcr.io`. Both hold
//! the SAME repository names (`library/app:v1`, `org/tool:v1`) with DIFFERENT content, so a
//! pull that reaches the wrong upstream gets the wrong digest.
//!
//! Real clients pull through berth the way each is configured in production:
//! - containerd (`ctr` with a `hosts.toml` dir; sends `?ns=<registry>`), per registry and
//!   with one `_default` file;
//! - podman (`registries.conf` path-prefix mirrors `127.0.0.1:PORT/ghcr.io`; no `ns`);
//! - skopeo (`docker://127.0.0.1:PORT/ghcr.io/...`, the prefix form);
//! - the Docker engine, directly (`docker pull 127.0.0.1:PORT/...`) and as dockerd's
//!   `registry-mirrors` (no prefix, no `ns`: berth's default upstream).
//!
//! Every pull checks the digests the client reports, that berth served the blobs (berth's
//! request log), and from each upstream's access log that: the other registry got zero
//! requests; a cold pull fetched each blob of the image exactly once and nothing outside the
//! repository; a second pull (after the client dropped its local copy) made no upstream
//! request at all. Index pulls for one platform must never fetch the other platform's blobs.
//! Every "fallback" (`server`, `location`) is a dead loopback port, so a pull can only succeed
//! through berth.

use berth_testkit::support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::berth::{Berth, BerthConfig, BerthRequest};
use support::containerd::{self, Containerd};
use support::docker::{self, MirrorGuard, PulledImages};
use support::image::{self, Format, Image, Index};
use support::podman::{MirrorRule, Podman};
use support::registry::{AccessLine, Registry};
use support::skopeo::{assert_dir_has_image, skopeo_copy};

const KIB: usize = 1024;
const APP: &str = "library/app";
const TOOL: &str = "org/tool";
/// A linux/amd64 + linux/arm64 index, on the ghcr.io upstream only.
const MULTI: &str = "org/multi";
const TAG: &str = "v1";

/// Which upstream registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Up {
    /// Configured with alias `docker.io`, the default upstream.
    Hub,
    /// Configured with alias `ghcr.io`.
    Ghcr,
}

impl Up {
    fn alias(self) -> &'static str {
        match self {
            Up::Hub => "docker.io",
            Up::Ghcr => "ghcr.io",
        }
    }

    fn other(self) -> Up {
        match self {
            Up::Hub => Up::Ghcr,
            Up::Ghcr => Up::Hub,
        }
    }
}

/// Every (registry, repository) pair a client pulls: each name exists on both registries.
const CASES: [(Up, &str); 4] = [(Up::Hub, APP), (Up::Ghcr, TOOL), (Up::Ghcr, APP), (Up::Hub, TOOL)];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Round {
    /// berth has never seen the image.
    Cold,
    /// Same image again, within `manifest_ttl`, after the client dropped its local copy.
    Warm,
}

/// Positions in the three logs, taken before a pull.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mark {
    hub: usize,
    ghcr: usize,
    berth: usize,
}

/// Two upstreams with same-named, different images, and one berth in front of both.
struct World {
    hub: Registry,
    ghcr: Registry,
    images: Vec<(Up, &'static str, Image)>,
    multi: Index,
    berth: Berth,
    /// A loopback port nothing listens on: the fallback that must never be needed.
    dead_port: u16,
    scratch: tempfile::TempDir,
}

impl World {
    fn start() -> World {
        let hub = Registry::start();
        let ghcr = Registry::start();
        let mut rng = fastrand::Rng::new();
        let images = vec![
            (
                Up::Hub,
                APP,
                Image::generate(&mut rng, Format::DockerV2, "amd64", &[48 * KIB, 320 * KIB]),
            ),
            (
                Up::Hub,
                TOOL,
                Image::generate(&mut rng, Format::DockerV2, "amd64", &[24 * KIB]),
            ),
            (
                Up::Ghcr,
                APP,
                Image::generate(&mut rng, Format::Oci, "amd64", &[40 * KIB, 200 * KIB]),
            ),
            (
                Up::Ghcr,
                TOOL,
                Image::generate(&mut rng, Format::Oci, "amd64", &[16 * KIB, 128 * KIB, 8 * KIB]),
            ),
        ];
        let multi = Index::generate_two_platform(&mut rng, &[32 * KIB, 160 * KIB]);
        for (up, repo, image) in &images {
            let registry = match up {
                Up::Hub => &hub,
                Up::Ghcr => &ghcr,
            };
            image::push_image(&registry.addr(), repo, TAG, image);
        }
        image::push_index(&ghcr.addr(), MULTI, TAG, &multi);
        let config = BerthConfig::new(&hub.url()).extra(&format!(
            "[upstreams.ghcr]\nurl = \"{}\"\naliases = [\"ghcr.io\"]\n",
            ghcr.url()
        ));
        let berth = Berth::start_with(config);
        let scratch = tempfile::Builder::new()
            .prefix("berth-e2e-clients-")
            .tempdir()
            .expect("create the scratch dir");
        World {
            hub,
            ghcr,
            images,
            multi,
            berth,
            dead_port: support::free_port(),
            scratch,
        }
    }

    fn registry(&self, up: Up) -> &Registry {
        match up {
            Up::Hub => &self.hub,
            Up::Ghcr => &self.ghcr,
        }
    }

    fn image(&self, up: Up, repo: &str) -> &Image {
        self.images
            .iter()
            .find(|(u, r, _)| *u == up && *r == repo)
            .map(|(_, _, image)| image)
            .unwrap_or_else(|| panic!("no image {repo} on {up:?}"))
    }

    /// `http://127.0.0.1:PORT` of berth.
    fn berth_url(&self) -> String {
        format!("http://{}", self.berth.addr())
    }

    fn dead_addr(&self) -> String {
        format!("127.0.0.1:{}", self.dead_port)
    }

    fn dead_url(&self) -> String {
        format!("http://{}", self.dead_addr())
    }

    /// Waits until no log grows any more (the last line of a response can land just after
    /// the client finished), then returns the log positions.
    fn mark(&self) -> Mark {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut last = self.positions();
        let mut stable = 0;
        while stable < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            let now = self.positions();
            if now == last {
                stable += 1;
            } else {
                stable = 0;
                last = now;
            }
        }
        last
    }

    fn positions(&self) -> Mark {
        Mark {
            hub: self.hub.access_log().len(),
            ghcr: self.ghcr.access_log().len(),
            berth: self.berth.requests().len(),
        }
    }

    /// Upstream requests (not the harness's own) after `since`.
    fn upstream_since(&self, up: Up, since: &Mark) -> Vec<AccessLine> {
        let from = match up {
            Up::Hub => since.hub,
            Up::Ghcr => since.ghcr,
        };
        self.registry(up)
            .access_log()
            .into_iter()
            .skip(from)
            .filter(|l| l.user_agent != "berth-e2e")
            .collect()
    }

    fn berth_since(&self, since: &Mark) -> Vec<BerthRequest> {
        self.berth.requests().into_iter().skip(since.berth).collect()
    }

    /// The checks every pull of `repo` from `up` must pass, from the logs since `before`:
    /// the other upstream saw nothing; berth served every blob of `image`; on a cold pull the
    /// upstream served each blob exactly once and nothing outside `repo`, on a warm pull nothing.
    fn check_pull(&self, client: &str, up: Up, repo: &str, image: &Image, before: &Mark, round: Round) {
        let what = format!("{client}: {round:?} pull of {}/{repo}:{TAG}", up.alias());
        let after = self.mark();
        let other = self.upstream_since(up.other(), before);
        assert!(
            other.is_empty(),
            "{what} must make zero requests to the {} upstream; it got:\n{}",
            up.other().alias(),
            show(&other)
        );
        let upstream = self.upstream_since(up, before);
        println!(
            "{what}: {} berth request(s), {} {} upstream request(s)",
            after.berth - before.berth,
            upstream.len(),
            up.alias()
        );
        let stray: Vec<AccessLine> = upstream
            .iter()
            .filter(|l| !l.path.starts_with(&format!("/v2/{repo}/")))
            .cloned()
            .collect();
        assert!(
            stray.is_empty(),
            "{what}: berth requested paths outside /v2/{repo}/ from the {} upstream:\n{}",
            up.alias(),
            show(&stray)
        );
        match round {
            Round::Cold => {
                for blob in image.blobs() {
                    let gets = upstream
                        .iter()
                        .filter(|l| {
                            l.method == "GET" && l.path.starts_with(&format!("/v2/{repo}/blobs/{}", blob.digest))
                        })
                        .count();
                    assert_eq!(
                        gets,
                        1,
                        "{what}: blob {} ({} bytes) must be fetched from the {} upstream exactly once; \
                         upstream requests:\n{}",
                        blob.digest,
                        blob.size(),
                        up.alias(),
                        show(&upstream)
                    );
                }
                let blob_gets = upstream
                    .iter()
                    .filter(|l| l.method == "GET" && l.path.contains("/blobs/"))
                    .count();
                assert_eq!(
                    blob_gets,
                    image.blobs().len(),
                    "{what}: only the image's own blobs may be fetched; upstream requests:\n{}",
                    show(&upstream)
                );
            }
            Round::Warm => assert!(
                upstream.is_empty(),
                "{what}: a second pull within manifest_ttl must make no upstream request; got:\n{}",
                show(&upstream)
            ),
        }
        self.assert_berth_served_blobs(&what, repo, image, before);
    }

    /// berth's request log shows a successful GET of every blob of `image` since `before`:
    /// the client really fetched through berth (on a warm pull: from berth's cache).
    fn assert_berth_served_blobs(&self, what: &str, repo: &str, image: &Image, before: &Mark) {
        let served = self.berth_since(before);
        for blob in image.blobs() {
            let suffix = format!("/{repo}/blobs/{}", blob.digest);
            assert!(
                served
                    .iter()
                    .any(|r| r.method == "GET" && r.status == 200 && r.path.ends_with(&suffix)),
                "{what}: berth's log shows no successful GET of blob {}; berth requests:\n{}",
                blob.digest,
                show_berth(&served)
            );
        }
    }

    /// After a pull of linux/arm64 from the `org/multi` index: the arm64 child's config and
    /// layers were fetched from upstream exactly once; nothing of the amd64 child (manifest,
    /// config, layers) was requested at all; the docker.io upstream saw nothing.
    fn check_arm64_only(&self, client: &str, before: &Mark) {
        let what = format!("{client}: linux/arm64 pull of ghcr.io/{MULTI}:{TAG}");
        self.mark();
        let hub = self.upstream_since(Up::Hub, before);
        assert!(
            hub.is_empty(),
            "{what}: docker.io upstream must see nothing:\n{}",
            show(&hub)
        );
        let upstream = self.upstream_since(Up::Ghcr, before);
        println!("{what}: ghcr.io upstream requests:\n{}", show(&upstream));
        let stray: Vec<AccessLine> = upstream
            .iter()
            .filter(|l| !l.path.starts_with(&format!("/v2/{MULTI}/")))
            .cloned()
            .collect();
        assert!(stray.is_empty(), "{what}: requests outside {MULTI}:\n{}", show(&stray));
        let arm64 = self.multi.child("arm64");
        let amd64 = self.multi.child("amd64");
        for blob in arm64.blobs() {
            let gets = upstream
                .iter()
                .filter(|l| l.method == "GET" && l.path.starts_with(&format!("/v2/{MULTI}/blobs/{}", blob.digest)))
                .count();
            assert_eq!(
                gets,
                1,
                "{what}: arm64 blob {} must be fetched from upstream exactly once:\n{}",
                blob.digest,
                show(&upstream)
            );
        }
        let amd64_digests: Vec<&str> = std::iter::once(&amd64.manifest)
            .chain(amd64.blobs())
            .map(|b| b.digest.as_str())
            .collect();
        let wrong: Vec<AccessLine> = upstream
            .iter()
            .filter(|l| amd64_digests.iter().any(|d| l.path.contains(d)))
            .cloned()
            .collect();
        assert!(
            wrong.is_empty(),
            "{what}: nothing of the amd64 child (manifest {}, config, layers) may be requested from \
             upstream; got:\n{}",
            amd64.manifest.digest,
            show(&wrong)
        );
        let via_berth: Vec<BerthRequest> = self
            .berth_since(before)
            .into_iter()
            .filter(|r| amd64_digests.iter().any(|d| r.path.contains(d)))
            .collect();
        assert!(
            via_berth.is_empty(),
            "{what}: the client must not have asked berth for amd64 content either:\n{}",
            show_berth(&via_berth)
        );
        self.assert_berth_served_blobs(&what, MULTI, arm64, before);
    }

    /// A fresh path under the scratch dir.
    fn out(&self, label: &str) -> std::path::PathBuf {
        let path = self.scratch.path().join(label);
        assert!(!path.exists(), "output path {label} reused");
        path
    }
}

fn show(lines: &[AccessLine]) -> String {
    if lines.is_empty() {
        return "  (none)\n".to_string();
    }
    lines.iter().map(|l| format!("  {}\n", l.raw)).collect()
}

fn show_berth(lines: &[BerthRequest]) -> String {
    if lines.is_empty() {
        return "  (none)\n".to_string();
    }
    lines
        .iter()
        .map(|r| format!("  {} {} -> {} ({})\n", r.method, r.path, r.status, r.cache))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// containerd

/// `ctr image pull` of every case, cold then warm (after `ctr images rm --sync`, which
/// garbage-collects the content, so the warm pull fetches every blob from berth again).
/// Every request ctr made must go to berth and carry `ns=<registry>`.
fn ctr_pull_every_case(w: &World, ctd: &Containerd, hosts: &Path) {
    for round in [Round::Cold, Round::Warm] {
        for (up, repo) in CASES {
            let image = w.image(up, repo);
            let reference = format!("{}/{repo}:{TAG}", up.alias());
            if round == Round::Warm {
                ctd.remove_image(&reference);
                let left = ctd.content_digests();
                assert!(
                    image.blobs().iter().all(|b| !left.contains(&b.digest)),
                    "ctr images rm --sync must drop the content of {reference}, so the warm pull refetches it"
                );
            }
            let before = w.mark();
            let pull = ctd.pull(hosts, &reference, &[]);
            pull.run
                .assert_success(&format!("ctr {round:?} pull of {reference} through berth"));
            assert_eq!(
                ctd.image_digest(&reference).as_deref(),
                Some(image.manifest.digest.as_str()),
                "ctr images ls: {reference} must have the digest of the {} upstream's {repo}:{TAG}",
                up.alias()
            );
            let content = ctd.content_digests();
            for blob in std::iter::once(&image.manifest).chain(image.blobs()) {
                assert!(
                    content.contains(&blob.digest),
                    "ctr content ls: {} of {reference} is missing",
                    blob.digest
                );
            }
            assert_ctr_asked_berth_with_ns(w, &pull.requests, up.alias(), &reference);
            w.check_pull("ctr", up, repo, image, &before, round);
        }
    }
}

/// Every request ctr dumped went to berth with `ns=<alias>`; at least one was made.
fn assert_ctr_asked_berth_with_ns(w: &World, requests: &[containerd::DumpedRequest], alias: &str, reference: &str) {
    assert!(
        !requests.is_empty(),
        "ctr --http-dump showed no request for {reference}: the dump format may have changed"
    );
    let berth = w.berth.addr();
    let wrong: Vec<&containerd::DumpedRequest> = requests
        .iter()
        .filter(|r| {
            let query = r.target.split_once('?').map(|(_, q)| q).unwrap_or("");
            r.host != berth || !query.split('&').any(|kv| kv == format!("ns={alias}"))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "ctr must send every request for {reference} to berth ({berth}) with ns={alias}; these differ:\n{wrong:#?}"
    );
}

#[test]
fn containerd_pulls_each_registrys_own_image_via_ns_when_hosts_toml_per_registry() {
    let w = World::start();
    let ctd = Containerd::start();
    let hosts = ctd.scratch("certs.d");
    for up in [Up::Hub, Up::Ghcr] {
        containerd::write_hosts_toml(&hosts, up.alias(), Some(&w.dead_url()), &w.berth_url());
    }
    ctr_pull_every_case(&w, &ctd, &hosts);
}

#[test]
fn containerd_pulls_each_registrys_own_image_via_ns_when_one_default_hosts_toml() {
    let w = World::start();
    let ctd = Containerd::start();
    let hosts = ctd.scratch("certs.d");
    // One file for every registry; its `server` (the fallback) is dead too.
    containerd::write_hosts_toml(&hosts, "_default", Some(&w.dead_url()), &w.berth_url());
    ctr_pull_every_case(&w, &ctd, &hosts);
}

#[test]
fn containerd_fetches_only_arm64_blobs_when_pulling_one_platform_of_an_index() {
    let w = World::start();
    let ctd = Containerd::start();
    let hosts = ctd.scratch("certs.d");
    containerd::write_hosts_toml(&hosts, "ghcr.io", Some(&w.dead_url()), &w.berth_url());
    let reference = format!("ghcr.io/{MULTI}:{TAG}");
    let before = w.mark();
    let pull = ctd.pull(&hosts, &reference, &["--platform", "linux/arm64"]);
    pull.run.assert_success("ctr pull --platform linux/arm64 through berth");
    assert_eq!(
        ctd.image_digest(&reference).as_deref(),
        Some(w.multi.index.digest.as_str()),
        "ctr images ls: {reference} must point at the pushed index"
    );
    let content = ctd.content_digests();
    let arm64 = w.multi.child("arm64");
    let amd64 = w.multi.child("amd64");
    for blob in std::iter::once(&arm64.manifest).chain(arm64.blobs()) {
        assert!(content.contains(&blob.digest), "arm64 content {} missing", blob.digest);
    }
    for blob in std::iter::once(&amd64.manifest).chain(amd64.blobs()) {
        assert!(
            !content.contains(&blob.digest),
            "amd64 content {} was fetched",
            blob.digest
        );
    }
    assert_ctr_asked_berth_with_ns(&w, &pull.requests, "ghcr.io", &reference);
    w.check_arm64_only("ctr --platform linux/arm64", &before);
}

// ---------------------------------------------------------------------------------------------
// podman

/// A podman whose `docker.io` and `ghcr.io` pull from berth's path prefixes, never elsewhere.
fn podman_for(w: &World) -> Podman {
    let rules: Vec<MirrorRule> = [Up::Hub, Up::Ghcr]
        .iter()
        .map(|up| MirrorRule {
            prefix: up.alias().to_string(),
            location: w.dead_addr(),
            mirror: format!("{}/{}", w.berth.addr(), up.alias()),
        })
        .collect();
    Podman::new(&rules)
}

#[test]
fn podman_pulls_each_registrys_own_image_via_path_prefix_when_registries_conf_mirrors() {
    let w = World::start();
    let podman = podman_for(&w);
    for round in [Round::Cold, Round::Warm] {
        for (up, repo) in CASES {
            let image = w.image(up, repo);
            let reference = format!("{}/{repo}:{TAG}", up.alias());
            if round == Round::Warm {
                podman.rmi(&reference);
            }
            let before = w.mark();
            podman.pull(&reference, &[]).assert_success(&format!(
                "podman {round:?} pull of {reference} through berth; registries.conf:\n{}",
                podman.registries_conf_text()
            ));
            assert_eq!(
                podman.inspect(&reference, "{{.Digest}}"),
                image.manifest.digest,
                "podman: {reference} must have the digest of the {} upstream's {repo}:{TAG}",
                up.alias()
            );
            assert_eq!(
                podman.inspect(&reference, "{{.Id}}"),
                image.config.hex(),
                "podman: {reference} image ID must be its config digest"
            );
            w.check_pull("podman", up, repo, image, &before, round);
        }
    }
}

#[test]
fn podman_fetches_only_arm64_blobs_when_pulling_one_platform_of_an_index() {
    let w = World::start();
    let podman = podman_for(&w);
    let reference = format!("ghcr.io/{MULTI}:{TAG}");
    let before = w.mark();
    podman
        .pull(&reference, &["--arch", "arm64"])
        .assert_success("podman pull --arch arm64 through berth");
    let arm64 = w.multi.child("arm64");
    assert_eq!(
        podman.inspect(&reference, "{{.Id}}"),
        arm64.config.hex(),
        "podman --arch arm64 must store the arm64 child (image ID = its config digest)"
    );
    let digests = podman.inspect(&reference, "{{.Digest}} {{json .RepoDigests}}");
    assert!(
        digests.contains(&arm64.manifest.digest) || digests.contains(&w.multi.index.digest),
        "podman: digests of {reference} ({digests}) must name the pushed index or its arm64 child"
    );
    w.check_arm64_only("podman --arch arm64", &before);
}

// ---------------------------------------------------------------------------------------------
// skopeo

#[test]
fn skopeo_pulls_each_registrys_own_image_via_path_prefix_when_addressed_directly() {
    let w = World::start();
    for round in [Round::Cold, Round::Warm] {
        for (up, repo) in CASES {
            let image = w.image(up, repo);
            let source = format!("docker://{}/{}/{repo}:{TAG}", w.berth.addr(), up.alias());
            let dir = w.out(&format!("{round:?}-{}-{}", up.alias(), repo.replace('/', "_")));
            let before = w.mark();
            skopeo_copy(&source, &dir, &[]).assert_success(&format!("skopeo {round:?} copy {source}"));
            assert_dir_has_image(&dir, image);
            w.check_pull("skopeo", up, repo, image, &before, round);
        }
    }
}

#[test]
fn skopeo_fetches_only_arm64_blobs_when_pulling_one_platform_of_an_index() {
    let w = World::start();
    let source = format!("docker://{}/ghcr.io/{MULTI}:{TAG}", w.berth.addr());
    let dir = w.out("multi-arm64");
    let before = w.mark();
    skopeo_copy(&source, &dir, &["--override-arch", "arm64"]).assert_success("skopeo copy --override-arch arm64");
    assert_dir_has_image(&dir, w.multi.child("arm64"));
    w.check_arm64_only("skopeo --override-arch arm64", &before);
}

// ---------------------------------------------------------------------------------------------
// Docker engine

/// Pulls `reference` with the Docker engine and checks its RepoDigests and image ID.
fn docker_pull_and_verify(reference: &str, image: &Image, round: Round) {
    docker::docker(&["pull", reference]).assert_success(&format!("docker {round:?} pull {reference}"));
    let name = reference.rsplit_once(':').map(|(n, _)| n).unwrap_or(reference);
    let repo_digests = docker::repo_digests(reference);
    let familiar = |s: &str| {
        s.strip_prefix("docker.io/library/")
            .or_else(|| s.strip_prefix("docker.io/"))
            .unwrap_or(s)
            .to_string()
    };
    let want = familiar(&format!("{name}@{}", image.manifest.digest));
    assert!(
        repo_digests.iter().any(|d| familiar(d) == want),
        "docker image inspect {reference}: RepoDigests {repo_digests:?} must contain {want}"
    );
    assert_eq!(
        docker::inspect(reference, "{{.Id}}"),
        image.config.digest,
        "docker: image ID of {reference} must be its config digest"
    );
}

#[test]
fn docker_pulls_each_registrys_own_image_when_addressed_directly() {
    docker::require_docker_engine();
    let _lock = docker::lock_daemon();
    let w = World::start();
    let mut pulled = PulledImages::default();
    let berth = w.berth.addr();
    for round in [Round::Cold, Round::Warm] {
        for (up, repo) in CASES {
            let image = w.image(up, repo);
            // docker.io's library/app without a prefix: berth's default upstream.
            let reference = match (up, repo) {
                (Up::Hub, APP) => format!("{berth}/{repo}:{TAG}"),
                _ => format!("{berth}/{}/{repo}:{TAG}", up.alias()),
            };
            match round {
                Round::Cold => pulled.track(&reference),
                Round::Warm => pulled.remove(&reference),
            }
            let before = w.mark();
            docker_pull_and_verify(&reference, image, round);
            w.check_pull("docker (direct)", up, repo, image, &before, round);
        }
    }
}

#[test]
fn docker_pulls_hub_images_through_berth_when_registry_mirror_configured() {
    docker::require_docker_engine();
    let _lock = docker::lock_daemon();
    let w = World::start();
    let mut pulled = PulledImages::default();
    let guard = match MirrorGuard::install(&w.berth_url()) {
        Ok(guard) => guard,
        Err(reason) => {
            eprintln!(
                "NOTE: the Docker daemon's registry-mirrors cannot be changed on this machine ({reason}); \
                 only the direct form `docker pull {}/{APP}:{TAG}` is checked",
                w.berth.addr()
            );
            let reference = format!("{}/{APP}:{TAG}", w.berth.addr());
            pulled.track(&reference);
            let before = w.mark();
            docker_pull_and_verify(&reference, w.image(Up::Hub, APP), Round::Cold);
            w.check_pull(
                "docker (direct)",
                Up::Hub,
                APP,
                w.image(Up::Hub, APP),
                &before,
                Round::Cold,
            );
            return;
        }
    };
    println!(
        "dockerd reloaded {} with registry-mirrors [{}]",
        guard.daemon_json().display(),
        w.berth_url()
    );
    // Short names: docker.io/library/app:v1 and docker.io/org/tool:v1, via the mirror.
    for round in [Round::Cold, Round::Warm] {
        for (reference, repo) in [(format!("app:{TAG}"), APP), (format!("{TOOL}:{TAG}"), TOOL)] {
            let image = w.image(Up::Hub, repo);
            match round {
                Round::Cold => pulled.track(&reference),
                Round::Warm => pulled.remove(&reference),
            }
            let before = w.mark();
            docker_pull_and_verify(&reference, image, round);
            w.check_pull("docker (registry-mirrors)", Up::Hub, repo, image, &before, round);
            // The mirror form: no path prefix (and dockerd's classic store sends no ns).
            let prefixed: Vec<BerthRequest> = w
                .berth_since(&before)
                .into_iter()
                .filter(|r| r.path != "/v2/" && !r.path.starts_with(&format!("/v2/{repo}/")))
                .collect();
            assert!(
                prefixed.is_empty(),
                "dockerd's mirror requests must be /v2/{repo}/...; berth saw:\n{}",
                show_berth(&prefixed)
            );
        }
    }
    drop(pulled);
    drop(guard);
    let mirrors = docker::current_mirrors().expect("docker info after restoring daemon.json");
    assert!(
        !mirrors.contains(&w.berth_url()),
        "registry-mirrors must be restored after the test; docker info shows {mirrors:?}"
    );
}
