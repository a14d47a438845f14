//! A NATS server per test (they start in ~30 ms), so the reconnect test can restart its own
//! without disturbing the others; or the external one from `POLYBRIDGE_NATS_URL`.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use polybridge_nats::NatsBroker;
use polybridge_testkit::{BrokerKind, BrokerProcess, Endpoint};

/// Options that make a JetStream connection create the test stream `PBT` over `pbt.>`.
pub const JETSTREAM: &str =
    "mode=jetstream&stream=PBT&create_stream=true&stream_subjects=pbt.>&ack_wait=5s";

/// A NATS server for one test.
pub struct Server {
    pub url: String,
    pub process: Option<Arc<Mutex<BrokerProcess>>>,
}

impl Server {
    /// `None` (with the reason printed) when NATS tests are skipped.
    pub fn start() -> Option<Server> {
        if let Some(reason) = polybridge_testkit::skip_reason(BrokerKind::Nats) {
            eprintln!("{reason}");
            return None;
        }
        if let Ok(url) = std::env::var(BrokerKind::Nats.env_var(Endpoint::Nats)) {
            return Some(Server { url, process: None });
        }
        let process = polybridge_testkit::private(BrokerKind::Nats).expect("start nats-server");
        let url = process.url(Endpoint::Nats).expect("nats url");
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

    pub async fn connect(&self, options: &str) -> NatsBroker {
        NatsBroker::connect(&self.url_with(options).parse().unwrap())
            .await
            .expect("connect to nats")
    }

    /// Restarts the server on the same port with the same data; `None` for an external one.
    pub async fn restart(&self) -> Option<polybridge_core::Result<()>> {
        let process = self.process.clone()?;
        let result = tokio::task::spawn_blocking(move || process.lock().unwrap().restart())
            .await
            .expect("restart task");
        Some(result.map_err(|e| polybridge_core::Error::config("nats", e.to_string())))
    }
}
