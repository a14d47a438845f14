//! The in-memory broker against the whole conformance suite.

use std::sync::Arc;

use async_trait::async_trait;
use polybridge_conformance::Fixture;
use polybridge_core::{Broker, Result};
use polybridge_memory::MemoryBroker;

/// Every test on one in-process broker, isolated by unique topic and group names.
struct MemoryFixture;

#[async_trait]
impl Fixture for MemoryFixture {
    async fn connect(&self) -> Result<Arc<dyn Broker>> {
        // A small payload limit so `payload_limits` runs quickly.
        Ok(Arc::new(MemoryBroker::connect(
            &"memory://conformance?max_payload=65536".parse()?,
        )?))
    }
}

polybridge_conformance::conformance_tests!(MemoryFixture);
