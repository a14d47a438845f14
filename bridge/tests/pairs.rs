//! End-to-end routing between real brokers: one test per ordered pair of brokers, named
//! `<source>_to_<sink>`.
//!
//! Each test starts the [`Bridge`] in-process with a rule file that routes one source topic
//! (unique to the test) to one sink destination, mapping the key (`key: "{route}:{key}"`)
//! and the headers (drop, rename, set), subscribes on the sink with the polybridge library,
//! publishes [`N`] messages on the source with the library and checks every message that
//! arrives: payload bytes (not UTF-8, with a NUL), id, mapped key, mapped headers (a text
//! and a binary one), content type, correlation id, timestamp, topic, and that the ids
//! received are exactly the ids sent, each once. The route's counters must agree: every
//! source delivery received, delivered once and acknowledged.
//!
//! Brokers are the harness's shared ones (`polybridge_testkit::shared`), started once per
//! test binary; the tests run in parallel on unique topics, groups and client ids. Every
//! broker is used in an at-least-once mode, chosen in one place, [`endpoint`]:
//!
//! | name | broker | URL options | topic syntax |
//! |---|---|---|---|
//! | `amqp` | RabbitMQ | `exchange=amq.topic` | `a.b.c` |
//! | `kafka` | Tansu, or Kafka with `KAFKA_HOME` | `acks=all` (idempotent producer), short group session for Tansu | `a.b.c` |
//! | `nats` | NATS JetStream | `jetstream://`, stream `E2E` on `e2e.>` | `a.b.c` |
//! | `redis` | Redis streams | `mode=streams` | `a.b.c` (stream key) |
//! | `mqtt` | Mosquitto | `version=5&qos=1&client_id=…` (persistent session) | `a/b/c` |
//! | `stomp` | ActiveMQ | `flavor=activemq` (groups on virtual topics) | `a.b.c` |
//!
//! The six brokers all carry keys and headers (MQTT through version 5 user properties), so
//! their 30 routes need no envelope. Four more tests take MQTT 3.1.1, which has no
//! properties: with the adapter's `format=envelope` as source and sink, and with raw
//! payloads as a sink behind the route's `envelope: json` (opened by the test before it
//! checks). The assertions follow each end's [`Capabilities`]: what a pair cannot carry is
//! not expected, and what it does promise is still checked.
//!
//! Adding a broker is one [`Kind`] variant, one row in [`endpoint`] and its lines in the
//! `pairs!` table.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use polybridge::{
    BrokerUrl, Capabilities, Deadline, DeliveryGuarantee, DeliveryStream, HeaderSupport, Message,
    Subscription, TopicPattern,
};
use polybridge_bridge::config::{load, syntax_for};
use polybridge_bridge::{connect_brokers, Bridge};
use polybridge_testkit::{url_with, BrokerKind, Endpoint};

/// Messages per pair.
const N: usize = 50;

/// How long the whole exchange of one pair may take once the bridge runs.
const EXCHANGE_DEADLINE: Duration = Duration::from_secs(60);

/// The brokers of the pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Amqp,
    Kafka,
    Nats,
    Redis,
    Mqtt,
    Stomp,
    /// Mosquitto over MQTT 3.1.1 with the adapter's envelope (`format=envelope`): the whole
    /// message travels as the polybridge JSON envelope in the payload.
    Mqtt311Envelope,
    /// Mosquitto over MQTT 3.1.1, raw payloads: no headers, no key. As a sink the route
    /// wraps messages in its own `envelope: json`.
    Mqtt311Raw,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Amqp => "amqp",
            Kind::Kafka => "kafka",
            Kind::Nats => "nats",
            Kind::Redis => "redis",
            Kind::Mqtt => "mqtt",
            Kind::Stomp => "stomp",
            Kind::Mqtt311Envelope => "mqtt311envelope",
            Kind::Mqtt311Raw => "mqtt311raw",
        }
    }

    /// The harness broker and endpoint behind this kind.
    fn harness(self) -> (BrokerKind, Endpoint) {
        match self {
            Kind::Amqp => (BrokerKind::RabbitMq, Endpoint::Amqp),
            Kind::Kafka => (BrokerKind::Kafka, Endpoint::Kafka),
            Kind::Nats => (BrokerKind::Nats, Endpoint::Nats),
            Kind::Redis => (BrokerKind::Redis, Endpoint::Redis),
            Kind::Mqtt | Kind::Mqtt311Envelope | Kind::Mqtt311Raw => {
                (BrokerKind::Mosquitto, Endpoint::Mqtt)
            }
            Kind::Stomp => (BrokerKind::ActiveMq, Endpoint::Stomp),
        }
    }
}

/// How a test reaches one broker.
struct Ep {
    /// The URL, with the at-least-once options.
    url: String,
    /// Topic level separator.
    sep: char,
}

impl Ep {
    /// A topic from levels, in this broker's syntax.
    fn topic(&self, levels: &[&str]) -> String {
        levels.join(&self.sep.to_string())
    }
}

/// The one table of per-broker settings. `client` names the connection (MQTT client ids
/// must differ between the bridge and the test's own client); `None` when the broker is
/// opted out by `POLYBRIDGE_SKIP_BROKERS`.
fn endpoint(kind: Kind, client: &str) -> Option<Ep> {
    let (broker, ep) = kind.harness();
    if let Some(reason) = polybridge_testkit::skip_reason(broker) {
        eprintln!("{reason}");
        return None;
    }
    let base = polybridge_testkit::shared(broker)
        .unwrap_or_else(|e| panic!("start {}: {e}", broker.name()))
        .url(ep)
        .unwrap_or_else(|| panic!("{} serves no {ep:?} endpoint", broker.name()));
    let (url, sep) = match kind {
        // Topic exchange: every plain destination is a routing key on amq.topic; group
        // queues are durable, publishes confirmed and mandatory.
        Kind::Amqp => (url_with(&base, "exchange=amq.topic"), '.'),
        // Idempotent producer with acks=all (the defaults), commits after acks; topics are
        // auto-created by the first subscription. Tansu joins a group only after about half
        // the session timeout, hence the short one.
        Kind::Kafka => (
            url_with(
                &base,
                "acks=all&session_timeout=3s&heartbeat_interval=500ms&commit_interval=100ms",
            ),
            '.',
        ),
        // JetStream (not core NATS, which is at most once): one memory stream for every
        // subject of these tests, created on first use (see `prepare`).
        Kind::Nats => (
            url_with(
                &base.replacen("nats://", "jetstream://", 1),
                "stream=E2E&create_stream=true&stream_subjects=e2e.%3E&storage=memory",
            ),
            '.',
        ),
        // Streams with consumer groups (pub/sub would be at most once).
        Kind::Redis => (url_with(&base, "mode=streams"), '.'),
        // MQTT 5 (user properties carry headers and the key), QoS 1, persistent sessions.
        Kind::Mqtt => (
            url_with(&base, &format!("version=5&qos=1&client_id=e2e-{client}")),
            '/',
        ),
        // MQTT 3.1.1 has no properties: the adapter's envelope carries the message whole.
        Kind::Mqtt311Envelope => (
            url_with(
                &base,
                &format!("version=3.1.1&format=envelope&qos=1&client_id=e2e-{client}"),
            ),
            '/',
        ),
        // MQTT 3.1.1 with raw payloads: only the payload travels (Capabilities::headers is
        // None, keys false).
        Kind::Mqtt311Raw => (
            url_with(
                &base,
                &format!("version=3.1.1&qos=1&client_id=e2e-{client}"),
            ),
            '/',
        ),
        // ActiveMQ: plain topics are virtual topics, so groups are queues that keep
        // messages; SEND is persistent and confirmed by RECEIPT.
        Kind::Stomp => (url_with(&base, "flavor=activemq"), '.'),
    };
    Some(Ep { url, sep })
}

/// One-time setup a broker needs before tests use it concurrently.
async fn prepare(kind: Kind, ep: &Ep) {
    if kind == Kind::Nats {
        // The stream is created by the first connection: do it once, so that parallel
        // tests do not race creating it.
        static STREAM: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
        STREAM
            .get_or_init(|| async {
                let b = polybridge::connect(&ep.url)
                    .await
                    .expect("create stream E2E");
                b.close(Deadline::after(Duration::from_secs(5))).await.ok();
            })
            .await;
    }
}

fn caps(url: &str) -> Capabilities {
    polybridge::capabilities_for(&BrokerUrl::parse(url).unwrap()).unwrap()
}

/// The payload of message `i`: not UTF-8, with a NUL, unique per message.
fn payload(pair: &str, i: usize) -> Vec<u8> {
    let mut p = vec![0xff, 0xfe, 0x00, 0x80, 0xc3, 0x28];
    p.extend_from_slice(format!("{pair} #{i}").as_bytes());
    p.push(u8::try_from(i % 256).unwrap());
    p
}

fn binary_header(i: usize) -> Vec<u8> {
    vec![0x00, 0xff, 0x7f, u8::try_from(i % 256).unwrap()]
}

/// Whole seconds, so that brokers with second precision (AMQP) keep it exactly.
fn timestamp(i: usize) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_780_000_000 + i as u64)
}

async fn next(
    stream: &mut DeliveryStream,
    until: tokio::time::Instant,
    what: &str,
) -> polybridge::Delivery {
    match tokio::time::timeout_at(until, stream.next()).await {
        Ok(Some(Ok(d))) => d,
        Ok(Some(Err(e))) => panic!("{what}: the sink subscription failed: {e}"),
        Ok(None) => panic!("{what}: the sink subscription ended"),
        Err(_) => panic!("{what}: timed out after {EXCHANGE_DEADLINE:?}"),
    }
}

/// Waits until `cond` holds, failing after 30 s.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let end = tokio::time::Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The message inside the bridge's `envelope: json` (docs/rules.md: `{"id", "topic", "key",
/// "content_type", "timestamp", "reply_to", "correlation_id", "headers": {name: [values]},
/// "payload"}`, binary values as `{"base64": …}`), after checking its source topic.
fn open_json_envelope(outer: &Message, pair: &str, source_topic: &str) -> Message {
    use base64::Engine;
    use serde_json::Value;
    let v: Value = serde_json::from_slice(&outer.payload)
        .unwrap_or_else(|e| panic!("{pair}: the sink payload is not a JSON envelope: {e}"));
    assert_eq!(v["topic"], source_topic, "{pair}: envelope topic in {v}");
    let bytes = |v: &Value| -> Vec<u8> {
        match v {
            Value::String(s) => s.as_bytes().to_vec(),
            Value::Object(o) => base64::engine::general_purpose::STANDARD
                .decode(o["base64"].as_str().expect("base64 text"))
                .expect("valid base64"),
            other => panic!("{pair}: not an envelope value: {other}"),
        }
    };
    let text = |v: &Value| v.as_str().map(str::to_owned);
    let mut m = Message::new(bytes(&v["payload"])).with_id(v["id"].as_str().expect("envelope id"));
    m.key = (!v["key"].is_null()).then(|| bytes(&v["key"]).into());
    m.content_type = text(&v["content_type"]);
    m.correlation_id = text(&v["correlation_id"]);
    m.reply_to = text(&v["reply_to"]);
    m.timestamp = v["timestamp"]
        .as_str()
        .map(|t| humantime::parse_rfc3339(t).expect("RFC 3339 timestamp"));
    for (name, values) in v["headers"].as_object().expect("envelope headers") {
        for value in values.as_array().expect("header values") {
            match value {
                Value::String(s) => m.headers.append(name.clone(), s.clone()),
                other => m.headers.append(name.clone(), bytes(other)),
            }
        }
    }
    m
}

/// Routes `N` messages from `source` to `sink` through an in-process bridge and checks them.
async fn pair(source: Kind, sink: Kind) {
    let pair = format!("{}_to_{}", source.name(), sink.name());
    // Unique per run, so that external brokers with leftovers of earlier runs (durable
    // queues, consumers, streams) do not interfere.
    let run = format!("{pair}_{}", std::process::id());
    let (Some(src_bridge), Some(dst_bridge), Some(src_test), Some(dst_test)) = (
        endpoint(source, &format!("{run}-bridge")),
        endpoint(sink, &format!("{run}-bridge")),
        endpoint(source, &format!("{run}-pub")),
        endpoint(sink, &format!("{run}-sub")),
    ) else {
        return;
    };
    prepare(source, &src_test).await;
    prepare(sink, &dst_test).await;
    let src_caps = caps(&src_bridge.url);
    let dst_caps = caps(&dst_bridge.url);

    let in_levels = ["e2e", run.as_str(), "in"];
    let out_levels = ["e2e", run.as_str(), "out"];
    let src_topic = src_test.topic(&in_levels);
    let dst_topic = dst_test.topic(&out_levels);

    // Every end in at-least-once mode, with confirmed publishes: the point of these tests.
    for (end, c) in [("source", &src_caps), ("sink", &dst_caps)] {
        assert_eq!(
            c.delivery,
            DeliveryGuarantee::AtLeastOnce,
            "{pair}: the {end} is not at least once"
        );
        assert!(
            c.confirmed_publish,
            "{pair}: the {end} does not confirm publishes"
        );
    }

    // A sink that cannot carry headers (MQTT 3.1.1 raw) gets the route's JSON envelope
    // (the bridge refuses the route otherwise): id, key, headers and metadata then travel
    // inside the payload, and the test opens the envelope before checking.
    let route_envelope = dst_caps.headers == HeaderSupport::None;
    let envelope_rule = if route_envelope { "envelope: json" } else { "" };
    // What the pair can carry end to end: keys, headers and request/reply metadata must
    // travel on both legs (through the envelope on the sink leg where there is one).
    let keys = src_caps.keys && (dst_caps.keys || route_envelope);
    let source_headers = src_caps.headers != HeaderSupport::None;
    let request_reply = src_caps.request_reply && (dst_caps.request_reply || route_envelope);
    // `{key}` fails a message without a key: only map it where the source carries keys.
    let key_rule = if src_caps.keys {
        "key: \"{route}:{key}\""
    } else {
        ""
    };

    // The sink subscription exists before anything is published.
    let dst_client = polybridge::connect(&dst_test.url)
        .await
        .unwrap_or_else(|e| panic!("{pair}: connect the sink client: {e}"));
    let out_pattern =
        TopicPattern::parse_as(syntax_for(dst_client.url().scheme()), &dst_topic).unwrap();
    let mut out = dst_client
        .subscribe(Subscription::new(out_pattern).group(format!("check_{run}")))
        .await
        .unwrap_or_else(|e| panic!("{pair}: subscribe on the sink: {e}"));

    let yaml = format!(
        r#"
brokers:
  src: {{ url: "{src_url}" }}
  dst: {{ url: "{dst_url}" }}
routes:
  - name: {pair}
    from: {{ broker: src, topic: "{src_topic}", group: "bridge_{run}" }}
    to:
      - broker: dst
        destination: "{dst_bridge_topic}"
        {key_rule}
        {envelope_rule}
        headers:
          drop: [drop-me]
          rename: {{ unit: x-unit }}
          set: {{ via: "{{route}}", from-topic: "{{topic}}" }}
    on_error: {{ max_attempts: 5, initial_backoff: 50ms, max_backoff: 1s }}
admin: {{ enabled: false }}
"#,
        src_url = src_bridge.url,
        dst_url = dst_bridge.url,
        src_topic = src_bridge.topic(&in_levels),
        dst_bridge_topic = dst_bridge.topic(&out_levels),
    );
    let config = match load(&yaml, &format!("{pair}.yaml"), &|_| None) {
        Ok(c) => c,
        Err(e) => panic!("{pair}: the rule file does not load:\n{e}\n{yaml}"),
    };
    let brokers = connect_brokers(&config)
        .await
        .unwrap_or_else(|e| panic!("{pair}: the bridge cannot connect: {e}"));
    let bridge = Bridge::start(config, &brokers, Duration::from_secs(10)).unwrap();
    let metrics = bridge.routes()[0].metrics.clone();
    eventually(&format!("{pair}: the route to subscribe"), || {
        metrics.subscribed.load(Ordering::Relaxed)
    })
    .await;

    // Publish on the source with the library.
    let src_client = polybridge::connect(&src_test.url)
        .await
        .unwrap_or_else(|e| panic!("{pair}: connect the source client: {e}"));
    let mut sent = BTreeSet::new();
    for i in 0..N {
        let id = format!("{run}-{i}");
        let mut m = Message::new(payload(&pair, i))
            .with_id(id.clone())
            .with_key(format!("k{}", i % 7))
            .with_content_type("application/x-e2e")
            .with_correlation_id(format!("corr-{i}"))
            .with_header("n", i.to_string())
            .with_header("unit", "C")
            .with_header("drop-me", "secret")
            .with_header("bin", binary_header(i));
        m.timestamp = Some(timestamp(i));
        src_client
            .publish(&src_topic, &m, Deadline::after(Duration::from_secs(20)))
            .await
            .unwrap_or_else(|e| panic!("{pair}: publish #{i} on the source: {e}"));
        sent.insert(id);
    }

    // Receive on the sink and check every message.
    let until = tokio::time::Instant::now() + EXCHANGE_DEADLINE;
    let mut received = BTreeMap::new();
    while received.len() < N {
        let what = format!("{pair}: message {} of {N}", received.len() + 1);
        let d = next(&mut out, until, &what).await;
        assert_eq!(d.info.topic, dst_topic, "{pair}: topic of {}", d.message.id);
        let opened;
        let m = if route_envelope {
            opened = open_json_envelope(&d.message, &pair, &src_topic);
            &opened
        } else {
            &d.message
        };
        let i: usize =
            m.id.strip_prefix(&format!("{run}-"))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{pair}: unexpected message id {:?}", m.id));
        assert!(
            received.insert(m.id.clone(), i).is_none(),
            "{pair}: message {:?} delivered twice",
            m.id
        );
        assert_eq!(
            &m.payload[..],
            &payload(&pair, i)[..],
            "{pair}: payload of {}",
            m.id
        );
        assert_eq!(
            m.content_type.as_deref(),
            Some("application/x-e2e"),
            "{pair}: content type of {}",
            m.id
        );
        assert_eq!(
            m.timestamp,
            Some(timestamp(i)),
            "{pair}: timestamp of {}",
            m.id
        );
        if keys {
            let want = format!("{pair}:k{}", i % 7);
            assert_eq!(
                m.key.as_deref(),
                Some(want.as_bytes()),
                "{pair}: key of {} ({:?}, want {want:?})",
                m.id,
                m.key.as_deref().map(String::from_utf8_lossy)
            );
        } else {
            // Promised: no key appears from nowhere.
            assert_eq!(m.key, None, "{pair}: key of {}", m.id);
        }
        if request_reply {
            let want = format!("corr-{i}");
            assert_eq!(
                m.correlation_id.as_deref(),
                Some(want.as_str()),
                "{pair}: correlation id of {}",
                m.id
            );
        }
        // The sink leg always carries headers (natively or in the route's envelope): what
        // the route sets, drops and renames away is checked for every pair.
        let h = &m.headers;
        assert_eq!(
            h.get_str("via"),
            Some(pair.as_str()),
            "{pair}: set header of {}",
            m.id
        );
        assert_eq!(
            h.get_str("from-topic"),
            Some(src_topic.as_str()),
            "{pair}: templated header of {}",
            m.id
        );
        assert_eq!(
            h.get("unit"),
            None,
            "{pair}: header renamed away, in {}",
            m.id
        );
        assert_eq!(
            h.get("drop-me"),
            None,
            "{pair}: dropped header, in {}",
            m.id
        );
        // The headers published on the source arrive where the source carries them (a
        // header-less source, e.g. MQTT 3.1.1 raw, loses them on the first leg).
        if source_headers {
            let n = i.to_string();
            assert_eq!(
                h.get_str("n"),
                Some(n.as_str()),
                "{pair}: header n of {}",
                m.id
            );
            assert_eq!(
                h.get_str("x-unit"),
                Some("C"),
                "{pair}: renamed header of {}",
                m.id
            );
            // Binary values travel as they are (HeaderSupport::Binary) or with the adapter's
            // documented encoding, decoded on receipt (HeaderSupport::Text).
            let bin = h
                .get("bin")
                .unwrap_or_else(|| panic!("{pair}: binary header missing in {}: {h:?}", m.id));
            assert!(
                bin.is_binary(),
                "{pair}: header bin of {} is not binary: {bin:?}",
                m.id
            );
            assert_eq!(
                bin.as_bytes(),
                &binary_header(i)[..],
                "{pair}: binary header of {}",
                m.id
            );
            assert_eq!(
                h.get_all("x-unit").count(),
                1,
                "{pair}: x-unit values in {}",
                m.id
            );
        }
        d.ack()
            .unwrap_or_else(|e| panic!("{pair}: ack on the sink: {e}"));
    }
    let ids: BTreeSet<String> = received.keys().cloned().collect();
    assert_eq!(ids, sent, "{pair}: ids received differ from ids sent");

    // The route: every source delivery received once, delivered once, acknowledged.
    eventually(
        &format!("{pair}: every source delivery acknowledged"),
        || metrics.acked.load(Ordering::Relaxed) >= N as u64,
    )
    .await;
    assert_eq!(
        metrics.received.load(Ordering::Relaxed),
        N as u64,
        "{pair}: received"
    );
    assert_eq!(
        metrics.delivered.load(Ordering::Relaxed),
        N as u64,
        "{pair}: delivered"
    );
    assert_eq!(
        metrics.acked.load(Ordering::Relaxed),
        N as u64,
        "{pair}: acked"
    );
    assert_eq!(metrics.nacked.load(Ordering::Relaxed), 0, "{pair}: nacked");
    assert_eq!(
        metrics.dead_lettered.load(Ordering::Relaxed),
        0,
        "{pair}: dead-lettered"
    );

    bridge.stop().await;
    out.close().await;
    let d = Deadline::after(Duration::from_secs(10));
    src_client.close(d).await.ok();
    dst_client.close(d).await.ok();
    for b in brokers.values() {
        b.close(d).await.ok();
    }
}

/// One test per ordered pair: `name: Source -> Sink;`.
macro_rules! pairs {
    ($($name:ident: $src:ident -> $dst:ident;)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                pair(Kind::$src, Kind::$dst).await;
            }
        )*
    };
}

pairs! {
    amqp_to_kafka: Amqp -> Kafka;
    amqp_to_nats: Amqp -> Nats;
    amqp_to_redis: Amqp -> Redis;
    amqp_to_mqtt: Amqp -> Mqtt;
    amqp_to_stomp: Amqp -> Stomp;
    kafka_to_amqp: Kafka -> Amqp;
    kafka_to_nats: Kafka -> Nats;
    kafka_to_redis: Kafka -> Redis;
    kafka_to_mqtt: Kafka -> Mqtt;
    kafka_to_stomp: Kafka -> Stomp;
    nats_to_amqp: Nats -> Amqp;
    nats_to_kafka: Nats -> Kafka;
    nats_to_redis: Nats -> Redis;
    nats_to_mqtt: Nats -> Mqtt;
    nats_to_stomp: Nats -> Stomp;
    redis_to_amqp: Redis -> Amqp;
    redis_to_kafka: Redis -> Kafka;
    redis_to_nats: Redis -> Nats;
    redis_to_mqtt: Redis -> Mqtt;
    redis_to_stomp: Redis -> Stomp;
    mqtt_to_amqp: Mqtt -> Amqp;
    mqtt_to_kafka: Mqtt -> Kafka;
    mqtt_to_nats: Mqtt -> Nats;
    mqtt_to_redis: Mqtt -> Redis;
    mqtt_to_stomp: Mqtt -> Stomp;
    stomp_to_amqp: Stomp -> Amqp;
    stomp_to_kafka: Stomp -> Kafka;
    stomp_to_nats: Stomp -> Nats;
    stomp_to_redis: Stomp -> Redis;
    stomp_to_mqtt: Stomp -> Mqtt;
}

// MQTT 3.1.1, which has no headers: the adapter's envelope option both ways, and raw
// payloads as a sink behind the route's `envelope: json`.
pairs! {
    amqp_to_mqtt311envelope: Amqp -> Mqtt311Envelope;
    mqtt311envelope_to_stomp: Mqtt311Envelope -> Stomp;
    nats_to_mqtt311raw: Nats -> Mqtt311Raw;
    redis_to_mqtt311raw: Redis -> Mqtt311Raw;
}
