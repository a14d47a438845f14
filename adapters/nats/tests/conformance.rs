//! The conformance suite against a real nats-server, in core and in JetStream mode.

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use common::{Server, JETSTREAM};
use polybridge_conformance::Fixture;
use polybridge_core::{Broker, Result};

/// One server per test; `options` pick the mode.
struct NatsFixture {
    server: Option<Server>,
    options: &'static str,
}

impl NatsFixture {
    fn core() -> Self {
        NatsFixture {
            server: Server::start(),
            options: "",
        }
    }

    fn jetstream() -> Self {
        NatsFixture {
            server: Server::start(),
            options: JETSTREAM,
        }
    }
}

#[async_trait]
impl Fixture for NatsFixture {
    async fn connect(&self) -> Result<Arc<dyn Broker>> {
        let Some(server) = &self.server else {
            return Err(polybridge_core::Error::unsupported(
                "nats",
                "tests: NATS skipped by POLYBRIDGE_SKIP_BROKERS",
            ));
        };
        let url = server.url_with(self.options);
        Ok(Arc::new(
            polybridge_nats::NatsBroker::connect(&url.parse()?).await?,
        ))
    }

    fn skip_reason(&self) -> Option<String> {
        polybridge_testkit::skip_reason(polybridge_testkit::BrokerKind::Nats)
    }

    async fn restart_broker(&self) -> Option<Result<()>> {
        self.server.as_ref()?.restart().await
    }
}

mod core_nats {
    use super::*;
    polybridge_conformance::conformance_tests!(NatsFixture::core());
}

mod jetstream {
    use super::*;
    polybridge_conformance::conformance_tests!(NatsFixture::jetstream());
}
