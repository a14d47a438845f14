//! The conformance suite against real brokers: Mosquitto with MQTT 5 and 3.1.1, and the
//! RabbitMQ MQTT plugin with 3.1.1 (no shared subscriptions there).

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use common::{client_id, Server};
use polybridge_conformance::Fixture;
use polybridge_core::{Broker, Result, Subscription, TopicPattern};
use polybridge_testkit::{BrokerKind, Endpoint};

/// Where the fixture's broker comes from.
enum Source {
    /// A Mosquitto of the test's own (restartable).
    Mosquitto(Option<Server>),
    /// The RabbitMQ shared by this test binary (started once; not restarted).
    RabbitMq(Option<String>),
}

struct MqttFixture {
    source: Source,
    options: String,
    /// Whether the reconnect test may restart the broker. Not with shared subscriptions on
    /// Mosquitto 2.0.11: its persistence file does not keep `$share/` subscriptions, so
    /// messages published between the restart and the members' resubscription reach no
    /// one (the adapter resubscribes at once; `tests/mqtt.rs` checks that).
    restartable: bool,
}

impl MqttFixture {
    fn mosquitto(options: &str) -> Self {
        MqttFixture {
            source: Source::Mosquitto(Server::start()),
            options: format!("{options}&client_id={}", client_id("m")),
            restartable: options.contains("shared=false"),
        }
    }

    fn rabbitmq() -> Self {
        let url = if polybridge_testkit::skip_reason(BrokerKind::RabbitMq).is_some() {
            None
        } else {
            polybridge_testkit::shared(BrokerKind::RabbitMq)
                .ok()
                .and_then(|b| b.url(Endpoint::Mqtt))
        };
        MqttFixture {
            source: Source::RabbitMq(url),
            options: format!(
                "version=3.1.1&format=envelope&shared=false&client_id={}",
                client_id("r")
            ),
            restartable: false,
        }
    }

    fn url(&self) -> Option<String> {
        let base = match &self.source {
            Source::Mosquitto(s) => s.as_ref()?.url.clone(),
            Source::RabbitMq(u) => u.clone()?,
        };
        Some(polybridge_testkit::url_with(&base, &self.options))
    }
}

#[async_trait]
impl Fixture for MqttFixture {
    async fn connect(&self) -> Result<Arc<dyn Broker>> {
        let url = self.url().ok_or_else(|| {
            polybridge_core::Error::unsupported("mqtt", "tests: the broker is skipped")
        })?;
        Ok(Arc::new(
            polybridge_mqtt::MqttBroker::connect(&url.parse()?).await?,
        ))
    }

    fn separator(&self) -> char {
        '/'
    }

    fn subscription(&self, topic: &str) -> Subscription {
        Subscription::new(TopicPattern::literal(topic, '/'))
    }

    fn skip_reason(&self) -> Option<String> {
        match &self.source {
            Source::Mosquitto(_) => polybridge_testkit::skip_reason(BrokerKind::Mosquitto),
            Source::RabbitMq(_) => polybridge_testkit::skip_reason(BrokerKind::RabbitMq),
        }
    }

    async fn restart_broker(&self) -> Option<Result<()>> {
        if !self.restartable {
            return None;
        }
        match &self.source {
            Source::Mosquitto(s) => s.as_ref()?.restart().await,
            Source::RabbitMq(_) => None,
        }
    }
}

mod mqtt5 {
    use super::*;
    polybridge_conformance::conformance_tests!(MqttFixture::mosquitto("version=5"));
}

/// Groups as durable single subscribers (persistent sessions): survive broker restarts.
mod mqtt5_sessions {
    use super::*;
    polybridge_conformance::conformance_tests!(MqttFixture::mosquitto("version=5&shared=false"));
}

mod mqtt311 {
    use super::*;
    polybridge_conformance::conformance_tests!(MqttFixture::mosquitto(
        "version=3.1.1&format=envelope&shared=false"
    ));
}

mod rabbitmq311 {
    use super::*;
    polybridge_conformance::conformance_tests!(MqttFixture::rabbitmq());
}
