//! The conformance suite against ActiveMQ and against the RabbitMQ STOMP plugin.

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
        kind: BrokerKind::ActiveMq
    });
}

mod rabbitmq {
    use super::*;
    polybridge_conformance::conformance_tests!(StompFixture {
        kind: BrokerKind::RabbitMq
    });
}
