//! Redis-specific behaviour against a real redis-server: crashed consumers' messages are
//! recovered (streams and lists), dead-lettering after N deliveries, pub/sub resubscribes
//! after a restart, and clear errors for wrong passwords and wrong key types.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Server, LISTS, PUBSUB, STREAMS};
use polybridge_core::{
    well_known, Deadline, Delivery, DeliveryStream, Error, Message, Outgoing, Position, Publisher,
    Subscriber, Subscription, TopicPattern,
};

const WAIT: Duration = Duration::from_secs(15);

fn deadline() -> Deadline {
    Deadline::after(WAIT)
}

fn on(key: &str) -> Subscription {
    Subscription::new(TopicPattern::literal(key, '.'))
}

async fn next(stream: &mut DeliveryStream, what: &str) -> Delivery {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {WAIT:?}"))
        .unwrap_or_else(|| panic!("{what}: stream ended"))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Runs `receive` in a runtime of its own and then drops that runtime, killing its tasks
/// with no chance to ack, nack or clean up: what a crashed process leaves behind.
fn crash_after(url: String, key: &'static str, group: Option<&'static str>, take: usize) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let broker = polybridge_redis::RedisBroker::connect(&url.parse().unwrap())
                .await
                .unwrap();
            let mut sub = on(key);
            if let Some(g) = group {
                sub = sub.group(g);
            }
            let mut stream = broker.subscribe(sub).await.unwrap();
            let mut held = Vec::new();
            for _ in 0..take {
                held.push(next(&mut stream, "the consumer that crashes").await);
            }
            // Leak everything so no drop handler runs before the runtime dies.
            std::mem::forget(held);
            std::mem::forget(stream);
        });
        drop(rt);
    })
    .join()
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_stream_consumers_messages_are_claimed_by_the_group() {
    let Some(server) = Server::start() else {
        return;
    };
    let url = server.url_with(STREAMS);
    let broker = server.connect(STREAMS).await;
    // Create the group first so both consumers start from the same position; close (not
    // drop) it, so its reader has stopped before anything is published and reads nothing.
    broker
        .subscribe(on("orders").group("billing"))
        .await
        .unwrap()
        .close()
        .await;
    for i in 0..3 {
        broker
            .publish(
                "orders",
                &Message::new(i.to_string()).with_id(format!("o{i}")),
                deadline(),
            )
            .await
            .unwrap();
    }
    crash_after(url, "orders", Some("billing"), 3);
    let mut survivor = broker
        .subscribe(on("orders").group("billing"))
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let d = next(&mut survivor, "claimed").await;
        assert_eq!(d.info.attempt, 2, "a claimed entry counts as a redelivery");
        assert!(d.info.redelivered);
        ids.push(d.message.id.clone());
        d.ack().unwrap();
    }
    ids.sort();
    assert_eq!(ids, ["o0", "o1", "o2"]);
    // claim_idle is 2s in these tests: not before the entries were idle that long.
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_list_consumers_processing_list_is_requeued() {
    let Some(server) = Server::start() else {
        return;
    };
    let url = server.url_with(LISTS);
    let broker = server.connect(LISTS).await;
    for i in 0..3 {
        broker
            .publish(
                "jobs",
                &Message::new(i.to_string()).with_id(format!("j{i}")),
                deadline(),
            )
            .await
            .unwrap();
    }
    crash_after(url, "jobs", None, 3);
    let mut survivor = broker.subscribe(on("jobs")).await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let d = next(&mut survivor, "requeued").await;
        assert_eq!(d.info.attempt, 2, "the envelope counts the attempt");
        ids.push(d.message.id.clone());
        d.ack().unwrap();
    }
    ids.sort();
    assert_eq!(ids, ["j0", "j1", "j2"]);
    // Nothing is left in any processing list once everything was acked.
    let client = redis::Client::open(server.url.as_str()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let end = tokio::time::Instant::now() + WAIT;
    loop {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("jobs:pb-processing:*")
            .query_async(&mut c)
            .await
            .unwrap();
        let mut total = 0i64;
        for k in &keys {
            total += redis::cmd("LLEN")
                .arg(k)
                .query_async::<i64>(&mut c)
                .await
                .unwrap();
        }
        if total == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "{total} elements left in {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_delivered_n_times_goes_to_the_dead_letter_stream() {
    let Some(server) = Server::start() else {
        return;
    };
    for options in [
        format!("{STREAMS}&max_deliveries=2"),
        format!("{LISTS}&max_deliveries=2"),
    ] {
        let broker = server.connect(&options).await;
        let key = if options.contains("lists") {
            "poison.list"
        } else {
            "poison.stream"
        };
        let mut sub = broker.subscribe(on(key).group("workers")).await.unwrap();
        let mut dead = broker
            .subscribe(on(&format!("{key}.dlq")).group("ops"))
            .await
            .unwrap();
        broker
            .publish(
                key,
                &Message::new("bad")
                    .with_id("p1")
                    .with_header("tenant", "t1"),
                deadline(),
            )
            .await
            .unwrap();
        for attempt in 1..=2 {
            let d = next(&mut sub, "a delivery of the poison message").await;
            assert_eq!(d.info.attempt, attempt, "{options}");
            d.nack().unwrap();
        }
        let d = next(&mut dead, "the dead letter").await;
        assert_eq!(d.message.id, "p1", "{options}");
        assert_eq!(&d.message.payload[..], b"bad");
        assert_eq!(d.message.headers.get_str("tenant"), Some("t1"));
        assert_eq!(d.message.headers.get_str(well_known::ATTEMPTS), Some("2"));
        assert_eq!(
            d.message.headers.get_str(well_known::ORIGINAL_TOPIC),
            Some(key)
        );
        assert!(
            d.message
                .headers
                .get_str(well_known::REJECT_REASON)
                .unwrap()
                .contains("delivered 2 times"),
            "{:?}",
            d.message.headers
        );
        d.ack().unwrap();
        if let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(1), sub.next()).await {
            panic!("{options}: delivered a third time: {:?}", d.map(|d| d.info));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_resubscribes_after_a_server_restart() {
    let Some(server) = Server::start() else {
        return;
    };
    if server.process.is_none() {
        eprintln!("skipped: an external server cannot be restarted");
        return;
    }
    let broker = server.connect(PUBSUB).await;
    let mut sub = broker
        .subscribe(Subscription::new(TopicPattern::parse("ticks.>").unwrap()))
        .await
        .unwrap();
    server.restart().await.unwrap().unwrap();
    // Pub/sub keeps nothing: publish until one arrives after the resubscription.
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut i = 0;
    loop {
        assert!(
            tokio::time::Instant::now() < end,
            "nothing after the restart"
        );
        i += 1;
        let _ = broker
            .publish(
                "ticks.a",
                &Message::new(i.to_string()),
                Deadline::after(Duration::from_secs(1)),
            )
            .await;
        if let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await
        {
            assert_eq!(d.info.topic, "ticks.a");
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_another_type_is_a_clear_error_naming_it() {
    let Some(server) = Server::start() else {
        return;
    };
    let mut c = operator(&server).await;
    let _: () = redis::cmd("RPUSH")
        .arg("a.list")
        .arg("x")
        .query_async(&mut c)
        .await
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg("a.stream")
        .arg("*")
        .arg("f")
        .arg("v")
        .query_async(&mut c)
        .await
        .unwrap();
    let streams = server.connect(STREAMS).await;
    let e = streams
        .publish("a.list", &Message::new("x"), deadline())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Permanent { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("\"a.list\" holds a value of another type"),
        "{e}"
    );
    let e = streams
        .subscribe(on("a.list").group("g"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("a.list"), "{e}");
    let lists = server.connect(LISTS).await;
    let e = lists.subscribe(on("a.stream")).await.unwrap_err();
    assert!(e.to_string().contains("holds a stream, not a list"), "{e}");
    let e = lists
        .publish("a.stream", &Message::new("x"), deadline())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("a.stream"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_command_in_a_batch_fails_its_message_only() {
    let Some(server) = Server::start() else {
        return;
    };
    let mut c = operator(&server).await;
    let _: () = redis::cmd("RPUSH")
        .arg("b.list")
        .arg("x")
        .query_async(&mut c)
        .await
        .unwrap();
    let streams = server.connect(STREAMS).await;
    let messages: Vec<Message> = (0..5).map(|i| Message::new(i.to_string())).collect();
    // The third goes to a key holding a list: Redis refuses that one `XADD` of the pipeline.
    let batch: Vec<Outgoing> = messages
        .iter()
        .enumerate()
        .map(|(i, message)| Outgoing {
            destination: if i == 2 { "b.list" } else { "b.stream" },
            message,
        })
        .collect();
    let results = streams.publish_batch(&batch, deadline()).await;
    assert_eq!(results.len(), 5);
    for (i, result) in results.iter().enumerate() {
        if i == 2 {
            let e = result.as_ref().unwrap_err();
            assert!(matches!(e, Error::Permanent { .. }), "{e:?}");
            assert!(e.to_string().contains("b.list"), "{e}");
        } else {
            let receipt = result.as_ref().unwrap();
            assert!(
                matches!(receipt.position, Some(Position::StreamId(_))),
                "{receipt:?}"
            );
        }
    }
    let len: usize = redis::cmd("XLEN")
        .arg("b.stream")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(len, 4, "the other four are stored");
}

/// A consumer group destroyed under a subscription (by an operator) makes every read fail
/// with `NOGROUP`. The subscription creates it again after the first entry it has not seen
/// acknowledged: the one it held is delivered again, what came while it was gone is
/// delivered, and what was acknowledged is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destroyed_group_is_created_again_from_the_first_entry_not_acknowledged() {
    let Some(server) = Server::start() else {
        return;
    };
    let streams = server.connect(STREAMS).await;
    let key = "lost.group.jobs";
    let mut sub = streams
        .subscribe(on(key).group("lost-workers"))
        .await
        .unwrap();
    for payload in ["acked", "held"] {
        streams
            .publish(key, &Message::new(payload), deadline())
            .await
            .unwrap();
    }
    next(&mut sub, "the first entry").await.ack().unwrap();
    let held = next(&mut sub, "the second entry").await;
    assert_eq!(&held.message.payload[..], b"held");
    let mut operator = operator(&server).await;
    let _: () = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(key)
        .arg("lost-workers")
        .query_async(&mut operator)
        .await
        .unwrap();
    streams
        .publish(key, &Message::new("while gone"), deadline())
        .await
        .unwrap();
    let again = next(&mut sub, "the held entry, delivered again").await;
    assert_eq!(&again.message.payload[..], b"held");
    assert_eq!(again.info.position, held.info.position);
    again.ack().unwrap();
    held.ack().unwrap();
    let gone = next(&mut sub, "the entry added while the group was gone").await;
    assert_eq!(&gone.message.payload[..], b"while gone");
    gone.ack().unwrap();
}

/// A stream key deleted under a subscription (or lost in a restart of a Redis without
/// persistence) takes its groups with it; a publisher's `XADD` creates the key again, without
/// them. The subscription creates its group again and gets what is added from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_stream_is_read_again_once_entries_are_added() {
    let Some(server) = Server::start() else {
        return;
    };
    let streams = server.connect(STREAMS).await;
    let key = "lost.key.jobs";
    let mut sub = streams
        .subscribe(on(key).group("lost-key-workers"))
        .await
        .unwrap();
    streams
        .publish(key, &Message::new("before"), deadline())
        .await
        .unwrap();
    next(&mut sub, "the entry before").await.ack().unwrap();
    let mut operator = operator(&server).await;
    let _: () = redis::cmd("DEL")
        .arg(key)
        .query_async(&mut operator)
        .await
        .unwrap();
    streams
        .publish(key, &Message::new("after"), deadline())
        .await
        .unwrap();
    let after = next(&mut sub, "the entry added after the key was deleted").await;
    assert_eq!(&after.message.payload[..], b"after");
    after.ack().unwrap();
}

/// A connection of an operator's own, for what the adapter does not do.
async fn operator(server: &Server) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_an_auth_error_without_the_password() {
    if polybridge_testkit::skip_reason(polybridge_testkit::BrokerKind::Redis).is_some() {
        return;
    }
    let port = polybridge_testkit::free_loopback_port().unwrap();
    let dir = std::env::temp_dir().join(format!("pb-redis-auth-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--requirepass",
            "right",
            "--dir",
            &dir.display().to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("redis-server");
    let end = std::time::Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < end,
            "redis-server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let wrong = polybridge_redis::RedisBroker::connect(
        &format!("redis://:wrong-secret@127.0.0.1:{port}")
            .parse()
            .unwrap(),
    )
    .await;
    let right = polybridge_redis::RedisBroker::connect(
        &format!("redis://:right@127.0.0.1:{port}/1")
            .parse()
            .unwrap(),
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let e = wrong.err().expect("a wrong password is refused");
    assert!(matches!(e, Error::Auth { .. }), "{e:?}");
    assert!(!e.to_string().contains("wrong-secret"), "{e}");
    assert!(right.is_ok(), "the right password (and db 1) connects");
}
