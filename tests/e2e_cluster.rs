//! End to end, "one cluster": three berth replicas (the real binary) on loopback, listed as
//! each other's `[cluster]` peers and sharing one `[storage.s3]` bucket on a real
//! S3-compatible store (SeaweedFS's `weed mini`), in front of a real `docker-registry` whose
//! access log counts what reaches the upstream. 30 concurrent skopeo pulls of one multi-layer
//! image spread over the three replicas fetch the manifest and each blob from the upstream
//! exactly once; a
//! fourth replica with an empty disk then serves the image with no upstream request at all,
//! and so do the three once their disks are wiped and they are restarted;
//! with the object store stopped, cached pulls are still served and a new image still fills
//! from the upstream.

use berth_testkit::support;

use std::path::PathBuf;

use support::berth::{Berth, BerthConfig};
use support::image::{self, Format, Image};
use support::registry::Registry;
use support::seaweed::SeaweedFs;
use support::skopeo::{assert_dir_has_image, skopeo_copy};

const KIB: usize = 1024;
const REPO: &str = "team/app";
const TAG: &str = "v1";

struct World {
    registry: Registry,
    weed: SeaweedFs,
    secret: tempfile::NamedTempFile,
    ports: Vec<u16>,
    scratch: tempfile::TempDir,
}

impl World {
    fn start(replicas: usize) -> World {
        let secret = tempfile::NamedTempFile::new().expect("create the cluster secret");
        std::fs::write(secret.path(), "e2e-cluster-secret-0123456789abcdef").expect("write the cluster secret");
        World {
            registry: Registry::start(),
            weed: SeaweedFs::start(),
            secret,
            ports: (0..replicas).map(|_| support::free_port()).collect(),
            scratch: tempfile::Builder::new()
                .prefix("berth-e2e-cluster-")
                .tempdir()
                .expect("create the scratch dir"),
        }
    }

    /// Replica on `port`, a member of the cluster of every port in `self.ports`. The peer
    /// timeout is generous: a busy owner on a loaded 2-core machine may take seconds to answer,
    /// and these tests check deduplication, not the fallback (tests/cluster.rs does that).
    fn replica(&self, port: u16) -> Berth {
        let peers: Vec<String> = self.ports.iter().map(|p| format!("\"http://127.0.0.1:{p}\"")).collect();
        let w = &self.weed;
        let extra = format!(
            "[storage.s3]\nendpoint = \"{}\"\nbucket = \"{}\"\naccess_key_id = \"{}\"\nsecret_access_key_file = {:?}\n\
             allow_http = true\ntimeout = \"3s\"\n\n\
             [cluster]\nadvertise = \"http://127.0.0.1:{port}\"\npeers = [{}]\nsecret_file = {:?}\n\
             peer_timeout = \"10s\"\n",
            w.endpoint(),
            w.bucket(),
            w.access_key(),
            w.secret_key_file(),
            peers.join(", "),
            self.secret.path()
        );
        Berth::start_with(
            BerthConfig::new(&self.registry.url())
                .port(port)
                .metrics()
                .extra(&extra),
        )
    }

    fn out(&self, label: &str) -> PathBuf {
        self.scratch.path().join(label)
    }

    /// Upstream requests for the repository (the harness's pushes and probes excluded).
    fn upstream_requests(&self) -> usize {
        self.registry
            .requests_excluding_probes()
            .iter()
            .filter(|l| l.user_agent != "berth-e2e" && l.path.starts_with(&format!("/v2/{REPO}/")))
            .count()
    }
}

/// `skopeo copy` of `reference` from `replica`, checked against `image`.
fn pull(w: &World, replica: &Berth, image: &Image, tag: &str, label: &str) {
    let dest = w.out(label);
    let reference = format!("{}/{REPO}:{tag}", replica.addr());
    skopeo_copy(&reference, &dest, &[]).assert_success(&format!("{label}: skopeo copy {reference}"));
    assert_dir_has_image(&dest, image);
}

#[test]
fn thirty_pulls_over_three_replicas_fetch_each_blob_once_and_a_fourth_replica_needs_no_upstream() {
    let mut w = World::start(3);
    let mut rng = fastrand::Rng::new();
    let image = Image::generate(&mut rng, Format::Oci, "amd64", &[3072 * KIB, 1024 * KIB, 256 * KIB]);
    image::push_image(&w.registry.addr(), REPO, TAG, &image);
    let replicas: Vec<Berth> = w.ports.iter().map(|p| w.replica(*p)).collect();

    std::thread::scope(|s| {
        for i in 0..30 {
            let (w, replica, image) = (&w, &replicas[i % 3], &image);
            s.spawn(move || pull(w, replica, image, TAG, &format!("cold-{i}")));
        }
    });
    for blob in image.blobs() {
        let path = format!("/v2/{REPO}/blobs/{}", blob.digest);
        assert_eq!(
            w.registry.count("GET", &path),
            1,
            "one upstream GET of {} for 30 pulls over three replicas\n{}",
            blob.digest,
            w.registry.access_log_text()
        );
    }
    // The tag's owner fetched the manifest for the cluster; the others asked the owner.
    let manifest_gets = w.registry.count("GET", &format!("/v2/{REPO}/manifests/"));
    assert_eq!(
        manifest_gets,
        1,
        "one manifest GET for 30 pulls over three replicas\n{}",
        w.registry.access_log_text()
    );

    // Everything reaches the bucket in the background; then a new replica with an empty disk
    // needs no upstream request for the whole image.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let wanted: Vec<String> = image
        .blobs()
        .iter()
        .map(|b| b.digest.trim_start_matches("sha256:").to_string())
        .chain([image.manifest.digest.trim_start_matches("sha256:").to_string()])
        .collect();
    loop {
        let keys = w.weed.keys();
        if wanted.iter().all(|hex| keys.iter().any(|k| k.ends_with(hex.as_str())))
            && keys.iter().any(|k| k.contains("/_tags/"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the image never reached the bucket: {keys:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let before = w.upstream_requests();
    let fourth_port = support::free_port();
    w.ports.push(fourth_port);
    let fourth = w.replica(fourth_port);
    pull(&w, &fourth, &image, TAG, "fourth");
    assert_eq!(
        w.upstream_requests(),
        before,
        "a replica with an empty disk serves the image from the shared tier\n{}",
        w.registry.access_log_text()
    );

    // Every local tier wiped and the replicas restarted: the same, from the shared tier.
    let mut replicas = replicas;
    for (i, r) in replicas.iter_mut().enumerate() {
        r.stop();
        std::fs::remove_dir_all(r.storage_dir()).expect("wipe the local tier");
        std::fs::create_dir_all(r.storage_dir()).expect("recreate the storage dir");
        r.restart();
        pull(&w, r, &image, TAG, &format!("wiped-{i}"));
    }
    assert_eq!(
        w.upstream_requests(),
        before,
        "replicas restarted on empty disks serve the image from the shared tier\n{}",
        w.registry.access_log_text()
    );

    // The object store stops: cached pulls go on, and a new image fills from the upstream.
    w.weed.stop();
    pull(&w, &replicas[0], &image, TAG, "store-down-cached");
    assert_eq!(w.upstream_requests(), before, "a cached pull needs no upstream");
    let second = Image::generate(&mut rng, Format::DockerV2, "amd64", &[512 * KIB]);
    image::push_image(&w.registry.addr(), REPO, "v2", &second);
    pull(&w, &replicas[1], &second, "v2", "store-down-new");
    drop(fourth);
}

/// The owner of `digest` among `peers` by the documented rule (the highest
/// `sha256(peer URL, 0, digest hex)`, first 8 bytes big-endian): the test's own oracle.
fn owner_of(peers: &[String], digest: &str) -> usize {
    use sha2::{Digest as _, Sha256};
    let hex = digest.trim_start_matches("sha256:");
    let score = |p: &String| {
        let mut h = Sha256::new();
        h.update(p.as_bytes());
        h.update([0]);
        h.update(hex.as_bytes());
        let out = h.finalize();
        u64::from_be_bytes(out[..8].try_into().unwrap())
    };
    (0..peers.len()).max_by_key(|i| score(&peers[*i])).unwrap()
}

/// A GET whose body is read as it arrives: the response head and the first body bytes now,
/// the rest when [`Streaming::finish`] is awaited.
struct Streaming {
    stream: tokio::net::TcpStream,
    body: Vec<u8>,
    length: usize,
}

impl Streaming {
    async fn start(addr: &str, path: &str) -> Streaming {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect to berth");
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16384];
        let head_end = loop {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "berth closed before the response head");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let length = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(str::to_string)
            })
            .and_then(|v| v.trim().parse().ok())
            .expect("a Content-Length");
        let mut body = buf[head_end..].to_vec();
        while body.is_empty() {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "berth closed before the first body byte");
            body.extend_from_slice(&chunk[..n]);
        }
        Streaming { stream, body, length }
    }

    /// The whole body, or `None` if the transfer broke off.
    async fn finish(mut self) -> Option<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        let mut rest = Vec::new();
        let _ = self.stream.read_to_end(&mut rest).await;
        self.body.extend_from_slice(&rest);
        (self.body.len() == self.length).then_some(self.body)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_stream_before_the_owner_finishes_and_survive_its_kill() {
    use berth_testkit::common::{random_bytes, sha256, FakeRegistry};
    let fake = FakeRegistry::start().await;
    let blob = random_bytes(8 << 20);
    let digest = fake.put_blob(blob.clone());
    // 128 chunks of 64 KiB, 20 ms apart: the owner's fill takes about 2.5 s.
    fake.set_chunk_delay(std::time::Duration::from_millis(20));
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "e2e-cluster-secret-0123456789abcdef").unwrap();
    let ports: Vec<u16> = (0..3).map(|_| support::free_port()).collect();
    let urls: Vec<String> = ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
    let peers: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    let upstream = fake.url();
    let mut replicas: Vec<Berth> = Vec::new();
    for port in &ports {
        let extra = format!(
            "[cluster]\nadvertise = \"http://127.0.0.1:{port}\"\npeers = [{}]\nsecret_file = {:?}\npeer_timeout = \"10s\"\n",
            peers.join(", "),
            secret.path()
        );
        let cfg = BerthConfig::new(&upstream).port(*port).extra(&extra);
        replicas.push(
            tokio::task::spawn_blocking(move || Berth::start_with(cfg))
                .await
                .unwrap(),
        );
    }
    let owner = owner_of(&urls, &digest);
    let others: Vec<usize> = (0..3).filter(|i| *i != owner).collect();
    let path = format!("/v2/library/app/blobs/{digest}");

    // Both non-owners' clients get bytes while the upstream is still sending: streamed, not
    // stored and then served.
    let mut streams = Vec::new();
    for i in &others {
        streams.push(Streaming::start(&replicas[*i].addr(), &path).await);
    }
    assert_eq!(
        fake.blob_bodies_in_flight(),
        1,
        "the first bytes arrived before the fill ended"
    );
    assert_eq!(fake.hits("GET", &path), 1, "one upstream GET: the owner's");

    // kill -9 the owner mid-fill: the other replicas' clients finish (the rest comes from the
    // upstream) or see a broken transfer, and a retry succeeds.
    tokio::task::block_in_place(|| replicas[owner].stop());
    for (s, i) in streams.into_iter().zip(&others) {
        let body = match s.finish().await {
            Some(body) => body,
            None => {
                let retry = berth_testkit::common::get(&format!("http://{}{path}", replicas[*i].addr()), &[]).await;
                assert_eq!(retry.status, 200, "the retry succeeds");
                retry.body.unwrap().to_vec()
            }
        };
        assert_eq!(sha256(&body), digest, "replica {i} served the verified blob");
    }
    // Nothing partial anywhere: each surviving replica holds exactly the verified blob.
    for i in &others {
        let r = &replicas[*i];
        let stored = berth_testkit::common::walk(&r.storage_dir().join("blobs"));
        assert_eq!(stored.len(), 1, "replica {i} stored the blob once: {stored:?}");
        assert_eq!(sha256(&std::fs::read(&stored[0]).unwrap()), digest);
        let partial = berth_testkit::common::walk(&r.storage_dir().join("tmp"));
        assert!(partial.is_empty(), "no partial file left: {partial:?}");
    }
}
