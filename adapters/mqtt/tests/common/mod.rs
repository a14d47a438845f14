//! A Mosquitto broker per test (they start in ~30 ms), so the reconnect test can restart its own
//! without disturbing the others; or the external one from `POLYBRIDGE_MQTT_URL`.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use polybridge_mqtt::MqttBroker;
use polybridge_testkit::{BrokerKind, Endpoint, TestBroker};

/// A client id unique to this test run, for persistent sessions.
pub fn client_id(hint: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "pbt-{hint}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A Mosquitto broker for tests (see [`TestBroker`]), with this adapter's `connect`.
pub struct Server(pub TestBroker);

impl std::ops::Deref for Server {
    type Target = TestBroker;
    fn deref(&self) -> &TestBroker {
        &self.0
    }
}

impl Server {
    /// `None` (with the reason printed) when Mosquitto tests are skipped.
    pub fn start() -> Option<Server> {
        // `RUST_LOG=polybridge_mqtt=debug` shows the adapter's logs in failing tests.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        TestBroker::private_or_external(BrokerKind::Mosquitto, Endpoint::Mqtt).map(Server)
    }

    pub async fn connect(&self, options: &str) -> MqttBroker {
        MqttBroker::connect(&self.url_with(options).parse().unwrap())
            .await
            .expect("connect to mosquitto")
    }

    /// Restarts a private broker on the same port with the same data; `None` for a shared
    /// or external one.
    pub async fn restart(&self) -> Option<polybridge_core::Result<()>> {
        let broker = self.0.clone();
        let result = tokio::task::spawn_blocking(move || broker.restart())
            .await
            .expect("restart task")?;
        Some(result.map_err(|e| polybridge_core::Error::config("mqtt", e.to_string())))
    }
}
