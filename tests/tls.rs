//! HTTPS on berth's listener, in process: ALPN (h2, http/1.1), TLS 1.2 and 1.3, mutual TLS
//! (accepted, refused, the certificate's common name as the user), and certificate reloads
//! (on file change, Kubernetes-style symlink swap, and SIGHUP) that never drop a connection.
//! Certificates come from a CA each test makes with `openssl`.

use berth_testkit::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth::config::{ClientAuth, TlsConfig};
use common::tls::{connect, ClientOptions, Issued, SecretVolume, TestCa};
use common::*;
use http_body_util::BodyExt;

/// Start berth with `[server.tls]` from `volume` plus `extra` keys, in front of `fake`.
async fn proxy_with_tls(fake: &FakeRegistry, volume: &SecretVolume, extra: &str) -> TestProxy {
    TestProxy::start(&fake.url(), &format!("[server.tls]\n{}{extra}", volume.config())).await
}

/// GET `path` on a fresh TLS connection; any TLS or HTTP failure is an `Err`.
async fn fetch(proxy: &TestProxy, opts: &ClientOptions<'_>, path: &str) -> Result<(u16, bytes::Bytes), String> {
    let conn = connect(proxy.addr, opts).await.map_err(|e| e.to_string())?;
    let mut sender = conn.sender().await;
    let resp = sender.get(path).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?;
    Ok((status, body.to_bytes()))
}

/// Poll (bounded) until new connections are served `want`.
async fn wait_for_certificate(proxy: &TestProxy, opts: &ClientOptions<'_>, want: &Issued) {
    let want = want.der();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = connect(proxy.addr, opts).await.unwrap().server_cert;
        if seen == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "new connections never got the new certificate"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of `berth_tls_reloads_total{result}`.
async fn reloads(proxy: &TestProxy, result: &str) -> u64 {
    let text = proxy.metrics().await;
    let line = format!("berth_tls_reloads_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(line.as_str()))
        .unwrap_or_else(|| panic!("no {line} in metrics:\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_serves_h2_and_http1_when_the_client_offers_them_by_alpn() {
    let ca = TestCa::new("berth test CA");
    let volume = SecretVolume::new(&ca.issue_server("server"));
    let fake = FakeRegistry::start().await;
    let blob = random_bytes(300_000);
    let digest = fake.put_blob(blob.clone());
    let proxy = proxy_with_tls(&fake, &volume, "").await;
    let cases: &[(&[&str], &str)] = &[
        (&["h2", "http/1.1"], "h2"),
        (&["http/1.1"], "http/1.1"),
        (&["h2"], "h2"),
    ];
    for (offered, chosen) in cases {
        let opts = ClientOptions {
            alpn: offered,
            ..ClientOptions::new(&ca.cert)
        };
        let conn = connect(proxy.addr, &opts).await.unwrap();
        assert_eq!(conn.alpn.as_deref(), Some(*chosen), "client offered {offered:?}");
        let mut sender = conn.sender().await;
        let (status, body) = sender.get_bytes(&format!("/v2/library/app/blobs/{digest}")).await;
        assert_eq!((status, &body), (200, &blob), "blob over {chosen}");
        let (status, _) = sender.get_bytes("/v2/").await;
        assert_eq!(status, 200, "a second request on the same {chosen} connection");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_accepts_tls12_and_tls13_when_the_client_allows_only_one() {
    let ca = TestCa::new("berth test CA");
    let volume = SecretVolume::new(&ca.issue_server("server"));
    let fake = FakeRegistry::start().await;
    let proxy = proxy_with_tls(&fake, &volume, "").await;
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let versions = [version];
        let opts = ClientOptions {
            versions: &versions,
            ..ClientOptions::new(&ca.cert)
        };
        let conn = connect(proxy.addr, &opts).await.unwrap();
        assert_eq!(conn.version, Some(version.version));
        let (status, _) = conn.sender().await.get_bytes("/v2/").await;
        assert_eq!(status, 200, "{:?}", version.version);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_serves_only_clients_with_a_certificate_from_client_ca_when_required() {
    let ca = TestCa::new("berth test CA");
    let clients = TestCa::new("client CA");
    let strangers = TestCa::new("some other CA");
    let volume = SecretVolume::new(&ca.issue_server("server"));
    let (trusted, untrusted) = (
        clients.issue_client("alice", "alice"),
        strangers.issue_client("mallory", "alice"),
    );
    let fake = FakeRegistry::start().await;
    let proxy = proxy_with_tls(&fake, &volume, &format!("client_ca_file = {:?}\n", clients.cert)).await;

    let with = |identity| ClientOptions {
        identity,
        ..ClientOptions::new(&ca.cert)
    };
    let ok = fetch(&proxy, &with(Some(&trusted)), "/v2/").await;
    assert_eq!(
        ok.map(|r| r.0),
        Ok(200),
        "a certificate from client_ca_file is accepted"
    );
    for (who, identity) in [("no certificate", None), ("another CA's certificate", Some(&untrusted))] {
        let refused = fetch(&proxy, &with(identity), "/v2/").await;
        assert!(refused.is_err(), "{who}: refused, got {refused:?}");
    }
    assert_eq!(fake.total_hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_lets_clients_without_a_certificate_in_when_client_auth_is_optional() {
    let ca = TestCa::new("berth test CA");
    let clients = TestCa::new("client CA");
    let strangers = TestCa::new("some other CA");
    let volume = SecretVolume::new(&ca.issue_server("server"));
    let untrusted = strangers.issue_client("mallory", "alice");
    let fake = FakeRegistry::start().await;
    let extra = format!("client_ca_file = {:?}\nclient_auth = \"optional\"\n", clients.cert);
    let proxy = proxy_with_tls(&fake, &volume, &extra).await;

    let anonymous = fetch(&proxy, &ClientOptions::new(&ca.cert), "/v2/").await;
    assert_eq!(anonymous.map(|r| r.0), Ok(200), "no certificate: anonymous");
    let opts = ClientOptions {
        identity: Some(&untrusted),
        ..ClientOptions::new(&ca.cert)
    };
    assert!(
        fetch(&proxy, &opts, "/v2/").await.is_err(),
        "a certificate that does not verify is still refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acceptor_reports_the_common_name_as_user_when_the_client_certificate_verifies() {
    let ca = TestCa::new("berth test CA");
    let clients = TestCa::new("client CA");
    let server = ca.issue_server("server");
    let runner = clients.issue_client("runner", "ci-runner-7");
    let cfg = TlsConfig {
        cert_file: server.cert.clone(),
        key_file: server.key.clone(),
        client_ca_file: Some(clients.cert.clone()),
        client_auth: ClientAuth::Optional,
        reload_interval: Duration::from_secs(5),
    };
    let metrics = Arc::new(berth::metrics::Metrics::new());
    let acceptor = berth::tls::Acceptor::load(&cfg, Duration::from_secs(10), metrics).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    for (identity, want) in [(Some(&runner), Some("ci-runner-7")), (None, None)] {
        let opts = ClientOptions {
            identity,
            ..ClientOptions::new(&ca.cert)
        };
        let server_side = async {
            let (tcp, _) = listener.accept().await.unwrap();
            let (_stream, identity) = acceptor.accept(tcp).await.unwrap();
            identity
        };
        let (identity, client) = tokio::join!(server_side, connect(addr, &opts));
        client.unwrap();
        assert_eq!(identity.as_ref().map(|i| i.user()), want);
        if let Some(i) = identity {
            assert_eq!(i.method(), berth::auth::identity::AuthMethod::ClientCertificate);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_completes_on_the_old_certificate_when_the_certificate_rotates_midway() {
    let ca = TestCa::new("berth test CA");
    let (first, second) = (ca.issue_server("first"), ca.issue_server("second"));
    let mut volume = SecretVolume::new(&first);
    let fake = FakeRegistry::start().await;
    // Far more than socket and TLS buffers hold, so the response cannot finish while the
    // client is not reading.
    let big = random_bytes(32 << 20);
    let digest = fake.put_blob(big.clone());
    let proxy = proxy_with_tls(&fake, &volume, "reload_interval = \"100ms\"\n").await;
    let opts = ClientOptions {
        alpn: &["http/1.1"],
        ..ClientOptions::new(&ca.cert)
    };
    let conn = connect(proxy.addr, &opts).await.unwrap();
    assert_eq!(conn.server_cert, first.der(), "served the first certificate");
    let mut sender = conn.sender().await;
    let resp = sender.get(&format!("/v2/library/big/blobs/{digest}")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = body.frame().await.unwrap().unwrap().into_data().unwrap().to_vec();

    volume.rotate(&second);
    wait_for_certificate(&proxy, &opts, &second).await;
    assert!(reloads(&proxy, "ok").await >= 1);
    let done = "berth_http_requests_total{code=\"200\",kind=\"blob\",method=\"GET\"}";
    // The series exists from start at 0; it counts the download once it has finished.
    assert_eq!(
        proxy.metric(done).await,
        Some(0.0),
        "the download was still running when the new certificate was in use"
    );

    while let Some(frame) = body.frame().await {
        got.extend_from_slice(&frame.expect("the old connection is not dropped").into_data().unwrap());
    }
    assert!(
        got == big,
        "the download completed intact ({} of {} bytes)",
        got.len(),
        big.len()
    );
    let (status, _) = sender.get_bytes("/v2/").await;
    assert_eq!(status, 200, "the old connection still serves requests");
    assert!(proxy.metrics().await.contains(&format!("{done} 1")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_is_reloaded_when_berth_gets_sighup() {
    let ca = TestCa::new("berth test CA");
    let (first, second) = (ca.issue_server("first"), ca.issue_server("second"));
    // Plain files rewritten in place, and no periodic check within the test: only SIGHUP
    // can make berth look.
    let dir = tempfile::tempdir().unwrap();
    let live = Issued {
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
    };
    let install = |from: &Issued| {
        std::fs::copy(&from.cert, &live.cert).unwrap();
        std::fs::copy(&from.key, &live.key).unwrap();
    };
    install(&first);
    let fake = FakeRegistry::start().await;
    let extra = format!(
        "[server.tls]\ncert_file = {:?}\nkey_file = {:?}\nreload_interval = \"1h\"\n",
        live.cert, live.key
    );
    let proxy = TestProxy::start(&fake.url(), &extra).await;
    let opts = ClientOptions::new(&ca.cert);
    // A served connection means `run` got past installing the SIGHUP handler.
    assert_eq!(connect(proxy.addr, &opts).await.unwrap().server_cert, first.der());

    install(&second);
    assert_eq!(
        connect(proxy.addr, &opts).await.unwrap().server_cert,
        first.der(),
        "nothing reloads before the signal"
    );
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_for_certificate(&proxy, &opts, &second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_certificate_stays_when_the_new_files_do_not_match() {
    let ca = TestCa::new("berth test CA");
    let (first, second) = (ca.issue_server("first"), ca.issue_server("second"));
    let mut volume = SecretVolume::new(&first);
    let fake = FakeRegistry::start().await;
    let proxy = proxy_with_tls(&fake, &volume, "reload_interval = \"100ms\"\n").await;
    let opts = ClientOptions::new(&ca.cert);
    // Served once: berth has loaded the first files before they change.
    assert_eq!(connect(proxy.addr, &opts).await.unwrap().server_cert, first.der());

    let mismatched = Issued {
        cert: second.cert.clone(),
        key: first.key.clone(),
    };
    volume.rotate(&mismatched);
    let deadline = Instant::now() + Duration::from_secs(20);
    while reloads(&proxy, "error").await == 0 {
        assert!(Instant::now() < deadline, "the bad rotation was never noticed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let conn = connect(proxy.addr, &opts).await.unwrap();
    assert_eq!(conn.server_cert, first.der(), "still the old certificate");
    let (status, _) = conn.sender().await.get_bytes("/v2/").await;
    assert_eq!(status, 200);

    volume.rotate(&second);
    wait_for_certificate(&proxy, &opts, &second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_rules_see_the_certificate_user_when_mtls_authenticates_the_client() {
    let ca = TestCa::new("berth test CA");
    let clients = TestCa::new("client CA");
    let volume = SecretVolume::new(&ca.issue_server("server"));
    let (runner, intruder) = (
        clients.issue_client("runner", "ci-runner-7"),
        clients.issue_client("intruder", "someone-else"),
    );
    let fake = FakeRegistry::start().await;
    let digest = fake.put_blob(random_bytes(50_000));
    let extra = format!(
        "client_ca_file = {:?}\nclient_auth = \"optional\"\n[auth]\n[[auth.rules]]\nusers = [\"ci-runner-7\"]\n",
        clients.cert
    );
    let proxy = proxy_with_tls(&fake, &volume, &extra).await;
    let path = format!("/v2/library/app/blobs/{digest}");
    let with = |identity| ClientOptions {
        identity,
        ..ClientOptions::new(&ca.cert)
    };
    let status = |r: Result<(u16, bytes::Bytes), String>| r.unwrap().0;
    assert_eq!(
        status(fetch(&proxy, &with(None), &path).await),
        401,
        "no certificate: anonymous"
    );
    assert_eq!(
        status(fetch(&proxy, &with(Some(&intruder)), &path).await),
        403,
        "a verified user no rule names"
    );
    assert_eq!(fake.total_hits(), 0, "refused requests never reach the upstream");
    assert_eq!(
        status(fetch(&proxy, &with(Some(&runner)), &path).await),
        200,
        "the certificate's CN is the user the rule names"
    );
}
