//! No cross-repository reads of private content: on an upstream berth pulls with credentials,
//! a digest stored through one repository is served under another only once that repository
//! is known to hold it (its own fetch, a manifest served for it, or an upstream HEAD that
//! confirms it). The one stored copy is reused: confirming costs a HEAD, never a second
//! transfer. Public upstreams keep the shared fast path.

use berth_testkit::common;

use common::*;

const ALL: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Upstream keys making `hub` private (berth pulls as bot:hunter2), and the password file.
fn private_upstream(fake: &FakeRegistry) -> (String, tempfile::NamedTempFile) {
    *fake.state.basic.lock().unwrap() = Some("Ym90Omh1bnRlcjI=".into()); // bot:hunter2
    let pw = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(pw.path(), "hunter2\n").unwrap();
    (format!("username = \"bot\"\npassword_file = {:?}\n", pw.path()), pw)
}

fn code(r: &Reply) -> (u16, Option<String>) {
    let code = match r.bytes().is_empty() {
        true => None,
        false => r.json()["errors"][0]["code"].as_str().map(str::to_string),
    };
    (r.status, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repository_b_cannot_read_a_private_digest_fetched_through_a_until_the_upstream_confirms_it() {
    let fake = FakeRegistry::start().await;
    let layer = random_bytes(300_000);
    let (manifest, bytes) = fake.image("team/a", "v1", OCI_MANIFEST, std::slice::from_ref(&layer));
    let l = sha256(&layer);
    let (up, _pw) = private_upstream(&fake);
    let proxy = TestProxy::start(&fake.url(), &up).await;

    let r = get(&proxy.url("/v2/team/a/manifests/v1"), &[("accept", ALL)]).await;
    assert_eq!(r.status, 200);
    let r = get(&proxy.url(&format!("/v2/team/a/blobs/{l}")), &[]).await;
    assert_eq!((r.status, r.bytes()), (200, &layer), "fetched through team/a");
    proxy.wait_committed(2).await;

    // Upstream, team/b holds neither the layer nor the manifest.
    let b_blob = format!("/v2/team/b/blobs/{l}");
    let b_manifest = format!("/v2/team/b/manifests/{manifest}");
    for p in [&b_blob, &b_manifest] {
        fake.state.path_status.lock().unwrap().insert(p.to_string(), 404);
    }
    let r = get(&proxy.url(&b_blob), &[]).await;
    assert_eq!(code(&r), (404, Some("BLOB_UNKNOWN".into())), "stored, but not team/b's");
    let r = head(&proxy.url(&b_blob), &[]).await;
    assert_eq!(r.status, 404, "HEAD is no existence oracle either");
    let r = get(&proxy.url(&b_manifest), &[("accept", ALL)]).await;
    assert_eq!(code(&r), (404, Some("MANIFEST_UNKNOWN".into())));
    let r = get(&proxy.url("/v2/team/b/manifests/v1"), &[("accept", ALL)]).await;
    assert_eq!(r.status, 404, "team/b has no tag v1");

    // Now team/b holds the same image upstream: one HEAD each confirms it, no transfer.
    fake.state.path_status.lock().unwrap().clear();
    fake.put_manifest("team/b", None, OCI_MANIFEST, bytes.clone());
    let heads = fake.hits("HEAD", &b_blob);
    let r = get(&proxy.url(&b_blob), &[]).await;
    assert_eq!((r.status, r.bytes()), (200, &layer), "confirmed upstream");
    let r = get(&proxy.url(&b_blob), &[("range", "bytes=0-9")]).await;
    assert_eq!((r.status, r.bytes().len()), (206, 10), "the confirmation is remembered");
    assert_eq!(fake.hits("HEAD", &b_blob) - heads, 1, "one HEAD confirmed team/b");
    assert_eq!(
        fake.hits("GET", &b_blob),
        0,
        "no second transfer: the stored copy is shared"
    );
    assert_eq!(fake.hits("GET", &format!("/v2/team/a/blobs/{l}")), 1);
    let r = get(&proxy.url(&b_manifest), &[("accept", ALL)]).await;
    assert_eq!((r.status, r.bytes()), (200, &bytes));
    assert_eq!(
        fake.hits("GET", &b_manifest),
        0,
        "manifest confirmed by HEAD, served from the store"
    );
    assert_eq!(fake.hits("HEAD", &b_manifest), 2, "the refusal and the confirmation");

    // A repository whose own tag names the manifest holds what it references: no HEAD at all.
    fake.put_manifest("team/d", Some("v1"), OCI_MANIFEST, bytes.clone());
    let r = get(&proxy.url("/v2/team/d/manifests/v1"), &[("accept", ALL)]).await;
    assert_eq!(r.status, 200);
    let d_blob = format!("/v2/team/d/blobs/{l}");
    let r = get(&proxy.url(&d_blob), &[]).await;
    assert_eq!((r.status, r.bytes()), (200, &layer));
    assert_eq!(fake.hits("HEAD", &d_blob) + fake.hits("GET", &d_blob), 0);

    // What is known survives a restart; what is not still is not served.
    let dir = proxy.stop().await;
    let proxy = TestProxy::start_in(dir, &fake.url(), &up).await;
    let before = fake.total_hits();
    let r = get(&proxy.url(&b_blob), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(fake.total_hits(), before, "team/b's link is on disk");
    fake.state
        .path_status
        .lock()
        .unwrap()
        .insert(format!("/v2/team/e/blobs/{l}"), 404);
    let r = get(&proxy.url(&format!("/v2/team/e/blobs/{l}")), &[]).await;
    assert_eq!(code(&r), (404, Some("BLOB_UNKNOWN".into())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_upstreams_share_stored_digests_across_repositories_without_asking() {
    let fake = FakeRegistry::start().await;
    let layer = random_bytes(50_000);
    fake.image("team/a", "v1", OCI_MANIFEST, std::slice::from_ref(&layer));
    let l = sha256(&layer);
    let proxy = TestProxy::start(&fake.url(), "").await;
    let r = get(&proxy.url(&format!("/v2/team/a/blobs/{l}")), &[]).await;
    assert_eq!(r.status, 200);
    proxy.wait_committed(1).await;
    let before = fake.total_hits();
    let r = get(&proxy.url(&format!("/v2/team/b/blobs/{l}")), &[]).await;
    assert_eq!((r.status, r.bytes()), (200, &layer));
    assert_eq!(fake.total_hits(), before, "no upstream request for a public upstream");
    assert!(
        !proxy.store().join("links").exists(),
        "no links kept for public content"
    );
}
