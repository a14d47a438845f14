//! The checks every TLS test of an adapter makes, shared so each `tests/tls.rs` only says
//! how its adapter connects: the client URLs ([`TlsUrls`]), a publish/consume round trip
//! over the TLS connection ([`round_trip`]) and "this client must be refused"
//! ([`assert_refused`]).

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use polybridge_core::{Deadline, Message, Publisher, Subscriber, Subscription};

use crate::TlsFiles;

/// How long [`round_trip`] waits for the publish and for the delivery.
pub const TLS_WAIT: Duration = Duration::from_secs(15);

/// Client URLs for a TLS listener: one that must connect ([`TlsUrls::mutual`]) and the
/// ones the client or the broker must refuse ([`TlsUrls::refused`]).
#[derive(Debug, Clone)]
pub struct TlsUrls {
    /// Trusts the test CA and presents the client certificate: must connect.
    pub mutual: String,
    /// Trusts the test CA but presents no client certificate: the broker requires one.
    pub no_client_cert: String,
    /// Presents the client certificate but trusts only [`TlsFiles::other_ca`], which did
    /// not sign the server's certificate.
    pub wrong_ca: String,
    /// TLS with the system's roots, which do not hold the test CA.
    pub system_roots: String,
    /// Plain text (no TLS) to the TLS port, when the scheme has a plain twin.
    pub plain: Option<String>,
}

/// `base` with `options` appended (`?` or `&`); empty options are left out.
pub fn with_options(base: &str, options: &[&str]) -> String {
    let options: Vec<&str> = options.iter().copied().filter(|o| !o.is_empty()).collect();
    if options.is_empty() {
        return base.to_owned();
    }
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}{}", options.join("&"))
}

impl TlsUrls {
    /// The URLs for the TLS URL `tls_base` (e.g. [`crate::BrokerProcess::tls_url`]) and the
    /// certificates `files`. `extra` is added to every URL that must be refused (e.g.
    /// `connect_timeout=2s`, so a refusal is quick); `plain` is the same port without TLS,
    /// if the adapter has such a URL.
    pub fn new(tls_base: &str, files: &TlsFiles, extra: &str, plain: Option<&str>) -> TlsUrls {
        let ca = format!("ca_file={}", files.ca.display());
        let other_ca = format!("ca_file={}", files.other_ca.display());
        let cert = format!(
            "cert_file={}&key_file={}",
            files.client_cert.display(),
            files.client_key.display()
        );
        TlsUrls {
            mutual: with_options(tls_base, &[&ca, &cert]),
            no_client_cert: with_options(tls_base, &[&ca, extra]),
            wrong_ca: with_options(tls_base, &[&other_ca, &cert, extra]),
            system_roots: with_options(tls_base, &[extra]),
            plain: plain.map(|p| with_options(p, &[extra])),
        }
    }

    /// Every URL that must not connect, with what it tests.
    pub fn refused(&self) -> Vec<(&'static str, String)> {
        let mut urls = vec![
            ("without a client certificate", self.no_client_cert.clone()),
            (
                "trusting only a CA that did not sign the server",
                self.wrong_ca.clone(),
            ),
            ("trusting only the system roots", self.system_roots.clone()),
        ];
        if let Some(plain) = &self.plain {
            urls.push(("in plain text", plain.clone()));
        }
        urls
    }
}

/// Subscribes with `subscription`, publishes one message to `topic` and checks it arrives
/// and is acknowledged, then closes the subscription.
pub async fn round_trip<B: Publisher + Subscriber>(
    broker: &B,
    subscription: Subscription,
    topic: &str,
) {
    let mut stream = match broker.subscribe(subscription).await {
        Ok(s) => s,
        Err(e) => panic!("subscribing over TLS: {e}"),
    };
    if let Err(e) = broker
        .publish(topic, Message::new("over tls"), Deadline::after(TLS_WAIT))
        .await
    {
        panic!("publishing to {topic} over TLS: {e}");
    }
    let delivery = match tokio::time::timeout(TLS_WAIT, stream.next()).await {
        Ok(Some(Ok(d))) => d,
        Ok(Some(Err(e))) => panic!("receiving from {topic} over TLS: {e}"),
        Ok(None) => panic!("the subscription to {topic} ended without a delivery"),
        Err(_) => panic!("no delivery from {topic} within {TLS_WAIT:?}"),
    };
    assert_eq!(&delivery.message.payload[..], b"over tls");
    if let Err(e) = delivery.ack() {
        panic!("acknowledging over TLS: {e}");
    }
    stream.close().await;
}

/// Tries `connect` with every URL of [`TlsUrls::refused`] and panics unless each fails
/// with a non-empty error. Returns the error texts, in that order.
pub async fn assert_refused<F, Fut, T, E>(urls: &TlsUrls, mut connect: F) -> Vec<String>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Display,
{
    let mut errors = Vec::new();
    for (what, url) in urls.refused() {
        match connect(url.clone()).await {
            Ok(_) => panic!("connected {what} ({url}): expected a refusal"),
            Err(e) => {
                let text = e.to_string();
                assert!(!text.is_empty(), "{what}: an empty error");
                errors.push(text);
            }
        }
    }
    errors
}
