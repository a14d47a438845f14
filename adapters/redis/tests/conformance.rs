//! The conformance suite against a real redis-server, in each of the three modes.

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use common::{Server, LISTS, PUBSUB, STREAMS};
use polybridge_conformance::Fixture;
use polybridge_core::{Broker, Result};

/// One server per test; `options` pick the mode.
struct RedisFixture {
    server: Option<Server>,
    options: &'static str,
}

impl RedisFixture {
    fn new(options: &'static str) -> Self {
        RedisFixture {
            server: Server::start(),
            options,
        }
    }
}

#[async_trait]
impl Fixture for RedisFixture {
    async fn connect(&self) -> Result<Arc<dyn Broker>> {
        let Some(server) = &self.server else {
            return Err(polybridge_core::Error::unsupported(
                "redis",
                "tests: Redis skipped by POLYBRIDGE_SKIP_BROKERS",
            ));
        };
        let url = server.url_with(self.options);
        Ok(Arc::new(
            polybridge_redis::RedisBroker::connect(&url.parse()?).await?,
        ))
    }

    fn skip_reason(&self) -> Option<String> {
        polybridge_testkit::skip_reason(polybridge_testkit::BrokerKind::Redis)
    }

    async fn restart_broker(&self) -> Option<Result<()>> {
        self.server.as_ref()?.restart().await
    }
}

mod streams {
    use super::*;
    polybridge_conformance::conformance_tests!(RedisFixture::new(STREAMS));
}

mod lists {
    use super::*;
    polybridge_conformance::conformance_tests!(RedisFixture::new(LISTS));
}

mod pubsub {
    use super::*;
    polybridge_conformance::conformance_tests!(RedisFixture::new(PUBSUB));
}
