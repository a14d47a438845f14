//! `validate` refuses bad rule files before start, each with `file:line:col: reason`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use polybridge_bridge::config::load;

const BROKERS: &str = "brokers:\n  a: { url: \"memory://va\" }\n  b: { url: \"memory://vb\" }\n";

/// (case name, rule file, expected "line:col: message substring").
fn cases() -> Vec<(&'static str, String, &'static str)> {
    let with_routes = |routes: &str| format!("{BROKERS}routes:\n{routes}");
    vec![
        ("yaml syntax", "brokers: [\n".into(), "2:1: YAML syntax error"),
        ("tab indentation", "brokers:\n\ta: 1\n".into(), "YAML syntax error"),
        ("top level not a mapping", "- a\n- b\n".into(), "1:1: the file must be a mapping"),
        ("duplicate key", format!("{BROKERS}routes: []\nroutes: []\n"), "5:1: duplicate key `routes`"),
        ("no brokers", "routes: []\n".into(), "1:1: the rule file needs `brokers:`"),
        ("no routes", BROKERS.into(), "1:1: the rule file needs `routes:`"),
        ("unknown top-level key", format!("{BROKERS}routes: []\nroutez: []\n"), "5:1: unknown key `routez` in the rule file; did you mean `routes`?"),
        ("brokers not a mapping", "brokers: [a]\nroutes: []\n".into(), "1:10: `brokers` must map names to broker settings"),
        ("broker without url", "brokers:\n  a: { uri: \"memory://x\" }\nroutes: []\n".into(), "2:8: a broker needs `url`"),
        ("broker unknown key", "brokers:\n  a: { url: \"memory://x\", pasword_file: /x }\nroutes: []\n".into(), "unknown key `pasword_file` in a broker; did you mean `password_file`?"),
        ("bad url", "brokers:\n  a: { url: \"not a url\" }\nroutes: []\n".into(), "2:13: broker \"a\": polybridge: invalid configuration: invalid broker URL"),
        ("unknown scheme", "brokers:\n  a: { url: \"carrier://x\" }\nroutes: []\n".into(), "2:13: broker \"a\": polybridge: invalid configuration: no adapter for carrier://"),
        ("unknown adapter option", "brokers:\n  a: { url: \"memory://x?retension=5\" }\nroutes: []\n".into(), "unknown option \"retension\""),
        ("bad option value", "brokers:\n  a: { url: \"memory://x\", options: { max_payload: big } }\nroutes: []\n".into(), "option max_payload=\"big\""),
        ("missing env var", "brokers:\n  a: { url: \"${NOPE_URL}\" }\nroutes: []\n".into(), "2:13: environment variable NOPE_URL is not set"),
        ("bad env syntax", "brokers:\n  a: { url: \"${NOPE\" }\nroutes: []\n".into(), "unclosed `${`"),
        ("password file missing", "brokers:\n  a: { url: \"memory://u@x\", password_file: /nonexistent/pw }\nroutes: []\n".into(), "cannot read password_file \"/nonexistent/pw\""),
        ("routes not a list", format!("{BROKERS}routes: {{ a: 1 }}\n"), "4:9: `routes` must be a list"),
        ("route not a mapping", with_routes("  - just-a-name\n"), "5:5: a route must be a mapping"),
        ("route without name", with_routes("  - from: { broker: a, topic: t }\n    to: [ { broker: b, destination: t } ]\n"), "5:5: a route needs `name`"),
        ("route without from", with_routes("  - name: r\n    to: [ { broker: b, destination: t } ]\n"), "5:5: a route needs `from:`"),
        ("route without to", with_routes("  - name: r\n    from: { broker: a, topic: t }\n"), "5:5: a route needs `to:`"),
        ("empty to", with_routes("  - name: r\n    from: { broker: a, topic: t }\n    to: []\n"), "7:9: `to` must be a non-empty list"),
        ("unknown route key", with_routes("  - name: r\n    form: { broker: a, topic: t }\n    from: { broker: a, topic: t }\n    to: [ { broker: b, destination: t } ]\n"), "6:5: unknown key `form` in a route; did you mean `from`?"),
        ("unknown source broker", with_routes("  - name: r\n    from: { broker: c, topic: t }\n    to: [ { broker: b, destination: t } ]\n"), "6:21: unknown broker \"c\"; defined brokers: a, b"),
        ("source broker typo", "brokers:\n  kafka1: { url: \"memory://k\" }\nroutes:\n  - name: r\n    from: { broker: kafak1, topic: t }\n    to: [ { broker: kafka1, destination: t } ]\n".into(), "did you mean \"kafka1\"?"),
        ("unknown sink broker", with_routes("  - name: r\n    from: { broker: a, topic: t }\n    to: [ { broker: z, destination: t } ]\n"), "7:21: unknown broker \"z\""),
        ("bad pattern", with_routes("  - name: r\n    from: { broker: a, topic: \"a.>.b\" }\n    to: [ { broker: b, destination: t } ]\n"), "6:31: invalid canonical pattern \"a.>.b\": '>' must be the last level"),
        ("empty level pattern", with_routes("  - name: r\n    from: { broker: a, topic: \"a..b\" }\n    to: [ { broker: b, destination: t } ]\n"), "6:31: invalid canonical pattern \"a..b\": empty level"),
        ("bad start", with_routes("  - name: r\n    from: { broker: a, topic: t, start: beginning }\n    to: [ { broker: b, destination: t } ]\n"), "`start` must be `latest`, `earliest` or `position:"),
        ("bad CEL", with_routes("  - name: r\n    from: { broker: a, topic: t }\n    filter: \"payload.x >\"\n    to: [ { broker: b, destination: t } ]\n"), "7:13: invalid CEL expression"),
        ("unknown CEL variable", with_routes("  - name: r\n    from: { broker: a, topic: t }\n    filter: \"body == 'x'\"\n    to: [ { broker: b, destination: t } ]\n"), "unknown variable \"body\""),
        ("bad when", with_routes("  - name: r\n    from: { broker: a, topic: t }\n    to: [ { broker: b, destination: t, when: \"((\" } ]\n"), "invalid CEL expression"),
        ("capture out of range", with_routes("  - name: r\n    from: { broker: a, topic: \"s.*\" }\n    to: [ { broker: b, destination: \"o.{2}\" } ]\n"), "7:37: template \"o.{2}\": {2} refers to capture 2, but the source topic has 1 wildcard"),
        ("capture without wildcard", with_routes("  - name: r\n    from: { broker: a, topic: s }\n    to: [ { broker: b, destination: \"o.{1}\" } ]\n"), "has no wildcards"),
        ("unknown placeholder", with_routes("  - name: r\n    from: { broker: a, topic: t }\n    to: [ { broker: b, destination: \"{tpoic}\" } ]\n"), "unknown placeholder {tpoic}"),
        ("unclosed placeholder", with_routes("  - name: r\n    from: { broker: a, topic: t }\n    to: [ { broker: b, destination: \"a.{key\" } ]\n"), "unclosed '{'"),
        ("bad key template", with_routes("  - name: r\n    from: { broker: a, topic: t }\n    to: [ { broker: b, destination: t, key: \"{nope}\" } ]\n"), "unknown placeholder {nope}"),
        ("bad header set template", with_routes("  - name: r\n    from: { broker: a, topic: t }\n    to: [ { broker: b, destination: t, headers: { set: { h: \"{3}\" } } } ]\n"), "has no wildcards"),
        ("headers drop not a list", with_routes("  - name: r\n    from: { broker: a, topic: t }\n    to: [ { broker: b, destination: t, headers: { drop: x } } ]\n"), "`headers.drop` must be a list"),
        ("unknown headers key", with_routes("  - name: r\n    from: { broker: a, topic: t }\n    to: [ { broker: b, destination: t, headers: { remove: [x] } } ]\n"), "unknown key `remove` in `headers`"),
        ("bad envelope", with_routes("  - name: r\n    from: { broker: a, topic: t }\n    to: [ { broker: b, destination: t, envelope: xml } ]\n"), "`envelope` must be `none`, `json`, `cloudevents` or `cloudevents-binary`"),
        ("bad drop_headers", with_routes("  - name: r\n    from: { broker: a, topic: t }\n    to: [ { broker: b, destination: t, drop_headers: yes } ]\n"), "`drop_headers` must be true or false"),
        ("bad dispatch", with_routes("  - name: r\n    from: { broker: a, topic: t }\n    dispatch: any\n    to: [ { broker: b, destination: t } ]\n"), "7:15: `dispatch` must be `all` (fan-out) or `first`"),
        ("bad ordering", with_routes("  - name: r\n    from: { broker: a, topic: t }\n    ordering: strict\n    to: [ { broker: b, destination: t } ]\n"), "`ordering` must be `none` or `per_key`"),
        ("bad max_in_flight", with_routes("  - name: r\n    from: { broker: a, topic: t }\n    max_in_flight: 0\n    to: [ { broker: b, destination: t } ]\n"), "7:20: `max_in_flight` must be a positive integer"),
        ("bad prefetch", with_routes("  - name: r\n    from: { broker: a, topic: t }\n    prefetch: -1\n    to: [ { broker: b, destination: t } ]\n"), "7:15: `prefetch` must be an integer, 0 or more"),
        ("bad max_batch", with_routes("  - name: r\n    from: { broker: a, topic: t }\n    max_batch: 0\n    to: [ { broker: b, destination: t } ]\n"), "7:16: `max_batch` must be a positive integer"),
        ("bad backoff", with_routes("  - name: r\n    from: { broker: a, topic: t }\n    to: [ { broker: b, destination: t } ]\n    on_error: { initial_backoff: soon }\n"), "invalid duration \"soon\""),
        ("bad max_attempts", with_routes("  - name: r\n    from: { broker: a, topic: t }\n    to: [ { broker: b, destination: t } ]\n    on_error: { max_attempts: -1 }\n"), "`max_attempts` must be a positive integer"),
        ("dead letter unknown broker", with_routes("  - name: r\n    from: { broker: a, topic: t }\n    to: [ { broker: b, destination: t } ]\n    on_error: { dead_letter: { broker: q, destination: d } }\n"), "unknown broker \"q\""),
        ("dead letter without destination", with_routes("  - name: r\n    from: { broker: a, topic: t }\n    to: [ { broker: b, destination: t } ]\n    on_error: { dead_letter: { broker: b } }\n"), "`dead_letter` needs `destination`"),
        ("duplicate route name", with_routes("  - name: r\n    from: { broker: a, topic: t }\n    to: [ { broker: b, destination: t } ]\n  - name: r\n    from: { broker: a, topic: u }\n    to: [ { broker: b, destination: u } ]\n"), "8:5: route name \"r\" is used twice"),
        ("admin bad listen", format!("{BROKERS}routes: []\nadmin: {{ listen: \"localhost\" }}\n"), "`listen` must be IP:PORT"),
        ("header-less sink without envelope", "brokers:\n  a: { url: \"memory://va\" }\n  ps: { url: \"redis://127.0.0.1:6379?mode=pubsub\" }\nroutes:\n  - name: r\n    from: { broker: a, topic: t }\n    to: [ { broker: ps, destination: t } ]\n".into(), "5:5: route \"r\": broker \"ps\" (redis://127.0.0.1:6379?mode=pubsub) cannot carry headers; choose `envelope: json`, `envelope: cloudevents`, or `drop_headers: true`"),
        ("mqtt 3.1.1 sink without envelope", "brokers:\n  a: { url: \"memory://va\" }\n  m3: { url: \"mqtt://127.0.0.1:1883?version=3.1.1\" }\nroutes:\n  - name: r\n    from: { broker: a, topic: t }\n    to: [ { broker: m3, destination: t } ]\n".into(), "cannot carry headers"),
        ("cloudevents binary on a header-less sink", "brokers:\n  a: { url: \"memory://va\" }\n  ps: { url: \"redis://127.0.0.1:6379?mode=pubsub\" }\nroutes:\n  - name: r\n    from: { broker: a, topic: t }\n    to: [ { broker: ps, destination: t, envelope: cloudevents-binary } ]\n".into(), "5:5: route \"r\": broker \"ps\" (redis://127.0.0.1:6379?mode=pubsub) cannot carry headers, so it cannot take CloudEvents binary mode"),
        ("generator bad interval", "brokers:\n  g: { url: \"generate://x?interval=soon\" }\nroutes: []\n".into(), "2:13: broker \"g\""),
        ("stdout bad format", "brokers:\n  o: { url: \"stdout://?format=xml\" }\nroutes: []\n".into(), "expected `text` or `json`"),
        // Types: a value of the wrong shape where a scalar, list or mapping belongs.
        ("url not a scalar", "brokers:\n  a: { url: [memory://x] }\nroutes: []\n".into(), "2:13: "),
        ("broker settings not a mapping", "brokers:\n  a: memory://x\nroutes: []\n".into(), "2:6: "),
        ("route name not a scalar", with_routes("  - name: { r: 1 }\n    from: { broker: a, topic: t }\n    to: [ { broker: b, destination: t } ]\n"), "5:11: "),
        ("topic not a scalar", with_routes("  - name: r\n    from: { broker: a, topic: [t] }\n    to: [ { broker: b, destination: t } ]\n"), "6:31: "),
        ("from not a mapping", with_routes("  - name: r\n    from: a\n    to: [ { broker: b, destination: t } ]\n"), "6:11: "),
        ("to entry not a mapping", with_routes("  - name: r\n    from: { broker: a, topic: t }\n    to: [ b ]\n"), "7:11: "),
        ("max_in_flight not a number", with_routes("  - name: r\n    from: { broker: a, topic: t }\n    max_in_flight: lots\n    to: [ { broker: b, destination: t } ]\n"), "7:20: `max_in_flight` must be a positive integer"),
        ("on_error not a mapping", with_routes("  - name: r\n    from: { broker: a, topic: t }\n    to: [ { broker: b, destination: t } ]\n    on_error: retry\n"), "8:15: "),
        ("headers.set not a mapping", with_routes("  - name: r\n    from: { broker: a, topic: t }\n    to: [ { broker: b, destination: t, headers: { set: [x] } } ]\n"), "`headers.set` must map header names to values"),
        ("headers.rename not a mapping", with_routes("  - name: r\n    from: { broker: a, topic: t }\n    to: [ { broker: b, destination: t, headers: { rename: x } } ]\n"), "`headers.rename` must map old names to new names"),
        ("broker options not a mapping", "brokers:\n  a: { url: \"memory://x\", options: [1] }\nroutes: []\n".into(), "`options` must map option names to values"),
        ("admin not a mapping", format!("{BROKERS}routes: []\nadmin: 9464\n"), "5:8: "),
        // Unknown keys below the top level.
        ("unknown key in from", with_routes("  - name: r\n    from: { broker: a, topic: t, gruop: g }\n    to: [ { broker: b, destination: t } ]\n"), "unknown key `gruop`"),
        ("unknown key in a destination", with_routes("  - name: r\n    from: { broker: a, topic: t }\n    to: [ { broker: b, destination: t, keey: x } ]\n"), "unknown key `keey`"),
        ("unknown key in on_error", with_routes("  - name: r\n    from: { broker: a, topic: t }\n    to: [ { broker: b, destination: t } ]\n    on_error: { max_attempt: 3 }\n"), "unknown key `max_attempt`"),
        ("unknown key in dead_letter", with_routes("  - name: r\n    from: { broker: a, topic: t }\n    to: [ { broker: b, destination: t } ]\n    on_error: { dead_letter: { broker: b, destination: d, topic: d } }\n"), "unknown key `topic`"),
        ("unknown key in admin", format!("{BROKERS}routes: []\nadmin: {{ listne: \"127.0.0.1:1\" }}\n"), "unknown key `listne`"),
        // Missing environment variables wherever `${VAR}` is expanded.
        ("missing env var in a broker option", "brokers:\n  a: { url: \"memory://x\", options: { max_payload: \"${NOPE_MAX}\" } }\nroutes: []\n".into(), "environment variable NOPE_MAX is not set"),
        ("missing env var in password_file", "brokers:\n  a: { url: \"memory://u@x\", password_file: \"${NOPE_PW}\" }\nroutes: []\n".into(), "environment variable NOPE_PW is not set"),
        ("missing env var in a group", with_routes("  - name: r\n    from: { broker: a, topic: t, group: \"${NOPE_GROUP}\" }\n    to: [ { broker: b, destination: t } ]\n"), "environment variable NOPE_GROUP is not set"),
        ("missing env var in admin listen", format!("{BROKERS}routes: []\nadmin: {{ listen: \"${{NOPE_LISTEN}}\" }}\n"), "environment variable NOPE_LISTEN is not set"),
        // Bad URLs and patterns of other shapes.
        ("url with a bad port", "brokers:\n  a: { url: \"nats://127.0.0.1:99999\" }\nroutes: []\n".into(), "2:13: broker \"a\""),
        ("empty url", "brokers:\n  a: { url: \"\" }\nroutes: []\n".into(), "2:13: broker \"a\""),
        ("pattern with a trailing separator", with_routes("  - name: r\n    from: { broker: a, topic: \"a.\" }\n    to: [ { broker: b, destination: t } ]\n"), "6:31: invalid canonical pattern"),
        ("empty pattern", with_routes("  - name: r\n    from: { broker: a, topic: \"\" }\n    to: [ { broker: b, destination: t } ]\n"), "6:31: "),
        // CEL that parses but cannot be a filter, and templates with stray braces.
        ("CEL unterminated string", with_routes("  - name: r\n    from: { broker: a, topic: t }\n    filter: \"topic == 'abc\"\n    to: [ { broker: b, destination: t } ]\n"), "7:13: invalid CEL expression"),
        ("stray closing brace", with_routes("  - name: r\n    from: { broker: a, topic: t }\n    to: [ { broker: b, destination: \"a}b\" } ]\n"), "7:37: "),
        ("empty placeholder", with_routes("  - name: r\n    from: { broker: a, topic: t }\n    to: [ { broker: b, destination: \"a.{}\" } ]\n"), "7:37: "),
        ("capture zero", with_routes("  - name: r\n    from: { broker: a, topic: \"s.*\" }\n    to: [ { broker: b, destination: \"o.{0}\" } ]\n"), "7:37: "),
        ("empty destination", with_routes("  - name: r\n    from: { broker: a, topic: t }\n    to: [ { broker: b, destination: \"\" } ]\n"), "7:37: `destination` cannot be empty"),
        ("empty dead-letter destination", with_routes("  - name: r\n    from: { broker: a, topic: t }\n    to: [ { broker: b, destination: t } ]\n    on_error: { dead_letter: { broker: b, destination: \"\" } }\n"), "8:56: `destination` cannot be empty"),
        // Capability mismatches.
        ("cloudevents binary on an MQTT 3.1.1 sink", "brokers:\n  a: { url: \"memory://va\" }\n  m3: { url: \"mqtt://127.0.0.1:1883?version=3.1.1\" }\nroutes:\n  - name: r\n    from: { broker: a, topic: t }\n    to: [ { broker: m3, destination: t, envelope: cloudevents-binary } ]\n".into(), "cannot carry headers, so it cannot take CloudEvents binary mode"),
        // Found by the config_load fuzz target: a key with a newline made a second line.
        ("unknown key with a newline", format!("{BROKERS}routes: []\n? |\n  rou\n  tes\n: 1\n"), "unknown key `rou\\ntes\\n` in the rule file"),
        ("destination not a scalar", with_routes("  - name: r\n    from: { broker: a, topic: t }\n    to: [ { broker: b, destination: [x] } ]\n"), "`destination` must be a single value"),
    ]
}

#[test]
fn every_bad_rule_file_is_refused_with_position_and_reason() {
    let cases = cases();
    assert!(
        cases.len() >= 50,
        "the table should keep at least 50 cases, has {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for (name, text, expected) in &cases {
        match load(text, "bad.yaml", &|_| None) {
            Ok(_) => failures.push(format!("{name}: accepted, expected {expected:?}")),
            Err(e) => {
                let out = e.to_string();
                let want = format!("bad.yaml:{expected}");
                let matched = if expected.chars().next().is_some_and(|c| c.is_ascii_digit()) {
                    out.lines().any(|l| l.starts_with(&want))
                } else {
                    out.contains(expected)
                };
                if !matched {
                    failures.push(format!(
                        "{name}: expected {want:?} (or containing {expected:?}), got:\n{out}"
                    ));
                }
                for line in out.lines() {
                    let mut parts = line.splitn(4, ':');
                    let (file, l, c) = (parts.next(), parts.next(), parts.next());
                    if file != Some("bad.yaml")
                        || l.and_then(|l| l.parse::<usize>().ok()).is_none()
                        || c.and_then(|c| c.parse::<usize>().ok()).is_none()
                    {
                        failures.push(format!("{name}: line not in file:line:col form: {line}"));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

#[test]
fn the_binary_prints_file_line_col_for_every_case_and_exits_2() {
    let dir = common::temp_dir("validate-bin");
    let cases = cases();
    let mut files = Vec::new();
    for (i, (_, text, _)) in cases.iter().enumerate() {
        let f = dir.join(format!("case-{i:02}.yaml"));
        std::fs::write(&f, text).unwrap();
        files.push(f);
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_polybridge"))
        .arg("validate")
        .args(&files)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let mut failures = Vec::new();
    for ((name, _, expected), f) in cases.iter().zip(&files) {
        let prefix = format!("{}:", f.display());
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with(&prefix)).collect();
        let ok = if expected.chars().next().is_some_and(|c| c.is_ascii_digit()) {
            lines
                .iter()
                .any(|l| l.starts_with(&format!("{prefix}{expected}")))
        } else {
            lines.iter().any(|l| l.contains(expected))
        };
        if !ok {
            failures.push(format!("{name}: expected {expected:?}, got {lines:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let good = dir.join("good.yaml");
    std::fs::write(&good, format!("{BROKERS}routes:\n  - name: r\n    from: {{ broker: a, topic: \"s.*\" }}\n    to: [ {{ broker: b, destination: \"o.{{1}}\" }} ]\n")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_polybridge"))
        .arg("validate")
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (2 brokers, 1 routes)"));
}

#[test]
fn all_problems_are_reported_at_once() {
    let text = format!("{BROKERS}routes:\n  - name: r\n    from: {{ broker: c, topic: t }}\n    filter: \"(\"\n    to: [ {{ broker: z, destination: \"{{x}}\" }} ]\n");
    let e = load(&text, "multi.yaml", &|_| None).unwrap_err();
    assert_eq!(e.diagnostics.len(), 4, "{e}");
}

#[test]
fn env_defaults_and_secrets_from_files() {
    let dir = common::temp_dir("validate-env");
    let pw = dir.join("pw");
    std::fs::write(&pw, "s3cret\n").unwrap();
    let text = format!(
        "brokers:\n  a: {{ url: \"${{A_URL:-memory://env-default}}\" }}\n  b: {{ url: \"memory://user@vb\", password_file: {} }}\nroutes: []\n",
        pw.display()
    );
    let c = load(&text, "ok.yaml", &|_| None).unwrap();
    assert_eq!(c.brokers["a"].url.to_string(), "memory://env-default");
    assert_eq!(c.brokers["b"].url.password().as_deref(), Some("s3cret"));
    assert!(!c.brokers["b"].url.to_string().contains("s3cret"));
    let c = load(&text, "ok.yaml", &|n| {
        (n == "A_URL").then(|| "memory://from-env".to_string())
    })
    .unwrap();
    assert_eq!(c.brokers["a"].url.to_string(), "memory://from-env");
}

#[test]
fn the_source_holds_the_window_plus_the_prefetch() {
    let route = |extra: &str| {
        let text = format!(
            "{BROKERS}routes:\n  - name: r\n    from: {{ broker: a, topic: t }}\n{extra}    to: [ {{ broker: b, destination: t }} ]\n"
        );
        let c = load(&text, "ok.yaml", &|_| None).unwrap();
        let r = &c.routes[0];
        (
            r.max_in_flight,
            r.prefetch,
            r.source.subscription.max_in_flight,
        )
    };
    // Default: one window of prefetch on top of the default window.
    let w = polybridge::DEFAULT_MAX_IN_FLIGHT;
    assert_eq!(route(""), (w, w, 2 * w));
    assert_eq!(route("    max_in_flight: 64\n"), (64, 64, 128));
    assert_eq!(
        route("    max_in_flight: 64\n    prefetch: 16\n"),
        (64, 16, 80)
    );
    // 0 turns it off: the source holds only what the route works on.
    assert_eq!(route("    max_in_flight: 1\n    prefetch: 0\n"), (1, 0, 1));
}

#[test]
fn max_batch_defaults_to_64_and_1_turns_batching_off() {
    let max_batch = |extra: &str| {
        let text = format!(
            "{BROKERS}routes:\n  - name: r\n    from: {{ broker: a, topic: t }}\n{extra}    to: [ {{ broker: b, destination: t }} ]\n"
        );
        load(&text, "ok.yaml", &|_| None).unwrap().routes[0].max_batch
    };
    assert_eq!(max_batch(""), polybridge_bridge::config::DEFAULT_MAX_BATCH);
    assert_eq!(polybridge_bridge::config::DEFAULT_MAX_BATCH, 64);
    assert_eq!(max_batch("    max_batch: 1\n"), 1);
    assert_eq!(max_batch("    max_batch: 500\n"), 500);
}
