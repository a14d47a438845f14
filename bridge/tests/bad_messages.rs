//! Bad messages through the bridge: oversize payloads, non-UTF-8 payloads, keys and headers
//! on text-only paths, headers a sink may not carry, destinations a template makes invalid.
//! Each one is delivered intact, or dead-lettered with a reason header: never dropped, and
//! the source is never acknowledged without one of the two. Real brokers where the broker
//! is what refuses (NATS, MQTT, Redis), the in-memory broker otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use polybridge::{
    well_known, Broker, Deadline, DeliveryStream, HeaderValue, Message, StartPosition, Subscription,
};
use polybridge_bridge::config::load;
use polybridge_bridge::Bridge;
use polybridge_testkit::{shared, skip_reason, BrokerKind, Endpoint};

fn deadline() -> Deadline {
    Deadline::after(Duration::from_secs(10))
}

fn memory(name: &str) -> Arc<dyn Broker> {
    memory_url(&format!("memory://{name}"))
}

fn memory_url(url: &str) -> Arc<dyn Broker> {
    Arc::new(polybridge::memory::MemoryBroker::connect(&url.parse().unwrap()).unwrap())
}

/// A unique suffix, so runs against a shared broker never see each other's messages.
fn unique(name: &str) -> String {
    format!(
        "{name}{}x{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    )
}

/// The URL of a shared real broker, or `None` (test skipped) when it is unavailable.
fn real(kind: BrokerKind, endpoint: Endpoint) -> Option<String> {
    if let Some(why) = skip_reason(kind) {
        eprintln!("{why}");
        return None;
    }
    Some(shared(kind).unwrap().url(endpoint).unwrap())
}

/// Waits until `cond` holds, failing after 20 s.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Loads `yaml` and starts it on `brokers`, waiting for every route to subscribe.
async fn start(yaml: &str, brokers: &BTreeMap<String, Arc<dyn Broker>>) -> Bridge {
    let cfg = match load(yaml, "test.yaml", &|_| None) {
        Ok(c) => c,
        Err(e) => panic!("config does not load:\n{e}"),
    };
    let bridge = Bridge::start(cfg, brokers, Duration::from_secs(5)).unwrap();
    for route in bridge.routes() {
        eventually("the route to subscribe", || {
            route.metrics.subscribed.load(Ordering::Relaxed)
        })
        .await;
    }
    bridge
}

/// What became of each message id: delivered to the sink, or dead-lettered (with reason).
#[derive(Default)]
struct Outcomes {
    delivered: HashMap<String, Message>,
    dead: HashMap<String, String>,
}

impl Outcomes {
    fn has(&self, id: &str) -> bool {
        self.delivered.contains_key(id) || self.dead.contains_key(id)
    }
}

/// Collects from `out` and `dead` until every id in `ids` has an outcome (20 s at most).
async fn outcomes(
    bridge: &Bridge,
    out: &mut DeliveryStream,
    dead: &mut DeliveryStream,
    ids: &[String],
) -> Outcomes {
    let mut o = Outcomes::default();
    // Longer than the bridge's 30 s publish timeout, so a publish that hangs still ends
    // in a dead letter here.
    let end = tokio::time::Instant::now() + Duration::from_secs(45);
    while !ids.iter().all(|id| o.has(id)) {
        let missing: Vec<_> = ids.iter().filter(|id| !o.has(id)).collect();
        let left = end.saturating_duration_since(tokio::time::Instant::now());
        assert!(
            !left.is_zero(),
            "neither delivered nor dead-lettered (dropped?): {missing:?}; routes: {}; dead-lettered so far: {:?}",
            route_counts(bridge),
            o.dead
        );
        tokio::select! {
            d = out.next() => {
                let d = d.expect("sink stream open").expect("no sink error");
                let message = d.message.clone();
                d.ack().unwrap();
                o.delivered.insert(message.id.clone(), message);
            }
            d = dead.next() => {
                let d = d.expect("dead-letter stream open").expect("no dead-letter error");
                let reason = d
                    .message
                    .headers
                    .get_str(well_known::REJECT_REASON)
                    .unwrap_or_default()
                    .to_owned();
                assert!(!reason.is_empty(), "dead-lettered without a reason: {:?}", d.message);
                let id = d.message.id.clone();
                d.ack().unwrap();
                o.dead.insert(id, reason);
            }
            _ = tokio::time::sleep(left) => {}
        }
    }
    o
}

/// Every route's counters, for failure messages.
fn route_counts(bridge: &Bridge) -> String {
    let r = Ordering::Relaxed;
    bridge
        .routes()
        .iter()
        .map(|route| {
            let m = &route.metrics;
            format!(
                "{}: received={} delivered={} acked={} nacked={} dead_lettered={} retries={} filtered={} in_flight={}",
                route.config.name,
                m.received.load(r),
                m.delivered.load(r),
                m.acked.load(r),
                m.nacked.load(r),
                m.dead_lettered.load(r),
                m.retries.load(r),
                m.filtered.load(r),
                m.in_flight.load(r)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The source is settled for every message: acked (delivered or dead-lettered), and the
/// counts add up, so nothing was acknowledged without one of the two.
async fn all_settled(bridge: &Bridge, delivered: usize, dead: usize) {
    let m = bridge.routes()[0].metrics.clone();
    eventually("every source delivery settled", || {
        m.in_flight.load(Ordering::Relaxed) == 0
            && m.dead_lettered.load(Ordering::Relaxed) == dead as u64
            && m.acked.load(Ordering::Relaxed) == delivered as u64
    })
    .await;
    assert_eq!(
        m.filtered.load(Ordering::Relaxed),
        0,
        "a message was filtered out"
    );
}

/// One route from a memory source (`in`) to a sink, dead-lettering into a memory broker
/// (`dead`) after `max_attempts`, with the test's reader of the sink (`out`, subscribed by
/// the caller before the bridge starts) and of the dead letters.
struct Rig {
    src: Arc<dyn Broker>,
    bridge: Bridge,
    out: DeliveryStream,
    dead: DeliveryStream,
}

impl Rig {
    /// Starts the route `name` to `sink` (named by `sink_url` in the rule file), sending
    /// to the destination options `to` (YAML flow-mapping entries, e.g. `destination: "x"`).
    async fn start(
        name: &str,
        (sink_url, sink): (&str, Arc<dyn Broker>),
        out: DeliveryStream,
        to: &str,
        max_attempts: u32,
    ) -> Rig {
        let src = unique(&format!("{name}-src"));
        let yaml = format!(
            r#"
brokers:
  src: {{ url: "memory://{src}" }}
  out: {{ url: "{sink_url}" }}
  dlq: {{ url: "memory://{src}-dlq" }}
routes:
  - name: {name}
    from: {{ broker: src, topic: "in", group: bridge }}
    to: [ {{ broker: out, {to} }} ]
    on_error: {{ max_attempts: {max_attempts}, initial_backoff: 1ms, max_backoff: 5ms, dead_letter: {{ broker: dlq, destination: "dead" }} }}
"#
        );
        let brokers: BTreeMap<String, Arc<dyn Broker>> = [
            ("src".to_string(), memory(&src)),
            ("out".to_string(), sink),
            ("dlq".to_string(), memory(&format!("{src}-dlq"))),
        ]
        .into();
        let dead = brokers["dlq"]
            .subscribe(Subscription::new("dead".parse().unwrap()))
            .await
            .unwrap();
        let bridge = start(&yaml, &brokers).await;
        Rig {
            src: brokers["src"].clone(),
            bridge,
            out,
            dead,
        }
    }

    /// Publishes `messages` to the source and waits for the outcome of each.
    async fn run(&mut self, messages: &[Message]) -> Outcomes {
        for m in messages {
            self.src.publish("in", m, deadline()).await.unwrap();
        }
        let ids: Vec<String> = messages.iter().map(|m| m.id.clone()).collect();
        outcomes(&self.bridge, &mut self.out, &mut self.dead, &ids).await
    }

    /// Waits until every source delivery is settled, then stops the bridge.
    async fn finish(self, delivered: usize, dead: usize) {
        all_settled(&self.bridge, delivered, dead).await;
        self.bridge.stop().await;
    }
}

#[tokio::test]
async fn oversize_payloads_are_dead_lettered_with_the_reason_on_memory() {
    let small_url = format!("memory://{}?max_payload=16", unique("os-small"));
    let small = memory_url(&small_url);
    let out = small
        .subscribe(Subscription::new("out".parse().unwrap()))
        .await
        .unwrap();
    let mut rig = Rig::start("os", (&small_url, small), out, "destination: out", 3).await;
    let payloads = [("fits", 16usize), ("over", 17), ("huge", 1 << 20)];
    let messages: Vec<Message> = payloads
        .iter()
        .map(|(id, len)| Message::new(vec![b'x'; *len]).with_id(*id))
        .collect();
    let o = rig.run(&messages).await;
    assert_eq!(o.delivered["fits"].payload.len(), 16);
    for id in ["over", "huge"] {
        assert!(
            o.dead[id].contains("exceeds the broker's limit"),
            "{id}: {}",
            o.dead[id]
        );
    }
    // Too large is permanent: one attempt, no retries.
    assert_eq!(
        rig.bridge.routes()[0]
            .metrics
            .retries
            .load(Ordering::Relaxed),
        0
    );
    rig.finish(1, 2).await;
}

#[tokio::test]
async fn oversize_payloads_for_nats_are_dead_lettered_with_the_reason() {
    let Some(url) = real(BrokerKind::Nats, Endpoint::Nats) else {
        return;
    };
    let subject = unique("osn.out");
    let nats = polybridge::connect(&url).await.unwrap();
    let out = nats
        .subscribe(Subscription::new(subject.parse().unwrap()))
        .await
        .unwrap();
    let to = format!("destination: \"{subject}\"");
    let mut rig = Rig::start("osn", (&url, nats), out, &to, 3).await;
    // nats-server's default max_payload is 1 MiB.
    let messages = [
        Message::new(vec![b'n'; 1024]).with_id("small"),
        Message::new(vec![b'n'; 2 << 20]).with_id("over"),
    ];
    let o = rig.run(&messages).await;
    assert_eq!(o.delivered["small"].payload.len(), 1024);
    assert!(!o.delivered.contains_key("over"));
    assert!(
        o.dead["over"].contains("exceeds the broker's limit"),
        "{}",
        o.dead["over"]
    );
    rig.finish(1, 1).await;
}

#[tokio::test]
async fn non_utf8_payloads_keys_and_headers_on_text_only_paths() {
    let src = unique("u8-src");
    // A JSON filter, a JSON envelope, a CloudEvents envelope, and templates taking the key
    // and a header as text.
    let yaml = format!(
        r#"
brokers:
  src: {{ url: "memory://{src}" }}
  dst: {{ url: "memory://{src}-dst" }}
  dlq: {{ url: "memory://{src}-dlq" }}
routes:
  - name: filtered
    from: {{ broker: src, topic: "filtered", group: g1 }}
    filter: "payload.kind == 'x'"
    to: [ {{ broker: dst, destination: "out" }} ]
    on_error: {{ max_attempts: 2, initial_backoff: 1ms, max_backoff: 5ms, dead_letter: {{ broker: dlq, destination: "dead" }} }}
  - name: enveloped
    from: {{ broker: src, topic: "enveloped", group: g2 }}
    to:
      - {{ broker: dst, destination: "out", envelope: json }}
      - {{ broker: dst, destination: "out-ce", envelope: cloudevents }}
    on_error: {{ max_attempts: 2, initial_backoff: 1ms, max_backoff: 5ms, dead_letter: {{ broker: dlq, destination: "dead" }} }}
  - name: templated
    from: {{ broker: src, topic: "templated", group: g3 }}
    to: [ {{ broker: dst, destination: "out", key: "{{key}}-{{header.tenant}}" }} ]
    on_error: {{ max_attempts: 2, initial_backoff: 1ms, max_backoff: 5ms, dead_letter: {{ broker: dlq, destination: "dead" }} }}
"#
    );
    let brokers: BTreeMap<String, Arc<dyn Broker>> = [
        ("src".to_string(), memory(&src)),
        ("dst".to_string(), memory(&format!("{src}-dst"))),
        ("dlq".to_string(), memory(&format!("{src}-dlq"))),
    ]
    .into();
    let mut out = brokers["dst"]
        .subscribe(Subscription::new("out".parse().unwrap()))
        .await
        .unwrap();
    let mut out_ce = brokers["dst"]
        .subscribe(Subscription::new("out-ce".parse().unwrap()))
        .await
        .unwrap();
    let mut dead = brokers["dlq"]
        .subscribe(Subscription::new("dead".parse().unwrap()))
        .await
        .unwrap();
    let bridge = start(&yaml, &brokers).await;
    let binary = vec![0xffu8, 0xfe, 0x00, b'{'];
    let publish = |topic: &'static str, m: Message| {
        let b = brokers["src"].clone();
        async move { b.publish(topic, &m, deadline()).await.unwrap() }
    };
    // The filter reads `payload` as JSON: a binary payload cannot be judged, so it is
    // dead-lettered with the reason, not dropped as "did not match".
    publish(
        "filtered",
        Message::new(r#"{"kind":"x"}"#).with_id("f-json"),
    )
    .await;
    publish("filtered", Message::new(binary.clone()).with_id("f-bin")).await;
    // Envelopes carry binary as base64.
    publish(
        "enveloped",
        Message::new(binary.clone())
            .with_id("e-bin")
            .with_key(vec![0xffu8])
            .with_header("h", vec![0x80u8]),
    )
    .await;
    // `{key}` and `{header.tenant}` must be text.
    publish(
        "templated",
        Message::new("p")
            .with_id("t-ok")
            .with_key("k")
            .with_header("tenant", "t"),
    )
    .await;
    publish(
        "templated",
        Message::new("p")
            .with_id("t-key")
            .with_key(vec![0xffu8])
            .with_header("tenant", "t"),
    )
    .await;
    publish(
        "templated",
        Message::new("p")
            .with_id("t-hdr")
            .with_key("k")
            .with_header("tenant", vec![0xffu8]),
    )
    .await;
    publish(
        "templated",
        Message::new("p")
            .with_id("t-nokey")
            .with_header("tenant", "t"),
    )
    .await;

    let ids: Vec<String> = [
        "f-json", "f-bin", "e-bin", "t-ok", "t-key", "t-hdr", "t-nokey",
    ]
    .map(String::from)
    .to_vec();
    let o = outcomes(&bridge, &mut out, &mut dead, &ids).await;
    assert!(o.delivered.contains_key("f-json"));
    assert!(o.dead["f-bin"].contains("filter"), "{}", o.dead["f-bin"]);

    let env: serde_json::Value = serde_json::from_slice(&o.delivered["e-bin"].payload).unwrap();
    assert_eq!(env["payload"]["base64"], "//4Aew==");
    assert_eq!(env["key"]["base64"], "/w==");
    assert_eq!(env["headers"]["h"][0]["base64"], "gA==");
    let ce = tokio::time::timeout(Duration::from_secs(10), out_ce.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let ce: serde_json::Value = serde_json::from_slice(&ce.message.payload).unwrap();
    assert_eq!(ce["data_base64"], "//4Aew==");

    assert_eq!(o.delivered["t-ok"].key.as_deref(), Some(&b"k-t"[..]));
    assert!(o.dead["t-key"].contains("not UTF-8"), "{}", o.dead["t-key"]);
    assert!(o.dead["t-hdr"].contains("not UTF-8"), "{}", o.dead["t-hdr"]);
    assert!(
        o.dead["t-nokey"].contains("no key"),
        "{}",
        o.dead["t-nokey"]
    );

    let count = |f: fn(&polybridge_bridge::metrics::RouteMetrics) -> u64| -> u64 {
        bridge.routes().iter().map(|r| f(&r.metrics)).sum()
    };
    eventually("every source delivery settled", || {
        count(|m| u64::try_from(m.in_flight.load(Ordering::Relaxed)).unwrap_or(1)) == 0
            && count(|m| m.acked.load(Ordering::Relaxed)) == 3
            && count(|m| m.dead_lettered.load(Ordering::Relaxed)) == 4
    })
    .await;
    assert_eq!(count(|m| m.filtered.load(Ordering::Relaxed)), 0);
    bridge.stop().await;
}

/// Headers that are hard to carry: binary values, CR/LF, separators and non-ASCII in
/// names, an empty value, many headers. A sink either carries each exactly or the message
/// is dead-lettered with the reason.
fn awkward_headers() -> Vec<Message> {
    let mut many = Message::new("many").with_id("h-many");
    for i in 0..100 {
        many = many.with_header(format!("n{i}"), format!("v{i}"));
    }
    vec![
        Message::new("bin")
            .with_id("h-bin")
            .with_header("b", vec![0xffu8, 0x00, 0x80]),
        Message::new("crlf")
            .with_id("h-crlf")
            .with_header("c", "line1\r\nline2"),
        Message::new("space")
            .with_id("h-space")
            .with_header("with space", "v"),
        Message::new("colon")
            .with_id("h-colon")
            .with_header("a:b", "v:w"),
        Message::new("unicode")
            .with_id("h-unicode")
            .with_header("ünï", "välüe ✓"),
        Message::new("empty")
            .with_id("h-empty")
            .with_header("e", ""),
        Message::new("repeat")
            .with_id("h-repeat")
            .with_header("r", "1")
            .with_header("r", "2"),
        many,
    ]
}

async fn headers_through(kind: BrokerKind, endpoint: Endpoint, start_earliest: bool) {
    let Some(url) = real(kind, endpoint) else {
        return;
    };
    let topic = unique("hdout");
    let mut sub = Subscription::new(topic.parse().unwrap());
    if start_earliest {
        sub = sub.start(StartPosition::Earliest);
    }
    // The test reads through its own connection, apart from the bridge's.
    let reader = polybridge::connect(&url).await.unwrap();
    let out = reader.subscribe(sub).await.unwrap();
    let sink = polybridge::connect(&url).await.unwrap();
    let to = format!("destination: \"{topic}\"");
    let name = format!("hd-{}", kind.name());
    let mut rig = Rig::start(&name, (&url, sink), out, &to, 2).await;
    let messages = awkward_headers();
    let o = rig.run(&messages).await;
    for m in &messages {
        if let Some(got) = o.delivered.get(&m.id) {
            assert_eq!(got.payload, m.payload, "{}: {}", kind.name(), m.id);
            for (name, _) in m.headers.iter() {
                let want: Vec<&HeaderValue> = m.headers.get_all(name).collect();
                let have: Vec<&HeaderValue> = got.headers.get_all(name).collect();
                assert_eq!(
                    have,
                    want,
                    "{}: {}: header {name:?} was changed on the way (all headers: {:?})",
                    kind.name(),
                    m.id,
                    got.headers
                );
            }
        } else {
            eprintln!("{}: {} dead-lettered: {}", kind.name(), m.id, o.dead[&m.id]);
        }
    }
    let delivered = o.delivered.len();
    rig.finish(delivered, messages.len() - delivered).await;
}

#[tokio::test]
async fn awkward_headers_into_nats_are_carried_or_dead_lettered() {
    headers_through(BrokerKind::Nats, Endpoint::Nats, false).await;
}

/// MQTT 5 user properties are UTF-8 strings without control characters: Mosquitto drops
/// the connection of a client that sends "line1\r\nline2". The adapter escapes such values
/// (`pb-text-base64`), so every header arrives exactly.
#[tokio::test]
async fn awkward_headers_into_mqtt5_are_carried_or_dead_lettered() {
    headers_through(BrokerKind::Mosquitto, Endpoint::Mqtt, false).await;
}

#[tokio::test]
async fn awkward_headers_into_redis_streams_are_carried_or_dead_lettered() {
    headers_through(BrokerKind::Redis, Endpoint::Redis, true).await;
}

/// A destination template filled from a header: values that make the destination invalid
/// for the sink are dead-lettered with the broker's reason; the valid ones are delivered.
async fn invalid_destinations(
    kind: BrokerKind,
    endpoint: Endpoint,
    prefix: &str,
    valid: &str,
    invalid: &[&str],
) {
    let Some(url) = real(kind, endpoint) else {
        return;
    };
    let sink = polybridge::connect(&url).await.unwrap();
    let good = format!("{prefix}{valid}");
    let out = sink
        .subscribe(Subscription::new(polybridge::TopicPattern::literal(
            &good,
            if prefix.ends_with('/') { '/' } else { '.' },
        )))
        .await
        .unwrap();
    let to = format!("destination: \"{prefix}{{header.room}}\"");
    let name = format!("dst-{}", kind.name());
    let mut rig = Rig::start(&name, (&url, sink), out, &to, 2).await;
    let messages: Vec<Message> = std::iter::once(&valid)
        .chain(invalid)
        .enumerate()
        .map(|(i, room)| {
            Message::new("p")
                .with_id(format!("room{i}"))
                .with_header("room", *room)
        })
        .collect();
    let o = rig.run(&messages).await;
    assert!(
        o.delivered.contains_key("room0"),
        "{}: the valid one",
        kind.name()
    );
    for (i, room) in invalid.iter().enumerate() {
        let id = format!("room{}", i + 1);
        assert!(
            o.dead.contains_key(&id),
            "{}: destination {prefix}{room:?} was not dead-lettered",
            kind.name()
        );
        assert!(!o.delivered.contains_key(&id));
    }
    rig.finish(1, invalid.len()).await;
}

#[tokio::test]
async fn invalid_mqtt_topics_from_a_template_are_dead_lettered() {
    let valid = unique("ok");
    invalid_destinations(
        BrokerKind::Mosquitto,
        Endpoint::Mqtt,
        "pbdst/",
        &valid,
        &["a/+", "#", "+", "nul\0byte"],
    )
    .await;
}

#[tokio::test]
async fn invalid_nats_subjects_from_a_template_are_dead_lettered() {
    let valid = unique("ok");
    invalid_destinations(
        BrokerKind::Nats,
        Endpoint::Nats,
        "pbdst.",
        &valid,
        &[
            "",
            "a b",
            "*",
            ">",
            "a..b",
            "tab\there",
            "a.",
            "cr\r\nPUB x 1",
        ],
    )
    .await;
}

#[tokio::test]
async fn an_empty_destination_from_a_template_is_dead_lettered_on_mqtt() {
    let valid = unique("ok");
    invalid_destinations(BrokerKind::Mosquitto, Endpoint::Mqtt, "", &valid, &[""]).await;
}
