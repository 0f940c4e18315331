//! The status page (`GET /` on the metrics listener) opened in a real headless Chromium,
//! against the real berth binary after it served pulls (skopeo) through a real
//! docker-registry upstream and failed on a second, unreachable upstream. The page must load
//! without console messages and show the pulled image, a nonzero hit ratio and bytes saved,
//! each upstream's circuit and the recent errors. The screenshot is kept in the test's temp
//! dir under `CARGO_TARGET_TMPDIR`, and its path printed.

use berth_testkit::support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::berth::{Berth, BerthConfig};
use support::image::{self, Format, Image};
use support::registry::Registry;
use support::skopeo::{assert_dir_has_image, skopeo_copy};
use support::{cmd, free_port, http, require_tool};

const REPO: &str = "team/status-demo";
const TAG: &str = "v1";
/// One Chromium run may take this long (a cold start on a loaded 2-core machine).
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs headless Chromium on `url` with `args`, its profile in `dir`, console messages logged
/// to stderr.
fn chromium(dir: &Path, url: &str, args: &[&str]) -> cmd::CmdRun {
    let mut c = Command::new(require_tool("chromium"));
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--enable-logging=stderr",
        "--v=0",
    ])
    .arg(format!("--user-data-dir={}", dir.join("profile").display()))
    .args(args)
    .arg(url);
    for var in cmd::PROXY_VARS {
        c.env_remove(var);
    }
    let run = cmd::run(&mut c, CHROMIUM_TIMEOUT);
    run.assert_success("chromium");
    run
}

/// The text of an HTML document: tags dropped, entities decoded, whitespace collapsed.
fn text_of(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    let out = out
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The text of the element with `id` (up to the end of its table or tile).
fn section(dom: &str, id: &str) -> String {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element with id {id} in\n{dom}"));
    let rest = &dom[start..];
    let end = ["</table>", "</div>", "</p>"]
        .iter()
        .filter_map(|t| rest.find(t))
        .min()
        .unwrap_or(rest.len());
    text_of(&format!("<x {}", &rest[..end]))
}

#[test]
fn status_page_shows_pulls_upstreams_and_errors_when_opened_in_chromium() {
    require_tool("chromium");
    let upstream = Registry::start();
    let mut rng = fastrand::Rng::with_seed(14);
    let img = Image::generate(&mut rng, Format::DockerV2, "amd64", &[64 * 1024, 300 * 1024]);
    image::push_image(&upstream.addr(), REPO, TAG, &img);
    let dead = free_port();
    let berth = Berth::start_with(BerthConfig::new(&upstream.url()).metrics().extra(&format!(
        "[upstreams.dead]\nurl = \"http://127.0.0.1:{dead}\"\naliases = [\"dead.example\"]\nretries = 0\ncircuit_failures = 1\n"
    )));
    let metrics_addr = berth.metrics_addr().expect("metrics listener configured");
    let work = tempfile::Builder::new()
        .prefix("status-page-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("create the test's temp dir")
        .keep();

    // Two pulls: the first fills the cache, the second is served from it.
    for round in ["cold", "warm"] {
        let dir = work.join(format!("pull-{round}"));
        skopeo_copy(&format!("{}/{REPO}:{TAG}", berth.addr()), &dir, &[])
            .assert_success(&format!("{round} pull through berth"));
        assert_dir_has_image(&dir, &img);
    }
    // The unreachable upstream: the first failure opens its circuit, the second fails fast.
    for _ in 0..2 {
        let r = http::get(&berth.addr(), "/v2/dead.example/app/manifests/1", &[]).expect("GET through berth");
        assert!(
            r.status >= 500,
            "unreachable upstream answers 5xx, got {}: {}",
            r.status,
            r.text()
        );
    }

    let url = format!("http://{metrics_addr}/");
    let hint = http::get(&berth.addr(), "/", &[]).expect("GET / on the registry port");
    assert_eq!(hint.status, 200, "{}", hint.text());
    assert!(
        hint.text().contains(&format!("Status page: {url}")),
        "the registry port points at the status page: {}",
        hint.text()
    );
    let served = http::get(&metrics_addr, "/", &[]).expect("GET the status page");
    assert_eq!(served.status, 200, "{}", served.text());
    assert_eq!(served.header("content-type"), Some("text/html; charset=utf-8"));

    let dumped = chromium(&work, &url, &["--dump-dom"]);
    let console: Vec<&str> = dumped
        .stderr
        .lines()
        .filter(|l| l.contains(":CONSOLE") || l.contains("Uncaught"))
        .collect();
    assert!(console.is_empty(), "the page logged to the console: {console:#?}");
    let dom = &dumped.stdout;
    assert!(
        dom.contains("<title>berth status</title>"),
        "not the status page:\n{dom}"
    );

    let health = section(dom, "health");
    assert!(health.contains("ready: yes"), "{health}");
    assert!(health.contains("1 upstream circuit(s) open"), "{health}");

    let top = section(dom, "top-images");
    let pulls: u64 = top
        .split(&format!("{REPO}:{TAG} hub "))
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no pull count in {top}"));
    assert!(pulls >= 2, "two pulls by tag counted, got {pulls}: {top}");

    let ratio = section(dom, "hit-ratio");
    let percent: f64 = ratio
        .split("Hit ratio since start ")
        .nth(1)
        .and_then(|r| r.split(" %").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no ratio in {ratio}"));
    assert!(percent > 0.0, "the warm pull hit the cache: {ratio}");

    let saved = section(dom, "bytes-saved");
    let bytes: u64 = saved
        .split('(')
        .nth(1)
        .and_then(|r| r.split(" bytes)").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {saved}"));
    let image_bytes: usize = img.blobs().iter().map(|b| b.size()).sum();
    assert!(
        bytes >= image_bytes as u64,
        "the warm pull served every blob ({image_bytes} bytes) from the cache, page says {bytes}: {saved}"
    );

    let upstreams = section(dom, "upstreams");
    assert!(
        upstreams.contains(&format!("hub {}/ closed", upstream.url())),
        "{upstreams}"
    );
    assert!(
        upstreams.contains(&format!("dead http://127.0.0.1:{dead}/ open since")),
        "{upstreams}"
    );
    assert!(
        upstreams.contains(&format!("127.0.0.1:{dead}")),
        "the cause names the host: {upstreams}"
    );

    let errors = section(dom, "errors");
    assert!(errors.contains("GET /v2/dead.example/app/manifests/1"), "{errors}");
    assert!(errors.contains("circuit open since"), "{errors}");

    let png = work.join("status.png");
    chromium(
        &work,
        &url,
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1280,2000",
            "--hide-scrollbars",
        ],
    );
    let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("read {}: {e}", png.display()));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        png.display()
    );
    assert!(
        bytes.len() > 10_000,
        "a rendered page, not a blank: {} bytes",
        bytes.len()
    );
    println!("status page screenshot: {}", png.display());
}
