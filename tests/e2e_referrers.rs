//! End to end: the OCI 1.1 referrers API through the real berth binary, from a real
//! `docker-registry` (distribution 2.8, which has no referrers API). An image gets an SBOM and
//! a signature-like artifact pushed with `subject` by the OCI 1.1 fallback procedure (the
//! `sha256-<hex>` tag index); through berth the referrers API lists both, `?artifactType=`
//! filters to one, the artifacts and their payloads pull by digest with digests checked, and
//! with the upstream stopped the same answers come from the cache within `stale_if_error`.

use berth_testkit::support;

use serde_json::Value;
use support::berth::{Berth, BerthConfig};
use support::http;
use support::image::{self, Artifact, Format, Image, OCI_INDEX, OCI_MANIFEST};
use support::registry::Registry;
use support::sha256_digest;

const REPO: &str = "library/signed";
const SBOM: &str = "application/spdx+json";
const SIG: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";

/// GET through berth; the body must be the referrers index. Returns it and the filter header.
fn referrers(berth: &Berth, subject: &str, query: &str) -> (Value, Option<String>) {
    let r = http::get(&berth.addr(), &format!("/v2/{REPO}/referrers/{subject}{query}"), &[])
        .expect("GET referrers through berth");
    assert_eq!(r.status, 200, "referrers through berth: {}", r.text());
    assert_eq!(r.header("Content-Type"), Some(OCI_INDEX));
    let v: Value = serde_json::from_slice(&r.body).expect("a JSON index");
    assert_eq!(v["mediaType"], OCI_INDEX);
    (v, r.header("OCI-Filters-Applied").map(str::to_string))
}

/// Pull `artifact`'s manifest and payload by digest through berth and check both digests.
fn pull_artifact(berth: &Berth, artifact: &Artifact) {
    let m = http::get(
        &berth.addr(),
        &format!("/v2/{REPO}/manifests/{}", artifact.manifest.digest),
        &[("Accept", OCI_MANIFEST)],
    )
    .expect("GET artifact manifest through berth");
    assert_eq!(m.status, 200, "{}", m.text());
    assert_eq!(m.header("Content-Type"), Some(OCI_MANIFEST));
    assert_eq!(
        sha256_digest(&m.body),
        artifact.manifest.digest,
        "artifact manifest digest"
    );
    assert_eq!(
        m.header("Docker-Content-Digest"),
        Some(artifact.manifest.digest.as_str())
    );
    let b = http::get(
        &berth.addr(),
        &format!("/v2/{REPO}/blobs/{}", artifact.payload.digest),
        &[],
    )
    .expect("GET artifact payload through berth");
    assert_eq!(b.status, 200);
    assert_eq!(sha256_digest(&b.body), artifact.payload.digest, "payload digest");
}

#[test]
fn referrers_list_and_filter_artifacts_when_the_upstream_has_only_the_fallback_tag() {
    let mut upstream = Registry::start();
    let mut rng = fastrand::Rng::new();
    let img = Image::generate(&mut rng, Format::Oci, "amd64", &[16 * 1024]);
    image::push_image(&upstream.addr(), REPO, "v1", &img);
    let subject = img.manifest.digest.clone();
    let sbom = Artifact::new(
        SBOM,
        SBOM,
        br#"{"spdxVersion":"SPDX-2.3","name":"signed"}"#.to_vec(),
        &img.manifest,
    );
    let sig = Artifact::new(
        SIG,
        "application/vnd.dev.cosign.simplesigning.v1+json",
        b"sig".to_vec(),
        &img.manifest,
    );
    image::push_referrer(&upstream.addr(), REPO, &sbom, &subject);
    image::push_referrer(&upstream.addr(), REPO, &sig, &subject);
    let direct = http::get(&upstream.addr(), &format!("/v2/{REPO}/referrers/{subject}"), &[]).unwrap();
    assert_eq!(
        direct.status, 404,
        "distribution 2.8 has no referrers API: the fallback tag is used"
    );

    // Tags and referrers are revalidated on every request, so the outage below is answered
    // from the stale cache, not from fresh entries.
    let berth = Berth::start_with(
        BerthConfig::new(&upstream.url())
            .cache("manifest_ttl = \"0s\"\nreferrers_ttl = \"0s\"\nstale_if_error = \"1h\"\n"),
    );
    let check = |berth: &Berth| {
        let (all, filter) = referrers(berth, &subject, "");
        assert_eq!(
            all["manifests"],
            serde_json::json!([sbom.descriptor(), sig.descriptor()])
        );
        assert_eq!(filter, None);
        let (one, filter) = referrers(berth, &subject, "?artifactType=application/spdx%2Bjson");
        assert_eq!(one["manifests"], serde_json::json!([sbom.descriptor()]));
        assert_eq!(filter.as_deref(), Some("artifactType"));
        pull_artifact(berth, &sbom);
        pull_artifact(berth, &sig);
    };
    check(&berth);
    let (none, _) = referrers(&berth, &img.config.digest, "");
    assert_eq!(none["manifests"], serde_json::json!([]), "no referrers: an empty index");
    let upstream_referrers = upstream.count("GET", &format!("/v2/{REPO}/referrers/"));
    assert!(
        upstream_referrers >= 2,
        "berth asked the upstream's referrers API first"
    );

    upstream.stop();
    let before = berth.requests().len();
    check(&berth);
    let during: Vec<_> = berth.requests().into_iter().skip(before).collect();
    assert!(during.iter().all(|r| r.status == 200), "{during:?}");
    let stale: Vec<_> = during.iter().filter(|r| r.path.contains("/referrers/")).collect();
    assert!(
        stale.iter().all(|r| r.raw.contains("\"kind\":\"referrers\"")),
        "the access log counts referrers as their own kind: {stale:?}"
    );
    assert!(
        !stale.is_empty() && stale.iter().all(|r| r.cache == "stale"),
        "with the upstream stopped, referrers come from the cache within stale_if_error: {stale:?}"
    );
}
