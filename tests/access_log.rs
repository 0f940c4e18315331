//! The access log as an operator reads it: the real binary with `[log] format = "text"` and
//! stderr going to a file (not a terminal), a HEAD and a GET through it to a real
//! docker-registry upstream, and the lines it wrote.

use berth_testkit::support;

use std::time::{Duration, Instant};

use support::berth::{Berth, BerthConfig};
use support::http;
use support::image::{self, Format, Image, ACCEPT_ALL_MANIFESTS};
use support::registry::Registry;

const REPO: &str = "team/logged";
const TAG: &str = "v1";

/// The first `request` line for `method path`, waiting for it: berth writes it when the body
/// is done, which may be just after the client has read the response.
fn request_line(berth: &Berth, method: &str, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = berth.stderr_text();
        let found = log.lines().find(|l| {
            l.contains(" request ") && l.contains(&format!("method={method} ")) && l.contains(&format!("path={path} "))
        });
        if let Some(line) = found {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no access-log line for {method} {path}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn access_log_names_client_and_upstream_and_completes_head_when_stderr_is_a_file() {
    let upstream = Registry::start();
    let mut rng = fastrand::Rng::with_seed(4);
    let img = Image::generate(&mut rng, Format::Oci, "amd64", &[4 * 1024]);
    image::push_image(&upstream.addr(), REPO, TAG, &img);
    let berth = Berth::start_with(BerthConfig::new(&upstream.url()).log_format("text"));

    let manifest = format!("/v2/{REPO}/manifests/{TAG}");
    let head = http::head(&berth.addr(), &manifest, &[("accept", ACCEPT_ALL_MANIFESTS)]).expect("HEAD through berth");
    assert_eq!(head.status, 200, "{}", head.text());
    let layer = format!("/v2/{REPO}/blobs/{}", img.blobs()[1].digest);
    let get = http::get(&berth.addr(), &layer, &[]).expect("GET through berth");
    assert_eq!(get.status, 200, "{}", get.text());

    for (method, path) in [("HEAD", &manifest), ("GET", &layer)] {
        let line = request_line(&berth, method, path);
        for field in ["client=127.0.0.1:", "status=200", "complete=true"] {
            assert!(line.contains(field), "{method} line lacks {field}: {line}");
        }
        assert!(
            line.contains("upstream=hub ") || line.contains("upstream=\"hub\""),
            "{method} line names the upstream: {line}"
        );
    }
    let log = berth.stderr_text();
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escape codes in a log that is not a terminal:\n{log}"
    );
}
