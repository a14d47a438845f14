//! HTTP Basic auth from `user:password@` in the URL: the publisher sends it, the webhook
//! server requires it (401 with a `Basic` challenge otherwise); a refused publisher gets
//! `Error::Auth` at once, and no error, log field or `Debug` shows the password.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{free_port, raw_request};
use polybridge_core::{
    Deadline, Error, Message, Publisher, Subscriber, Subscription, TopicPattern,
};
use polybridge_http::HttpBroker;

const WAIT: Duration = Duration::from_secs(10);

fn connect(url: &str) -> HttpBroker {
    HttpBroker::connect(&url.parse().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_lets_the_right_password_through_and_refuses_others() {
    let port = free_port();
    let server = connect(&format!("http://app:right-s3cret@127.0.0.1:{port}/hooks"));
    let debug = format!("{:?}", server.config());
    assert!(!debug.contains("right-s3cret"), "{debug}");
    let mut sub = server
        .subscribe(Subscription::new(TopicPattern::parse("orders.*").unwrap()))
        .await
        .unwrap();
    let addr = server.local_addr().await.unwrap();

    // The right credentials: the round trip works.
    let good = connect(&format!("http://app:right-s3cret@127.0.0.1:{port}/hooks"));
    let publish = tokio::spawn(async move {
        good.publish(
            "orders.created",
            &Message::new("paid").with_id("a1"),
            Deadline::after(WAIT),
        )
        .await
    });
    let d = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a delivery with the right password")
        .unwrap()
        .unwrap();
    assert_eq!(
        (d.message.id.as_str(), &d.message.payload[..]),
        ("a1", &b"paid"[..])
    );
    d.ack().unwrap();
    publish
        .await
        .unwrap()
        .expect("confirmed with the right password");
    assert_eq!(server.unauthorized_requests(), 0);

    // A wrong password: Error::Auth without retries (no max_attempts: a retried 401 would
    // run into the deadline and be a Timeout) and without the password.
    let wrong = connect(&format!("http://app:wrong-s3cret@127.0.0.1:{port}/hooks"));
    let e = wrong
        .publish("orders.created", &Message::new("x"), Deadline::after(WAIT))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Auth { .. }), "{e:?}");
    assert!(!e.is_retryable(), "{e}");
    let (text, debug) = (e.to_string(), format!("{e:?}"));
    assert!(text.contains("401") && text.contains("\"app\""), "{text}");
    assert!(
        !text.contains("s3cret") && !debug.contains("s3cret"),
        "{debug}"
    );

    // No credentials: refused too.
    let anonymous = connect(&format!("http://127.0.0.1:{port}/hooks"));
    let e = anonymous
        .publish("orders.created", &Message::new("x"), Deadline::after(WAIT))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Auth { .. }), "{e:?}");

    // A plain sender sees the challenge; with the header it gets through.
    let r = raw_request(addr, "POST", "/hooks/orders.created", &[], b"x").await;
    assert_eq!(
        (r.status, r.header("www-authenticate")),
        (401, Some("Basic realm=\"polybridge\""))
    );
    let r = raw_request(
        addr,
        "POST",
        "/hooks/orders.created",
        &[("authorization", "Basic YXBwOndyb25n")],
        b"x",
    )
    .await;
    assert_eq!(r.status, 401, "app:wrong");
    assert_eq!(server.unauthorized_requests(), 4);
    let token = "Basic YXBwOnJpZ2h0LXMzY3JldA=="; // base64("app:right-s3cret")
    let post = tokio::spawn(async move {
        raw_request(
            addr,
            "POST",
            "/hooks/orders.shipped",
            &[("authorization", token)],
            b"y",
        )
        .await
    });
    let d = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a delivery from a plain sender with the header")
        .unwrap()
        .unwrap();
    assert_eq!(&d.message.payload[..], b"y");
    d.ack().unwrap();
    assert_eq!(post.await.unwrap().status, 204);
    assert_eq!(server.unauthorized_requests(), 4);
}
