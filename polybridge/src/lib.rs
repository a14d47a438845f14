//! polybridge: write your messaging code once, run it on any broker.
//!
//! Pick the broker by URL with [`connect`], then publish, subscribe and settle through the
//! same [`Broker`] interface everywhere:
//!
//! ```
//! # async fn demo() -> polybridge::Result<()> {
//! use std::time::Duration;
//! use polybridge::{Deadline, Message, Subscription};
//!
//! let broker = polybridge::connect("memory://demo").await?;
//! let mut greetings = broker.subscribe(Subscription::new("greetings.*".parse()?)).await?;
//! broker
//!     .publish("greetings.en", &Message::new("Hello, World!"), Deadline::after(Duration::from_secs(5)))
//!     .await?;
//! let delivery = greetings.next().await.expect("subscribed")?;
//! println!("{}: {:?}", delivery.info.topic, delivery.message.payload);
//! delivery.ack()?;
//! # Ok(()) }
//! ```
//!
//! Adapters, by URL scheme (each behind a cargo feature of the same name, all on by
//! default):
//!
//! | scheme | adapter | status |
//! |---|---|---|
//! | `memory://NAME` | in-process reference broker, always built | available |
//! | `nats://`, `jetstream://` | [`polybridge_nats`] (feature `nats`) | available |
//! | `redis://`, `rediss://` | [`polybridge_redis`] (feature `redis`) | available |
//! | `mqtt://`, `mqtts://` | [`polybridge_mqtt`] (feature `mqtt`) | available |
//! | `stomp://`, `stomp+activemq://`, `stomp+rabbitmq://`, `stomp+ssl://`, `stomps://` | [`polybridge_stomp`] (feature `stomp`) | available |
//! | `amqp://`, `amqps://` | [`polybridge_amqp`] (feature `amqp`) | available |
//! | `kafka://`, `kafkas://` | [`polybridge_kafka`] (feature `kafka`) | available |
//! | `http://`, `https://` | [`polybridge_http`] (feature `http`): webhooks in and out | available |
//! | `ws://`, `wss://` | [`polybridge_websocket`] (feature `websocket`): a WebSocket hub for browsers and services | available |
//!
//! The contract itself — messages, errors, capabilities, topic patterns — is
//! [`polybridge_core`], re-exported here.

use std::sync::Arc;

#[cfg(feature = "amqp")]
pub use polybridge_amqp as amqp;
pub use polybridge_core::*;
#[cfg(feature = "http")]
pub use polybridge_http as http;
#[cfg(feature = "kafka")]
pub use polybridge_kafka as kafka;
pub use polybridge_memory as memory;
#[cfg(feature = "mqtt")]
pub use polybridge_mqtt as mqtt;
#[cfg(feature = "nats")]
pub use polybridge_nats as nats;
#[cfg(feature = "redis")]
pub use polybridge_redis as redis;
#[cfg(feature = "stomp")]
pub use polybridge_stomp as stomp;
#[cfg(feature = "websocket")]
pub use polybridge_websocket as websocket;

/// Connects to the broker named by `url`, choosing the adapter from its scheme.
///
/// The URL prints with its password redacted in every error.
pub async fn connect(url: &str) -> Result<Arc<dyn Broker>> {
    connect_url(&BrokerUrl::parse(url)?).await
}

/// Connects to the broker named by an already parsed URL.
pub async fn connect_url(url: &BrokerUrl) -> Result<Arc<dyn Broker>> {
    match url.scheme() {
        "memory" => Ok(Arc::new(memory::MemoryBroker::connect(url)?)),
        #[cfg(feature = "nats")]
        "nats" | "jetstream" => Ok(Arc::new(nats::NatsBroker::connect(url).await?)),
        #[cfg(feature = "redis")]
        "redis" | "rediss" => Ok(Arc::new(redis::RedisBroker::connect(url).await?)),
        #[cfg(feature = "mqtt")]
        "mqtt" | "mqtts" => Ok(Arc::new(mqtt::MqttBroker::connect(url).await?)),
        #[cfg(feature = "amqp")]
        "amqp" | "amqps" => Ok(Arc::new(amqp::AmqpBroker::connect(url).await?)),
        #[cfg(feature = "kafka")]
        "kafka" | "kafkas" => Ok(Arc::new(kafka::KafkaBroker::connect(url).await?)),
        #[cfg(feature = "http")]
        "http" | "https" => Ok(Arc::new(http::HttpBroker::connect(url)?)),
        #[cfg(feature = "websocket")]
        "ws" | "wss" => Ok(Arc::new(websocket::WsBroker::connect(url).await?)),
        #[cfg(feature = "stomp")]
        "stomp" | "stomp+activemq" | "stomp+rabbitmq" | "stomp+ssl" | "stomps" => {
            Ok(Arc::new(stomp::StompBroker::connect(url).await?))
        }
        other => Err(Error::config(
            "polybridge",
            format!(
                "no adapter for {other}:// in this build (URL {url}); built adapters: {}",
                available_schemes().join(", ")
            ),
        )),
    }
}

/// What the adapter for `url` can do, without connecting: the bridge checks routes against
/// it before it starts.
pub fn capabilities_for(url: &BrokerUrl) -> Result<Capabilities> {
    match url.scheme() {
        "memory" => memory::MemoryBroker::capabilities_for(url),
        #[cfg(feature = "nats")]
        "nats" | "jetstream" => nats::NatsBroker::capabilities_for(url),
        #[cfg(feature = "redis")]
        "redis" | "rediss" => redis::RedisBroker::capabilities_for(url),
        #[cfg(feature = "mqtt")]
        "mqtt" | "mqtts" => mqtt::MqttBroker::capabilities_for(url),
        #[cfg(feature = "amqp")]
        "amqp" | "amqps" => amqp::AmqpBroker::capabilities_for(url),
        #[cfg(feature = "kafka")]
        "kafka" | "kafkas" => kafka::KafkaBroker::capabilities_for(url),
        #[cfg(feature = "http")]
        "http" | "https" => http::HttpBroker::capabilities_for(url),
        #[cfg(feature = "websocket")]
        "ws" | "wss" => websocket::WsBroker::capabilities_for(url),
        #[cfg(feature = "stomp")]
        "stomp" | "stomp+activemq" | "stomp+rabbitmq" | "stomp+ssl" | "stomps" => {
            stomp::StompBroker::capabilities_for(url)
        }
        other => Err(Error::config(
            "polybridge",
            format!(
                "no adapter for {other}:// in this build (URL {url}); built adapters: {}",
                available_schemes().join(", ")
            ),
        )),
    }
}

/// The URL schemes this build can connect to.
pub fn available_schemes() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut schemes = vec!["memory"];
    #[cfg(feature = "nats")]
    schemes.extend(["nats", "jetstream"]);
    #[cfg(feature = "redis")]
    schemes.extend(["redis", "rediss"]);
    #[cfg(feature = "mqtt")]
    schemes.extend(["mqtt", "mqtts"]);
    #[cfg(feature = "amqp")]
    schemes.extend(["amqp", "amqps"]);
    #[cfg(feature = "kafka")]
    schemes.extend(["kafka", "kafkas"]);
    #[cfg(feature = "http")]
    schemes.extend(["http", "https"]);
    #[cfg(feature = "websocket")]
    schemes.extend(["ws", "wss"]);
    #[cfg(feature = "stomp")]
    schemes.extend(polybridge_stomp::SCHEMES);
    schemes
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unknown_schemes_are_refused_without_leaking_the_password() {
        let e = connect("carrier-pigeon://me:hunter2@coop")
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no adapter for carrier-pigeon://"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        assert!(connect("memory://facade").await.is_ok());
    }

    #[cfg(feature = "kafka")]
    #[test]
    fn kafkas_goes_to_the_kafka_adapter() {
        assert!(available_schemes().contains(&"kafkas"));
        let url: BrokerUrl = "kafkas://u:pw@h:9093?ca_file=/ca.pem".parse().unwrap();
        assert!(capabilities_for(&url).is_ok());
        let bad: BrokerUrl = "kafkas://u:pw@h?sasl_mechanism=GSSAPI".parse().unwrap();
        let e = capabilities_for(&bad).err().unwrap().to_string();
        assert!(e.contains("sasl_mechanism") && !e.contains("pw@"), "{e}");
    }

    #[cfg(feature = "amqp")]
    #[test]
    fn amqps_is_the_amqp_adapter_over_tls() {
        assert!(available_schemes().contains(&"amqps"));
        let caps = capabilities_for(&"amqps://u:p@h/%2f".parse().unwrap()).unwrap();
        let plain = capabilities_for(&"amqp://u:p@h/%2f".parse().unwrap()).unwrap();
        assert_eq!(caps, plain);
    }
}
