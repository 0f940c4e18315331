//! End to end: skopeo pulls generated images through the real berth binary from a real
//! `docker-registry` upstream; digests are verified file by file and upstream requests are
//! counted from the upstream's access log. Then the upstream goes away and every image must
//! still pull, by tag (within `manifest_ttl`) and by digest, with zero upstream requests.

use berth_testkit::support;

use std::path::PathBuf;

use support::berth::Berth;
use support::http;
use support::image::{self, Format, Image, Index, ACCEPT_ALL_MANIFESTS};
use support::registry::{AccessLine, Registry};
use support::skopeo::{assert_dir_has_image, assert_dir_has_index, skopeo_copy, verify_dir};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// An upstream holding three generated images, and a scratch dir for pull outputs.
struct Fixture {
    upstream: Registry,
    /// Docker v2 schema2, three layers, one of ~3 MiB.
    alpha: Image,
    /// OCI image manifest, three layers.
    beta: Image,
    /// OCI index, linux/amd64 + linux/arm64.
    gamma: Index,
    scratch: tempfile::TempDir,
}

const ALPHA: &str = "library/alpha";
const ALPHA_TAG: &str = "v2";
const BETA: &str = "library/beta";
const BETA_TAG: &str = "oci";
const GAMMA: &str = "library/gamma";
const GAMMA_TAG: &str = "multi";

impl Fixture {
    fn new() -> Fixture {
        let upstream = Registry::start();
        let mut rng = fastrand::Rng::new();
        let alpha = Image::generate(&mut rng, Format::DockerV2, "amd64", &[16 * KIB, 3 * MIB, 200 * KIB]);
        let beta = Image::generate(&mut rng, Format::Oci, "amd64", &[8 * KIB, MIB, 64 * KIB]);
        let gamma = Index::generate_two_platform(&mut rng, &[32 * KIB, 256 * KIB]);
        image::push_image(&upstream.addr(), ALPHA, ALPHA_TAG, &alpha);
        image::push_image(&upstream.addr(), BETA, BETA_TAG, &beta);
        image::push_index(&upstream.addr(), GAMMA, GAMMA_TAG, &gamma);
        let scratch = tempfile::Builder::new()
            .prefix("berth-e2e-pull-")
            .tempdir()
            .expect("create the scratch dir for pulls");
        Fixture {
            upstream,
            alpha,
            beta,
            gamma,
            scratch,
        }
    }

    /// A fresh, not yet existing output path for one skopeo copy.
    fn out(&self, label: &str) -> PathBuf {
        let path = self.scratch.path().join(label);
        assert!(!path.exists(), "output dir {label} reused");
        path
    }

    /// Pulls alpha, beta and gamma (`--all`) by tag from `addr` and checks every digest.
    fn pull_by_tag_and_verify(&self, addr: &str, round: &str) {
        let dir = self.out(&format!("{round}-alpha"));
        skopeo_copy(&format!("{addr}/{ALPHA}:{ALPHA_TAG}"), &dir, &[])
            .assert_success(&format!("{round}: pull {ALPHA}:{ALPHA_TAG}"));
        assert_dir_has_image(&dir, &self.alpha);

        let dir = self.out(&format!("{round}-beta"));
        skopeo_copy(&format!("{addr}/{BETA}:{BETA_TAG}"), &dir, &[])
            .assert_success(&format!("{round}: pull {BETA}:{BETA_TAG}"));
        assert_dir_has_image(&dir, &self.beta);

        let dir = self.out(&format!("{round}-gamma-all"));
        skopeo_copy(&format!("{addr}/{GAMMA}:{GAMMA_TAG}"), &dir, &["--all"])
            .assert_success(&format!("{round}: pull --all {GAMMA}:{GAMMA_TAG}"));
        assert_dir_has_index(&dir, &self.gamma);
    }

    /// Pulls every image by digest (`name@sha256:...`), including single index children
    /// (arm64 via `--override-arch`), and checks every digest.
    fn pull_by_digest_and_verify(&self, addr: &str, round: &str) {
        let dir = self.out(&format!("{round}-alpha-digest"));
        skopeo_copy(&format!("{addr}/{ALPHA}@{}", self.alpha.manifest.digest), &dir, &[])
            .assert_success(&format!("{round}: pull {ALPHA} by digest"));
        assert_dir_has_image(&dir, &self.alpha);

        let dir = self.out(&format!("{round}-beta-digest"));
        skopeo_copy(&format!("{addr}/{BETA}@{}", self.beta.manifest.digest), &dir, &[])
            .assert_success(&format!("{round}: pull {BETA} by digest"));
        assert_dir_has_image(&dir, &self.beta);

        let dir = self.out(&format!("{round}-gamma-digest-all"));
        skopeo_copy(&format!("{addr}/{GAMMA}@{}", self.gamma.index.digest), &dir, &["--all"])
            .assert_success(&format!("{round}: pull --all {GAMMA} by index digest"));
        assert_dir_has_index(&dir, &self.gamma);

        let arm64 = self.gamma.child("arm64");
        let dir = self.out(&format!("{round}-gamma-arm64-digest"));
        skopeo_copy(
            &format!("{addr}/{GAMMA}@{}", arm64.manifest.digest),
            &dir,
            &["--override-arch", "arm64"],
        )
        .assert_success(&format!("{round}: pull {GAMMA} arm64 child by digest"));
        assert_dir_has_image(&dir, arm64);
    }

    /// Every (repository, blob) pair the three images consist of.
    fn all_blobs(&self) -> Vec<(&'static str, &image::Blob)> {
        let mut blobs: Vec<(&'static str, &image::Blob)> = Vec::new();
        blobs.extend(self.alpha.blobs().into_iter().map(|b| (ALPHA, b)));
        blobs.extend(self.beta.blobs().into_iter().map(|b| (BETA, b)));
        for child in &self.gamma.children {
            blobs.extend(child.blobs().into_iter().map(|b| (GAMMA, b)));
        }
        blobs
    }
}

/// Formats access lines for an assertion message.
fn show(lines: &[AccessLine]) -> String {
    lines.iter().map(|l| format!("  {}\n", l.raw)).collect::<String>()
}

/// Asserts that berth fetched each blob from upstream exactly once and each manifest at
/// most once (GET), and that it requested nothing outside the three repositories.
fn assert_cold_pull_upstream_requests(f: &Fixture) {
    let log = f.upstream.requests_excluding_probes();
    let pulls: Vec<AccessLine> = log.iter().filter(|l| l.user_agent != "berth-e2e").cloned().collect();
    println!("upstream requests made during the cold pull:\n{}", show(&pulls));

    for (repo, blob) in f.all_blobs() {
        let path = format!("/v2/{repo}/blobs/{}", blob.digest);
        let gets: Vec<AccessLine> = pulls
            .iter()
            .filter(|l| l.method == "GET" && l.path.starts_with(&path))
            .cloned()
            .collect();
        assert_eq!(
            gets.len(),
            1,
            "blob {repo}@{} ({} bytes) must be fetched from upstream exactly once; got:\n{}",
            blob.digest,
            blob.size(),
            show(&gets)
        );
    }
    for (repo, manifests) in [(ALPHA, 1), (BETA, 1), (GAMMA, 1 + f.gamma.children.len())] {
        let gets: Vec<AccessLine> = pulls
            .iter()
            .filter(|l| l.method == "GET" && l.path.starts_with(&format!("/v2/{repo}/manifests/")))
            .cloned()
            .collect();
        assert!(
            gets.len() <= manifests,
            "{repo}: {manifests} manifest(s) must be fetched from upstream at most once each; got:\n{}",
            show(&gets)
        );
    }
    let repos = [ALPHA, BETA, GAMMA];
    let stray: Vec<AccessLine> = pulls
        .iter()
        .filter(|l| l.path != "/v2/" && !repos.iter().any(|r| l.path.starts_with(&format!("/v2/{r}/"))))
        .cloned()
        .collect();
    assert!(
        stray.is_empty(),
        "berth requested paths outside the pulled repositories:\n{}",
        show(&stray)
    );
}

/// Asserts the upstream access log did not grow past `before` lines.
fn assert_no_new_upstream_requests(upstream: &Registry, before: usize, when: &str) {
    let log = upstream.access_log();
    assert!(
        log.len() == before,
        "{when}: berth must not contact the upstream, but it made {} request(s):\n{}",
        log.len().saturating_sub(before),
        show(&log[before.min(log.len())..])
    );
}

#[test]
fn upstream_serves_generated_images_with_verified_digests_when_pulled_directly() {
    // Control: the harness (generation, push, skopeo, verifier) works without berth, so a
    // failure in the tests below is berth's.
    let mut f = Fixture::new();
    f.pull_by_tag_and_verify(&f.upstream.addr(), "direct");
    f.pull_by_digest_and_verify(&f.upstream.addr(), "direct");
    let blob = &f.alpha.layers[1];
    assert_eq!(
        f.upstream.count("GET", &format!("/v2/{ALPHA}/blobs/{}", blob.digest)),
        2,
        "the access log must show one GET per direct pull of the big layer"
    );

    // The harness can restart the upstream with its storage intact.
    f.upstream.stop();
    f.upstream.restart();
    let dir = f.out("direct-after-restart");
    skopeo_copy(
        &format!("{}/{ALPHA}@{}", f.upstream.addr(), f.alpha.manifest.digest),
        &dir,
        &[],
    )
    .assert_success("direct pull after an upstream restart");
    assert_dir_has_image(&dir, &f.alpha);

    // The verifier is not vacuous: one flipped byte in a pulled layer is caught.
    let dir = f.out("direct-corrupted");
    skopeo_copy(&format!("{}/{ALPHA}:{ALPHA_TAG}", f.upstream.addr()), &dir, &[])
        .assert_success("direct pull to corrupt");
    let file = dir.join(blob.hex());
    let mut bytes = std::fs::read(&file).expect("read the pulled big layer");
    bytes[1000] ^= 0xff;
    std::fs::write(&file, bytes).expect("corrupt the pulled big layer");
    let verdict = std::panic::catch_unwind(|| verify_dir(&dir));
    assert!(
        verdict.is_err(),
        "verify_dir must reject a layer whose bytes do not match its digest"
    );
}

#[test]
fn berth_serves_identical_digests_fetching_each_blob_once_when_cache_is_cold() {
    let f = Fixture::new();
    let berth = Berth::start(&f.upstream.url());
    f.pull_by_tag_and_verify(&berth.addr(), "cold");
    assert_cold_pull_upstream_requests(&f);
}

#[test]
fn berth_serves_tags_without_upstream_requests_when_within_manifest_ttl() {
    let f = Fixture::new();
    let berth = Berth::start(&f.upstream.url());
    f.pull_by_tag_and_verify(&berth.addr(), "cold");
    let before = f.upstream.access_log().len();

    f.pull_by_tag_and_verify(&berth.addr(), "warm");
    assert_no_new_upstream_requests(&f.upstream, before, "warm pull by tag within manifest_ttl");
}

#[test]
fn berth_serves_tags_and_digests_when_upstream_is_stopped() {
    let mut f = Fixture::new();
    let berth = Berth::start(&f.upstream.url());
    f.pull_by_tag_and_verify(&berth.addr(), "cold");
    // Index children by digest and arm64 are not part of the tag pull: warm them too.
    f.pull_by_digest_and_verify(&berth.addr(), "cold");
    let before = f.upstream.access_log().len();

    f.upstream.stop();
    f.pull_by_tag_and_verify(&berth.addr(), "offline");
    f.pull_by_digest_and_verify(&berth.addr(), "offline");
    assert_no_new_upstream_requests(&f.upstream, before, "pulls with the upstream stopped");
}

#[test]
fn berth_serves_cached_images_when_restarted_while_upstream_is_stopped() {
    let mut f = Fixture::new();
    let mut berth = Berth::start(&f.upstream.url());
    f.pull_by_tag_and_verify(&berth.addr(), "cold");
    f.pull_by_digest_and_verify(&berth.addr(), "cold");
    let before = f.upstream.access_log().len();

    f.upstream.stop();
    berth.restart();
    f.pull_by_tag_and_verify(&berth.addr(), "restarted");
    f.pull_by_digest_and_verify(&berth.addr(), "restarted");
    assert_no_new_upstream_requests(&f.upstream, before, "pulls after a berth restart");
}

/// GET a blob through berth and check status, exact bytes and headers.
fn assert_blob_get(addr: &str, repo: &str, blob: &image::Blob, when: &str) {
    let target = format!("/v2/{repo}/blobs/{}", blob.digest);
    let r = http::get(addr, &target, &[]).unwrap_or_else(|e| panic!("{when}: GET {target} through berth: {e}"));
    assert_eq!(r.status, 200, "{when}: GET {target} status; body: {}", r.text());
    assert_eq!(r.body.len(), blob.size(), "{when}: GET {target} body length");
    assert!(
        r.body == blob.data,
        "{when}: GET {target} body bytes differ from upstream"
    );
    if r.header("Transfer-Encoding").is_none() {
        assert_eq!(
            r.header("Content-Length"),
            Some(blob.size().to_string().as_str()),
            "{when}: GET {target} Content-Length"
        );
    }
    assert_eq!(
        r.header("Docker-Content-Digest"),
        Some(blob.digest.as_str()),
        "{when}: GET {target} Docker-Content-Digest"
    );
    assert_eq!(
        r.header("Content-Type"),
        Some("application/octet-stream"),
        "{when}: GET {target} Content-Type"
    );
}

#[test]
fn berth_blob_get_returns_exact_bytes_and_headers_when_cold_and_when_cached() {
    let f = Fixture::new();
    let berth = Berth::start(&f.upstream.url());
    let big = &f.alpha.layers[1];
    assert!(big.size() > 2 * MIB, "the test needs a multi-MiB layer");

    assert_blob_get(&berth.addr(), ALPHA, big, "cold");
    assert_blob_get(&berth.addr(), ALPHA, big, "cached");
    assert_blob_get(&berth.addr(), ALPHA, &f.alpha.config, "cold config");
    let gets = f.upstream.count("GET", &format!("/v2/{ALPHA}/blobs/{}", big.digest));
    assert_eq!(
        gets,
        1,
        "two GETs of one blob through berth must cost exactly one upstream GET:\n{}",
        f.upstream.access_log_text()
    );
}

/// HEAD and GET a manifest through berth; both carry the same type, length and digest.
fn assert_manifest_head_and_get(addr: &str, repo: &str, reference: &str, manifest: &image::Blob) {
    let target = format!("/v2/{repo}/manifests/{reference}");
    let accept = [("Accept", ACCEPT_ALL_MANIFESTS)];
    let check = |r: &http::Response, what: &str| {
        assert_eq!(r.status, 200, "{what} {target} status; body: {}", r.text());
        assert_eq!(
            r.header("Content-Type"),
            Some(manifest.media_type.as_str()),
            "{what} {target} Content-Type"
        );
        assert_eq!(
            r.header("Docker-Content-Digest"),
            Some(manifest.digest.as_str()),
            "{what} {target} Docker-Content-Digest"
        );
        assert_eq!(
            r.header("Content-Length"),
            Some(manifest.size().to_string().as_str()),
            "{what} {target} Content-Length (HEAD must carry the full length)"
        );
    };

    let head = http::head(addr, &target, &accept).unwrap_or_else(|e| panic!("HEAD {target} through berth: {e}"));
    check(&head, "HEAD");
    assert!(head.body.is_empty(), "HEAD {target} must have no body");

    let get = http::get(addr, &target, &accept).unwrap_or_else(|e| panic!("GET {target} through berth: {e}"));
    check(&get, "GET");
    assert!(
        get.body == manifest.data,
        "GET {target} must serve the upstream bytes unchanged:\n got {}\nwant {}",
        get.text(),
        String::from_utf8_lossy(&manifest.data)
    );

    let head_again =
        http::head(addr, &target, &accept).unwrap_or_else(|e| panic!("second HEAD {target} through berth: {e}"));
    check(&head_again, "second HEAD");
    assert!(head_again.body.is_empty(), "HEAD {target} must have no body");
}

#[test]
fn berth_manifest_head_carries_get_headers_without_body_when_by_tag_and_by_digest() {
    let f = Fixture::new();
    let berth = Berth::start(&f.upstream.url());
    assert_manifest_head_and_get(&berth.addr(), ALPHA, ALPHA_TAG, &f.alpha.manifest);
    assert_manifest_head_and_get(&berth.addr(), ALPHA, &f.alpha.manifest.digest, &f.alpha.manifest);
    assert_manifest_head_and_get(&berth.addr(), BETA, BETA_TAG, &f.beta.manifest);
    assert_manifest_head_and_get(&berth.addr(), GAMMA, GAMMA_TAG, &f.gamma.index);
    let amd64 = f.gamma.child("amd64");
    assert_manifest_head_and_get(&berth.addr(), GAMMA, &amd64.manifest.digest, &amd64.manifest);
    let blob_requests: Vec<AccessLine> = f
        .upstream
        .requests_excluding_probes()
        .into_iter()
        .filter(|l| l.path.contains("/blobs/") && l.user_agent != "berth-e2e")
        .collect();
    assert!(
        blob_requests.is_empty(),
        "manifest HEAD/GET must not fetch blobs from upstream:\n{}",
        show(&blob_requests)
    );
}

/// `curl -sS --fail ARGS` with proxy variables removed; stdout as text.
fn curl(args: &[String]) -> String {
    let mut cmd = std::process::Command::new(support::require_tool("curl"));
    cmd.args(["-sS", "--fail"]).args(args);
    for var in support::cmd::PROXY_VARS {
        cmd.env_remove(var);
    }
    let out = cmd.output().expect("run curl");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A cached blob is sent with `sendfile` on plain HTTP/1.1 and copied on h2c: both must be the
/// stored bytes, whole, in ranges, and for several answers on one keep-alive connection.
#[test]
fn cached_blobs_are_the_same_bytes_over_http1_sendfile_ranges_keep_alive_and_h2c() {
    let upstream = Registry::start();
    let mut rng = fastrand::Rng::new();
    let data: Vec<u8> = std::iter::repeat_with(|| rng.u8(..)).take(5 * MIB + 12_345).collect();
    let blob = image::Blob::new("application/octet-stream", data.clone());
    image::push_blob(&upstream.addr(), ALPHA, &blob);
    let berth = Berth::start(&upstream.url());
    let target = format!("/v2/{ALPHA}/blobs/{}", blob.digest);
    let cold = http::get(&berth.addr(), &target, &[]).expect("cold GET");
    assert_eq!((cold.status, cold.body == data), (200, true), "the cold GET");
    // Committed just after the cold GET's last byte: from then on answers read the file.
    let stored = berth_testkit::common::blob_path(&berth.storage_dir(), &blob.digest);
    for _ in 0..500 {
        if stored.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(stored.exists(), "the blob is committed");
    let url = format!("http://{}{target}", berth.addr());
    let out = tempfile::tempdir().expect("temp dir");
    let file = |n: &str| out.path().join(n).to_str().expect("utf-8 path").to_string();
    let read = |n: &str| std::fs::read(out.path().join(n)).expect("read curl's output");

    // Two answers on one connection (curl reuses it across `--next`), then a range, over
    // HTTP/1.1.
    let mut args: Vec<String> = Vec::new();
    for (name, range) in [("a", None), ("b", None), ("c", Some("1000-3000000"))] {
        if !args.is_empty() {
            args.push("--next".into());
        }
        args.extend(["--fail", "--http1.1", "-w", "%{http_version} %{num_connects};"].map(String::from));
        if let Some(r) = range {
            args.extend(["-r".to_string(), r.to_string()]);
        }
        args.extend([url.clone(), "-o".into(), file(name)]);
    }
    let versions = curl(&args);
    assert_eq!(versions, "1.1 1;1.1 0;1.1 0;", "HTTP/1.1, all on one connection");
    assert!(read("a") == data && read("b") == data, "whole blob over HTTP/1.1");
    assert!(read("c") == data[1000..=3_000_000], "a range over HTTP/1.1");

    let version = curl(&[
        "--http2-prior-knowledge".into(),
        "-w".into(),
        "%{http_version}".into(),
        url.clone(),
        "-o".into(),
        file("d"),
    ]);
    assert_eq!(version, "2", "h2c");
    assert!(read("d") == data, "whole blob over h2c");
}
