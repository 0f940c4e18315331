//! The OCI 1.1 referrers API through berth against the in-process fake upstream: an upstream
//! API that pages, one that answers 404 (the fallback tag), a subject with no referrers, the
//! `referrers_ttl` cache with its revalidation and stale answers, the `artifactType` filter,
//! and the 4 MiB cap.

use berth_testkit::common;

use bytes::Bytes;
use common::*;
use serde_json::{json, Value};

const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";
const SBOM: &str = "application/spdx+json";
const SIG: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";

/// An artifact manifest in `repo` of `artifact_type` whose `subject` is `subject`, pushed by
/// digest (no tag, as OCI 1.1 clients do); returns its referrers descriptor.
fn put_artifact(fake: &FakeRegistry, repo: &str, subject: &str, artifact_type: &str, payload: &[u8]) -> Value {
    let config = fake.put_blob(Bytes::from_static(b"{}"));
    let layer = fake.put_blob(Bytes::copy_from_slice(payload));
    let subject_size = fake.state.manifests.lock().unwrap()[&(repo.to_string(), subject.to_string())]
        .1
        .len();
    let annotations = json!({"org.opencontainers.image.created": "2026-12-05T00:00:00Z", "kind": artifact_type});
    let m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": EMPTY_CONFIG, "digest": config, "size": 2},
        "layers": [{"mediaType": artifact_type, "digest": layer, "size": payload.len()}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": subject_size},
        "annotations": annotations,
    });
    let bytes = Bytes::from(serde_json::to_vec(&m).unwrap());
    let digest = fake.put_manifest(repo, None, OCI_MANIFEST, bytes.clone());
    json!({"mediaType": OCI_MANIFEST, "digest": digest, "size": bytes.len(), "artifactType": artifact_type, "annotations": annotations})
}

fn index(descriptors: &[Value]) -> Bytes {
    Bytes::from(
        serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors})).unwrap(),
    )
}

/// The subject image `app:v1` and its fallback tag name.
fn subject(fake: &FakeRegistry) -> (String, String) {
    let (digest, _) = fake.image("library/app", "v1", OCI_MANIFEST, &[random_bytes(64)]);
    let tag = digest.replace(':', "-");
    (digest, tag)
}

fn digests(r: &Reply) -> Vec<String> {
    r.json()["manifests"]
        .as_array()
        .expect("a manifests list")
        .iter()
        .map(|d| d["digest"].as_str().unwrap().to_string())
        .collect()
}

fn lookups(metrics: &str, result: &str) -> u64 {
    let line = format!("berth_cache_lookups_total{{kind=\"referrers\",result=\"{result}\",upstream=\"hub\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// Check the response is the referrers index and return it.
fn assert_index(r: &Reply) -> Value {
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("content-type"), Some(OCI_INDEX));
    let v = r.json();
    assert_eq!(
        (v["schemaVersion"].as_u64(), v["mediaType"].as_str()),
        (Some(2), Some(OCI_INDEX))
    );
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_merge_every_upstream_page_when_the_api_links_a_next_page() {
    let fake = FakeRegistry::start().await;
    let (subj, _) = subject(&fake);
    let sbom = put_artifact(&fake, "library/app", &subj, SBOM, b"{\"spdxVersion\":\"SPDX-2.3\"}");
    let sig = put_artifact(&fake, "library/app", &subj, SIG, b"signature");
    let path = format!("/v2/library/app/referrers/{subj}");
    let next = format!("{path}?n=1&last=x");
    let link = format!("<{next}>; rel=\"next\"");
    fake.put_referrers_page(&path, OCI_INDEX, index(std::slice::from_ref(&sbom)), Some(&link));
    fake.put_referrers_page(&next, OCI_INDEX, index(std::slice::from_ref(&sig)), None);
    let proxy = TestProxy::start(&fake.url(), "").await;

    let r = get(&proxy.url(&path), &[]).await;
    let v = assert_index(&r);
    assert_eq!(
        v["manifests"],
        json!([sbom, sig]),
        "both pages merged, descriptors unchanged"
    );
    assert!(
        r.header("link").is_none(),
        "berth merged the pages: nothing left to follow"
    );
    assert!(
        r.header("oci-filters-applied").is_none(),
        "no filter asked, none applied"
    );
    assert_eq!(fake.hits("GET", &path), 2, "one upstream GET per page");
    let full_len = r.bytes().len().to_string();

    let r = get(
        &proxy.url(&format!("{path}?artifactType={}", SIG.replace('+', "%2B"))),
        &[],
    )
    .await;
    assert_index(&r);
    assert_eq!(digests(&r), vec![sig["digest"].as_str().unwrap()]);
    assert_eq!(r.header("oci-filters-applied"), Some("artifactType"));

    let h = head(&proxy.url(&path), &[]).await;
    assert_eq!(h.status, 200);
    assert_eq!(
        h.header("content-length"),
        Some(full_len.as_str()),
        "HEAD has GET's headers"
    );
    assert!(h.bytes().is_empty(), "HEAD has no body");
    assert_eq!(
        fake.hits("GET", &path),
        2,
        "filter and HEAD are answered from the cached list"
    );

    // The artifacts themselves pull by digest through the normal manifest path.
    let sig_digest = sig["digest"].as_str().unwrap();
    let m = get(
        &proxy.url(&format!("/v2/library/app/manifests/{sig_digest}")),
        &[("accept", OCI_MANIFEST)],
    )
    .await;
    assert_eq!(m.status, 200);
    assert_eq!(m.header("content-type"), Some(OCI_MANIFEST));
    assert_eq!(m.header("docker-content-digest"), Some(sig_digest));
    assert_eq!(sha256(m.bytes()), sig_digest);
    assert_eq!(m.json()["subject"]["digest"], subj.as_str());
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains("berth_http_requests_total{code=\"200\",kind=\"referrers\",method=\"GET\"} 2"),
        "referrers are their own kind: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_come_from_the_fallback_tag_when_the_upstream_answers_404() {
    let fake = FakeRegistry::start().await;
    let (subj, tag) = subject(&fake);
    let sbom = put_artifact(&fake, "library/app", &subj, SBOM, b"sbom");
    let sig = put_artifact(&fake, "library/app", &subj, SIG, b"sig");
    fake.put_manifest(
        "library/app",
        Some(&tag),
        OCI_INDEX,
        index(&[sbom.clone(), sig.clone()]),
    );
    let proxy = TestProxy::start(&fake.url(), "").await;
    let path = format!("/v2/library/app/referrers/{subj}");

    let v = assert_index(&get(&proxy.url(&path), &[]).await);
    assert_eq!(v["manifests"], json!([sbom, sig]));
    let r = get(&proxy.url(&format!("{path}?artifactType=application/spdx%2Bjson")), &[]).await;
    assert_index(&r);
    assert_eq!(digests(&r), vec![sbom["digest"].as_str().unwrap()]);
    assert_eq!(r.header("oci-filters-applied"), Some("artifactType"));
    assert_eq!(
        fake.hits("GET", &path),
        1,
        "the missing API is remembered for referrers_ttl"
    );
    assert_eq!(
        fake.hits("GET", &format!("/v2/library/app/manifests/{tag}")),
        1,
        "the fallback tag is read once and then cached as a tag"
    );
    // The fallback tag is an ordinary tag, too, and so are cosign's `.sig`/`.att` tags.
    let t = get(
        &proxy.url(&format!("/v2/library/app/manifests/{tag}")),
        &[("accept", OCI_INDEX)],
    )
    .await;
    assert_eq!((t.status, t.header("content-type")), (200, Some(OCI_INDEX)));
    for suffix in ["sig", "att"] {
        let cosign_tag = format!("{tag}.{suffix}");
        let (d, _) = fake.image("library/app", &cosign_tag, OCI_MANIFEST, &[random_bytes(16)]);
        let t = get(
            &proxy.url(&format!("/v2/library/app/manifests/{cosign_tag}")),
            &[("accept", OCI_MANIFEST)],
        )
        .await;
        assert_eq!(
            (t.status, t.header("docker-content-digest")),
            (200, Some(d.as_str())),
            "{cosign_tag}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_are_an_empty_index_when_the_subject_has_none() {
    let fake = FakeRegistry::start().await;
    let (subj, _) = subject(&fake);
    let proxy = TestProxy::start(&fake.url(), "").await;

    // No API and no fallback tag.
    let v = assert_index(&get(&proxy.url(&format!("/v2/library/app/referrers/{subj}")), &[]).await);
    assert_eq!(v["manifests"], json!([]));

    // An upstream whose "API" answers something that is not an index counts as having none.
    let (other, _) = fake.image("library/app", "v2", OCI_MANIFEST, &[random_bytes(32)]);
    let path = format!("/v2/library/app/referrers/{other}");
    fake.put_referrers_page(&path, "text/html", Bytes::from_static(b"<html>login</html>"), None);
    let v = assert_index(&get(&proxy.url(&path), &[]).await);
    assert_eq!(v["manifests"], json!([]));

    // Spec: an invalid digest is 400, not an empty answer.
    let r = get(&proxy.url("/v2/library/app/referrers/sha256:nothex"), &[]).await;
    assert_eq!(
        (r.status, r.json()["errors"][0]["code"].as_str()),
        (400, Some("DIGEST_INVALID"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_are_served_from_cache_within_referrers_ttl() {
    let fake = FakeRegistry::start().await;
    let (subj, _) = subject(&fake);
    let sbom = put_artifact(&fake, "library/app", &subj, SBOM, b"sbom");
    let path = format!("/v2/library/app/referrers/{subj}");
    fake.put_referrers_page(&path, OCI_INDEX, index(std::slice::from_ref(&sbom)), None);
    let proxy = TestProxy::start(&fake.url(), "[cache]\nreferrers_ttl = \"1h\"\n").await;

    for _ in 0..3 {
        assert_eq!(
            digests(&get(&proxy.url(&path), &[]).await),
            vec![sbom["digest"].as_str().unwrap()]
        );
    }
    assert_eq!(
        fake.hits("GET", &path),
        1,
        "within referrers_ttl the upstream is asked once"
    );
    let m = proxy.metrics().await;
    assert_eq!((lookups(&m, "miss"), lookups(&m, "hit")), (1, 2), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_are_revalidated_after_referrers_ttl_and_served_stale_when_upstream_fails() {
    let fake = FakeRegistry::start().await;
    let (subj, _) = subject(&fake);
    let sbom = put_artifact(&fake, "library/app", &subj, SBOM, b"sbom");
    let sig = put_artifact(&fake, "library/app", &subj, SIG, b"sig");
    let path = format!("/v2/library/app/referrers/{subj}");
    fake.put_referrers_page(&path, OCI_INDEX, index(std::slice::from_ref(&sbom)), None);
    let proxy = TestProxy::start(
        &fake.url(),
        "[cache]\nreferrers_ttl = \"0s\"\nstale_if_error = \"1h\"\n",
    )
    .await;
    let url = proxy.url(&path);

    assert_eq!(digests(&get(&url, &[]).await).len(), 1);
    assert_eq!(digests(&get(&url, &[]).await).len(), 1);
    assert_eq!(
        fake.hits("GET", &path),
        2,
        "referrers_ttl 0s: every request asks upstream"
    );
    // A signature is pushed: the next answer has it.
    fake.put_referrers_page(&path, OCI_INDEX, index(&[sbom.clone(), sig.clone()]), None);
    assert_eq!(digests(&get(&url, &[]).await).len(), 2);
    // The upstream fails: the last answer is served stale.
    fake.set_global_fault(Some(Fault::Status(503, None)));
    let r = get(&url, &[]).await;
    assert_eq!(assert_index(&r)["manifests"], json!([sbom, sig]), "stale answer");
    let m = proxy.metrics().await;
    let counts: Vec<u64> = ["miss", "revalidated", "refreshed", "stale"]
        .iter()
        .map(|r| lookups(&m, r))
        .collect();
    assert_eq!(counts, vec![1, 1, 1, 1], "miss, revalidated, refreshed, stale: {m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_index_over_4_mib_is_refused() {
    let fake = FakeRegistry::start().await;
    let (subj, _) = subject(&fake);
    let (other, _) = fake.image("library/app", "v2", OCI_MANIFEST, &[random_bytes(32)]);
    let big = |n: usize| {
        let d = json!({"mediaType": OCI_MANIFEST, "digest": subj, "size": 1, "artifactType": SBOM,
            "annotations": {"pad": "x".repeat(n)}});
        index(&[d])
    };
    // One page over the cap.
    let path = format!("/v2/library/app/referrers/{subj}");
    fake.put_referrers_page(&path, OCI_INDEX, big(4 << 20), None);
    // Two pages, each under it, over it together.
    let path2 = format!("/v2/library/app/referrers/{other}");
    let next = format!("{path2}?last=1");
    let link = format!("<{next}>; rel=\"next\"");
    fake.put_referrers_page(&path2, OCI_INDEX, big(3 << 20), Some(&link));
    fake.put_referrers_page(&next, OCI_INDEX, big(3 << 20), None);
    let proxy = TestProxy::start(&fake.url(), "").await;

    for p in [&path, &path2] {
        let r = get(&proxy.url(p), &[]).await;
        assert_eq!(r.status, 502, "{p}: {:?}", r.body);
        let msg = r.json()["errors"][0]["message"].as_str().unwrap().to_string();
        assert!(msg.contains("larger than 4194304"), "{msg}");
    }
}
