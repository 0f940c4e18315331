//! Client authentication and access rules against an in-process fake upstream: the 401
//! challenge and berth's token flow, 403 for users the rules deny, the failed-login limiter,
//! and `client_credentials = "verify"`. Every refusal is checked to have sent nothing upstream.

use berth_testkit::common;

use base64::Engine as _;
use common::*;

const ALL: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// An htpasswd file (bcrypt, cost 4) with `users`.
fn htpasswd(users: &[(&str, &str)]) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    let text: String = users
        .iter()
        .map(|(u, p)| format!("{u}:{}\n", bcrypt::hash(p, 4).unwrap()))
        .collect();
    std::fs::write(f.path(), text).unwrap();
    f
}

/// Upstream keys making `hub` private (berth pulls as bot:hunter2), and the password file.
fn private_upstream(fake: &FakeRegistry) -> (String, tempfile::NamedTempFile) {
    *fake.state.basic.lock().unwrap() = Some("Ym90Omh1bnRlcjI=".into()); // bot:hunter2
    let pw = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(pw.path(), "hunter2\n").unwrap();
    (format!("username = \"bot\"\npassword_file = {:?}\n", pw.path()), pw)
}

fn failures(metrics: &str, reason: &str) -> u64 {
    let line = format!("berth_auth_failures_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line} in metrics"))
}

async fn token(proxy: &TestProxy, auth: Option<&str>, scope: &str) -> Reply {
    let url = proxy.url(&format!("/token?service=berth&scope={scope}"));
    match auth {
        Some(a) => get(&url, &[("authorization", a)]).await,
        None => get(&url, &[]).await,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_upstream_answers_anonymous_clients_401_when_auth_is_on_and_sends_nothing_upstream() {
    let fake = FakeRegistry::start().await;
    let (digest, _) = fake.image("library/app", "v1", OCI_MANIFEST, &[random_bytes(100)]);
    let (up, _pw) = private_upstream(&fake);
    let users = htpasswd(&[("alice", "wonderland")]);
    let proxy = TestProxy::start(&fake.url(), &format!("{up}[auth]\nhtpasswd = {:?}\n", users.path())).await;

    let r = get(&proxy.url("/v2/"), &[]).await;
    assert_eq!(r.status, 401, "the base check asks for credentials");
    let realm = format!("Bearer realm=\"http://{}/token\",service=\"berth\"", proxy.addr);
    assert_eq!(r.header("www-authenticate"), Some(realm.as_str()));

    for path in [
        "/v2/library/app/manifests/v1".to_string(),
        format!("/v2/library/app/manifests/{digest}"),
        format!("/v2/library/app/blobs/{digest}"),
        "/v2/library/app/tags/list".to_string(),
    ] {
        let r = get(&proxy.url(&path), &[("accept", ALL)]).await;
        assert_eq!(
            (r.status, r.json()["errors"][0]["code"].as_str()),
            (401, Some("UNAUTHORIZED")),
            "{path}"
        );
        let want = format!("{realm},scope=\"repository:library/app:pull\"");
        assert_eq!(r.header("www-authenticate"), Some(want.as_str()), "{path}");
    }
    // An anonymous token is issued (public upstreams need one) but grants nothing private.
    let t = token(&proxy, None, "repository:library/app:pull").await;
    assert_eq!(t.status, 200);
    let anon = format!("Bearer {}", t.json()["token"].as_str().unwrap());
    let r = get(&proxy.url("/v2/library/app/manifests/v1"), &[("authorization", &anon)]).await;
    assert_eq!(
        r.status, 401,
        "anonymous may not pull from an upstream with credentials"
    );
    assert_eq!(fake.total_hits(), 0, "nothing was sent upstream");
    assert!(failures(&proxy.metrics().await, "unauthenticated") >= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_flow_logs_in_and_scopes_tokens_when_credentials_are_right() {
    let fake = FakeRegistry::start().await;
    let (digest, bytes) = fake.image("library/app", "v1", OCI_MANIFEST, &[random_bytes(100)]);
    let (up, _pw) = private_upstream(&fake);
    let users = htpasswd(&[("alice", "wonderland")]);
    let proxy = TestProxy::start(&fake.url(), &format!("{up}[auth]\nhtpasswd = {:?}\n", users.path())).await;

    let t = token(
        &proxy,
        Some(&basic("alice", "wonderland")),
        "repository:library/app:pull",
    )
    .await;
    assert_eq!(t.status, 200);
    let doc = t.json();
    assert_eq!(doc["token"], doc["access_token"]);
    assert_eq!(doc["expires_in"], 300);
    assert!(doc["issued_at"].as_str().unwrap().ends_with('Z'), "{doc}");
    let bearer = format!("Bearer {}", doc["token"].as_str().unwrap());
    assert_eq!(get(&proxy.url("/v2/"), &[("authorization", &bearer)]).await.status, 200);
    let r = get(
        &proxy.url("/v2/library/app/manifests/v1"),
        &[("authorization", &bearer), ("accept", ALL)],
    )
    .await;
    assert_eq!((r.status, r.bytes()), (200, &bytes));
    assert_eq!(r.header("docker-content-digest"), Some(digest.as_str()));

    // The token is scoped: another repository asks for a new token.
    let r = get(
        &proxy.url("/v2/library/other/manifests/v1"),
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .ends_with("scope=\"repository:library/other:pull\""));

    // Basic straight on /v2/ works too (podman and curl users).
    let alice = basic("alice", "wonderland");
    assert_eq!(get(&proxy.url("/v2/"), &[("authorization", &alice)]).await.status, 200);
    let r = get(
        &proxy.url("/v2/library/app/manifests/v1"),
        &[("authorization", &alice), ("accept", ALL)],
    )
    .await;
    assert_eq!(r.status, 200);

    let hits = fake.total_hits();
    let wrong = basic("alice", "looking-glass");
    assert_eq!(
        token(&proxy, Some(&wrong), "repository:library/app:pull").await.status,
        401
    );
    assert_eq!(get(&proxy.url("/v2/"), &[("authorization", &wrong)]).await.status, 401);
    let r = get(&proxy.url("/v2/library/app/manifests/v1"), &[("authorization", &wrong)]).await;
    assert_eq!(r.status, 401);
    let r = get(
        &proxy.url("/v2/library/app/manifests/v1"),
        &[("authorization", "Bearer forged.token")],
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(fake.total_hits(), hits, "refused requests send nothing upstream");
    let m = proxy.metrics().await;
    assert_eq!(failures(&m, "bad_credentials"), 3);
    assert_eq!(failures(&m, "bad_token"), 1);
    for secret in ["wonderland", "looking-glass", "hunter2", doc["token"].as_str().unwrap()] {
        assert!(!m.contains(secret), "metrics never carry secrets");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_the_rules_do_not_allow_get_403_denied_and_nothing_reaches_upstream() {
    let fake = FakeRegistry::start().await;
    let (_, bytes) = fake.image("library/app", "v1", OCI_MANIFEST, &[random_bytes(100)]);
    let (up, _pw) = private_upstream(&fake);
    let users = htpasswd(&[("alice", "a"), ("bob", "b")]);
    let rules = "[[auth.rules]]\nusers = [\"alice\"]\nrepositories = [\"library/*\"]\n[[auth.rules]]\nusers = [\"bob\"]\nrepositories = [\"team/*\"]\n";
    let proxy = TestProxy::start(
        &fake.url(),
        &format!("{up}[auth]\nhtpasswd = {:?}\n{rules}", users.path()),
    )
    .await;
    let url = proxy.url("/v2/library/app/manifests/v1");

    let r = get(&url, &[("authorization", &basic("bob", "b"))]).await;
    assert_eq!(
        (r.status, r.json()["errors"][0]["code"].as_str()),
        (403, Some("DENIED"))
    );
    assert!(r.header("www-authenticate").is_none(), "403 carries no challenge");
    let t = token(&proxy, Some(&basic("bob", "b")), "repository:library/app:pull").await;
    let bearer = format!("Bearer {}", t.json()["token"].as_str().unwrap());
    assert_eq!(get(&url, &[("authorization", &bearer)]).await.status, 403);
    assert_eq!(fake.total_hits(), 0, "a denied request never reaches the upstream");

    let r = get(&url, &[("authorization", &basic("alice", "a")), ("accept", ALL)]).await;
    assert_eq!((r.status, r.bytes()), (200, &bytes));
    // Cached now; bob is still refused and gets nothing from the store.
    let r = get(&url, &[("authorization", &basic("bob", "b"))]).await;
    assert_eq!(r.status, 403);
    assert_eq!(failures(&proxy.metrics().await, "denied"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_get_429_when_an_address_has_used_up_its_attempts() {
    let fake = FakeRegistry::start().await;
    let users = htpasswd(&[("alice", "right")]);
    let extra = format!(
        "[auth]\nhtpasswd = {:?}\nmax_failed_logins = 3\nfailed_login_window = \"1h\"\n",
        users.path()
    );
    let proxy = TestProxy::start(&fake.url(), &extra).await;
    for i in 0..3 {
        let r = token(&proxy, Some(&basic("alice", &format!("guess{i}"))), "").await;
        assert_eq!(r.status, 401, "attempt {i}");
    }
    let r = token(&proxy, Some(&basic("alice", "guess3")), "").await;
    assert_eq!(
        (r.status, r.json()["errors"][0]["code"].as_str()),
        (429, Some("TOOMANYREQUESTS"))
    );
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(wait > 0 && wait <= 3600, "Retry-After within the window: {wait}");
    let r = token(&proxy, Some(&basic("alice", "right")), "").await;
    assert_eq!(r.status, 429, "the right password is not even checked while limited");
    let r = get(&proxy.url("/v2/"), &[("authorization", &basic("nobody", "x"))]).await;
    assert_eq!(r.status, 429, "unknown users are limited alike");
    let m = proxy.metrics().await;
    assert_eq!(failures(&m, "bad_credentials"), 3);
    assert_eq!(failures(&m, "throttled"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_clients_share_one_cached_copy_and_refused_ones_get_403() {
    let fake = FakeRegistry::start().await;
    let layer = random_bytes(200_000);
    let (_, bytes) = fake.image("team/app", "v1", OCI_MANIFEST, std::slice::from_ref(&layer));
    let layer_digest = sha256(&layer);
    let (up, _pw) = private_upstream(&fake);
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    fake.state
        .basic_also
        .lock()
        .unwrap()
        .extend([b64("tenant1:one"), b64("tenant2:two")]);
    let proxy = TestProxy::start(&fake.url(), &format!("{up}client_credentials = \"verify\"\n")).await;
    let blob = proxy.url(&format!("/v2/team/app/blobs/{layer_digest}"));
    let manifest = proxy.url("/v2/team/app/manifests/v1");

    assert_eq!(
        get(&proxy.url("/v2/"), &[]).await.status,
        401,
        "clients must present credentials"
    );
    assert_eq!(get(&blob, &[]).await.status, 401);
    let t1 = basic("tenant1", "one");
    let r = get(&manifest, &[("authorization", &t1), ("accept", ALL)]).await;
    assert_eq!((r.status, r.bytes()), (200, &bytes));
    let r = get(&blob, &[("authorization", &t1)]).await;
    assert_eq!((r.status, r.bytes()), (200, &layer));
    assert_eq!(fake.hits("GET", &format!("/v2/team/app/blobs/{layer_digest}")), 1);
    assert_eq!(
        fake.hits("GET", "/v2/team/app/tags/list"),
        1,
        "one check, then remembered"
    );

    let r = get(&blob, &[("authorization", &basic("mallory", "guess"))]).await;
    assert_eq!(
        (r.status, r.json()["errors"][0]["code"].as_str()),
        (403, Some("DENIED"))
    );
    assert_eq!(
        get(&manifest, &[("authorization", &basic("mallory", "guess"))])
            .await
            .status,
        403
    );

    // Another tenant the upstream accepts: served from the one cached copy.
    let t2 = basic("tenant2", "two");
    let r = get(&blob, &[("authorization", &t2)]).await;
    assert_eq!((r.status, r.bytes()), (200, &layer));
    // The token flow works alike: berth checks the credentials at /token.
    let t = token(&proxy, Some(&t2), "repository:team/app:pull").await;
    let bearer = format!("Bearer {}", t.json()["token"].as_str().unwrap());
    let r = get(&blob, &[("authorization", &bearer)]).await;
    assert_eq!((r.status, r.bytes()), (200, &layer));
    assert_eq!(
        fake.hits("GET", &format!("/v2/team/app/blobs/{layer_digest}")),
        1,
        "no second blob transfer"
    );
    let m = proxy.metrics().await;
    assert_eq!(failures(&m, "upstream_refused"), 2);
    assert!(!m.contains("guess") && !m.contains("two"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_follow_the_access_rules_of_manifests() {
    let fake = FakeRegistry::start().await;
    let (digest, _) = fake.image("library/app", "v1", OCI_MANIFEST, &[random_bytes(100)]);
    let (up, _pw) = private_upstream(&fake);
    let users = htpasswd(&[("alice", "a"), ("bob", "b")]);
    let rules = "[[auth.rules]]\nusers = [\"alice\"]\nrepositories = [\"library/*\"]\n";
    let proxy = TestProxy::start(
        &fake.url(),
        &format!("{up}[auth]\nhtpasswd = {:?}\n{rules}", users.path()),
    )
    .await;
    let url = proxy.url(&format!("/v2/library/app/referrers/{digest}"));

    let r = get(&url, &[]).await;
    assert_eq!(r.status, 401, "anonymous: challenged like a manifest pull");
    assert!(r.header("www-authenticate").is_some());
    let r = get(&url, &[("authorization", &basic("bob", "b"))]).await;
    assert_eq!(
        (r.status, r.json()["errors"][0]["code"].as_str()),
        (403, Some("DENIED"))
    );
    assert_eq!(
        fake.total_hits(),
        0,
        "a refused referrers request never reaches the upstream"
    );

    let r = get(&url, &[("authorization", &basic("alice", "a"))]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["manifests"], serde_json::json!([]));
}
