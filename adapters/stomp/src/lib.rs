//! STOMP 1.2 adapter of polybridge, for Apache ActiveMQ and the RabbitMQ STOMP plugin (and,
//! with fewer features, any STOMP 1.2 server).
//!
//! ```no_run
//! # async fn demo() -> polybridge_core::Result<()> {
//! use std::time::Duration;
//! use polybridge_core::{Deadline, Message, Publisher, Subscriber, Subscription};
//!
//! let stomp = polybridge_stomp::StompBroker::connect(
//!     &"stomp://admin:admin@127.0.0.1:61613?heartbeat=10s,10s".parse()?,
//! )
//! .await?;
//! let mut orders = stomp
//!     .subscribe(Subscription::new("orders.created".parse()?).group("billing"))
//!     .await?;
//! stomp
//!     .publish("orders.created", &Message::new("{}"), Deadline::after(Duration::from_secs(5)))
//!     .await?; // resolves on the broker's RECEIPT
//! if let Some(delivery) = orders.next().await {
//!     delivery?.ack()?; // the ACK frame goes to the broker only now
//! }
//! # Ok(()) }
//! ```
//!
//! # Client library: our own codec
//! The wire protocol is a small codec of our own ([`codec`], [`frame`]) on `tokio-util`'s
//! `Decoder`/`Encoder`, unit-tested for round trips, reads split at every byte, NUL inside
//! bodies, escaping, oversize and malformed frames, and fuzzed with mutated frames. We chose
//! it over the crates available because `async-stomp` is EUPL-1.2 (not a permissive
//! licence), has `anyhow` errors, no receipt correlation and no reconnect; `stomp-rs` is at
//! 0.0.8 and unmaintained; and STOMP frames are simple enough that owning the codec costs
//! less than working around a client. Connection handling (handshake, heart-beats,
//! receipts, reconnect) is in this crate too.
//!
//! # URL
//! `stomp://[login:passcode@]host[:port][/vhost][?option=value&…]`; default port 61613.
//! `stomp+activemq://` and `stomp+rabbitmq://` set the flavor. `stomp+ssl://` (or `stomps://`,
//! or `tls=true` with any of the others) connects over TLS (rustls).
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `host` | the URL path, else `/` | the CONNECT `host` header (RabbitMQ: the virtual host) |
//! | `heartbeat` | `10s,10s` | heart-beats we offer to send, and want to receive (`0,0` = off) |
//! | `prefetch` | the in-flight limit | broker prefetch per subscription (`activemq.prefetchSize`, `prefetch-count`) |
//! | `flavor` | `auto` | `auto` (from the CONNECTED `server` header), `activemq`, `rabbitmq`, `generic` |
//! | `dead_letter` | `/queue/<topic>.dlq` | where `reject` sends messages when the subscription names no dead-letter destination |
//! | `connect_timeout` | `10s` | TCP connect plus CONNECT/CONNECTED |
//! | `receipt_timeout` | `30s` | wait for the RECEIPT of a SUBSCRIBE |
//! | `max_frame` | `16777216` | largest frame accepted from the server; larger is a connection error |
//! | `max_payload` | none | largest payload `publish` sends; larger is [`Error::PayloadTooLarge`] before sending |
//! | `group_commit` | `0` (off) | ActiveMQ: N ≥ 2 publishes queued together go in one transaction (see Semantics); other servers: ignored, with a warning at connect |
//! | `tls` | `false` (`true` with `stomp+ssl://`) | TLS; implied by the three options below |
//! | `ca_file` | system roots | PEM file of the CA certificates to trust instead of the system's |
//! | `cert_file`, `key_file` | none | client certificate and private key (PEM) for mutual TLS |
//!
//! # Destinations and patterns
//! See [`mapping`]. A plain topic `a.b` is `/topic/a.b` on RabbitMQ and the virtual topic
//! `/topic/VirtualTopic.a.b` on ActiveMQ; explicit destinations (`/queue/x`, `/topic/x`,
//! `/exchange/x/key`, `/amq/queue/x`, …) pass through, and an unknown prefix is refused.
//! Subscription patterns: ActiveMQ `*` (one level) and `>` (zero or more levels: canonical
//! `a.#`; canonical `a.>`, "one or more", is refused because ActiveMQ compacts `a.*.>` to
//! `a.>`); RabbitMQ `*` and `#` as in AMQP binding keys. To subscribe to an explicit
//! destination, use a literal pattern: `TopicPattern::literal("/queue/x", '.')`.
//!
//! # Consumer groups and durable subscriptions
//! - **ActiveMQ**: a group `G` on topic `a.b` consumes the virtual-topic queue
//!   `/queue/Consumer.G.VirtualTopic.a.b` (ActiveMQ's default virtual topics, no broker
//!   configuration). The queue exists from the first subscription on and keeps messages
//!   while no member is connected. Groups take one topic, not a wildcard. The
//!   subscription option `durable=<name>` makes a private subscription a JMS durable topic
//!   subscription (`activemq.subscriptionName`, connection `client-id: polybridge-<name>`):
//!   messages published while it is disconnected wait for it.
//! - **RabbitMQ**: a group `G` on `a.b` subscribes `/topic/a.b` with
//!   `x-queue-name: polybridge.G.a.b`, `durable:true`, `auto-delete:false`: a durable
//!   queue bound to `amq.topic`, shared by the members. `durable=<name>` does the same with
//!   the name in place of the group. Wildcards are allowed.
//! - A subscription to an explicit `/queue/…` is already shared by everyone on the queue.
//! - Other servers: no groups ([`Error::Unsupported`]).
//!
//! # Semantics
//! - **Publish** sends `SEND` with `persistent:true` and a `receipt` header on one
//!   connection shared by all publishes; it resolves on the matching `RECEIPT`. On
//!   ActiveMQ with the URL option `group_commit=N` (off by default), N or more publishes
//!   that queue up together (concurrent callers, a busy connection) go in one transaction
//!   and resolve on its `COMMIT`'s receipt: ActiveMQ syncs its store once per transaction
//!   instead of once per message (group commit), which raises the publish rate of a
//!   saturated connection, but consumers see a transacted message only after its COMMIT,
//!   which adds milliseconds at moderate rates. An `ERROR`
//!   frame naming the receipt fails that publish with the broker's message
//!   ([`Error::Permanent`]); a broken connection fails the waiting publishes with
//!   retryable errors (they may or may not be stored), and the next publish reconnects.
//! - **Subscribe** opens a connection of its own, `SUBSCRIBE`s with
//!   `ack:client-individual` and a receipt, and returns once the receipt arrives. At most
//!   the in-flight limit of deliveries is unsettled; the broker prefetch equals it.
//! - **ack** sends `ACK`. **nack** on RabbitMQ sends `NACK` (requeued, `redelivered`).
//!   ActiveMQ treats `NACK` as a poison acknowledgement (it moves the message to
//!   `ActiveMQ.DLQ` at once), so on ActiveMQ a nacked delivery, still unacknowledged at the
//!   broker, is handed out again by this client, marked redelivered; if the connection
//!   breaks first, the broker redelivers it. **nack_after(d)** holds the delivery for `d`,
//!   then does the same (emulated: STOMP has no delayed redelivery). **reject** `SEND`s the
//!   message with the [`well_known`](polybridge_core::well_known) reason headers to the
//!   dead-letter destination with a receipt, and `ACK`s the original only after that
//!   receipt; if that fails (an ERROR, or no receipt within `receipt_timeout`) the
//!   connection is dropped unacknowledged and the broker redelivers the message, never
//!   lost. The dead-letter destination maps like any other: a plain name is a topic (on
//!   which a message with no subscriber is gone), so prefer a `/queue/…` destination; the
//!   default is `/queue/<topic>.dlq`. Dropping a delivery nacks it.
//! - Other STOMP servers (`generic`) get no prefetch header (STOMP has no standard one):
//!   the in-flight limit is then enforced by this client only, and messages the server
//!   pushes beyond it wait in the subscription's local queue.
//! - **Close** sends pending acks, then `DISCONNECT` (with a receipt): the broker takes back
//!   every unacknowledged delivery.
//! - The broker's `message-id` is used only to acknowledge; identity travels in `pb-id`
//!   (RabbitMQ assigns a new `message-id` on redelivery; never deduplicate on it).
//! - [`DeliveryInfo::attempt`](polybridge_core::DeliveryInfo::attempt) is 1 for a first
//!   delivery and 0 ("redelivered, count unknown") when the broker says `redelivered`.
//!   ActiveMQ does not keep that flag across its own restart: a message dispatched before
//!   a broker restart comes back as a first delivery.
//! - `StartPosition::Earliest` is accepted where the subscription reads a queue (groups,
//!   durable subscriptions, `/queue/…`): a queue that already exists resumes; STOMP brokers
//!   do not replay, so a new group starts empty. `Time` and `Position` are refused.
//!
//! # Failure
//! - Heart-beats both ways (negotiated per STOMP 1.2; we send at half the agreed interval);
//!   silence for twice the server's interval plus a second tears the connection down.
//! - Malformed or oversize frames from the server, `ERROR` frames and broken connections
//!   tear the connection down cleanly; subscriptions reconnect with backoff (100 ms to 5 s)
//!   and subscribe again, and settlements of deliveries from the old connection are dropped
//!   (the broker redelivers those messages). Nothing is acknowledged that was not.
//! - A frame from the server larger than `max_frame` ends the subscription with
//!   [`Error::PayloadTooLarge`] (reconnecting would only receive it again); the connection
//!   is dropped without acknowledging, so the broker keeps the message for other consumers.
//! - An `ERROR` frame without `receipt-id` (RabbitMQ closing its channel, e.g. for a
//!   missing exchange) fails the publishes it names, or the only one waiting, with
//!   [`Error::Permanent`]; the others waiting fail with retryable errors.
//! - Wrong credentials are [`Error::Auth`] (not retried by subscriptions); errors never
//!   contain the passcode.
//!
//! # Capabilities
//! | | ActiveMQ | RabbitMQ | other |
//! |---|---|---|---|
//! | delivery | at least once | at least once | at least once |
//! | confirmed publish | yes (RECEIPT) | yes (RECEIPT) | yes (RECEIPT) |
//! | ordering | per topic | per topic | per topic |
//! | persistence | yes (queues, durable subscriptions) | yes (group queues) | yes (queues) |
//! | replay | no | no | no |
//! | consumer groups | virtual topics | named durable queues | no |
//! | headers | text (binary as base64) | text (binary as base64) | text |
//! | keys | `pb-key` header | `pb-key` header | `pb-key` header |
//! | native delay, dead letter | no (emulated) | no (emulated) | no |
//! | request/reply | `pb-reply-to`, `correlation-id` | same | same |
//! | reconnect | yes | yes | yes |
//!
//! [`Error::PayloadTooLarge`]: polybridge_core::Error::PayloadTooLarge
//! [`Error::Permanent`]: polybridge_core::Error::Permanent
//! [`Error::Unsupported`]: polybridge_core::Error::Unsupported
//! [`Error::Auth`]: polybridge_core::Error::Auth

pub mod codec;
mod config;
mod connection;
pub mod frame;
pub mod mapping;
mod publisher;
mod subscriber;

use std::sync::Arc;

use async_trait::async_trait;
use polybridge_core::{
    Broker, BrokerUrl, Capabilities, Deadline, DeliveryGuarantee, DeliveryStream, HeaderSupport,
    Message, Ordering, Publisher, Receipt, Result, Subscriber, Subscription, Wildcards,
};

pub use config::{Flavor, StompConfig, TlsFiles, DEFAULT_PORT};

/// The broker name in errors and metrics.
pub const BROKER: &str = "stomp";

/// URL schemes this adapter serves.
pub const SCHEMES: &[&str] = &[
    "stomp",
    "stomp+activemq",
    "stomp+rabbitmq",
    "stomp+ssl",
    "stomps",
];

/// A connection to a STOMP broker: one publishing connection, one connection per
/// subscription.
pub struct StompBroker {
    url: BrokerUrl,
    capabilities: Capabilities,
    publisher: publisher::StompPublisher,
    shared: Arc<subscriber::Shared>,
}

impl StompBroker {
    /// Connects (the publishing connection) and learns the server's flavor. Fails with
    /// [`polybridge_core::Error::Auth`] on refused credentials and
    /// [`polybridge_core::Error::Connection`] when the server cannot be reached.
    pub async fn connect(url: &BrokerUrl) -> Result<StompBroker> {
        let config = Arc::new(StompConfig::from_url(url)?);
        let link = connection::Link::connect(&config, None).await?;
        let flavor = link.flavor;
        if let Some(n) = config.group_commit.filter(|_| flavor != Flavor::ActiveMq) {
            tracing::warn!(
                endpoint = %config.url,
                flavor = flavor.name(),
                "stomp option group_commit={n} is ignored: only ActiveMQ commits publishes in groups"
            );
        }
        let capabilities = capabilities(flavor, config.max_payload);
        let publisher = publisher::StompPublisher::start(config.clone(), link);
        Ok(StompBroker {
            url: url.clone(),
            capabilities,
            publisher,
            shared: Arc::new(subscriber::Shared { config, flavor }),
        })
    }

    /// What the adapter can do for `url`, without connecting (the bridge checks routes
    /// against it). With `flavor=auto` this assumes ActiveMQ or RabbitMQ; a server of
    /// another kind, found on connecting, refuses consumer groups at subscribe.
    pub fn capabilities_for(url: &BrokerUrl) -> Result<Capabilities> {
        let config = StompConfig::from_url(url)?;
        Ok(capabilities(
            config.flavor.unwrap_or(Flavor::ActiveMq),
            config.max_payload,
        ))
    }

    /// The settings read from the URL.
    pub fn config(&self) -> &StompConfig {
        &self.shared.config
    }

    /// The flavor in use (configured or detected).
    pub fn flavor(&self) -> Flavor {
        self.shared.flavor
    }
}

/// What the adapter promises for a flavor.
pub fn capabilities(flavor: Flavor, max_payload: Option<usize>) -> Capabilities {
    Capabilities {
        delivery: DeliveryGuarantee::AtLeastOnce,
        confirmed_publish: true,
        ordering: Ordering::PerTopic,
        persistence: true,
        replay: false,
        consumer_groups: flavor != Flavor::Generic,
        headers: HeaderSupport::Text,
        keys: true,
        native_delay: false,
        native_dead_letter: false,
        max_payload,
        wildcards: Wildcards {
            single_level: true,
            multi_level: true,
        },
        request_reply: true,
        reconnect: true,
        batched_publish: false,
    }
}

impl std::fmt::Debug for StompBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StompBroker")
            .field("url", &self.url)
            .field("flavor", &self.shared.flavor)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Publisher for StompBroker {
    async fn publish(
        &self,
        destination: &str,
        message: &Message,
        deadline: Deadline,
    ) -> Result<Receipt> {
        self.publisher.publish(destination, message, deadline).await
    }

    async fn close(&self, deadline: Deadline) -> Result<()> {
        self.publisher.close(deadline).await
    }
}

#[async_trait]
impl Subscriber for StompBroker {
    async fn subscribe(&self, subscription: Subscription) -> Result<DeliveryStream> {
        subscriber::subscribe(self.shared.clone(), subscription).await
    }
}

impl Broker for StompBroker {
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
