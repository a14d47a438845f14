//! End-to-end routing on the in-memory broker: what a route delivers, when it acknowledges
//! the source, and what it does with failures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use polybridge::{
    well_known, Broker, Deadline, DeliveryStream, Message, StartPosition, Subscription,
};
use polybridge_bridge::config::load;
use polybridge_bridge::Bridge;

mod faulty_sink;
use faulty_sink::{memory, FaultySink};

fn deadline() -> Deadline {
    Deadline::after(Duration::from_secs(5))
}

async fn next(stream: &mut DeliveryStream) -> polybridge::Delivery {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a delivery within 10 s")
        .expect("stream open")
        .expect("no error")
}

/// Waits until `cond` holds, failing after 10 s.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn config(yaml: &str) -> polybridge_bridge::config::Config {
    match load(yaml, "test.yaml", &|_| None) {
        Ok(c) => c,
        Err(e) => panic!("config does not load:\n{e}"),
    }
}

#[tokio::test]
async fn routes_payload_key_and_headers_and_counts_match() {
    let yaml = r#"
brokers:
  src: { url: "memory://rt-src" }
  dst: { url: "memory://rt-dst" }
routes:
  - name: temps
    from: { broker: src, topic: "sensors.*.temp", group: bridge }
    to:
      - broker: dst
        destination: "out.{1}"
        key: "{1}"
        headers: { set: { via: "{route}" }, rename: { unit: x-unit }, drop: [secret] }
"#;
    let cfg = config(yaml);
    let brokers: BTreeMap<_, _> = [
        ("src".to_string(), memory("rt-src")),
        ("dst".to_string(), memory("rt-dst")),
    ]
    .into();
    let mut out = brokers["dst"]
        .subscribe(Subscription::new("out.*".parse().unwrap()))
        .await
        .unwrap();
    let bridge = Bridge::start(cfg, &brokers, Duration::from_secs(5)).unwrap();
    eventually("the route to subscribe", || {
        bridge.routes()[0]
            .metrics
            .subscribed
            .load(Ordering::Relaxed)
    })
    .await;
    let n: usize = 200;
    for i in 0..n {
        let room = if i.is_multiple_of(2) {
            "kitchen"
        } else {
            "hall"
        };
        let m = Message::new(vec![0u8, 1, 2, (i % 256) as u8])
            .with_id(format!("m{i}"))
            .with_header("unit", "C")
            .with_header("secret", "s3")
            .with_header("bin", vec![0xffu8, 0x00]);
        brokers["src"]
            .publish(&format!("sensors.{room}.temp"), &m, deadline())
            .await
            .unwrap();
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..n {
        let d = next(&mut out).await;
        let i: usize = d.message.id[1..].parse().unwrap();
        let room = if i.is_multiple_of(2) {
            "kitchen"
        } else {
            "hall"
        };
        assert_eq!(d.info.topic, format!("out.{room}"));
        assert_eq!(d.message.key.as_deref(), Some(room.as_bytes()));
        assert_eq!(&d.message.payload[..], &[0, 1, 2, (i % 256) as u8]);
        assert_eq!(d.message.headers.get_str("x-unit"), Some("C"));
        assert_eq!(d.message.headers.get_str("via"), Some("temps"));
        assert_eq!(d.message.headers.get("secret"), None);
        assert_eq!(
            d.message.headers.get("bin").unwrap().as_bytes(),
            &[0xff, 0x00]
        );
        assert!(seen.insert(i), "duplicate {i}");
        d.ack().unwrap();
    }
    assert_eq!(seen.len(), n);
    let m = &bridge.routes()[0].metrics;
    eventually("every source delivery acked", || {
        m.acked.load(Ordering::Relaxed) == n as u64
    })
    .await;
    assert_eq!(m.received.load(Ordering::Relaxed), n as u64);
    bridge.stop().await;
}

#[tokio::test]
async fn fan_out_acks_the_source_only_after_both_sinks_confirmed() {
    let yaml = r#"
brokers:
  src: { url: "memory://fo-src" }
  good: { url: "memory://fo-good" }
  bad: { url: "memory://fo-bad" }
routes:
  - name: fan
    from: { broker: src, topic: "in", group: bridge }
    to:
      - { broker: good, destination: "copy" }
      - { broker: bad, destination: "copy" }
    on_error: { max_attempts: 1000, initial_backoff: 10ms, max_backoff: 20ms }
"#;
    let bad = FaultySink::failing("fo-bad", u32::MAX);
    let brokers: BTreeMap<String, Arc<dyn Broker>> = [
        ("src".to_string(), memory("fo-src")),
        ("good".to_string(), memory("fo-good")),
        ("bad".to_string(), bad.clone() as Arc<dyn Broker>),
    ]
    .into();
    let mut good_out = brokers["good"]
        .subscribe(Subscription::new("copy".parse().unwrap()))
        .await
        .unwrap();
    let mut bad_out = bad
        .inner
        .subscribe(Subscription::new("copy".parse().unwrap()))
        .await
        .unwrap();
    let bridge = Bridge::start(config(yaml), &brokers, Duration::from_secs(5)).unwrap();
    eventually("the route to subscribe", || {
        bridge.routes()[0]
            .metrics
            .subscribed
            .load(Ordering::Relaxed)
    })
    .await;
    brokers["src"]
        .publish("in", &Message::new("x").with_id("f1"), deadline())
        .await
        .unwrap();
    // The good sink confirms at once; the bad one keeps failing: the source must stay unacked.
    let d = next(&mut good_out).await;
    assert_eq!(d.message.id, "f1");
    d.ack().unwrap();
    eventually("several failed attempts", || {
        bad.publishes.load(Ordering::SeqCst) >= 5
    })
    .await;
    let m = &bridge.routes()[0].metrics;
    assert_eq!(
        m.acked.load(Ordering::Relaxed),
        0,
        "source acked although a sink has not confirmed"
    );
    // The sink recovers: the message arrives there and only then is the source acked.
    bad.failures.store(0, Ordering::SeqCst);
    let d = next(&mut bad_out).await;
    assert_eq!(d.message.id, "f1");
    d.ack().unwrap();
    eventually("the source ack", || m.acked.load(Ordering::Relaxed) == 1).await;
    bridge.stop().await;
}

#[tokio::test]
async fn a_message_failing_every_attempt_is_dead_lettered_with_the_reason() {
    let yaml = r#"
brokers:
  src: { url: "memory://dl-src" }
  bad: { url: "memory://dl-bad" }
  dlq: { url: "memory://dl-dlq" }
routes:
  - name: dl
    from: { broker: src, topic: "orders.*", group: bridge }
    to:
      - { broker: bad, destination: "copy" }
    on_error:
      max_attempts: 3
      initial_backoff: 1ms
      max_backoff: 5ms
      dead_letter: { broker: dlq, destination: "dead.{route}" }
"#;
    let bad = FaultySink::failing("dl-bad", u32::MAX);
    let brokers: BTreeMap<String, Arc<dyn Broker>> = [
        ("src".to_string(), memory("dl-src")),
        ("bad".to_string(), bad.clone() as Arc<dyn Broker>),
        ("dlq".to_string(), memory("dl-dlq")),
    ]
    .into();
    let mut dead = brokers["dlq"]
        .subscribe(Subscription::new("dead.dl".parse().unwrap()))
        .await
        .unwrap();
    let bridge = Bridge::start(config(yaml), &brokers, Duration::from_secs(5)).unwrap();
    eventually("the route to subscribe", || {
        bridge.routes()[0]
            .metrics
            .subscribed
            .load(Ordering::Relaxed)
    })
    .await;
    brokers["src"]
        .publish(
            "orders.eu",
            &Message::new("payload").with_id("d1").with_key("k"),
            deadline(),
        )
        .await
        .unwrap();
    let d = next(&mut dead).await;
    assert_eq!(d.message.id, "d1");
    assert_eq!(d.message.headers.get_str(well_known::ATTEMPTS), Some("3"));
    assert_eq!(
        d.message.headers.get_str(well_known::ORIGINAL_TOPIC),
        Some("orders.eu")
    );
    assert!(d
        .message
        .headers
        .get_str(well_known::REJECT_REASON)
        .unwrap()
        .contains("injected failure"));
    let body: serde_json::Value = serde_json::from_slice(&d.message.payload).unwrap();
    assert_eq!(body["error"]["route"], "dl");
    assert_eq!(body["error"]["attempts"], 3);
    assert_eq!(body["message"]["payload"], "payload");
    d.ack().unwrap();
    assert_eq!(bad.publishes.load(Ordering::SeqCst), 3);
    let m = &bridge.routes()[0].metrics;
    eventually("dead-letter counted", || {
        m.dead_lettered.load(Ordering::Relaxed) == 1
    })
    .await;
    bridge.stop().await;
    // The source delivery was acknowledged: a new member of the group gets nothing more.
    let mut again = brokers["src"]
        .subscribe(Subscription::new("orders.*".parse().unwrap()).group("bridge"))
        .await
        .unwrap();
    brokers["src"]
        .publish(
            "orders.eu",
            &Message::new("marker").with_id("d2"),
            deadline(),
        )
        .await
        .unwrap();
    assert_eq!(next(&mut again).await.message.id, "d2");
}

#[tokio::test]
async fn without_a_dead_letter_destination_the_source_is_redelivered() {
    let yaml = r#"
brokers:
  src: { url: "memory://nd-src" }
  bad: { url: "memory://nd-bad" }
routes:
  - name: nd
    from: { broker: src, topic: "in", group: bridge }
    to: [ { broker: bad, destination: "copy" } ]
    on_error: { max_attempts: 2, initial_backoff: 1ms, max_backoff: 5ms }
"#;
    let bad = FaultySink::failing("nd-bad", u32::MAX);
    let brokers: BTreeMap<String, Arc<dyn Broker>> = [
        ("src".to_string(), memory("nd-src")),
        ("bad".to_string(), bad.clone() as Arc<dyn Broker>),
    ]
    .into();
    let bridge = Bridge::start(config(yaml), &brokers, Duration::from_secs(5)).unwrap();
    eventually("the route to subscribe", || {
        bridge.routes()[0]
            .metrics
            .subscribed
            .load(Ordering::Relaxed)
    })
    .await;
    brokers["src"]
        .publish("in", &Message::new("x"), deadline())
        .await
        .unwrap();
    let m = bridge.routes()[0].metrics.clone();
    // Nacked, redelivered by the broker, tried again: never dropped.
    eventually("two rounds of redelivery", || {
        m.nacked.load(Ordering::Relaxed) >= 2
    })
    .await;
    assert!(m.received.load(Ordering::Relaxed) >= 2);
    assert_eq!(m.acked.load(Ordering::Relaxed), 0);
    // Once the sink works, the redelivered message gets through.
    bad.failures.store(0, Ordering::SeqCst);
    eventually("the message to get through", || {
        m.acked.load(Ordering::Relaxed) == 1
    })
    .await;
    bridge.stop().await;
}

#[tokio::test]
async fn filter_and_first_match_dispatch() {
    let yaml = r#"
brokers:
  src: { url: "memory://fm-src" }
  dst: { url: "memory://fm-dst" }
routes:
  - name: fm
    from: { broker: src, topic: "readings", group: bridge, start: earliest }
    filter: "payload.celsius > -50.0"
    dispatch: first
    to:
      - { broker: dst, destination: "hot", when: "payload.celsius >= 30.0" }
      - { broker: dst, destination: "normal" }
"#;
    let brokers: BTreeMap<String, Arc<dyn Broker>> = [
        ("src".to_string(), memory("fm-src")),
        ("dst".to_string(), memory("fm-dst")),
    ]
    .into();
    let mut hot = brokers["dst"]
        .subscribe(Subscription::new("hot".parse().unwrap()))
        .await
        .unwrap();
    let mut normal = brokers["dst"]
        .subscribe(Subscription::new("normal".parse().unwrap()))
        .await
        .unwrap();
    for (id, c) in [("a", 35.0), ("b", 20.0), ("c", -90.0), ("d", 31.0)] {
        brokers["src"]
            .publish(
                "readings",
                &Message::new(format!(r#"{{"celsius": {c}}}"#)).with_id(id),
                deadline(),
            )
            .await
            .unwrap();
    }
    let bridge = Bridge::start(config(yaml), &brokers, Duration::from_secs(5)).unwrap();
    assert_eq!(next(&mut hot).await.message.id, "a");
    assert_eq!(next(&mut hot).await.message.id, "d");
    assert_eq!(next(&mut normal).await.message.id, "b");
    let m = bridge.routes()[0].metrics.clone();
    eventually("all settled", || {
        m.acked.load(Ordering::Relaxed) + m.filtered.load(Ordering::Relaxed) == 4
    })
    .await;
    assert_eq!(m.filtered.load(Ordering::Relaxed), 1);
    bridge.stop().await;
    let _ = StartPosition::Earliest;
}

/// Publishes of messages with key `slow` are slow, the earlier ones slower (payload `n`
/// takes (30 − n) × 6 ms): processed concurrently they would overtake each other.
fn slow_key_delay(message: &Message) -> Duration {
    if message.key.as_deref() != Some(&b"slow"[..]) {
        return Duration::ZERO;
    }
    let n: u64 = std::str::from_utf8(&message.payload)
        .unwrap()
        .parse()
        .unwrap();
    Duration::from_millis(30u64.saturating_sub(n) * 6)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_ordering_keeps_order_per_key_and_runs_keys_in_parallel() {
    let yaml = r#"
brokers:
  src: { url: "memory://pk-src" }
  dst: { url: "memory://pk-dst" }
routes:
  - name: pk
    from: { broker: src, topic: "in", group: bridge, start: earliest }
    ordering: per_key
    max_in_flight: 64
    to: [ { broker: dst, destination: "out" } ]
"#;
    let dst: Arc<dyn Broker> = FaultySink::delaying("pk-dst", slow_key_delay);
    let brokers: BTreeMap<String, Arc<dyn Broker>> = [
        ("src".to_string(), memory("pk-src")),
        ("dst".to_string(), dst.clone()),
    ]
    .into();
    let mut out = dst
        .subscribe(Subscription::new("out".parse().unwrap()))
        .await
        .unwrap();
    let keys = ["slow", "k0", "k1", "k2", "k3"];
    let per_key = 30;
    for i in 0..per_key {
        for k in keys {
            brokers["src"]
                .publish(
                    "in",
                    &Message::new(i.to_string())
                        .with_key(k)
                        .with_id(format!("{k}-{i}")),
                    deadline(),
                )
                .await
                .unwrap();
        }
    }
    let bridge = Bridge::start(config(yaml), &brokers, Duration::from_secs(5)).unwrap();
    let mut next_seq: BTreeMap<String, usize> = BTreeMap::new();
    let fast_total = per_key * 4;
    let mut fast = 0;
    let mut slow_when_fast_done = None;
    for _ in 0..per_key * keys.len() {
        let d = next(&mut out).await;
        let key = String::from_utf8(d.message.key.clone().unwrap().to_vec()).unwrap();
        let seq: usize = std::str::from_utf8(&d.message.payload)
            .unwrap()
            .parse()
            .unwrap();
        let want = next_seq.entry(key.clone()).or_insert(0);
        assert_eq!(seq, *want, "key {key}: got {seq} while expecting {want}");
        *want += 1;
        if key != "slow" {
            fast += 1;
            if fast == fast_total {
                slow_when_fast_done = Some(next_seq.get("slow").copied().unwrap_or(0));
            }
        }
        d.ack().unwrap();
    }
    // The slow key (about 2.8 s in order) did not hold the other keys back.
    let slow = slow_when_fast_done.unwrap();
    assert!(
        slow < per_key / 2,
        "the fast keys finished only after {slow} slow messages"
    );
    let m = bridge.routes()[0].metrics.clone();
    eventually("all acked", || {
        m.acked.load(Ordering::Relaxed) == (per_key * keys.len()) as u64
    })
    .await;
    bridge.stop().await;
}
