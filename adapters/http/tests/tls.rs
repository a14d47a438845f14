//! `https://`: the webhook server presents a certificate, the publisher trusts it through
//! `ca_file`; without it the certificate is refused. The certificate is made by the
//! `openssl` command (the test is skipped, saying so, where there is none).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use polybridge_core::{Deadline, Message, Publisher, Subscriber, Subscription, TopicPattern};
use polybridge_http::HttpBroker;

/// A self-signed certificate for 127.0.0.1 and localhost: (cert.pem, key.pem).
fn certificate() -> Option<(PathBuf, PathBuf)> {
    let dir = std::env::temp_dir().join(format!("pbt-http-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output();
    match status {
        Ok(o) if o.status.success() => Some((cert, key)),
        Ok(o) => {
            eprintln!(
                "skipped: openssl failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            None
        }
        Err(e) => {
            eprintln!("skipped: no openssl command: {e}");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_over_https() {
    let Some((cert, key)) = certificate() else {
        return;
    };
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
    let trusted = HttpBroker::connect(
        &format!("{base}?ca_file={}", cert.display())
            .parse()
            .unwrap(),
    )
    .unwrap();
    let publish = tokio::spawn(async move {
        trusted
            .publish(
                "secure",
                Message::new("over tls").with_id("s1"),
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
            Message::new("x"),
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
