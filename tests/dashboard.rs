//! The Grafana dashboard (deploy/grafana) and the chart's PrometheusRule query only metrics
//! that berth serves: every `berth_*` name they reference must appear on berth's `/metrics`
//! after it has served pulls (misses, hits, coalesced fills), failed on an unreachable upstream
//! and evicted for its size cap.

use berth_testkit::common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{get, random_bytes, FakeRegistry, TestProxy, DOCKER_MANIFEST, OCI_MANIFEST};

/// Files whose `berth_*` references must exist.
const REFERENCING_FILES: &[&str] = &[
    "deploy/grafana/berth-dashboard.json",
    "charts/berth/files/berth-dashboard.json",
    "charts/berth/templates/prometheusrule.yaml",
];

fn referenced_metrics(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while let Some(pos) = text[i..].find("berth_") {
        let start = i + pos;
        let preceded_by_ident = start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .map_or(text.len(), |n| start + n);
        if !preceded_by_ident && end > start + "berth_".len() {
            names.insert(text[start..end].to_string());
        }
        i = end;
    }
    names
}

/// Sample names on a `/metrics` page (`name{labels} value` or `name value`).
fn served_metrics(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// Pulls `repo:tag` through berth: the manifest, then every blob it names.
async fn pull(proxy: &TestProxy, repo: &str, tag: &str, media_type: &str) {
    let m = get(
        &proxy.url(&format!("/v2/{repo}/manifests/{tag}")),
        &[("accept", media_type)],
    )
    .await;
    assert_eq!(m.status, 200, "manifest {repo}:{tag}");
    let manifest = m.json();
    let config = manifest["config"]["digest"]
        .as_str()
        .expect("config digest")
        .to_string();
    let layers = manifest["layers"].as_array().expect("layers").iter();
    for digest in std::iter::once(config).chain(layers.map(|l| l["digest"].as_str().expect("digest").to_string())) {
        let b = get(&proxy.url(&format!("/v2/{repo}/blobs/{digest}")), &[]).await;
        assert_eq!(b.status, 200, "blob {digest}");
        assert_eq!(common::sha256(b.bytes()), digest);
    }
}

#[tokio::test]
async fn dashboard_and_alerts_reference_only_served_metrics_when_berth_has_served_pulls() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut referenced = BTreeSet::new();
    for file in REFERENCING_FILES {
        let text = std::fs::read_to_string(root.join(file)).unwrap_or_else(|e| panic!("read {file}: {e}"));
        let names = referenced_metrics(&text);
        assert!(!names.is_empty(), "{file} references no berth metric");
        referenced.extend(names);
    }

    let upstream = FakeRegistry::start().await;
    upstream.image("library/alpha", "v1", DOCKER_MANIFEST, &[random_bytes(300 * 1024)]);
    upstream.image("library/beta", "v1", OCI_MANIFEST, &[random_bytes(301 * 1024)]);
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // A cap that holds one image but not two: the second pull evicts (reason "size").
    let proxy = TestProxy::start_with(
        tempfile::tempdir().unwrap(),
        &upstream.url(),
        "max_size = \"500KiB\"",
        &format!(
            "[upstreams.dead]\nurl = \"http://127.0.0.1:{dead_port}\"\naliases = [\"dead.example\"]\nretries = 0\n"
        ),
    )
    .await;
    // Two clients at once on a slow upstream: the second joins the first one's fills.
    upstream.set_chunk_delay(Duration::from_millis(20));
    tokio::join!(
        pull(&proxy, "library/alpha", "v1", DOCKER_MANIFEST),
        pull(&proxy, "library/alpha", "v1", DOCKER_MANIFEST)
    );
    upstream.set_chunk_delay(Duration::ZERO);
    pull(&proxy, "library/alpha", "v1", DOCKER_MANIFEST).await;
    pull(&proxy, "library/beta", "v1", OCI_MANIFEST).await;
    let failed = get(&proxy.url("/v2/dead.example/x/y/manifests/1"), &[]).await;
    assert!(
        failed.status >= 500,
        "an unreachable upstream answers 5xx, got {}",
        failed.status
    );

    // Storage gauges are also refreshed in the background: poll until nothing is missing, up
    // to a deadline.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (missing, page) = loop {
        let page = proxy.metrics().await;
        let served = served_metrics(&page);
        let missing: Vec<String> = referenced.iter().filter(|n| !served.contains(*n)).cloned().collect();
        if missing.is_empty() || Instant::now() >= deadline {
            break (missing, page);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        missing.is_empty(),
        "referenced by the dashboard or alerts but not served by berth: {missing:?}\n--- /metrics ---\n{page}"
    );
}

#[test]
fn referenced_metrics_finds_names_when_they_sit_in_promql() {
    let names = referenced_metrics(
        r#"sum(rate(berth_http_request_duration_seconds_bucket{kind="blob"}[5m])) / x_berth_not{a="berth_"}"#,
    );
    assert_eq!(
        names,
        BTreeSet::from(["berth_http_request_duration_seconds_bucket".to_string()])
    );
}

/// The metric families README's Operations section documents, `berth_` added, as
/// `(name, labels)`: `storage_{used_bytes,objects}` expands to two families, `{kind,code}`
/// after a name lists its labels; `process_*` stays a prefix.
fn documented_families(readme: &str) -> Vec<(String, Vec<String>)> {
    let start = readme
        .find("- **Metrics** (prefix `berth_`):")
        .expect("README documents the metrics");
    let text = &readme[start..];
    let end = text[1..].find("\n- **").map_or(text.len(), |n| n + 1);
    let mut out = Vec::new();
    for span in text[..end].split('`').skip(1).step_by(2).skip(1) {
        let (stem, rest) = match span.find("_{") {
            Some(i) => (&span[..=i], &span[i + 1..]),
            None => ("", span),
        };
        let (alternatives, labels) = match stem {
            "" => (
                vec![rest.split('{').next().unwrap_or(rest)],
                rest.split_once('{').map(|x| x.1),
            ),
            _ => {
                let (alts, after) = rest[1..].split_once('}').expect("closed brace");
                (alts.split(',').collect(), after.strip_prefix('{'))
            }
        };
        let labels: Vec<String> = labels
            .map(|l| l.trim_end_matches('}').split(',').map(str::to_string).collect())
            .unwrap_or_default();
        for alt in alternatives {
            out.push((format!("berth_{stem}{alt}"), labels.clone()));
        }
    }
    out
}

#[test]
fn documented_families_expand_braces_and_keep_labels() {
    let readme = "- **Metrics** (prefix `berth_`): `a_total{kind,code}`, `s_{x,y_bytes}{up}`, `build_info`,\n  `process_*`.\n- **Next**: `not_this`";
    let names = documented_families(readme);
    let want = [
        ("berth_a_total", vec!["kind", "code"]),
        ("berth_s_x", vec!["up"]),
        ("berth_s_y_bytes", vec!["up"]),
        ("berth_build_info", vec![]),
        ("berth_process_*", vec![]),
    ];
    let want: Vec<(String, Vec<String>)> = want
        .iter()
        .map(|(n, l)| (n.to_string(), l.iter().map(|s| s.to_string()).collect()))
        .collect();
    assert_eq!(names, want);
}

#[tokio::test]
async fn every_documented_metric_is_served_for_every_upstream_when_berth_has_just_started() {
    let readme = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let families = documented_families(&readme);
    assert!(families.len() > 20, "README lists the metrics: {families:?}");
    let upstream = FakeRegistry::start().await;
    let proxy = TestProxy::start(
        &upstream.url(),
        "[upstreams.quay]\nurl = \"http://127.0.0.1:9\"\naliases = [\"quay.io\"]\n",
    )
    .await;
    // Right after start: nothing has been requested yet.
    let page = proxy.metrics().await;
    let samples: Vec<&str> = page.lines().filter(|l| !l.starts_with('#')).collect();
    let mut missing = Vec::new();
    for (name, labels) in &families {
        let family: Vec<&&str> = match name.strip_suffix('*') {
            // `process_*` are the process collector's, not prefixed with berth_.
            Some(prefix) => {
                let prefix = prefix.trim_start_matches("berth_");
                samples.iter().filter(|l| l.starts_with(prefix)).collect()
            }
            None => samples
                .iter()
                .filter(|l| {
                    l.strip_prefix(name.as_str())
                        .is_some_and(|r| r.starts_with(['{', ' ']) || r.starts_with("_bucket{"))
                })
                .collect(),
        };
        if family.is_empty() {
            missing.push(name.clone());
            continue;
        }
        if labels.iter().any(|l| l == "upstream") {
            for up in ["hub", "quay"] {
                if !family.iter().any(|l| l.contains(&format!("upstream=\"{up}\""))) {
                    missing.push(format!("{name}{{upstream=\"{up}\"}}"));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "documented in README but not served right after start: {missing:?}\n--- /metrics ---\n{page}"
    );
}
