//! Apache Kafka adapter of polybridge, on [`rdkafka`](https://docs.rs/rdkafka) (MIT), the
//! Rust binding of librdkafka (BSD-2-Clause, built from the crate's bundled source).
//!
//! DOCS-PLACEHOLDER

mod config;
mod consumer;
pub mod mapping;
mod publisher;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use async_trait::async_trait;
use polybridge_core::{
    Broker, BrokerUrl, Capabilities, Deadline, DeliveryGuarantee, DeliveryStream, Error,
    HeaderSupport, Message, Ordering, Publisher, Receipt, Result, Subscriber, Subscription,
    Wildcards,
};
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;

pub use config::{
    DefaultStart, KafkaConfig, DEFAULT_MESSAGE_MAX_BYTES, DEFAULT_PORT, RECORD_RESERVE,
};

/// The broker name in errors and metrics.
pub const BROKER: &str = "kafka";

/// A connection to a Kafka cluster: one idempotent producer shared by every publish, and one
/// consumer (on a thread of its own) per subscription.
pub struct KafkaBroker {
    producer: Arc<FutureProducer>,
    config: Arc<KafkaConfig>,
    url: BrokerUrl,
    capabilities: Capabilities,
    closed: AtomicBool,
}

impl KafkaBroker {
    /// Reads `url`, creates the producer (which validates every librdkafka option, naming a
    /// bad one) and checks that a broker answers.
    pub async fn connect(url: &BrokerUrl) -> Result<Self> {
        let config = KafkaConfig::from_url(url)?;
        let producer: FutureProducer = config
            .producer()
            .create()
            .map_err(|e| client_error(url, "producer", e))?;
        // The consumer settings are validated too, so a bad option fails here rather than at
        // the first subscribe. A consumer without subscriptions has nothing to close.
        let probe: BaseConsumer = config
            .consumer("polybridge-config-check")
            .create()
            .map_err(|e| client_error(url, "consumer", e))?;
        drop(probe);
        let producer = Arc::new(producer);
        let check = producer.clone();
        let metadata = tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer;
            check
                .client()
                .fetch_metadata(None, std::time::Duration::from_secs(10))
        })
        .await
        .map_err(|e| Error::Connection {
            broker: BROKER,
            endpoint: url.to_string(),
            reason: format!("metadata task: {e}"),
            source: None,
        })?;
        if let Err(e) = metadata {
            return Err(Error::Connection {
                broker: BROKER,
                endpoint: url.to_string(),
                reason: format!("no broker answered within 10s: {e}"),
                source: Some(Box::new(e)),
            });
        }
        Ok(KafkaBroker {
            capabilities: capabilities(&config),
            producer,
            config: Arc::new(config),
            url: url.clone(),
            closed: AtomicBool::new(false),
        })
    }

    /// What a connection to `url` can do, without connecting.
    pub fn capabilities_for(url: &BrokerUrl) -> Result<Capabilities> {
        Ok(capabilities(&KafkaConfig::from_url(url)?))
    }

    /// The settings read from the URL.
    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    /// The underlying producer, for what the contract does not cover.
    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }
}

/// A librdkafka client that could not be created: a bad option is a config error naming it.
fn client_error(url: &BrokerUrl, what: &str, e: KafkaError) -> Error {
    match e {
        KafkaError::ClientConfig(_, description, key, value) => Error::config(
            BROKER,
            format!("librdkafka option {key}={value:?} in {url} is refused: {description}"),
        ),
        other => Error::config(
            BROKER,
            format!("cannot create the {what} for {url}: {other}"),
        ),
    }
}

fn capabilities(config: &KafkaConfig) -> Capabilities {
    Capabilities {
        delivery: DeliveryGuarantee::AtLeastOnce,
        confirmed_publish: config.acks != "0",
        ordering: Ordering::PerKey,
        persistence: true,
        replay: true,
        consumer_groups: true,
        headers: HeaderSupport::Binary,
        keys: true,
        native_delay: false,
        native_dead_letter: false,
        max_payload: Some(config.max_payload()),
        wildcards: Wildcards {
            single_level: true,
            multi_level: true,
        },
        request_reply: true,
        reconnect: true,
    }
}

#[async_trait]
impl Publisher for KafkaBroker {
    async fn publish(
        &self,
        destination: &str,
        message: Message,
        deadline: Deadline,
    ) -> Result<Receipt> {
        self.publish_one(destination, message, deadline).await
    }

    async fn close(&self, deadline: Deadline) -> Result<()> {
        self.close_publisher(deadline).await
    }
}

#[async_trait]
impl Subscriber for KafkaBroker {
    async fn subscribe(&self, subscription: Subscription) -> Result<DeliveryStream> {
        consumer::subscribe(&self.config, &self.producer, subscription).await
    }
}

impl Broker for KafkaBroker {
    fn name(&self) -> &'static str {
        BROKER
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn url(&self) -> &BrokerUrl {
        &self.url
    }
}
