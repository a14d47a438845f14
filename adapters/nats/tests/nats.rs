//! NATS-specific behaviour against a real nats-server: request/reply with native NATS
//! clients, queue groups, JetStream deduplication, nak delays, in-progress acks, reconnect,
//! and the errors for bad input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Server, JETSTREAM};
use futures::StreamExt;
use polybridge_core::{
    Deadline, Delivery, DeliveryStream, Error, Message, Outgoing, Publisher, StartPosition,
    Subscriber, Subscription, TopicPattern,
};

const WAIT: Duration = Duration::from_secs(10);

fn deadline() -> Deadline {
    Deadline::after(WAIT)
}

fn subject(pattern: &str) -> Subscription {
    Subscription::new(TopicPattern::from_nats(pattern).unwrap())
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_nats_requester_gets_the_reply_of_a_polybridge_responder() {
    let Some(server) = Server::start() else {
        return;
    };
    let responder = server.connect("").await;
    let mut requests = responder.subscribe(subject("svc.echo")).await.unwrap();
    let serve = tokio::spawn(async move {
        let d = next(&mut requests, "request").await;
        let reply_to = d
            .message
            .reply_to
            .clone()
            .expect("the request's reply subject");
        let mut reply = Message::new(format!(
            "echo: {}",
            String::from_utf8_lossy(&d.message.payload)
        ));
        reply.correlation_id = d.message.correlation_id.clone();
        responder
            .publish(&reply_to, &reply, deadline())
            .await
            .unwrap();
        d.ack().unwrap();
    });
    // The requester is a plain NATS client, as a service in another language would be.
    let native = async_nats::connect(server.url.trim_start_matches("nats://"))
        .await
        .unwrap();
    let answer = tokio::time::timeout(WAIT, native.request("svc.echo", "hello".into()))
        .await
        .expect("reply in time")
        .expect("reply");
    assert_eq!(&answer.payload[..], b"echo: hello");
    serve.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polybridge_requester_gets_the_reply_of_a_native_nats_service() {
    let Some(server) = Server::start() else {
        return;
    };
    let native = async_nats::connect(server.url.trim_start_matches("nats://"))
        .await
        .unwrap();
    let mut service = native.subscribe("svc.upper").await.unwrap();
    native.flush().await.unwrap();
    let svc_client = native.clone();
    tokio::spawn(async move {
        while let Some(m) = service.next().await {
            if let Some(reply) = m.reply {
                let upper = String::from_utf8_lossy(&m.payload).to_uppercase();
                // Echo the correlation header back, as an RPC server does.
                let mut headers = async_nats::HeaderMap::new();
                if let Some(c) = m.headers.as_ref().and_then(|h| h.get("Pb-Correlation-Id")) {
                    headers.insert("Pb-Correlation-Id", c.as_str());
                }
                svc_client
                    .publish_with_headers(reply, headers, upper.into())
                    .await
                    .unwrap();
            }
        }
    });
    for mode in ["", JETSTREAM] {
        let requester = server.connect(mode).await;
        // Replies go to a core subject even in JetStream mode: subscribe on a core
        // connection.
        let core = server.connect("").await;
        let inbox = format!("replies.{}", std::process::id());
        let mut replies = core.subscribe(subject(&inbox)).await.unwrap();
        let request = Message::new("ping")
            .with_reply_to(inbox.clone())
            .with_correlation_id("corr-1");
        if mode.is_empty() {
            requester
                .publish("svc.upper", &request, deadline())
                .await
                .unwrap();
        } else {
            // A JetStream connection publishes to streams; a request to a core service
            // goes over core NATS.
            core.publish("svc.upper", &request, deadline())
                .await
                .unwrap();
        }
        let reply = next(&mut replies, "reply").await;
        assert_eq!(&reply.message.payload[..], b"PING");
        assert_eq!(reply.message.correlation_id.as_deref(), Some("corr-1"));
        reply.ack().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_group_members_share_messages_and_other_subscribers_get_all() {
    let Some(server) = Server::start() else {
        return;
    };
    let nats = server.connect("").await;
    let mut a = nats
        .subscribe(subject("jobs.>").group("workers"))
        .await
        .unwrap();
    let mut b = nats
        .subscribe(subject("jobs.>").group("workers"))
        .await
        .unwrap();
    let mut audit = nats.subscribe(subject("jobs.*")).await.unwrap();
    let n = 200;
    for i in 0..n {
        nats.publish(
            "jobs.new",
            &Message::new(i.to_string()).with_id(format!("j{i}")),
            deadline(),
        )
        .await
        .unwrap();
    }
    let mut seen_by_audit = HashSet::new();
    while seen_by_audit.len() < n {
        let d = next(&mut audit, "audit").await;
        seen_by_audit.insert(d.message.id.clone());
        d.ack().unwrap();
    }
    let (mut from_a, mut from_b) = (HashSet::new(), HashSet::new());
    while from_a.len() + from_b.len() < n {
        tokio::select! {
            Some(Ok(d)) = a.next() => { assert!(from_a.insert(d.message.id.clone())); d.ack().unwrap(); }
            Some(Ok(d)) = b.next() => { assert!(from_b.insert(d.message.id.clone())); d.ack().unwrap(); }
            _ = tokio::time::sleep(WAIT) => panic!("group got {} of {n}", from_a.len() + from_b.len()),
        }
    }
    assert!(
        from_a.is_disjoint(&from_b),
        "each message goes to one member"
    );
    assert!(
        !from_a.is_empty() && !from_b.is_empty(),
        "both members get work: {} / {}",
        from_a.len(),
        from_b.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_drops_a_retried_publish_with_the_same_message_id() {
    let Some(server) = Server::start() else {
        return;
    };
    let js = server.connect(JETSTREAM).await;
    let topic = "pbt.dedup.orders";
    let mut sub = js.subscribe(subject(topic)).await.unwrap();
    let first = js
        .publish(topic, &Message::new("once").with_id("order-42"), deadline())
        .await
        .unwrap();
    let again = js
        .publish(topic, &Message::new("once").with_id("order-42"), deadline())
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert!(again.duplicate, "the retry is reported as a duplicate");
    assert_eq!(
        first.position, again.position,
        "and points at the stored message"
    );
    let d = next(&mut sub, "the message").await;
    assert_eq!(d.message.id, "order-42");
    d.ack().unwrap();
    nothing_within(&mut sub, Duration::from_millis(500), "the duplicate").await;
}

/// Every publish of a JetStream batch gets its own answer, whatever the others' fate (the
/// PubAcks of a batch come back on one subscription and are told apart by their reply
/// subjects): the stored ones their stream sequences, a bad subject its own error, a subject
/// no stream captures a permanent error, a full stream that discards new messages a
/// retryable one naming JetStream's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_publish_of_a_jetstream_batch_gets_its_own_answer() {
    let Some(server) = Server::start() else {
        return;
    };
    let js = server.connect(JETSTREAM).await;
    let context = async_nats::jetstream::new(js.client().clone());
    context
        .create_stream(async_nats::jetstream::stream::Config {
            name: "FULL".into(),
            subjects: vec!["full.>".into()],
            max_messages: 1,
            discard: async_nats::jetstream::stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await
        .unwrap();
    let destinations = [
        "pbt.batch.a",
        "full.one",
        "pbt.batch.b",
        "a..b",
        "full.two",
        "nostream.here",
        "pbt.batch.c",
    ];
    let messages: Vec<Message> = destinations
        .iter()
        .map(|d| Message::new(format!("to {d}")))
        .collect();
    let batch: Vec<Outgoing> = destinations
        .iter()
        .zip(&messages)
        .map(|(destination, message)| Outgoing {
            destination,
            message,
        })
        .collect();
    let results = js.publish_batch(&batch, deadline()).await;
    assert_eq!(results.len(), destinations.len());
    let sequence = |i: usize| match &results[i] {
        Ok(receipt) => receipt.position.clone(),
        Err(e) => panic!("{}: {e}", destinations[i]),
    };
    use polybridge_core::Position::Sequence;
    assert_eq!(
        [sequence(0), sequence(2), sequence(6)],
        [Some(Sequence(1)), Some(Sequence(2)), Some(Sequence(3))],
        "the stored ones, in the order sent"
    );
    assert_eq!(sequence(1), Some(Sequence(1)), "FULL takes its first");
    let error = |i: usize| match &results[i] {
        Ok(receipt) => panic!("{}: stored as {receipt:?}", destinations[i]),
        Err(e) => e,
    };
    assert!(
        matches!(error(3), Error::Permanent { .. })
            && error(3).to_string().contains("invalid subject"),
        "{}",
        error(3)
    );
    assert!(
        error(4).is_retryable() && error(4).to_string().contains("maximum messages"),
        "{}",
        error(4)
    );
    assert!(
        matches!(error(5), Error::Permanent { .. })
            && error(5)
                .to_string()
                .contains("no JetStream stream captures"),
        "{}",
        error(5)
    );
}

/// Batches published at once from many tasks share the connection's one PubAck
/// subscription: each publish gets the answer to its own message, none is lost or swapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_jetstream_batches_each_get_their_own_pubacks() {
    let Some(server) = Server::start() else {
        return;
    };
    let js = std::sync::Arc::new(server.connect(JETSTREAM).await);
    let (tasks, batches, size) = (8, 25, 20);
    let mut running = Vec::new();
    for task in 0..tasks {
        let js = js.clone();
        running.push(tokio::spawn(async move {
            let mut stored = Vec::new();
            for batch in 0..batches {
                let messages: Vec<Message> = (0..size)
                    .map(|i| Message::new("x").with_id(format!("{task}-{batch}-{i}")))
                    .collect();
                let outgoing: Vec<Outgoing> = messages
                    .iter()
                    .map(|message| Outgoing {
                        destination: "pbt.many",
                        message,
                    })
                    .collect();
                for (message, result) in messages
                    .iter()
                    .zip(js.publish_batch(&outgoing, deadline()).await)
                {
                    let receipt = result.unwrap_or_else(|e| panic!("{}: {e}", message.id));
                    assert!(!receipt.duplicate, "{}", message.id);
                    stored.push((receipt.position, message.id.clone()));
                }
            }
            stored
        }));
    }
    let mut by_sequence = std::collections::HashMap::new();
    for task in running {
        for (position, id) in task.await.unwrap() {
            let Some(polybridge_core::Position::Sequence(sequence)) = position else {
                panic!("{id}: no sequence");
            };
            assert!(
                by_sequence.insert(sequence, id).is_none(),
                "sequence {sequence} twice"
            );
        }
    }
    let total = tasks * batches * size;
    assert_eq!(by_sequence.len(), total);
    // Each receipt names the sequence at which the stream holds that very message.
    let context = async_nats::jetstream::new(js.client().clone());
    let stream = context.get_stream("PBT").await.unwrap();
    for sequence in [1, 77, 1234, total as u64 / 2, total as u64] {
        let stored = stream.get_raw_message(sequence).await.unwrap();
        let id = stored
            .headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .map(|v| v.as_str().to_owned());
        assert_eq!(
            id.as_deref(),
            by_sequence.get(&sequence).map(String::as_str),
            "sequence {sequence}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_after_redelivers_after_the_delay_with_the_attempt_counted() {
    let Some(server) = Server::start() else {
        return;
    };
    let js = server.connect(JETSTREAM).await;
    let topic = "pbt.delay.x";
    let mut sub = js.subscribe(subject(topic).group("delayed")).await.unwrap();
    js.publish(topic, &Message::new("later").with_id("d1"), deadline())
        .await
        .unwrap();
    let d = next(&mut sub, "first delivery").await;
    assert_eq!((d.info.attempt, d.info.redelivered), (1, false));
    let delay = Duration::from_millis(1500);
    let nacked = tokio::time::Instant::now();
    d.nack_after(delay).unwrap();
    let again = next(&mut sub, "redelivery").await;
    let waited = nacked.elapsed();
    assert!(waited >= delay.mul_f64(0.9), "redelivered after {waited:?}");
    assert!(
        waited < delay + Duration::from_secs(3),
        "redelivered late: {waited:?}"
    );
    assert_eq!((again.info.attempt, again.info.redelivered), (2, true));
    assert_eq!(again.message.id, "d1");
    again.ack().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_held_past_ack_wait_is_kept_alive_not_redelivered() {
    let Some(server) = Server::start() else {
        return;
    };
    let js = server
        .connect(&JETSTREAM.replace("ack_wait=5s", "ack_wait=1s"))
        .await;
    let topic = "pbt.slow.job";
    let mut one = js.subscribe(subject(topic).group("slow")).await.unwrap();
    let mut two = js.subscribe(subject(topic).group("slow")).await.unwrap();
    js.publish(topic, &Message::new("work").with_id("slow-1"), deadline())
        .await
        .unwrap();
    let held = tokio::select! {
        Some(Ok(d)) = one.next() => d,
        Some(Ok(d)) = two.next() => d,
        _ = tokio::time::sleep(WAIT) => panic!("no delivery"),
    };
    // Three ack_waits: without in-progress acks the server would redeliver it.
    let quiet = Duration::from_secs(3);
    tokio::join!(
        nothing_within(&mut one, quiet, "member one while the job is held"),
        nothing_within(&mut two, quiet, "member two while the job is held"),
    );
    held.ack().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_subscriptions_resume_after_a_server_restart() {
    let Some(server) = Server::start_own() else {
        return;
    };
    let nats = server.connect("").await;
    let mut sub = nats.subscribe(subject("live.>")).await.unwrap();
    server.restart().await.unwrap().unwrap();
    // Core NATS keeps nothing: publish until one arrives after the client reconnected.
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut i = 0;
    loop {
        assert!(
            tokio::time::Instant::now() < end,
            "no delivery after the restart"
        );
        i += 1;
        if nats
            .publish(
                "live.tick",
                &Message::new(i.to_string()),
                Deadline::after(Duration::from_secs(1)),
            )
            .await
            .is_err()
        {
            continue;
        }
        if let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await
        {
            assert_eq!(d.info.topic, "live.tick");
            break;
        }
    }
}

/// A restarted server has forgotten the pull requests it held. The subscription pulls again
/// as soon as the client is back, rather than when those requests would have expired
/// (`fetch_wait` + 1 s after they were sent: 31 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_pulls_again_as_soon_as_a_restarted_server_is_back() {
    let Some(server) = Server::start_own() else {
        return;
    };
    let js = server.connect(&format!("{JETSTREAM}&fetch_wait=30s")).await;
    let topic = "pbt.restart.jobs";
    let mut sub = js
        .subscribe(subject(topic).group("restart-workers"))
        .await
        .unwrap();
    js.publish(topic, &Message::new("before"), deadline())
        .await
        .unwrap();
    next(&mut sub, "the message before the restart")
        .await
        .ack()
        .unwrap();
    server.restart().await.unwrap().unwrap();
    publish_once_back(&js, topic, &Message::new("after")).await;
    let d = next(&mut sub, "the message after the restart").await;
    assert_eq!(&d.message.payload[..], b"after");
    d.ack().unwrap();
}

/// A consumer deleted under a subscription (by an operator) answers no pull request again.
/// The subscription creates it again, from the first message it has not seen acknowledged:
/// the one it held is delivered again, what came while it was gone is delivered, and what
/// was acknowledged is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_consumer_is_created_again_from_the_first_message_not_acknowledged() {
    let Some(server) = Server::start() else {
        return;
    };
    let js = server.connect(JETSTREAM).await;
    let topic = "pbt.deleted.jobs";
    let mut sub = js
        .subscribe(subject(topic).group("deleted-workers"))
        .await
        .unwrap();
    for payload in ["acked", "held"] {
        js.publish(topic, &Message::new(payload), deadline())
            .await
            .unwrap();
    }
    next(&mut sub, "the first message").await.ack().unwrap();
    let held = next(&mut sub, "the second message").await;
    assert_eq!(&held.message.payload[..], b"held");
    let held_at = held.info.position.clone();
    let operator = async_nats::jetstream::new(
        async_nats::connect(server.url.trim_start_matches("nats://"))
            .await
            .unwrap(),
    );
    let stream = operator.get_stream("PBT").await.unwrap();
    stream.delete_consumer("deleted-workers").await.unwrap();
    // Sent at once on the operator's connection: it reaches the stream before the
    // subscription has noticed the deletion, asked, and created the consumer again.
    operator
        .publish(topic, "while gone".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let again = next(&mut sub, "the held message, delivered again").await;
    assert_eq!(&again.message.payload[..], b"held");
    assert_eq!(again.info.position, held_at);
    again.ack().unwrap();
    held.ack().unwrap();
    let gone = next(&mut sub, "the message published while it was gone").await;
    assert_eq!(&gone.message.payload[..], b"while gone");
    gone.ack().unwrap();
    let mut consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer("deleted-workers").await.unwrap();
    let info = consumer.info().await.unwrap();
    let Some(polybridge_core::Position::Sequence(held_sequence)) = held_at else {
        panic!("a JetStream delivery's position is its stream sequence: {held_at:?}");
    };
    assert_eq!(
        info.config.deliver_policy,
        async_nats::jetstream::consumer::DeliverPolicy::ByStartSequence {
            start_sequence: held_sequence
        },
        "created again from the held message, the first not acknowledged"
    );
    publish_and_receive(&js, &mut sub, topic).await;
}

/// A memory stream is gone after a restart, with its consumers. With `create_stream=true`
/// the subscription creates both again and goes on, from the new stream's first message
/// (here created by the publish, or by the subscription, whichever comes first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_goes_on_after_its_memory_stream_is_lost_in_a_restart() {
    let Some(server) = Server::start_own() else {
        return;
    };
    let js = server.connect(MEMORY_STREAM).await;
    let topic = "pbm.jobs";
    let mut sub = js
        .subscribe(subject(topic).group("memory-workers"))
        .await
        .unwrap();
    publish_and_receive(&js, &mut sub, topic).await;
    server.restart().await.unwrap().unwrap();
    publish_once_back(&js, topic, &Message::new("first in the new stream")).await;
    let d = next(&mut sub, "the first message of the new stream").await;
    assert_eq!(&d.message.payload[..], b"first in the new stream");
    d.ack().unwrap();
    publish_and_receive(&js, &mut sub, topic).await;
}

/// Without `create_stream`, a subscription whose stream is lost cannot create its consumer
/// again: it ends with an error that says so, rather than wait forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_whose_stream_is_lost_ends_with_an_error() {
    let Some(server) = Server::start_own() else {
        return;
    };
    let creator = server.connect(MEMORY_STREAM).await;
    let js = server.connect("mode=jetstream&stream=PBM").await;
    let mut sub = js
        .subscribe(subject("pbm.lost").group("lost-workers"))
        .await
        .unwrap();
    drop(creator);
    server.restart().await.unwrap().unwrap();
    ends_with_the_consumer_gone(&mut sub).await;
}

/// A memory stream is gone after a restart: with `create_stream=true`, a publish that finds
/// no stream creates it again and fails retryably; sent again, it is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_stream_lost_in_a_restart_is_created_again_by_publishing() {
    let Some(server) = Server::start_own() else {
        return;
    };
    let js = server.connect(MEMORY_STREAM).await;
    let topic = "pbm.orders";
    js.publish(topic, &Message::new("before"), deadline())
        .await
        .unwrap();
    server.restart().await.unwrap().unwrap();
    publish_once_back(&js, topic, &Message::new("after")).await;
    let mut sub = js
        .subscribe(subject(topic).start(StartPosition::Earliest))
        .await
        .unwrap();
    let d = next(&mut sub, "the message after the restart").await;
    assert_eq!(
        &d.message.payload[..],
        b"after",
        "the memory stream starts anew"
    );
    d.ack().unwrap();
}

/// Asserts that `stream` ends with the error of a consumer that no longer exists.
async fn ends_with_the_consumer_gone(stream: &mut DeliveryStream) {
    match tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("the subscription ends within WAIT")
    {
        Some(Err(e)) => assert!(
            e.is_retryable() && e.to_string().contains("no longer exists"),
            "{e}"
        ),
        other => panic!(
            "expected the error, got {:?}",
            other.map(|r| r.map(|d| d.info))
        ),
    }
    let end = tokio::time::timeout(WAIT, stream.next()).await;
    assert!(matches!(end, Ok(None)), "then the end of the stream");
}

/// Publishes `message` once a restarted server takes it: the failures before are
/// retryable, and the publish is accepted within `WAIT`.
async fn publish_once_back(js: &polybridge_nats::NatsBroker, topic: &str, message: &Message) {
    let end = tokio::time::Instant::now() + WAIT;
    while let Err(e) = js
        .publish(topic, message, Deadline::after(Duration::from_secs(1)))
        .await
    {
        assert!(
            e.is_retryable() && tokio::time::Instant::now() < end,
            "no publish accepted after the restart: {e}"
        );
    }
}

/// Publishes a message to `topic` and asserts that `stream` delivers it.
async fn publish_and_receive(
    js: &polybridge_nats::NatsBroker,
    stream: &mut DeliveryStream,
    topic: &str,
) {
    js.publish(topic, &Message::new("after"), deadline())
        .await
        .unwrap();
    let d = next(stream, "the message published now").await;
    assert_eq!(&d.message.payload[..], b"after");
    d.ack().unwrap();
}

/// A stream `PBM` over `pbm.>` kept in memory, created on connect.
const MEMORY_STREAM: &str =
    "mode=jetstream&stream=PBM&create_stream=true&stream_subjects=pbm.>&storage=memory";

/// A PubAck comes on the connection the message went out on. When the server dies with
/// publishes unanswered, they fail as soon as the client has reconnected, saying that
/// sending them again is safe, rather than when their acks time out (5 s); sent again, each
/// message is stored once. Both `publish` and `publish_batch`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_publishes_the_server_died_without_answering_fail_once_reconnected() {
    let Some(server) = Server::start_own() else {
        return;
    };
    let process = server.process.clone().expect("the test's own server");
    // Only the publisher is connected while the server is frozen, so what its sockets
    // receive is the publishes.
    let js = std::sync::Arc::new(server.connect(JETSTREAM).await);
    let topic = "pbt.crash.orders";
    let port: u16 = server.url.rsplit(':').next().unwrap().parse().unwrap();
    let mut expected = HashSet::new();
    for (round, ids) in [
        ("publish", vec!["order-1"]),
        ("publish_batch", vec!["order-2", "order-3", "order-4"]),
    ] {
        let messages: Vec<Message> = ids
            .iter()
            .map(|id| Message::new("placed").with_id(*id))
            .collect();
        expected.extend(ids.iter().map(|id| id.to_string()));
        // Frozen, the server takes the publishes into its socket and never answers them.
        server.freeze(true).unwrap().unwrap();
        let unread_before = unread_bytes_at(port);
        let publishing = tokio::spawn({
            let (js, messages) = (js.clone(), messages.clone());
            async move {
                let deadline = Deadline::after(Duration::from_secs(60));
                if let [message] = &messages[..] {
                    return vec![js.publish(topic, message, deadline).await];
                }
                let batch: Vec<Outgoing> = messages
                    .iter()
                    .map(|message| Outgoing {
                        destination: topic,
                        message,
                    })
                    .collect();
                js.publish_batch(&batch, deadline).await
            }
        });
        let end = tokio::time::Instant::now() + WAIT;
        while unread_bytes_at(port) <= unread_before {
            assert!(
                tokio::time::Instant::now() < end,
                "{round}: nothing reached the server"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let process = process.clone();
        tokio::task::spawn_blocking(move || {
            let mut process = process.lock().unwrap();
            process.kill().unwrap();
            process.start_again().unwrap();
        })
        .await
        .unwrap();
        let mut lost = 0;
        for (message, result) in messages.iter().zip(publishing.await.unwrap()) {
            // One the client had not written yet went out on the new connection: it may
            // have been answered there.
            if let Err(e) = result {
                assert!(
                    e.is_retryable() && e.to_string().contains("connection was lost"),
                    "{round}: {e}"
                );
                lost += 1;
                let receipt = js.publish(topic, message, deadline()).await.unwrap();
                assert!(
                    !receipt.duplicate,
                    "{round}: the dead server had not stored it"
                );
            }
        }
        assert!(
            lost >= 1,
            "{round}: the publish in the dead server's socket did not fail"
        );
    }
    let mut sub = js
        .subscribe(subject(topic).start(StartPosition::Earliest))
        .await
        .unwrap();
    let mut stored = HashSet::new();
    for _ in 0..expected.len() {
        let d = next(&mut sub, "a message sent again").await;
        assert!(
            stored.insert(d.message.id.clone()),
            "{} twice",
            d.message.id
        );
        d.ack().unwrap();
    }
    assert_eq!(stored, expected);
    nothing_within(&mut sub, Duration::from_millis(500), "a second copy").await;
}

/// Bytes the server listening on `port` has received from its clients and not yet read
/// (the receive queues of its loopback connections, in /proc/net/tcp).
fn unread_bytes_at(port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit(':').next()?;
            let unread = fields.get(4)?.split(':').nth(1)?;
            (u16::from_str_radix(local_port, 16).ok()? == port)
                .then(|| u64::from_str_radix(unread, 16).ok())
                .flatten()
        })
        .sum()
}

/// Core `subscribe` returns once the SUB was written, so a message published on another
/// connection right after can reach the server first and miss the subscription (that lost a
/// message within 300 rounds in 4 of 4 runs). A message the subscriber publishes on its own
/// connection is handled after its SUB: once it is back, the server has the subscription and
/// a message from any connection arrives. The conformance suite's `wait_until_subscribed`
/// relies on this.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_subscribers_own_message_is_back_one_from_another_connection_arrives() {
    let Some(server) = Server::start() else {
        return;
    };
    for round in 0..300 {
        let publisher = server.connect("").await;
        let subscriber = server.connect("").await;
        let topic = format!("probe.r{round}");
        let mut sub = subscriber.subscribe(subject(&topic)).await.unwrap();
        subscriber
            .publish(&topic, &Message::new("own"), deadline())
            .await
            .unwrap();
        let own = next(&mut sub, "the subscriber's own message").await;
        assert_eq!(&own.message.payload[..], b"own");
        publisher
            .publish(&topic, &Message::new("other"), deadline())
            .await
            .unwrap();
        let other = next(&mut sub, &format!("round {round}: from another connection")).await;
        assert_eq!(&other.message.payload[..], b"other");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_before_anything_is_sent() {
    let Some(server) = Server::start() else {
        return;
    };
    let nats = server.connect("").await;
    let mut everything = nats.subscribe(subject(">")).await.unwrap();
    for bad in ["", "a..b", "orders.*", "with space"] {
        let e = nats
            .publish(bad, &Message::new("x"), deadline())
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::Permanent { .. }) && e.to_string().contains("invalid subject"),
            "{bad:?}: {e}"
        );
    }
    let limit = polybridge_core::Broker::capabilities(&nats)
        .max_payload
        .unwrap();
    let e = nats
        .publish("big", &Message::new(vec![0u8; limit + 1]), deadline())
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::PayloadTooLarge { size, limit: l, .. } if size == limit + 1 && l == limit),
        "{e}"
    );
    nothing_within(
        &mut everything,
        Duration::from_millis(300),
        "a refused publish",
    )
    .await;
    everything.close().await;

    let js = server.connect(JETSTREAM).await;
    let e = js
        .publish("nostream.here", &Message::new("x"), deadline())
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Permanent { .. })
            && e.to_string().contains("no JetStream stream captures"),
        "{e}"
    );
    // Bound to stream PBT by the URL: the server refuses a subject outside it.
    let e = js
        .subscribe(subject("nostream.>"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("stream PBT") && e.contains("not a valid subset"),
        "{e}"
    );
    // Without `stream=`, the stream is looked up by subject.
    let lookup = server.connect("mode=jetstream").await;
    let e = lookup.subscribe(subject("nostream.>")).await.unwrap_err();
    assert!(
        e.to_string().contains("no JetStream stream captures"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_an_auth_error_without_the_password() {
    if polybridge_testkit::skip_reason(polybridge_testkit::BrokerKind::Nats).is_some() {
        return;
    }
    let port = polybridge_testkit::free_loopback_port().unwrap();
    let mut child = std::process::Command::new("nats-server")
        .args([
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "--user",
            "app",
            "--pass",
            "right",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nats-server");
    let end = std::time::Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < end, "nats-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = format!("nats://app:wrong-secret@127.0.0.1:{port}");
    let result = polybridge_nats::NatsBroker::connect(&url.parse().unwrap()).await;
    let ok = polybridge_nats::NatsBroker::connect(
        &format!("nats://app:right@127.0.0.1:{port}")
            .parse()
            .unwrap(),
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let e = result.err().expect("a wrong password is refused");
    assert!(matches!(e, Error::Auth { .. }), "{e:?}");
    assert!(!e.to_string().contains("wrong-secret"), "{e}");
    assert!(ok.is_ok(), "the right password connects");
}
