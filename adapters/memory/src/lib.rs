//! The in-memory broker of polybridge: a complete in-process broker with the full contract
//! — consumer groups, ack/nack/redelivery, delayed nack, dead-letter, wildcards, replay.
//!
//! It is the reference implementation that passes the whole conformance suite, the
//! embedded default of the bridge's quickstart, and a broker for your own unit tests:
//!
//! ```
//! # async fn demo() -> polybridge_core::Result<()> {
//! use std::time::Duration;
//! use polybridge_core::{Deadline, Message, Publisher, Subscriber, Subscription};
//!
//! let broker = polybridge_memory::MemoryBroker::connect(&"memory://demo".parse()?)?;
//! let mut orders = broker
//!     .subscribe(Subscription::new("orders.*".parse()?))
//!     .await?;
//! broker
//!     .publish("orders.created", &Message::new("{\"id\":1}"), Deadline::after(Duration::from_secs(1)))
//!     .await?;
//! if let Some(delivery) = orders.next().await {
//!     let delivery = delivery?;
//!     assert_eq!(delivery.info.topic, "orders.created");
//!     delivery.ack()?;
//! }
//! # Ok(()) }
//! ```
//!
//! # Semantics
//! - `memory://NAME`: every connection to `NAME` in this process shares one broker, which
//!   lives until the process ends. `memory://` is the broker `default`.
//! - Topics are `.`-separated levels (`orders.eu.created`); subscriptions take any
//!   [`TopicPattern`](polybridge_core::TopicPattern).
//! - Each topic is a log of the last `retention` messages (default 100 000). A consumer
//!   group reads it with its own cursor; members of a group share its messages; a
//!   subscription without a group is a private group of one.
//! - A new group starts at its [`StartPosition`](polybridge_core::StartPosition)
//!   (`Position` is an offset) in topics that exist when it subscribes, and at the start
//!   of topics created later.
//! - `nack` redelivers at once; `nack_after(d)` after `d` (native delay); a closed
//!   subscription's unsettled deliveries go back to the front of the group's queue.
//! - `reject(reason)` appends the message to the subscription's `dead_letter` topic, by
//!   default `<topic>.dlq`, with the headers of
//!   [`well_known`](polybridge_core::well_known).
//! - `publish` is confirmed once the message is in the log, before it returns; payloads
//!   over `max_payload` (default 8 MiB) are refused with `PayloadTooLarge`.
//! - Nothing survives the process: `persistence` is false.

mod broker;
mod config;
mod publisher;
mod subscriber;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use polybridge_core::{
    Broker, BrokerUrl, Capabilities, DeliveryGuarantee, HeaderSupport, Ordering, Result, Wildcards,
};

pub use broker::SEPARATOR;
pub use config::{MemoryConfig, DEFAULT_MAX_PAYLOAD, DEFAULT_RETENTION};

/// A connection to an in-memory broker.
pub struct MemoryBroker {
    shared: Arc<broker::SharedBroker>,
    url: BrokerUrl,
    capabilities: Capabilities,
    closed: AtomicBool,
}

impl MemoryBroker {
    /// Connects to the in-memory broker named by `url` (`memory://NAME?…`), creating it on
    /// first use.
    pub fn connect(url: &BrokerUrl) -> Result<Self> {
        let config = MemoryConfig::from_url(url)?;
        let shared = broker::broker_named(&config);
        Ok(MemoryBroker {
            capabilities: capabilities(shared.config.max_payload),
            shared,
            url: url.clone(),
            closed: AtomicBool::new(false),
        })
    }

    /// What a connection to `url` can do, without connecting.
    pub fn capabilities_for(url: &BrokerUrl) -> Result<Capabilities> {
        Ok(capabilities(MemoryConfig::from_url(url)?.max_payload))
    }
}

fn capabilities(max_payload: usize) -> Capabilities {
    Capabilities {
        delivery: DeliveryGuarantee::AtLeastOnce,
        confirmed_publish: true,
        ordering: Ordering::PerTopic,
        persistence: false,
        replay: true,
        consumer_groups: true,
        headers: HeaderSupport::Binary,
        keys: true,
        native_delay: true,
        native_dead_letter: true,
        max_payload: Some(max_payload),
        wildcards: Wildcards {
            single_level: true,
            multi_level: true,
        },
        request_reply: true,
        reconnect: false,
        batched_publish: false,
    }
}

impl Broker for MemoryBroker {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn url(&self) -> &BrokerUrl {
        &self.url
    }
}
