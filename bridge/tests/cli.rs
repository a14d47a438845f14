//! The binary without any broker: the quickstart and `polybridge test`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn quickstart_prints_the_warm_readings_rewritten_and_stops_on_sigterm() {
    let config = root().join("examples/quickstart.yaml");
    let mut d = Daemon::start(&config, &[]);
    // The generator's readings are known in advance: warm ones (>= 25.0) are seq 2, 5, 8, …
    let expected = [
        r#"alerts.garage key=garage unit=C via=warm-rooms {"seq":2,"room":"garage","celsius":28.5}"#,
        r#"alerts.hall key=hall unit=C via=warm-rooms {"seq":5,"room":"hall","celsius":28.5}"#,
        r#"alerts.kitchen key=kitchen unit=C via=warm-rooms {"seq":8,"room":"kitchen","celsius":28.5}"#,
    ];
    for want in expected {
        let line = d
            .stdout
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no line {want:?} on stdout; log:\n{}", d.log()));
        assert_eq!(line, want);
    }
    d.signal("TERM");
    let status = d.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "log:\n{}", d.log());
    assert!(d.log().contains("stopped"), "{}", d.log());
}

#[test]
fn rule_tests_pass_and_fail_with_a_diff_and_exit_codes() {
    let ok = Command::new(bin())
        .arg("test")
        .arg(root().join("examples/quickstart.test.yaml"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&ok.stdout);
    assert_eq!(ok.status.code(), Some(0), "{out}");
    assert!(out.contains("2 passed, 0 failed"), "{out}");

    let dir = temp_dir("ruletest");
    std::fs::copy(
        root().join("examples/quickstart.yaml"),
        dir.join("rules.yaml"),
    )
    .unwrap();
    std::fs::write(
        dir.join("t.yaml"),
        r#"rules: rules.yaml
tests:
  - name: wrong destination and key
    input:
      - { broker: sensors, topic: sensors.hall.temp, key: hall, payload: '{"celsius":30.0}' }
    expect:
      - { broker: console, destination: alerts.kitchen, key: kitchen }
  - name: passes
    input:
      - { broker: sensors, topic: sensors.cellar.temp, payload: '{"celsius":40.0}' }
    expect:
      - broker: console
        destination: alerts.cellar
        key: cellar
        headers: { via: warm-rooms }
        payload: '{"celsius":40.0}'
  - name: filtered message expected
    input:
      - { broker: sensors, topic: sensors.cellar.temp, payload: '{"celsius":1.0}' }
    expect:
      - { broker: console, destination: alerts.cellar }
"#,
    )
    .unwrap();
    let failed = Command::new(bin())
        .arg("test")
        .arg(dir.join("t.yaml"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&failed.stdout);
    assert_eq!(failed.status.code(), Some(1), "{out}");
    assert!(out.contains("FAIL wrong destination and key"), "{out}");
    assert!(
        out.contains("- expected, not published: console: alerts.kitchen key=\"kitchen\""),
        "{out}"
    );
    assert!(
        out.contains("+ published, not expected: console: alerts.hall key=\"hall\" via=\"warm-rooms\" payload=\"{\\\"celsius\\\":30.0}\""),
        "{out}"
    );
    assert!(out.contains("ok   passes"), "{out}");
    assert!(out.contains("FAIL filtered message expected"), "{out}");
    assert!(
        out.contains("expected 1 message(s), routes published 0"),
        "{out}"
    );
    assert!(out.contains("1 passed, 2 failed"), "{out}");

    std::fs::write(
        dir.join("bad.yaml"),
        "rules: rules.yaml\ntests: [ { name: x, inptu: [] } ]\n",
    )
    .unwrap();
    let bad = Command::new(bin())
        .arg("test")
        .arg(dir.join("bad.yaml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{err}");
    assert!(err.contains("inptu"), "{err}");
}

#[test]
fn help_and_version() {
    let v = Command::new(bin()).arg("--version").output().unwrap();
    assert!(v.status.success());
    assert_eq!(
        String::from_utf8_lossy(&v.stdout).trim(),
        format!("polybridge {}", env!("CARGO_PKG_VERSION"))
    );
    let h = Command::new(bin()).arg("--help").output().unwrap();
    assert!(h.status.success());
    let text = String::from_utf8_lossy(&h.stdout);
    for sub in ["run", "validate", "test"] {
        assert!(text.contains(&format!("  {sub} ")), "{text}");
    }
    let r = Command::new(bin())
        .args(["run", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&r.stdout);
    for opt in [
        "--config",
        "--drain-timeout",
        "--log-format",
        "--watch-interval",
    ] {
        assert!(text.contains(opt), "{text}");
    }
}

#[test]
fn run_refuses_an_invalid_rule_file_with_exit_2() {
    let dir = temp_dir("runbad");
    let f = dir.join("bad.yaml");
    std::fs::write(&f, "brokers:\n  a: { url: \"memory://x\" }\nroutes:\n  - name: r\n    from: { broker: b, topic: t }\n    to: [ { broker: a, destination: t } ]\n").unwrap();
    let out = Command::new(bin())
        .arg("run")
        .arg("-c")
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:5:21: unknown broker \"b\"", f.display())),
        "{err}"
    );
}

#[test]
fn rule_tests_take_mqtt_topics_and_real_broker_urls_without_connecting() {
    let dir = temp_dir("ruletest-mqtt");
    std::fs::write(
        dir.join("rules.yaml"),
        r#"brokers:
  sensors: { url: "mqtt://127.0.0.1:1?version=5" }
  events: { url: "nats://127.0.0.1:1" }
routes:
  - name: temps
    from: { broker: sensors, topic: "sensors/+/temp", group: bridge }
    dispatch: first
    to:
      - { broker: events, destination: "hot.{1}", when: "payload.c >= 30.0", key: "{1}" }
      - { broker: events, destination: "temps.{1}", key: "{1}", headers: { set: { from: "{topic}" } } }
"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("t.yaml"),
        r#"rules: rules.yaml
tests:
  - name: first match by temperature
    input:
      - { broker: sensors, topic: sensors/kitchen/temp, payload: '{"c":35.0}' }
      - { broker: sensors, topic: sensors/hall/temp, payload: '{"c":20.0}' }
      - { broker: sensors, topic: other/hall/temp, payload: '{"c":99.0}' }
    expect:
      - { broker: events, destination: hot.kitchen, key: kitchen }
      - { broker: events, destination: temps.hall, key: hall, headers: { from: sensors/hall/temp } }
"#,
    )
    .unwrap();
    let out = Command::new(bin())
        .arg("test")
        .arg(dir.join("t.yaml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("1 passed, 0 failed"), "{text}");
}
