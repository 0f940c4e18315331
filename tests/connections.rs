//! Connection hygiene on the listener: idle connections (no request head yet, or idle between
//! keep-alive requests) are closed after `idle_timeout`, one client address cannot hold more
//! than `max_connections_per_ip`, and connections over a limit get a prompt 503 instead of
//! waiting unseen in the backlog, while normal clients keep pulling.

use berth_testkit::common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const IDLE_TIMEOUT: Duration = Duration::from_secs(3);
/// Slack for a loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(10);

/// A connection from `from` (any 127.0.0.0/8 address is loopback on Linux) to berth.
async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::from((from, 0))).unwrap();
    s.connect(to).await.unwrap()
}

/// How a connection ended: the bytes berth sent before closing it, and when it closed.
async fn wait_closed(mut s: TcpStream, opened: Instant) -> (String, Duration) {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(IDLE_TIMEOUT + SLACK, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into_owned(), opened.elapsed()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("connection still open after {:?}", opened.elapsed()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_capped_per_address_while_clients_keep_pulling() {
    let fake = FakeRegistry::start().await;
    let layer = random_bytes(200_000);
    fake.image("library/app", "v1", OCI_MANIFEST, std::slice::from_ref(&layer));
    let layer_digest = sha256(&layer);
    let (max, per_ip, idle) = (8, 4, 20);
    let server = format!(
        "[server]\nmax_connections = {max}\nmax_connections_per_ip = {per_ip}\nidle_timeout = \"{}s\"\n",
        IDLE_TIMEOUT.as_secs()
    );
    let proxy = TestProxy::start(&fake.url(), &server).await;

    // `idle` > max_connections sockets from one address that never send a byte.
    let opened = Instant::now();
    let mut sockets = Vec::new();
    for _ in 0..idle {
        sockets.push(connect_from([127, 0, 0, 2], proxy.addr).await);
    }
    let waits: Vec<_> = sockets
        .into_iter()
        .map(|s| tokio::spawn(wait_closed(s, opened)))
        .collect();

    // A normal client on another address keeps pulling meanwhile.
    for i in 0..10 {
        let m = tokio::time::timeout(
            SLACK,
            get(&proxy.url("/v2/library/app/manifests/v1"), &[("accept", OCI_MANIFEST)]),
        )
        .await
        .unwrap_or_else(|_| panic!("pull {i}: manifest timed out behind idle connections"));
        assert_eq!(m.status, 200, "pull {i}");
        let b = tokio::time::timeout(
            SLACK,
            get(&proxy.url(&format!("/v2/library/app/blobs/{layer_digest}")), &[]),
        )
        .await
        .unwrap_or_else(|_| panic!("pull {i}: blob timed out behind idle connections"));
        assert_eq!((b.status, b.bytes()), (200, &layer), "pull {i}");
    }

    let mut refused = 0;
    let mut held = Vec::new();
    for w in waits {
        let (answer, after) = w.await.unwrap();
        if answer.starts_with("HTTP/1.1 503") {
            refused += 1;
        } else {
            assert_eq!(answer, "", "an idle connection is closed without an answer");
            held.push(after);
        }
    }
    let longest = held.iter().max().copied().unwrap_or_default();
    println!(
        "{idle} idle sockets: {refused} refused at once with 503, {} closed after at most {longest:?}",
        held.len()
    );
    assert_eq!(
        refused,
        idle - per_ip,
        "everything beyond the per-address cap is refused"
    );
    assert!(
        longest <= IDLE_TIMEOUT + SLACK,
        "idle connections close within idle_timeout ({longest:?})"
    );

    // Idle between keep-alive requests counts too.
    let mut ka = connect_from([127, 0, 0, 3], proxy.addr).await;
    ka.write_all(b"GET /v2/ HTTP/1.1\r\nHost: berth\r\n\r\n").await.unwrap();
    let answered = Instant::now();
    let (answer, after) = wait_closed(ka, answered).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    println!("keep-alive connection closed {after:?} after its last answer");
    assert!(after <= IDLE_TIMEOUT + SLACK, "keep-alive idle closes ({after:?})");

    // At the global limit, further connections are answered at once, not left in the backlog.
    let mut more = Vec::new();
    for last in 4..7u8 {
        for _ in 0..per_ip {
            more.push(connect_from([127, 0, 0, last], proxy.addr).await);
        }
    }
    let started = Instant::now();
    let ends: Vec<_> = more
        .into_iter()
        .map(|s| tokio::spawn(wait_closed(s, started)))
        .collect();
    let mut refused_at_limit = Vec::new();
    for e in ends {
        let (answer, after) = e.await.unwrap();
        if answer.starts_with("HTTP/1.1 503") {
            refused_at_limit.push(after);
        }
    }
    println!(
        "{} connections over max_connections = {max}: {} refused with 503, longest wait {:?}",
        3 * per_ip,
        refused_at_limit.len(),
        refused_at_limit.iter().max()
    );
    assert!(refused_at_limit.len() >= 3 * per_ip - max, "over the limit: refused");
    assert!(
        refused_at_limit.iter().all(|t| *t < IDLE_TIMEOUT),
        "refusals come before any idle timeout: {refused_at_limit:?}"
    );
}
