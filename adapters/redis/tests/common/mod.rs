//! A Redis server per test (they start in ~30 ms), so the reconnect test can restart its own
//! without disturbing the others; or the external one from `POLYBRIDGE_REDIS_URL`.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use polybridge_redis::RedisBroker;
use polybridge_testkit::{BrokerKind, BrokerProcess, Endpoint};

/// Streams with a short claim time, so abandoned entries come back quickly.
pub const STREAMS: &str = "mode=streams&claim_idle=2s";
/// Lists with envelopes (ids, headers and attempts travel) and a short consumer timeout.
pub const LISTS: &str = "mode=lists&format=envelope&consumer_timeout=1s";
/// Pub/sub with envelopes.
pub const PUBSUB: &str = "mode=pubsub&format=envelope";

/// A Redis server for one test.
pub struct Server {
    pub url: String,
    pub process: Option<Arc<Mutex<BrokerProcess>>>,
}

impl Server {
    /// `None` (with the reason printed) when NATS tests are skipped.
    pub fn start() -> Option<Server> {
        if let Some(reason) = polybridge_testkit::skip_reason(BrokerKind::Redis) {
            eprintln!("{reason}");
            return None;
        }
        if let Ok(url) = std::env::var(BrokerKind::Redis.env_var(Endpoint::Redis)) {
            return Some(Server { url, process: None });
        }
        let process = polybridge_testkit::private(BrokerKind::Redis).expect("start redis-server");
        let url = process.url(Endpoint::Redis).expect("redis url");
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

    pub async fn connect(&self, options: &str) -> RedisBroker {
        RedisBroker::connect(&self.url_with(options).parse().unwrap())
            .await
            .expect("connect to redis")
    }

    /// Restarts the server on the same port with the same data; `None` for an external one.
    pub async fn restart(&self) -> Option<polybridge_core::Result<()>> {
        let process = self.process.clone()?;
        let result = tokio::task::spawn_blocking(move || process.lock().unwrap().restart())
            .await
            .expect("restart task");
        Some(result.map_err(|e| polybridge_core::Error::config("redis", e.to_string())))
    }
}
