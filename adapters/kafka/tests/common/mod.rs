//! A Kafka-protocol broker per test: Tansu started by the harness (it starts in a few
//! milliseconds, and its memory storage starts empty), Apache Kafka when `KAFKA_HOME` names
//! a distribution, or the external broker from `POLYBRIDGE_KAFKA_URL` (e.g. from
//! `docker compose up`). Each test prints which one it used.
//!
//! Tansu differs from Kafka in ways the tests work around (never the adapter):
//! - it joins a consumer group only after about half the session timeout, so test URLs set
//!   `session_timeout=3s&heartbeat_interval=500ms`;
//! - its storage is memory only, so a restart empties it: the fault tests pause the broker
//!   (SIGSTOP/SIGCONT) instead of restarting it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use polybridge_kafka::KafkaBroker;
use polybridge_testkit::{BrokerKind, BrokerProcess, Endpoint};

/// Options every test URL carries: fast group joins on Tansu, and the keyless messages of a
/// test spread over the partitions (no sticky partitioning), so group members share them.
pub const TEST_OPTIONS: &str =
    "session_timeout=3s&heartbeat_interval=500ms&commit_interval=100ms&close_timeout=8s&rdkafka.sticky.partitioning.linger.ms=0&rdkafka.topic.metadata.refresh.interval.ms=2000";

/// A Kafka broker for one test.
pub struct Server {
    pub url: String,
    pub process: Option<Arc<Mutex<BrokerProcess>>>,
}

impl Server {
    /// `None` (with the reason printed) when Kafka tests are skipped.
    pub fn start() -> Option<Server> {
        if let Some(reason) = polybridge_testkit::skip_reason(BrokerKind::Kafka) {
            eprintln!("{reason}");
            return None;
        }
        if let Ok(url) = std::env::var(BrokerKind::Kafka.env_var(Endpoint::Kafka)) {
            eprintln!("kafka tests: external broker {url}");
            return Some(Server { url, process: None });
        }
        let process = polybridge_testkit::private(BrokerKind::Kafka).expect("start the broker");
        let url = process.url(Endpoint::Kafka).expect("kafka url");
        match polybridge_testkit::kafka_home() {
            Some(home) => eprintln!("kafka tests: Apache Kafka from {} at {url}", home.display()),
            None => eprintln!("kafka tests: Tansu at {url}"),
        }
        Some(Server {
            url,
            process: Some(Arc::new(Mutex::new(process))),
        })
    }

    /// The URL with the test options and `options` appended (`options` win).
    pub fn url_with(&self, options: &str) -> String {
        let given: Vec<&str> = options
            .split('&')
            .filter_map(|o| o.split('=').next())
            .collect();
        let mut all: Vec<&str> = TEST_OPTIONS
            .split('&')
            .filter(|o| !given.contains(&o.split('=').next().unwrap_or_default()))
            .collect();
        all.extend(options.split('&').filter(|o| !o.is_empty()));
        polybridge_testkit::url_with(&self.url, &all.join("&"))
    }

    pub async fn connect(&self, options: &str) -> KafkaBroker {
        KafkaBroker::connect(&self.url_with(options).parse().unwrap())
            .await
            .expect("connect to kafka")
    }

    /// Freezes the broker (SIGSTOP); `false` for an external one.
    pub fn pause(&self) -> bool {
        match &self.process {
            Some(p) => {
                p.lock().unwrap().pause().expect("pause");
                true
            }
            None => false,
        }
    }

    /// Unfreezes the broker (SIGCONT).
    pub fn resume(&self) {
        if let Some(p) = &self.process {
            p.lock().unwrap().resume().expect("resume");
        }
    }

    /// An outage for the conformance reconnect test: the broker is frozen for `outage`, then
    /// resumes (a restart would empty Tansu's memory storage).
    pub async fn outage(&self, outage: Duration) -> Option<polybridge_core::Result<()>> {
        if !self.pause() {
            return None;
        }
        tokio::time::sleep(outage).await;
        self.resume();
        Some(Ok(()))
    }
}

impl Server {
    /// The conformance "restart": a real restart (same port, same data) for Apache Kafka
    /// from `KAFKA_HOME`, which keeps its data; a freeze of `outage` for Tansu, whose memory
    /// storage a restart would empty. `None` for an external broker.
    pub async fn restart_or_outage(&self, outage: Duration) -> Option<polybridge_core::Result<()>> {
        if polybridge_testkit::kafka_home().is_none() {
            return self.outage(outage).await;
        }
        let process = self.process.clone()?;
        let result = tokio::task::spawn_blocking(move || process.lock().unwrap().restart())
            .await
            .expect("restart task");
        Some(result.map_err(|e| polybridge_core::Error::config("kafka", e.to_string())))
    }
}
