use super::*;

const BASE: &str = r#"
[storage]
path = "/tmp/berth"
[upstreams.hub]
url = "https://registry-1.docker.io"
aliases = ["docker.io"]
default = true
"#;

fn errors(c: &Config) -> Vec<String> {
    c.validate()
        .into_iter()
        .filter(|p| p.severity == Severity::Error)
        .map(|p| p.message)
        .collect()
}

#[test]
fn minimal_config_gets_defaults() {
    let c = Config::from_toml_str(BASE).unwrap();
    assert_eq!(c.cache.manifest_ttl, Duration::from_secs(600));
    assert_eq!(c.server.listen.port(), 5000);
    assert_eq!(
        (c.cache.blob_memory_bytes, c.cache.blob_memory_max_object),
        (32 << 20, 64 << 10)
    );
    assert!(errors(&c).is_empty(), "{:?}", errors(&c));
}

#[test]
fn config_is_refused_when_it_has_problems() {
    let cases: &[(&str, &str)] = &[
        ("[bogus]\nx = 1\n", "unknown field"),
        ("[cache]\nmanifest_ttl = \"ten\"\n", "invalid duration"),
        (
            "[upstreams.ghcr]\nurl = \"https://ghcr.io\"\naliases = [\"ghcr.io\"]\ndefault = true\n",
            "exactly one upstream",
        ),
        (
            "[upstreams.ghcr]\nurl = \"https://ghcr.io\"\naliases = [\"docker.io\"]\n",
            "used by both",
        ),
        ("[upstreams.x]\nurl = \"ftp://x.io\"\n", "must be http(s)"),
        ("[upstreams.x]\nurl = \"https://x.io/v2\"\n", "must not have a path"),
        (
            "[upstreams.x]\nurl = \"https://x.io\"\nusername = \"u\"\n",
            "go together",
        ),
        (
            "[upstreams.x]\nurl = \"https://x.io\"\nusername = \"u\"\npassword_file = \"/nonexistent/pw\"\n",
            "cannot read password_file",
        ),
        ("[upstreams.x]\nurl = \"https://x.io\"\nfoo = 1\n", "unknown field"),
        ("[cache]\nblob_memory_max_object = \"17MiB\"\n", "at most 16MiB"),
        ("[cache]\nblob_memory_bytes = \"lots\"\n", "invalid size"),
    ];
    for (extra, want) in cases {
        let text = format!("{BASE}{extra}");
        let msg = match Config::from_toml_str(&text) {
            Err(e) => e.to_string(),
            Ok(c) => errors(&c).join("; "),
        };
        assert!(msg.contains(want), "config {extra:?}: want {want:?} in {msg:?}");
    }
}

#[test]
fn alias_without_a_dot_is_a_warning() {
    let c = Config::from_toml_str(&format!(
        "{BASE}[upstreams.x]\nurl = \"https://x.io\"\naliases = [\"myorg\"]\n"
    ))
    .unwrap();
    let p = c.validate();
    assert!(
        p.iter()
            .any(|p| p.severity == Severity::Warning && p.message.contains("no dot")),
        "{p:?}"
    );
    assert!(errors(&c).is_empty());
}

#[test]
fn env_overrides_replace_and_add_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, BASE).unwrap();
    let env = vec![
        ("BERTH_CACHE__MANIFEST_TTL".to_string(), "5s".to_string()),
        ("BERTH_SERVER__MAX_CONNECTIONS".to_string(), "7".to_string()),
        (
            "BERTH_UPSTREAMS__HUB__URL".to_string(),
            "http://127.0.0.1:1".to_string(),
        ),
        ("BERTH_CONFIG".to_string(), "ignored".to_string()),
        ("OTHER".to_string(), "x".to_string()),
    ];
    let c = Config::load(&path, env).unwrap();
    assert_eq!(c.cache.manifest_ttl, Duration::from_secs(5));
    assert_eq!(c.server.max_connections, 7);
    assert_eq!(c.upstreams["hub"].url.to_string(), "http://127.0.0.1:1/");
}

#[test]
fn secrets_never_print() {
    assert_eq!(format!("{:?}", Secret("hunter2".into())), "***");
}

#[test]
fn userinfo_is_redacted_even_in_text_that_is_no_uri() {
    let cases: &[(&str, &str)] = &[
        ("https://u:pw@r.example", "https://***@r.example"),
        ("https://u:p@w@r.example:5000/x", "https://***@r.example:5000/x"),
        ("https://u:p w@r.example", "https://***@r.example"),
        ("u:pw@r.example", "***@r.example"),
        ("https://r.example/a@b", "https://r.example/a@b"),
        ("https://r.example", "https://r.example"),
    ];
    for (url, want) in cases {
        assert_eq!(redact_userinfo(url), *want, "{url}");
    }
}

#[test]
fn sizes_parse_with_iec_and_si_units() {
    let cases = [
        ("1024", Some(1024)),
        ("4KiB", Some(4096)),
        ("1.5GiB", Some(1_610_612_736)),
        ("500MB", Some(500_000_000)),
        ("10 MiB", Some(10 << 20)),
        ("0.1KB", Some(100)),
        ("2.999999999999999999GB", Some(2_999_999_999)),
        ("16EiB", None),
        ("99999999999TiB", None),
        ("1.2.3MB", None),
        (".", None),
        ("x", None),
        ("5PB", None),
    ];
    for (s, want) in cases {
        assert_eq!(parse_size(s).ok(), want, "{s:?}");
    }
    let c = Config::from_toml_str(BASE).unwrap();
    assert_eq!(c.storage.max_size, None);
    let c = Config::from_toml_str(&BASE.replace(
        "path = \"/tmp/berth\"",
        "path = \"/tmp/berth\"\nmax_size = \"2MiB\"\nmin_free_space = 1000",
    ))
    .unwrap();
    assert_eq!(
        (c.storage.max_size, c.storage.min_free_space),
        (Some(2 << 20), Some(1000))
    );
}

#[test]
fn every_unknown_key_and_bad_type_is_reported_in_file_order_with_its_line() {
    let text = format!("{BASE}[[auth.rules]]\nusers = \"a\"\nbar = 2\n");
    let problems = match Config::from_toml_str(&text) {
        Err(LoadError::Invalid(p)) => p.iter().map(ToString::to_string).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(
        problems[0].starts_with("config:9: auth.rules[0].users: invalid type: string \"a\""),
        "{problems:#?}"
    );
    assert!(
        problems[1].starts_with("config:10: auth.rules[0].bar: unknown field `bar`"),
        "{problems:#?}"
    );
}
