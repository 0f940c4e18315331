//! The pull API against an in-process fake upstream: headers, HEAD, Range, tags within the
//! TTL, digests without upstream contact, bad input, token auth.

use berth_testkit::common;

use common::*;

const ALL: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_by_tag_is_served_from_cache_when_within_ttl() {
    let fake = FakeRegistry::start().await;
    let (digest, bytes) = fake.image("library/app", "v1", OCI_MANIFEST, &[random_bytes(1000)]);
    let proxy = TestProxy::start(&fake.url(), "").await;
    let url = proxy.url("/v2/library/app/manifests/v1");
    for i in 0..5 {
        let r = get(&url, &[("accept", ALL)]).await;
        assert_eq!(r.status, 200, "pull {i}");
        assert_eq!(r.bytes(), &bytes);
        assert_eq!(r.header("docker-content-digest"), Some(digest.as_str()));
        assert_eq!(r.header("content-type"), Some(OCI_MANIFEST));
        assert_eq!(r.header("content-length"), Some(bytes.len().to_string().as_str()));
        assert_eq!(r.header("docker-distribution-api-version"), Some("registry/2.0"));
    }
    assert_eq!(
        fake.hits("GET", "/v2/library/app/manifests/v1"),
        1,
        "one upstream GET for five pulls"
    );
    assert_eq!(
        fake.hits("HEAD", "/v2/library/app/manifests/v1"),
        0,
        "no revalidation within the TTL"
    );
    let h = head(&url, &[("accept", ALL)]).await;
    assert_eq!(h.status, 200);
    assert_eq!(h.header("docker-content-digest"), Some(digest.as_str()));
    assert_eq!(h.header("content-length"), Some(bytes.len().to_string().as_str()));
    assert_eq!(h.header("content-type"), Some(OCI_MANIFEST));
    assert!(h.bytes().is_empty(), "HEAD has no body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_hits_never_contact_upstream_when_it_is_gone() {
    let fake = FakeRegistry::start().await;
    let layer = random_bytes(300_000);
    let (digest, bytes) = fake.image("library/app", "v1", DOCKER_MANIFEST, std::slice::from_ref(&layer));
    let layer_digest = sha256(&layer);
    let proxy = TestProxy::start(&fake.url(), "").await;
    assert_eq!(
        get(&proxy.url(&format!("/v2/library/app/manifests/{digest}")), &[])
            .await
            .status,
        200
    );
    assert_eq!(
        get(&proxy.url(&format!("/v2/library/app/blobs/{layer_digest}")), &[])
            .await
            .bytes(),
        &layer
    );
    let before = fake.total_hits();
    fake.stop();
    let r = get(&proxy.url(&format!("/v2/library/app/manifests/{digest}")), &[]).await;
    assert_eq!((r.status, r.bytes()), (200, &bytes));
    let r = get(&proxy.url(&format!("/v2/library/app/blobs/{layer_digest}")), &[]).await;
    assert_eq!((r.status, r.bytes()), (200, &layer));
    assert_eq!(fake.total_hits(), before, "no upstream contact for digest hits");
}

/// Issue 9 item 3: only content fetched and validated as a manifest is served as one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_config_and_layer_blobs_are_never_served_as_manifests() {
    let fake = FakeRegistry::start().await;
    let layer = random_bytes(300_000);
    let (_, bytes) = fake.image("library/app", "v1", OCI_MANIFEST, std::slice::from_ref(&layer));
    // A real image config: its "config" key makes it parse like an image manifest.
    let config = fake.put_blob(bytes::Bytes::from_static(
        br#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"]},"rootfs":{"type":"layers","diff_ids":[]}}"#,
    ));
    let layer_digest = sha256(&layer);
    // distribution 2.8 answers 500 to a layer digest on the manifests endpoint.
    let layer_as_manifest = format!("/v2/library/app/manifests/{layer_digest}");
    fake.state
        .path_status
        .lock()
        .unwrap()
        .insert(layer_as_manifest.clone(), 500);
    let proxy = TestProxy::start(&fake.url(), "").await;
    for d in [&config, &layer_digest] {
        let r = get(&proxy.url(&format!("/v2/library/app/blobs/{d}")), &[]).await;
        assert_eq!(r.status, 200, "{d} cached as a blob");
    }
    proxy.wait_committed(2).await;
    let config_as_manifest = format!("/v2/library/app/manifests/{config}");
    let r = get(&proxy.url(&config_as_manifest), &[]).await;
    assert_eq!(
        (r.status, r.header("content-type")),
        (404, Some("application/json")),
        "a cached config is not a manifest: {:?}",
        r.body
    );
    assert_eq!(r.json()["errors"][0]["code"], "MANIFEST_UNKNOWN");
    assert_eq!(
        fake.hits("GET", &config_as_manifest),
        1,
        "a miss: the upstream was asked"
    );
    for other_repo in ["library/app", "library/elsewhere"] {
        let r = get(&proxy.url(&format!("/v2/{other_repo}/manifests/{layer_digest}")), &[]).await;
        assert_eq!(r.status, 404, "{other_repo}: a cached layer is no manifest, not a 502");
        assert_eq!(r.json()["errors"][0]["code"], "MANIFEST_UNKNOWN");
    }
    let m = get(&proxy.url("/v2/library/app/manifests/v1"), &[]).await;
    assert_eq!((m.status, m.bytes()), (200, &bytes), "the real manifest still pulls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_range_gets_206_and_out_of_range_gets_416() {
    let fake = FakeRegistry::start().await;
    let blob = random_bytes(20);
    let d = fake.put_blob(blob.clone());
    let proxy = TestProxy::start(&fake.url(), "").await;
    let url = proxy.url(&format!("/v2/library/app/blobs/{d}"));
    assert_eq!(get(&url, &[]).await.bytes(), &blob, "fill the cache");
    let r = get(&url, &[("range", "bytes=1-3")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 1-3/20"));
    assert_eq!(r.header("content-length"), Some("3"));
    assert_eq!(
        r.header("docker-content-digest"),
        Some(d.as_str()),
        "full-blob digest on 206"
    );
    assert_eq!(r.bytes(), &blob.slice(1..4));
    let r = get(&url, &[("range", "bytes=99999999999-")]).await;
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */20"));
    assert_eq!(r.json()["errors"][0]["code"], "RANGE_INVALID");
    let h = head(&url, &[]).await;
    assert_eq!(
        (h.status, h.header("content-length"), h.header("content-type")),
        (200, Some("20"), Some("application/octet-stream"))
    );
    assert_eq!(h.header("docker-content-digest"), Some(d.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_spec_errors_without_upstream_contact() {
    let fake = FakeRegistry::start().await;
    let proxy = TestProxy::start(&fake.url(), "").await;
    let d = sha256(b"x");
    let cases: Vec<(http::Method, String, u16, &str)> = vec![
        (
            http::Method::GET,
            "/v2/Library/Nginx/manifests/latest".into(),
            400,
            "NAME_INVALID",
        ),
        (
            http::Method::GET,
            "/v2/a/../../etc/manifests/latest".into(),
            400,
            "NAME_INVALID",
        ),
        (
            http::Method::GET,
            format!("/v2/{}/manifests/x", "a".repeat(300)),
            400,
            "NAME_INVALID",
        ),
        (
            http::Method::GET,
            "/v2/library/app/manifests/-bad".into(),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            http::Method::GET,
            "/v2/library/app/blobs/sha256:1234".into(),
            400,
            "DIGEST_INVALID",
        ),
        (
            http::Method::GET,
            "/v2/library/app/blobs/md5:d41d8cd98f00b204e9800998ecf8427e".into(),
            400,
            "DIGEST_INVALID",
        ),
        (
            http::Method::GET,
            format!("/v2/library/app/manifests/{d}?ns=evil.example"),
            404,
            "NAME_UNKNOWN",
        ),
        (
            http::Method::GET,
            format!("/v2/library/app/blobs/{d}?ns=169.254.169.254"),
            404,
            "NAME_UNKNOWN",
        ),
        (
            http::Method::PUT,
            "/v2/library/app/manifests/latest".into(),
            405,
            "UNSUPPORTED",
        ),
        (
            http::Method::DELETE,
            format!("/v2/library/app/blobs/{d}"),
            405,
            "UNSUPPORTED",
        ),
        (
            http::Method::POST,
            "/v2/library/app/blobs/uploads/".into(),
            405,
            "UNSUPPORTED",
        ),
        (
            http::Method::GET,
            "/v2/_catalog?n=2147483647".into(),
            405,
            "UNSUPPORTED",
        ),
    ];
    for (m, path, status, code) in cases {
        let r = request(m.clone(), &proxy.url(&path), &[]).await;
        assert_eq!(r.status, status, "{m} {path}");
        assert_eq!(r.header("content-type"), Some("application/json"), "{m} {path}");
        assert_eq!(r.json()["errors"][0]["code"], code, "{m} {path}");
    }
    assert_eq!(fake.total_hits(), 0, "nothing reached the upstream");
    assert!(proxy.stored_files().is_empty(), "nothing stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_host_that_is_no_alias_gets_name_unknown_without_upstream_contact() {
    let fake = FakeRegistry::start().await;
    let ghcr = format!("[upstreams.ghcr]\nurl = \"{}\"\naliases = [\"ghcr.io\"]\n", fake.url());
    let proxy = TestProxy::start(&fake.url(), &ghcr).await;
    let d = sha256(b"x");
    for path in [
        "/v2/example.org/foo/manifests/1".to_string(),
        format!("/v2/example.org/foo/blobs/{d}"),
        "/v2/docker.io/quay.io/org/app/manifests/latest".to_string(),
        "/v2/example.org/foo/tags/list".to_string(),
    ] {
        let r = get(&proxy.url(&path), &[]).await;
        assert_eq!(r.status, 404, "{path}");
        let e = &r.json()["errors"][0];
        assert_eq!(e["code"], "NAME_UNKNOWN", "{path}");
        let msg = e["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains("no upstream is configured for registry")
                && msg.contains("ghcr (ghcr.io)")
                && msg.contains("hub (docker.io)"),
            "{path}: the message lists the configured upstreams: {msg}"
        );
    }
    assert_eq!(fake.total_hits(), 0, "no upstream request");
    // A configured alias still routes, and one-component names still go to Docker Hub.
    get(&proxy.url("/v2/ghcr.io/org/app/manifests/1"), &[]).await;
    get(&proxy.url("/v2/my.app/manifests/1"), &[]).await;
    assert!(
        fake.hits("GET", "/v2/org/app/manifests/1") > 0,
        "ghcr.io/ routes to ghcr"
    );
    assert!(
        fake.hits("GET", "/v2/library/my.app/manifests/1") > 0,
        "my.app goes to Docker Hub as library/my.app"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_that_is_no_tag_is_manifest_unknown_without_upstream_contact() {
    let fake = FakeRegistry::start().await;
    let proxy = TestProxy::start(&fake.url(), "").await;
    // The distribution-spec v1.1 conformance suite: only 404 MANIFEST_UNKNOWN is allowed.
    let url = proxy.url("/v2/library/app/manifests/.INVALID_MANIFEST_NAME");
    let r = get(&url, &[]).await;
    assert_eq!(
        (r.status, r.json()["errors"][0]["code"].as_str()),
        (404, Some("MANIFEST_UNKNOWN"))
    );
    assert_eq!(head(&url, &[]).await.status, 404, "HEAD answers the same status");
    // A reference with ':' can only be a digest: a malformed one stays 400 DIGEST_INVALID.
    let r = get(&proxy.url("/v2/library/app/manifests/sha256:abc"), &[]).await;
    assert_eq!(
        (r.status, r.json()["errors"][0]["code"].as_str()),
        (400, Some("DIGEST_INVALID"))
    );
    assert_eq!(fake.total_hits(), 0, "nothing reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_too_long_after_the_library_prefix_is_name_invalid_without_upstream_contact() {
    let fake = FakeRegistry::start().await;
    let proxy = TestProxy::start(&fake.url(), "").await;
    // 255 characters are a valid name; Docker Hub's `library/` makes it 263.
    let name = "a".repeat(255);
    for path in [
        format!("/v2/{name}/manifests/latest"),
        format!("/v2/{name}/blobs/{}", sha256(b"x")),
        format!("/v2/{name}/tags/list"),
        format!("/v2/docker.io/{name}/manifests/latest"),
    ] {
        let r = get(&proxy.url(&path), &[]).await;
        assert_eq!(
            (r.status, r.json()["errors"][0]["code"].as_str()),
            (400, Some("NAME_INVALID")),
            "{path}"
        );
    }
    assert_eq!(fake.total_hits(), 0, "nothing reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_endpoint_and_probes_answer() {
    let fake = FakeRegistry::start().await;
    let proxy = TestProxy::start(&fake.url(), "").await;
    let r = get(&proxy.url("/v2/"), &[]).await;
    assert_eq!((r.status, r.bytes().as_ref()), (200, &b"{}"[..]));
    assert_eq!(r.header("docker-distribution-api-version"), Some("registry/2.0"));
    assert_eq!(get(&proxy.url("/livez"), &[]).await.status, 200);
    assert_eq!(get(&proxy.url("/readyz"), &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_answers_a_plain_hint_when_a_person_opens_berth_in_a_browser() {
    let fake = FakeRegistry::start().await;
    let proxy = TestProxy::start(&fake.url(), "").await;
    let r = get(&proxy.url("/"), &[]).await;
    assert_eq!(r.status, 200, "not 404 NAME_UNKNOWN: {:?}", r.body);
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    let text = String::from_utf8(r.bytes().to_vec()).unwrap();
    for expected in [
        "pull-through caching proxy",
        "/v2/",
        "Status page: not enabled: set [metrics] listen",
    ] {
        assert!(text.contains(expected), "hint lacks {expected:?}: {text}");
    }
    let h = head(&proxy.url("/"), &[]).await;
    assert_eq!(h.status, 200);
    assert!(h.bytes().is_empty(), "HEAD has no body");
    assert_eq!(fake.total_hits(), 0, "nothing reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_are_fetched_once_and_reused() {
    let fake = FakeRegistry::start().await;
    fake.require_token("s3cret-token");
    let (digest, _) = fake.image(
        "library/app",
        "v1",
        OCI_MANIFEST,
        &[random_bytes(5000), random_bytes(7000)],
    );
    let proxy = TestProxy::start(&fake.url(), "").await;
    let m = get(&proxy.url("/v2/library/app/manifests/v1"), &[("accept", ALL)]).await;
    assert_eq!(m.status, 200);
    assert_eq!(m.header("docker-content-digest"), Some(digest.as_str()));
    let man = m.json();
    for l in man["layers"].as_array().unwrap() {
        let d = l["digest"].as_str().unwrap();
        let r = get(&proxy.url(&format!("/v2/library/app/blobs/{d}")), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(sha256(r.bytes()), d);
    }
    assert_eq!(fake.hits("GET", "/token"), 1, "one token for the repository scope");
    let metrics = proxy.metrics().await;
    assert!(!metrics.contains("s3cret-token"), "tokens never reach metrics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_not_sent_to_a_foreign_realm() {
    let fake = FakeRegistry::start().await;
    let thief = FakeRegistry::start().await;
    fake.require_token("t");
    *fake.state.realm.lock().unwrap() = Some(format!("http://localhost:{}/token", thief.addr.port()));
    fake.image("library/app", "v1", OCI_MANIFEST, &[random_bytes(10)]);
    let pw = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(pw.path(), "hunter2\n").unwrap();
    let proxy = TestProxy::start(
        &fake.url(),
        &format!("username = \"u\"\npassword_file = {:?}\n", pw.path()),
    )
    .await;
    let r = get(&proxy.url("/v2/library/app/manifests/v1"), &[]).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["errors"][0]["code"], "UNAVAILABLE");
    assert_eq!(thief.total_hits(), 0, "the foreign realm was never contacted");
    assert!(!String::from_utf8_lossy(r.bytes()).contains("hunter2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_list_is_passed_through() {
    let fake = FakeRegistry::start().await;
    let proxy = TestProxy::start(&fake.url(), "").await;
    let r = get(&proxy.url("/v2/library/app/tags/list?n=10"), &[]).await;
    assert_eq!(
        r.status, 404,
        "the fake knows no library/app: upstream 404 becomes NAME_UNKNOWN"
    );
    assert_eq!(r.json()["errors"][0]["code"], "NAME_UNKNOWN");
    assert_eq!(fake.hits("GET", "/v2/library/app/tags/list"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_list_link_points_at_berth_with_the_clients_routing_or_is_dropped() {
    let fake = FakeRegistry::start().await;
    fake.image("library/app", "a", OCI_MANIFEST, &[random_bytes(10)]);
    fake.image("library/app", "b", OCI_MANIFEST, &[random_bytes(11)]);
    let proxy = TestProxy::start(&fake.url(), "").await;
    let next = "</v2/library/app/tags/list?n=1&last=a>; rel=\"next\"";
    let absolute = format!("<{}/v2/library/app/tags/list?last=a&n=1>; rel=\"next\"", fake.url());
    let cases: Vec<(&str, String, Option<&str>)> = vec![
        // The client's own path and routing, the upstream's pagination.
        (
            "/v2/app/tags/list?n=1",
            next.into(),
            Some("</v2/app/tags/list?n=1&last=a>; rel=\"next\""),
        ),
        (
            "/v2/docker.io/library/app/tags/list?n=1",
            next.into(),
            Some("</v2/docker.io/library/app/tags/list?n=1&last=a>; rel=\"next\""),
        ),
        (
            "/v2/library/app/tags/list?n=1&ns=docker.io",
            next.into(),
            Some("</v2/library/app/tags/list?n=1&last=a&ns=docker.io>; rel=\"next\""),
        ),
        (
            "/v2/app/tags/list",
            absolute,
            Some("</v2/app/tags/list?last=a&n=1>; rel=\"next\""),
        ),
        // Another origin, or another repository: dropped.
        (
            "/v2/app/tags/list",
            "<http://169.254.169.254/latest/meta-data/?last=a>; rel=\"next\"".into(),
            None,
        ),
        (
            "/v2/app/tags/list",
            "<//169.254.169.254/v2/library/app/tags/list?last=a>; rel=\"next\"".into(),
            None,
        ),
        (
            "/v2/app/tags/list",
            "</v2/other/app/tags/list?last=a>; rel=\"next\"".into(),
            None,
        ),
        // Only the `next` link survives, and only when it is for this listing.
        (
            "/v2/app/tags/list",
            "</v2/library/app/tags/list?last=a>; rel=\"next\", <http://evil.example/>; rel=\"x\"".into(),
            Some("</v2/app/tags/list?last=a>; rel=\"next\""),
        ),
    ];
    for (path, upstream_link, want) in cases {
        *fake.state.tags_link.lock().unwrap() = Some(upstream_link.clone());
        let r = get(&proxy.url(path), &[]).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.json()["tags"], serde_json::json!(["a", "b"]), "{path}");
        assert_eq!(r.header("link"), want, "{path} with upstream Link {upstream_link}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_tags_are_remembered_for_negative_ttl() {
    let fake = FakeRegistry::start().await;
    let proxy = TestProxy::start(&fake.url(), "[cache]\nnegative_ttl = \"1h\"\n").await;
    for _ in 0..5 {
        let r = get(&proxy.url("/v2/library/nope/manifests/v1"), &[]).await;
        assert_eq!(r.status, 404);
        assert_eq!(r.json()["errors"][0]["code"], "MANIFEST_UNKNOWN");
    }
    assert_eq!(fake.hits("GET", "/v2/library/nope/manifests/v1"), 1, "404 remembered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_v2_only_client_gets_a_v2_manifest_when_an_index_is_cached() {
    let fake = FakeRegistry::start().await;
    let (v2_digest, v2_bytes) = fake.image("library/app", "amd64", DOCKER_MANIFEST, &[random_bytes(100)]);
    let index = bytes::Bytes::from(format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{OCI_INDEX}\",\"manifests\":[{{\"mediaType\":\"{DOCKER_MANIFEST}\",\"digest\":\"{v2_digest}\",\"size\":{},\"platform\":{{\"os\":\"linux\",\"architecture\":\"amd64\"}}}}]}}",
        v2_bytes.len()
    ));
    let index_digest = fake.put_manifest("library/app", Some("v1"), OCI_INDEX, index.clone());
    fake.state.alternatives.lock().unwrap().insert(
        ("library/app".into(), "v1".into()),
        (DOCKER_MANIFEST.into(), v2_bytes.clone()),
    );
    let proxy = TestProxy::start(&fake.url(), "").await;
    let url = proxy.url("/v2/library/app/manifests/v1");
    // containerd-like client: accepts everything, gets (and caches) the index.
    let r = get(&url, &[("accept", ALL)]).await;
    assert_eq!((r.header("content-type"), r.bytes()), (Some(OCI_INDEX), &index));
    assert_eq!(r.header("docker-content-digest"), Some(index_digest.as_str()));
    // An old client that only knows Docker v2 manifests gets one, with matching HEAD headers.
    let v2_only = [
        ("accept", DOCKER_MANIFEST),
        ("accept", "application/vnd.docker.distribution.manifest.v1+prettyjws"),
    ];
    let r = get(&url, &v2_only).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        (r.header("content-type"), r.bytes()),
        (Some(DOCKER_MANIFEST), &v2_bytes)
    );
    assert_eq!(r.header("docker-content-digest"), Some(v2_digest.as_str()));
    let h = head(&url, &v2_only).await;
    assert_eq!((h.status, h.header("content-type")), (200, Some(DOCKER_MANIFEST)));
    assert_eq!(h.header("docker-content-digest"), Some(v2_digest.as_str()));
    assert_eq!(h.header("content-length"), Some(v2_bytes.len().to_string().as_str()));
    // The tag still resolves to the index for everyone else.
    let r = get(&url, &[("accept", ALL)]).await;
    assert_eq!(r.header("docker-content-digest"), Some(index_digest.as_str()));
    // A client accepting nothing berth or the upstream has gets MANIFEST_UNKNOWN.
    let r = get(&url, &[("accept", "application/x-nothing")]).await;
    assert_eq!(
        (r.status, r.json()["errors"][0]["code"].as_str()),
        (404, Some("MANIFEST_UNKNOWN"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_upstreams_get_credentials_after_the_challenge() {
    let fake = FakeRegistry::start().await;
    *fake.state.basic.lock().unwrap() = Some("Ym90Omh1bnRlcjI=".into()); // bot:hunter2
    let (digest, _) = fake.image("library/app", "v1", OCI_MANIFEST, &[random_bytes(10)]);
    let pw = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(pw.path(), "hunter2\n").unwrap();
    let extra = format!("username = \"bot\"\npassword_file = {:?}\n", pw.path());
    let proxy = TestProxy::start(&fake.url(), &extra).await;
    let r = get(&proxy.url("/v2/library/app/manifests/v1"), &[("accept", ALL)]).await;
    assert_eq!(
        (r.status, r.header("docker-content-digest")),
        (200, Some(digest.as_str()))
    );
    let layer = r.json()["layers"][0]["digest"].as_str().unwrap().to_string();
    assert_eq!(
        get(&proxy.url(&format!("/v2/library/app/blobs/{layer}")), &[])
            .await
            .status,
        200
    );
    // One challenge, then credentials are sent up front.
    assert_eq!(fake.hits("GET", "/v2/library/app/manifests/v1"), 2);
    assert_eq!(fake.hits("GET", &format!("/v2/library/app/blobs/{layer}")), 1);
    // Wrong credentials: the client gets DENIED, not the upstream's challenge.
    std::fs::write(pw.path(), "wrong\n").unwrap();
    let proxy = TestProxy::start(&fake.url(), &extra).await;
    let r = get(&proxy.url("/v2/library/app/manifests/v1"), &[]).await;
    assert_eq!(
        (r.status, r.json()["errors"][0]["code"].as_str()),
        (403, Some("DENIED"))
    );
    assert!(r.header("www-authenticate").is_none());
}
