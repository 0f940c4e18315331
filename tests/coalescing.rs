//! One upstream transfer per digest, streamed to every reader: 32 concurrent clients, a client
//! that leaves early, a corrupting upstream, a Range request during a fill, and coalesced
//! manifest fetches.

use berth_testkit::common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use http_body_util::BodyExt;
use tokio::sync::Barrier;

const CLIENTS: usize = 32;

/// A slow upstream: 8 MiB in 64 KiB chunks, 2 ms apart (about 0.25 s per transfer).
async fn slow_fake() -> (FakeRegistry, bytes::Bytes, String) {
    let fake = FakeRegistry::start().await;
    fake.set_chunk_delay(Duration::from_millis(2));
    let blob = random_bytes(8 << 20);
    let d = fake.put_blob(blob.clone());
    (fake, blob, d)
}

async fn race(url: String, n: usize) -> Vec<Reply> {
    let barrier = Arc::new(Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (b, url) = (barrier.clone(), url.clone());
            tokio::spawn(async move {
                b.wait().await;
                get(&url, &[]).await
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_is_fetched_once_when_clients_race() {
    let (fake, blob, d) = slow_fake().await;
    let proxy = TestProxy::start(&fake.url(), "").await;
    let replies = race(proxy.url(&format!("/v2/library/app/blobs/{d}")), CLIENTS).await;
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r.status, 200, "client {i}");
        assert_eq!(r.bytes(), &blob, "client {i} got the exact bytes");
    }
    assert_eq!(
        fake.hits("GET", &format!("/v2/library/app/blobs/{d}")),
        1,
        "one upstream GET for {CLIENTS} clients"
    );
    let m = proxy.metrics().await;
    let coalesced: u64 = m
        .lines()
        .filter(|l| l.starts_with("berth_coalesced_requests_total{kind=\"blob\""))
        .filter_map(|l| l.rsplit(" ").next()?.parse::<u64>().ok())
        .sum();
    let hits = m
        .lines()
        .filter(|l| l.starts_with("berth_cache_lookups_total{kind=\"blob\"") && l.contains("result=\"hit\""))
        .count();
    assert!(
        coalesced as usize + hits > 0,
        "requests joined the fill or hit the committed blob:\n{m}"
    );
    assert!(
        m.contains("berth_upstream_inflight_fetches{upstream=\"hub\"} 0"),
        "no fill left running"
    );
    assert!(
        m.contains(&format!(
            "berth_upstream_fetched_bytes_total{{kind=\"blob\",upstream=\"hub\"}} {}",
            blob.len()
        )),
        "upstream bytes = 1x blob:\n{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fill_continues_when_the_first_client_disconnects() {
    let (fake, blob, d) = slow_fake().await;
    let proxy = TestProxy::start(&fake.url(), "").await;
    let url = proxy.url(&format!("/v2/library/app/blobs/{d}"));
    // The first client reads one frame and goes away.
    let uri: http::Uri = url.parse().unwrap();
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get(uri.path())
        .header("host", "x")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let mut body = sender.send_request(req).await.unwrap().into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    drop(body);
    drop(sender);
    conn.abort();
    // Others, arriving during the fill, still get everything.
    let replies = race(url.clone(), 8).await;
    for r in &replies {
        assert_eq!((r.status, r.bytes()), (200, &blob));
    }
    assert_eq!(
        fake.hits("GET", &format!("/v2/library/app/blobs/{d}")),
        1,
        "the fill was not restarted"
    );
    proxy.wait_committed(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reader_gets_an_error_when_the_upstream_corrupts_the_blob() {
    let (fake, blob, d) = slow_fake().await;
    fake.fault(&d, Fault::WrongBytes);
    let proxy = TestProxy::start(&fake.url(), "").await;
    let url = proxy.url(&format!("/v2/library/app/blobs/{d}"));
    let replies = race(url.clone(), CLIENTS).await;
    for (i, r) in replies.iter().enumerate() {
        assert!(
            r.status != 200 || r.body.is_err(),
            "client {i} must not see a clean transfer"
        );
    }
    assert!(proxy.stored_files().is_empty(), "nothing stored");
    let r = get(&url, &[]).await;
    assert_eq!(
        (r.status, r.bytes()),
        (200, &blob),
        "a later request refetches and succeeds"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_request_is_answered_during_a_fill() {
    let (fake, blob, d) = slow_fake().await;
    let proxy = TestProxy::start(&fake.url(), "").await;
    let url = proxy.url(&format!("/v2/library/app/blobs/{d}"));
    let full = tokio::spawn({
        let url = url.clone();
        async move { get(&url, &[]).await }
    });
    // Wait until the fill is running, then ask for a slice near the start and one at the end.
    let gauge = "berth_upstream_inflight_fetches{upstream=\"hub\"} 1";
    for _ in 0..500 {
        if proxy.metrics().await.contains(gauge) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let r = get(&url, &[("range", "bytes=100-199")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 100-199/{}", blob.len()).as_str())
    );
    assert_eq!(r.bytes(), &blob.slice(100..200));
    let tail = format!("bytes={}-", blob.len() - 10);
    let r = get(&url, &[("range", tail.as_str())]).await;
    assert_eq!((r.status, r.bytes()), (206, &blob.slice(blob.len() - 10..)));
    assert_eq!(full.await.unwrap().bytes(), &blob);
    assert_eq!(fake.hits("GET", &format!("/v2/library/app/blobs/{d}")), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_fetches_are_coalesced_when_clients_race() {
    let fake = FakeRegistry::start().await;
    let (_, by_tag) = fake.image("library/app", "v1", OCI_MANIFEST, &[random_bytes(100)]);
    let (digest, by_digest) = fake.image("library/other", "v2", DOCKER_MANIFEST, &[random_bytes(200)]);
    let proxy = TestProxy::start(&fake.url(), "").await;
    let cases = [
        ("/v2/library/app/manifests/v1".to_string(), by_tag),
        (format!("/v2/library/other/manifests/{digest}"), by_digest),
    ];
    for (path, bytes) in cases {
        let replies = race(proxy.url(&path), CLIENTS).await;
        for r in &replies {
            assert_eq!((r.status, r.bytes()), (200, &bytes), "{path}");
        }
        assert_eq!(fake.hits("GET", &path), 1, "one upstream GET for {path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_slows_neither_the_fill_nor_other_readers() {
    let (fake, blob, d) = slow_fake().await;
    let proxy = TestProxy::start(&fake.url(), "").await;
    let url = proxy.url(&format!("/v2/library/app/blobs/{d}"));
    // A client that reads its headers and one frame, then stops reading (but stays connected).
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get(format!("/v2/library/app/blobs/{d}"))
        .header("host", "x")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let mut stalled = sender.send_request(req).await.unwrap().into_body();
    let mut got = stalled.frame().await.unwrap().unwrap().into_data().unwrap().to_vec();
    // Others complete, and the fill commits, while the slow client holds its connection.
    let replies = race(url, 4).await;
    for r in &replies {
        assert_eq!((r.status, r.bytes()), (200, &blob));
    }
    proxy.wait_committed(1).await;
    assert_eq!(fake.hits("GET", &format!("/v2/library/app/blobs/{d}")), 1);
    // The slow client can still finish, with the exact bytes.
    while let Some(f) = stalled.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            got.extend_from_slice(&d);
        }
    }
    assert!(got == blob, "the slow client got the exact bytes");
    conn.abort();
}
