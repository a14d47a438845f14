//! The conformance suite against a real RabbitMQ, shared by the tests of this binary (the
//! broker restart of `reconnect` runs in `tests/amqp.rs` on a private broker).

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use common::Server;
use polybridge_conformance::Fixture;
use polybridge_core::{Broker, Result};

struct AmqpFixture {
    server: Option<Server>,
}

impl AmqpFixture {
    fn new() -> Self {
        AmqpFixture {
            server: Server::shared(),
        }
    }
}

#[async_trait]
impl Fixture for AmqpFixture {
    async fn connect(&self) -> Result<Arc<dyn Broker>> {
        let Some(server) = &self.server else {
            return Err(polybridge_core::Error::unsupported(
                "amqp",
                "tests: RabbitMQ skipped by POLYBRIDGE_SKIP_BROKERS",
            ));
        };
        Ok(Arc::new(
            polybridge_amqp::AmqpBroker::connect(&server.url.parse()?).await?,
        ))
    }

    fn skip_reason(&self) -> Option<String> {
        polybridge_testkit::skip_reason(polybridge_testkit::BrokerKind::RabbitMq)
    }
}

polybridge_conformance::conformance_tests!(AmqpFixture::new());
