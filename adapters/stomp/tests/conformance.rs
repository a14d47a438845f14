//! The conformance suite against ActiveMQ and against the RabbitMQ STOMP plugin.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use polybridge_conformance::Fixture;
use polybridge_core::{Broker, Result};
use polybridge_testkit::BrokerKind;

/// The shared broker of `kind`.
struct StompFixture {
    kind: BrokerKind,
    options: &'static str,
}

#[async_trait]
impl Fixture for StompFixture {
    async fn connect(&self) -> Result<Arc<dyn Broker>> {
        let Some(url) = common::url(self.kind) else {
            return Err(polybridge_core::Error::unsupported(
                "stomp",
                "tests: broker skipped by POLYBRIDGE_SKIP_BROKERS",
            ));
        };
        let url = polybridge_testkit::url_with(&url, self.options);
        Ok(Arc::new(
            polybridge_stomp::StompBroker::connect(&url.parse()?).await?,
        ))
    }

    fn skip_reason(&self) -> Option<String> {
        polybridge_testkit::skip_reason(self.kind)
    }

    /// Every publish waits for a persistent store and a RECEIPT.
    fn scale(&self) -> f64 {
        0.1
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(30)
    }
}

mod activemq {
    use super::*;
    polybridge_conformance::conformance_tests!(StompFixture {
        kind: BrokerKind::ActiveMq,
        options: "",
    });
}

mod rabbitmq {
    use super::*;
    polybridge_conformance::conformance_tests!(StompFixture {
        kind: BrokerKind::RabbitMq,
        options: "",
    });
}

/// A broker of the test's own, restarted twice by the `reconnect` test.
struct RestartFixture {
    kind: BrokerKind,
    process: Option<std::sync::Arc<std::sync::Mutex<polybridge_testkit::BrokerProcess>>>,
    url: String,
}

impl RestartFixture {
    async fn start(kind: BrokerKind) -> Option<Self> {
        if polybridge_testkit::skip_reason(kind).is_some()
            || std::env::var(kind.env_var(polybridge_testkit::Endpoint::Stomp)).is_ok()
        {
            eprintln!("skipped: reconnect needs a private {}", kind.name());
            return None;
        }
        let process = tokio::task::spawn_blocking(move || polybridge_testkit::private(kind))
            .await
            .expect("start task")
            .expect("a private broker");
        let url = process
            .url(polybridge_testkit::Endpoint::Stomp)
            .expect("stomp url");
        Some(RestartFixture {
            kind,
            process: Some(std::sync::Arc::new(std::sync::Mutex::new(process))),
            url,
        })
    }
}

#[async_trait]
impl Fixture for RestartFixture {
    async fn connect(&self) -> Result<Arc<dyn Broker>> {
        Ok(Arc::new(
            polybridge_stomp::StompBroker::connect(&self.url.parse()?).await?,
        ))
    }

    fn scale(&self) -> f64 {
        0.1
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(60)
    }

    async fn restart_broker(&self) -> Option<Result<()>> {
        let process = self.process.clone()?;
        let kind = self.kind;
        let result = tokio::task::spawn_blocking(move || {
            process.lock().unwrap_or_else(|e| e.into_inner()).restart()
        })
        .await
        .map_err(|e| polybridge_core::Error::config("stomp", e.to_string()));
        Some(result.and_then(|r| {
            r.map_err(|e| polybridge_core::Error::config("stomp", format!("{kind:?}: {e}")))
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activemq_restarted_twice_loses_nothing() {
    if let Some(f) = RestartFixture::start(BrokerKind::ActiveMq).await {
        polybridge_conformance::tests::reconnect(&f).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_restarted_twice_loses_nothing() {
    if let Some(f) = RestartFixture::start(BrokerKind::RabbitMq).await {
        polybridge_conformance::tests::reconnect(&f).await;
    }
}

/// `max_payload` set: the payload limit is checked before sending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_limit_from_the_url() {
    for kind in [BrokerKind::ActiveMq, BrokerKind::RabbitMq] {
        let f = StompFixture {
            kind,
            options: "max_payload=65536",
        };
        if f.skip_reason().is_none() {
            polybridge_conformance::tests::payload_limits(&f).await;
        }
    }
}
