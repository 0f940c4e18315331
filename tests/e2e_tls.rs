//! End to end over HTTPS: real clients that trust only a test CA pull through berth's TLS
//! listener. skopeo (Go's TLS stack, `--src-cert-dir`) copies an image and every file is
//! checked against its digest; curl (OpenSSL) checks that ALPN gives it HTTP/2 or HTTP/1.1 as
//! asked. berth runs in process in front of a fake upstream.

use berth_testkit::common;
use berth_testkit::support;

use common::tls::{SecretVolume, TestCa};
use common::{random_bytes, FakeRegistry, TestProxy, OCI_MANIFEST};
use support::skopeo::{run_skopeo, verify_dir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_and_curl_pull_over_tls_when_they_trust_the_test_ca() {
    let ca = TestCa::new("berth e2e CA");
    let volume = SecretVolume::new(&ca.issue_server("server"));
    let fake = FakeRegistry::start().await;
    let (digest, _) = fake.image(
        "library/app",
        "v1",
        OCI_MANIFEST,
        &[random_bytes(600_000), random_bytes(40_000)],
    );
    let proxy = TestProxy::start(&fake.url(), &format!("[server.tls]\n{}", volume.config())).await;

    // skopeo reads CA certificates as `*.crt` from the cert dir.
    let certs = tempfile::tempdir().unwrap();
    std::fs::copy(&ca.cert, certs.path().join("ca.crt")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("app");
    let args: Vec<String> = [
        "--insecure-policy",
        "--command-timeout",
        "120s",
        "copy",
        "--retry-times",
        "0",
        "--src-cert-dir",
        certs.path().to_str().unwrap(),
        &format!("docker://{}/library/app:v1", proxy.addr),
        &format!("dir:{}", dest.display()),
    ]
    .map(str::to_string)
    .to_vec();
    let run = tokio::task::spawn_blocking(move || run_skopeo(&args)).await.unwrap();
    run.assert_success("skopeo copy over TLS");
    let pulled = verify_dir(&dest);
    assert_eq!(pulled.manifest_digest, digest);
    assert_eq!(pulled.blobs.len(), 3, "config and two layers");

    for (flag, want) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let cacert = ca.cert.to_str().unwrap();
        let args = ["--fail", "-w", "%{http_version}", flag, "--cacert", cacert];
        let out = curl(&args, format!("https://{}/v2/library/app/manifests/v1", proxy.addr)).await;
        assert!(
            out.status.success(),
            "curl {flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            want,
            "curl {flag} got HTTP/{want}"
        );
    }
    let untrusted = curl(&[], format!("https://{}/v2/", proxy.addr)).await;
    assert!(
        !untrusted.status.success(),
        "curl without the test CA refuses berth's certificate"
    );
}

/// `curl -sS -o /dev/null ARGS URL` off the runtime, with proxy variables removed.
async fn curl(args: &[&str], url: String) -> std::process::Output {
    let mut cmd = std::process::Command::new(support::require_tool("curl"));
    cmd.args(["-sS", "-o", "/dev/null"]).args(args).arg(url);
    for var in support::cmd::PROXY_VARS {
        cmd.env_remove(var);
    }
    tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap()
}
