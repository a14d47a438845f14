//! Kafka-specific behaviour against a real Kafka-protocol broker (Tansu from the harness, or
//! `POLYBRIDGE_KAFKA_URL`): commits of the contiguous acknowledged watermark only, resuming
//! after a consumer crash, rebalances between group members, dead-letter topics, rewinds on
//! nack, broker outages, regex subscriptions, interoperability with a native client
//! (kafka-python) and the errors for bad input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use common::Server;
use polybridge_core::{
    well_known, Deadline, Delivery, DeliveryStream, Error, Message, Position, Publisher,
    StartPosition, Subscriber, Subscription, TopicPattern,
};
use polybridge_kafka::KafkaBroker;

const WAIT: Duration = Duration::from_secs(20);

fn deadline() -> Deadline {
    Deadline::after(WAIT)
}

fn topic(hint: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "pbk.{hint}.{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn on(topic: &str) -> Subscription {
    Subscription::new(TopicPattern::literal(topic, '.'))
}

async fn next(stream: &mut DeliveryStream, what: &str) -> Delivery {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {WAIT:?}"))
        .unwrap_or_else(|| panic!("{what}: stream ended"))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

async fn nothing_within(stream: &mut DeliveryStream, period: Duration, what: &str) {
    if let Ok(Some(d)) = tokio::time::timeout(period, stream.next()).await {
        panic!("{what}: unexpected delivery {:?}", d.map(|d| d.info));
    }
}

/// Publishes `n` messages `<prefix>-<i>` (payload `i`) and returns their offsets.
async fn publish_n(broker: &KafkaBroker, topic: &str, prefix: &str, n: usize) -> Vec<i64> {
    let mut offsets = Vec::new();
    for i in 0..n {
        let r = broker
            .publish(
                topic,
                &Message::new(i.to_string()).with_id(format!("{prefix}-{i}")),
                deadline(),
            )
            .await
            .unwrap();
        match r.position {
            Some(Position::Offset { offset, .. }) => offsets.push(offset),
            other => panic!("a receipt carries partition and offset: {other:?}"),
        }
    }
    offsets
}

fn offset_of(d: &Delivery) -> i64 {
    match d.info.position {
        Some(Position::Offset { offset, .. }) => offset,
        ref other => panic!("a delivery carries its offset: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_acks_commit_only_the_contiguous_watermark() {
    let Some(server) = Server::start() else {
        return;
    };
    // One partition in use, so "1..10" is one ordered sequence.
    let kafka = server.connect("partition=0").await;
    let t = topic("watermark");
    let group = format!("wm-{}", std::process::id());
    let sub = || on(&t).group(group.clone()).start(StartPosition::Earliest);
    publish_n(&kafka, &t, "wm", 10).await;
    let mut first = kafka.subscribe(sub()).await.unwrap();
    let mut held = Vec::new();
    for i in 0..10 {
        let d = next(&mut first, "first consumer").await;
        assert_eq!(d.message.id, format!("wm-{i}"), "partition order");
        held.push(d);
    }
    // Ack 2..10, never 1.
    let one = held.remove(0);
    for d in held {
        d.ack().unwrap();
    }
    first.close().await;
    drop(one);
    let mut second = kafka.subscribe(sub()).await.unwrap();
    for i in 0..10 {
        let d = next(&mut second, "second consumer").await;
        assert_eq!(
            d.message.id,
            format!("wm-{i}"),
            "everything from the unacked message 1 on comes again, in order"
        );
        assert!(d.info.redelivered, "{:?}", d.info);
        d.ack().unwrap();
    }
    second.close().await;
    // Now all ten are acked and committed: a third member gets nothing old.
    let mut third = kafka.subscribe(sub()).await.unwrap();
    nothing_within(&mut third, Duration::from_secs(2), "after all were acked").await;
    third.close().await;
}

/// The child side of `a_new_consumer_resumes_from_the_committed_offset_after_a_crash`:
/// consumes, acks the first five, reports, and waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Ok(spec) = std::env::var("PB_KAFKA_CRASH_CHILD") else {
        return; // only runs as the child of the crash test
    };
    let mut parts = spec.split('|');
    let (url, t, group) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let kafka = KafkaBroker::connect(&url.parse().unwrap()).await.unwrap();
    let mut sub = kafka
        .subscribe(on(t).group(group).start(StartPosition::Earliest))
        .await
        .unwrap();
    let mut unacked = Vec::new();
    for i in 0..10 {
        let d = next(&mut sub, "child").await;
        if i < 5 {
            d.ack().unwrap();
        } else {
            unacked.push(d);
        }
    }
    // Commits run every 100 ms in the tests; give them a few rounds.
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("CHILD-READY");
    tokio::time::sleep(Duration::from_secs(600)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_consumer_resumes_from_the_committed_offset_after_a_crash() {
    let Some(server) = Server::start() else {
        return;
    };
    let kafka = server.connect("partition=0").await;
    let t = topic("crash");
    let group = format!("crash-{}", std::process::id());
    let offsets = publish_n(&kafka, &t, "cr", 10).await;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(
            "PB_KAFKA_CRASH_CHILD",
            format!("{}|{t}|{group}", server.url_with("")),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let ready = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(|l| l.ok())
            .any(|l| l.contains("CHILD-READY"))
    });
    let ready = tokio::time::timeout(Duration::from_secs(60), ready)
        .await
        .expect("child ready in time")
        .unwrap();
    assert!(ready, "the child consumed and acked");
    // A crash: no close, no commit, no leave-group.
    child.kill().unwrap();
    child.wait().unwrap();
    let mut next_member = kafka
        .subscribe(on(&t).group(group).start(StartPosition::Earliest))
        .await
        .unwrap();
    let first = next(&mut next_member, "after the crash").await;
    assert_eq!(
        offset_of(&first),
        offsets[5],
        "resumes at the first unacked offset: {:?}",
        first.info
    );
    assert_eq!(first.message.id, "cr-5");
    assert!(first.info.redelivered || first.info.attempt == 1);
    first.ack().unwrap();
    for i in 6..10 {
        let d = next(&mut next_member, "after the crash").await;
        assert_eq!(d.message.id, format!("cr-{i}"));
        d.ack().unwrap();
    }
    next_member.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_moves_partitions_between_members_without_losing_acked_work() {
    let Some(server) = Server::start() else {
        return;
    };
    let kafka = server.connect("").await;
    let t = topic("rebalance");
    let group = format!("rb-{}", std::process::id());
    // Create the topic (4 partitions on Tansu) before the group starts.
    kafka
        .publish(&t, &Message::new("warm-up").with_id("warm"), deadline())
        .await
        .unwrap();
    let mut a = kafka.subscribe(on(&t).group(group.clone())).await.unwrap();
    let publish_keyed = |prefix: &'static str| {
        let t = t.clone();
        let kafka = &kafka;
        async move {
            let mut ids = HashSet::new();
            for i in 0..40 {
                let id = format!("{prefix}-{i}");
                kafka
                    .publish(
                        &t,
                        &Message::new(i.to_string())
                            .with_id(id.clone())
                            .with_key(format!("k{}", i % 8)),
                        deadline(),
                    )
                    .await
                    .unwrap();
                ids.insert(id);
            }
            ids
        }
    };
    let before = publish_keyed("before").await;
    let mut seen_a = HashSet::new();
    let mut held = None;
    while seen_a.len() < before.len() {
        let d = next(&mut a, "member a alone").await;
        seen_a.insert(d.message.id.clone());
        if held.is_none() {
            held = Some(d); // unsettled across the rebalance
        } else {
            d.ack().unwrap();
        }
    }
    let held = held.unwrap();
    let held_id = held.message.id.clone();
    let (held_partition, held_offset) = (held.info.partition, offset_of(&held));
    // Member b joins: the group rebalances, a's partitions are revoked (its acks committed)
    // and shared out again.
    let mut b = kafka.subscribe(on(&t).group(group.clone())).await.unwrap();
    let after = publish_keyed("after").await;
    let (mut got_a, mut got_b) = (HashSet::new(), HashSet::new());
    let mut held_again = false;
    let end = Instant::now() + Duration::from_secs(60);
    while !(after.is_subset(&got_a.union(&got_b).cloned().collect()) && held_again) {
        assert!(
            Instant::now() < end,
            "after the rebalance: a {} b {} of {}, held message redelivered: {held_again}",
            got_a.len(),
            got_b.len(),
            after.len()
        );
        let (member, d) = tokio::select! {
            Some(Ok(d)) = a.next() => ('a', d),
            Some(Ok(d)) = b.next() => ('b', d),
            _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
        };
        let id = d.message.id.clone();
        if id == held_id {
            held_again = true;
            assert!(d.info.redelivered, "{:?}", d.info);
        } else if id.starts_with("before-") {
            // Acked before the revoke: committed then, unless it sits behind the held
            // (unacked) message on the same partition, past the committed watermark.
            assert!(
                d.info.partition == held_partition && offset_of(&d) > held_offset,
                "an acked message came back after the rebalance: {id} {:?}",
                d.info
            );
        }
        match member {
            'a' => got_a.insert(id),
            _ => got_b.insert(id),
        };
        d.ack().unwrap();
    }
    assert!(
        !got_a.is_empty() && !got_b.is_empty(),
        "both members get partitions: a {} b {}",
        got_a.len(),
        got_b.len()
    );
    // The delivery held across the rebalance belongs to a revoked assignment: settling it
    // is a no-op, not an error, and it was already redelivered.
    held.ack().unwrap();
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_dead_letters_to_the_default_topic_with_reason_headers() {
    let Some(server) = Server::start() else {
        return;
    };
    let kafka = server.connect("").await;
    let t = topic("reject");
    let dlq = format!("{t}.dlq");
    let group = format!("rj-{}", std::process::id());
    kafka
        .publish(&dlq, &Message::new("warm-up"), deadline())
        .await
        .unwrap();
    let mut dead = kafka
        .subscribe(on(&dlq).start(StartPosition::Earliest))
        .await
        .unwrap();
    let warm = next(&mut dead, "warm-up").await;
    warm.ack().unwrap();
    let mut sub = kafka.subscribe(on(&t).group(group.clone())).await.unwrap();
    let original = Message::new(vec![0u8, 1, 2])
        .with_id("poison")
        .with_key("k1")
        .with_header("trace", "abc")
        .with_header("bin", vec![0xffu8, 0]);
    let receipt = kafka.publish(&t, &original, deadline()).await.unwrap();
    let d = next(&mut sub, "delivery").await;
    assert_eq!(d.info.position, receipt.position);
    d.reject("schema violation").unwrap();
    let dl = next(&mut dead, "dead letter").await;
    let h = &dl.message.headers;
    assert_eq!(
        h.get_str(well_known::REJECT_REASON),
        Some("schema violation")
    );
    assert_eq!(h.get_str(well_known::ORIGINAL_TOPIC), Some(t.as_str()));
    assert_eq!(h.get_str(well_known::ATTEMPTS), Some("1"));
    let Some(Position::Offset { partition, offset }) = receipt.position else {
        panic!("receipt position");
    };
    assert_eq!(
        h.get_str("x-polybridge-original-partition"),
        Some(partition.to_string().as_str())
    );
    assert_eq!(
        h.get_str("x-polybridge-original-offset"),
        Some(offset.to_string().as_str())
    );
    assert_eq!(h.get_str("trace"), Some("abc"));
    assert_eq!(h.get("bin").map(|v| v.as_bytes()), Some(&[0xffu8, 0][..]));
    assert_eq!(dl.message.payload, original.payload);
    assert_eq!(dl.message.key, original.key);
    assert_eq!(dl.message.id, "poison");
    dl.ack().unwrap();
    nothing_within(
        &mut sub,
        Duration::from_secs(1),
        "the rejected message again",
    )
    .await;
    sub.close().await;
    // The rejected offset counts as done once its dead letter was confirmed.
    let mut again = kafka.subscribe(on(&t).group(group)).await.unwrap();
    nothing_within(
        &mut again,
        Duration::from_secs(2),
        "after reject, same group",
    )
    .await;
    again.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_rewinds_the_partition_and_redelivers_in_order() {
    let Some(server) = Server::start() else {
        return;
    };
    let kafka = server.connect("partition=0").await;
    let t = topic("rewind");
    let mut sub = kafka.subscribe(on(&t)).await.unwrap();
    publish_n(&kafka, &t, "rw", 5).await;
    let mut first: Vec<Delivery> = Vec::new();
    for i in 0..5 {
        let d = next(&mut sub, "first pass").await;
        assert_eq!(d.message.id, format!("rw-{i}"));
        first.push(d);
    }
    let mut first = first.into_iter();
    first.next().unwrap().ack().unwrap();
    first.next().unwrap().ack().unwrap();
    // Nack rw-2 after a delay: the partition restarts at rw-2 (then rw-3, rw-4 again).
    let nacked_at = Instant::now();
    first
        .next()
        .unwrap()
        .nack_after(Duration::from_millis(700))
        .unwrap();
    // rw-3 and rw-4 were taken back with the rewind: settling them is a no-op.
    for d in first {
        d.ack().unwrap();
    }
    for i in 2..5 {
        let d = next(&mut sub, "after the rewind").await;
        assert_eq!(d.message.id, format!("rw-{i}"), "redelivered in order");
        assert!(d.info.redelivered);
        assert_eq!(d.info.attempt, 2, "{:?}", d.info);
        if i == 2 {
            assert!(
                nacked_at.elapsed() >= Duration::from_millis(630),
                "redelivered after {:?}, before the delay",
                nacked_at.elapsed()
            );
        }
        d.ack().unwrap();
    }
    nothing_within(&mut sub, Duration::from_secs(1), "after the rewind").await;
    sub.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_mid_stream_loses_nothing_acked() {
    let Some(server) = Server::start() else {
        return;
    };
    if server.process.is_none() {
        eprintln!("skipped: an external broker cannot be paused");
        return;
    }
    let kafka = server.connect("").await;
    let t = topic("outage");
    let group = format!("out-{}", std::process::id());
    let mut sub = kafka.subscribe(on(&t).group(group.clone())).await.unwrap();
    let n = 300;
    let ids: HashSet<String> = (0..n).map(|i| format!("o-{i}")).collect();
    let publisher = {
        let kafka = server.connect("").await;
        let t = t.clone();
        tokio::spawn(async move {
            for i in 0..n {
                loop {
                    match kafka
                        .publish(&t, &Message::new("x").with_id(format!("o-{i}")), deadline())
                        .await
                    {
                        Ok(_) => break,
                        Err(e) if e.is_retryable() => {
                            tokio::time::sleep(Duration::from_millis(50)).await
                        }
                        Err(e) => panic!("publish o-{i}: {e}"),
                    }
                }
            }
        })
    };
    let mut seen = HashSet::new();
    let mut paused = false;
    while seen.len() < ids.len() {
        let d = next(&mut sub, "during the outage").await;
        seen.insert(d.message.id.clone());
        d.ack().unwrap();
        if !paused && seen.len() == n / 3 {
            paused = true;
            server.pause();
            tokio::time::sleep(Duration::from_secs(3)).await;
            server.resume();
        }
    }
    publisher.await.unwrap();
    assert_eq!(seen, ids);
    sub.close().await;
    // Everything acked was committed after the outage: the group has nothing left.
    let mut again = kafka.subscribe(on(&t).group(group)).await.unwrap();
    nothing_within(&mut again, Duration::from_secs(2), "after the outage").await;
    again.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_is_bounded_while_the_broker_is_frozen() {
    let Some(server) = Server::start() else {
        return;
    };
    if server.process.is_none() {
        eprintln!("skipped: an external broker cannot be paused");
        return;
    }
    let kafka = server.connect("close_timeout=3s").await;
    let t = topic("frozen");
    let mut sub = kafka.subscribe(on(&t).group("frozen")).await.unwrap();
    publish_n(&kafka, &t, "fz", 3).await;
    let d = next(&mut sub, "before the freeze").await;
    d.ack().unwrap();
    server.pause();
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), sub.close())
        .await
        .expect("close returns within its bound while the broker is frozen");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    server.resume();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regex_subscriptions_follow_the_core_pattern() {
    let Some(server) = Server::start() else {
        return;
    };
    let kafka = server.connect("").await;
    let base = topic("rx").replace('.', "_");
    let (one, two, other) = (
        format!("{base}.eu.created"),
        format!("{base}.us.created"),
        format!("{base}.eu.deleted"),
    );
    for t in [&one, &two, &other] {
        kafka
            .publish(t, &Message::new("warm-up"), deadline())
            .await
            .unwrap();
    }
    let pattern: TopicPattern = format!("{base}.*.created").parse().unwrap();
    let mut sub = kafka
        .subscribe(Subscription::new(pattern).group(format!("{base}-g")))
        .await
        .unwrap();
    for t in [&one, &two, &other] {
        kafka
            .publish(
                t,
                &Message::new(t.clone()).with_id(format!("m-{t}")),
                deadline(),
            )
            .await
            .unwrap();
    }
    let mut got = HashSet::new();
    while got.len() < 2 {
        let d = next(&mut sub, "regex subscription").await;
        assert_ne!(d.info.topic, other, "only topics matching the pattern");
        got.insert(d.info.topic.clone());
        d.ack().unwrap();
    }
    assert_eq!(got, HashSet::from([one, two]));
    nothing_within(&mut sub, Duration::from_secs(1), "the non-matching topic").await;
    sub.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_keys_partitions_and_payload_limits() {
    let Some(server) = Server::start() else {
        return;
    };
    let kafka = server.connect("partition=2").await;
    let t = topic("receipt");
    let mut sub = kafka.subscribe(on(&t)).await.unwrap();
    let r1 = kafka
        .publish(&t, &Message::new("a").with_key("same"), deadline())
        .await
        .unwrap();
    let r2 = kafka
        .publish(&t, &Message::new("b").with_key("same"), deadline())
        .await
        .unwrap();
    match (&r1.position, &r2.position) {
        (
            Some(Position::Offset {
                partition: 2,
                offset: o1,
            }),
            Some(Position::Offset {
                partition: 2,
                offset: o2,
            }),
        ) => assert!(o2 > o1),
        other => panic!("explicit partition 2 in receipts: {other:?}"),
    }
    for expected in ["a", "b"] {
        let d = next(&mut sub, "keyed").await;
        assert_eq!(&d.message.payload[..], expected.as_bytes());
        assert_eq!(d.message.key.as_deref(), Some(&b"same"[..]));
        assert_eq!(d.info.partition, Some(2));
        d.ack().unwrap();
    }
    let limit = kafka.config().max_payload();
    let e = kafka
        .publish(&t, &Message::new(vec![0u8; limit + 1]), deadline())
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::PayloadTooLarge { size, .. } if size == limit + 1),
        "{e}"
    );
    let e = kafka
        .publish("bad topic!", &Message::new("x"), deadline())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not a Kafka topic name"), "{e}");
    sub.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_options_are_clear_config_errors() {
    let Some(server) = Server::start() else {
        return;
    };
    for (options, expected) in [
        ("rdkafka.no.such.key=1", "no.such.key"),
        ("rdkafka.linger.ms=soon", "linger.ms"),
        (
            "rdkafka.enable.auto.commit=true",
            "sets enable.auto.commit itself",
        ),
        ("acks=most", "use all, 1 or 0"),
        ("lingr=5ms", "unknown option \"lingr\""),
    ] {
        let url = server.url_with(options);
        let e = match KafkaBroker::connect(&url.parse().unwrap()).await {
            Ok(_) => panic!("{options}: connected"),
            Err(e) => e,
        };
        assert!(matches!(e, Error::Config { .. }), "{options}: {e:?}");
        assert!(e.to_string().contains(expected), "{options}: {e}");
    }
    let kafka = server.connect("").await;
    let e = kafka
        .subscribe(on(&topic("opts")).option("prefetch", "10"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("prefetch"), "{e}");
    let e = kafka
        .subscribe(on(&topic("pos")).start(StartPosition::Position("soon".into())))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Config { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_without_auto_create_is_a_clear_error() {
    let Some(server) = Server::start() else {
        return;
    };
    let kafka = server.connect("auto_create=false").await;
    let t = topic("missing");
    let e = kafka.subscribe(on(&t)).await.unwrap_err();
    assert!(matches!(e, Error::Permanent { .. }), "{e:?}");
    assert!(e.to_string().contains("does not exist"), "{e}");
    assert!(e.to_string().contains(&t), "{e}");
    // With auto-create (the default) the same subscription works.
    let kafka = server.connect("").await;
    let mut sub = kafka.subscribe(on(&t)).await.unwrap();
    kafka
        .publish(&t, &Message::new("now it exists").with_id("m"), deadline())
        .await
        .unwrap();
    next(&mut sub, "after auto-create").await.ack().unwrap();
    sub.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_groups_start_at_a_time_or_an_offset() {
    let Some(server) = Server::start() else {
        return;
    };
    let kafka = server.connect("partition=0").await;
    let t = topic("starts");
    publish_n(&kafka, &t, "old", 3).await;
    // Record timestamps are milliseconds: step past the last old one.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let from = std::time::SystemTime::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let new_offsets = publish_n(&kafka, &t, "new", 3).await;
    let mut by_time = kafka
        .subscribe(on(&t).group("by-time").start(StartPosition::Time(from)))
        .await
        .unwrap();
    for i in 0..3 {
        let d = next(&mut by_time, "start at a time").await;
        assert_eq!(d.message.id, format!("new-{i}"));
        d.ack().unwrap();
    }
    by_time.close().await;
    let mut by_offset = kafka
        .subscribe(
            on(&t)
                .group("by-offset")
                .start(StartPosition::Position(new_offsets[1].to_string())),
        )
        .await
        .unwrap();
    for i in 1..3 {
        let d = next(&mut by_offset, "start at an offset").await;
        assert_eq!(d.message.id, format!("new-{i}"));
        d.ack().unwrap();
    }
    by_offset.close().await;
    // A URL default of `start=earliest` applies to subscriptions that keep `Latest`.
    let earliest = server.connect("partition=0&start=earliest").await;
    let mut all = earliest.subscribe(on(&t).group("by-url")).await.unwrap();
    let d = next(&mut all, "start=earliest").await;
    assert_eq!(d.message.id, "old-0");
    d.ack().unwrap();
    all.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_a_connection_error_in_bounded_time() {
    if polybridge_testkit::skip_reason(polybridge_testkit::BrokerKind::Kafka).is_some() {
        return;
    }
    // A port nothing listens on.
    let port = polybridge_testkit::free_loopback_port().unwrap();
    let url = format!("kafka://u:secret@127.0.0.1:{port}");
    let started = Instant::now();
    let e = match KafkaBroker::connect(&url.parse().unwrap()).await {
        Ok(_) => panic!("connected to nothing"),
        Err(e) => e,
    };
    assert!(matches!(e, Error::Connection { .. }), "{e:?}");
    assert!(!e.to_string().contains("secret"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}

/// Runs `script` with the harness' Python (kafka-python installed), `args` as `sys.argv[1:]`;
/// returns stdout, or `None` (printed) when the Python clients are not installed.
fn python(script: &str, args: &[&str]) -> Option<String> {
    let python = match polybridge_testkit::python() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("skipped: {e}");
            return None;
        }
    };
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_kafka_clients_read_and_write_the_same_records() {
    let Some(server) = Server::start() else {
        return;
    };
    let bootstrap = server.url.trim_start_matches("kafka://").to_owned();
    let kafka = server.connect("").await;
    // polybridge → kafka-python: key, value and headers are plain Kafka fields.
    let t = topic("interop-out");
    let receipt = kafka
        .publish(
            &t,
            &Message::new("hello")
                .with_id("m-1")
                .with_key("k-1")
                .with_header("trace", "abc")
                .with_header("raw", vec![0xffu8, 0]),
            deadline(),
        )
        .await
        .unwrap();
    let Some(Position::Offset { partition, offset }) = receipt.position else {
        panic!("receipt position");
    };
    let read = r#"
import sys
from kafka import KafkaConsumer, TopicPartition
c = KafkaConsumer(bootstrap_servers=sys.argv[1], enable_auto_commit=False, consumer_timeout_ms=15000)
tp = TopicPartition(sys.argv[2], int(sys.argv[3]))
c.assign([tp]); c.seek(tp, int(sys.argv[4]))
for m in c:
    print(m.key.decode(), m.value.decode(), ";".join(f"{k}={v.hex()}" for k, v in m.headers))
    break
"#;
    let Some(out) = python(
        read,
        &[&bootstrap, &t, &partition.to_string(), &offset.to_string()],
    ) else {
        return;
    };
    let line = out.lines().next().unwrap_or_default();
    assert!(line.starts_with("k-1 hello "), "{line}");
    assert!(line.contains("pb-id=6d2d31"), "the id header: {line}");
    assert!(line.contains("trace=616263"), "{line}");
    assert!(
        line.contains("raw=ff00"),
        "binary header bytes unchanged: {line}"
    );
    // kafka-python → polybridge: foreign headers come back as text or binary by content.
    let t = topic("interop-in");
    kafka
        .publish(&t, &Message::new("create the topic"), deadline())
        .await
        .unwrap();
    let mut sub = kafka.subscribe(on(&t)).await.unwrap();
    let write = r#"
import sys
from kafka import KafkaProducer
p = KafkaProducer(bootstrap_servers=sys.argv[1])
p.send(sys.argv[2], key=b"native-key", value=b"from python",
       headers=[("trace", b"xyz"), ("raw", b"\xff\x01")]).get(timeout=15)
p.flush()
"#;
    python(write, &[&bootstrap, &t]).unwrap();
    let d = next(&mut sub, "a record from kafka-python").await;
    assert_eq!(&d.message.payload[..], b"from python");
    assert_eq!(d.message.key.as_deref(), Some(&b"native-key"[..]));
    assert_eq!(d.message.headers.get_str("trace"), Some("xyz"));
    let raw = d.message.headers.get("raw").unwrap();
    assert!(raw.is_binary());
    assert_eq!(raw.as_bytes(), &[0xffu8, 1]);
    let Some(Position::Offset { partition, offset }) = d.info.position.clone() else {
        panic!("position");
    };
    assert_eq!(d.message.id, format!("{t}-{partition}-{offset}"));
    d.ack().unwrap();
    sub.close().await;
}
