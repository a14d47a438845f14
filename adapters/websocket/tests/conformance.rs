//! The conformance suite through a hub, twice:
//! - `client`: every broker of the suite is a [`WsBroker`] connected over a real WebSocket
//!   to a [`WsHub`] whose backend is a fresh in-memory broker; the reconnect test restarts
//!   the hub (its backend keeps the messages) and the clients reconnect;
//! - `served`: the first broker runs the hub itself (`serve=true`, talking to its backend
//!   directly), later ones connect to it over WebSocket.

mod common;

use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use polybridge_conformance::Fixture;
use polybridge_core::{Broker, Result};
use polybridge_websocket::{WsBroker, WsHub};
use tokio::sync::{Mutex, OnceCell};

/// A hub on a fixed port over a named in-memory broker, so that restarting the hub (drop,
/// bind again) keeps the backend's messages, as restarting a broker keeps its data.
struct WsFixture {
    port: u16,
    memory: String,
    hub: Mutex<Option<WsHub>>,
}

impl WsFixture {
    fn new() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        WsFixture {
            port: common::free_port(),
            memory: format!(
                "memory://wsconf{}x{}?max_payload=65536",
                std::process::id(),
                N.fetch_add(1, AtomicOrdering::Relaxed)
            ),
            hub: Mutex::new(None),
        }
    }

    /// Binds the hub, retrying while the port of the previous one is being released.
    async fn start(&self) -> Result<WsHub> {
        let end = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match WsHub::bind_memory(&format!("127.0.0.1:{}", self.port), &self.memory).await {
                Ok(hub) => return Ok(hub),
                Err(e) if tokio::time::Instant::now() >= end => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

#[async_trait]
impl Fixture for WsFixture {
    async fn connect(&self) -> Result<Arc<dyn Broker>> {
        {
            let mut hub = self.hub.lock().await;
            if hub.is_none() {
                *hub = Some(self.start().await?);
            }
        }
        let url = format!("ws://127.0.0.1:{}/", self.port);
        Ok(Arc::new(WsBroker::connect(&url.parse()?).await?))
    }

    async fn restart_broker(&self) -> Option<Result<()>> {
        let mut hub = self.hub.lock().await;
        drop(hub.take());
        Some(self.start().await.map(|h| {
            *hub = Some(h);
        }))
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
    polybridge_conformance::conformance_tests!(WsFixture::new());
}

mod served {
    use super::*;
    polybridge_conformance::conformance_tests!(ServedFixture {
        port: common::free_port(),
        served: OnceCell::new()
    });
}
