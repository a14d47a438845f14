//! Operations through the real binary against a real broker (Redis streams from the test
//! harness): reload on SIGHUP and on file change without loss, refused invalid reloads,
//! SIGTERM drain, and the admin endpoints.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use polybridge::{Broker, Deadline, Message, StartPosition, Subscription};
use polybridge_testkit::{shared, skip_reason, BrokerKind, Endpoint};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The shared Redis URL, or None when Redis tests are skipped.
fn redis_url() -> Option<String> {
    if let Some(why) = skip_reason(BrokerKind::Redis) {
        eprintln!("{why}");
        return None;
    }
    Some(
        shared(BrokerKind::Redis)
            .unwrap()
            .url(Endpoint::Redis)
            .unwrap(),
    )
}

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", std::process::id())
}

fn route(name: &str, from: &str, to: &str) -> String {
    format!(
        "  - name: {name}\n    from: {{ broker: redis, topic: \"{from}\", group: bridge, start: earliest }}\n    to: [ {{ broker: redis, destination: \"{to}\" }} ]\n    on_error: {{ max_attempts: 3, initial_backoff: 10ms, max_backoff: 100ms }}\n"
    )
}

fn rules(url: &str, admin: u16, routes: &[String]) -> String {
    format!(
        "brokers:\n  redis: {{ url: \"{url}\" }}\nroutes:\n{}admin: {{ listen: \"127.0.0.1:{admin}\" }}\n",
        routes.concat()
    )
}

/// Publishes `prefix-0..n` to `topic`, `every` apart.
async fn publish_many(
    broker: Arc<dyn Broker>,
    topic: String,
    prefix: String,
    n: usize,
    every: Duration,
) {
    for i in 0..n {
        broker
            .publish(
                &topic,
                &Message::new(format!("{prefix}-{i}")).with_id(format!("{prefix}-{i}")),
                Deadline::after(Duration::from_secs(10)),
            )
            .await
            .unwrap();
        if !every.is_zero() {
            tokio::time::sleep(every).await;
        }
    }
}

/// Reads `topics` from the start with a fresh group until `want` distinct payloads were
/// seen (or 30 s passed): the set of payloads.
async fn read_all(
    broker: &Arc<dyn Broker>,
    topics: &[String],
    want: usize,
    group: &str,
) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut streams = Vec::new();
    for t in topics {
        streams.push(
            broker
                .subscribe(
                    Subscription::new(t.parse().unwrap())
                        .group(group)
                        .start(StartPosition::Earliest),
                )
                .await
                .unwrap(),
        );
    }
    let end = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < want && tokio::time::Instant::now() < end {
        for s in &mut streams {
            while let Ok(Some(Ok(d))) =
                tokio::time::timeout(Duration::from_millis(100), s.next()).await
            {
                seen.insert(String::from_utf8_lossy(&d.message.payload).into_owned());
                d.ack().unwrap();
            }
        }
    }
    for s in streams {
        s.close().await;
    }
    seen
}

fn api_routes(port: u16) -> serde_json::Value {
    let (status, body) = http_get(port, "/api/routes").expect("admin server answers");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn instance_of(routes: &serde_json::Value, name: &str) -> Option<u64> {
    routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .map(|r| r["instance"].as_u64().unwrap())
}

fn wait_ready(d: &mut Daemon, port: u16) {
    wait_for("/ready", Duration::from_secs(30), || {
        if let Ok(Some(s)) = d.child.try_wait() {
            panic!("polybridge exited ({s}):\n{}", d.log());
        }
        http_get(port, "/ready").is_some_and(|(s, _)| s == 200)
    });
}

fn reload_without_loss(by_signal: bool) {
    let Some(url) = redis_url() else { return };
    let rt = runtime();
    let p = unique(if by_signal { "hup" } else { "watch" });
    let (in_a, out_a) = (format!("{p}.in.a"), format!("{p}.out.a"));
    let (in_b, out_b, out_c) = (
        format!("{p}.in.b"),
        format!("{p}.out.b"),
        format!("{p}.out.c"),
    );
    let dir = temp_dir(&p);
    let file = dir.join("rules.yaml");
    let admin = free_port();
    std::fs::write(
        &file,
        rules(
            &url,
            admin,
            &[route("a", &in_a, &out_a), route("b", &in_b, &out_b)],
        ),
    )
    .unwrap();
    let extra: &[&str] = if by_signal {
        &["--watch-interval", "0s"]
    } else {
        &["--watch-interval", "200ms"]
    };
    let mut d = Daemon::start(&file, extra);
    wait_ready(&mut d, admin);
    let before = api_routes(admin);
    let a_before = instance_of(&before, "a").unwrap();
    assert!(instance_of(&before, "b").is_some());

    // Messages flow on both routes during the reload.
    let broker = rt.block_on(polybridge::connect(&url)).unwrap();
    let n = 300;
    let pa = rt.spawn(publish_many(
        broker.clone(),
        in_a.clone(),
        "a".into(),
        n,
        Duration::from_millis(5),
    ));
    let pb = rt.spawn(publish_many(
        broker.clone(),
        in_b.clone(),
        "b".into(),
        n,
        Duration::from_millis(5),
    ));
    wait_for("some messages routed", Duration::from_secs(20), || {
        api_routes(admin)["routes"][0]["acked"].as_u64().unwrap() > 20
    });

    // New rules: `a` the same (only moved and commented), `b` removed, `c` new (b's source
    // to another destination).
    let log_mark = d.log().len();
    let new = format!(
        "# reloaded\n{}",
        rules(
            &url,
            admin,
            &[route("c", &in_b, &out_c), route("a", &in_a, &out_a)]
        )
    );
    std::fs::write(&file, new).unwrap();
    if by_signal {
        d.signal("HUP");
    }
    d.wait_log("reloaded", log_mark, Duration::from_secs(30));
    let log = d.log();
    let reload_line = log[log_mark..]
        .lines()
        .find(|l| l.contains("reloaded"))
        .unwrap()
        .to_owned();
    assert!(reload_line.contains(r#"started=["c"]"#), "{reload_line}");
    assert!(reload_line.contains(r#"stopped=["b"]"#), "{reload_line}");
    assert!(reload_line.contains(r#"unchanged=["a"]"#), "{reload_line}");
    let after = api_routes(admin);
    assert_eq!(
        instance_of(&after, "a"),
        Some(a_before),
        "route a was restarted: {after}"
    );
    assert!(instance_of(&after, "b").is_none(), "{after}");
    assert!(instance_of(&after, "c").is_some(), "{after}");

    rt.block_on(async {
        pa.await.unwrap();
        pb.await.unwrap();
    });
    // Nothing lost: every `a` message reached out.a; every `b` message reached out.b (before
    // the reload) or out.c (after).
    let all = |prefix: &str| {
        (0..n)
            .map(|i| format!("{prefix}-{i}"))
            .collect::<BTreeSet<_>>()
    };
    let got_a = rt.block_on(read_all(&broker, &[out_a], n, "check"));
    assert_eq!(got_a, all("a"), "route a lost messages during the reload");
    let got_b = rt.block_on(read_all(&broker, &[out_b, out_c], n, "check"));
    let missing: Vec<_> = all("b").difference(&got_b).cloned().collect();
    assert!(
        missing.is_empty(),
        "lost across the b→c switch: {missing:?}"
    );

    d.signal("TERM");
    assert_eq!(
        d.wait_exit(Duration::from_secs(60)).code(),
        Some(0),
        "{}",
        d.log()
    );
}

#[test]
fn sighup_reload_starts_new_routes_drains_removed_ones_and_loses_nothing() {
    reload_without_loss(true);
}

#[test]
fn a_changed_rule_file_is_reloaded_without_loss() {
    reload_without_loss(false);
}

#[test]
fn an_invalid_reload_keeps_the_running_routes_and_logs_every_error() {
    let Some(url) = redis_url() else { return };
    let rt = runtime();
    let p = unique("badreload");
    let (input, output) = (format!("{p}.in"), format!("{p}.out"));
    let dir = temp_dir(&p);
    let file = dir.join("rules.yaml");
    let admin = free_port();
    std::fs::write(&file, rules(&url, admin, &[route("r", &input, &output)])).unwrap();
    let mut d = Daemon::start(&file, &["--watch-interval", "0s"]);
    wait_ready(&mut d, admin);
    let instance = instance_of(&api_routes(admin), "r").unwrap();

    let mark = d.log().len();
    let bad = format!(
        "brokers:\n  redis: {{ url: \"{url}\" }}\nroutes:\n  - name: r\n    from: {{ broker: rdis, topic: \"{input}\" }}\n    filter: \"(\"\n    to: [ {{ broker: redis, destination: \"{{nope}}\" }} ]\n"
    );
    std::fs::write(&file, bad).unwrap();
    d.signal("HUP");
    d.wait_log("reload refused", mark, Duration::from_secs(30));
    let log = d.log()[mark..].to_owned();
    let f = file.display().to_string();
    assert!(
        log.contains(&format!(
            "{f}:5:21: unknown broker \"rdis\"; did you mean \"redis\"?"
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!("{f}:6:13:")),
        "the CEL error is logged: {log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("{f}:7:")) && l.contains("{nope}")),
        "the template error is logged: {log}"
    );
    assert_eq!(instance_of(&api_routes(admin), "r"), Some(instance));

    // The old route still routes.
    let broker = rt.block_on(polybridge::connect(&url)).unwrap();
    rt.block_on(publish_many(
        broker.clone(),
        input.clone(),
        "x".into(),
        5,
        Duration::ZERO,
    ));
    let got = rt.block_on(read_all(&broker, &[output], 5, "check"));
    assert_eq!(got.len(), 5, "{got:?}");
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(60)).code(), Some(0));
}

fn sigterm_case(name: &str, sink_url: Option<String>, drain: &str, when_ready: impl FnOnce()) {
    let Some(url) = redis_url() else { return };
    let rt = runtime();
    let p = unique(name);
    let (input, output) = (format!("{p}.in"), format!("{p}.out"));
    let dir = temp_dir(&p);
    let file = dir.join("rules.yaml");
    let admin = free_port();
    let sink = sink_url.clone().unwrap_or_else(|| url.clone());
    std::fs::write(
        &file,
        format!(
            "brokers:\n  redis: {{ url: \"{url}\" }}\n  sink: {{ url: \"{sink}\" }}\nroutes:\n  - name: r\n    from: {{ broker: redis, topic: \"{input}\", group: bridge, start: earliest }}\n    max_in_flight: 16\n    to: [ {{ broker: sink, destination: \"{output}\" }} ]\nadmin: {{ listen: \"127.0.0.1:{admin}\" }}\n"
        ),
    )
    .unwrap();
    let broker = rt.block_on(polybridge::connect(&url)).unwrap();
    let n = 2000;
    rt.block_on(publish_many(
        broker.clone(),
        input.clone(),
        "m".into(),
        n,
        Duration::ZERO,
    ));
    let mut d = Daemon::start(&file, &["--drain-timeout", drain]);
    wait_ready(&mut d, admin);
    when_ready();
    if sink_url.is_none() {
        wait_for("some messages routed", Duration::from_secs(30), || {
            api_routes(admin)["routes"][0]["acked"].as_u64().unwrap() > 50
        });
    } else {
        wait_for("deliveries in flight", Duration::from_secs(30), || {
            api_routes(admin)["routes"][0]["in_flight"]
                .as_u64()
                .unwrap()
                > 0
        });
    }
    d.signal("TERM");
    let started = std::time::Instant::now();
    let status = d.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", d.log());
    assert!(d.log().contains("shutting down"), "{}", d.log());
    if sink_url.is_some() {
        assert!(
            d.log().contains("drain timeout: nacking"),
            "the stuck deliveries were nacked at the drain timeout: {}",
            d.log()
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "exits within the drain timeout and a margin"
    );
}

#[test]
fn sigterm_drains_in_flight_exits_0_and_loses_nothing() {
    let Some(url) = redis_url() else { return };
    sigterm_case("term", None, "10s", || {});
    let rt = runtime();
    let p = unique("term");
    let broker = rt
        .block_on(polybridge::connect(&format!("{url}?claim_idle=200ms")))
        .unwrap();
    // Every message is either at the sink or still at the source for the same group.
    let delivered = rt.block_on(read_all(&broker, &[format!("{p}.out")], 2000, "check"));
    let remaining = rt.block_on(read_all(
        &broker,
        &[format!("{p}.in")],
        2000 - delivered.len(),
        "bridge",
    ));
    let all: BTreeSet<String> = delivered.union(&remaining).cloned().collect();
    assert_eq!(
        all.len(),
        2000,
        "lost: {} delivered, {} left at the source",
        delivered.len(),
        remaining.len()
    );
    assert!(!delivered.is_empty());
}

#[test]
fn sigterm_with_a_stuck_sink_nacks_at_the_drain_timeout_exits_0_and_loses_nothing() {
    let Some(url) = redis_url() else { return };
    let sink = polybridge_testkit::private(BrokerKind::Redis).unwrap();
    let sink_url = sink.url(Endpoint::Redis).unwrap();
    // The sink freezes once the bridge is running: publishes hang until the drain timeout.
    let rt = runtime();
    let p = unique("stuck");
    let broker = rt
        .block_on(polybridge::connect(&format!("{url}?claim_idle=200ms")))
        .unwrap();
    let sink_broker = rt.block_on(polybridge::connect(&sink_url)).unwrap();
    sigterm_case("stuck", Some(sink_url), "1s", || sink.pause().unwrap());
    sink.resume().unwrap();
    let delivered = rt.block_on(read_all(&sink_broker, &[format!("{p}.out")], 2000, "check"));
    let remaining = rt.block_on(read_all(
        &broker,
        &[format!("{p}.in")],
        2000 - delivered.len(),
        "bridge",
    ));
    let all: BTreeSet<String> = delivered.union(&remaining).cloned().collect();
    assert_eq!(
        all.len(),
        2000,
        "lost: {} delivered, {} left at the source",
        delivered.len(),
        remaining.len()
    );
}

fn metric(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_start) && l[line_start.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn admin_endpoints_report_routes_brokers_and_readiness() {
    let Some(url) = redis_url() else { return };
    let rt = runtime();
    let p = unique("admin");
    let dir = temp_dir(&p);
    let file = dir.join("rules.yaml");
    let admin = free_port();
    std::fs::write(
        &file,
        format!(
            r#"brokers:
  redis: {{ url: "{url}" }}
routes:
  - name: m
    from: {{ broker: redis, topic: "{p}.in", group: bridge, start: earliest }}
    to: [ {{ broker: redis, destination: "{p}.out" }} ]
  - name: dl
    from: {{ broker: redis, topic: "{p}.json", group: bridge, start: earliest }}
    filter: "payload.celsius > 1.0"
    to: [ {{ broker: redis, destination: "{p}.hot" }} ]
    on_error: {{ max_attempts: 1, dead_letter: {{ broker: redis, destination: "{p}.dead" }} }}
admin: {{ listen: "127.0.0.1:{admin}" }}
"#
        ),
    )
    .unwrap();
    let broker = rt.block_on(polybridge::connect(&url)).unwrap();
    rt.block_on(publish_many(
        broker.clone(),
        format!("{p}.in"),
        "m".into(),
        10,
        Duration::ZERO,
    ));
    // Not JSON: the filter fails at run time, so the message is dead-lettered.
    rt.block_on(publish_many(
        broker.clone(),
        format!("{p}.json"),
        "not json".into(),
        1,
        Duration::ZERO,
    ));
    let mut d = Daemon::start(&file, &[]);
    wait_ready(&mut d, admin);
    wait_for("everything settled", Duration::from_secs(30), || {
        let r = api_routes(admin);
        r["routes"][0]["acked"] == 10 && r["routes"][1]["dead_lettered"] == 1
    });

    let (status, body) = http_get(admin, "/health").unwrap();
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, body) = http_get(admin, "/ready").unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["ready"],
        true
    );

    let (status, m) = http_get(admin, "/metrics").unwrap();
    assert_eq!(status, 200);
    let get = |l: &str| metric(&m, l).unwrap_or_else(|| panic!("no {l} in:\n{m}"));
    assert_eq!(get(r#"polybridge_route_received_total{route="m"}"#), 10.0);
    assert_eq!(get(r#"polybridge_route_delivered_total{route="m"}"#), 10.0);
    assert_eq!(get(r#"polybridge_route_acked_total{route="m"}"#), 10.0);
    assert_eq!(get(r#"polybridge_route_nacked_total{route="m"}"#), 0.0);
    assert_eq!(get(r#"polybridge_route_in_flight{route="m"}"#), 0.0);
    assert_eq!(get(r#"polybridge_route_subscribed{route="m"}"#), 1.0);
    assert_eq!(
        get(r#"polybridge_route_latency_seconds_count{route="m"}"#),
        10.0
    );
    assert_eq!(
        get(r#"polybridge_route_latency_seconds_bucket{route="m",le="+Inf"}"#),
        10.0
    );
    assert!(get(r#"polybridge_route_latency_seconds_sum{route="m"}"#) > 0.0);
    // The route's own step is part of each message's delivery → ack time.
    assert_eq!(
        get(r#"polybridge_route_handoff_seconds_count{route="m"}"#),
        10.0
    );
    let handoff = get(r#"polybridge_route_handoff_seconds_sum{route="m"}"#);
    assert!(
        handoff > 0.0 && handoff <= get(r#"polybridge_route_latency_seconds_sum{route="m"}"#),
        "{m}"
    );
    assert_eq!(
        get(r#"polybridge_route_dead_lettered_total{route="dl"}"#),
        1.0
    );
    assert_eq!(
        get(r#"polybridge_route_errors_total{route="dl",kind="filter"}"#),
        1.0
    );
    assert_eq!(
        get(r#"polybridge_route_errors_total{route="m",kind="connection"}"#),
        0.0
    );
    assert_eq!(
        get(r#"polybridge_broker_connected{broker="redis",scheme="redis"}"#),
        1.0
    );
    assert_eq!(
        get(r#"polybridge_broker_reconnects_total{broker="redis",scheme="redis"}"#),
        0.0
    );
    assert!(
        m.contains("# TYPE polybridge_route_latency_seconds histogram"),
        "{m}"
    );

    let routes = api_routes(admin);
    let r0 = &routes["routes"][0];
    assert_eq!(r0["name"], "m");
    assert_eq!(r0["source"]["topic"], format!("{p}.in"));
    assert_eq!(r0["source"]["group"], "bridge");
    assert_eq!(r0["sinks"][0]["destination"], format!("{p}.out"));
    assert_eq!(r0["received"], 10);
    assert_eq!(r0["delivered"], 10);
    assert_eq!(r0["subscribed"], true);

    // What the status page shows beyond /api/routes: errors by kind, retries, latency,
    // totals and broker connections.
    let (status, body) = http_get(admin, "/api/status").unwrap();
    assert_eq!(status, 200, "{body}");
    let s: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["ready"], true);
    let (m, dl) = (&s["routes"][0], &s["routes"][1]);
    assert_eq!((&m["name"], &dl["name"]), (&"m".into(), &"dl".into()));
    assert_eq!(m["received"], 10);
    assert_eq!(m["errors_total"], 0);
    assert_eq!(m["latency"]["count"], 10);
    assert_eq!(dl["dead_lettered"], 1);
    assert_eq!(dl["errors"], serde_json::json!({ "filter": 1 }));
    assert_eq!(dl["errors_total"], 1);
    assert_eq!(s["totals"]["received"], 11);
    assert_eq!(s["totals"]["dead_lettered"], 1);
    assert_eq!(s["totals"]["errors"], 1);
    assert_eq!(s["totals"]["in_flight"], 0);
    assert_eq!(
        s["brokers"],
        serde_json::json!([{ "name": "redis", "scheme": "redis", "connected": true, "reconnects": 0 }])
    );
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(60)).code(), Some(0));
}

#[test]
fn ready_is_503_naming_the_routes_whose_source_is_not_subscribed() {
    let dir = temp_dir("notready");
    let file = dir.join("rules.yaml");
    let admin = free_port();
    std::fs::write(
        &file,
        format!(
            r#"brokers:
  gen: {{ url: "generate://x?interval=1h" }}
  out: {{ url: "stdout://" }}
routes:
  - name: fine
    from: {{ broker: gen, topic: "sensors.>" }}
    to: [ {{ broker: out, destination: "x" }} ]
  - name: broken
    from: {{ broker: out, topic: "nothing" }}
    to: [ {{ broker: out, destination: "x" }} ]
admin: {{ listen: "127.0.0.1:{admin}" }}
"#
        ),
    )
    .unwrap();
    let mut d = Daemon::start(&file, &[]);
    wait_for("the admin server", Duration::from_secs(30), || {
        http_get(admin, "/health").is_some()
    });
    wait_for(
        "the failed subscription counted",
        Duration::from_secs(30),
        || {
            let (_, m) = http_get(admin, "/metrics").unwrap();
            metric(
                &m,
                r#"polybridge_route_errors_total{route="broken",kind="unsupported"}"#,
            )
            .unwrap_or(0.0)
                >= 1.0
                && metric(&m, r#"polybridge_route_subscribed{route="fine"}"#) == Some(1.0)
        },
    );
    let (status, body) = http_get(admin, "/ready").unwrap();
    assert_eq!(status, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ready"], false);
    assert_eq!(v["routes_not_subscribed"], serde_json::json!(["broken"]));
    d.signal("TERM");
    assert_eq!(
        d.wait_exit(Duration::from_secs(30)).code(),
        Some(0),
        "{}",
        d.log()
    );
}

#[test]
fn a_sink_outage_shows_in_broker_metrics_and_loses_nothing() {
    let Some(url) = redis_url() else { return };
    let mut sink = polybridge_testkit::private(BrokerKind::Redis).unwrap();
    let sink_url = sink.url(Endpoint::Redis).unwrap();
    let rt = runtime();
    let p = unique("outage");
    let (input, output) = (format!("{p}.in"), format!("{p}.out"));
    let dir = temp_dir(&p);
    let file = dir.join("rules.yaml");
    let admin = free_port();
    std::fs::write(
        &file,
        format!(
            "brokers:\n  redis: {{ url: \"{url}\" }}\n  sink: {{ url: \"{sink_url}\" }}\nroutes:\n  - name: r\n    from: {{ broker: redis, topic: \"{input}\", group: bridge, start: earliest }}\n    to: [ {{ broker: sink, destination: \"{output}\" }} ]\n    on_error: {{ max_attempts: 100000, initial_backoff: 20ms, max_backoff: 200ms }}\nadmin: {{ listen: \"127.0.0.1:{admin}\" }}\n"
        ),
    )
    .unwrap();
    let mut d = Daemon::start(&file, &[]);
    wait_ready(&mut d, admin);
    let broker = rt.block_on(polybridge::connect(&url)).unwrap();
    let n = 300;
    let publisher = rt.spawn(publish_many(
        broker.clone(),
        input.clone(),
        "o".into(),
        n,
        Duration::from_millis(10),
    ));
    let sink_metric = |name: &str| {
        let (_, m) = http_get(admin, "/metrics").unwrap();
        metric(&m, &format!("{name}{{broker=\"sink\",scheme=\"redis\"}}"))
    };
    wait_for("messages flowing", Duration::from_secs(30), || {
        api_routes(admin)["routes"][0]["acked"].as_u64().unwrap() > 20
    });
    assert_eq!(sink_metric("polybridge_broker_connected"), Some(1.0));
    sink.stop().unwrap();
    wait_for("the sink reported down", Duration::from_secs(60), || {
        sink_metric("polybridge_broker_connected") == Some(0.0)
    });
    sink.restart().unwrap();
    wait_for("the sink back up", Duration::from_secs(60), || {
        sink_metric("polybridge_broker_connected") == Some(1.0)
            && sink_metric("polybridge_broker_reconnects_total").unwrap_or(0.0) >= 1.0
    });
    rt.block_on(publisher).unwrap();
    let sink_broker = rt.block_on(polybridge::connect(&sink_url)).unwrap();
    let got = rt.block_on(read_all(&sink_broker, &[output], n, "check"));
    let missing: Vec<String> = (0..n)
        .map(|i| format!("o-{i}"))
        .filter(|m| !got.contains(m))
        .collect();
    assert!(missing.is_empty(), "lost across the outage: {missing:?}");
    let (_, m) = http_get(admin, "/metrics").unwrap();
    assert!(
        metric(&m, r#"polybridge_route_retries_total{route="r"}"#).unwrap() > 0.0,
        "{m}"
    );
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(60)).code(), Some(0));
}
