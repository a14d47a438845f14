//! RabbitMQ-specific behaviour against a real broker:
//! - unroutable publishes and unknown exchanges are errors naming them;
//! - broker restarts (twice during 10k messages) and a frozen broker lose nothing
//!   confirmed, and acks of deliveries from a lost channel are dropped (redelivered);
//! - rejected messages reach the dead-letter queue with their reason, or the broker's
//!   dead-letter exchange natively; declared topology is idempotent and conflicts are clear;
//! - prefetch and the in-flight limit bound what is delivered; quorum queues count attempts;
//! - wildcard subscriptions fan out through the topic exchange;
//! - the pika tutorial's queue `hello` works both ways, and a pika RPC client gets its reply;
//! - wrong credentials, unknown vhosts, missing queues and exchanges, deleted queues and
//!   oversized payloads give clear errors; AMQP properties travel.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::Server;
use polybridge_amqp::AmqpBroker;
use polybridge_conformance::Fixture;
use polybridge_core::{
    well_known, Broker, Deadline, Delivery, DeliveryStream, Error, HeaderValue, Message, Publisher,
    Result, Subscriber, Subscription, TopicPattern,
};

const WAIT: Duration = Duration::from_secs(20);

fn deadline() -> Deadline {
    Deadline::after(WAIT)
}

fn on(topic: &str) -> Subscription {
    Subscription::new(TopicPattern::literal(topic, '.'))
}

fn unique(hint: &str) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "amqpt.{hint}.{}x{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

async fn next(stream: &mut DeliveryStream, what: &str) -> Delivery {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {WAIT:?}"))
        .unwrap_or_else(|| panic!("{what}: stream ended"))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

async fn nothing_for(stream: &mut DeliveryStream, period: Duration, what: &str) {
    if let Ok(Some(d)) = tokio::time::timeout(period, stream.next()).await {
        panic!(
            "{what}: expected nothing, got {:?}",
            d.map(|d| d.message.id)
        );
    }
}

/// Acks `d` and returns its message id.
fn acked(d: Delivery) -> String {
    let id = d.message.id.clone();
    d.ack().unwrap();
    id
}

/// Runs a Python script with pika against `url`; returns its stdout.
fn pika(script: &str, url: &str) -> String {
    let python = polybridge_testkit::python().expect("python with pika");
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(url)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "pika script failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_publishes_and_unknown_exchanges_are_errors() {
    let Some(server) = Server::shared() else {
        return;
    };
    let broker = server.connect("").await;
    let topic = unique("nobody");
    let e = broker
        .publish(&topic, &Message::new("lost?"), deadline())
        .await
        .expect_err("a message no queue receives is an error");
    let text = e.to_string();
    eprintln!("unroutable: {text}");
    assert!(matches!(e, Error::Permanent { .. }), "{e:?}");
    assert!(
        text.contains("unroutable") && text.contains("amq.topic") && text.contains(&topic),
        "{text}"
    );
    let e = broker
        .publish(
            "exchange:no-such-exchange/x",
            &Message::new("x"),
            deadline(),
        )
        .await
        .expect_err("an unknown exchange is an error");
    assert!(matches!(e, Error::Permanent { .. }), "{e:?}");
    eprintln!("unknown exchange: {e}");
    assert!(e.to_string().contains("no-such-exchange"), "{e}");
    // The publishing channel the broker closed is replaced: the next publish works.
    let topic = unique("after");
    let mut sub = broker.subscribe(on(&topic)).await.unwrap();
    broker
        .publish(&topic, &Message::new("ok").with_id("after"), deadline())
        .await
        .expect("a publish after the refused ones");
    next(&mut sub, "after the refused ones")
        .await
        .ack()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_messages_reach_the_dead_letter_queue_with_their_reason() {
    let Some(server) = Server::shared() else {
        return;
    };
    let broker = server.connect("").await;
    let topic = unique("work");
    let dlq = unique("dlq").replace('.', "-");
    // The dead-letter queue is a named, declared queue; rejects go there via `queue:NAME`.
    let mut dead = broker
        .subscribe(on(&format!("queue:{dlq}")).option("declare", "true"))
        .await
        .expect("declare and consume the dead-letter queue");
    let mut work = broker
        .subscribe(
            on(&topic)
                .group("workers")
                .dead_letter(format!("queue:{dlq}")),
        )
        .await
        .unwrap();
    let bin = vec![0u8, 0xff, 7];
    broker
        .publish(
            &topic,
            &Message::new("poison")
                .with_id("p-1")
                .with_header("bin", bin.clone()),
            deadline(),
        )
        .await
        .unwrap();
    let d = next(&mut work, "the poison message").await;
    d.nack().unwrap();
    let d = next(&mut work, "the poison message again").await;
    assert!(d.info.redelivered);
    d.reject("schema mismatch").unwrap();
    let d = next(&mut dead, "the dead letter").await;
    assert_eq!(d.message.id, "p-1");
    assert_eq!(&d.message.payload[..], b"poison");
    let h = &d.message.headers;
    assert_eq!(
        h.get_str(well_known::REJECT_REASON),
        Some("schema mismatch")
    );
    assert_eq!(h.get_str(well_known::ORIGINAL_TOPIC), Some(topic.as_str()));
    assert!(h.get_str(well_known::ATTEMPTS).is_some());
    assert_eq!(
        h.get("bin"),
        Some(&HeaderValue::Binary(bin.into())),
        "the original headers travel unchanged"
    );
    assert_eq!(d.info.topic, dlq, "published through the default exchange");
    d.ack().unwrap();
    nothing_for(
        &mut work,
        Duration::from_millis(500),
        "the rejected message is not redelivered",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_bounds_unacknowledged_deliveries() {
    let Some(server) = Server::shared() else {
        return;
    };
    let broker = server.connect("").await;
    let topic = unique("prefetch");
    let mut sub = broker
        .subscribe(on(&topic).group("pf").max_in_flight(4))
        .await
        .unwrap();
    let n = 40;
    for i in 0..n {
        broker
            .publish(
                &topic,
                &Message::new(i.to_string()).with_id(format!("pf-{i}")),
                deadline(),
            )
            .await
            .unwrap();
    }
    let mut seen = HashSet::new();
    while seen.len() < n {
        let mut held = Vec::new();
        for _ in 0..4.min(n - seen.len()) {
            held.push(next(&mut sub, "a delivery within the prefetch").await);
        }
        if seen.len() + held.len() < n {
            nothing_for(
                &mut sub,
                Duration::from_millis(300),
                "a 5th delivery while 4 are unacknowledged",
            )
            .await;
        }
        for d in held {
            assert!(
                seen.insert(d.message.id.clone()),
                "duplicate {}",
                d.message.id
            );
            d.ack().unwrap();
        }
    }
    // The URL's `prefetch` overrides the in-flight limit.
    let broker = server.connect("prefetch=2").await;
    let topic = unique("prefetch2");
    let mut sub = broker
        .subscribe(on(&topic).max_in_flight(100))
        .await
        .unwrap();
    for i in 0..5 {
        broker
            .publish(&topic, &Message::new(i.to_string()), deadline())
            .await
            .unwrap();
    }
    let a = next(&mut sub, "first").await;
    let b = next(&mut sub, "second").await;
    nothing_for(
        &mut sub,
        Duration::from_millis(300),
        "a 3rd with prefetch=2",
    )
    .await;
    a.ack().unwrap();
    b.ack().unwrap();
    next(&mut sub, "the 3rd after acks").await.ack().unwrap();
    // A larger prefetch does not lift the in-flight limit.
    let broker = server.connect("prefetch=50").await;
    let topic = unique("prefetch3");
    let mut sub = broker.subscribe(on(&topic).max_in_flight(2)).await.unwrap();
    for i in 0..5 {
        broker
            .publish(&topic, &Message::new(i.to_string()), deadline())
            .await
            .unwrap();
    }
    let a = next(&mut sub, "first").await;
    let b = next(&mut sub, "second").await;
    nothing_for(
        &mut sub,
        Duration::from_millis(300),
        "a 3rd with max_in_flight=2 and prefetch=50",
    )
    .await;
    a.ack().unwrap();
    next(&mut sub, "the 3rd after an ack").await.ack().unwrap();
    b.ack().unwrap();
}

const PIKA_PUBLISH: &str = r#"
import sys, pika
connection = pika.BlockingConnection(pika.URLParameters(sys.argv[1]))
channel = connection.channel()
channel.queue_declare(queue='hello')
channel.basic_publish(exchange='', routing_key='hello', body='Hello, World!')
print(" [x] Sent 'Hello, World!'")
connection.close()
"#;

const PIKA_RECEIVE: &str = r#"
import sys, time, pika
connection = pika.BlockingConnection(pika.URLParameters(sys.argv[1]))
channel = connection.channel()
channel.queue_declare(queue='hello')
end = time.time() + 20
while time.time() < end:
    method, properties, body = channel.basic_get(queue='hello', auto_ack=True)
    if method:
        h = properties.headers or {}
        print(body.decode(), h.get('lang'), h.get('raw').hex(), properties.message_id, properties.delivery_mode)
        break
    time.sleep(0.05)
connection.close()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pika_tutorial_queue_hello_works_both_ways() {
    let Some(server) = Server::shared() else {
        return;
    };
    let url = server.url.clone();
    let sent = tokio::task::spawn_blocking(move || pika(PIKA_PUBLISH, &url))
        .await
        .unwrap();
    assert!(sent.contains("Sent"), "{sent}");
    // pika declared `hello` (not durable); polybridge consumes it as it is.
    let broker = server.connect("").await;
    let mut hello = broker.subscribe(on("queue:hello")).await.unwrap();
    let d = next(&mut hello, "pika's Hello, World!").await;
    assert_eq!(&d.message.payload[..], b"Hello, World!");
    assert_eq!(d.info.topic, "hello");
    d.ack().unwrap();
    hello.close().await;
    // Declaring it again as durable conflicts with pika's declaration: a clear error.
    let e = broker
        .subscribe(on("queue:hello").option("declare", "true"))
        .await
        .expect_err("a conflicting declaration");
    let text = e.to_string();
    eprintln!("conflict: {text}");
    assert!(
        text.contains("PRECONDITION_FAILED") && text.contains("hello") && text.contains("durable"),
        "{text}"
    );
    // The other way: polybridge publishes into `hello`, pika reads it.
    broker
        .publish(
            "queue:hello",
            &Message::new("Hello from polybridge")
                .with_id("pb-1")
                .with_header("lang", "rust")
                .with_header("raw", vec![0u8, 0xfe]),
            deadline(),
        )
        .await
        .unwrap();
    let url = server.url.clone();
    let got = tokio::task::spawn_blocking(move || pika(PIKA_RECEIVE, &url))
        .await
        .unwrap();
    assert_eq!(
        got.trim(),
        "Hello from polybridge rust 00fe pb-1 2",
        "{got}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_vhosts_and_queues_give_clear_errors() {
    let Some(server) = Server::shared() else {
        return;
    };
    let wrong = server.url.replace("guest:guest@", "guest:wrong-secret@");
    let e = AmqpBroker::connect(&wrong.parse().unwrap())
        .await
        .err()
        .expect("a wrong password is refused");
    assert!(matches!(e, Error::Auth { .. }), "{e:?}");
    let text = e.to_string();
    eprintln!("auth: {text}");
    assert!(
        text.contains("guest") && !text.contains("wrong-secret"),
        "{text}"
    );

    let no_vhost = server.url.replace("/%2f", "/no-such-vhost");
    let e = AmqpBroker::connect(&no_vhost.parse().unwrap())
        .await
        .err()
        .expect("an unknown vhost is refused");
    eprintln!("vhost: {e}");
    assert!(e.to_string().contains("no-such-vhost"), "{e}");
    assert!(!e.is_retryable(), "{e:?}");

    let broker = server.connect("").await;
    let e = broker
        .subscribe(on("queue:no-such-queue"))
        .await
        .expect_err("a missing queue");
    assert!(matches!(e, Error::Permanent { .. }), "{e:?}");
    eprintln!("missing queue: {e}");
    assert!(e.to_string().contains("no-such-queue"), "{e}");
    let e = broker
        .subscribe(on("a.b").option("exchange", "no-such-exchange"))
        .await
        .expect_err("binding to a missing exchange");
    eprintln!("missing exchange: {e}");
    assert!(matches!(e, Error::Permanent { .. }), "{e:?}");
    assert!(e.to_string().contains("no-such-exchange"), "{e}");
    let e = broker
        .subscribe(on("a.b").option("bogus", "1"))
        .await
        .expect_err("an unknown option");
    assert!(e.to_string().contains("bogus"), "{e}");
}

/// A fixture for single conformance tests: a private broker the `reconnect` test can
/// restart, or the shared one with URL options.
struct PrivateFixture {
    server: Option<Server>,
    options: &'static str,
}

#[async_trait]
impl Fixture for PrivateFixture {
    async fn connect(&self) -> Result<Arc<dyn Broker>> {
        let server = self.server.as_ref().expect("a broker");
        Ok(Arc::new(
            AmqpBroker::connect(&server.url_with(self.options).parse()?).await?,
        ))
    }

    async fn restart_broker(&self) -> Option<Result<()>> {
        self.server.as_ref()?.restart().await
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(60)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restarts_and_freezes_lose_nothing_confirmed_and_stale_acks_are_dropped() {
    let fixture = PrivateFixture {
        server: Server::private(),
        options: "",
    };
    let Some(server) = &fixture.server else {
        return;
    };
    // A delivery held across a restart: acking it afterwards is accepted but not sent on
    // the new channel, and the broker redelivers it.
    let broker = server.connect("").await;
    let topic = unique("stale");
    let mut sub = broker.subscribe(on(&topic).group("stale")).await.unwrap();
    broker
        .publish(&topic, &Message::new("held").with_id("held-1"), deadline())
        .await
        .unwrap();
    let held = next(&mut sub, "before the restart").await;
    server.restart().await.unwrap().unwrap();
    let again = tokio::time::timeout(Duration::from_secs(60), sub.next())
        .await
        .expect("redelivered after the restart")
        .unwrap()
        .unwrap();
    assert_eq!(again.message.id, "held-1");
    held.ack().expect("a stale ack is accepted (and dropped)");
    assert!(again.info.redelivered, "{:?}", again.info);
    again.ack().unwrap();
    nothing_for(&mut sub, Duration::from_millis(500), "after the ack").await;
    sub.close().await;
    // A frozen broker: missed heartbeats end the connection, and after the broker thaws the
    // publisher and the subscription carry on over a new one.
    let frozen = server.connect("heartbeat=1s").await;
    let topic = unique("frozen");
    let mut sub = frozen.subscribe(on(&topic).group("frozen")).await.unwrap();
    server.freeze(true);
    tokio::time::sleep(Duration::from_secs(5)).await; // how long the fault lasts
    server.freeze(false);
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = frozen
            .publish(
                &topic,
                &Message::new("thawed").with_id("thawed-1"),
                Deadline::after(Duration::from_secs(5)),
            )
            .await;
        match r {
            Ok(_) => break,
            Err(e) if e.is_retryable() && tokio::time::Instant::now() < end => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("publish after the broker thawed: {e}"),
        }
    }
    let d = tokio::time::timeout(Duration::from_secs(60), sub.next())
        .await
        .expect("a delivery after the broker thawed")
        .unwrap()
        .unwrap();
    assert_eq!(d.message.id, "thawed-1");
    d.ack().unwrap();
    sub.close().await;
    // The conformance test: two restarts during 10k confirmed messages, all received.
    polybridge_conformance::tests::reconnect(&fixture).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_topology_and_native_dead_lettering() {
    let Some(server) = Server::shared() else {
        return;
    };
    let id = format!("{}", std::process::id());
    let (dlx, dead) = (format!("pbx-dlx-{id}"), format!("pbx-dead-{id}"));
    let options = format!(
        "declare_exchanges={dlx}:fanout&declare_queues={dead}&declare_bindings={dead}:{dlx}:&dead_letter_exchange={dlx}"
    );
    let broker = server.connect(&options).await;
    // Declaring the same topology again is idempotent.
    let again = server.connect(&options).await;
    let mut dead_sub = again.subscribe(on(&format!("queue:{dead}"))).await.unwrap();
    let topic = unique("native");
    // The group queue gets `x-dead-letter-exchange`; rejecting without a dead-letter
    // destination lets the broker dead-letter it.
    let mut work = broker
        .subscribe(on(&topic).group(format!("native-{id}")))
        .await
        .unwrap();
    broker
        .publish(&topic, &Message::new("bad").with_id("n-1"), deadline())
        .await
        .unwrap();
    next(&mut work, "the message").await.reject("bad").unwrap();
    let d = next(&mut dead_sub, "the natively dead-lettered message").await;
    assert_eq!(d.message.id, "n-1");
    assert_eq!(
        d.message.headers.get_str("x-first-death-reason"),
        Some("rejected"),
        "{:?}",
        d.message.headers
    );
    d.ack().unwrap();
    // A declaration that conflicts with the existing queue names it and the argument.
    let conflicting = server.url_with(&format!("declare_queues={dead}&durable=false"));
    let e = AmqpBroker::connect(&conflicting.parse().unwrap())
        .await
        .err()
        .expect("a conflicting declaration");
    let text = e.to_string();
    eprintln!("topology conflict: {text}");
    assert!(matches!(e, Error::Permanent { .. }), "{e:?}");
    assert!(
        text.contains("PRECONDITION_FAILED") && text.contains(&dead) && text.contains("durable"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queues_count_attempts() {
    let Some(server) = Server::shared() else {
        return;
    };
    let broker = server.connect("queue_type=quorum").await;
    let topic = unique("quorum");
    let dlq = unique("quorum-dead").replace('.', "-");
    let mut dead = broker
        .subscribe(on(&format!("queue:{dlq}")).option("declare", "true"))
        .await
        .unwrap();
    let mut sub = broker
        .subscribe(on(&topic).group("q").dead_letter(format!("queue:{dlq}")))
        .await
        .unwrap();
    broker
        .publish(&topic, &Message::new("x").with_id("q-1"), deadline())
        .await
        .unwrap();
    for attempt in 1..=2 {
        let d = next(&mut sub, "a delivery").await;
        assert_eq!(d.info.attempt, attempt, "{:?}", d.info);
        assert_eq!(d.info.redelivered, attempt > 1, "{:?}", d.info);
        d.nack().unwrap();
    }
    let d = next(&mut sub, "the third delivery").await;
    assert_eq!(d.info.attempt, 3, "{:?}", d.info);
    d.reject("gave up").unwrap();
    let d = next(&mut dead, "the dead letter").await;
    assert_eq!(d.message.headers.get_str(well_known::ATTEMPTS), Some("3"));
    d.ack().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_subscriptions_and_refuses_publishes() {
    let Some(server) = Server::shared() else {
        return;
    };
    let broker = server.connect("").await;
    let topic = unique("shutdown");
    let mut sub = broker.subscribe(on(&topic)).await.unwrap();
    broker.shutdown().await;
    let e = broker
        .publish(&topic, &Message::new("late"), deadline())
        .await
        .expect_err("publish after shutdown");
    assert!(matches!(e, Error::Closed { .. }), "{e:?}");
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match sub.next().await {
                None => return,
                Some(Err(e)) => {
                    assert!(matches!(e, Error::Closed { .. }), "{e:?}");
                }
                Some(Ok(d)) => panic!("unexpected delivery {:?}", d.message.id),
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the subscription ends after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_over_the_configured_limit_are_refused() {
    let fixture = PrivateFixture {
        server: Server::shared(),
        options: "max_payload=65536",
    };
    if fixture.server.is_none() {
        return;
    }
    // Exactly the limit passes, one byte more is PayloadTooLarge and nothing is lost.
    polybridge_conformance::tests::payload_limits(&fixture).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_subscriptions_fan_out_through_the_topic_exchange() {
    let Some(server) = Server::shared() else {
        return;
    };
    let broker = server.connect("").await;
    let root = unique("wild").replace('.', "_");
    let pattern = |p: &str| Subscription::new(format!("{root}.{p}").parse().unwrap());
    let mut one = broker.subscribe(pattern("*")).await.unwrap();
    let mut more = broker.subscribe(pattern(">")).await.unwrap();
    let mut any = broker.subscribe(pattern("#")).await.unwrap();
    let mut also_one = broker.subscribe(pattern("*")).await.unwrap();
    for (id, topic) in [
        ("m-1", format!("{root}.a")),
        ("m-2", format!("{root}.a.b")),
        ("m-0", root.clone()),
    ] {
        broker
            .publish(&topic, &Message::new(id).with_id(id), deadline())
            .await
            .unwrap();
    }
    // `root.*`: one level only.
    assert_eq!(acked(next(&mut one, "root.*").await), "m-1");
    nothing_for(
        &mut one,
        Duration::from_millis(300),
        "root.* on other levels",
    )
    .await;
    // A second private subscription to the same pattern gets its own copy (fan-out).
    assert_eq!(acked(next(&mut also_one, "root.* again").await), "m-1");
    // `root.>`: one or more levels.
    let mut got = vec![
        acked(next(&mut more, "root.>").await),
        acked(next(&mut more, "root.>").await),
    ];
    got.sort();
    assert_eq!(got, ["m-1", "m-2"]);
    nothing_for(
        &mut more,
        Duration::from_millis(300),
        "root.> on root itself",
    )
    .await;
    // `root.#`: zero or more levels, root included.
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(acked(next(&mut any, "root.#").await));
    }
    got.sort();
    assert_eq!(got, ["m-0", "m-1", "m-2"]);
}

const PIKA_RPC_CLIENT: &str = r#"
import sys, time, uuid, pika
connection = pika.BlockingConnection(pika.URLParameters(sys.argv[1]))
channel = connection.channel()
callback_queue = channel.queue_declare(queue='', exclusive=True).method.queue
corr_id = str(uuid.uuid4())
channel.basic_publish(exchange='', routing_key=sys.argv[2],
    properties=pika.BasicProperties(reply_to=callback_queue, correlation_id=corr_id),
    body='fib(10)')
end = time.time() + 20
while time.time() < end:
    method, properties, body = channel.basic_get(queue=callback_queue, auto_ack=True)
    if method:
        print(body.decode(), properties.correlation_id == corr_id)
        break
    time.sleep(0.05)
connection.close()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pika_rpc_client_gets_its_reply_from_a_polybridge_responder() {
    let Some(server) = Server::shared() else {
        return;
    };
    let broker = server.connect("").await;
    let queue = format!("rpc-{}", std::process::id());
    let mut requests = broker
        .subscribe(on(&format!("queue:{queue}")).option("declare", "true"))
        .await
        .unwrap();
    let (url, q) = (server.url.clone(), queue.clone());
    let client = tokio::task::spawn_blocking(move || {
        let python = polybridge_testkit::python().expect("python with pika");
        std::process::Command::new(python)
            .args(["-c", PIKA_RPC_CLIENT, &url, &q])
            .output()
            .expect("run python")
    });
    let request = next(&mut requests, "the pika request").await;
    assert_eq!(&request.message.payload[..], b"fib(10)");
    let reply_to = request.message.reply_to.clone().expect("reply-to");
    let correlation_id = request
        .message
        .correlation_id
        .clone()
        .expect("correlation id");
    broker
        .publish(
            &format!("queue:{reply_to}"),
            &Message::new("55").with_correlation_id(correlation_id),
            deadline(),
        )
        .await
        .unwrap();
    request.ack().unwrap();
    let out = client.await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "55 True");
}

const PIKA_DECLARE: &str = r#"
import sys, pika
connection = pika.BlockingConnection(pika.URLParameters(sys.argv[1]))
connection.channel().queue_declare(queue=sys.argv[2])
connection.close()
"#;

const PIKA_DELETE: &str = r#"
import sys, pika
connection = pika.BlockingConnection(pika.URLParameters(sys.argv[1]))
connection.channel().queue_delete(queue=sys.argv[2])
connection.close()
"#;

async fn pika_on_queue(script: &'static str, url: &str, queue: &str) {
    let (url, queue) = (url.to_owned(), queue.to_owned());
    tokio::task::spawn_blocking(move || {
        let python = polybridge_testkit::python().expect("python with pika");
        let out = std::process::Command::new(python)
            .args(["-c", script, &url, &queue])
            .output()
            .expect("run python");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_queues_are_redeclared_or_reported() {
    let Some(server) = Server::shared() else {
        return;
    };
    let broker = server.connect("").await;
    // A group queue deleted under the subscription: the broker cancels the consumer, the
    // subscription declares and binds its queue again and carries on.
    let topic = unique("deleted");
    let group = format!("del-{}", std::process::id());
    let mut sub = broker
        .subscribe(on(&topic).group(group.clone()))
        .await
        .unwrap();
    pika_on_queue(PIKA_DELETE, &server.url, &format!("{group}/{topic}")).await;
    let end = tokio::time::Instant::now() + WAIT;
    loop {
        // Unroutable until the subscription has declared its queue again.
        match broker
            .publish(&topic, &Message::new("back").with_id("back-1"), deadline())
            .await
        {
            Ok(_) => break,
            Err(e) if tokio::time::Instant::now() < end => {
                assert!(e.to_string().contains("unroutable"), "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the group queue was not declared again: {e}"),
        }
    }
    assert_eq!(
        acked(next(&mut sub, "after the queue came back").await),
        "back-1"
    );
    // A named queue the subscription does not declare: its deletion ends the stream with an
    // error naming it.
    let queue = format!("vanishing-{}", std::process::id());
    pika_on_queue(PIKA_DECLARE, &server.url, &queue).await;
    let mut named = broker
        .subscribe(on(&format!("queue:{queue}")))
        .await
        .unwrap();
    pika_on_queue(PIKA_DELETE, &server.url, &queue).await;
    match tokio::time::timeout(WAIT, named.next()).await {
        Ok(Some(Err(e))) => {
            eprintln!("deleted queue: {e}");
            assert!(matches!(e, Error::Permanent { .. }), "{e:?}");
            assert!(e.to_string().contains(&queue), "{e}");
        }
        other => panic!("expected an error naming the deleted queue, got {other:?}"),
    }
    assert!(
        named.next().await.is_none(),
        "the stream ends after the error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_properties_travel() {
    let Some(server) = Server::shared() else {
        return;
    };
    let broker = server.connect("").await;
    let topic = unique("props");
    let mut sub = broker.subscribe(on(&topic)).await.unwrap();
    let sent = Message::new("p")
        .with_id("props-1")
        .with_key(vec![0u8, 1, 0xff])
        .with_content_type("application/json")
        .with_reply_to("replies")
        .with_correlation_id("corr-1")
        .with_header(polybridge_amqp::mapping::EXPIRATION_HEADER, "60000")
        .with_header(polybridge_amqp::mapping::PRIORITY_HEADER, "5");
    broker.publish(&topic, &sent, deadline()).await.unwrap();
    let d = next(&mut sub, "the message").await;
    let m = &d.message;
    assert_eq!(m.id, "props-1");
    assert_eq!(m.key, sent.key);
    assert_eq!(m.content_type.as_deref(), Some("application/json"));
    assert_eq!(m.reply_to.as_deref(), Some("replies"));
    assert_eq!(m.correlation_id.as_deref(), Some("corr-1"));
    assert_eq!(
        m.headers
            .get_str(polybridge_amqp::mapping::EXPIRATION_HEADER),
        Some("60000")
    );
    assert_eq!(
        m.headers.get_str(polybridge_amqp::mapping::PRIORITY_HEADER),
        Some("5")
    );
    let secs = |t: Option<std::time::SystemTime>| {
        t.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
    };
    assert_eq!(secs(m.timestamp), secs(sent.timestamp), "whole seconds");
    assert_eq!(d.info.attempt, 1);
    assert!(!d.info.redelivered);
    d.ack().unwrap();
}
