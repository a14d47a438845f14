//! The checks every TLS test of an adapter makes, shared so each `tests/tls.rs` only says
//! how its adapter connects: the client URLs ([`TlsUrls`]), a publish/consume round trip
//! over the TLS connection ([`round_trip`]), "these clients must be refused"
//! ([`assert_refused`]), and all of it against a TLS broker ([`MutualTls`]).

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use polybridge_core::{Deadline, Message, Publisher, Subscriber, Subscription};

use crate::{BrokerKind, BrokerProcess, Endpoint, TlsFiles};

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
    crate::url_with(base, &options.join("&"))
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
        .publish(topic, &Message::new("over tls"), Deadline::after(TLS_WAIT))
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

/// Tries `connect` with every URL of [`TlsUrls::refused`], all at once, and panics unless
/// each fails with a non-empty error. Returns the error texts, in that order.
pub async fn assert_refused<F, Fut, T, E>(urls: &TlsUrls, mut connect: F) -> Vec<String>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Display,
{
    let cases = urls.refused();
    let attempts = cases.iter().map(|(_, url)| connect(url.clone()));
    let results = futures::future::join_all(attempts).await;
    let mut errors = Vec::new();
    for ((what, url), result) in cases.into_iter().zip(results) {
        match result {
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

/// The whole mutual-TLS test of an adapter against a TLS broker ([`crate::private_tls`]):
/// connect with the client certificate and make a [`round_trip`], then
/// [`assert_refused`] for every client that must not connect.
#[derive(Debug, Clone)]
pub struct MutualTls {
    kind: BrokerKind,
    endpoint: Endpoint,
    refused_options: String,
    mutual_options: Vec<String>,
}

/// What [`MutualTls::check`] leaves for an adapter's own further checks.
#[derive(Debug)]
pub struct MutualTlsChecked {
    /// The TLS broker, still running.
    pub server: BrokerProcess,
    /// The URLs that were tried.
    pub urls: TlsUrls,
    /// The errors of the refused URLs, in the order of [`TlsUrls::refused`].
    pub errors: Vec<String>,
}

impl MutualTls {
    /// The check for `endpoint` of a TLS broker of `kind`.
    pub fn new(kind: BrokerKind, endpoint: Endpoint) -> MutualTls {
        MutualTls {
            kind,
            endpoint,
            refused_options: String::new(),
            mutual_options: Vec::new(),
        }
    }

    /// Options added to every URL that must be refused (e.g. `connect_timeout=2s`).
    pub fn refused_with(mut self, options: &str) -> MutualTls {
        self.refused_options = options.to_owned();
        self
    }

    /// Options added to the URL that must connect.
    pub fn mutual_with(mut self, options: &[&str]) -> MutualTls {
        self.mutual_options = options.iter().map(|o| (*o).to_owned()).collect();
        self
    }

    /// Starts the TLS broker, connects with `connect` and the client certificate, makes a
    /// round trip through `topic` with `subscription`, and asserts every other client is
    /// refused. `None` (saying why) when the broker's tests are skipped
    /// ([`crate::skip_reason`]); panics on any failure.
    pub async fn check<F, Fut, B, E>(
        self,
        subscription: Subscription,
        topic: &str,
        mut connect: F,
    ) -> Option<MutualTlsChecked>
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = Result<B, E>>,
        B: Publisher + Subscriber,
        E: Display,
    {
        if let Some(why) = crate::skip_reason(self.kind) {
            eprintln!("{why}");
            return None;
        }
        let server = match crate::private_tls(self.kind) {
            Ok(s) => s,
            Err(e) => panic!("a TLS {}: {e}", self.kind.name()),
        };
        let Some(urls) = server.tls_urls(self.endpoint, &self.refused_options) else {
            panic!(
                "{} has no TLS {:?} endpoint",
                self.kind.name(),
                self.endpoint
            )
        };
        let options: Vec<&str> = self.mutual_options.iter().map(String::as_str).collect();
        let mutual = with_options(&urls.mutual, &options);
        let broker = match connect(mutual.clone()).await {
            Ok(b) => b,
            Err(e) => panic!("mutual TLS to {mutual}: {e}"),
        };
        round_trip(&broker, subscription, topic).await;
        let errors = assert_refused(&urls, connect).await;
        Some(MutualTlsChecked {
            server,
            urls,
            errors,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn urls_carry_the_right_files_and_options() {
        assert_eq!(with_options("a://h", &[]), "a://h");
        assert_eq!(with_options("a://h", &["x=1", "", "y=2"]), "a://h?x=1&y=2");
        assert_eq!(with_options("a://h?x=1", &["y=2"]), "a://h?x=1&y=2");
        let files = TlsFiles {
            ca: PathBuf::from("/d/ca.pem"),
            server_cert: PathBuf::from("/d/server.pem"),
            server_key: PathBuf::from("/d/server-key.pem"),
            client_cert: PathBuf::from("/d/client.pem"),
            client_key: PathBuf::from("/d/client-key.pem"),
            other_ca: PathBuf::from("/d/other-ca.pem"),
        };
        let urls = TlsUrls::new("s://h:1", &files, "t=2s", Some("p://h:1"));
        assert_eq!(
            urls.mutual,
            "s://h:1?ca_file=/d/ca.pem&cert_file=/d/client.pem&key_file=/d/client-key.pem"
        );
        assert_eq!(urls.no_client_cert, "s://h:1?ca_file=/d/ca.pem&t=2s");
        assert_eq!(
            urls.wrong_ca,
            "s://h:1?ca_file=/d/other-ca.pem&cert_file=/d/client.pem&key_file=/d/client-key.pem&t=2s"
        );
        assert_eq!(urls.system_roots, "s://h:1?t=2s");
        let refused: Vec<String> = urls.refused().into_iter().map(|(_, u)| u).collect();
        assert_eq!(refused.len(), 4);
        assert_eq!(refused[3], "p://h:1?t=2s");
        let no_plain = TlsUrls::new("s://h:1", &files, "", None);
        assert_eq!(no_plain.refused().len(), 3);
    }
}
