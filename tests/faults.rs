//! Hostile and broken upstreams: wrong bytes, resets mid-body, error statuses, oversized or
//! ambiguous manifests. In every case the client never gets a clean 200 with wrong data,
//! nothing is stored, and the next fault-free request succeeds.

use berth_testkit::common;

use std::time::Duration;

use bytes::Bytes;
use common::*;

/// The client must see an error status or a broken body, never a clean 200 with other bytes.
fn assert_no_clean_wrong_answer(r: &Reply, good: &Bytes, what: &str) {
    if r.status == 200 {
        if let Ok(b) = &r.body {
            assert_eq!(b, good, "{what}: a clean 200 must carry the exact bytes");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulty_blob_transfers_are_never_stored_and_next_pull_succeeds() {
    let cases: Vec<(&str, Vec<Fault>)> = vec![
        ("wrong bytes", vec![Fault::WrongBytes]),
        (
            "reset, and the resume breaks before a byte",
            vec![Fault::ResetAfter(100_000), Fault::ResetAfter(0)],
        ),
        ("status 500 on every attempt", vec![Fault::Status(500, None); 3]),
        ("status 503 on every attempt", vec![Fault::Status(503, None); 3]),
    ];
    for (what, faults) in cases {
        let fake = FakeRegistry::start().await;
        let blob = random_bytes(1 << 20);
        let d = fake.put_blob(blob.clone());
        for f in faults {
            fake.fault(&d, f);
        }
        // No resume window: a resume that makes no progress ends the fill at once.
        let proxy = TestProxy::start(&fake.url(), "fill_resume_window = \"0s\"\n").await;
        let url = proxy.url(&format!("/v2/library/app/blobs/{d}"));
        let r = get(&url, &[]).await;
        assert!(r.status != 200 || r.body.is_err(), "{what}: got a clean {}", r.status);
        assert_no_clean_wrong_answer(&r, &blob, what);
        assert!(proxy.stored_files().is_empty(), "{what}: nothing stored");
        let r = get(&url, &[]).await;
        assert_eq!(r.status, 200, "{what}: next request");
        assert!(
            fake.state.faults.lock().unwrap().get(&d).is_none_or(|q| q.is_empty()),
            "{what}: all faults used"
        );
        assert_eq!(r.bytes(), &blob, "{what}: next request gets the blob");
        proxy.wait_committed(1).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_mid_body_is_resumed_with_range_and_verified() {
    let fake = FakeRegistry::start().await;
    let blob = random_bytes(2 << 20);
    let d = fake.put_blob(blob.clone());
    fake.fault(&d, Fault::ResetAfter(700_000));
    let proxy = TestProxy::start(&fake.url(), "").await;
    let r = get(&proxy.url(&format!("/v2/library/app/blobs/{d}")), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.bytes(), &blob, "the client gets every byte once");
    assert_eq!(
        fake.hits("GET", &format!("/v2/library/app/blobs/{d}")),
        2,
        "one resumed request"
    );
    proxy.wait_committed(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_that_is_not_honoured_restarts_and_still_verifies() {
    let fake = FakeRegistry::start().await;
    *fake.state.honour_range.lock().unwrap() = false;
    let blob = random_bytes(1 << 20);
    let d = fake.put_blob(blob.clone());
    fake.fault(&d, Fault::ResetAfter(400_000));
    let proxy = TestProxy::start(&fake.url(), "").await;
    let r = get(&proxy.url(&format!("/v2/library/app/blobs/{d}")), &[]).await;
    assert_eq!((r.status, r.bytes()), (200, &blob));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_manifests_are_refused_and_not_stored() {
    let fake = FakeRegistry::start().await;
    let proxy = TestProxy::start(&fake.url(), "").await;
    let good = Bytes::from(
        r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#,
    );
    let good_digest = sha256(&good);
    // 1. Served under a digest it does not hash to.
    let evil = Bytes::from(
        r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"x":1},"layers":[]}"#,
    );
    fake.state
        .manifests
        .lock()
        .unwrap()
        .insert(("library/a".into(), good_digest.clone()), (OCI_MANIFEST.into(), evil));
    // 2. Over 4 MiB.
    let mut big = br#"{"schemaVersion":2,"config":{},"layers":[],"pad":""#.to_vec();
    big.extend(std::iter::repeat_n(b'x', 5 << 20));
    big.extend(b"\"}");
    fake.put_manifest("library/b", Some("big"), OCI_MANIFEST, Bytes::from(big));
    // 3. An index labelled as a manifest (CVE-2021-41190).
    let ambiguous = Bytes::from(r#"{"schemaVersion":2,"manifests":[],"layers":[]}"#);
    fake.put_manifest("library/c", Some("amb"), OCI_MANIFEST, ambiguous);
    // 4. An HTML page.
    fake.put_manifest(
        "library/d",
        Some("html"),
        OCI_MANIFEST,
        Bytes::from("<html>captive portal</html>"),
    );
    for path in [
        format!("/v2/library/a/manifests/{good_digest}"),
        "/v2/library/b/manifests/big".to_string(),
        "/v2/library/c/manifests/amb".to_string(),
        "/v2/library/d/manifests/html".to_string(),
    ] {
        let r = get(&proxy.url(&path), &[]).await;
        assert_eq!(r.status, 502, "{path}");
        assert_eq!(r.json()["errors"][0]["code"], "UNAVAILABLE", "{path}");
    }
    assert!(proxy.stored_files().is_empty(), "nothing stored");
    // Fixed upstream: the next request succeeds.
    fake.put_manifest("library/a", None, OCI_MANIFEST, good.clone());
    let r = get(&proxy.url(&format!("/v2/library/a/manifests/{good_digest}")), &[]).await;
    assert_eq!((r.status, r.bytes()), (200, &good));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_statuses_map_to_clear_errors_when_nothing_is_cached() {
    let cases: Vec<(Fault, u16, &str, Option<&str>)> = vec![
        (Fault::Status(429, Some("17")), 429, "TOOMANYREQUESTS", Some("17")),
        (Fault::Status(500, None), 502, "UNAVAILABLE", None),
        (Fault::Status(401, None), 403, "DENIED", None),
        (Fault::Stall, 504, "UNAVAILABLE", None),
    ];
    for (fault, status, code, retry_after) in cases {
        let fake = FakeRegistry::start().await;
        fake.set_global_fault(Some(fault.clone()));
        let proxy = TestProxy::start(&fake.url(), "").await;
        let started = std::time::Instant::now();
        let r = get(&proxy.url("/v2/library/app/manifests/v1"), &[]).await;
        assert_eq!(r.status, status, "{fault:?}");
        assert_eq!(r.json()["errors"][0]["code"], code, "{fault:?}");
        assert_eq!(r.header("retry-after"), retry_after, "{fault:?}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "bounded by the configured timeout"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_followed_without_leaking_to_private_hosts() {
    let fake = FakeRegistry::start().await;
    let cdn = FakeRegistry::start().await;
    let blob = random_bytes(100_000);
    let d = fake.put_blob(blob.clone());
    cdn.put_blob(blob.clone());
    // Same configured host (127.0.0.1), other port: allowed.
    fake.fault(&d, Fault::Redirect(format!("{}/v2/library/app/blobs/{d}", cdn.url())));
    let proxy = TestProxy::start(&fake.url(), "").await;
    let r = get(&proxy.url(&format!("/v2/library/app/blobs/{d}")), &[]).await;
    assert_eq!((r.status, r.bytes()), (200, &blob));
    assert_eq!(cdn.hits("GET", &format!("/v2/library/app/blobs/{d}")), 1);
    // A host name that resolves to loopback but is not configured: refused.
    let d2 = fake.put_blob(random_bytes(5000));
    cdn.put_blob(random_bytes(5000));
    let to_localhost = format!("http://localhost:{}/v2/library/app/blobs/{d2}", cdn.addr.port());
    for _ in 0..3 {
        fake.fault(&d2, Fault::Redirect(to_localhost.clone()));
    }
    let r = get(&proxy.url(&format!("/v2/library/app/blobs/{d2}")), &[]).await;
    assert_eq!(r.status, 502);
    assert_eq!(
        cdn.hits("GET", &format!("/v2/library/app/blobs/{d2}")),
        0,
        "private host never dialled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_not_sent_when_a_redirect_changes_the_port() {
    let fake = FakeRegistry::start().await;
    let other_port = FakeRegistry::start().await;
    *fake.state.basic.lock().unwrap() = Some("Ym90Omh1bnRlcjI=".into()); // bot:hunter2
    let blob = random_bytes(50_000);
    let d = fake.put_blob(blob.clone());
    other_port.put_blob(blob.clone());
    // Same host (127.0.0.1, a configured upstream host), another port: another origin.
    fake.fault(
        &d,
        Fault::Redirect(format!("{}/v2/library/app/blobs/{d}", other_port.url())),
    );
    let pw = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(pw.path(), "hunter2\n").unwrap();
    let extra = format!("username = \"bot\"\npassword_file = {:?}\n", pw.path());
    let proxy = TestProxy::start(&fake.url(), &extra).await;
    let r = get(&proxy.url(&format!("/v2/library/app/blobs/{d}")), &[]).await;
    assert_eq!((r.status, r.bytes()), (200, &blob), "the redirect is still followed");
    assert_eq!(other_port.hits("GET", &format!("/v2/library/app/blobs/{d}")), 1);
    assert!(
        fake.state
            .authorizations
            .lock()
            .unwrap()
            .iter()
            .any(|a| a.starts_with("Basic ")),
        "the upstream's own origin got the credentials"
    );
    assert_eq!(
        *other_port.state.authorizations.lock().unwrap(),
        Vec::<String>::new(),
        "no Authorization to another port of the same host"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_fill_resumes_when_the_upstream_restarts_mid_transfer() {
    use http_body_util::BodyExt;
    let fake = FakeRegistry::start().await;
    let blob = random_bytes(2 << 20);
    let d = fake.put_blob(blob.clone());
    // 32 chunks of 64 KiB, 20 ms apart: the transfer is still running when the upstream dies.
    fake.set_chunk_delay(Duration::from_millis(20));
    let extra = "fill_resume_window = \"20s\"\nretries = 0\ncircuit_cooldown = \"1s\"\n";
    let proxy = TestProxy::start(&fake.url(), extra).await;
    let uri: http::Uri = proxy.url(&format!("/v2/library/app/blobs/{d}")).parse().unwrap();
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(uri.path())
        .header("host", uri.authority().unwrap().as_str())
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = body.frame().await.unwrap().unwrap().into_data().unwrap().to_vec();
    assert!(got.len() < blob.len(), "the transfer is under way");
    fake.stop();
    // Wait (bounded) until berth has tried to resume against the closed port three times (one
    // request per attempt with retries = 0): more than one failed resume.
    let failed_resumes = || async {
        let m = proxy.metrics().await;
        m.lines()
            .find(|l| l.starts_with("berth_upstream_requests_total{code=\"error\",kind=\"blob\""))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let mut tries = 0;
    while failed_resumes().await < 3 {
        tries += 1;
        assert!(tries < 500, "berth stopped resuming");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _fake = fake.restart().await;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("the client's transfer continues after the upstream restart");
        if let Ok(data) = frame.into_data() {
            got.extend_from_slice(&data);
        }
    }
    assert_eq!(got.len(), blob.len());
    assert!(got == blob.as_ref(), "every byte, verified");
    proxy.wait_committed(1).await;
}
