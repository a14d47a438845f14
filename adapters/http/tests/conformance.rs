//! The conformance suite: the publisher POSTs to the webhook server of the subscribing
//! broker on a loopback port, in `publish=queue` mode (with `publish=wait` a publish
//! resolves only once a subscriber acked, and the suite publishes before it consumes).

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use common::Endpoint;
use polybridge_conformance::Fixture;
use polybridge_core::{Broker, Result};

/// Small limits keep the payload test cheap; short retries keep redelivery quick.
const OPTIONS: &str = "publish=queue&max_payload=65536&retry_initial=20ms&retry_max=500ms";

struct HttpFixture {
    endpoint: Endpoint,
}

#[async_trait]
impl Fixture for HttpFixture {
    async fn connect(&self) -> Result<Arc<dyn Broker>> {
        Ok(Arc::new(polybridge_http::HttpBroker::connect(
            &self.endpoint.url(OPTIONS).parse()?,
        )?))
    }
}

polybridge_conformance::conformance_tests!(HttpFixture {
    endpoint: Endpoint::new()
});
