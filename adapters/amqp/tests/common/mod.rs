//! RabbitMQ for tests: the shared broker of this test binary (it takes 5-10 s to start, so
//! the conformance suite shares one), or a private one for tests that restart it; or the
//! external one from `POLYBRIDGE_AMQP_URL`.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use polybridge_amqp::AmqpBroker;
use polybridge_testkit::{BrokerKind, Endpoint, TestBroker};

/// A RabbitMQ broker for tests (see [`TestBroker`]), with this adapter's `connect`.
pub struct Server(pub TestBroker);

impl std::ops::Deref for Server {
    type Target = TestBroker;
    fn deref(&self) -> &TestBroker {
        &self.0
    }
}

impl Server {
    /// The shared broker; `None` (with the reason printed) when RabbitMQ tests are skipped.
    pub fn shared() -> Option<Server> {
        TestBroker::shared(BrokerKind::RabbitMq, Endpoint::Amqp).map(Server)
    }

    /// A broker of this test's own, which it can restart; `None` when RabbitMQ tests are
    /// skipped or the broker is external.
    pub fn private() -> Option<Server> {
        TestBroker::private(BrokerKind::RabbitMq, Endpoint::Amqp).map(Server)
    }

    pub async fn connect(&self, options: &str) -> AmqpBroker {
        AmqpBroker::connect(&self.url_with(options).parse().unwrap())
            .await
            .expect("connect to rabbitmq")
    }

    /// Restarts a private broker on the same port with the same data; `None` for a shared
    /// or external one.
    pub async fn restart(&self) -> Option<polybridge_core::Result<()>> {
        let broker = self.0.clone();
        let result = tokio::task::spawn_blocking(move || broker.restart())
            .await
            .expect("restart task")?;
        Some(result.map_err(|e| polybridge_core::Error::config("amqp", e.to_string())))
    }

    /// Freezes (`true`) or unfreezes (`false`) a private broker.
    pub fn freeze(&self, frozen: bool) {
        self.0
            .freeze(frozen)
            .expect("a private broker")
            .expect("freeze or thaw the broker");
    }
}
