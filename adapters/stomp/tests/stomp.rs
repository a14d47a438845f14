//! STOMP-specific behaviour against real ActiveMQ and RabbitMQ: receipts, NACK
//! redelivery, durable subscriptions across a client restart, binary bodies with NUL,
//! header escaping, ERROR frames, heart-beats, and a real `stomp.py` client exchanging
//! messages with polybridge.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{connect, deadline, unique, url};
use polybridge_core::{
    Deadline, Delivery, DeliveryStream, Error, HeaderValue, Message, Publisher, Subscriber,
    Subscription, TopicPattern,
};
use polybridge_testkit::{url_with, BrokerKind, Endpoint};

const WAIT: Duration = Duration::from_secs(20);

fn topic(name: &str) -> Subscription {
    Subscription::new(TopicPattern::literal(name, '.'))
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
        panic!("{what}: unexpected delivery {:?}", d.map(|d| d.message.id));
    }
}

const BOTH: [BrokerKind; 2] = [BrokerKind::ActiveMq, BrokerKind::RabbitMq];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_redelivers_on_both_brokers() {
    for kind in BOTH {
        let Some(url) = url(kind) else { continue };
        let broker = connect(&url).await;
        let t = unique("nack");
        let mut sub = broker.subscribe(topic(&t)).await.unwrap();
        broker
            .publish(&t, &Message::new("once").with_id("n1"), deadline())
            .await
            .unwrap();
        let first = next(&mut sub, "first delivery").await;
        assert!(!first.info.redelivered, "{kind:?}: {:?}", first.info);
        assert_eq!(first.info.attempt, 1);
        first.nack().unwrap();
        let again = next(&mut sub, "redelivery after NACK").await;
        assert_eq!(again.message.id, "n1", "{kind:?}");
        assert_eq!(&again.message.payload[..], b"once");
        assert!(again.info.redelivered, "{kind:?}: {:?}", again.info);
        again.ack().unwrap();
        nothing_within(&mut sub, Duration::from_millis(500), "after the ack").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_bodies_with_nul_survive() {
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    for kind in BOTH {
        let Some(url) = url(kind) else { continue };
        let broker = connect(&url).await;
        let t = unique("binary");
        let mut sub = broker.subscribe(topic(&t)).await.unwrap();
        let small = vec![0u8, 0xff, 0, b'\n', b'\r', 0, 0x80, 0];
        for (id, body) in [
            ("small", small.clone()),
            ("big", big.clone()),
            ("empty", vec![]),
        ] {
            broker
                .publish(&t, &Message::new(body).with_id(id), deadline())
                .await
                .unwrap();
        }
        for (id, body) in [("small", &small), ("big", &big), ("empty", &vec![])] {
            let d = next(&mut sub, id).await;
            assert_eq!(d.message.id, id, "{kind:?}");
            assert_eq!(&d.message.payload[..], &body[..], "{kind:?}: {id}");
            d.ack().unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_escaping_round_trips() {
    for kind in BOTH {
        let Some(url) = url(kind) else { continue };
        let broker = connect(&url).await;
        let t = unique("escape");
        let mut sub = broker.subscribe(topic(&t)).await.unwrap();
        let headers = [
            ("colon:name", "value:with:colons"),
            ("newline", "line1\nline2"),
            ("carriage", "a\rb"),
            ("backslash\\name", "C:\\path\\n not a newline"),
            ("all", ":\n\r\\c\\n"),
            ("destination", "a user header named like a STOMP header"),
        ];
        let mut m = Message::new("h").with_id("esc");
        for (n, v) in headers {
            m = m.with_header(n, v);
        }
        m = m.with_header("bin", vec![0u8, b':', b'\n', 0xff]);
        broker.publish(&t, &m, deadline()).await.unwrap();
        let d = next(&mut sub, "escaped headers").await;
        for (n, v) in headers {
            assert_eq!(
                d.message.headers.get_str(n),
                Some(v),
                "{kind:?}: header {n:?}"
            );
        }
        assert_eq!(
            d.message.headers.get("bin"),
            Some(&HeaderValue::Binary(vec![0u8, b':', b'\n', 0xff].into()))
        );
        d.ack().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_subscription_survives_a_client_restart() {
    for kind in BOTH {
        let Some(url) = url(kind) else { continue };
        let t = unique("durable");
        let name = format!("dur-{}", std::process::id());
        let name = format!("{name}-{}", kind.name());
        {
            let client = connect(&url).await;
            let mut sub = client
                .subscribe(topic(&t).option("durable", name.clone()))
                .await
                .unwrap();
            client
                .publish(&t, &Message::new("1").with_id("d1"), deadline())
                .await
                .unwrap();
            next(&mut sub, "while connected").await.ack().unwrap();
            sub.close().await;
            client.close(deadline()).await.unwrap();
        }
        // The client is gone; messages wait for the durable subscription.
        let other = connect(&url).await;
        other
            .publish(&t, &Message::new("2").with_id("d2"), deadline())
            .await
            .unwrap();
        other.close(deadline()).await.unwrap();
        let client = connect(&url).await;
        let mut sub = client
            .subscribe(topic(&t).option("durable", name.clone()))
            .await
            .unwrap();
        let d = next(&mut sub, "published while the client was down").await;
        assert_eq!(d.message.id, "d2", "{kind:?}");
        d.ack().unwrap();
        nothing_within(&mut sub, Duration::from_millis(500), "nothing else").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_queue_keeps_messages_across_a_client_restart() {
    for kind in BOTH {
        let Some(url) = url(kind) else { continue };
        let t = unique("grouprestart");
        let group = format!("g{}", std::process::id());
        let client = connect(&url).await;
        let sub = client
            .subscribe(topic(&t).group(group.clone()))
            .await
            .unwrap();
        sub.close().await;
        drop(client);
        let publisher = connect(&url).await;
        for i in 0..3 {
            publisher
                .publish(&t, &Message::new("x").with_id(format!("gr{i}")), deadline())
                .await
                .unwrap();
        }
        let client = connect(&url).await;
        let mut sub = client.subscribe(topic(&t).group(group)).await.unwrap();
        for i in 0..3 {
            let d = next(&mut sub, "queued for the group").await;
            assert_eq!(d.message.id, format!("gr{i}"), "{kind:?}");
            assert_eq!(d.info.topic, t);
            d.ack().unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_an_auth_error_without_the_password() {
    let Some(url) = url(BrokerKind::RabbitMq) else {
        return;
    };
    let bad = url.replace("guest:guest@", "guest:s3cret-wrong@");
    assert_ne!(bad, url);
    let err = polybridge_stomp::StompBroker::connect(&bad.parse().unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
    let text = err.to_string();
    assert!(!text.contains("s3cret"), "{text}");
    assert!(!format!("{err:?}").contains("s3cret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_frame_fails_the_publish_with_the_brokers_message() {
    let Some(url) = url(BrokerKind::RabbitMq) else {
        return;
    };
    let broker = connect(&url).await;
    // RabbitMQ answers SEND to an exchange that does not exist with an ERROR frame.
    let missing = format!("/exchange/{}/key", unique("missing"));
    let err = broker
        .publish(&missing, &Message::new("x"), deadline())
        .await
        .unwrap_err();
    eprintln!("{err:?}");
    assert!(matches!(err, Error::Permanent { .. }), "{err:?}");
    let text = err.to_string().to_lowercase();
    assert!(
        text.contains("not_found") || text.contains("not found"),
        "{text}"
    );
    // The publisher reconnects for the next publish.
    let t = unique("afterror");
    let mut sub = broker.subscribe(topic(&t)).await.unwrap();
    broker
        .publish(&t, &Message::new("ok").with_id("after"), deadline())
        .await
        .unwrap();
    assert_eq!(next(&mut sub, "after the error").await.message.id, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_destinations_are_refused_before_sending() {
    for kind in BOTH {
        let Some(url) = url(kind) else { continue };
        let broker = connect(&url).await;
        let err = broker
            .publish("/nowhere/x", &Message::new("x"), deadline())
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("unknown destination prefix"),
            "{kind:?}: {err}"
        );
        let err = broker
            .publish("a.*", &Message::new("x"), deadline())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("wildcard"), "{err}");
    }
    let Some(url) = url(BrokerKind::ActiveMq) else {
        return;
    };
    let broker = connect(&url).await;
    let err = broker
        .subscribe(Subscription::new("a.>".parse().unwrap()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("one or more"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activemq_wildcards_match() {
    let Some(url) = url(BrokerKind::ActiveMq) else {
        return;
    };
    let broker = connect(&url).await;
    let base = unique("wild");
    let mut one = broker
        .subscribe(Subscription::new(format!("{base}.*.c").parse().unwrap()))
        .await
        .unwrap();
    let mut any = broker
        .subscribe(Subscription::new(format!("{base}.#").parse().unwrap()))
        .await
        .unwrap();
    for (i, t) in [format!("{base}.b.c"), format!("{base}.x.y.z"), base.clone()]
        .iter()
        .enumerate()
    {
        broker
            .publish(t, &Message::new("w").with_id(format!("w{i}")), deadline())
            .await
            .unwrap();
    }
    let d = next(&mut one, "a.*.c").await;
    assert_eq!(
        (d.message.id.as_str(), d.info.topic.as_str()),
        ("w0", format!("{base}.b.c").as_str())
    );
    d.ack().unwrap();
    nothing_within(&mut one, Duration::from_millis(500), "a.*.c matches one").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let d = next(&mut any, "a.#").await;
        ids.push(d.message.id.clone());
        d.ack().unwrap();
    }
    ids.sort();
    assert_eq!(
        ids,
        ["w0", "w1", "w2"],
        "`>` on ActiveMQ matches zero or more levels"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_with_the_same_durable_name_gets_the_brokers_error() {
    let Some(url) = url(BrokerKind::ActiveMq) else {
        return;
    };
    let broker = connect(&url).await;
    let t = unique("dupdurable");
    let name = format!("dup-{}", std::process::id());
    let _first = broker
        .subscribe(topic(&t).option("durable", name.clone()))
        .await
        .unwrap();
    let err = broker
        .subscribe(topic(&t).option("durable", name))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("polybridge-dup"),
        "the broker's message names the client id: {text}"
    );
}

/// Runs a `stomp.py` script with `args`, returning its stdout.
async fn stomp_py(script: &'static str, args: Vec<String>) -> String {
    let python = polybridge_testkit::python().expect("the python clients");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(python)
            .arg("-c")
            .arg(script)
            .args(args)
            .output(),
    )
    .await
    .expect("stomp.py finished in time")
    .expect("run stomp.py");
    assert!(
        out.status.success(),
        "stomp.py failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const STOMP_PY_SEND: &str = r#"
import sys, stomp
host, port, dest, body = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
conn = stomp.Connection([(host, port)])
conn.connect("guest", "guest", wait=True)
conn.send(destination=dest, body=body, headers={"persistent": "true", "custom": "from-python"})
conn.disconnect(receipt="bye")
print("sent")
"#;

const STOMP_PY_RECEIVE: &str = r#"
import sys, stomp, threading
host, port, dest = sys.argv[1], int(sys.argv[2]), sys.argv[3]
got = []
done = threading.Event()
class Listener(stomp.ConnectionListener):
    def on_message(self, frame):
        got.append(frame)
        done.set()
conn = stomp.Connection([(host, port)])
conn.set_listener("", Listener())
conn.connect("guest", "guest", wait=True)
conn.subscribe(destination=dest, id="1", ack="auto")
print("subscribed", flush=True)
if not done.wait(30):
    sys.exit("nothing received")
frame = got[0]
conn.disconnect(receipt="bye")
print("body=" + frame.body)
print("pb-id=" + frame.headers.get("pb-id", ""))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stomp_py_and_polybridge_exchange_messages_on_queue_test() {
    for kind in BOTH {
        let Some(url) = url(kind) else { continue };
        let shared = polybridge_testkit::shared(kind).unwrap();
        let port = shared
            .url(Endpoint::Stomp)
            .and_then(|u| u.rsplit(':').next().map(str::to_owned))
            .unwrap();
        let broker = connect(&url).await;
        // The seed's scenario: stomp.py sends "Hello STOMP" to /queue/test.
        let queue = "/queue/test";
        let mut sub = broker
            .subscribe(Subscription::new(TopicPattern::literal(queue, '.')))
            .await
            .unwrap();
        let out = stomp_py(
            STOMP_PY_SEND,
            vec![
                "127.0.0.1".into(),
                port.clone(),
                queue.into(),
                "Hello STOMP".into(),
            ],
        )
        .await;
        assert!(out.contains("sent"), "{out}");
        let d = next(&mut sub, "from stomp.py").await;
        assert_eq!(&d.message.payload[..], b"Hello STOMP", "{kind:?}");
        assert_eq!(d.info.topic, queue);
        assert_eq!(d.message.headers.get_str("custom"), Some("from-python"));
        assert!(!d.message.id.is_empty());
        d.ack().unwrap();
        sub.close().await;
        // And back: polybridge publishes, stomp.py receives.
        let receiver = tokio::spawn(stomp_py(
            STOMP_PY_RECEIVE,
            vec!["127.0.0.1".into(), port, queue.into()],
        ));
        broker
            .publish(
                queue,
                &Message::new("Hello from polybridge").with_id("to-python"),
                deadline(),
            )
            .await
            .unwrap();
        let out = receiver.await.unwrap();
        assert!(
            out.contains("body=Hello from polybridge"),
            "{kind:?}: {out}"
        );
        assert!(out.contains("pb-id=to-python"), "{out}");
    }
}

/// A private ActiveMQ, so it can be paused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_waits_for_the_receipt_and_heartbeats_detect_a_dead_broker() {
    if polybridge_testkit::skip_reason(BrokerKind::ActiveMq).is_some()
        || std::env::var(BrokerKind::ActiveMq.env_var(Endpoint::Stomp)).is_ok()
    {
        return;
    }
    let process = tokio::task::spawn_blocking(|| polybridge_testkit::private(BrokerKind::ActiveMq))
        .await
        .unwrap()
        .expect("a private ActiveMQ");
    let url = url_with(&process.url(Endpoint::Stomp).unwrap(), "heartbeat=1s,1s");
    let broker = connect(&url).await;
    let t = unique("paused");
    broker
        .publish(&t, &Message::new("before"), deadline())
        .await
        .unwrap();
    process.pause().unwrap();
    // The broker cannot answer: the publish must not resolve. Heart-beats (1 s) declare
    // the connection dead after about 3 s, so it fails with a retryable error, not a hang.
    let started = std::time::Instant::now();
    let result = broker
        .publish(
            &t,
            &Message::new("while paused"),
            Deadline::after(Duration::from_secs(15)),
        )
        .await;
    let took = started.elapsed();
    process.resume().unwrap();
    let err = result.expect_err("no RECEIPT from a paused broker");
    assert!(err.is_retryable(), "{err:?}");
    assert!(
        !matches!(err, Error::Timeout { .. }),
        "heart-beats should have declared the connection dead first: {err:?}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    // After resume, the next publishes reconnect and succeed.
    let end = std::time::Instant::now() + WAIT;
    loop {
        match broker.publish(&t, &Message::new("after"), deadline()).await {
            Ok(_) => break,
            Err(e) if e.is_retryable() && std::time::Instant::now() < end => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("publish after resume: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_frame_ends_the_subscription_and_loses_nothing() {
    for kind in BOTH {
        let Some(url) = url(kind) else { continue };
        let broker = connect(&url).await;
        let small = connect(&url_with(&url, "max_frame=4096")).await;
        let t = unique("oversize");
        let group = format!("big{}", std::process::id());
        let mut tiny = small
            .subscribe(topic(&t).group(group.clone()))
            .await
            .unwrap();
        broker
            .publish(
                &t,
                &Message::new(vec![7u8; 10_000]).with_id("big"),
                deadline(),
            )
            .await
            .unwrap();
        match tokio::time::timeout(WAIT, tiny.next()).await {
            Ok(Some(Err(Error::PayloadTooLarge { size, limit, .. }))) => {
                assert_eq!(limit, 4096);
                assert!(size > 4096, "{size}");
            }
            other => panic!(
                "{kind:?}: expected PayloadTooLarge, got {:?}",
                other.map(|o| o.map(|r| r.map(|d| d.message.id)))
            ),
        }
        assert!(
            tokio::time::timeout(WAIT, tiny.next())
                .await
                .unwrap()
                .is_none(),
            "the stream ends after the error"
        );
        // Nothing was acknowledged: another member of the group gets the message.
        let mut member = broker.subscribe(topic(&t).group(group)).await.unwrap();
        let d = next(&mut member, "the oversize message, redelivered").await;
        assert_eq!(
            (d.message.id.as_str(), d.message.payload.len()),
            ("big", 10_000)
        );
        d.ack().unwrap();
    }
}

const STOMP_PY_NACK: &str = r#"
import sys, stomp, threading, time
host, port, queue = sys.argv[1], int(sys.argv[2]), sys.argv[3]
got = []
event = threading.Event()
class Listener(stomp.ConnectionListener):
    def on_message(self, frame):
        got.append(frame)
        event.set()
conn = stomp.Connection12([(host, port)])
conn.set_listener("", Listener())
conn.connect("guest", "guest", wait=True)
conn.subscribe(destination=queue, id="1", ack="client-individual")
if not event.wait(20):
    sys.exit("nothing received")
conn.nack(got[0].headers["ack"])
event.clear()
# Does the broker redeliver it on the same subscription?
redelivered = event.wait(3)
print("redelivered=%s" % redelivered)
conn.disconnect(receipt="bye")
"#;

/// Why `nack` is emulated on ActiveMQ: a STOMP NACK there is a poison acknowledgement,
/// the message is not redelivered to the subscription (it goes to `ActiveMQ.DLQ`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activemq_stomp_nack_does_not_redeliver_so_nack_is_emulated() {
    let Some(url) = url(BrokerKind::ActiveMq) else {
        return;
    };
    let port = url.rsplit(':').next().unwrap().to_owned();
    let broker = connect(&url).await;
    let queue = format!("/queue/{}", unique("poison"));
    broker
        .publish(&queue, &Message::new("p").with_id("poison"), deadline())
        .await
        .unwrap();
    let out = stomp_py(STOMP_PY_NACK, vec!["127.0.0.1".into(), port, queue.clone()]).await;
    assert!(out.contains("redelivered=False"), "{out}");
    let mut dlq = broker
        .subscribe(Subscription::new(TopicPattern::literal(
            "/queue/ActiveMQ.DLQ",
            '.',
        )))
        .await
        .unwrap();
    let end = std::time::Instant::now() + WAIT;
    loop {
        let d = next(&mut dlq, "the NACKed message in ActiveMQ.DLQ").await;
        let found = d.message.id == "poison";
        d.ack().unwrap();
        if found {
            break;
        }
        assert!(std::time::Instant::now() < end, "not in ActiveMQ.DLQ");
    }
}

/// A private ActiveMQ, restarted while a delivery is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_from_before_a_reconnect_is_dropped_and_the_broker_redelivers() {
    if polybridge_testkit::skip_reason(BrokerKind::ActiveMq).is_some()
        || std::env::var(BrokerKind::ActiveMq.env_var(Endpoint::Stomp)).is_ok()
    {
        return;
    }
    let process = tokio::task::spawn_blocking(|| polybridge_testkit::private(BrokerKind::ActiveMq))
        .await
        .unwrap()
        .expect("a private ActiveMQ");
    let url = url_with(&process.url(Endpoint::Stomp).unwrap(), "heartbeat=1s,1s");
    let broker = connect(&url).await;
    let t = unique("oldack");
    let mut sub = broker.subscribe(topic(&t).group("old")).await.unwrap();
    broker
        .publish(&t, &Message::new("held").with_id("held"), deadline())
        .await
        .unwrap();
    let held = next(&mut sub, "before the restart").await;
    let process = std::sync::Arc::new(std::sync::Mutex::new(process));
    let p = process.clone();
    tokio::task::spawn_blocking(move || p.lock().unwrap().restart())
        .await
        .unwrap()
        .expect("restart ActiveMQ");
    // The subscription reconnects by itself; the broker redelivers the unacked message.
    let again = tokio::time::timeout(Duration::from_secs(60), sub.next())
        .await
        .expect("redelivered after the restart")
        .expect("stream open")
        .expect("no error");
    assert_eq!(again.message.id, "held");
    // (ActiveMQ does not persist the redelivered flag across its own restart, so a
    // message dispatched before the restart comes back marked as a first delivery.)
    // The old handle's ack is accepted and dropped: it belongs to a dead connection.
    held.ack()
        .expect("settling an old delivery is not an error");
    again.ack().unwrap();
    nothing_within(&mut sub, Duration::from_secs(1), "acked once").await;
    drop(process);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_wildcards_match() {
    let Some(url) = url(BrokerKind::RabbitMq) else {
        return;
    };
    let broker = connect(&url).await;
    let base = unique("wild");
    let sub = |p: String| broker.subscribe(Subscription::new(p.parse().unwrap()));
    let mut one = sub(format!("{base}.*.c")).await.unwrap();
    let mut one_or_more = sub(format!("{base}.>")).await.unwrap();
    let mut zero_or_more = sub(format!("{base}.#")).await.unwrap();
    for (i, t) in [format!("{base}.b.c"), format!("{base}.x.y.z"), base.clone()]
        .iter()
        .enumerate()
    {
        broker
            .publish(t, &Message::new("w").with_id(format!("w{i}")), deadline())
            .await
            .unwrap();
    }
    async fn ids(s: &mut DeliveryStream, n: usize, what: &str) -> Vec<String> {
        let mut ids = Vec::new();
        for _ in 0..n {
            let d = next(s, what).await;
            ids.push(d.message.id.clone());
            d.ack().unwrap();
        }
        nothing_within(s, Duration::from_millis(500), what).await;
        ids.sort();
        ids
    }
    assert_eq!(ids(&mut one, 1, "a.*.c").await, ["w0"]);
    assert_eq!(ids(&mut one_or_more, 2, "a.>").await, ["w0", "w1"]);
    assert_eq!(ids(&mut zero_or_more, 3, "a.#").await, ["w0", "w1", "w2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_frame_on_subscribe_is_a_clear_error() {
    let Some(url) = url(BrokerKind::RabbitMq) else {
        return;
    };
    let broker = connect(&url).await;
    let missing = format!("/amq/queue/{}", unique("nosuchqueue"));
    let err = broker
        .subscribe(Subscription::new(TopicPattern::literal(&missing, '.')))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Permanent { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("refused SUBSCRIBE"), "{text}");
    assert!(text.to_lowercase().contains("not_found"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_with_group_commit_all_confirm_and_arrive_once() {
    // With `group_commit=2`, publishes that queue up together go out in one transaction
    // (group commit) on ActiveMQ: each still resolves only once the broker stored it, and
    // none is lost or doubled. RabbitMQ ignores the option (a warning at connect): its
    // publishes confirm and arrive the same. (Their order is the order in which the
    // caller's futures reach the publisher, which concurrent futures do not fix: tokio's
    // cooperative budget makes one wait a turn.)
    for kind in BOTH {
        let Some(url) = url(kind) else { continue };
        let broker = connect(&url_with(&url, "group_commit=2")).await;
        let t = unique("groupcommit");
        let mut sub = broker.subscribe(topic(&t)).await.unwrap();
        let n = 300;
        let messages: Vec<Message> = (0..n)
            .map(|i| Message::new(format!("m{i}")).with_id(format!("m{i}")))
            .collect();
        let results =
            futures::future::join_all(messages.iter().map(|m| broker.publish(&t, m, deadline())))
                .await;
        for r in &results {
            assert!(r.is_ok(), "{kind:?}: {r:?}");
        }
        let mut arrived = std::collections::BTreeSet::new();
        for _ in 0..n {
            let d = next(&mut sub, "a published message").await;
            assert!(
                arrived.insert(d.message.id.clone()),
                "{kind:?}: {} twice",
                d.message.id
            );
            d.ack().unwrap();
        }
        let published: std::collections::BTreeSet<String> =
            messages.iter().map(|m| m.id.clone()).collect();
        assert_eq!(arrived, published, "{kind:?}");
        nothing_within(&mut sub, Duration::from_millis(500), "a duplicate").await;
    }
}
