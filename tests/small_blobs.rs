//! Small blobs served from memory (`[cache] blob_memory_bytes`): what memory serves is the
//! verified content, ranges and HEAD answer from it, a stored copy that no longer matches its
//! digest is refetched rather than kept, and blobs above `blob_memory_max_object` are read from
//! the store as before.

use berth_testkit::common;

use std::path::Path;

use common::*;

/// The same length, one bit flipped: only a hash tells it from the original.
fn rot(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[100] ^= 1;
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_blob_is_served_from_memory_as_the_verified_content() {
    let fake = FakeRegistry::start().await;
    let blob = random_bytes(4096);
    let d = fake.put_blob(blob.clone());
    let proxy = TestProxy::start(&fake.url(), "").await;
    let url = proxy.url(&format!("/v2/library/a/blobs/{d}"));
    // The fill, then the first hit, which reads the stored copy, hashes it and keeps it.
    assert_eq!(get(&url, &[]).await.bytes(), &blob);
    proxy.wait_committed(1).await;
    let r = get(&url, &[]).await;
    assert_eq!((r.status, r.bytes()), (200, &blob));
    // The file changes under the running server: memory still serves the verified bytes.
    rot(&blob_path(&proxy.store(), &d));
    let r = get(&url, &[]).await;
    assert_eq!((r.status, r.bytes()), (200, &blob), "the verified bytes, from memory");
    assert_eq!(r.header("docker-content-digest"), Some(d.as_str()));
    assert_eq!(r.header("content-length"), Some("4096"));
    let r = get(&url, &[("range", "bytes=10-19")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 10-19/4096"));
    assert_eq!(r.bytes(), &blob[10..20]);
    let r = get(&url, &[("range", "bytes=4000-")]).await;
    assert_eq!((r.status, r.bytes()), (206, &blob.slice(4000..)));
    let r = get(&url, &[("range", "bytes=5000-")]).await;
    assert_eq!(r.status, 416, "past the end");
    let r = head(&url, &[]).await;
    assert_eq!((r.status, r.header("content-length")), (200, Some("4096")));
    assert_eq!(fake.hits("GET", &format!("/v2/library/a/blobs/{d}")), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_small_blob_that_no_longer_matches_is_refetched_not_kept() {
    let fake = FakeRegistry::start().await;
    let blob = random_bytes(3000);
    let d = fake.put_blob(blob.clone());
    let proxy = TestProxy::start(&fake.url(), "").await;
    let url = proxy.url(&format!("/v2/library/a/blobs/{d}"));
    assert_eq!(get(&url, &[]).await.bytes(), &blob);
    proxy.wait_committed(1).await;
    // Rotten before memory ever read it: the first hit hashes it, removes it and refetches.
    rot(&blob_path(&proxy.store(), &d));
    for _ in 0..3 {
        let r = get(&url, &[]).await;
        assert_eq!((r.status, r.bytes()), (200, &blob), "never the rotten bytes");
    }
    assert_eq!(fake.hits("GET", &format!("/v2/library/a/blobs/{d}")), 2);
    // The refetch is committed just after its client has every byte.
    proxy.wait_committed(1).await;
    assert_eq!(
        std::fs::read(blob_path(&proxy.store(), &d)).unwrap(),
        blob,
        "healed on disk"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_above_the_memory_object_limit_are_read_from_the_store() {
    let fake = FakeRegistry::start().await;
    let (small, large) = (random_bytes(1000), random_bytes(5000));
    let (ds, dl) = (fake.put_blob(small.clone()), fake.put_blob(large.clone()));
    let proxy = TestProxy::start(&fake.url(), "[cache]\nblob_memory_max_object = \"4KiB\"").await;
    let url = |d: &str| proxy.url(&format!("/v2/library/a/blobs/{d}"));
    let store = proxy.store();
    for _ in 0..2 {
        assert_eq!(get(&url(&ds), &[]).await.bytes(), &small);
        assert_eq!(get(&url(&dl), &[]).await.bytes(), &large);
        proxy.wait_committed(2).await;
    }
    // Both files removed under the running server: the small one is still answered from
    // memory; the large one is read from the store, finds no file and is fetched again.
    std::fs::remove_file(blob_path(&store, &ds)).unwrap();
    std::fs::remove_file(blob_path(&store, &dl)).unwrap();
    assert_eq!(get(&url(&ds), &[]).await.bytes(), &small, "from memory");
    assert_eq!(get(&url(&dl), &[]).await.bytes(), &large, "fetched again");
    assert_eq!(fake.hits("GET", &format!("/v2/library/a/blobs/{ds}")), 1);
    assert_eq!(fake.hits("GET", &format!("/v2/library/a/blobs/{dl}")), 2);
}
