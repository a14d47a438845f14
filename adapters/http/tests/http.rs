//! HTTP-specific behaviour: the webhook server answers 2xx only after an ack, 503 with
//! `retry-after` on nack, 422 on reject, 504 when nobody settles; plain senders (curl, a
//! SaaS) are understood; the publisher retries 5xx, 408 and 429 and stops on other 4xx;
//! with `publish=wait` a publish resolves only once the subscriber acked.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{raw_request, Endpoint, ScriptedServer};
use polybridge_core::{
    well_known, Deadline, Delivery, DeliveryStream, Error, Message, Publisher, Subscriber,
    Subscription, TopicPattern,
};

const WAIT: Duration = Duration::from_secs(10);

fn subscription(pattern: &str) -> Subscription {
    Subscription::new(TopicPattern::parse(pattern).unwrap())
}

async fn next(stream: &mut DeliveryStream, what: &str) -> Delivery {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {WAIT:?}"))
        .unwrap_or_else(|| panic!("{what}: stream ended"))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_gets_204_only_after_the_ack() {
    let endpoint = Endpoint::new();
    let broker = endpoint.connect("");
    let mut sub = broker.subscribe(subscription("orders.*")).await.unwrap();
    let addr = broker.local_addr().await.unwrap();
    let mut post = tokio::spawn(async move {
        raw_request(
            addr,
            "POST",
            "/hooks/orders.created",
            &[("x-pb-id", "o-1")],
            b"{\"n\":1}",
        )
        .await
    });
    let d = next(&mut sub, "delivery").await;
    assert_eq!(
        (d.message.id.as_str(), &d.message.payload[..]),
        ("o-1", &b"{\"n\":1}"[..])
    );
    assert_eq!(
        (d.info.topic.as_str(), d.info.attempt, d.info.redelivered),
        ("orders.created", 1, false)
    );
    // Unsettled: the sender is still waiting for its answer.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut post)
            .await
            .is_err(),
        "the POST was answered before the delivery was settled"
    );
    d.ack().unwrap();
    let response = tokio::time::timeout(WAIT, post).await.unwrap().unwrap();
    assert_eq!(response.status, 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_answers_503_with_retry_after_and_reject_422() {
    let endpoint = Endpoint::new();
    let broker = endpoint.connect("");
    let mut sub = broker.subscribe(subscription("jobs")).await.unwrap();
    let addr = broker.local_addr().await.unwrap();

    let post = tokio::spawn(raw_request(addr, "POST", "/hooks/jobs", &[], b"a"));
    next(&mut sub, "first")
        .await
        .nack_after(Duration::from_millis(1500))
        .unwrap();
    let r = post.await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("2"), "{r:?}");
    assert_eq!(r.header("x-pb-retry-after-ms"), Some("1500"), "{r:?}");

    let post = tokio::spawn(raw_request(
        addr,
        "POST",
        "/hooks/jobs",
        &[("x-pb-attempt", "2")],
        b"a",
    ));
    let d = next(&mut sub, "redelivery").await;
    assert_eq!((d.info.attempt, d.info.redelivered), (2, true));
    d.nack().unwrap();
    let r = post.await.unwrap();
    assert_eq!((r.status, r.header("retry-after")), (503, Some("0")));

    let post = tokio::spawn(raw_request(addr, "POST", "/hooks/jobs", &[], b"bad"));
    next(&mut sub, "to reject")
        .await
        .reject("not json")
        .unwrap();
    let r = post.await.unwrap();
    assert_eq!(r.status, 422);
    assert!(
        String::from_utf8_lossy(&r.body).contains("not json"),
        "{r:?}"
    );

    // A dropped delivery is a nack: the sender is asked to retry.
    let post = tokio::spawn(raw_request(addr, "POST", "/hooks/jobs", &[], b"c"));
    drop(next(&mut sub, "to drop").await);
    assert_eq!(post.await.unwrap().status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_dead_letters_to_a_local_subscription() {
    let endpoint = Endpoint::new();
    let broker = endpoint.connect("");
    let mut dead = broker.subscribe(subscription("jobs.dead")).await.unwrap();
    let mut sub = broker
        .subscribe(subscription("jobs.in").dead_letter("jobs.dead"))
        .await
        .unwrap();
    let addr = broker.local_addr().await.unwrap();
    let post = tokio::spawn(raw_request(
        addr,
        "POST",
        "/hooks/jobs.in",
        &[("x-pb-id", "j1")],
        b"x",
    ));
    next(&mut sub, "delivery").await.reject("schema").unwrap();
    assert_eq!(post.await.unwrap().status, 422);
    let d = next(&mut dead, "dead letter").await;
    assert_eq!(d.message.id, "j1");
    assert_eq!(
        d.message.headers.get_str(well_known::REJECT_REASON),
        Some("schema")
    );
    assert_eq!(
        d.message.headers.get_str(well_known::ORIGINAL_TOPIC),
        Some("jobs.in")
    );
    assert_eq!(d.message.headers.get_str(well_known::ATTEMPTS), Some("1"));
    d.ack().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsettled_deliveries_time_out_with_504_and_errors_have_statuses() {
    let endpoint = Endpoint::new();
    let broker = endpoint.connect("ack_timeout=300ms&max_payload=10");
    let mut sub = broker.subscribe(subscription("slow")).await.unwrap();
    let addr = broker.local_addr().await.unwrap();
    let post = tokio::spawn(raw_request(addr, "POST", "/hooks/slow", &[], b"x"));
    let held = next(&mut sub, "held").await;
    assert_eq!(post.await.unwrap().status, 504);
    drop(held);

    let r = raw_request(addr, "POST", "/hooks/nobody", &[], b"x").await;
    assert_eq!(
        (r.status, r.header("retry-after")),
        (503, Some("1")),
        "no subscription"
    );
    let r = raw_request(addr, "GET", "/hooks/slow", &[], b"").await;
    assert_eq!(r.status, 405);
    let r = raw_request(addr, "POST", "/elsewhere/slow", &[], b"x").await;
    assert_eq!(r.status, 404);
    let r = raw_request(addr, "POST", "/hooks/slow", &[], &[0u8; 11]).await;
    assert_eq!(r.status, 413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_sender_s_headers_and_binary_body_are_understood() {
    let endpoint = Endpoint::new();
    let broker = endpoint.connect("");
    let mut sub = broker.subscribe(subscription("github.#")).await.unwrap();
    let addr = broker.local_addr().await.unwrap();
    let body = [0u8, 0xff, 0x80, b'\r', b'\n'];
    let post = tokio::spawn(async move {
        raw_request(
            addr,
            "POST",
            "/hooks/github.push",
            &[
                ("content-type", "application/octet-stream"),
                ("idempotency-key", "delivery-42"),
                ("x-pb-header-X-GitHub-Event", "push"),
                ("x-pb-key", "repo%2F1"),
            ],
            &body,
        )
        .await
    });
    let d = next(&mut sub, "delivery").await;
    assert_eq!(&d.message.payload[..], &body);
    assert_eq!(d.message.id, "delivery-42");
    assert_eq!(
        d.message.content_type.as_deref(),
        Some("application/octet-stream")
    );
    assert_eq!(d.message.headers.get_str("x-github-event"), Some("push"));
    assert_eq!(d.message.key.as_deref(), Some(&b"repo/1"[..]));
    d.ack().unwrap();
    assert_eq!(post.await.unwrap().status, 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_share_and_patterns_match_the_path() {
    let endpoint = Endpoint::new();
    let broker = endpoint.connect("");
    let mut a = broker
        .subscribe(subscription("orders.*").group("billing").max_in_flight(1))
        .await
        .unwrap();
    let mut b = broker
        .subscribe(subscription("orders.*").group("billing").max_in_flight(1))
        .await
        .unwrap();
    let mut audit = broker.subscribe(subscription("#")).await.unwrap();
    let addr = broker.local_addr().await.unwrap();
    let p1 = tokio::spawn(raw_request(
        addr,
        "POST",
        "/hooks/orders.eu",
        &[("x-pb-id", "1")],
        b"1",
    ));
    let p2 = tokio::spawn(raw_request(
        addr,
        "POST",
        "/hooks/orders.us",
        &[("x-pb-id", "2")],
        b"2",
    ));
    // Each member holds one (in-flight 1), so both members got one each.
    let da = next(&mut a, "member a").await;
    let db = next(&mut b, "member b").await;
    let mut ids = vec![da.message.id.clone(), db.message.id.clone()];
    ids.sort();
    assert_eq!(ids, ["1", "2"]);
    da.ack().unwrap();
    db.ack().unwrap();
    // The private subscription to `#` gets both too; the answers wait for it.
    for _ in 0..2 {
        next(&mut audit, "audit").await.ack().unwrap();
    }
    assert_eq!(p1.await.unwrap().status, 204);
    assert_eq!(p2.await.unwrap().status, 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publisher_retries_5xx_408_and_429_until_a_2xx() {
    let mut server = ScriptedServer::start(vec![
        (500, vec![]),
        (503, vec![("retry-after", "0".into())]),
        (429, vec![("x-pb-retry-after-ms", "50".into())]),
        (408, vec![]),
        (200, vec![]),
    ])
    .await;
    let publisher = server.publisher("retry_initial=10ms");
    let m = Message::new("hello").with_id("r-1").with_header("h", "v");
    publisher
        .publish("orders/eu created", &m, Deadline::after(WAIT))
        .await
        .expect("confirmed after the retries");
    for attempt in 1..=5 {
        let r = server.received.recv().await.unwrap();
        assert_eq!(r.path, "/in/orders/eu%20created");
        assert_eq!(r.header("x-pb-id"), Some("r-1"));
        assert_eq!(r.header("x-pb-header"), Some("h=v"));
        assert_eq!(r.header("x-pb-attempt"), Some(attempt.to_string().as_str()));
        assert_eq!(r.body, b"hello");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publisher_stops_on_other_4xx_and_on_max_attempts() {
    let mut server = ScriptedServer::start(vec![(400, vec![])]).await;
    let publisher = server.publisher("");
    let e = publisher
        .publish("t", &Message::new("x"), Deadline::after(WAIT))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Permanent { .. }), "{e}");
    assert!(e.to_string().contains("400"), "{e}");
    server.received.recv().await.unwrap();
    assert!(server.received.try_recv().is_err(), "a 400 is not retried");

    let mut server = ScriptedServer::start(vec![(502, vec![])]).await;
    let publisher = server.publisher("max_attempts=3&retry_initial=10ms");
    let e = publisher
        .publish("t", &Message::new("x"), Deadline::after(WAIT))
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e}");
    for _ in 0..3 {
        server.received.recv().await.unwrap();
    }
    assert!(server.received.try_recv().is_err(), "three attempts only");

    // Past the deadline a publish is a Timeout.
    let server = ScriptedServer::start(vec![(503, vec![("retry-after", "0".into())])]).await;
    let publisher = server.publisher("retry_initial=10ms");
    let e = publisher
        .publish(
            "t",
            &Message::new("x"),
            Deadline::after(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Timeout { .. } | Error::Transient { .. }),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_publish_wait_a_publish_resolves_once_the_subscriber_acked() {
    let endpoint = Endpoint::new();
    let subscriber = endpoint.connect("");
    let publisher = endpoint.connect("retry_initial=10ms");
    let mut sub = subscriber.subscribe(subscription("pay")).await.unwrap();
    let mut publish = tokio::spawn(async move {
        publisher
            .publish(
                "pay",
                &Message::new("1").with_id("p1"),
                Deadline::after(WAIT),
            )
            .await
    });
    let d = next(&mut sub, "first").await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut publish)
            .await
            .is_err(),
        "publish resolved before the subscriber settled"
    );
    // A nack makes the publisher retry: a redelivery, marked so.
    d.nack().unwrap();
    let again = next(&mut sub, "redelivery").await;
    assert_eq!(
        (
            again.message.id.as_str(),
            again.info.attempt,
            again.info.redelivered
        ),
        ("p1", 2, true)
    );
    again.ack().unwrap();
    tokio::time::timeout(WAIT, publish)
        .await
        .unwrap()
        .unwrap()
        .expect("confirmed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_answers_hits_the_per_request_timeout() {
    // Accepts connections, reads, never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            let _ = accepted_tx.send(());
            held.push(stream);
        }
    });
    let publisher = polybridge_http::HttpBroker::connect(
        &format!("http://{addr}/in?request_timeout=200ms&max_attempts=2&retry_initial=10ms")
            .parse()
            .unwrap(),
    )
    .unwrap();
    let started = tokio::time::Instant::now();
    let e = publisher
        .publish("t", &Message::new("x"), Deadline::after(WAIT))
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert!(e.to_string().contains("no answer within"), "{e}");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "two attempts of 200 ms"
    );
    for _ in 0..2 {
        accepted.recv().await.unwrap();
    }
}
