//! JetStream subscriptions with `ack_policy=all` against a real nats-server: one ack covers
//! every message before it, so the subscription must never ack past a message still
//! unsettled, nor past one an earlier subscriber left unacknowledged.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use common::{deadline, next, subject, Server, JETSTREAM, WAIT};
use futures::StreamExt;
use polybridge_core::{Delivery, Message, Position, Publisher, Subscriber};

fn sequence(d: &Delivery) -> u64 {
    match d.info.position {
        Some(Position::Sequence(n)) => n,
        ref other => panic!("a JetStream delivery's position is its stream sequence: {other:?}"),
    }
}

/// A connection of the test's own to the server, as an operator's tool would be.
async fn operator(server: &Server) -> async_nats::jetstream::Context {
    async_nats::jetstream::new(
        async_nats::connect(server.url.trim_start_matches("nats://"))
            .await
            .unwrap(),
    )
}

/// Waits until the consumer has no message delivered and unacknowledged, and returns its
/// ack floor (stream sequence).
async fn all_acknowledged(js: &async_nats::jetstream::Context, consumer: &str) -> u64 {
    let stream = js.get_stream("PBT").await.unwrap();
    let mut consumer: PullConsumer = stream.get_consumer(consumer).await.unwrap();
    let end = tokio::time::Instant::now() + WAIT;
    loop {
        let info = consumer.info().await.unwrap();
        if info.num_ack_pending == 0 {
            return info.ack_floor.stream_sequence;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "still {} unacknowledged after {WAIT:?}",
            info.num_ack_pending
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Settled out of order, the later messages wait for the first: when it is nacked the
/// server still has it (an ack of the later ones would have covered it, and the nak would
/// find nothing to redeliver), and once it is acked, all are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_never_covers_a_message_still_unsettled() {
    let Some(server) = Server::start() else {
        return;
    };
    let js = server.connect(&format!("{JETSTREAM}&ack_policy=all")).await;
    let topic = "pbt.cumulative.order";
    let mut sub = js
        .subscribe(subject(topic).group("cumulative-order"))
        .await
        .unwrap();
    for payload in ["first", "second", "third"] {
        js.publish(topic, &Message::new(payload), deadline())
            .await
            .unwrap();
    }
    let first = next(&mut sub, "first").await;
    let second = next(&mut sub, "second").await;
    let third = next(&mut sub, "third").await;
    let last = sequence(&third);
    third.ack().unwrap();
    second.ack().unwrap();
    first.nack().unwrap();
    let again = next(&mut sub, "the nacked first message, delivered again").await;
    assert_eq!(&again.message.payload[..], b"first");
    assert_eq!(again.info.attempt, 2);
    again.ack().unwrap();
    let floor = all_acknowledged(&operator(&server).await, "cumulative-order").await;
    assert_eq!(floor, last, "all three acknowledged");
}

/// Messages settled together are acknowledged with a few acks, not one each: the acks are
/// counted on the wire by a subscriber to the consumer's ack subjects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_settled_together_take_a_few_acks_not_one_each() {
    let Some(server) = Server::start() else {
        return;
    };
    let js = server.connect(&format!("{JETSTREAM}&ack_policy=all")).await;
    let topic = "pbt.cumulative.count";
    let count = 100;
    let mut sub = js
        .subscribe(subject(topic).group("cumulative-count"))
        .await
        .unwrap();
    let watcher = async_nats::connect(server.url.trim_start_matches("nats://"))
        .await
        .unwrap();
    let mut acks = watcher
        .subscribe("$JS.ACK.PBT.cumulative-count.>")
        .await
        .unwrap();
    watcher.flush().await.unwrap();
    let batch: Vec<Message> = (0..count).map(|i| Message::new(format!("m{i}"))).collect();
    for message in &batch {
        js.publish(topic, message, deadline()).await.unwrap();
    }
    let mut deliveries = Vec::new();
    for i in 0..count {
        deliveries.push(next(&mut sub, &format!("message {i}")).await);
    }
    for d in deliveries {
        d.ack().unwrap();
    }
    let js_operator = operator(&server).await;
    all_acknowledged(&js_operator, "cumulative-count").await;
    // The server forwards each ack to the watcher as it takes it in, so all were forwarded
    // by now; a round trip on the watcher's connection brings them all in.
    watcher.flush().await.unwrap();
    let mut seen = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), acks.next()).await {
        seen += 1;
    }
    assert!(seen >= 1, "at least one ack");
    assert!(
        seen <= count / 2,
        "{seen} acks for {count} messages settled together"
    );
}

/// A subscriber that stopped without settling left messages unacknowledged: the next one,
/// with ack policy all, must not ack a newer message before they are back (the ack would
/// cover them and they would be lost), and gets them after `ack_wait`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_an_earlier_subscriber_left_unacknowledged_are_not_covered_by_a_newer_ack() {
    let Some(server) = Server::start() else {
        return;
    };
    let js = server
        .connect(&format!(
            "{}&ack_policy=all",
            JETSTREAM.replace("ack_wait=5s", "ack_wait=1s")
        ))
        .await;
    let topic = "pbt.cumulative.owed";
    let group = "cumulative-owed";
    for payload in ["left one", "left two"] {
        js.publish(topic, &Message::new(payload), deadline())
            .await
            .unwrap();
    }
    // The earlier subscriber: takes both and stops without a word.
    let earlier = operator(&server).await;
    let stream = earlier.get_stream("PBT").await.unwrap();
    let consumer: PullConsumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(group.into()),
            filter_subject: topic.into(),
            ack_policy: AckPolicy::All,
            ack_wait: Duration::from_secs(1),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut taken = consumer.fetch().max_messages(2).messages().await.unwrap();
    for _ in 0..2 {
        taken.next().await.unwrap().unwrap();
    }
    drop(taken);
    let mut sub = js.subscribe(subject(topic).group(group)).await.unwrap();
    js.publish(topic, &Message::new("newer"), deadline())
        .await
        .unwrap();
    let mut payloads = Vec::new();
    for i in 0..3 {
        let d = next(&mut sub, &format!("delivery {i}")).await;
        payloads.push(String::from_utf8(d.message.payload.to_vec()).unwrap());
        d.ack().unwrap();
    }
    payloads.sort();
    assert_eq!(payloads, ["left one", "left two", "newer"]);
    all_acknowledged(&earlier, group).await;
}

/// A consumer made with explicit acks is not read with ack policy all, or the other way
/// round: the error says which policy it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_with_the_other_ack_policy_is_refused() {
    let Some(server) = Server::start() else {
        return;
    };
    let explicit = server.connect(JETSTREAM).await;
    let all = server.connect(&format!("{JETSTREAM}&ack_policy=all")).await;
    let topic = "pbt.cumulative.mixed";
    drop(
        explicit
            .subscribe(subject(topic).group("mixed"))
            .await
            .unwrap(),
    );
    let e = match all.subscribe(subject(topic).group("mixed")).await {
        Ok(_) => panic!("an explicit consumer read with ack_policy=all"),
        Err(e) => e,
    };
    assert!(
        e.to_string().contains("ack policy Explicit"),
        "the error names the consumer's policy: {e}"
    );
}

/// One subscription at a time reads a consumer with ack policy all: a second one of the
/// same connection is refused while the first runs, and the next one, once it has closed,
/// gets what it left unsettled (the one in flight, and the one settled behind it, which no
/// ack could cover yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_subscriber_at_a_time_and_the_next_gets_what_the_last_left_unsettled() {
    let Some(server) = Server::start() else {
        return;
    };
    let js = server
        .connect(&format!("{JETSTREAM}&ack_policy=all&fetch_wait=200ms"))
        .await;
    let topic = "pbt.cumulative.handover";
    let group = "cumulative-handover";
    let mut first = js.subscribe(subject(topic).group(group)).await.unwrap();
    let refused = match js.subscribe(subject(topic).group(group)).await {
        Ok(_) => panic!("a second subscription to the group"),
        Err(e) => e,
    };
    assert!(
        refused.to_string().contains("one subscriber only"),
        "{refused}"
    );
    for payload in ["done", "held", "done behind held"] {
        js.publish(topic, &Message::new(payload), deadline())
            .await
            .unwrap();
    }
    next(&mut first, "done").await.ack().unwrap();
    let held = next(&mut first, "held").await;
    next(&mut first, "done behind held").await.ack().unwrap();
    first.close().await;
    drop(held);
    let mut second = js.subscribe(subject(topic).group(group)).await.unwrap();
    let mut payloads = Vec::new();
    for i in 0..2 {
        let d = next(&mut second, &format!("delivery {i} to the next subscriber")).await;
        payloads.push(String::from_utf8(d.message.payload.to_vec()).unwrap());
        d.ack().unwrap();
    }
    payloads.sort();
    assert_eq!(payloads, ["done behind held", "held"]);
    all_acknowledged(&operator(&server).await, group).await;
}
