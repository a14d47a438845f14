//! Security of the daemon, through the real binary against a real Redis: secrets (URL
//! passwords, `password_file` contents, the admin token) never appear in logs (text and
//! JSON), errors, `/metrics` or `/api/routes`; the admin server binds 127.0.0.1 by default
//! and, with a token set, refuses every endpoint but `/health` without it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use common::*;
use polybridge_testkit::{private, shared, skip_reason, BrokerKind, Endpoint};

/// Distinctive secrets: none may ever be printed.
const URL_SECRET: &str = "UrlS3cretQx7Kp";
const FILE_SECRET: &str = "FileS3cretWz4Jm";
const WRONG_SECRET: &str = "WrongS3cretVb8Tn";
const TOKEN_SECRET: &str = "TokenS3cretHd2Lr";

fn redis_skipped() -> bool {
    if let Some(why) = skip_reason(BrokerKind::Redis) {
        eprintln!("{why}");
        return true;
    }
    false
}

/// `GET path` with an optional bearer token: (status, body).
fn get(port: u16, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

fn wait_ready(d: &mut Daemon, port: u16, token: Option<&str>) {
    wait_for("/ready", Duration::from_secs(30), || {
        if let Ok(Some(s)) = d.child.try_wait() {
            panic!("polybridge exited ({s}):\n{}", d.log());
        }
        get(port, "/ready", token).is_some_and(|(s, _)| s == 200)
    });
}

/// Sends one Redis command (RESP) and returns the first reply line.
fn redis_command(port: u16, args: &[&str]) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut cmd = format!("*{}\r\n", args.len());
    for a in args {
        cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(cmd.as_bytes()).unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).trim_end().to_owned()
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

fn assert_absent(what: &str, text: &str) {
    for secret in [URL_SECRET, FILE_SECRET, WRONG_SECRET, TOKEN_SECRET] {
        assert!(
            !text.contains(secret),
            "{what} contains the secret {secret}:\n{text}"
        );
    }
}

/// All of a daemon's output: stderr (logs) and stdout.
fn all_output(d: &Daemon) -> String {
    let mut out = d.log();
    while let Ok(line) = d.stdout.try_recv() {
        out.push('\n');
        out.push_str(&line);
    }
    out
}

fn write_rules(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let file = dir.join(name);
    std::fs::write(&file, text).unwrap();
    file
}

#[test]
fn secrets_never_appear_in_logs_metrics_errors_or_the_api() {
    if redis_skipped() {
        return;
    }
    let mut redis = private(BrokerKind::Redis).unwrap();
    let url = redis.url(Endpoint::Redis).unwrap();
    let port = port_of(&url);
    let add_user = || {
        let r = redis_command(
            port,
            &[
                "ACL",
                "SETUSER",
                "pbsec",
                "on",
                &format!(">{URL_SECRET}"),
                &format!(">{FILE_SECRET}"),
                "~*",
                "&*",
                "+@all",
            ],
        );
        assert_eq!(r, "+OK");
    };
    add_user();
    let dir = temp_dir("secrets");
    let pw_file = dir.join("password");
    std::fs::write(&pw_file, format!("{FILE_SECRET}\n")).unwrap();
    let wrong_file = dir.join("wrong");
    std::fs::write(&wrong_file, format!("{WRONG_SECRET}\n")).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, TOKEN_SECRET).unwrap();
    let host = url.trim_start_matches("redis://");

    for format in ["text", "json"] {
        // A running bridge: one broker with the password in its URL, one with it in a file.
        let admin = free_port();
        let rules = write_rules(
            &dir,
            &format!("run-{format}.yaml"),
            &format!(
                r#"brokers:
  a: {{ url: "redis://pbsec:{URL_SECRET}@{host}" }}
  b: {{ url: "redis://pbsec@{host}", password_file: "{pf}" }}
routes:
  - name: r
    from: {{ broker: a, topic: "sec.in", group: bridge, start: earliest }}
    to: [ {{ broker: b, destination: "sec.out" }} ]
    on_error: {{ max_attempts: 2, initial_backoff: 10ms, max_backoff: 50ms }}
admin: {{ listen: "127.0.0.1:{admin}", token_file: "{tf}" }}
"#,
                pf = pw_file.display(),
                tf = token_file.display(),
            ),
        );
        let mut d = Daemon::start(&rules, &["--log-format", format]);
        wait_ready(&mut d, admin, Some(TOKEN_SECRET));
        let mut seen = String::new();
        for path in ["/metrics", "/api/routes", "/ready", "/health"] {
            let (status, body) = get(admin, path, Some(TOKEN_SECRET)).unwrap();
            assert_eq!(status, 200, "{path}: {body}");
            assert_absent(path, &body);
            seen.push_str(&body);
        }
        // The API shows the brokers, redacted.
        assert!(seen.contains("redis://pbsec:***@"), "{seen}");
        // The broker goes down: connection errors are logged.
        let from = d.log().len();
        redis.kill().unwrap();
        wait_for(
            "an error or warning after the broker went down",
            Duration::from_secs(60),
            || {
                let log = d.log();
                let tail = &log[from..];
                tail.contains("WARN") || tail.contains("ERROR")
            },
        );
        let (status, body) = get(admin, "/metrics", Some(TOKEN_SECRET)).unwrap();
        assert_eq!(status, 200);
        assert_absent("/metrics with the broker down", &body);
        let (_, body) = get(admin, "/api/routes", Some(TOKEN_SECRET)).unwrap();
        assert_absent("/api/routes with the broker down", &body);
        d.signal("TERM");
        d.wait_exit(Duration::from_secs(60));
        let out = all_output(&d);
        assert!(!out.is_empty());
        assert_absent(&format!("the {format} log of a running bridge"), &out);
        redis.restart().unwrap();
        add_user();

        // Wrong passwords, in the URL and in a file: the bridge refuses to start.
        for (i, broker) in [
            format!(r#"{{ url: "redis://pbsec:{WRONG_SECRET}@{host}" }}"#),
            format!(
                r#"{{ url: "redis://pbsec@{host}", password_file: "{}" }}"#,
                wrong_file.display()
            ),
            // Nothing listens there: the broker is down.
            format!(
                r#"{{ url: "redis://pbsec:{WRONG_SECRET}@127.0.0.1:{}" }}"#,
                free_port()
            ),
        ]
        .iter()
        .enumerate()
        {
            let rules = write_rules(
                &dir,
                &format!("wrong-{format}-{i}.yaml"),
                &format!(
                    "brokers:\n  a: {broker}\nroutes:\n  - name: r\n    from: {{ broker: a, topic: \"sec.in\" }}\n    to: [ {{ broker: a, destination: \"sec.out\" }} ]\nadmin: {{ listen: \"127.0.0.1:{}\" }}\n",
                    free_port()
                ),
            );
            let mut d = Daemon::start(&rules, &["--log-format", format]);
            let status = d.wait_exit(Duration::from_secs(120));
            assert!(!status.success(), "{}", d.log());
            let out = all_output(&d);
            assert!(!out.trim().is_empty(), "an error is printed");
            assert_absent(&format!("the {format} error output of case {i}"), &out);
        }
    }

    // Invalid rule files naming a secret: `validate` and `run` errors are redacted.
    let bad = write_rules(
        &dir,
        "bad.yaml",
        &format!(
            "brokers:\n  a: {{ url: \"redis://pbsec:{URL_SECRET}@{host}/notadb?nosuchoption={URL_SECRET}x\" }}\n  b: {{ url: \"redis://pbsec:{FILE_SECRET}@127.0.0.1:notaport\" }}\nroutes:\n  - name: r\n    from: {{ broker: a, topic: \"x\" }}\n    to: [ {{ broker: a, destination: \"y\" }} ]\n"
        ),
    );
    let out = std::process::Command::new(bin())
        .arg("validate")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains(FILE_SECRET),
        "validate printed {FILE_SECRET}:\n{text}"
    );
    assert!(!text.contains(&format!("pbsec:{URL_SECRET}")), "{text}");
}

fn token_rules(url: &str, admin: &str, p: &str) -> String {
    format!(
        "brokers:\n  redis: {{ url: \"{url}\" }}\nroutes:\n  - name: r\n    from: {{ broker: redis, topic: \"{p}.in\", group: bridge, start: earliest }}\n    to: [ {{ broker: redis, destination: \"{p}.out\" }} ]\nadmin: {admin}\n"
    )
}

#[test]
fn with_a_token_every_admin_endpoint_but_health_needs_it() {
    if redis_skipped() {
        return;
    }
    let url = shared(BrokerKind::Redis)
        .unwrap()
        .url(Endpoint::Redis)
        .unwrap();
    let dir = temp_dir("token");
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{TOKEN_SECRET}\n")).unwrap();
    for (i, admin_cfg) in [
        format!("token: \"{TOKEN_SECRET}\""),
        format!("token_file: \"{}\"", token_file.display()),
    ]
    .iter()
    .enumerate()
    {
        let admin = free_port();
        let rules = write_rules(
            &dir,
            &format!("rules{i}.yaml"),
            &token_rules(
                &url,
                &format!("{{ listen: \"127.0.0.1:{admin}\", {admin_cfg} }}"),
                &format!("tok{i}-{}", std::process::id()),
            ),
        );
        let mut d = Daemon::start(&rules, &[]);
        wait_ready(&mut d, admin, Some(TOKEN_SECRET));
        let (status, body) = get(admin, "/health", None).unwrap();
        assert_eq!((status, body.trim()), (200, "ok"));
        for path in ["/metrics", "/ready", "/api/routes"] {
            for wrong in [None, Some("nope"), Some(&TOKEN_SECRET[1..])] {
                let (status, body) = get(admin, path, wrong).unwrap();
                assert_eq!(status, 401, "{path} with {wrong:?}: {body}");
                assert_absent(path, &body);
            }
            let (status, body) = get(admin, path, Some(TOKEN_SECRET)).unwrap();
            assert_eq!(status, 200, "{path}: {body}");
        }
        assert_absent("the log", &d.log());
    }
    // Without a token, everything is open (the server is on loopback only).
    let admin = free_port();
    let rules = write_rules(
        &dir,
        "open.yaml",
        &token_rules(
            &url,
            &format!("{{ listen: \"127.0.0.1:{admin}\" }}"),
            &format!("open-{}", std::process::id()),
        ),
    );
    let mut d = Daemon::start(&rules, &[]);
    wait_ready(&mut d, admin, None);
    for path in ["/metrics", "/ready", "/api/routes", "/health"] {
        assert_eq!(get(admin, path, None).unwrap().0, 200, "{path}");
    }
}

#[test]
fn an_empty_or_doubly_given_admin_token_is_refused_before_start() {
    let dir = temp_dir("badtoken");
    let empty = dir.join("empty");
    std::fs::write(&empty, "\n").unwrap();
    for (i, admin) in [
        "{ token: \"\" }".to_owned(),
        format!("{{ token_file: \"{}\" }}", empty.display()),
        format!("{{ token: x, token_file: \"{}\" }}", empty.display()),
        format!("{{ token_file: \"{}\" }}", dir.join("missing").display()),
    ]
    .iter()
    .enumerate()
    {
        let rules = write_rules(
            &dir,
            &format!("r{i}.yaml"),
            &token_rules("redis://127.0.0.1:1", admin, "x"),
        );
        let out = std::process::Command::new(bin())
            .arg("validate")
            .arg(&rules)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{admin}");
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("token"), "{admin}: {text}");
    }
}

/// The machine's non-loopback IPv4 address, if it has one (no packet is sent).
fn non_loopback_ip() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("10.255.255.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[test]
fn the_admin_server_binds_loopback_by_default() {
    if redis_skipped() {
        return;
    }
    // The default port must be free for this test.
    if std::net::TcpListener::bind("127.0.0.1:9464").is_err() {
        eprintln!("skipped: 127.0.0.1:9464 is in use");
        return;
    }
    let url = shared(BrokerKind::Redis)
        .unwrap()
        .url(Endpoint::Redis)
        .unwrap();
    let dir = temp_dir("default-bind");
    // An `admin:` section without `listen`.
    let text = token_rules(
        &url,
        "{ enabled: true }",
        &format!("bind-{}", std::process::id()),
    );
    let rules = write_rules(&dir, "rules.yaml", &text);
    let mut d = Daemon::start(&rules, &[]);
    wait_ready(&mut d, 9464, None);
    d.wait_log("127.0.0.1:9464", 0, Duration::from_secs(5));
    if let Some(ip) = non_loopback_ip() {
        let other = std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::new(ip, 9464),
            Duration::from_secs(2),
        );
        assert!(
            other.is_err(),
            "the admin server answers on {ip}:9464, not only on loopback"
        );
    } else {
        eprintln!("no non-loopback address: only the loopback bind is checked");
    }
}
