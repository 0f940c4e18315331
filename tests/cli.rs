//! The operator commands against a real store: `cache stats|ls|rm|pin|unpin`, `gc`, `warm`,
//! `check-config`, `healthcheck`, run as the real binary beside an in-process berth.

use berth_testkit::{common, support};

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use support::berth::Berth;

const ACCEPT: (&str, &str) = ("accept", "application/vnd.oci.image.manifest.v1+json");

fn berth(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run berth")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Pull `repo:tag` through the proxy as a client would: the manifest, its config and layers.
async fn pull(proxy: &TestProxy, repo: &str, tag: &str) {
    let m = get(&proxy.url(&format!("/v2/{repo}/manifests/{tag}")), &[ACCEPT]).await;
    assert_eq!(m.status, 200, "{repo}:{tag}");
    let v = m.json();
    for b in std::iter::once(&v["config"]).chain(v["layers"].as_array().unwrap()) {
        let d = b["digest"].as_str().unwrap();
        let r = get(&proxy.url(&format!("/v2/{repo}/blobs/{d}")), &[]).await;
        assert_eq!(r.status, 200, "{repo} {d}");
    }
}

/// A config file for the CLI that names the proxy's store, listener and metrics port.
fn cli_config(proxy: &TestProxy, upstream: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    let text = format!(
        "[server]\nlisten = \"{}\"\n[metrics]\nlisten = \"{}\"\n[storage]\npath = {:?}\n[upstreams.hub]\nurl = \"{upstream}\"\naliases = [\"docker.io\"]\ndefault = true\n",
        proxy.addr,
        proxy.metrics_addr,
        proxy.store()
    );
    std::fs::write(f.path(), text).unwrap();
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_fills_the_cache_so_pulls_work_with_the_upstream_stopped() {
    let fake = FakeRegistry::start().await;
    let (d1, _) = fake.image("library/one", "v1", OCI_MANIFEST, &[random_bytes(70_000)]);
    let (d2, _) = fake.image(
        "org/two",
        "v2",
        DOCKER_MANIFEST,
        &[random_bytes(80_000), random_bytes(9000)],
    );
    let proxy = TestProxy::start(&fake.url(), "").await;
    let cfg = cli_config(&proxy, &fake.url());
    let list = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(list.path(), "# images for CI\norg/two:v2\n").unwrap();
    let path = cfg.path().to_path_buf();
    let list_path = list.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || berth(&path, &["warm", "one:v1", "-f", list_path.to_str().unwrap()]))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "warm failed: {}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout(&out).contains("warmed docker.io/library/one:v1: 1 manifests, 2 blobs"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("warmed docker.io/org/two:v2: 1 manifests, 3 blobs"),
        "{}",
        stdout(&out)
    );
    fake.stop();
    for (repo, tag, digest) in [("library/one", "v1", &d1), ("org/two", "v2", &d2)] {
        let m = get(
            &proxy.url(&format!("/v2/{repo}/manifests/{tag}")),
            &[ACCEPT, ("accept", DOCKER_MANIFEST)],
        )
        .await;
        assert_eq!(
            (m.status, m.header("docker-content-digest")),
            (200, Some(digest.as_str())),
            "{repo}"
        );
        let v = m.json();
        for b in std::iter::once(&v["config"]).chain(v["layers"].as_array().unwrap()) {
            let d = b["digest"].as_str().unwrap();
            assert_eq!(
                get(&proxy.url(&format!("/v2/{repo}/blobs/{d}")), &[]).await.status,
                200,
                "{repo} {d}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_reports_failures_with_exit_75_and_an_unreachable_server_with_69() {
    let fake = FakeRegistry::start().await;
    fake.image("library/one", "v1", OCI_MANIFEST, &[random_bytes(10_000)]);
    let proxy = TestProxy::start(&fake.url(), "").await;
    let cfg = cli_config(&proxy, &fake.url());
    let path = cfg.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || berth(&path, &["warm", "one:v1", "missing:v1"]))
        .await
        .unwrap();
    let (so, se) = (stdout(&out), String::from_utf8_lossy(&out.stderr).into_owned());
    assert_eq!(out.status.code(), Some(75), "{se}");
    // Success on stdout without an error prefix; failures and the summary on stderr.
    assert_eq!(so, "warmed docker.io/library/one:v1: 1 manifests, 2 blobs, 9.8 KiB\n");
    assert!(
        se.contains("FAILED missing:v1: manifest v1: 404") && se.ends_with("berth: 1 of 2 images failed\n"),
        "{se}"
    );
    assert!(!se.contains("warmed"), "{se}");
    let path = cfg.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || berth(&path, &["warm", "--server", "http://127.0.0.1:1", "x:1"]))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(69));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_fetches_blobs_side_by_side_at_most_four_at_a_time() {
    let fake = FakeRegistry::start().await;
    let layers: Vec<_> = (0..8).map(|i| random_bytes(200_000 + i)).collect();
    fake.image("library/big", "v1", OCI_MANIFEST, &layers);
    fake.image("library/small", "v1", OCI_MANIFEST, &[random_bytes(1000)]);
    // Every body takes at least 3 x 100 ms, so downloads that run side by side overlap.
    fake.set_chunk_delay(Duration::from_millis(100));
    let proxy = TestProxy::start(&fake.url(), "").await;
    let cfg = cli_config(&proxy, &fake.url());
    let path = cfg.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || berth(&path, &["warm", "big:v1", "small:v1"]))
        .await
        .unwrap();
    let se = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{se}");
    let parallel = fake.max_parallel_blob_bodies();
    assert!((2..=4).contains(&parallel), "blobs in parallel, at most 4: {parallel}");
    // Without a terminal: one plain line per image, no progress bar.
    let so = stdout(&out);
    let mut lines: Vec<&str> = so.lines().collect();
    lines.sort();
    assert_eq!(lines.len(), 2, "{so}");
    assert!(
        lines[0].starts_with("warmed docker.io/library/big:v1: 1 manifests, 9 blobs, 1.5 MiB"),
        "{lines:?}"
    );
    assert!(
        lines[1].starts_with("warmed docker.io/library/small:v1: 1 manifests, 2 blobs"),
        "{lines:?}"
    );
    assert!(se.is_empty(), "nothing on stderr: {se:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_draws_a_progress_bar_with_bytes_and_rate_on_a_terminal() {
    let fake = FakeRegistry::start().await;
    let layers: Vec<_> = (0..4).map(|i| random_bytes(300_000 + i)).collect();
    fake.image("library/big", "v1", OCI_MANIFEST, &layers);
    // Long enough (5 chunks x 200 ms per body) for the bar to be drawn a few times.
    fake.set_chunk_delay(Duration::from_millis(200));
    let proxy = TestProxy::start(&fake.url(), "").await;
    let cfg = cli_config(&proxy, &fake.url());
    // `script` (bsdutils, essential in Debian) runs warm on a pseudo-terminal.
    let line = format!(
        "{} --config {} warm big:v1",
        env!("CARGO_BIN_EXE_berth"),
        cfg.path().display()
    );
    let run = tokio::task::spawn_blocking(move || {
        support::cmd::run(
            Command::new("script").args(["-qec", &line, "/dev/null"]),
            Duration::from_secs(60),
        )
    })
    .await
    .unwrap();
    assert!(run.success(), "{}", run.describe());
    let tty = &run.stdout;
    assert!(
        tty.contains("warmed docker.io/library/big:v1: 1 manifests, 5 blobs"),
        "{}",
        run.describe()
    );
    // indicatif's `{bytes}/{total_bytes} {binary_bytes_per_sec}`: e.g. `586.0 KiB/1.1 MiB 2.9 MiB/s`.
    let bar = tty
        .split(['\r', '\n'])
        .find(|l| l.contains("/s") && l.contains("iB/") && l.contains("of 1 images"));
    assert!(bar.is_some(), "a bar with bytes, total and rate: {tty:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_ls_prints_an_aligned_table_with_human_sizes_and_relative_times() {
    let fake = FakeRegistry::start().await;
    let (digest, _) = fake.image("library/app", "v1", OCI_MANIFEST, &[random_bytes(300_000)]);
    let proxy = TestProxy::start(&fake.url(), "").await;
    pull(&proxy, "library/app", "v1").await;
    proxy.wait_committed(3).await;
    let cfg = cli_config(&proxy, &fake.url());
    let json: serde_json::Value =
        serde_json::from_slice(&berth(cfg.path(), &["cache", "ls", "--json"]).stdout).unwrap();
    let size = berth::cli::human_bytes(json[0]["bytes"].as_u64().unwrap());
    assert!(size.ends_with(" KiB"), "{size}");
    let out = berth(cfg.path(), &["cache", "ls"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let (head, row) = (lines[0], lines[1]);
    assert!(!text.contains('\t'), "{text}");
    let short = &digest[..19];
    for (column, value) in [
        ("UPSTREAM", "hub"),
        ("REPOSITORY:TAG", "library/app:v1"),
        ("DIGEST", short),
        ("SIZE", size.as_str()),
        ("LAST USED", "just now"),
    ] {
        assert_eq!(
            head.find(column),
            row.find(value),
            "{value:?} under {column:?}:\n{text}"
        );
    }
    let checked = head.find("CHECKED").unwrap();
    assert!(
        row[checked..].starts_with("just now") || row[checked..].contains(" s ago"),
        "{text}"
    );
}

#[test]
fn config_errors_name_the_line_and_key_all_at_once_and_blame_env_overrides() {
    let f = tempfile::NamedTempFile::new().unwrap();
    let text = "[server]\nmax_connections = \"many\"\nbogus = 1\n\n[storage]\npath = \"/tmp/x\"\n\n[upstreams.hub]\nurl = \"https://registry-1.docker.io\"\ndefault = true\nretries = \"three\"\ncolour = \"blue\"\n";
    std::fs::write(f.path(), text).unwrap();
    let out = berth(f.path(), &["check-config"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    let p = f.path().display();
    for want in [
        format!("error: {p}:2: server.max_connections: invalid type: string \"many\""),
        format!("error: {p}:3: server.bogus: unknown field `bogus`"),
        format!("error: {p}:11: upstreams.hub.retries: invalid type: string \"three\""),
        format!("error: {p}:12: upstreams.hub.colour: unknown field `colour`"),
    ] {
        assert!(err.contains(&want), "{want:?} missing in:\n{err}");
    }

    // A good file with a bad override: the variable is named, not the file.
    let good =
        "[storage]\npath = \"/tmp/x\"\n[upstreams.hub]\nurl = \"https://registry-1.docker.io\"\ndefault = true\n";
    std::fs::write(f.path(), good).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("--config")
        .arg(f.path())
        .arg("check-config")
        .env("BERTH_STORAGE__MAX_SIZE", "lots")
        .env("BERTH_SERVER__COLOUR", "blue")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.lines()
            .any(|l| l.starts_with("error: BERTH_STORAGE__MAX_SIZE: invalid size") && l.contains("\"lots\"")),
        "{err}"
    );
    assert!(
        err.contains("error: BERTH_SERVER__COLOUR: unknown field `colour`"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_commands_list_pin_remove_and_collect() {
    let fake = FakeRegistry::start().await;
    let (digest, _) = fake.image("library/app", "v1", OCI_MANIFEST, &[random_bytes(100_000)]);
    let orphan = fake.put_blob(random_bytes(55_555));
    let proxy = TestProxy::start(&fake.url(), "").await;
    pull(&proxy, "library/app", "v1").await;
    get(&proxy.url(&format!("/v2/library/app/blobs/{orphan}")), &[]).await;
    // The commit follows the last byte sent; the CLI reads the store directly.
    proxy.wait_committed(4).await;
    let cfg = cli_config(&proxy, &fake.url());
    let p = cfg.path().to_path_buf();
    let run = move |args: &[&str]| berth(&p, args);

    let ls = run(&["cache", "ls", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    assert_eq!(rows[0]["repository"], "library/app");
    assert_eq!(rows[0]["digest"], digest.as_str());
    assert!(
        rows[0]["bytes"].as_u64().unwrap() > 100_000,
        "manifest plus layer: {rows}"
    );
    // The in-process server must keep answering /metrics while the CLI runs: off this thread.
    let p2 = cfg.path().to_path_buf();
    let stats = tokio::task::spawn_blocking(move || berth(&p2, &["cache", "stats", "--json"]))
        .await
        .unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(stats["objects"], 4, "manifest, config, layer, orphan: {stats}");
    assert_eq!(stats["upstreams"]["hub"]["tags"], 1);
    let hub_bytes = stats["upstreams"]["hub"]["bytes"].as_u64().unwrap();
    assert!(
        hub_bytes > 100_000 && hub_bytes < stats["bytes"].as_u64().unwrap(),
        "the tag reaches all but the orphan: {stats}"
    );
    assert!(
        stats["hit_ratio"].is_number(),
        "hit ratio from the running server's metrics: {stats}"
    );

    // gc keeps everything used recently, so nothing goes yet.
    let gc = run(&["gc", "--dry-run"]);
    assert!(stdout(&gc).contains("would remove 0 objects"), "{}", stdout(&gc));

    let pin = run(&["cache", "pin", "app:v1"]);
    assert!(pin.status.success(), "{}", String::from_utf8_lossy(&pin.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&run(&["cache", "ls", "--json"]).stdout).unwrap();
    assert_eq!(rows[0]["pinned"], true);
    assert!(run(&["cache", "unpin", "app:v1"]).status.success());
    assert!(
        !run(&["cache", "unpin", "app:v1"]).status.success(),
        "not pinned any more"
    );

    let rm = run(&["cache", "rm", "app:v1"]);
    assert!(stdout(&rm).contains(&format!("removed {digest}")), "{}", stdout(&rm));
    let rows: serde_json::Value = serde_json::from_slice(&run(&["cache", "ls", "--json"]).stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 0);
    assert!(!run(&["cache", "rm", "app:v1"]).status.success(), "already gone");
    let rm = run(&["cache", "rm", &orphan]);
    assert!(rm.status.success());
    assert!(!proxy
        .stored_files()
        .iter()
        .any(|p| p.ends_with(orphan.trim_start_matches("sha256:"))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_rm_refuses_what_tagged_or_pinned_images_need_unless_forced() {
    let fake = FakeRegistry::start().await;
    let shared = random_bytes(40_000);
    fake.image("library/app", "v1", OCI_MANIFEST, std::slice::from_ref(&shared));
    fake.image(
        "library/other",
        "v2",
        OCI_MANIFEST,
        &[shared.clone(), random_bytes(20_000)],
    );
    let layer = sha256(&shared);
    let proxy = TestProxy::start(&fake.url(), "").await;
    pull(&proxy, "library/app", "v1").await;
    pull(&proxy, "library/other", "v2").await;
    // Two manifests, two configs, the shared layer and other's own layer.
    proxy.wait_committed(6).await;
    let cfg = cli_config(&proxy, &fake.url());
    let run = |args: &[&str]| berth(cfg.path(), args);
    let stored = |d: &str| {
        proxy
            .stored_files()
            .iter()
            .any(|p| p.ends_with(d.trim_start_matches("sha256:")))
    };
    assert!(run(&["cache", "pin", "other:v2"]).status.success());

    let refused = run(&["cache", "rm", &layer]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("refusing to remove {layer}"))
            && err.contains("hub/library/app:v1")
            && err.contains("hub/library/other:v2 (pinned)")
            && err.contains("--force"),
        "names every image that needs the layer: {err}"
    );
    assert!(stdout(&refused).is_empty(), "{}", stdout(&refused));
    assert!(stored(&layer), "nothing removed");

    // A tag goes with its manifest when nothing else needs them; a pinned one does not.
    assert!(run(&["cache", "rm", "app:v1"]).status.success());
    let pinned = run(&["cache", "rm", "other:v2"]);
    let err = String::from_utf8_lossy(&pinned.stderr);
    assert!(
        !pinned.status.success() && err.contains("docker.io/library/other:v2 (pinned)"),
        "{err}"
    );
    let still = run(&["cache", "rm", &layer]);
    let err = String::from_utf8_lossy(&still.stderr);
    assert!(
        !still.status.success() && err.contains("hub/library/other:v2 (pinned)") && !err.contains("app:v1"),
        "{err}"
    );

    let forced = run(&["cache", "rm", "--force", &layer]);
    assert!(forced.status.success(), "{}", String::from_utf8_lossy(&forced.stderr));
    assert_eq!(stdout(&forced), format!("removed {layer}\n"));
    assert!(!stored(&layer), "--force removes it");
}

#[test]
fn a_second_serve_on_the_same_store_fails_at_once_naming_the_store_and_the_holder() {
    let mut first = Berth::start("http://127.0.0.1:1");
    let pid = first.pid().expect("running");
    // Same store, another port.
    let other_port = format!("127.0.0.1:{}", support::free_port());
    let second = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(second.path(), first.config_text().replace(&first.addr(), &other_port)).unwrap();
    let run = support::cmd::run(
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .arg("--config")
            .arg(second.path())
            .arg("serve"),
        Duration::from_secs(60),
    );
    assert!(
        run.status.is_some_and(|s| !s.success()),
        "the second server exits with an error: {}",
        run.describe()
    );
    let store = first.storage_dir().display().to_string();
    assert!(
        run.stderr
            .contains(&format!("store {store} is in use by another berth serve (pid {pid})")),
        "names the store and the holder: {}",
        run.describe()
    );
    assert!(
        support::http::get(&other_port, "/readyz", &[]).is_err(),
        "the second server never listened"
    );
    assert!(first.is_running());
    assert_eq!(support::http::get(&first.addr(), "/readyz", &[]).unwrap().status, 200);
    // Store commands are not servers: they run beside it.
    let gc = berth(&first.config_path(), &["gc"]);
    assert!(gc.status.success(), "{}", String::from_utf8_lossy(&gc.stderr));
    // A killed holder leaves no lock behind.
    first.restart();
    assert!(first.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_removes_expired_tags_and_unreferenced_content() {
    let fake = FakeRegistry::start().await;
    fake.image("library/app", "v1", OCI_MANIFEST, &[random_bytes(30_000)]);
    let proxy = TestProxy::start(&fake.url(), "").await;
    assert_eq!(
        get(&proxy.url("/v2/library/app/manifests/v1"), &[ACCEPT]).await.status,
        200
    );
    let f = tempfile::NamedTempFile::new().unwrap();
    // A zero window: every tag is expired and nothing counts as recently used.
    let text = format!(
        "[storage]\npath = {:?}\n[cache]\nmanifest_ttl = \"0s\"\nstale_if_error = \"0s\"\n[upstreams.hub]\nurl = \"{}\"\naliases = [\"docker.io\"]\ndefault = true\n",
        proxy.store(),
        fake.url()
    );
    std::fs::write(f.path(), text).unwrap();
    let out = berth(f.path(), &["gc"]);
    assert!(
        stdout(&out).contains("removed tag hub/library/app:v1 (expired)"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("removed 1 objects"), "{}", stdout(&out));
    assert!(proxy.stored_files().is_empty());
}

#[test]
fn check_config_reports_every_problem_and_exits_78() {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        f.path(),
        "[storage]\npath = \"/tmp/x\"\n[upstreams.a]\nurl = \"ftp://a\"\naliases = [\"a.io\", \"nodot\"]\n[upstreams.b]\nurl = \"https://b.io\"\naliases = [\"a.io\"]\n",
    )
    .unwrap();
    let out = berth(f.path(), &["check-config"]);
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "exactly one upstream",
        "must be http(s)",
        "used by both",
        "warning: upstreams.a.aliases: \"nodot\" has no dot",
    ] {
        assert!(err.contains(want), "{want:?} missing in:\n{err}");
    }
    std::fs::write(f.path(), "[storage]\npath = \"/tmp/x\"\nbogus = 1\n").unwrap();
    assert_eq!(
        berth(f.path(), &["check-config"]).status.code(),
        Some(78),
        "unknown keys are errors"
    );
    let repo_config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    let out = berth(&repo_config, &["check-config"]);
    assert!(
        out.status.success(),
        "the repository's config.toml is valid: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_password_in_an_upstream_url_is_never_printed() {
    let f = tempfile::NamedTempFile::new().unwrap();
    let config =
        |url: &str| format!("[storage]\npath = \"/tmp/x\"\n[upstreams.hub]\nurl = \"{url}\"\ndefault = true\n");
    let urls = [
        "https://bot:s3cretpw@registry.example",
        // Not even a URI: the parse error must not echo it either.
        "https://bot:s3cretpw with space@registry.example",
    ];
    for url in urls {
        for (how, file_url, env) in [
            ("config file", url, None),
            ("BERTH_UPSTREAMS__HUB__URL", "https://registry.example", Some(url)),
        ] {
            std::fs::write(f.path(), config(file_url)).unwrap();
            for cmd in ["check-config", "serve"] {
                let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
                c.arg("--config").arg(f.path()).arg(cmd);
                if let Some(v) = env {
                    c.env("BERTH_UPSTREAMS__HUB__URL", v);
                }
                let out = c.output().expect("run berth");
                let all = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
                assert_eq!(
                    out.status.code(),
                    Some(78),
                    "{cmd} refuses userinfo from the {how}: {all}"
                );
                assert!(
                    !all.contains("s3cretpw"),
                    "{cmd} printed the password from the {how}: {all}"
                );
                assert!(all.contains("password_file"), "{cmd} points to password_file: {all}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exits_zero_only_when_berth_answers() {
    let fake = FakeRegistry::start().await;
    let proxy = TestProxy::start(&fake.url(), "").await;
    let cfg = cli_config(&proxy, &fake.url());
    let p = cfg.path().to_path_buf();
    let ok = tokio::task::spawn_blocking(move || berth(&p, &["healthcheck"]))
        .await
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let p = cfg.path().to_path_buf();
    let bad = tokio::task::spawn_blocking(move || berth(&p, &["healthcheck", "--url", "http://127.0.0.1:1/livez"]))
        .await
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("127.0.0.1:1") && err.contains("Connection refused") && !err.contains("client error (Connect)"),
        "the error chain down to its root cause: {err}"
    );
}

#[test]
fn check_config_reports_unusable_tls_files_and_exits_78() {
    let ca = tls::TestCa::new("berth test CA");
    let (one, two) = (ca.issue_server("one"), ca.issue_server("two"));
    let garbage = ca.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let missing = ca.dir.path().join("missing.pem");
    let f = tempfile::NamedTempFile::new().unwrap();
    let check = |tls: String| {
        let text = format!(
            "[storage]\npath = \"/tmp/x\"\n[upstreams.hub]\nurl = \"https://registry-1.docker.io\"\ndefault = true\n[server.tls]\n{tls}"
        );
        std::fs::write(f.path(), text).unwrap();
        berth(f.path(), &["check-config"])
    };
    let files = |cert: &Path, key: &Path| format!("cert_file = {cert:?}\nkey_file = {key:?}\n");
    let cases = [
        (files(&missing, &one.key), "server.tls: cannot read cert_file"),
        (files(&one.cert, &missing), "server.tls: cannot read key_file"),
        (files(&garbage, &one.key), "server.tls: cert_file"),
        (files(&one.cert, &garbage), "server.tls: key_file"),
        (files(&one.cert, &two.key), "server.tls: cert_file and key_file"),
        (
            format!("{}client_ca_file = {missing:?}\n", files(&one.cert, &one.key)),
            "server.tls: cannot read client_ca_file",
        ),
    ];
    for (tls, want) in cases {
        let out = check(tls.clone());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{tls}: {err}");
        assert!(err.contains(want), "{tls}: want {want:?} in {err}");
        assert!(!err.contains("PRIVATE KEY"), "no key material in errors: {err}");
    }
    let ok = check(format!(
        "{}client_ca_file = {:?}\n",
        files(&one.cert, &one.key),
        ca.cert
    ));
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_trusts_berths_own_certificate_when_tls_is_on() {
    let ca = tls::TestCa::new("berth test CA");
    let server = ca.issue_server("server");
    let fake = FakeRegistry::start().await;
    let tls = format!(
        "[server.tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        server.cert, server.key
    );
    let proxy = TestProxy::start(&fake.url(), &tls).await;
    let cfg = cli_config(&proxy, &fake.url());
    std::fs::write(
        cfg.path(),
        format!("{}{tls}", std::fs::read_to_string(cfg.path()).unwrap()),
    )
    .unwrap();
    let p = cfg.path().to_path_buf();
    let ok = tokio::task::spawn_blocking(move || berth(&p, &["healthcheck"]))
        .await
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    // Another certificate for the same names, from the same CA, is not berth's own.
    let other = ca.issue_server("other");
    let pinned_elsewhere = format!(
        "{}[server.tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        std::fs::read_to_string(cfg.path())
            .unwrap()
            .split("[server.tls]")
            .next()
            .unwrap(),
        other.cert,
        other.key
    );
    std::fs::write(cfg.path(), pinned_elsewhere).unwrap();
    let p = cfg.path().to_path_buf();
    let bad = tokio::task::spawn_blocking(move || berth(&p, &["healthcheck"]))
        .await
        .unwrap();
    assert!(
        !bad.status.success(),
        "a certificate that is not the configured one is refused"
    );
}
