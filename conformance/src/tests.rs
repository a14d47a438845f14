//! The conformance tests. Each takes the fixture and panics with a clear message on failure.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Duration;

use polybridge_core::{
    well_known, Error, HeaderSupport, HeaderValue, Message, Ordering, Outgoing, StartPosition,
};

use crate::{
    deadline, expect_nothing, next, publish_n, receive_all, scaled, skip, wait_until_subscribed,
    Fixture,
};

/// Ids, payloads, headers, key, content type, reply-to and correlation id arrive.
pub async fn publish_subscribe<F: Fixture>(f: &F) {
    let broker = f.connect().await.expect("connect");
    let caps = broker.capabilities().clone();
    let topic = f.unique_topic("pubsub");
    let mut sub = broker
        .subscribe(f.subscription(&topic))
        .await
        .expect("subscribe");
    let n = 10;
    let mut sent = HashMap::new();
    for i in 0..n {
        let mut m = Message::new(vec![0u8, 0xff, i as u8, b'x']).with_id(format!("ps-{i}"));
        if caps.headers != HeaderSupport::None {
            m = m
                .with_header("h1", format!("v{i}"))
                .with_content_type("application/octet-stream");
        }
        if caps.keys {
            m = m.with_key(format!("k{i}"));
        }
        if caps.request_reply {
            m = m
                .with_reply_to(f.unique_topic("replies"))
                .with_correlation_id(format!("c{i}"));
        }
        broker
            .publish(&topic, &m, deadline(f))
            .await
            .expect("publish");
        sent.insert(m.id.clone(), m);
    }
    for _ in 0..n {
        let d = next(&mut sub, f.timeout(), "publish_subscribe").await;
        let m = sent
            .remove(&d.message.id)
            .unwrap_or_else(|| panic!("unexpected or duplicate id {:?}", d.message.id));
        assert_eq!(d.message.payload, m.payload, "payload of {}", m.id);
        assert_eq!(d.info.topic, topic, "topic of {}", m.id);
        if caps.headers != HeaderSupport::None {
            assert_eq!(
                d.message.headers.get_str("h1"),
                m.headers.get_str("h1"),
                "header of {}",
                m.id
            );
            assert_eq!(
                d.message.content_type, m.content_type,
                "content type of {}",
                m.id
            );
        }
        if caps.keys {
            assert_eq!(d.message.key, m.key, "key of {}", m.id);
        }
        if caps.request_reply {
            assert_eq!(d.message.reply_to, m.reply_to, "reply-to of {}", m.id);
            assert_eq!(
                d.message.correlation_id, m.correlation_id,
                "correlation id of {}",
                m.id
            );
        }
        d.ack().expect("ack");
    }
    assert!(sent.is_empty(), "not received: {:?}", sent.keys());
}

/// Many subscriptions on different topics, many messages each, all received.
pub async fn concurrent_subscribe<F: Fixture>(f: &F) {
    let broker = f.connect().await.expect("connect");
    let topics: Vec<String> = (0..10)
        .map(|i| f.unique_topic(&format!("conc{i}")))
        .collect();
    let subs =
        futures::future::join_all(topics.iter().map(|t| broker.subscribe(f.subscription(t)))).await;
    let mut subs: Vec<_> = subs.into_iter().map(|s| s.expect("subscribe")).collect();
    let n = scaled(f, 50);
    let publishes = topics.iter().enumerate().map(|(i, t)| {
        let broker = broker.clone();
        async move { publish_n(f, broker.as_ref(), t, &format!("cs{i}"), n).await }
    });
    let ids = futures::future::join_all(publishes).await;
    let receives = subs
        .iter_mut()
        .zip(&ids)
        .map(|(s, ids)| receive_all(s, ids, f.timeout(), "concurrent_subscribe"));
    futures::future::join_all(receives).await;
}

/// Each subscriber gets only the messages of its own topic.
pub async fn multiple_topics<F: Fixture>(f: &F) {
    let broker = f.connect().await.expect("connect");
    let topics: Vec<String> = (0..3)
        .map(|i| f.unique_topic(&format!("multi{i}")))
        .collect();
    let mut subs = Vec::new();
    for t in &topics {
        subs.push(
            broker
                .subscribe(f.subscription(t))
                .await
                .expect("subscribe"),
        );
    }
    let mut ids = Vec::new();
    for (i, t) in topics.iter().enumerate() {
        ids.push(publish_n(f, broker.as_ref(), t, &format!("mt{i}"), 5).await);
    }
    for (s, ids) in subs.iter_mut().zip(&ids) {
        receive_all(s, ids, f.timeout(), "multiple_topics").await;
        expect_nothing(
            s,
            f.quiet_period(),
            "multiple_topics: other topics' messages",
        )
        .await;
    }
}

/// A nacked delivery is delivered again, marked redelivered.
pub async fn resend_on_nack<F: Fixture>(f: &F) {
    let broker = f.connect().await.expect("connect");
    if !broker.capabilities().redelivers() && skip("resend_on_nack", "the adapter is at-most-once")
    {
        return;
    }
    let topic = f.unique_topic("nack");
    let mut sub = broker
        .subscribe(f.subscription(&topic))
        .await
        .expect("subscribe");
    publish_n(f, broker.as_ref(), &topic, "nack", 1).await;
    let first = next(&mut sub, f.timeout(), "resend_on_nack: first delivery").await;
    assert_eq!(first.message.id, "nack-0");
    first.nack().expect("nack");
    let again = next(&mut sub, f.timeout(), "resend_on_nack: redelivery").await;
    assert_eq!(again.message.id, "nack-0");
    assert_eq!(&again.message.payload[..], b"0");
    assert!(
        again.info.redelivered,
        "a redelivery is marked redelivered: {:?}",
        again.info
    );
    if again.info.attempt != 0 {
        assert!(
            again.info.attempt >= 2,
            "attempt counts deliveries: {:?}",
            again.info
        );
    }
    again.ack().expect("ack");
}

/// With `max_in_flight = 3`, a 4th delivery waits until one is settled.
pub async fn in_flight_limit<F: Fixture>(f: &F) {
    let broker = f.connect().await.expect("connect");
    if !broker.capabilities().redelivers() && skip("in_flight_limit", "the adapter is at-most-once")
    {
        return;
    }
    let topic = f.unique_topic("inflight");
    let mut sub = broker
        .subscribe(f.subscription(&topic).max_in_flight(3))
        .await
        .expect("subscribe");
    publish_n(f, broker.as_ref(), &topic, "if", 6).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(next(&mut sub, f.timeout(), "in_flight_limit: first three").await);
    }
    expect_nothing(
        &mut sub,
        f.quiet_period(),
        "in_flight_limit: a 4th while 3 are unsettled",
    )
    .await;
    held.remove(0).ack().expect("ack");
    held.push(
        next(
            &mut sub,
            f.timeout(),
            "in_flight_limit: the 4th after one ack",
        )
        .await,
    );
    for d in held {
        d.ack().expect("ack");
    }
}

/// A group member closes; a new member of the same group receives the rest.
pub async fn continue_after_subscriber_close<F: Fixture>(f: &F) {
    let broker = f.connect().await.expect("connect");
    let caps = broker.capabilities().clone();
    if !(caps.consumer_groups && caps.redelivers())
        && skip(
            "continue_after_subscriber_close",
            "needs consumer groups and at-least-once",
        )
    {
        return;
    }
    let topic = f.unique_topic("cont");
    let group = f.unique_group("cont");
    let mut first = broker
        .subscribe(f.subscription(&topic).group(group.clone()).max_in_flight(5))
        .await
        .expect("subscribe");
    let ids = publish_n(f, broker.as_ref(), &topic, "cc", 20).await;
    let mut done = HashSet::new();
    for _ in 0..5 {
        let d = next(
            &mut first,
            f.timeout(),
            "continue_after_subscriber_close: first member",
        )
        .await;
        done.insert(d.message.id.clone());
        d.ack().expect("ack");
    }
    first.close().await;
    let rest: HashSet<String> = ids.difference(&done).cloned().collect();
    let mut second = broker
        .subscribe(f.subscription(&topic).group(group))
        .await
        .expect("subscribe again");
    receive_all(
        &mut second,
        &rest,
        f.timeout(),
        "continue_after_subscriber_close: second member",
    )
    .await;
}

/// Many subscriptions closed concurrently while messages flow: nothing hangs.
pub async fn concurrent_close<F: Fixture>(f: &F) {
    let broker = f.connect().await.expect("connect");
    let topic = f.unique_topic("cclose");
    let mut subs = Vec::new();
    for _ in 0..10 {
        subs.push(
            broker
                .subscribe(f.subscription(&topic))
                .await
                .expect("subscribe"),
        );
    }
    let publisher = {
        let broker = broker.clone();
        let topic = topic.clone();
        let d = deadline(f);
        tokio::spawn(async move {
            for i in 0..100 {
                let _ = broker
                    .publish(&topic, &Message::new(format!("{i}")), d)
                    .await;
            }
        })
    };
    let closing = futures::future::join_all(subs.into_iter().map(|s| s.close()));
    tokio::time::timeout(f.timeout(), closing)
        .await
        .expect("closing 10 subscriptions concurrently finishes");
    tokio::time::timeout(f.timeout(), publisher)
        .await
        .expect("publishing finishes")
        .expect("publisher task");
}

/// A handler that nacks its first deliveries still gets every message.
pub async fn continue_after_errors<F: Fixture>(f: &F) {
    let broker = f.connect().await.expect("connect");
    if !broker.capabilities().redelivers()
        && skip("continue_after_errors", "the adapter is at-most-once")
    {
        return;
    }
    let topic = f.unique_topic("errors");
    let mut sub = broker
        .subscribe(f.subscription(&topic))
        .await
        .expect("subscribe");
    let ids = publish_n(f, broker.as_ref(), &topic, "ce", 10).await;
    let mut acked = HashSet::new();
    let mut failures = 0;
    while acked.len() < ids.len() {
        let d = next(&mut sub, f.timeout(), "continue_after_errors").await;
        if failures < 3 {
            failures += 1;
            d.nack().expect("nack");
        } else {
            acked.insert(d.message.id.clone());
            d.ack().expect("ack");
        }
    }
    assert_eq!(acked, ids);
}

/// Same-key messages arrive in publish order.
pub async fn order_per_key<F: Fixture>(f: &F) {
    let broker = f.connect().await.expect("connect");
    let caps = broker.capabilities().clone();
    if caps.ordering == Ordering::None && skip("order_per_key", "the adapter keeps no order") {
        return;
    }
    let topic = f.unique_topic("order");
    let mut sub = broker
        .subscribe(f.subscription(&topic))
        .await
        .expect("subscribe");
    let n = scaled(f, 100);
    for i in 0..n {
        let mut m = Message::new(i.to_string()).with_id(format!("o-{i}"));
        if caps.keys {
            m = m.with_key(format!("k{}", i % 5));
        }
        broker
            .publish(&topic, &m, deadline(f))
            .await
            .expect("publish");
    }
    let mut last: HashMap<usize, usize> = HashMap::new();
    for _ in 0..n {
        let d = next(&mut sub, f.timeout(), "order_per_key").await;
        let i: usize = std::str::from_utf8(&d.message.payload)
            .unwrap()
            .parse()
            .unwrap();
        let key = i % 5;
        if let Some(prev) = last.insert(key, i) {
            assert!(prev < i, "key k{key}: {i} arrived after {prev}");
        }
        d.ack().expect("ack");
    }
}

/// Everything published before `close` arrives; a publish after it is `Closed`.
pub async fn publisher_close_flushes<F: Fixture>(f: &F) {
    let publisher = f.connect().await.expect("connect");
    let subscriber = f.connect().await.expect("connect");
    let topic = f.unique_topic("flush");
    let mut sub = subscriber
        .subscribe(f.subscription(&topic))
        .await
        .expect("subscribe");
    // The batch comes from another connection.
    wait_until_subscribed(f, subscriber.as_ref(), &mut sub, &topic).await;
    let n = scaled(f, 100);
    let messages: Vec<Message> = (0..n)
        .map(|i| Message::new(i.to_string()).with_id(format!("fl-{i}")))
        .collect();
    let batch: Vec<Outgoing> = messages
        .iter()
        .map(|message| Outgoing {
            destination: &topic,
            message,
        })
        .collect();
    let ids: HashSet<String> = messages.iter().map(|m| m.id.clone()).collect();
    let results = publisher.publish_batch(&batch, deadline(f)).await;
    assert_eq!(results.len(), n, "one result per message");
    for r in results {
        r.expect("every publish of the batch confirmed");
    }
    publisher.close(deadline(f)).await.expect("close");
    let after = publisher
        .publish(&topic, &Message::new("late"), deadline(f))
        .await;
    assert!(
        matches!(after, Err(Error::Closed { .. })),
        "publish after close: {after:?}"
    );
    receive_all(&mut sub, &ids, f.timeout(), "publisher_close_flushes").await;
}

/// A subscriber of B never sees A's messages.
pub async fn topic_isolation<F: Fixture>(f: &F) {
    let broker = f.connect().await.expect("connect");
    let a = f.unique_topic("isoa");
    let b = f.unique_topic("isob");
    let mut sub_a = broker
        .subscribe(f.subscription(&a))
        .await
        .expect("subscribe a");
    let mut sub_b = broker
        .subscribe(f.subscription(&b))
        .await
        .expect("subscribe b");
    let ids = publish_n(f, broker.as_ref(), &a, "iso", 3).await;
    receive_all(&mut sub_a, &ids, f.timeout(), "topic_isolation: own topic").await;
    expect_nothing(
        &mut sub_b,
        f.quiet_period(),
        "topic_isolation: another topic",
    )
    .await;
}

/// Closing a stream gives its unacknowledged deliveries back to the group.
pub async fn cancellation_returns_unacked<F: Fixture>(f: &F) {
    let broker = f.connect().await.expect("connect");
    let caps = broker.capabilities().clone();
    if !(caps.consumer_groups && caps.redelivers())
        && skip(
            "cancellation_returns_unacked",
            "needs consumer groups and at-least-once",
        )
    {
        return;
    }
    let topic = f.unique_topic("cancel");
    let group = f.unique_group("cancel");
    let mut first = broker
        .subscribe(f.subscription(&topic).group(group.clone()))
        .await
        .expect("subscribe");
    let ids = publish_n(f, broker.as_ref(), &topic, "ca", 5).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(
            next(
                &mut first,
                f.timeout(),
                "cancellation_returns_unacked: first",
            )
            .await,
        );
    }
    first.close().await;
    let mut second = broker
        .subscribe(f.subscription(&topic).group(group))
        .await
        .expect("subscribe again");
    let mut seen = HashSet::new();
    while seen.len() < ids.len() {
        let d = next(
            &mut second,
            f.timeout(),
            "cancellation_returns_unacked: redelivery",
        )
        .await;
        assert!(
            d.info.redelivered,
            "a returned delivery is marked redelivered: {:?}",
            d.info
        );
        seen.insert(d.message.id.clone());
        d.ack().expect("ack");
    }
    drop(held);
}

/// A new group with `StartPosition::Earliest` reads what was published before.
pub async fn new_subscriber_replays_history<F: Fixture>(f: &F) {
    let broker = f.connect().await.expect("connect");
    if !broker.capabilities().replay
        && skip(
            "new_subscriber_replays_history",
            "the broker keeps no history",
        )
    {
        return;
    }
    let topic = f.unique_topic("replay");
    let ids = publish_n(f, broker.as_ref(), &topic, "rp", 5).await;
    let mut sub = broker
        .subscribe(
            f.subscription(&topic)
                .group(f.unique_group("replay"))
                .start(StartPosition::Earliest),
        )
        .await
        .expect("subscribe");
    receive_all(
        &mut sub,
        &ids,
        f.timeout(),
        "new_subscriber_replays_history",
    )
    .await;
}

/// The broker restarted twice during 10k messages: every message is received.
pub async fn reconnect<F: Fixture>(f: &F) {
    let broker = f.connect().await.expect("connect");
    let caps = broker.capabilities().clone();
    if !(caps.reconnect && caps.redelivers())
        && skip(
            "reconnect",
            "the adapter does not reconnect with at-least-once",
        )
    {
        return;
    }
    let topic = f.unique_topic("reconnect");
    let mut sub = broker
        .subscribe(f.subscription(&topic).group(f.unique_group("reconnect")))
        .await
        .expect("subscribe");
    let n = scaled(f, 10_000);
    let ids: HashSet<String> = (0..n).map(|i| format!("rc-{i}")).collect();
    let published = Arc::new(AtomicUsize::new(0));
    let publisher = {
        let published = published.clone();
        let broker = broker.clone();
        let topic = topic.clone();
        let timeout = f.timeout();
        tokio::spawn(async move {
            let mut retries = 0u32;
            for i in 0..n {
                loop {
                    let m = Message::new(i.to_string()).with_id(format!("rc-{i}"));
                    match broker
                        .publish(&topic, &m, polybridge_core::Deadline::after(timeout))
                        .await
                    {
                        Ok(_) => {
                            published.fetch_add(1, AtomicOrdering::Relaxed);
                            break;
                        }
                        Err(e) if e.is_retryable() => {
                            retries += 1;
                            assert!(retries < 10_000, "publish keeps failing: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => panic!("publish rc-{i}: {e}"),
                    }
                }
            }
            retries
        })
    };
    let receiver = async {
        let mut seen = HashSet::new();
        let mut total = 0usize;
        while seen.len() < n {
            let d = next(&mut sub, Duration::from_secs(60), "reconnect").await;
            total += 1;
            seen.insert(d.message.id.clone());
            d.ack().expect("ack");
        }
        (seen, total)
    };
    let restarts = async {
        for round in 1..=2 {
            // Restart once a third, then two thirds, of the messages were published.
            let threshold = n * round / 3;
            let end = tokio::time::Instant::now() + Duration::from_secs(120);
            while published.load(AtomicOrdering::Relaxed) < threshold {
                assert!(
                    tokio::time::Instant::now() < end,
                    "reconnect: publishing stalled at {}",
                    published.load(AtomicOrdering::Relaxed)
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            match f.restart_broker().await {
                Some(r) => r.unwrap_or_else(|e| panic!("restart {round}: {e}")),
                None => return false,
            }
        }
        true
    };
    let ((seen, total), restarted) = tokio::join!(receiver, restarts);
    if !restarted {
        skip("reconnect", "the fixture cannot restart its broker");
        return;
    }
    let retries = publisher.await.expect("publisher");
    assert_eq!(seen, ids);
    eprintln!(
        "reconnect: {n} sent, {} unique received, {} duplicates, {retries} publish retries",
        seen.len(),
        total - seen.len()
    );
}

/// Two groups each get every message; two members of one group share them.
pub async fn consumer_groups<F: Fixture>(f: &F) {
    let broker = f.connect().await.expect("connect");
    if !broker.capabilities().consumer_groups
        && skip("consumer_groups", "the adapter has no consumer groups")
    {
        return;
    }
    let topic = f.unique_topic("groups");
    let (g1, g2, shared) = (
        f.unique_group("g1"),
        f.unique_group("g2"),
        f.unique_group("shared"),
    );
    let mut s1 = broker
        .subscribe(f.subscription(&topic).group(g1))
        .await
        .expect("subscribe");
    let mut s2 = broker
        .subscribe(f.subscription(&topic).group(g2))
        .await
        .expect("subscribe");
    let member = || {
        f.subscription(&topic)
            .group(shared.clone())
            .max_in_flight(1)
    };
    let mut m1 = broker.subscribe(member()).await.expect("subscribe");
    let mut m2 = broker.subscribe(member()).await.expect("subscribe");
    let ids = publish_n(f, broker.as_ref(), &topic, "cg", 20).await;
    receive_all(&mut s1, &ids, f.timeout(), "consumer_groups: group 1").await;
    receive_all(&mut s2, &ids, f.timeout(), "consumer_groups: group 2").await;
    // Member 1 holds one message (its in-flight limit): member 2 must get the next one.
    let held = next(&mut m1, f.timeout(), "consumer_groups: member 1").await;
    let other = next(
        &mut m2,
        f.timeout(),
        "consumer_groups: member 2 while member 1 is busy",
    )
    .await;
    let mut seen: HashSet<String> = [held.message.id.clone(), other.message.id.clone()].into();
    held.ack().expect("ack");
    other.ack().expect("ack");
    let end = tokio::time::Instant::now() + f.timeout();
    while seen.len() < ids.len() {
        assert!(
            tokio::time::Instant::now() < end,
            "consumer_groups: members got {} of {}",
            seen.len(),
            ids.len()
        );
        tokio::select! {
            Some(Ok(d)) = m1.next() => { seen.insert(d.message.id.clone()); d.ack().expect("ack"); }
            Some(Ok(d)) = m2.next() => { seen.insert(d.message.id.clone()); d.ack().expect("ack"); }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    assert_eq!(seen, ids);
}

/// Binary, unicode and repeated header values survive.
pub async fn header_round_trip<F: Fixture>(f: &F) {
    let broker = f.connect().await.expect("connect");
    let support = broker.capabilities().headers;
    if support == HeaderSupport::None && skip("header_round_trip", "the adapter carries no headers")
    {
        return;
    }
    let topic = f.unique_topic("headers");
    let mut sub = broker
        .subscribe(f.subscription(&topic))
        .await
        .expect("subscribe");
    let binary = vec![0u8, 0xff, 0x80, b'\n', 0xc3];
    let text = Message::new("text")
        .with_id("hdr-text")
        .with_header("unicode", "ünïcødé ✓ 日本")
        .with_header("multi", "one")
        .with_header("multi", "two")
        .with_header("spaces and:colons", "a: b\\c");
    broker
        .publish(&topic, &text, deadline(f))
        .await
        .expect("publish text headers");
    let with_binary = Message::new("binary")
        .with_id("hdr-bin")
        .with_header("bin", binary.clone());
    let binary_result = broker.publish(&topic, &with_binary, deadline(f)).await;
    let expected = match binary_result {
        Ok(_) => 2,
        Err(e) if support != HeaderSupport::Binary => {
            eprintln!("header_round_trip: a binary header was refused at publish (allowed for text-only headers): {e}");
            1
        }
        Err(e) => panic!("a binary header on an adapter with binary headers: {e}"),
    };
    for _ in 0..expected {
        let d = next(&mut sub, f.timeout(), "header_round_trip").await;
        let h = &d.message.headers;
        match d.message.id.as_str() {
            "hdr-text" => {
                assert_eq!(h.get_str("unicode"), Some("ünïcødé ✓ 日本"));
                let multi: Vec<_> = h.get_all("multi").filter_map(HeaderValue::as_str).collect();
                assert_eq!(multi, ["one", "two"], "repeated values keep their order");
                assert_eq!(h.get_str("spaces and:colons"), Some("a: b\\c"));
            }
            "hdr-bin" => assert_eq!(
                h.get("bin").map(HeaderValue::as_bytes),
                Some(&binary[..]),
                "binary header bytes are never silently changed"
            ),
            other => panic!("unexpected message {other:?}"),
        }
        d.ack().expect("ack");
    }
}

/// `nack_after(d)` redelivers after about `d`, not before.
pub async fn nack_with_delay<F: Fixture>(f: &F) {
    let broker = f.connect().await.expect("connect");
    if !broker.capabilities().redelivers() && skip("nack_with_delay", "the adapter is at-most-once")
    {
        return;
    }
    let topic = f.unique_topic("delay");
    let mut sub = broker
        .subscribe(f.subscription(&topic))
        .await
        .expect("subscribe");
    publish_n(f, broker.as_ref(), &topic, "dl", 1).await;
    let d = next(&mut sub, f.timeout(), "nack_with_delay: first").await;
    let delay = Duration::from_millis(800);
    let nacked_at = tokio::time::Instant::now();
    d.nack_after(delay).expect("nack_after");
    let again = next(&mut sub, f.timeout() + delay, "nack_with_delay: redelivery").await;
    let waited = nacked_at.elapsed();
    assert_eq!(again.message.id, "dl-0");
    assert!(
        waited >= delay.mul_f64(0.9),
        "redelivered after {waited:?}, before the {delay:?} delay"
    );
    again.ack().expect("ack");
}

/// `reject(reason)` lands in the dead-letter destination with reason headers, and the
/// original is not redelivered.
pub async fn reject_to_dead_letter<F: Fixture>(f: &F) {
    let broker = f.connect().await.expect("connect");
    let caps = broker.capabilities().clone();
    if !caps.redelivers() && skip("reject_to_dead_letter", "the adapter is at-most-once") {
        return;
    }
    let topic = f.unique_topic("reject");
    let dlq = f.unique_topic("dead");
    let mut dead = broker
        .subscribe(f.subscription(&dlq))
        .await
        .expect("subscribe dead-letter");
    let mut sub = broker
        .subscribe(f.subscription(&topic).dead_letter(dlq.clone()))
        .await
        .expect("subscribe");
    publish_n(f, broker.as_ref(), &topic, "rj", 1).await;
    next(&mut sub, f.timeout(), "reject_to_dead_letter: delivery")
        .await
        .reject("cannot be processed")
        .expect("reject");
    let d = next(&mut dead, f.timeout(), "reject_to_dead_letter: dead letter").await;
    assert_eq!(&d.message.payload[..], b"0");
    if caps.headers != HeaderSupport::None {
        let h = &d.message.headers;
        assert_eq!(
            h.get_str(well_known::REJECT_REASON),
            Some("cannot be processed")
        );
        assert_eq!(h.get_str(well_known::ORIGINAL_TOPIC), Some(topic.as_str()));
        assert!(
            h.get_str(well_known::ATTEMPTS).is_some(),
            "attempts header present"
        );
    }
    d.ack().expect("ack");
    expect_nothing(
        &mut sub,
        f.quiet_period(),
        "reject_to_dead_letter: the rejected message again",
    )
    .await;
}

/// A payload of exactly the limit passes; one byte more is refused and nothing is lost.
pub async fn payload_limits<F: Fixture>(f: &F) {
    let broker = f.connect().await.expect("connect");
    let Some(limit) = f.payload_limit(broker.capabilities().max_payload) else {
        skip("payload_limits", "the adapter declares no payload limit");
        return;
    };
    if limit > 8 * 1024 * 1024 {
        skip(
            "payload_limits",
            &format!("the limit ({limit} bytes) is too large to test cheaply"),
        );
        return;
    }
    let topic = f.unique_topic("payload");
    let mut sub = broker
        .subscribe(f.subscription(&topic))
        .await
        .expect("subscribe");
    let at_limit = Message::new(vec![7u8; limit]).with_id("pl-max");
    broker
        .publish(&topic, &at_limit, deadline(f))
        .await
        .expect("a payload at the limit");
    let over = broker
        .publish(
            &topic,
            &Message::new(vec![7u8; limit + 1]).with_id("pl-over"),
            deadline(f),
        )
        .await;
    match over {
        Err(Error::PayloadTooLarge { limit: l, size, .. }) => {
            assert_eq!(size, limit + 1);
            assert!(l <= limit, "the error names the limit");
        }
        other => {
            panic!("a payload one byte over the limit: expected PayloadTooLarge, got {other:?}")
        }
    }
    broker
        .publish(
            &topic,
            &Message::new("after").with_id("pl-after"),
            deadline(f),
        )
        .await
        .expect("a normal publish after the refused one");
    // Two messages without a key: no adapter promises their order (Kafka spreads them over
    // partitions), so compare them as a set.
    let mut got = Vec::new();
    for what in ["payload_limits: first", "payload_limits: second"] {
        let d = next(&mut sub, f.timeout(), what).await;
        got.push((d.message.id.clone(), d.message.payload.len()));
        d.ack().expect("ack");
    }
    got.sort();
    assert_eq!(
        got,
        [("pl-after".to_string(), 5), ("pl-max".to_string(), limit)],
        "the message at the limit and the one after arrive; the oversize one does not"
    );
}

/// Settling after the stream closed is a `Closed` error.
pub async fn ack_after_close<F: Fixture>(f: &F) {
    let broker = f.connect().await.expect("connect");
    let topic = f.unique_topic("ackclose");
    let mut sub = broker
        .subscribe(f.subscription(&topic))
        .await
        .expect("subscribe");
    publish_n(f, broker.as_ref(), &topic, "ac", 1).await;
    let d = next(&mut sub, f.timeout(), "ack_after_close").await;
    sub.close().await;
    let result = d.ack();
    assert!(
        matches!(result, Err(Error::Closed { .. })),
        "ack after close: {result:?}"
    );
}

/// A delivery dropped without being settled is redelivered.
pub async fn dropped_delivery_is_redelivered<F: Fixture>(f: &F) {
    let broker = f.connect().await.expect("connect");
    if !broker.capabilities().redelivers()
        && skip(
            "dropped_delivery_is_redelivered",
            "the adapter is at-most-once",
        )
    {
        return;
    }
    let topic = f.unique_topic("dropped");
    let mut sub = broker
        .subscribe(f.subscription(&topic))
        .await
        .expect("subscribe");
    publish_n(f, broker.as_ref(), &topic, "dr", 1).await;
    drop(
        next(
            &mut sub,
            f.timeout(),
            "dropped_delivery_is_redelivered: first",
        )
        .await,
    );
    let again = next(
        &mut sub,
        f.timeout(),
        "dropped_delivery_is_redelivered: again",
    )
    .await;
    assert_eq!(again.message.id, "dr-0");
    assert!(again.info.redelivered);
    again.ack().expect("ack");
}
