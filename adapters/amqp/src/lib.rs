//! RabbitMQ / AMQP 0-9-1 adapter of polybridge, on [`lapin`](https://docs.rs/lapin) 2.x
//! (MIT) with the tokio executor and reactor.
//!
//! ```no_run
//! # async fn demo() -> polybridge_core::Result<()> {
//! use std::time::Duration;
//! use polybridge_core::{Deadline, Message, Publisher, Subscriber, Subscription};
//!
//! let rabbit = polybridge_amqp::AmqpBroker::connect(
//!     &"amqp://guest:guest@127.0.0.1:5672/%2f?exchange=amq.topic".parse()?,
//! )
//! .await?;
//! let mut orders = rabbit
//!     .subscribe(Subscription::new("orders.*".parse()?).group("billing"))
//!     .await?;
//! rabbit
//!     .publish("orders.created", &Message::new("{}"), Deadline::after(Duration::from_secs(5)))
//!     .await?; // resolves on the broker's basic.ack
//! if let Some(delivery) = orders.next().await {
//!     delivery?.ack()?; // basic.ack goes to the broker only now
//! }
//! # Ok(()) }
//! ```
//!
//! # URL
//! `amqp://[user:password@]host[:port][/vhost][?option=value&…]`. Default port 5672, user and
//! password `guest`, vhost `/` (write it `%2f`; an empty path is `/` too).
//! `amqps://…` (default port 5671) connects over TLS (rustls, TLS 1.2 and 1.3), and so does
//! `amqp://` with `tls=true` or any certificate option. The server's certificate is checked
//! against the URL's host and the CA file (or the system's roots); with `cert_file` and
//! `key_file` the client presents a certificate (mutual TLS, RabbitMQ's
//! `ssl_options.verify = verify_peer` with `fail_if_no_peer_cert = true`). Unreadable
//! files are a configuration error naming the file. Login is still user and password
//! (AMQP PLAIN) over the TLS connection.
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `exchange` | `amq.topic` | the exchange plain destinations are published to and topic subscriptions bind to |
//! | `prefetch` | in-flight limit | overrides the `basic.qos` prefetch of every subscription (the in-flight limit still holds) |
//! | `confirm_timeout` | `30s` | longest wait for a publisher confirm (the call's deadline may be shorter) |
//! | `heartbeat` | `10s` | AMQP heartbeat (`0s` disables) |
//! | `connect_timeout` | `5s` | time allowed for one connection attempt (TCP and AMQP handshake) |
//! | `durable` | `true` | group queues and queues declared with `declare=true` are durable |
//! | `queue_type` | broker default | `classic` or `quorum`: `x-queue-type` of group and declared queues |
//! | `dead_letter` | none | dead-letter destination of subscriptions that name none |
//! | `max_payload` | 128 MiB | largest payload published (RabbitMQ's default `max_message_size`) |
//! | `frame_max` | `32768` | largest AMQP frame proposed (≥ 4096; the broker's smaller limit wins, RabbitMQ's is 131072). lapin holds 2 × 32 frames of I/O buffer per connection: 2 MiB at 32 KiB, 8 MiB at 128 KiB. A message body larger than `frame_max` − 8 is split into several body frames (a 4 KiB message still fits one frame; a 1 MiB message takes 33 frames instead of 9, each with 8 bytes of framing) |
//! | `reconnect_max` | `5s` | longest pause between reconnection attempts |
//! | `dead_letter_exchange` | none | `x-dead-letter-exchange` of group and declared queues (native dead-lettering, see below) |
//! | `declare_exchanges` | none | `NAME:TYPE,…` durable exchanges to declare (TYPE `topic`, `direct`, `fanout`, `headers`) |
//! | `declare_queues` | none | `NAME,…` queues to declare (with `durable`, `queue_type`, `dead_letter_exchange`) |
//! | `declare_bindings` | none | `QUEUE:EXCHANGE:KEY,…` bindings to declare (KEY may be empty or contain `:`) |
//! | `tls` | `false` (`true` for `amqps://`) | connect over TLS |
//! | `ca_file` | system roots | PEM file of the CA certificates to trust instead of the system's |
//! | `cert_file`, `key_file` | none | client certificate and private key (PEM) for mutual TLS |
//!
//! # Topology
//! The `declare_*` options are declared on connecting and again after every reconnection,
//! in order exchanges, queues, bindings. Declaring is idempotent against identical existing
//! topology; a conflicting declaration fails the connection with a permanent error carrying
//! the broker's PRECONDITION_FAILED text, which names the queue or exchange and the
//! differing argument (e.g. `inequivalent arg 'durable' for queue 'q'`). Subscriptions
//! declare their own queues and bindings (below), again after every reconnection too.
//!
//! # Destinations
//! - `orders.eu.created` — published to `exchange` (default `amq.topic`) with the destination
//!   as routing key: topic routing to every queue whose binding matches.
//! - `queue:hello` — the default exchange with routing key `hello`: straight into queue
//!   `hello` (the pika tutorial's `basic_publish(exchange='', routing_key='hello')`).
//! - `exchange:logs/key` — exchange `logs`, routing key `key` (may be empty, may contain `/`).
//!
//! `reply_to` travels as the AMQP `reply-to` property unchanged. A native AMQP requester
//! (pika's RPC pattern, direct reply-to) puts a queue name there: answer it by publishing to
//! `queue:` + that name.
//!
//! # Subscriptions
//! - A pattern is bound as a topic-exchange binding key: `*` is one word, a trailing `#` any
//!   number of words, and canonical `a.>` becomes `a.*.#`. Without a group the subscription
//!   gets its own server-named, exclusive, auto-delete queue (fan-out: every such subscriber
//!   gets every message; the queue and what it held are gone when the subscription or its
//!   connection ends). With group `G` the queue is the durable `G/<binding key>`, shared by
//!   the members of the group (they compete) and kept while no member runs, so messages
//!   published meanwhile wait for the group.
//! - A named queue is consumed, without any binding, when the pattern is the single literal
//!   `queue:NAME` or the option `queue=NAME` is given. It must exist (passive declare: a
//!   missing queue is a permanent error naming it) unless `declare=true`, which declares it
//!   with `durable` and `queue_type`; an existing queue with other arguments is a permanent
//!   error carrying the broker's PRECONDITION_FAILED text, which names the queue and the
//!   differing argument. Option `exchange=X` binds a topic subscription to `X` instead.
//! - Unknown subscription options are an error. Start positions `Latest` and `Earliest`
//!   both mean "what the queue holds from now on" (a new queue has no history); `Time` and
//!   `Position` are [`Error::Unsupported`].
//! - `basic.qos` prefetch = the in-flight limit (at most 65535, or the URL's `prefetch`),
//!   per consumer; acks are manual and sent only when a delivery is settled. The in-flight
//!   limit holds whatever the prefetch: the subscription takes no delivery from the broker
//!   while it has handed out that many unsettled ones (deliveries of a lost channel that
//!   the consumer still holds count too).
//!
//! # Settling
//! - `ack` = `basic.ack`; `nack` = `basic.nack` with requeue (the broker marks the
//!   redelivery `redelivered`).
//! - `nack_after(d)` is emulated: RabbitMQ has no delayed requeue, so the adapter holds the
//!   delivery for `d` (it keeps its prefetch slot) and then sends `basic.nack` with requeue.
//!   If the subscription or connection ends first, the broker redelivers it at once.
//! - `reject(reason)` with a dead-letter destination (the subscription's, else the URL's
//!   `dead_letter`): the message (payload and properties) is published, confirmed and
//!   mandatory, to that destination with the [`well_known`](polybridge_core::well_known)
//!   headers (reason, original routing key, attempts), then the original is acked; if that
//!   publish fails the original is requeued, so nothing is lost (a duplicate in the
//!   dead-letter destination is possible if the connection drops between the two). Without
//!   a dead-letter destination, `reject` is `basic.nack` without requeue: the broker
//!   dead-letters it natively if the queue has a dead-letter exchange (the URL's
//!   `dead_letter_exchange`, an `x-dead-letter-exchange` argument or a policy), adding its
//!   own `x-death` and `x-first-death-reason: rejected` headers (the reason text is not
//!   carried on that path), and drops it otherwise.
//! - [`DeliveryInfo`](polybridge_core::DeliveryInfo): `topic` is the routing key the message
//!   was published with; `position` the delivery tag; `attempt` is `x-delivery-count + 1` on
//!   quorum queues, 1 for a first delivery, and 0 ("redelivered, count unknown") for a
//!   classic-queue redelivery, where the broker only sets the `redelivered` flag. The
//!   attempts header of a dead-lettered message is then written as 2 (a lower bound).
//!
//! # Publishing
//! The publishing channel is in confirm mode and every message is `mandatory` and
//! persistent (delivery mode 2). `publish` resolves on `basic.ack`; a message no queue
//! receives comes back with `basic.return` and is a permanent error naming the exchange and
//! routing key; a `basic.nack` is a transient error; an unknown exchange is a permanent
//! error (the broker's NOT_FOUND). A payload above `max_payload` is
//! [`Error::PayloadTooLarge`] and nothing is sent. Messages map to AMQP as [`mapping`]
//! describes (binary headers as byte arrays, text as long strings, properties for id,
//! content type, timestamp, reply-to, correlation id, expiration and priority).
//!
//! # Failure
//! - The first connection's failure is returned by [`AmqpBroker::connect`]: refused
//!   credentials are [`Error::Auth`] naming the user, an unknown vhost is [`Error::Config`]
//!   naming it, an unreachable broker is [`Error::Connection`].
//! - A lost connection is reopened on demand, one attempt at a time with backoff (100 ms
//!   doubling up to `reconnect_max`). Publishes while it is down fail with retryable errors
//!   (or time out), never silently succeed; a publish whose confirm was lost is an error
//!   too, so retrying may duplicate (at least once).
//! - Each subscription resumes on its own: new channel, queue and binding declared again,
//!   consumer restarted. Deliveries handed out on the lost channel are stale: settling them
//!   is accepted but nothing is sent on the new channel (their delivery tags mean nothing
//!   there) — the broker redelivers them, marked `redelivered`. A consumer the broker
//!   cancels (its queue was deleted) resumes the same way: group and private queues are
//!   declared again. A failure retrying cannot fix (a named queue the subscription does not
//!   declare is gone, access refused) ends the stream with that error.
//! - Closing a subscription closes its channel: the broker requeues every unacknowledged
//!   delivery, and settling one afterwards is [`Error::Closed`].
//!
//! # Capabilities
//! At least once (private subscriptions lose what was published while their connection
//! was down: their queue went with it), confirmed publish, per-queue order, persistence,
//! no replay, consumer groups, binary headers, keys (header `x-polybridge-key`), emulated
//! delay and dead letter, request/reply through `reply-to`/`correlation-id`, reconnect.
//!
//! [`Error::Unsupported`]: polybridge_core::Error::Unsupported
//! [`Error::PayloadTooLarge`]: polybridge_core::Error::PayloadTooLarge
//! [`Error::Auth`]: polybridge_core::Error::Auth
//! [`Error::Config`]: polybridge_core::Error::Config
//! [`Error::Connection`]: polybridge_core::Error::Connection
//! [`Error::Closed`]: polybridge_core::Error::Closed

mod config;
mod connection;
pub mod mapping;
mod publisher;
mod subscriber;
mod tls;

use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;

use polybridge_core::{
    Broker, BrokerUrl, Capabilities, DeliveryGuarantee, HeaderSupport, Ordering, Result, Wildcards,
};

pub use config::{AmqpConfig, TlsFiles, DEFAULT_MAX_PAYLOAD, DEFAULT_PORT, DEFAULT_TLS_PORT};

/// The broker name in errors and metrics.
pub const BROKER: &str = "amqp";

/// The URL schemes this adapter serves.
pub const SCHEMES: &[&str] = &["amqp"];

/// A connection to a RabbitMQ (AMQP 0-9-1) broker.
pub struct AmqpBroker {
    link: Arc<connection::Link>,
    url: BrokerUrl,
    capabilities: Capabilities,
    closed: AtomicBool,
    publishing: AtomicUsize,
    idle: publisher::Idle,
}

impl AmqpBroker {
    /// Connects to the broker named by `url`.
    pub async fn connect(url: &BrokerUrl) -> Result<Self> {
        let config = AmqpConfig::from_url(url)?;
        let capabilities = capabilities(&config);
        let link = connection::Link::connect(config, url.to_string()).await?;
        Ok(AmqpBroker {
            link,
            url: url.clone(),
            capabilities,
            closed: AtomicBool::new(false),
            publishing: AtomicUsize::new(0),
            idle: Arc::default(),
        })
    }

    /// What a connection to `url` can do, without connecting.
    pub fn capabilities_for(url: &BrokerUrl) -> Result<Capabilities> {
        Ok(capabilities(&AmqpConfig::from_url(url)?))
    }

    /// The settings read from the URL.
    pub fn config(&self) -> &AmqpConfig {
        &self.link.config
    }

    /// Closes the connection: subscriptions end (the broker requeues what they had not
    /// acknowledged) and publishes fail.
    pub async fn shutdown(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        self.link.close().await;
    }
}

fn capabilities(config: &AmqpConfig) -> Capabilities {
    Capabilities {
        delivery: DeliveryGuarantee::AtLeastOnce,
        confirmed_publish: true,
        ordering: Ordering::PerTopic,
        persistence: true,
        replay: false,
        consumer_groups: true,
        headers: HeaderSupport::Binary,
        keys: true,
        native_delay: false,
        native_dead_letter: false,
        max_payload: Some(config.max_payload),
        wildcards: Wildcards {
            single_level: true,
            multi_level: true,
        },
        request_reply: true,
        reconnect: true,
        batched_publish: false,
    }
}

impl Broker for AmqpBroker {
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
