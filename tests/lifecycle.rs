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

fn blob_path(store: &Path, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    store.join("blobs/sha256").join(&hex[..2]).join(hex)
}

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
