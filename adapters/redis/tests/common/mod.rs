//! A Redis server per test (they start in ~30 ms), so the reconnect test can restart its own
//! without disturbing the others; or the external one from `POLYBRIDGE_REDIS_URL`.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use polybridge_redis::RedisBroker;
use polybridge_testkit::{BrokerKind, Endpoint, TestBroker};

/// Streams with a short claim time, so abandoned entries come back quickly.
pub const STREAMS: &str = "mode=streams&claim_idle=2s";
/// Lists with envelopes (ids, headers and attempts travel) and a short consumer timeout.
pub const LISTS: &str = "mode=lists&format=envelope&consumer_timeout=1s";
/// Pub/sub with envelopes.
pub const PUBSUB: &str = "mode=pubsub&format=envelope";

/// A Redis server for tests (see [`TestBroker`]), with this adapter's `connect`.
pub struct Server(pub TestBroker);

impl std::ops::Deref for Server {
    type Target = TestBroker;
    fn deref(&self) -> &TestBroker {
        &self.0
    }
}

impl Server {
    /// `None` (with the reason printed) when Redis tests are skipped.
    pub fn start() -> Option<Server> {
        TestBroker::private_or_external(BrokerKind::Redis, Endpoint::Redis).map(Server)
    }

    pub async fn connect(&self, options: &str) -> RedisBroker {
        RedisBroker::connect(&self.url_with(options).parse().unwrap())
            .await
            .expect("connect to redis")
    }

    /// Restarts a private broker on the same port with the same data; `None` for a shared
    /// or external one.
    pub async fn restart(&self) -> Option<polybridge_core::Result<()>> {
        let broker = self.0.clone();
        let result = tokio::task::spawn_blocking(move || broker.restart())
            .await
            .expect("restart task")?;
        Some(result.map_err(|e| polybridge_core::Error::config("redis", e.to_string())))
    }
}
