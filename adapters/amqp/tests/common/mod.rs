//! RabbitMQ for tests: the shared broker of this test binary (it takes 5-10 s to start, so
//! the conformance suite shares one), or a private one for tests that restart it; or the
//! external one from `POLYBRIDGE_AMQP_URL`.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use polybridge_amqp::AmqpBroker;
use polybridge_testkit::{BrokerKind, BrokerProcess, Endpoint};

/// A RabbitMQ broker for tests.
pub struct Server {
    pub url: String,
    pub process: Option<Arc<Mutex<BrokerProcess>>>,
}

impl Server {
    /// The shared broker; `None` (with the reason printed) when RabbitMQ tests are skipped.
    pub fn shared() -> Option<Server> {
        if let Some(reason) = polybridge_testkit::skip_reason(BrokerKind::RabbitMq) {
            eprintln!("{reason}");
            return None;
        }
        let shared = polybridge_testkit::shared(BrokerKind::RabbitMq).expect("start rabbitmq");
        Some(Server {
            url: shared.url(Endpoint::Amqp).expect("amqp url"),
            process: None,
        })
    }

    /// A broker of this test's own, which it can restart; `None` when RabbitMQ tests are
    /// skipped or the broker is external.
    pub fn private() -> Option<Server> {
        if let Some(reason) = polybridge_testkit::skip_reason(BrokerKind::RabbitMq) {
            eprintln!("{reason}");
            return None;
        }
        if std::env::var(BrokerKind::RabbitMq.env_var(Endpoint::Amqp)).is_ok() {
            eprintln!("skipped: POLYBRIDGE_AMQP_URL names an external broker, which a test cannot restart");
            return None;
        }
        let process = polybridge_testkit::private(BrokerKind::RabbitMq).expect("start rabbitmq");
        let url = process.url(Endpoint::Amqp).expect("amqp url");
        Some(Server {
            url,
            process: Some(Arc::new(Mutex::new(process))),
        })
    }

    /// The URL with `options` appended.
    pub fn url_with(&self, options: &str) -> String {
        if options.is_empty() {
            self.url.clone()
        } else if self.url.contains('?') {
            format!("{}&{options}", self.url)
        } else {
            format!("{}?{options}", self.url)
        }
    }

    pub async fn connect(&self, options: &str) -> AmqpBroker {
        AmqpBroker::connect(&self.url_with(options).parse().unwrap())
            .await
            .expect("connect to rabbitmq")
    }

    /// Restarts the broker on the same port with the same data; `None` for a shared one.
    pub async fn restart(&self) -> Option<polybridge_core::Result<()>> {
        let process = self.process.clone()?;
        let result = tokio::task::spawn_blocking(move || process.lock().unwrap().restart())
            .await
            .expect("restart task");
        Some(result.map_err(|e| polybridge_core::Error::config("amqp", e.to_string())))
    }

    /// Freezes (`true`) or unfreezes (`false`) a private broker.
    pub fn freeze(&self, frozen: bool) {
        let process = self.process.as_ref().expect("a private broker");
        let process = process.lock().unwrap();
        if frozen {
            process.pause().unwrap();
        } else {
            process.resume().unwrap();
        }
    }
}
