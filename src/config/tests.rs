//! The config's tests: every key's sources, errors that name the key and
//! never a secret, and the validation of combinations.

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn request_and_connection_bounds() {
    let c = Config::load(
        None,
        env(&[
            ("STEVEDORE_HANDSHAKE_TIMEOUT", "2s"),
            ("STEVEDORE_IDLE_TIMEOUT", "1m"),
            ("STEVEDORE_MAX_CONNECTIONS", "50"),
            ("STEVEDORE_MAX_DECODED_REQUEST_BYTES", "2097152"),
            ("STEVEDORE_MAX_INFLIGHT_REQUEST_BYTES", "33554432"),
        ]),
        &[],
    )
    .unwrap();
    assert_eq!(c.handshake_timeout, Duration::from_secs(2));
    assert_eq!(c.idle_timeout, Duration::from_secs(60));
    assert_eq!(c.max_connections, 50);
    assert_eq!(c.max_decoded_request_bytes, 2 * 1024 * 1024);
    assert_eq!(c.max_inflight_request_bytes, 32 * 1024 * 1024);
    for (var, value, key) in [
        ("STEVEDORE_HANDSHAKE_TIMEOUT", "0s", "handshake_timeout"),
        ("STEVEDORE_IDLE_TIMEOUT", "0s", "idle_timeout"),
        ("STEVEDORE_MAX_CONNECTIONS", "0", "max_connections"),
        ("STEVEDORE_MAX_PUBLISH_STREAMS", "0", "max_publish_streams"),
        (
            "STEVEDORE_MAX_SUBSCRIBE_STREAMS",
            "0",
            "max_subscribe_streams",
        ),
        // The largest request (16 MiB + 128 MiB decoded) must fit.
        (
            "STEVEDORE_MAX_INFLIGHT_REQUEST_BYTES",
            "16777216",
            "max_inflight_request_bytes",
        ),
    ] {
        let err = Config::load(None, env(&[(var, value)]), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{var}={value}: {err}");
    }
}

#[test]
fn defaults_are_valid() {
    Config::default().validate().unwrap();
}

#[test]
fn precedence_file_then_env_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:1\"\ndata_dir = \"/from/file\"\nmax_batch_events = 7\ndefault_ack_wait = \"2s\"\n",
    )
    .unwrap();
    let c = Config::load(
        Some(&file),
        env(&[
            ("STEVEDORE_DATA_DIR", "/from/env"),
            ("STEVEDORE_LISTEN", "127.0.0.1:2"),
            ("UNRELATED", "x"),
            ("STEVEDORE_LOG", "debug"),
        ]),
        &[("listen", "127.0.0.1:3".into())],
    )
    .unwrap();
    assert_eq!(c.listen, "127.0.0.1:3".parse().unwrap());
    assert_eq!(c.data_dir, PathBuf::from("/from/env"));
    assert_eq!(c.max_batch_events, 7);
    assert_eq!(c.default_ack_wait, Duration::from_secs(2));

    let c = Config::load(
        None,
        env(&[
            ("STEVEDORE_ALLOW_HTTP", "true"),
            ("STEVEDORE_RETRY_SCHEDULE", "0s,100ms,2m"),
        ]),
        &[],
    )
    .unwrap();
    assert!(c.allow_http);
    assert_eq!(
        c.retry_schedule,
        vec![
            Duration::ZERO,
            Duration::from_millis(100),
            Duration::from_secs(120)
        ]
    );
}

#[test]
fn errors_name_the_key() {
    let err = Config::load(None, env(&[("STEVEDORE_LISTEN", "nope")]), &[]).unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("STEVEDORE_LISTEN") && text.contains("`listen`"),
        "{text}"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.toml");
    std::fs::write(&file, "lisen = \"127.0.0.1:1\"\n").unwrap();
    let text = format!(
        "{:#}",
        Config::load(Some(&file), env(&[]), &[]).unwrap_err()
    );
    assert!(text.contains("unknown config key `lisen`"), "{text}");

    let text = format!(
        "{:#}",
        Config::load(None, env(&[("STEVEDORE_MAX_ACK_WAIT", "1ms")]), &[]).unwrap_err()
    );
    assert!(text.contains("`max_ack_wait`"), "{text}");

    let text = format!(
        "{:#}",
        Config::load(None, env(&[("STEVEDORE_GROUP_COMMIT_DELAY", "20ms")]), &[]).unwrap_err()
    );
    assert!(
        text.contains("`group_commit_delay`") && text.contains("at most 10ms"),
        "{text}"
    );
    let c = Config::load(None, env(&[("STEVEDORE_GROUP_COMMIT_DELAY", "0us")]), &[]).unwrap();
    assert_eq!(c.group_commit_delay, Duration::ZERO);

    let text = format!(
        "{:#}",
        Config::load(
            None,
            env(&[("STEVEDORE_DEFAULT_ACK_WAIT", "5 parsecs")]),
            &[]
        )
        .unwrap_err()
    );
    assert!(text.contains("`default_ack_wait`"), "{text}");

    let text = format!(
        "{:#}",
        Config::load(None, env(&[("STEVEDORE_DATADIR", "/x")]), &[]).unwrap_err()
    );
    assert!(text.contains("STEVEDORE_DATADIR"), "{text}");
}

/// #19 egress: the config keys win over the usual variables, which
/// fill what is unset (lowercase first); an empty key means no proxy
/// whatever the environment says; bad values name the key and hide
/// the value.
#[test]
fn proxies_from_keys_and_environment() {
    let c = Config::load(
        None,
        env(&[
            ("HTTPS_PROXY", "http://upper:1"),
            ("https_proxy", "http://lower:2"),
            ("HTTP_PROXY", "http://h:3"),
            ("NO_PROXY", "internal.corp,10.0.0.0/8"),
        ]),
        &[],
    )
    .unwrap();
    assert_eq!(c.https_proxy.as_deref(), Some("http://lower:2"));
    assert_eq!(c.http_proxy.as_deref(), Some("http://h:3"));
    assert_eq!(c.no_proxy, ["internal.corp", "10.0.0.0/8"]);
    let c = Config::load(
        None,
        env(&[
            ("STEVEDORE_HTTPS_PROXY", "http://mine:4"),
            ("STEVEDORE_HTTP_PROXY", ""),
            ("HTTPS_PROXY", "http://upper:1"),
            ("HTTP_PROXY", "http://h:3"),
        ]),
        &[],
    )
    .unwrap();
    assert_eq!(c.https_proxy.as_deref(), Some("http://mine:4"));
    assert_eq!(c.http_proxy, None);
    let c = Config::load(
        None,
        env(&[("HTTPS_PROXY", "http://egress:p%40ss@proxy.corp:3128")]),
        &[],
    )
    .unwrap();
    assert_eq!(
        c.https_proxy.as_deref(),
        Some("http://egress:p%40ss@proxy.corp:3128")
    );
    // A printed config (a test's or a panic's) shows where the proxy is,
    // not who logs in to it.
    let printed = format!("{c:?}");
    assert!(printed.contains("http://***@proxy.corp:3128"), "{printed}");
    assert!(
        !printed.contains("p%40ss") && !printed.contains("egress:"),
        "{printed}"
    );
    for (var, value, key) in [
        // Credentials are allowed (#19), but not malformed ones.
        (
            "STEVEDORE_HTTPS_PROXY",
            "http://user:s3cret%ff@p:1",
            "https_proxy",
        ),
        ("HTTP_PROXY", "socks5://s3cret:1", "http_proxy"),
        ("NO_PROXY", "a b", "no_proxy"),
    ] {
        let e = format!(
            "{:#}",
            Config::load(None, env(&[(var, value)]), &[]).unwrap_err()
        );
        assert!(e.contains(&format!("`{key}`")), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
    }
}

#[test]
fn allow_networks() {
    let c = Config::load(
        None,
        env(&[("STEVEDORE_ALLOW_NETWORKS", "127.0.0.0/8,::1/128")]),
        &[],
    )
    .unwrap();
    assert_eq!(
        c.allow_networks,
        vec![Cidr::v4(127, 0, 0, 0, 8), "::1/128".parse().unwrap()]
    );
    let text = format!(
        "{:#}",
        Config::load(
            None,
            env(&[("STEVEDORE_ALLOW_NETWORKS", "10.0.0.1/8")]),
            &[]
        )
        .unwrap_err()
    );
    assert!(
        text.contains("`allow_networks`") && text.contains("10.0.0.0/8"),
        "{text}"
    );
}

#[test]
fn tenant_scoped_tokens_and_known_tenants() {
    let h = crate::auth::to_hex(&crate::auth::hash_token(b"t"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        format!(
            "tenants = \"acme,beta\"\n\n[[tokens]]\nname = \"acme-ops\"\nrole = \"admin\"\ntenant = \"acme\"\nsha256 = \"{h}\"\n"
        ),
    )
    .unwrap();
    let c = Config::load(Some(&file), Vec::new(), &[]).unwrap();
    assert_eq!(c.tenants, ["acme", "beta"]);
    assert_eq!(c.tokens[0].tenant.as_deref(), Some("acme"));
    // A token scoped to a tenant not in `tenants` is refused, naming the key.
    let env = vec![("STEVEDORE_TENANTS".to_string(), "beta".to_string())];
    let err = format!("{:#}", Config::load(Some(&file), env, &[]).unwrap_err());
    assert!(
        err.contains("`tokens`") && err.contains("acme-ops"),
        "{err}"
    );
    let env = vec![("STEVEDORE_TENANTS".to_string(), "a b".to_string())];
    let err = format!("{:#}", Config::load(None, env, &[]).unwrap_err());
    assert!(err.contains("`tenants`"), "{err}");
    let env = vec![(
        "STEVEDORE_TENANT_PUBLISH_RATE".to_string(),
        "-1".to_string(),
    )];
    let err = format!("{:#}", Config::load(None, env, &[]).unwrap_err());
    assert!(err.contains("`tenant_publish_rate`"), "{err}");
}

#[test]
fn tenant_retention_from_toml_and_env() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("r.toml");
    std::fs::write(
        &file,
        "retention_age = \"7d\"\n\n[tenant_retention]\nacme = \"1d\"\nbeta = \"12h\"\n",
    )
    .unwrap();
    let c = Config::load(Some(&file), Vec::new(), &[]).unwrap();
    let h = Duration::from_secs(3600);
    assert_eq!(
        c.tenant_retention,
        [("acme".to_string(), 24 * h), ("beta".to_string(), 12 * h)]
    );
    let env = |v: &str| vec![("STEVEDORE_TENANT_RETENTION".to_string(), v.to_string())];
    let c = Config::load(Some(&file), env("acme=2h"), &[]).unwrap();
    assert_eq!(c.tenant_retention, [("acme".to_string(), 2 * h)]);
    for (value, says) in [
        ("acme=8d", "shorter than retention_age"),
        ("acme", "tenant=duration"),
        ("acme=1d,acme=2h", "twice"),
        ("a b=1d", "[A-Za-z0-9._-]"),
        ("acme=0s", "positive"),
        ("acme=soon", "whole number"),
    ] {
        let err = format!("{:#}", Config::load(None, env(value), &[]).unwrap_err());
        assert!(
            err.contains("`tenant_retention`") && err.contains(says),
            "{value}: {err}"
        );
    }
    let mut known = env("acme=1d");
    known.push(("STEVEDORE_TENANTS".to_string(), "beta".to_string()));
    let err = format!("{:#}", Config::load(None, known, &[]).unwrap_err());
    assert!(err.contains("not listed in `tenants`"), "{err}");
    std::fs::write(&file, "[tenant_retention]\nacme = 5\n").unwrap();
    let err = format!(
        "{:#}",
        Config::load(Some(&file), Vec::new(), &[]).unwrap_err()
    );
    assert!(err.contains("`tenant_retention.acme`"), "{err}");
}

#[test]
fn tokens_from_toml_and_env() {
    let hash = |t: &str| crate::auth::to_hex(&crate::auth::hash_token(t.as_bytes()));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.toml");
    std::fs::write(
        &file,
        format!(
            "listen = \"0.0.0.0:50051\"\n\n[[tokens]]\nname = \"ops\"\nrole = \"admin\"\nsha256 = \"{}\"\n\n[[tokens]]\nname = \"feed\"\nrole = \"publisher\"\nsha256 = \"{}\"\n",
            hash("a"),
            hash("b")
        ),
    )
    .unwrap();
    let c = Config::load(Some(&file), env(&[]), &[]).unwrap();
    assert_eq!(c.tokens.len(), 2);
    assert_eq!(c.tokens[1].name, "feed");
    assert_eq!(c.tokens[1].role, crate::auth::Role::Publisher);

    // The environment replaces the file's list.
    let c = Config::load(
        Some(&file),
        env(&[(
            "STEVEDORE_TOKENS",
            &format!("reader:subscriber:{}", hash("c")),
        )]),
        &[],
    )
    .unwrap();
    assert_eq!(c.tokens.len(), 1);
    assert_eq!(c.tokens[0].role, crate::auth::Role::Subscriber);

    // Without tokens, a non-loopback listen address is refused.
    let err = Config::load(Some(&file), env(&[("STEVEDORE_TOKENS", "")]), &[]).unwrap_err();
    assert!(
        format!("{err:#}").contains("config key `listen`"),
        "{err:#}"
    );

    // Errors name the key (and the entry) and never echo the value.
    std::fs::write(
        &file,
        "[[tokens]]\nname = \"ops\"\nrole = \"admin\"\nsha256 = \"my-secret-token\"\n",
    )
    .unwrap();
    let text = format!(
        "{:#}",
        Config::load(Some(&file), env(&[]), &[]).unwrap_err()
    );
    assert!(
        text.contains("`tokens`") && !text.contains("my-secret"),
        "{text}"
    );
    std::fs::write(&file, "[[tokens]]\nname = \"ops\"\nrole = \"admin\"\n").unwrap();
    let text = format!(
        "{:#}",
        Config::load(Some(&file), env(&[]), &[]).unwrap_err()
    );
    assert!(text.contains("`tokens[0].sha256`"), "{text}");
    let text = format!(
        "{:#}",
        Config::load(None, env(&[("STEVEDORE_TOKENS", "my-secret-token")]), &[]).unwrap_err()
    );
    assert!(
        text.contains("STEVEDORE_TOKENS") && !text.contains("my-secret"),
        "{text}"
    );
}

#[test]
fn master_key_from_env_or_file_never_echoed() {
    let key = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";
    let c = Config::load(None, env(&[("STEVEDORE_MASTER_KEY", key)]), &[]).unwrap();
    assert_eq!(c.master_key, Some(MasterKey::from_bytes([42; 32])));
    assert!(!format!("{c:?}").contains(key));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("master.key");
    std::fs::write(&file, format!("{key}\n")).unwrap();
    let path = file.to_str().unwrap();
    let c = Config::load(None, env(&[("STEVEDORE_MASTER_KEY_FILE", path)]), &[]).unwrap();
    assert_eq!(c.master_key, Some(MasterKey::from_bytes([42; 32])));

    for (vars, want) in [
        (
            vec![("STEVEDORE_MASTER_KEY_FILE", "/no/such/key")],
            "`master_key_file`",
        ),
        (vec![("STEVEDORE_MASTER_KEY", "c2hvcnQ=")], "`master_key`"),
        (
            vec![
                ("STEVEDORE_MASTER_KEY", key),
                ("STEVEDORE_MASTER_KEY_FILE", path),
            ],
            "use one of the two",
        ),
    ] {
        let text = format!("{:#}", Config::load(None, env(&vars), &[]).unwrap_err());
        assert!(text.contains(want), "{text}");
        assert!(!text.contains(key) && !text.contains("c2hvcnQ="), "{text}");
    }
    std::fs::write(&file, "not a key").unwrap();
    let text = format!(
        "{:#}",
        Config::load(None, env(&[("STEVEDORE_MASTER_KEY_FILE", path)]), &[]).unwrap_err()
    );
    assert!(
        text.contains("`master_key_file`") && !text.contains("not a key"),
        "{text}"
    );
}

/// Issue #21: a syntax error on a secret's line, or a value of the
/// wrong type, names the key and the line and never repeats the value.
#[test]
fn config_errors_never_echo_a_secret() {
    let key = "S3cr3tKeyMaterialKioqKioqKioqKioqKioqKio=";
    let token = "raw-token-never-echoed-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.toml");
    for (toml, name, line) in [
        (
            format!("listen = \"127.0.0.1:1\"\nmaster_key = \"{key}\n"),
            "`master_key`",
            "line 2",
        ),
        (
            format!("master_key = [\"{key}\"]\n"),
            "`master_key`",
            "line 1",
        ),
        (
            format!("master_key = {{ k = \"{key}\" }}\n"),
            "`master_key`",
            "line 1",
        ),
        (format!("master_key = '{key}\n"), "`master_key`", "line 1"),
        (
            // Unterminated to the end of the file: reported there.
            format!("master_key = \"\"\"{key}\n"),
            "`master_key`",
            "line 2",
        ),
        (
            format!("[[tokens]]\nname = \"ops\"\nrole = \"admin\"\nsha256 = \"{token}\n"),
            "`tokens.sha256`",
            "line 4",
        ),
        (
            format!("[[tokens]]\nname = \"ops\"\nrole = \"admin\"\nsha256 = [\"{token}\"]\n"),
            "`tokens",
            "",
        ),
    ] {
        std::fs::write(&file, &toml).unwrap();
        let text = format!(
            "{:#}",
            Config::load(Some(&file), env(&[]), &[]).unwrap_err()
        );
        assert!(text.contains(name) && text.contains(line), "{toml}: {text}");
        for secret in [key, token, &key[..12], &token[..12]] {
            assert!(!text.contains(secret), "{toml}: {text}");
        }
    }
    // The environment: the value is never repeated either.
    for (var, value) in [
        ("STEVEDORE_MASTER_KEY", format!("\"{key}")),
        ("STEVEDORE_MASTER_KEY", format!("[\"{key}\"]")),
        ("STEVEDORE_TOKENS", format!("ops:admin:{token}")),
    ] {
        let text = format!(
            "{:#}",
            Config::load(None, env(&[(var, &value)]), &[]).unwrap_err()
        );
        assert!(text.contains(var), "{text}");
        assert!(
            !text.contains(&key[..12]) && !text.contains(&token[..12]),
            "{text}"
        );
    }
}

#[test]
fn tls_keys_come_in_pairs() {
    let text = format!(
        "{:#}",
        Config::load(None, env(&[("STEVEDORE_TLS_CERT", "/c.pem")]), &[]).unwrap_err()
    );
    assert!(text.contains("config key `tls_key`"), "{text}");
    let text = format!(
        "{:#}",
        Config::load(None, env(&[("STEVEDORE_TLS_KEY", "/k.pem")]), &[]).unwrap_err()
    );
    assert!(text.contains("config key `tls_cert`"), "{text}");
    let c = Config::load(
        None,
        env(&[
            ("STEVEDORE_TLS_CERT", "/c.pem"),
            ("STEVEDORE_TLS_KEY", "/k.pem"),
            ("STEVEDORE_MAX_SUBSCRIBE_STREAMS", "5"),
            ("STEVEDORE_MAX_PUBLISH_STREAMS", "6"),
            ("STEVEDORE_MAX_STREAMS_PER_CONNECTION", "7"),
        ]),
        &[],
    )
    .unwrap();
    assert!(c.tls_enabled());
    assert_eq!(
        (
            c.max_subscribe_streams,
            c.max_publish_streams,
            c.max_streams_per_connection
        ),
        (5, 6, 7)
    );
}

#[test]
fn durations() {
    assert_eq!(parse_duration("500us"), Ok(Duration::from_micros(500)));
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
    assert!(parse_duration("5").is_err());
    assert!(parse_duration("s").is_err());
}

/// The one list of keys is `Config`'s fields; README's settings table
/// lists exactly those.
#[test]
fn keys_are_the_fields_and_readme_lists_them() {
    let keys = keys();
    assert_eq!(keys.len(), 82, "{keys:?}");
    assert!(keys.contains(&STATE_CACHE_KEY) && !keys.contains(&"state_cache_bytes"));
    let readme = include_str!("../../README.md");
    let table: Vec<&str> = readme
        .lines()
        .skip_while(|l| !l.starts_with("| key | default | meaning |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.strip_prefix("| `")?.split('`').next())
        .collect();
    let mut want: Vec<&str> = keys.to_vec();
    let mut got = table.clone();
    want.sort_unstable();
    got.sort_unstable();
    assert_eq!(got, want, "README's table: {table:?}");
}

/// A file may write numbers, booleans and lists natively (as well as the
/// environment's text forms).
#[test]
fn native_toml_values() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("n.toml");
    std::fs::write(
        &file,
        "max_batch_events = 1_000\nlog_zero_fill = false\ntenant_publish_rate = 2.5\n\
         retry_schedule = [\"0s\", \"1h 30m\"]\nallow_networks = [\"127.0.0.0/8\", \"::1\"]\n\
         tenants = [\"acme\", \"beta\"]\nno_proxy = [\"internal.corp\"]\n\
         max_connections = \"2_000\"\naudit_events = \"1\"\n",
    )
    .unwrap();
    let c = Config::load(Some(&file), env(&[]), &[]).unwrap();
    assert_eq!(c.max_batch_events, 1000);
    assert!(!c.log_zero_fill);
    assert_eq!(c.tenant_publish_rate, 2.5);
    assert_eq!(
        c.retry_schedule,
        [Duration::ZERO, Duration::from_secs(5400)]
    );
    assert_eq!(c.allow_networks.len(), 2);
    assert_eq!(c.tenants, ["acme", "beta"]);
    assert_eq!(c.no_proxy, ["internal.corp"]);
    assert_eq!(c.max_connections, 2000);
    assert!(c.audit_events);
}

/// Errors name their source: the file (with the line), the variable, the
/// flag; nested keys by their path.
#[test]
fn errors_name_the_source_and_the_nested_key() {
    let text = format!(
        "{:#}",
        Config::load(None, env(&[]), &[("listen", "nope".into())]).unwrap_err()
    );
    assert!(
        text.contains("flag --listen") && text.contains("config key `listen`"),
        "{text}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("e.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:1\"\nmax_batch_events = \"x\"\n",
    )
    .unwrap();
    let text = format!(
        "{:#}",
        Config::load(Some(&file), env(&[]), &[]).unwrap_err()
    );
    assert!(
        text.contains("config file")
            && text.contains("config key `max_batch_events` (line 2)")
            && text.contains("\"x\""),
        "{text}"
    );
    std::fs::write(
        &file,
        "[[tokens]]\nname = \"ops\"\nrole = \"admin\"\nsha256 = \"x\"\nextra = 1\n",
    )
    .unwrap();
    let text = format!(
        "{:#}",
        Config::load(Some(&file), env(&[]), &[]).unwrap_err()
    );
    assert!(
        text.contains("`tokens[0].extra`") && text.contains("unknown field `extra`"),
        "{text}"
    );
    // A string where a [[tokens]] table belongs may be a pasted token.
    std::fs::write(&file, "tokens = [\"raw-token-0123456789\"]\n").unwrap();
    let text = format!(
        "{:#}",
        Config::load(Some(&file), env(&[]), &[]).unwrap_err()
    );
    assert!(
        text.contains("`tokens[0]`") && !text.contains("raw-token"),
        "{text}"
    );
}

/// Cluster mode (#15): embedded stays the default; `backend = "jetstream"`
/// needs the cluster's URLs and its monitoring URLs (unless the operator
/// allows an unchecked cluster); the names and replicas are checked.
#[test]
fn cluster_keys_default_to_embedded_and_jetstream_needs_its_urls() {
    let c = Config::load(None, env(&[]), &[]).unwrap();
    assert_eq!(c.backend, Backend::Embedded);
    assert_eq!((c.nats_prefix.as_str(), c.nats_replicas), ("stevedore", 3));
    assert!(c.nats_url.is_empty() && !c.allow_unsynced_cluster);

    let c = Config::load(
        None,
        env(&[
            ("STEVEDORE_BACKEND", "jetstream"),
            (
                "STEVEDORE_NATS_URL",
                "nats://10.0.0.1:4222, tls://n2.example:4222,n3:4222",
            ),
            (
                "STEVEDORE_NATS_MONITOR_URL",
                "http://10.0.0.1:8222/,http://n2.example:8222,http://n3:8222",
            ),
            ("STEVEDORE_NATS_PREFIX", "wh-east_1"),
            ("STEVEDORE_NATS_REPLICAS", "5"),
        ]),
        &[],
    )
    .unwrap();
    assert_eq!(c.backend, Backend::JetStream);
    let urls: Vec<&str> = c.nats_url.iter().map(|u| &**u).collect();
    assert_eq!(
        urls,
        ["nats://10.0.0.1:4222", "tls://n2.example:4222", "n3:4222"]
    );
    assert_eq!(
        c.nats_monitor_url,
        [
            "http://10.0.0.1:8222",
            "http://n2.example:8222",
            "http://n3:8222"
        ]
    );
    assert_eq!((c.nats_prefix.as_str(), c.nats_replicas), ("wh-east_1", 5));

    let jetstream = |extra: &[(&str, &str)]| {
        let mut vars = vec![("STEVEDORE_BACKEND", "jetstream")];
        vars.extend_from_slice(extra);
        Config::load(None, env(&vars), &[]).map_err(|e| format!("{e:#}"))
    };
    let err = jetstream(&[]).unwrap_err();
    assert!(err.contains("`nats_url`: required"), "{err}");
    let url = ("STEVEDORE_NATS_URL", "nats://127.0.0.1:4222");
    let err = jetstream(&[url]).unwrap_err();
    assert!(
        err.contains("`nats_monitor_url`: required") && err.contains("sync_interval: always"),
        "{err}"
    );
    // An unchecked cluster only when the operator says so.
    let c = jetstream(&[url, ("STEVEDORE_ALLOW_UNSYNCED_CLUSTER", "true")]).unwrap();
    assert!(c.allow_unsynced_cluster && c.nats_monitor_url.is_empty());

    for (var, value, key) in [
        ("STEVEDORE_BACKEND", "sled", "`backend`"),
        ("STEVEDORE_NATS_PREFIX", "Upper", "`nats_prefix`"),
        ("STEVEDORE_NATS_PREFIX", "a.b", "`nats_prefix`"),
        ("STEVEDORE_NATS_PREFIX", "", "`nats_prefix`"),
        ("STEVEDORE_NATS_REPLICAS", "0", "`nats_replicas`"),
        ("STEVEDORE_NATS_REPLICAS", "6", "`nats_replicas`"),
        ("STEVEDORE_NATS_URL", "http://127.0.0.1:4222", "`nats_url`"),
        (
            "STEVEDORE_NATS_MONITOR_URL",
            "https://n1:8222",
            "`nats_monitor_url`",
        ),
        (
            "STEVEDORE_NATS_MONITOR_URL",
            "http://n1",
            "`nats_monitor_url`",
        ),
        ("STEVEDORE_NATS_USER", "svc", "`nats_password`"),
        ("STEVEDORE_NATS_PASSWORD", "pw", "`nats_user`"),
        ("STEVEDORE_NATS_TLS_CERT", "/c.pem", "`nats_tls_key`"),
        ("STEVEDORE_NATS_TLS_KEY", "/k.pem", "`nats_tls_cert`"),
        (
            "STEVEDORE_ADVERTISE_URL",
            "10.0.0.5:50051",
            "`advertise_url`",
        ),
        ("STEVEDORE_ADVERTISE_URL", "http://b1", "`advertise_url`"),
        (
            "STEVEDORE_ADVERTISE_URL",
            "http://u:p@b1:1/",
            "`advertise_url`",
        ),
        (
            "STEVEDORE_ADVERTISE_URL",
            "http://b1:1/x",
            "`advertise_url`",
        ),
        // TLS off: other brokers cannot reach an https:// URL.
        (
            "STEVEDORE_ADVERTISE_URL",
            "https://b1:50051",
            "`advertise_url`",
        ),
    ] {
        let err = format!(
            "{:#}",
            Config::load(None, env(&[(var, value)]), &[]).unwrap_err()
        );
        assert!(err.contains(key), "{var}={value}: {err}");
    }
    let err = jetstream(&[
        url,
        ("STEVEDORE_ALLOW_UNSYNCED_CLUSTER", "1"),
        ("STEVEDORE_NATS_TOKEN", "t"),
        ("STEVEDORE_NATS_USER", "u"),
        ("STEVEDORE_NATS_PASSWORD", "p"),
    ])
    .unwrap_err();
    assert!(err.contains("`nats_token`"), "{err}");
}

/// In cluster mode a broker listening on a wildcard address must say
/// where the other brokers reach it: it would advertise `0.0.0.0`, which
/// each of them would take for itself.
#[test]
fn cluster_mode_on_a_wildcard_listen_address_needs_advertise_url() {
    let h = crate::auth::to_hex(&crate::auth::hash_token(b"token-of-sixteen-chars"));
    let tokens = format!("ops:admin:{h}");
    let base = [
        ("STEVEDORE_BACKEND", "jetstream"),
        ("STEVEDORE_NATS_URL", "nats://127.0.0.1:4222"),
        ("STEVEDORE_NATS_MONITOR_URL", "http://127.0.0.1:8222"),
        ("STEVEDORE_TOKENS", tokens.as_str()),
    ];
    for listen in ["0.0.0.0:50051", "[::]:50051"] {
        let mut vars = base.to_vec();
        vars.push(("STEVEDORE_LISTEN", listen));
        let err = format!("{:#}", Config::load(None, env(&vars), &[]).unwrap_err());
        assert!(
            err.contains("`advertise_url`: required") && err.contains(listen),
            "{listen}: {err}"
        );
        vars.push(("STEVEDORE_ADVERTISE_URL", "http://10.0.0.5:50051"));
        Config::load(None, env(&vars), &[]).expect("with advertise_url");
    }
    let mut vars = base.to_vec();
    vars.push(("STEVEDORE_LISTEN", "10.0.0.5:50051"));
    Config::load(None, env(&vars), &[]).expect("a host address advertises itself");
    // Without tokens, serving beyond loopback is what is refused first.
    let mut open = base[..3].to_vec();
    open.push(("STEVEDORE_LISTEN", "0.0.0.0:50051"));
    let err = format!("{:#}", Config::load(None, env(&open), &[]).unwrap_err());
    assert!(err.contains("config key `listen`"), "{err}");
    // The embedded backend has no one to forward to.
    let embedded = [
        ("STEVEDORE_TOKENS", tokens.as_str()),
        ("STEVEDORE_LISTEN", "0.0.0.0:50051"),
    ];
    Config::load(None, env(&embedded), &[]).expect("embedded on 0.0.0.0");
}

#[test]
fn advertise_url_names_where_other_brokers_call() {
    let c = Config::load(
        None,
        env(&[("STEVEDORE_ADVERTISE_URL", "http://broker-1.internal:50051/")]),
        &[],
    )
    .unwrap();
    assert_eq!(
        c.advertise_url.as_deref(),
        Some("http://broker-1.internal:50051")
    );
    assert_eq!(Config::default().advertise_url, None);
}

/// NATS credentials are secrets: a URL's `user:password@`, the password
/// and the token appear in no error and no `Debug` output.
#[test]
fn cluster_credentials_are_never_echoed() {
    let password = "hunter2-never-echoed";
    let err = format!(
        "{:#}",
        Config::load(
            None,
            env(&[(
                "STEVEDORE_NATS_URL",
                &format!("nats://127.0.0.1:4222,ftp://svc:{password}@n2:4222"),
            )]),
            &[],
        )
        .unwrap_err()
    );
    assert!(
        err.contains("`nats_url`") && err.contains("entry 2") && !err.contains(password),
        "{err}"
    );
    let c = Config::load(
        None,
        env(&[
            ("STEVEDORE_BACKEND", "jetstream"),
            (
                "STEVEDORE_NATS_URL",
                &format!("nats://svc:{password}@127.0.0.1:4222"),
            ),
            ("STEVEDORE_NATS_MONITOR_URL", "http://127.0.0.1:8222"),
            ("STEVEDORE_NATS_TOKEN", password),
        ]),
        &[],
    )
    .unwrap();
    assert_eq!(c.nats_token.as_ref().map(|t| t.expose()), Some(password));
    let debug = format!("{c:?}");
    assert!(
        !debug.contains(password) && debug.contains("nats://***@127.0.0.1:4222"),
        "{debug}"
    );
    // A number where the password belongs is named by its type only.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "nats_password = 123456789\n").unwrap();
    let err = format!(
        "{:#}",
        Config::load(Some(&file), env(&[]), &[]).unwrap_err()
    );
    assert!(
        err.contains("`nats_password`") && !err.contains("123456789"),
        "{err}"
    );
}

/// A NATS secret file's key (`var` sets it) with `good` in a file: loaded
/// with its path in `Debug` and errors and its `secret` nowhere, from the
/// environment or the config file. A missing file and each of `bad` (file
/// name, contents) are refused naming the key, the variable and the path,
/// saying `what` was expected, echoing nothing of the contents; beside a
/// token or a user and password it is refused naming both keys. The
/// loaded config.
fn secret_file_key(
    var: &str,
    key: &str,
    good: &str,
    secret: &str,
    bad: &[(&str, &str)],
    what: &str,
) -> Config {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("good");
    std::fs::write(&file, good).unwrap();
    let path = file.to_str().unwrap();
    let c = Config::load(None, env(&[(var, path)]), &[]).unwrap();
    assert_eq!(c.nats_credential_keys(), [key]);
    let debug = format!("{c:?}");
    assert!(debug.contains(path) && !debug.contains(secret), "{debug}");
    let toml = dir.path().join("c.toml");
    std::fs::write(&toml, format!("{key} = {path:?}\n")).unwrap();
    assert_eq!(Config::load(Some(&toml), env(&[]), &[]).unwrap(), c);

    let load = |path: &str, extra: &[(&str, &str)]| {
        let mut vars = vec![(var, path)];
        vars.extend_from_slice(extra);
        format!("{:#}", Config::load(None, env(&vars), &[]).unwrap_err())
    };
    let missing = dir.path().join("missing");
    let err = load(missing.to_str().unwrap(), &[]);
    let named = |err: &str, name: &str| {
        err.contains(&format!("`{key}`")) && err.contains(var) && err.contains(name)
    };
    assert!(
        named(&err, "missing") && err.contains("cannot read"),
        "{err}"
    );
    for (name, contents) in bad {
        let file = dir.path().join(name);
        std::fs::write(&file, contents).unwrap();
        let err = load(file.to_str().unwrap(), &[]);
        assert!(named(&err, name) && err.contains(what), "{name}: {err}");
        for word in contents.split_whitespace().filter(|w| w.len() >= 20) {
            assert!(!err.contains(word), "{name}: {err}");
        }
    }
    let others: [(&[(&str, &str)], &str); 2] = [
        (&[("STEVEDORE_NATS_TOKEN", "t0ken")], "nats_token"),
        (
            &[
                ("STEVEDORE_NATS_USER", "u"),
                ("STEVEDORE_NATS_PASSWORD", "p"),
            ],
            "nats_user/nats_password",
        ),
    ];
    for (vars, other) in others {
        let err = load(path, vars);
        assert!(
            err.contains(&format!("`{other}` and `{key}`")) && !err.contains(secret),
            "{err}"
        );
    }
    c
}

/// `nats_nkey_seed_file` (#15): a user seed is read at load; a file that
/// holds no user seed (an account's seed, a public key, a truncated seed,
/// nothing) is refused.
#[test]
fn cluster_nkey_seed_file_is_read_checked_and_never_echoed() {
    let seed = nkeys::KeyPair::new_user().seed().unwrap();
    let account = nkeys::KeyPair::new_account().seed().unwrap();
    let public = nkeys::KeyPair::new_user().public_key();
    let bad = [
        ("account.nk", account.as_str()),
        ("public.nk", public.as_str()),
        ("truncated.nk", &seed[..seed.len() - 1]),
        ("empty.nk", ""),
    ];
    let c = secret_file_key(
        "STEVEDORE_NATS_NKEY_SEED_FILE",
        "nats_nkey_seed_file",
        &format!("  {seed}\n"),
        &seed,
        &bad,
        "NKey user seed",
    );
    let loaded = c.nats_nkey_seed_file.as_ref().unwrap();
    assert_eq!(loaded.secret().expose(), seed, "the seed, trimmed");
}

/// `nats_creds_file` (#15): a credentials file (user JWT and seed) is read
/// at load as the client reads it; one without the seed, with a bad seed
/// or with nothing is refused. (Its JWT is checked by the nodes: see
/// `cluster_broker_logs_in_with_a_nats_creds_file`.)
#[test]
fn cluster_creds_file_is_read_checked_and_never_echoed() {
    let seed = nkeys::KeyPair::new_user().seed().unwrap();
    let jwt = "eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.eyJzdWIiOiJVIn0.c2lnbmF0dXJl";
    let creds = |seed: &str| {
        format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        )
    };
    let only_jwt = format!("-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n");
    let bad_seed = creds(&seed[..seed.len() - 1]);
    let bad = [
        ("only-jwt.creds", only_jwt.as_str()),
        ("bad-seed.creds", bad_seed.as_str()),
        ("bare-seed.creds", seed.as_str()),
        ("empty.creds", ""),
    ];
    let text = creds(&seed);
    let c = secret_file_key(
        "STEVEDORE_NATS_CREDS_FILE",
        "nats_creds_file",
        &text,
        &seed,
        &bad,
        "not a NATS credentials file",
    );
    let loaded = c.nats_creds_file.as_ref().unwrap();
    assert_eq!(loaded.secret().expose(), text);
    assert!(!format!("{c:?}").contains(jwt));
}
