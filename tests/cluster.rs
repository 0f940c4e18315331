//! Replicas that fetch each blob once per cluster (`[cluster]`): three berth instances in
//! process, each with its own disk, listed as each other's peers, in front of the fake
//! upstream, which counts requests and sends blobs slowly (so fills overlap with every
//! client's request). A replica that misses a blob it does not own streams it from the owner
//! (rendezvous hashing); a peer that is down is skipped and the blob fetched from the
//! upstream; peer requests without the cluster's signature are refused.

use std::time::Duration;

use berth_testkit::common;
use bytes::Bytes;
use common::{get, random_bytes, sha256, FakeRegistry, TestProxy};
use tokio::net::TcpListener;

const REPO: &str = "library/app";

struct Cluster {
    replicas: Vec<TestProxy>,
    _secret: tempfile::NamedTempFile,
}

/// `n` replicas in front of `fake`; the first `dead` peer URLs are listed but never started.
async fn start_cluster(fake: &FakeRegistry, n: usize, dead: usize) -> Cluster {
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "a-cluster-secret-for-the-tests-0123456789").unwrap();
    let mut listeners = Vec::new();
    for _ in 0..n + dead {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let urls: Vec<String> = listeners
        .iter()
        .map(|l| format!("\"http://{}\"", l.local_addr().unwrap()))
        .collect();
    // The dead peers' ports are closed: connecting is refused at once.
    let live: Vec<TcpListener> = listeners.drain(dead..).collect();
    drop(listeners);
    let mut replicas = Vec::new();
    for listener in live {
        let extra = format!(
            "[cluster]\nadvertise = \"http://{}\"\npeers = [{}]\nsecret_file = {:?}\npeer_timeout = \"1s\"\n",
            listener.local_addr().unwrap(),
            urls.join(", "),
            secret.path()
        );
        let dir = tempfile::tempdir().unwrap();
        replicas.push(TestProxy::start_on(listener, dir, &fake.url(), "", &extra).await);
    }
    Cluster {
        replicas,
        _secret: secret,
    }
}

impl Cluster {
    /// The sum of one series over every replica.
    async fn metric_sum(&self, series: &str) -> f64 {
        let mut sum = 0.0;
        for r in &self.replicas {
            sum += r.metric(series).await.unwrap_or(0.0);
        }
        sum
    }
}

async fn get_blob(proxy: &TestProxy, digest: &str) -> Bytes {
    let r = get(&proxy.url(&format!("/v2/{REPO}/blobs/{digest}")), &[]).await;
    assert_eq!(r.status, 200, "GET blob {digest} from {}", proxy.addr);
    let body = r.body.clone().unwrap();
    assert_eq!(sha256(&body), digest, "served bytes match the digest");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_fetch_each_blob_once_for_all_their_clients() {
    let fake = FakeRegistry::start().await;
    let blobs: Vec<String> = (0..6).map(|i| fake.put_blob(random_bytes((1 << 20) + i))).collect();
    fake.set_chunk_delay(Duration::from_millis(10));
    let cluster = start_cluster(&fake, 3, 0).await;

    // Every blob asked of every replica at once: 18 clients, 6 blobs.
    let mut pulls = Vec::new();
    for d in &blobs {
        for r in &cluster.replicas {
            let url = r.url(&format!("/v2/{REPO}/blobs/{d}"));
            let d = d.clone();
            pulls.push(tokio::spawn(async move {
                let reply = get(&url, &[]).await;
                assert_eq!(reply.status, 200, "{url}");
                assert_eq!(sha256(reply.body.as_ref().unwrap()), d, "{url}: verified bytes");
            }));
        }
    }
    for p in pulls {
        p.await.unwrap();
    }
    for d in &blobs {
        assert_eq!(
            fake.hits("GET", &format!("/v2/{REPO}/blobs/{d}")),
            1,
            "one upstream GET for {d} across three replicas"
        );
    }
    // Each blob has one owner; the two other replicas streamed it from the owner.
    let peer = "berth_cache_lookups_total{kind=\"blob\",result=\"peer\",upstream=\"hub\"}";
    assert_eq!(cluster.metric_sum(peer).await, 12.0, "6 blobs x 2 non-owner replicas");
    let ok = "berth_cluster_peer_requests_total{result=\"ok\"}";
    assert_eq!(cluster.metric_sum(ok).await, 12.0);
    assert_eq!(
        cluster.metric_sum("berth_cluster_peers").await,
        9.0,
        "each replica sees 3"
    );
    // Every replica stored what it served: asked again, each answers from its own disk.
    for r in &cluster.replicas {
        get_blob(r, &blobs[0]).await;
    }
    assert_eq!(fake.hits("GET", &format!("/v2/{REPO}/blobs/{}", blobs[0])), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_is_down_is_skipped_and_its_blobs_come_from_the_upstream() {
    let fake = FakeRegistry::start().await;
    let blobs: Vec<String> = (0..8).map(|i| fake.put_blob(random_bytes(200_000 + i))).collect();
    // Two live replicas; a third listed peer never answers.
    let cluster = start_cluster(&fake, 2, 1).await;
    for d in &blobs {
        for r in &cluster.replicas {
            get_blob(r, d).await;
        }
    }
    let failed = "berth_cluster_peer_requests_total{result=\"failed\"}";
    assert!(
        cluster.metric_sum(failed).await >= 1.0,
        "with 8 blobs over 3 peers the dead one owns some: it was tried and marked down"
    );
    for d in &blobs {
        let hits = fake.hits("GET", &format!("/v2/{REPO}/blobs/{d}"));
        assert!(
            (1..=2).contains(&hits),
            "{d}: at most one upstream GET per live replica ({hits})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_requests_need_the_clusters_signature() {
    let fake = FakeRegistry::start().await;
    let d = fake.put_blob(random_bytes(50_000));
    let cluster = start_cluster(&fake, 1, 0).await;
    let r = &cluster.replicas[0];
    let path = format!("/_berth/peer/hub/{REPO}/blobs/{d}");
    let unsigned = get(&r.url(&path), &[]).await;
    assert_eq!(unsigned.status, 403, "an unsigned peer request is refused");
    let forged = get(&r.url(&path), &[("x-berth-peer", &"00".repeat(32))]).await;
    assert_eq!(forged.status, 403, "a wrong signature is refused");
    assert_eq!(fake.total_hits(), 0, "a refused peer request reaches no upstream");
}
