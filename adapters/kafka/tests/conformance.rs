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

    /// Every publish to partition 0. Kafka orders messages per partition only, and a
    /// message without a key goes to any partition; `payload_limits` expects its keyless
    /// messages in publish order, so it runs with one partition in use.
    fn one_partition() -> Self {
        KafkaFixture {
            server: Server::start(),
            options: "partition=0",
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

// The whole suite; only `payload_limits` runs with the one-partition fixture.
polybridge_conformance::conformance_tests!(@each KafkaFixture::new();
    publish_subscribe, concurrent_subscribe, multiple_topics, resend_on_nack,
    in_flight_limit, continue_after_subscriber_close, concurrent_close,
    continue_after_errors, order_per_key, publisher_close_flushes, topic_isolation,
    cancellation_returns_unacked, new_subscriber_replays_history, reconnect,
    consumer_groups, header_round_trip, nack_with_delay, reject_to_dead_letter,
    ack_after_close, dropped_delivery_is_redelivered);
polybridge_conformance::conformance_tests!(@each KafkaFixture::one_partition(); payload_limits);
