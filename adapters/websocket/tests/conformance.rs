//! The conformance suite through a hub, twice:
//! - `client`: every broker of the suite is a [`WsBroker`] connected over a real WebSocket
//!   to a [`WsHub`] whose backend is a fresh in-memory broker;
//! - `served`: the first broker runs the hub itself (`serve=true`, talking to its backend
//!   directly), later ones connect to it over WebSocket.

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

/// The first `connect` serves the hub on a free port; the next ones connect to it.
struct ServedFixture {
    port: u16,
    served: OnceCell<Arc<WsBroker>>,
}

#[async_trait]
impl Fixture for ServedFixture {
    async fn connect(&self) -> Result<Arc<dyn Broker>> {
        let url = format!("ws://127.0.0.1:{}/", self.port);
        if self.served.get().is_some() {
            return Ok(Arc::new(WsBroker::connect(&url.parse()?).await?));
        }
        let served = self
            .served
            .get_or_try_init(|| async {
                Ok::<_, polybridge_core::Error>(Arc::new(
                    WsBroker::connect(&format!("{url}?serve=true&max_payload=65536").parse()?)
                        .await?,
                ))
            })
            .await?;
        Ok(served.clone())
    }
}

mod client {
    use super::*;
    polybridge_conformance::conformance_tests!(WsFixture {
        hub: OnceCell::new()
    });
}

mod served {
    use super::*;
    polybridge_conformance::conformance_tests!(ServedFixture {
        port: common::free_port(),
        served: OnceCell::new()
    });
}
