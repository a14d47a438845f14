//! MQTT-specific behaviour against a real Mosquitto (and the RabbitMQ MQTT plugin for auth):
//! a publish resolves only on the broker's PUBACK, unacked messages come back after a client
//! crash, out-of-order acks never acknowledge a message early, shared groups survive a
//! broker restart, connections of one process never share a client id, and a refused
//! login is an auth error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{client_id, Server};
use polybridge_core::{
    Deadline, Delivery, DeliveryStream, Error, Message, Publisher, Subscriber, Subscription,
    TopicPattern,
};
use polybridge_testkit::{BrokerKind, Endpoint};

const WAIT: Duration = Duration::from_secs(15);

fn deadline() -> Deadline {
    Deadline::after(WAIT)
}

fn on(topic: &str) -> Subscription {
    Subscription::new(TopicPattern::literal(topic, '/'))
}

fn topic(hint: &str) -> String {
    format!("pbt/{hint}/{}", client_id("t"))
}

async fn next(stream: &mut DeliveryStream, what: &str) -> Delivery {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {WAIT:?}"))
        .unwrap_or_else(|| panic!("{what}: stream ended"))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Receives until the ids in `want` all arrived; returns every id seen, duplicates included.
async fn receive_ids(stream: &mut DeliveryStream, want: &[&str], what: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let mut missing: HashSet<&str> = want.iter().copied().collect();
    while !missing.is_empty() {
        let d = next(stream, what).await;
        missing.remove(d.message.id.as_str());
        seen.push(d.message.id.clone());
        d.ack().unwrap();
    }
    seen
}

/// Runs `hold` in a runtime of its own, then drops that runtime: its tasks die without
/// acking or disconnecting, as in a crashed process.
fn crash_holding(url: String, topic: String, group: &'static str, take: usize) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let broker = polybridge_mqtt::MqttBroker::connect(&url.parse().unwrap())
                .await
                .unwrap();
            let mut stream = broker.subscribe(on(&topic).group(group)).await.unwrap();
            ready_publish(&broker, &topic, take).await;
            let mut held = Vec::new();
            for _ in 0..take {
                held.push(next(&mut stream, "the consumer that crashes").await);
            }
            std::mem::forget(held);
            std::mem::forget(stream);
        });
        drop(rt);
    })
    .join()
    .unwrap();
}

async fn ready_publish(broker: &polybridge_mqtt::MqttBroker, topic: &str, n: usize) {
    for i in 0..n {
        broker
            .publish(
                topic,
                &Message::new(format!("m{i}")).with_id(format!("m{i}")),
                deadline(),
            )
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_stays_pending_while_the_broker_is_frozen() {
    let Some(server) = Server::start() else {
        return;
    };
    let Some(process) = server.process.clone() else {
        eprintln!("skipped: needs a broker started by the harness");
        return;
    };
    let options = format!("version=5&client_id={}", client_id("frozen"));
    let broker = std::sync::Arc::new(server.connect(&options).await);
    let topic = topic("frozen");
    let mut stream = broker.subscribe(on(&topic)).await.unwrap();

    process.lock().unwrap().pause().unwrap();
    let publishing = {
        let broker = broker.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            broker
                .publish(
                    &topic,
                    &Message::new("held").with_id("held"),
                    Deadline::after(Duration::from_secs(60)),
                )
                .await
        })
    };
    // The broker cannot have answered: the publish must still be waiting for its PUBACK.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !publishing.is_finished(),
        "publish resolved while the broker was frozen: {:?}",
        publishing.await
    );
    process.lock().unwrap().resume().unwrap();
    tokio::time::timeout(WAIT, publishing)
        .await
        .expect("publish resolves once the broker answers")
        .unwrap()
        .expect("publish succeeds");
    let d = next(&mut stream, "the held message").await;
    assert_eq!(d.message.id, "held");
    d.ack().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_messages_come_back_after_a_client_crash() {
    let Some(server) = Server::start() else {
        return;
    };
    for version in ["5", "3.1.1&format=envelope"] {
        let options = format!("version={version}&client_id={}", client_id("crash"));
        let url = server.url_with(&options);
        let topic = topic("crash");
        // The crashed consumer held m0..m2 without acking them.
        crash_holding(url.clone(), topic.clone(), "workers", 3);

        let broker = server.connect(&options).await;
        let mut stream = broker.subscribe(on(&topic).group("workers")).await.unwrap();
        let mut redelivered = Vec::new();
        for _ in 0..3 {
            let d = next(&mut stream, "a redelivery").await;
            redelivered.push((d.message.id.clone(), d.info.redelivered, d.info.attempt));
            d.ack().unwrap();
        }
        redelivered.sort();
        let ids: Vec<&str> = redelivered.iter().map(|(id, _, _)| id.as_str()).collect();
        assert_eq!(ids, ["m0", "m1", "m2"], "version {version}");
        assert!(
            redelivered
                .iter()
                .all(|(_, again, attempt)| *again && *attempt >= 2),
            "version {version}: redeliveries say so: {redelivered:?}"
        );
        broker.close(deadline()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_acks_never_acknowledge_an_earlier_message() {
    let Some(server) = Server::start() else {
        return;
    };
    let options = format!("version=5&client_id={}", client_id("order"));
    let topic = topic("order");
    {
        let broker = server.connect(&options).await;
        let mut stream = broker
            .subscribe(on(&topic).group("ordered").max_in_flight(10))
            .await
            .unwrap();
        ready_publish(&broker, &topic, 3).await;
        let first = next(&mut stream, "m0").await;
        let second = next(&mut stream, "m1").await;
        let third = next(&mut stream, "m2").await;
        assert_eq!(
            [&first.message.id, &second.message.id, &third.message.id],
            ["m0", "m1", "m2"]
        );
        // m1 and m2 are done, m0 is not: MQTT acknowledges in arrival order, so nothing may
        // be acknowledged to the broker yet.
        third.ack().unwrap();
        second.ack().unwrap();
        drop(first);
        stream.close().await;
        broker.close(deadline()).await.unwrap();
    }
    {
        let broker = server.connect(&options).await;
        let mut stream = broker.subscribe(on(&topic).group("ordered")).await.unwrap();
        let again = receive_ids(&mut stream, &["m0", "m1", "m2"], "after out-of-order acks").await;
        assert_eq!(again.len(), 3, "all three come back: {again:?}");
        // Now all acked in order: a new session sees only what is published next.
        broker
            .publish(
                &topic,
                &Message::new("marker").with_id("marker"),
                deadline(),
            )
            .await
            .unwrap();
        let marker = receive_ids(&mut stream, &["marker"], "the marker").await;
        assert_eq!(marker, ["marker"]);
        stream.close().await;
        broker.close(deadline()).await.unwrap();
    }
    let broker = server.connect(&options).await;
    let mut stream = broker.subscribe(on(&topic).group("ordered")).await.unwrap();
    broker
        .publish(&topic, &Message::new("last").with_id("last"), deadline())
        .await
        .unwrap();
    let rest = receive_ids(&mut stream, &["last"], "after in-order acks").await;
    assert_eq!(rest, ["last"], "nothing acked came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_group_receives_again_after_a_broker_restart() {
    let Some(server) = Server::start() else {
        return;
    };
    if server.process.is_none() {
        eprintln!("skipped: needs a broker started by the harness");
        return;
    }
    let options = format!("version=5&client_id={}", client_id("share"));
    let broker = server.connect(&options).await;
    let topic = topic("share");
    let mut stream = broker.subscribe(on(&topic).group("sharers")).await.unwrap();
    ready_publish(&broker, &topic, 1).await;
    next(&mut stream, "before the restart").await.ack().unwrap();

    server.restart().await.unwrap().unwrap();
    // Mosquitto 2.0.11 forgets `$share/` subscriptions on restart; the adapter subscribes
    // again as soon as it reconnects. Publish probes until one arrives.
    let end = tokio::time::Instant::now() + WAIT;
    let mut i = 0;
    loop {
        assert!(
            tokio::time::Instant::now() < end,
            "no probe arrived after the restart"
        );
        match broker
            .publish(
                &topic,
                &Message::new("probe").with_id(format!("probe-{i}")),
                deadline(),
            )
            .await
        {
            Ok(_) | Err(Error::Transient { .. }) => {}
            Err(e) => panic!("publish after restart: {e}"),
        }
        i += 1;
        if let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(200), stream.next()).await {
            let d = d.unwrap();
            assert!(d.message.id.starts_with("probe-"), "got {}", d.message.id);
            d.ack().unwrap();
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_connections_with_one_client_id_in_a_process_do_not_clash() {
    let Some(server) = Server::start() else {
        return;
    };
    let options = format!("version=5&client_id={}", client_id("twice"));
    let topic = topic("twice");
    let one = server.connect(&options).await;
    let two = server.connect(&options).await;
    let mut first = one.subscribe(on(&topic).group("same")).await.unwrap();
    let mut second = two.subscribe(on(&topic)).await.unwrap();
    ready_publish(&one, &topic, 1).await;
    two.publish(&topic, &Message::new("x").with_id("m1"), deadline())
        .await
        .unwrap();
    let a = receive_ids(&mut first, &["m0", "m1"], "the group member").await;
    let b = receive_ids(&mut second, &["m0", "m1"], "the plain subscriber").await;
    assert_eq!((a.len(), b.len()), (2, 2), "{a:?} {b:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_an_auth_error() {
    if polybridge_testkit::skip_reason(BrokerKind::RabbitMq).is_some() {
        return;
    }
    let rabbit = polybridge_testkit::shared(BrokerKind::RabbitMq).unwrap();
    let url = rabbit.url(Endpoint::Mqtt).unwrap();
    let port = url.rsplit(':').next().unwrap().trim_end_matches('/');
    let bad = format!("mqtt://nobody:wrong@127.0.0.1:{port}?version=3.1.1");
    let error = polybridge_mqtt::MqttBroker::connect(&bad.parse().unwrap())
        .await
        .expect_err("wrong password is refused");
    assert!(matches!(error, Error::Auth { .. }), "{error:?}");
    assert!(
        !error.to_string().contains("wrong"),
        "the password leaks: {error}"
    );
}

/// Mosquitto 2.0.11 sends more unacknowledged messages than the Receive Maximum while it
/// drains a queued backlog; the session then stops reading until its own backlog drains
/// (bounded memory). Whatever the broker does, every message arrives once, in order, and the
/// acknowledgements keep flowing (they must never wait on a client that is not polled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_backlog_arrives_whole_and_in_order_with_a_small_window() {
    let Some(server) = Server::start() else {
        return;
    };
    let topic = topic("backlog");
    let subscriber = server
        .connect(&format!("version=5&client_id={}", client_id("backlog-sub")))
        .await;
    let mut stream = subscriber
        .subscribe(on(&topic).group("backlog").max_in_flight(8))
        .await
        .unwrap();
    let publisher = server
        .connect(&format!("version=5&client_id={}", client_id("backlog-pub")))
        .await;
    // Queued on the broker while the subscriber holds its first 8 unacknowledged.
    let n = 3000;
    ready_publish(&publisher, &topic, n).await;
    for i in 0..n {
        let d = next(&mut stream, &format!("message {i} of {n}")).await;
        assert_eq!(d.message.id, format!("m{i}"), "arrival order");
        d.ack().unwrap();
    }
    // Nothing is left over or sent twice.
    publisher
        .publish(&topic, &Message::new("end").with_id("end"), deadline())
        .await
        .unwrap();
    let end = next(&mut stream, "the end marker").await;
    assert_eq!(end.message.id, "end");
    end.ack().unwrap();
    stream.close().await;
    subscriber.close(deadline()).await.unwrap();
}
