//! A Mosquitto broker per test (they start in ~30 ms), so the reconnect test can restart its own
//! without disturbing the others; or the external one from `POLYBRIDGE_MQTT_URL`.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use polybridge_mqtt::MqttBroker;
use polybridge_testkit::{BrokerKind, BrokerProcess, Endpoint};

/// A client id unique to this test run, for persistent sessions.
pub fn client_id(hint: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("pbt-{hint}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A Mosquitto broker for one test.
pub struct Server {
    pub url: String,
    pub process: Option<Arc<Mutex<BrokerProcess>>>,
}

impl Server {
    /// `None` (with the reason printed) when NATS tests are skipped.
    pub fn start() -> Option<Server> {
        // `RUST_LOG=polybridge_mqtt=debug` shows the adapter's logs in failing tests.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        if let Some(reason) = polybridge_testkit::skip_reason(BrokerKind::Mosquitto) {
            eprintln!("{reason}");
            return None;
        }
        if let Ok(url) = std::env::var(BrokerKind::Mosquitto.env_var(Endpoint::Mqtt)) {
            return Some(Server { url, process: None });
        }
        let process = polybridge_testkit::private(BrokerKind::Mosquitto).expect("start mosquitto");
        let url = process.url(Endpoint::Mqtt).expect("mqtt url");
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

    pub async fn connect(&self, options: &str) -> MqttBroker {
        MqttBroker::connect(&self.url_with(options).parse().unwrap())
            .await
            .expect("connect to mosquitto")
    }

    /// Restarts the server on the same port with the same data; `None` for an external one.
    pub async fn restart(&self) -> Option<polybridge_core::Result<()>> {
        let process = self.process.clone()?;
        let result = tokio::task::spawn_blocking(move || process.lock().unwrap().restart())
            .await
            .expect("restart task");
        Some(result.map_err(|e| polybridge_core::Error::config("mqtt", e.to_string())))
    }
}
