//! MQTT 3.1.1 and 5 adapter of polybridge, on [`rumqttc`](https://docs.rs/rumqttc)
//! (Apache-2.0), at least once in both directions.
//!
//! ```no_run
//! # async fn demo() -> polybridge_core::Result<()> {
//! use std::time::Duration;
//! use polybridge_core::{Deadline, Message, Publisher, Subscriber, Subscription, TopicPattern};
//!
//! let mqtt = polybridge_mqtt::MqttBroker::connect(
//!     &"mqtt://127.0.0.1:1883?client_id=thermostats".parse()?,
//! )
//! .await?;
//! let mut temps = mqtt
//!     .subscribe(Subscription::new(TopicPattern::from_mqtt("sensors/+/temp")?))
//!     .await?;
//! mqtt.publish("sensors/1/temp", &Message::new("21.5"), Deadline::after(Duration::from_secs(5)))
//!     .await?; // resolves on the broker's PUBACK
//! if let Some(delivery) = temps.next().await {
//!     delivery?.ack()?; // only now does the broker get our PUBACK
//! }
//! # Ok(()) }
//! ```
//!
//! # URL
//! `mqtt://[user:password@]host[:port][?option=value&…]`, default port 1883;
//! `mqtts://` for TLS (rustls), default port 8883.
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `version` | `5` | `5` or `3.1.1` |
//! | `client_id` | `polybridge-<random>` | base of the client ids (see below) |
//! | `clean_session` | `false` with `client_id`, else `true` | persistent sessions resume after a restart |
//! | `qos` | `1` | QoS of publishes and subscriptions: 0, 1 or 2 |
//! | `retain` | `false` | publish retained messages |
//! | `keep_alive` | `30s` | keep-alive interval (at least 5s: the client library refuses less) |
//! | `shared` | `true` | consumer groups as shared subscriptions `$share/<group>/<filter>`; with `false` (brokers without them, e.g. RabbitMQ 3.10) a group names one durable subscriber |
//! | `max_payload` | `1048576` | largest payload published (the packet limit is this plus 70 000 bytes for topic and properties) |
//! | `format` | `raw` | MQTT 3.1.1: `raw` (payload only) or `envelope` (the [`polybridge_core::envelope`] JSON, with id, headers, key …) |
//! | `message_expiry` | none | MQTT 5 message expiry of publishes |
//! | `session_expiry` | `1h` | MQTT 5: how long the broker keeps a persistent session after a disconnect |
//! | `will_topic`, `will_payload`, `will_qos`, `will_retain` | none | the last will |
//! | `tls` | `false` (`true` with `mqtts://`) | TLS; implied by the three options below |
//! | `ca_file` | system roots | PEM file of the CA certificates to trust instead of the system's |
//! | `cert_file`, `key_file` | none | client certificate and private key (PEM) for mutual TLS (`require_certificate true`) |
//!
//! # Connections and client ids
//! The publisher is one connection, client id `<client_id>-p` (`-p1`, `-p2`… for further
//! connections with the same `client_id` in one process). Every subscription is a
//! connection of its own with client id `<client_id>-<hash of its filter>-<n>` (`n` the
//! lowest number not in use in this process), so the same program restarted resumes the
//! same sessions, and the broker redelivers what was not acknowledged. Give each program
//! its own `client_id`. A client id taken by another client is detected (MQTT 5: the
//! broker's "session taken over"; 3.1.1: repeated drops right after connecting) and
//! reported as an error instead of an endless reconnect loop.
//!
//! # Publishing
//! `publish` resolves when the broker answered PUBACK (QoS 1) or PUBCOMP (QoS 2): the
//! adapter pairs the packet id rumqttc assigns to each publish with its confirmation, and
//! publishes retransmitted after a reconnect still resolve. QoS 0 resolves once the packet is
//! written, without any confirmation. MQTT 5 failure reason codes are errors. Topics are
//! checked first (not empty, no `+`/`#`, no NUL, at most 65 535 bytes), and payloads over
//! `max_payload` are refused with [`Error::PayloadTooLarge`](polybridge_core::Error).
//!
//! # Subscribing
//! Patterns use `+`/`#` (from any [`TopicPattern`](polybridge_core::TopicPattern) that MQTT
//! can express); topic levels are `/`-separated. A QoS 1/2 message is acknowledged to the
//! broker **only when its delivery is acked**, and PUBACKs go out in the order the messages
//! arrived (an early ack waits for the earlier messages). At most `max_in_flight`
//! deliveries are unsettled (MQTT 5 also tells the broker, as Receive Maximum). A broker
//! that sends more than that (Mosquitto 2.0.11 does, draining a queued backlog) is read no
//! further while the subscription holds 2 × `max_in_flight` unacknowledged messages, so
//! memory stays bounded; a warning says so once.
//! - **nack**: MQTT has no negative acknowledgement. The adapter hands the message out again
//!   itself (after the delay for `nack_after`), counting the attempt; the broker still holds
//!   it unacknowledged, so if the process dies first, the broker redelivers it to the
//!   resumed session.
//! - **reject**: the message is published, with the
//!   [`well_known`](polybridge_core::well_known) reason headers, to the subscription's
//!   `dead_letter` topic (default `dlq/<topic>`; `{topic}` in it is replaced by the
//!   message's topic), and acknowledged once that publish is confirmed.
//! - A message the broker marks as a duplicate (DUP) is delivered as attempt 2.
//! - Closing a subscription disconnects its connection; with a persistent session the
//!   broker keeps its subscription and unacknowledged messages for the next connection with
//!   the same client id (within `session_expiry` for MQTT 5).
//!
//! # Failure
//! Connections reconnect with backoff and resubscribe when the broker lost the session.
//! Deliveries handed out before a reconnect can no longer be acknowledged on the new
//! connection: their settlement is ignored and the broker redelivers their messages.
//!
//! # Capabilities
//! | | MQTT 5 | MQTT 3.1.1 raw | MQTT 3.1.1 envelope |
//! |---|---|---|---|
//! | delivery | at least once with QoS ≥ 1 and a persistent session, else at most once | same | same |
//! | confirmed publish | QoS ≥ 1 | QoS ≥ 1 | QoS ≥ 1 |
//! | headers, keys, request/reply | yes (text; binary as base64) | no | yes |
//! | consumer groups | shared subscriptions | if `shared` | if `shared` |
//! | wildcards | `+`, `#` | `+`, `#` | `+`, `#` |
//! | native delay, dead letter | no | no | no |

mod config;
pub mod mapping;
mod publisher;
mod session;
mod subscriber;
mod wire;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use polybridge_core::{
    Broker, BrokerUrl, Capabilities, DeliveryGuarantee, HeaderSupport, Ordering, Result, Wildcards,
};
use tokio::sync::{mpsc, Semaphore};

pub use config::{Format, MqttConfig, TlsFiles, Version, Will, DEFAULT_PORT, DEFAULT_TLS_PORT};
pub use publisher::MAX_TOPIC_BYTES;

/// The broker name in errors and metrics.
pub const BROKER: &str = "mqtt";

/// Publishes waiting for their confirmation, at most.
pub const MAX_PENDING_PUBLISHES: usize = 2048;

/// A connection to an MQTT broker.
pub struct MqttBroker {
    config: MqttConfig,
    url: BrokerUrl,
    capabilities: Capabilities,
    publisher: mpsc::Sender<session::Command>,
    publish_permits: Arc<Semaphore>,
    closed: AtomicBool,
    /// Keeps the publisher's client id reserved in this process while the broker lives.
    _publisher_slot: subscriber::ClientSlot,
}

impl std::fmt::Debug for MqttBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No URL: it may carry a password.
        f.debug_struct("MqttBroker")
            .field("host", &self.config.host)
            .field("port", &self.config.port)
            .field("client_id", &self.config.client_id)
            .finish_non_exhaustive()
    }
}

impl MqttBroker {
    /// Connects the publishing connection to the broker named by `url`.
    pub async fn connect(url: &BrokerUrl) -> Result<Self> {
        let config = MqttConfig::from_url(url)?;
        let (commands_tx, commands_rx) = mpsc::channel(MAX_PENDING_PUBLISHES);
        let publisher_slot = subscriber::ClientSlot::publisher(&config.client_id);
        session::start(
            &config,
            publisher_slot.client_id.clone(),
            None,
            commands_rx,
            None,
            url.to_string(),
        )
        .await?;
        Ok(MqttBroker {
            capabilities: capabilities(&config),
            config,
            url: url.clone(),
            publisher: commands_tx,
            publish_permits: Arc::new(Semaphore::new(MAX_PENDING_PUBLISHES)),
            closed: AtomicBool::new(false),
            _publisher_slot: publisher_slot,
        })
    }

    /// What a connection to `url` can do, without connecting.
    pub fn capabilities_for(url: &BrokerUrl) -> Result<Capabilities> {
        Ok(capabilities(&MqttConfig::from_url(url)?))
    }

    /// The settings read from the URL.
    pub fn config(&self) -> &MqttConfig {
        &self.config
    }
}

fn capabilities(config: &MqttConfig) -> Capabilities {
    let metadata = config.carries_metadata();
    Capabilities {
        delivery: if config.qos >= 1 && !config.clean_session {
            DeliveryGuarantee::AtLeastOnce
        } else {
            DeliveryGuarantee::AtMostOnce
        },
        confirmed_publish: config.qos >= 1,
        ordering: Ordering::PerTopic,
        persistence: !config.clean_session,
        replay: false,
        consumer_groups: config.shared_subscriptions,
        // Binary values travel as marked base64 (MQTT 5) or inside the envelope.
        headers: if metadata {
            HeaderSupport::Binary
        } else {
            HeaderSupport::None
        },
        keys: metadata,
        native_delay: false,
        native_dead_letter: false,
        max_payload: Some(config.max_payload),
        wildcards: Wildcards {
            single_level: true,
            multi_level: true,
        },
        request_reply: metadata,
        reconnect: true,
        batched_publish: false,
    }
}

impl Broker for MqttBroker {
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
