//! The conformance suite through a hub: every broker of the suite is a [`WsBroker`]
//! connected over a real WebSocket to a [`WsHub`] whose backend is a fresh in-memory broker.

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use polybridge_conformance::Fixture;
use polybridge_core::{Broker, Result};
use polybridge_websocket::{WsBroker, WsHub};
use tokio::sync::OnceCell;

struct WsFixture {
    hub: OnceCell<WsHub>,
}

#[async_trait]
impl Fixture for WsFixture {
    async fn connect(&self) -> Result<Arc<dyn Broker>> {
        let hub = self.hub.get_or_init(common::hub).await;
        Ok(Arc::new(WsBroker::connect(&hub.url().parse()?).await?))
    }
}

polybridge_conformance::conformance_tests!(WsFixture {
    hub: OnceCell::new()
});
