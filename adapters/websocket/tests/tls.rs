//! `wss://`: a hub presenting a certificate, clients trusting its CA through `ca_file`;
//! without it the certificate is refused. The certificates are the test harness's (rcgen:
//! a CA and a server certificate for `localhost`/`127.0.0.1` it signed).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use polybridge_core::{
    Deadline, Error, Message, Publisher, Subscriber, Subscription, TopicPattern,
};
use polybridge_websocket::WsBroker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_over_wss() {
    let (files, _dir) = polybridge_testkit::test_certificates().unwrap();
    let (cert, key, ca) = (&files.server_cert, &files.server_key, &files.ca);
    let port = common::free_port();
    let served = WsBroker::connect(
        &format!(
            "wss://127.0.0.1:{port}/?serve=true&tls_cert={}&tls_key={}",
            cert.display(),
            key.display()
        )
        .parse()
        .unwrap(),
    )
    .await
    .unwrap();
    assert!(served.hub().unwrap().url().starts_with("wss://"));
    let client = WsBroker::connect(
        &format!("wss://127.0.0.1:{port}/?ca_file={}", ca.display())
            .parse()
            .unwrap(),
    )
    .await
    .expect("a client trusting the certificate");
    let mut sub = client
        .subscribe(Subscription::new(TopicPattern::parse("secure").unwrap()))
        .await
        .unwrap();
    served
        .publish(
            "secure",
            &Message::new("over tls"),
            Deadline::after(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&d.message.payload[..], b"over tls");
    d.ack().unwrap();

    let e = WsBroker::connect(&format!("wss://127.0.0.1:{port}/").parse().unwrap())
        .await
        .err()
        .expect("an unknown certificate is refused");
    assert!(matches!(e, Error::Connection { .. }), "{e}");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_over_wss() {
    let (files, _dir) = polybridge_testkit::test_certificates().unwrap();
    let (cert, key, ca) = (&files.server_cert, &files.server_key, &files.ca);
    let port = common::free_port();
    let served = WsBroker::connect(
        &format!(
            "wss://app:tls-s3cret@127.0.0.1:{port}/?serve=true&tls_cert={}&tls_key={}",
            cert.display(),
            key.display()
        )
        .parse()
        .unwrap(),
    )
    .await
    .unwrap();
    let client = |user_info: &str| {
        format!(
            "wss://{user_info}127.0.0.1:{port}/?ca_file={}",
            ca.display()
        )
        .parse()
        .unwrap()
    };
    let good = WsBroker::connect(&client("app:tls-s3cret@"))
        .await
        .expect("the right password over wss");
    let mut sub = good
        .subscribe(Subscription::new(TopicPattern::parse("secure").unwrap()))
        .await
        .unwrap();
    served
        .publish(
            "secure",
            &Message::new("authenticated"),
            Deadline::after(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&d.message.payload[..], b"authenticated");
    d.ack().unwrap();
    for user_info in ["app:wrong-s3cret@", ""] {
        let e = WsBroker::connect(&client(user_info))
            .await
            .err()
            .expect("refused");
        assert!(matches!(e, Error::Auth { .. }), "{user_info:?}: {e:?}");
        assert!(!format!("{e} {e:?}").contains("s3cret"), "{e:?}");
    }
    assert_eq!(served.hub().unwrap().unauthorized_requests(), 2);
}
