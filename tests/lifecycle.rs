//! Cache lifecycle: the disk cap holds after every pull, pins and recent content survive
//! eviction, restarts lose nothing (even with the upstream gone), corrupt files are refetched,
//! and a full disk degrades to streaming from upstream.

use berth_testkit::common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::*;

const ACCEPT: (&str, &str) = ("accept", "application/vnd.oci.image.manifest.v1+json");
const MIB: u64 = 1 << 20;

fn content_bytes(store: &Path) -> u64 {
    walk(&store.join("blobs"))
        .iter()
        .chain(walk(&store.join("tmp")).iter())
        .map(|p| p.metadata().map_or(0, |m| m.len()))
        .sum()
}

/// Pull an image the way a client does: manifest by tag, then config and layers.
async fn pull(proxy: &TestProxy, repo: &str, tag: &str) -> Vec<String> {
    let m = get(&proxy.url(&format!("/v2/{repo}/manifests/{tag}")), &[ACCEPT]).await;
    assert_eq!(m.status, 200, "{repo}:{tag}");
    let v = m.json();
    let mut digests = vec![m.header("docker-content-digest").unwrap().to_string()];
    let blobs = std::iter::once(&v["config"]).chain(v["layers"].as_array().unwrap().iter());
    for b in blobs {
        let d = b["digest"].as_str().unwrap();
        let r = get(&proxy.url(&format!("/v2/{repo}/blobs/{d}")), &[]).await;
        assert_eq!(r.status, 200, "{repo} blob {d}");
        assert_eq!(sha256(r.bytes()), d, "{repo} blob {d} verified");
        digests.push(d.to_string());
    }
    digests
}

fn images(fake: &FakeRegistry, n: usize, layer_size: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let repo = format!("library/img{i}");
            let layer = Bytes::from(vec![i as u8 + 1; layer_size]);
            fake.image(&repo, "v1", OCI_MANIFEST, &[layer]);
            repo
        })
        .collect()
}

async fn capped_proxy(fake: &FakeRegistry, storage: &str) -> TestProxy {
    TestProxy::start_with(tempfile::tempdir().unwrap(), &fake.url(), storage, "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_stays_under_max_size_when_pulling_several_times_that() {
    let fake = FakeRegistry::start().await;
    // Eight images of ~1.5 MiB (12 MiB in all) through a 4 MiB cap.
    let repos = images(&fake, 8, 1536 * 1024);
    let proxy = capped_proxy(&fake, "max_size = \"4MiB\"").await;
    let mut last = Vec::new();
    for repo in &repos {
        last = pull(&proxy, repo, "v1").await;
        let used = content_bytes(&proxy.store());
        assert!(
            used <= 4 * MIB,
            "after pulling {repo}: {used} bytes on disk exceeds the 4 MiB cap"
        );
    }
    let m = proxy.metrics().await;
    assert!(
        proxy.metric("berth_evictions_total{reason=\"size\"}").await >= Some(1.0),
        "evictions are counted:\n{m}"
    );
    assert!(m.contains(&format!("berth_storage_limit_bytes {}", 4 * MIB)), "{m}");
    // The most recently used image is still cached: served with the upstream gone.
    fake.stop();
    for d in &last[1..] {
        let r = get(&proxy.url(&format!("/v2/{}/blobs/{d}", repos[7])), &[]).await;
        assert_eq!(r.status, 200, "most recent image's blob {d} still cached");
    }
    let r = get(&proxy.url(&format!("/v2/{}/manifests/v1", repos[7])), &[ACCEPT]).await;
    assert_eq!(r.status, 200, "most recent tag still cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_images_survive_eviction() {
    let fake = FakeRegistry::start().await;
    let repos = images(&fake, 6, 1536 * 1024);
    let proxy = capped_proxy(&fake, "max_size = \"4MiB\"").await;
    let pinned = pull(&proxy, &repos[0], "v1").await;
    berth::store::Pins::new(&proxy.store())
        .add(berth::store::Pin {
            reference: format!("{}:v1", repos[0]),
            digest: pinned[0].clone(),
        })
        .unwrap();
    for repo in &repos[1..] {
        pull(&proxy, repo, "v1").await;
        assert!(content_bytes(&proxy.store()) <= 4 * MIB);
    }
    for d in &pinned {
        assert!(blob_path(&proxy.store(), d).is_file(), "pinned {d} kept");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_the_upstream_stopped_serves_everything_cached() {
    let fake = FakeRegistry::start().await;
    let repos = images(&fake, 3, 300_000);
    let proxy = TestProxy::start(&fake.url(), "").await;
    let mut pulled = Vec::new();
    for repo in &repos {
        pulled.push(pull(&proxy, repo, "v1").await);
    }
    let dir = proxy.stop().await;
    fake.stop();
    let proxy = TestProxy::start_in(dir, &fake.url(), "").await;
    for (repo, digests) in repos.iter().zip(&pulled) {
        assert_eq!(pull(&proxy, repo, "v1").await, *digests, "{repo} by tag after restart");
        let r = get(&proxy.url(&format!("/v2/{repo}/manifests/{}", digests[0])), &[ACCEPT]).await;
        assert_eq!(r.status, 200, "{repo} by digest after restart");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_file_found_after_restart_is_refetched_not_served() {
    let fake = FakeRegistry::start().await;
    let blob = random_bytes(200_000);
    let d = fake.put_blob(blob.clone());
    let proxy = TestProxy::start(&fake.url(), "").await;
    assert_eq!(
        get(&proxy.url(&format!("/v2/library/a/blobs/{d}")), &[]).await.bytes(),
        &blob
    );
    let dir = proxy.stop().await;
    let path = blob_path(&dir.path().join("store"), &d);
    let mut rotten = blob.to_vec();
    rotten[1000] ^= 1;
    std::fs::write(&path, rotten).unwrap();
    let proxy = TestProxy::start_in(dir, &fake.url(), "").await;
    let r = get(&proxy.url(&format!("/v2/library/a/blobs/{d}")), &[]).await;
    assert_eq!((r.status, r.bytes()), (200, &blob), "refetched, never the rotten bytes");
    assert_eq!(fake.hits("GET", &format!("/v2/library/a/blobs/{d}")), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_recency_survives_a_restart() {
    let fake = FakeRegistry::start().await;
    let (a, b, c) = (
        Bytes::from(vec![1u8; 1_500_000]),
        Bytes::from(vec![2u8; 1_500_000]),
        Bytes::from(vec![3u8; 1_500_000]),
    );
    let (da, db, dc) = (fake.put_blob(a), fake.put_blob(b), fake.put_blob(c));
    let proxy = capped_proxy(&fake, "max_size = \"4MiB\"").await;
    for d in [&da, &db] {
        assert_eq!(
            get(&proxy.url(&format!("/v2/library/a/blobs/{d}")), &[]).await.status,
            200
        );
    }
    let dir = proxy.stop().await;
    // Pretend both were fetched hours ago, A before B.
    let store = dir.path().join("store");
    let hours_ago = |h: u64| SystemTime::now() - Duration::from_secs(3600 * h);
    std::fs::File::open(blob_path(&store, &da))
        .unwrap()
        .set_modified(hours_ago(3))
        .unwrap();
    std::fs::File::open(blob_path(&store, &db))
        .unwrap()
        .set_modified(hours_ago(2))
        .unwrap();
    // A is used again, then berth restarts: A is now the most recent.
    let proxy = TestProxy::start_with(dir, &fake.url(), "max_size = \"4MiB\"", "").await;
    assert_eq!(
        get(&proxy.url(&format!("/v2/library/a/blobs/{da}")), &[]).await.status,
        200
    );
    let dir = proxy.stop().await;
    let proxy = TestProxy::start_with(dir, &fake.url(), "max_size = \"4MiB\"", "").await;
    assert_eq!(
        get(&proxy.url(&format!("/v2/library/a/blobs/{dc}")), &[]).await.status,
        200,
        "C needs room"
    );
    assert!(
        blob_path(&proxy.store(), &da).is_file(),
        "A, used most recently before the restart, is kept"
    );
    assert!(
        !blob_path(&proxy.store(), &db).is_file(),
        "B, least recently used, was evicted"
    );
}

/// A tmpfs mounted on the store: a real ENOSPC. Needs root (CI runs as root).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status();
        assert!(
            st.is_ok_and(|s| s.success()),
            "mounting a tmpfs failed: this test needs root (CI runs as root)"
        );
        Tmpfs(path.to_path_buf())
    }
}

impl Tmpfs {
    fn remount(&self, mode: &str) {
        let st = std::process::Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(&self.0)
            .status();
        assert!(st.is_ok_and(|s| s.success()), "remount {mode} failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_degrades_to_streaming_from_upstream_and_recovers() {
    let fake = FakeRegistry::start().await;
    let big = random_bytes(24 << 20);
    let d_big = fake.put_blob(big.clone());
    let small = random_bytes(300_000);
    let d_small = fake.put_blob(small.clone());
    let dir = tempfile::tempdir().unwrap();
    let _mount = Tmpfs::mount(&dir.path().join("store"), "8m");
    let proxy = TestProxy::start_in(dir, &fake.url(), "").await;
    // Fill most of the disk behind berth's back, as another tenant would.
    std::fs::write(proxy.store().join("ballast"), vec![0u8; 6 << 20]).unwrap();
    let r = get(&proxy.url(&format!("/v2/library/a/blobs/{d_big}")), &[]).await;
    assert_eq!((r.status, r.bytes()), (200, &big), "the pull completes from upstream");
    assert!(!blob_path(&proxy.store(), &d_big).exists(), "not cached: it cannot fit");
    assert!(proxy.temp_files().is_empty(), "no temp file left");
    std::fs::remove_file(proxy.store().join("ballast")).unwrap();
    let r = get(&proxy.url(&format!("/v2/library/a/blobs/{d_small}")), &[]).await;
    assert_eq!((r.status, r.bytes()), (200, &small), "berth keeps serving");
    proxy.wait_committed(1).await;
    assert!(
        blob_path(&proxy.store(), &d_small).is_file(),
        "and caches again once there is room"
    );
    let m = proxy.metrics().await;
    assert!(m.contains("result=\"passthrough\""), "passthrough is counted:\n{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_reports_a_store_that_cannot_be_written_and_recovers() {
    let fake = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mount = Tmpfs::mount(&dir.path().join("store"), "8m");
    let proxy = TestProxy::start_with(dir, &fake.url(), "eviction_interval = \"50ms\"", "").await;
    let ready = |want: u16| {
        let url = proxy.url("/readyz");
        async move {
            for _ in 0..200 {
                if get(&url, &[]).await.status == want {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            false
        }
    };
    assert!(ready(200).await);
    mount.remount("ro");
    assert!(ready(503).await, "read-only store: not ready");
    assert_eq!(get(&proxy.url("/livez"), &[]).await.status, 200, "but alive");
    mount.remount("rw");
    assert!(ready(200).await, "ready again without a restart");
}

/// Fill the file system holding `file` to its last byte, as another writer would.
fn fill_up(file: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(file).unwrap();
    let chunk = vec![0u8; 64 << 10];
    for size in [64 << 10, 4096, 1] {
        while f.write_all(&chunk[..size]).is_ok() {}
    }
}

/// Issue 9 item 9: with the store unwritable (full, or read-only), a stale tag that is
/// unchanged upstream, one that moved, and a cold image are still answered from the healthy
/// upstream, verified, without caching; the old tag records stay; the failed writes are
/// counted.
async fn pulls_are_answered_while_the_store_cannot_be_written(full: bool) {
    let fake = FakeRegistry::start().await;
    let (a, _) = fake.image("library/a", "v1", OCI_MANIFEST, &[random_bytes(1000)]);
    let (b_old, _) = fake.image("library/b", "v1", OCI_MANIFEST, &[random_bytes(1000)]);
    let dir = tempfile::tempdir().unwrap();
    let mount = Tmpfs::mount(&dir.path().join("store"), "8m");
    let proxy = TestProxy::start_in(dir, &fake.url(), "[cache]\nmanifest_ttl = \"0s\"\n").await;
    pull(&proxy, "library/a", "v1").await;
    pull(&proxy, "library/b", "v1").await;
    let record = |repo: &str| std::fs::read_to_string(proxy.store().join(format!("tags/hub/{repo}/_tags/v1")));
    let a_record = record("library/a").unwrap();
    let (b_new, _) = fake.image("library/b", "v1", OCI_MANIFEST, &[random_bytes(1000)]);
    let (c, _) = fake.image("library/c", "v1", OCI_MANIFEST, &[random_bytes(1000)]);
    match full {
        true => fill_up(&proxy.store().join("ballast")),
        false => mount.remount("ro"),
    }
    // Past the TTL (0 s): every pull revalidates, and a changed tag needs a record write.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let what = if full { "full store" } else { "read-only store" };
    for (repo, want) in [("library/a", &a), ("library/b", &b_new), ("library/c", &c)] {
        let r = get(&proxy.url(&format!("/v2/{repo}/manifests/v1")), &[ACCEPT]).await;
        assert_eq!(r.status, 200, "{what}: {repo}:v1 answered: {:?}", r.body);
        assert_eq!(r.header("docker-content-digest"), Some(want.as_str()), "{what}: {repo}");
        assert_eq!(&sha256(r.bytes()), want, "{what}: {repo} verified");
    }
    let digests = pull(&proxy, "library/c", "v1").await;
    assert_eq!(
        &digests[0], &c,
        "{what}: the cold image pulls whole, blobs streamed through"
    );
    assert_eq!(record("library/a").unwrap(), a_record, "{what}: the old record stays");
    assert!(
        record("library/b").unwrap().contains(&b_old),
        "{what}: the moved tag keeps its old record"
    );
    assert!(
        record("library/c").is_err(),
        "{what}: nothing cached for the cold image"
    );
    let failures = proxy.metric("berth_storage_write_failures_total{kind=\"tag\"}").await;
    assert!(failures.is_some_and(|n| n > 0.0), "{what}: failed writes are counted");
    let m = proxy.metrics().await;
    let upstream_errors: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("berth_upstream_errors_total{") && !l.ends_with(" 0"))
        .collect();
    assert!(
        upstream_errors.is_empty(),
        "{what}: not upstream errors: {upstream_errors:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_still_answers_stale_tags_and_cold_manifests() {
    pulls_are_answered_while_the_store_cannot_be_written(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_store_still_answers_stale_tags_and_cold_manifests() {
    pulls_are_answered_while_the_store_cannot_be_written(false).await;
}

/// Poll `/readyz` until it answers `want` (up to `within`); returns the last answer.
async fn wait_readyz(proxy: &TestProxy, want: u16, within: Duration) -> Reply {
    let deadline = std::time::Instant::now() + within;
    loop {
        let r = get(&proxy.url("/readyz"), &[]).await;
        if r.status == want || std::time::Instant::now() >= deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Issue 9 item 10: a full store (where creating an empty file still succeeds) makes
/// `/readyz` answer 503 with the reason soon after a write fails, though the storage pass runs
/// only every 30 s; `berth_storage_writable` says 0; both recover once space comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_reports_a_full_store_with_its_reason() {
    let fake = FakeRegistry::start().await;
    fake.image("library/a", "v1", OCI_MANIFEST, &[random_bytes(1000)]);
    let dir = tempfile::tempdir().unwrap();
    let _mount = Tmpfs::mount(&dir.path().join("store"), "8m");
    let proxy = TestProxy::start_in(dir, &fake.url(), "").await;
    assert_eq!(wait_readyz(&proxy, 200, Duration::from_secs(10)).await.status, 200);
    fill_up(&proxy.store().join("ballast"));
    // A cold pull: its store writes fail (whether it is answered is the tests above).
    get(&proxy.url("/v2/library/a/manifests/v1"), &[ACCEPT]).await;
    let r = wait_readyz(&proxy, 503, Duration::from_secs(10)).await;
    assert_eq!(r.status, 503, "a full store is not ready");
    let body = String::from_utf8_lossy(r.bytes()).to_string();
    assert!(body.contains("full"), "the reason is on /readyz: {body:?}");
    assert!(proxy.metrics().await.contains("berth_storage_writable 0"));
    assert_eq!(get(&proxy.url("/livez"), &[]).await.status, 200, "but alive");
    std::fs::remove_file(proxy.store().join("ballast")).unwrap();
    assert_eq!(wait_readyz(&proxy, 200, Duration::from_secs(10)).await.status, 200);
    assert!(proxy.metrics().await.contains("berth_storage_writable 1"));
}
