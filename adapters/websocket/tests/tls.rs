//! `wss://`: a hub presenting a certificate, clients trusting it through `ca_file`; without
//! it the certificate is refused. The certificate is made by the `openssl` command (the
//! test is skipped, saying so, where there is none).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use polybridge_core::{
    Deadline, Error, Message, Publisher, Subscriber, Subscription, TopicPattern,
};
use polybridge_websocket::WsBroker;

/// A self-signed certificate for 127.0.0.1 and localhost: (cert.pem, key.pem).
fn certificate() -> Option<(PathBuf, PathBuf)> {
    let dir = std::env::temp_dir().join(format!("pbt-ws-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let output = Command::new("openssl")
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
    match output {
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
async fn a_hub_over_wss() {
    let Some((cert, key)) = certificate() else {
        return;
    };
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
        &format!("wss://127.0.0.1:{port}/?ca_file={}", cert.display())
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
            Message::new("over tls"),
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
