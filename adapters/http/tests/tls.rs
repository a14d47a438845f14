//! `https://`: the webhook server presents a certificate, the publisher trusts its CA
//! through `ca_file`; without it the certificate is refused. The certificates are the test
//! harness's (rcgen: a CA and a server certificate for `localhost`/`127.0.0.1` it signed).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use polybridge_core::{Deadline, Message, Publisher, Subscriber, Subscription, TopicPattern};
use polybridge_http::HttpBroker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_over_https() {
    let (files, _dir) = polybridge_testkit::test_certificates().unwrap();
    let (cert, key, ca) = (&files.server_cert, &files.server_key, &files.ca);
    let base = format!("https://127.0.0.1:{}/hooks", common::free_port());
    let server = HttpBroker::connect(
        &format!(
            "{base}?tls_cert={}&tls_key={}",
            cert.display(),
            key.display()
        )
        .parse()
        .unwrap(),
    )
    .unwrap();
    let mut sub = server
        .subscribe(Subscription::new(TopicPattern::parse("secure").unwrap()))
        .await
        .unwrap();
    let trusted =
        HttpBroker::connect(&format!("{base}?ca_file={}", ca.display()).parse().unwrap()).unwrap();
    let publish = tokio::spawn(async move {
        trusted
            .publish(
                "secure",
                &Message::new("over tls").with_id("s1"),
                Deadline::after(Duration::from_secs(10)),
            )
            .await
    });
    let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a delivery over https")
        .unwrap()
        .unwrap();
    assert_eq!(
        (d.message.id.as_str(), &d.message.payload[..]),
        ("s1", &b"over tls"[..])
    );
    d.ack().unwrap();
    publish.await.unwrap().expect("confirmed over https");

    // Without the CA the certificate is refused; the error says why.
    let untrusted =
        HttpBroker::connect(&format!("{base}?max_attempts=1").parse().unwrap()).unwrap();
    let e = untrusted
        .publish(
            "secure",
            &Message::new("x"),
            Deadline::after(Duration::from_secs(10)),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");

    // Serving https needs the certificate.
    let e = HttpBroker::connect(&format!("{base}x").parse().unwrap())
        .unwrap()
        .subscribe(Subscription::new(TopicPattern::parse("x").unwrap()))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("tls_cert"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_over_https() {
    let (files, _dir) = polybridge_testkit::test_certificates().unwrap();
    let (cert, key, ca) = (&files.server_cert, &files.server_key, &files.ca);
    let port = common::free_port();
    let server = HttpBroker::connect(
        &format!(
            "https://app:tls-s3cret@127.0.0.1:{port}/hooks?tls_cert={}&tls_key={}",
            cert.display(),
            key.display()
        )
        .parse()
        .unwrap(),
    )
    .unwrap();
    let mut sub = server
        .subscribe(Subscription::new(TopicPattern::parse("secure").unwrap()))
        .await
        .unwrap();
    let client = |user_info: &str| {
        HttpBroker::connect(
            &format!(
                "https://{user_info}127.0.0.1:{port}/hooks?ca_file={}",
                ca.display()
            )
            .parse()
            .unwrap(),
        )
        .unwrap()
    };
    let good = client("app:tls-s3cret@");
    let publish = tokio::spawn(async move {
        good.publish(
            "secure",
            &Message::new("authenticated").with_id("t1"),
            Deadline::after(Duration::from_secs(10)),
        )
        .await
    });
    let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a delivery over https with the right password")
        .unwrap()
        .unwrap();
    assert_eq!(d.message.id, "t1");
    d.ack().unwrap();
    publish.await.unwrap().expect("confirmed over https");

    for user_info in ["app:wrong-s3cret@", ""] {
        let e = client(user_info)
            .publish(
                "secure",
                &Message::new("x"),
                Deadline::after(Duration::from_secs(10)),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(e, polybridge_core::Error::Auth { .. }),
            "{user_info:?}: {e:?}"
        );
        assert!(!format!("{e} {e:?}").contains("s3cret"), "{e:?}");
    }
    assert_eq!(server.unauthorized_requests(), 2);
}
