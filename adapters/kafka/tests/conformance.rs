//! The conformance suite against a Kafka-protocol broker (Tansu from the harness, or the
//! external broker of `POLYBRIDGE_KAFKA_URL`).

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::Server;
use polybridge_conformance::Fixture;
use polybridge_core::{Broker, Result};

/// One broker per test.
struct KafkaFixture {
    server: Option<Server>,
    options: &'static str,
}

impl KafkaFixture {
    fn new() -> Self {
        KafkaFixture {
            server: Server::start(),
            options: "",
        }
    }
}

#[async_trait]
impl Fixture for KafkaFixture {
    async fn connect(&self) -> Result<Arc<dyn Broker>> {
        let Some(server) = &self.server else {
            return Err(polybridge_core::Error::unsupported(
                "kafka",
                "tests: Kafka skipped by POLYBRIDGE_SKIP_BROKERS",
            ));
        };
        let url = server.url_with(self.options);
        Ok(Arc::new(
            polybridge_kafka::KafkaBroker::connect(&url.parse()?).await?,
        ))
    }

    fn skip_reason(&self) -> Option<String> {
        polybridge_testkit::skip_reason(polybridge_testkit::BrokerKind::Kafka)
    }

    /// A real restart for Apache Kafka (`KAFKA_HOME`). Tansu keeps messages in memory
    /// only, so for it the "restart" is a two-second freeze (SIGSTOP/SIGCONT): connections
    /// stall, publishes and fetches wait, nothing is lost.
    async fn restart_broker(&self) -> Option<Result<()>> {
        self.server
            .as_ref()?
            .restart_or_outage(Duration::from_secs(2))
            .await
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(30)
    }

    fn quiet_period(&self) -> Duration {
        Duration::from_millis(1500)
    }
}

polybridge_conformance::conformance_tests!(KafkaFixture::new());
