//! A NATS server per test (they start in ~30 ms), so the reconnect test can restart its own
//! without disturbing the others; or the external one from `POLYBRIDGE_NATS_URL`.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use polybridge_nats::NatsBroker;
use polybridge_testkit::{BrokerKind, Endpoint, TestBroker};

/// Options that make a JetStream connection create the test stream `PBT` over `pbt.>`.
pub const JETSTREAM: &str =
    "mode=jetstream&stream=PBT&create_stream=true&stream_subjects=pbt.>&ack_wait=5s";

/// A NATS server for tests (see [`TestBroker`]), with this adapter's `connect`.
pub struct Server(pub TestBroker);

impl std::ops::Deref for Server {
    type Target = TestBroker;
    fn deref(&self) -> &TestBroker {
        &self.0
    }
}

impl Server {
    /// `None` (with the reason printed) when NATS tests are skipped.
    pub fn start() -> Option<Server> {
        TestBroker::private_or_external(BrokerKind::Nats, Endpoint::Nats).map(Server)
    }

    /// A server of this test's own, which it may restart or kill; `None` (with the reason
    /// printed) when NATS tests are skipped or the server is an external one.
    pub fn start_own() -> Option<Server> {
        let server = Server::start()?;
        if server.process.is_none() {
            eprintln!("skipped: an external server cannot be restarted");
            return None;
        }
        Some(server)
    }

    pub async fn connect(&self, options: &str) -> NatsBroker {
        NatsBroker::connect(&self.url_with(options).parse().unwrap())
            .await
            .expect("connect to nats")
    }

    /// Restarts a private broker on the same port with the same data; `None` for a shared
    /// or external one.
    pub async fn restart(&self) -> Option<polybridge_core::Result<()>> {
        let broker = self.0.clone();
        let result = tokio::task::spawn_blocking(move || broker.restart())
            .await
            .expect("restart task")?;
        Some(result.map_err(|e| polybridge_core::Error::config("nats", e.to_string())))
    }
}
