//! Crash consistency: the real berth binary is killed with SIGKILL at random moments while 20
//! fills run. After a restart every file in the store matches its digest, no temp file
//! survives, and every blob pulls correctly.

use berth_testkit::common;

use std::net::TcpListener as StdListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use sha2::Digest as _;

const FILLS: usize = 20;

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn spawn_berth(config: &Path, log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("--config")
        .arg(config)
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start berth")
}

async fn wait_ready(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            drop(s);
            if get(&format!("http://127.0.0.1:{port}/readyz"), &[]).await.status == 200 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "berth did not become ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every committed file hashes to its name.
fn assert_store_consistent(store: &Path) {
    for p in walk(&store.join("blobs")) {
        let bytes = std::fs::read(&p).unwrap();
        let hex = p.file_name().unwrap().to_string_lossy().into_owned();
        let actual: String = sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(actual, hex, "{} holds other bytes than its digest", p.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_stays_consistent_when_berth_is_killed_during_fills() {
    let fake = FakeRegistry::start().await;
    fake.set_chunk_delay(Duration::from_millis(2));
    let blobs: Vec<(String, bytes::Bytes)> = (0..FILLS)
        .map(|i| {
            let b = bytes::Bytes::from(
                (0..(64 << 10) + i * (160 << 10))
                    .map(|j| (j * 7 + i) as u8)
                    .collect::<Vec<u8>>(),
            );
            (fake.put_blob(b.clone()), b)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("config.toml");
    let store = dir.path().join("store");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[storage]\npath = {store:?}\n[upstreams.hub]\nurl = \"{}\"\naliases = [\"docker.io\"]\ndefault = true\n",
            fake.url()
        ),
    )
    .unwrap();
    let log = dir.path().join("berth.log");
    let mut rng = fastrand::Rng::with_seed(0xc0ffee);
    let mut killed_with_temp_files = 0;
    for round in 0..6 {
        let mut child = spawn_berth(&config, &log);
        wait_ready(port).await;
        let clients: Vec<_> = blobs
            .iter()
            .map(|(d, _)| {
                let url = format!("http://127.0.0.1:{port}/v2/library/app/blobs/{d}");
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(30), try_get(&url)).await;
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.u64(20..400))).await;
        if !walk(&store.join("tmp")).is_empty() {
            killed_with_temp_files += 1;
        }
        child.kill().expect("SIGKILL berth");
        child.wait().unwrap();
        for c in clients {
            let _ = c.await;
        }
        assert_store_consistent(&store);
        eprintln!(
            "round {round}: {} committed, {} temp files at the kill",
            walk(&store.join("blobs")).len(),
            walk(&store.join("tmp")).len()
        );
    }
    assert!(killed_with_temp_files > 0, "at least one kill landed during fills");
    // Restart for good: temp files are gone and every blob pulls correctly.
    let mut child = spawn_berth(&config, &log);
    wait_ready(port).await;
    assert!(walk(&store.join("tmp")).is_empty(), "no temp file survives a restart");
    assert_store_consistent(&store);
    for (d, b) in &blobs {
        let r = get(&format!("http://127.0.0.1:{port}/v2/library/app/blobs/{d}"), &[]).await;
        assert_eq!((r.status, r.bytes()), (200, b), "{d} after the crashes");
    }
    assert_store_consistent(&store);
    assert_eq!(walk(&store.join("blobs")).len(), FILLS);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_reports_not_ready_then_drains_and_exits_zero() {
    let fake = FakeRegistry::start().await;
    fake.set_chunk_delay(Duration::from_millis(5));
    let blob = random_bytes(4 << 20);
    let d = fake.put_blob(blob.clone());
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("config.toml");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "sentinel-secret-4711\n").unwrap();
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nshutdown_delay = \"1s\"\ndrain_timeout = \"20s\"\n[storage]\npath = {:?}\n[upstreams.hub]\nurl = \"{}\"\naliases = [\"docker.io\"]\ndefault = true\nusername = \"u\"\npassword_file = {pw:?}\n",
            dir.path().join("store"),
            fake.url()
        ),
    )
    .unwrap();
    let log = dir.path().join("berth.log");
    let mut child = spawn_berth(&config, &log);
    wait_ready(port).await;
    // A slow transfer is in flight when SIGTERM arrives (about 1.6 s at this pace).
    let url = format!("http://127.0.0.1:{port}/v2/library/app/blobs/{d}");
    let transfer = tokio::spawn(async move { get(&url, &[]).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let term = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(term.success());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = get(&format!("http://127.0.0.1:{port}/readyz"), &[]).await;
    assert_eq!(r.status, 503, "not ready during shutdown_delay, while still answering");
    let r = transfer.await.unwrap();
    assert_eq!((r.status, r.bytes()), (200, &blob), "the in-flight transfer drains");
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0), "clean exit");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("effective configuration"), "config logged once");
    assert!(!text.contains("sentinel-secret-4711"), "secrets never reach the log");
}
