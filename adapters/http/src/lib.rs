//! HTTP webhook adapter of polybridge, on [`hyper`](https://docs.rs/hyper) (MIT): webhook in
//! (a POST becomes a message, answered 2xx only once the subscriber acked it) and webhook
//! out (a publish is a POST, retried until the receiver answers 2xx).
//!
//! ```no_run
//! # async fn demo() -> polybridge_core::Result<()> {
//! use std::time::Duration;
//! use polybridge_core::{Deadline, Message, Publisher, Subscriber, Subscription};
//!
//! // Webhook in: serve http://0.0.0.0:8080/hooks/<topic>.
//! let inbound = polybridge_http::HttpBroker::connect(&"http://0.0.0.0:8080/hooks".parse()?)?;
//! let mut orders = inbound.subscribe(Subscription::new("orders.*".parse()?)).await?;
//! if let Some(delivery) = orders.next().await {
//!     delivery?.ack()?; // only now does the sender get its 204
//! }
//! // Webhook out (https:// works the same way).
//! let outbound = polybridge_http::HttpBroker::connect(&"http://127.0.0.1:9000/in".parse()?)?;
//! outbound
//!     .publish("orders.created", &Message::new("{}"), Deadline::after(Duration::from_secs(30)))
//!     .await?; // resolved on a 2xx answer from http://127.0.0.1:9000/in/orders.created
//! # Ok(()) }
//! ```
//!
//! # URL
//! `http[s]://[user:password@]host[:port][/base][?option=value&…]`. Publishing POSTs to
//! `http[s]://host:port/base/<destination>`; subscribing serves `POST /base/<topic>` on
//! `host:port` (or `listen`). One URL therefore names both ends of a webhook: two
//! processes with the same URL, one subscribing and one publishing, talk to each other.
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `listen` | the URL's `host:port` | address the webhook server binds (e.g. `0.0.0.0:8080`; port `0` picks a free one, see [`HttpBroker::local_addr`]) |
//! | `publish` | `wait` | `wait`: `publish` resolves on the receiver's 2xx; `queue`: it resolves once queued in this process and a background task delivers it (below) |
//! | `request_timeout` | `60s` | time for one POST until its answer; keep it above the receiver's `ack_timeout` |
//! | `retry_initial` | `100ms` | first retry delay, doubled per attempt |
//! | `retry_max` | `10s` | longest retry delay |
//! | `max_attempts` | unlimited | POSTs of one message before giving up (otherwise until the deadline) |
//! | `retry_for` | `5m` | `publish=queue`: how long a queued message is retried before it is dropped with an error log |
//! | `queue_size` | `1024` | `publish=queue`: most messages queued or being delivered; `publish` waits for room |
//! | `ack_timeout` | `30s` | webhook server: time the subscriber has to settle a delivery before the sender gets 504 |
//! | `max_payload` | 4 MiB | largest body sent or accepted |
//! | `ca_file` | — | `https`: PEM certificates trusted besides the Mozilla roots (webpki-roots) |
//! | `tls_cert`, `tls_key` | — | `https`: PEM certificate chain and private key the webhook server presents (needed to serve `https`) |
//! | `user:password@` | — | HTTP Basic auth (RFC 7617): publishes send `Authorization: Basic …`; the webhook server answers every request without these credentials `401` with `WWW-Authenticate: Basic realm="polybridge"` |
//!
//! `https://host[:443]/base` speaks TLS on both ends (rustls, ring provider): publishes
//! verify the receiver's certificate against the Mozilla roots and `ca_file`; the webhook
//! server serves TLS with `tls_cert`/`tls_key`.
//!
//! Credentials in the URL (`https://user:password@host/base`, percent-encoded) are HTTP
//! Basic auth on both ends: the publisher sends them with every POST; the webhook server
//! requires them on every request, compares them in constant time, and answers a request
//! without them or with others `401` (logged with the peer and counted,
//! [`HttpBroker::unauthorized_requests`]; never the password). A publisher answered 401
//! gets [`Error::Auth`] at once, without retries. Basic auth sends the password only
//! base64-encoded: use it over `https://`. `Debug` of the config and every error show
//! the user, never the password.
//!
//! # Webhook in (subscribe)
//! The first `subscribe` binds the server; it serves until the [`HttpBroker`] is dropped.
//! `POST /base/<topic>` carries a message as [`mapping`] describes (body = payload, byte
//! for byte; `content-type`; `x-pb-id` or `idempotency-key`; `x-pb-key`; `x-pb-header`).
//! The topic is the rest of the path, percent-decoded; subscriptions match it as
//! `.`-separated levels with any [`TopicPattern`](polybridge_core::TopicPattern).
//!
//! Any webhook sender works, e.g. curl:
//!
//! ```text
//! curl -i http://127.0.0.1:8080/hooks/orders.created -H 'content-type: application/json' \
//!      -H 'idempotency-key: o-1' -H 'x-pb-header-trace: t1' -d '{"id":1}'
//! HTTP/1.1 204 No Content          (once a subscriber acked it)
//! ```
//!
//! The request is offered to every consumer group whose pattern matches (a subscription
//! without a group is a private group; members of one group share the requests, a member
//! takes one only while it holds fewer than `max_in_flight` unsettled) and answered once
//! every group settled it:
//!
//! | settlement | answer |
//! |---|---|
//! | every group acked | `204 No Content` |
//! | a group nacked (or its member closed or dropped the delivery) | `503` with `retry-after` (seconds, rounded up) and `x-pb-retry-after-ms` = the `nack_after` delay (0 for `nack`) |
//! | a group rejected | `422`, and the message goes to that subscription's `dead_letter` topic (below) |
//! | not settled within `ack_timeout` | `504` (the delivery stays with the subscriber; its late ack changes nothing, the sender retries) |
//! | no subscription matches the topic | `503`, `retry-after: 1` |
//! | body over `max_payload` | `413` |
//! | a path outside `/base/`, another method | `404`, `405` |
//! | the URL has credentials and the request does not carry them | `401` |
//!
//! So delivery is **at least once only through the sender's retries**: a sender that
//! retries on 5xx (as this adapter's publisher does) gets redelivery on nack, a delay on
//! `nack_after`, and a retry when a subscriber closed with the message unsettled; a sender
//! that does not retry gets at-most-once. Nothing is stored: no persistence, no replay
//! (`StartPosition` other than `Latest` is [`Error::Unsupported`]). The sender's attempt
//! number (`x-pb-attempt`) is [`DeliveryInfo::attempt`]; `redelivered` is attempt > 1.
//! When several groups match and one nacks, the retry goes to all of them again:
//! duplicates for the others (at least once).
//!
//! A group's `dead_letter` topic is the one its first member gave. In-flight limits above
//! [`MAX_IN_FLIGHT`] are lowered to it.
//!
//! `reject(reason)` answers 422 and, when the subscription has a `dead_letter` topic,
//! delivers the message with the [`well_known`](polybridge_core::well_known) reason headers
//! to the subscriptions of this same server matching that topic (in the background,
//! retried while they nack, for up to `retry_for`); with no dead-letter topic or no
//! subscription for it, the message is dropped with an error log (the sender knows: 422).
//!
//! # Webhook out (publish)
//! `publish` POSTs to `<base>/<destination>` (percent-encoded) with the message headers of
//! [`mapping`] and retries with backoff until a 2xx:
//! 2xx = confirmed (an empty [`Receipt`]); 413 =
//! [`Error::PayloadTooLarge`]; 401 = [`Error::Auth`]; 4xx other than 408/429 =
//! [`Error::Permanent`]; 408, 429,
//! 5xx, network errors and per-request timeouts are retried, honouring `retry-after`.
//! Past the deadline the call fails with [`Error::Timeout`]. Each retry sends
//! `x-pb-attempt` one higher.
//!
//! Against a polybridge webhook server, a 2xx means a subscriber *acked* the message, so
//! with `publish=wait` a publish resolves only after the consumer processed it — a
//! publisher that publishes before anyone consumes waits. `publish=queue` decouples the two:
//! `publish` resolves once the message is queued (at most `queue_size`); queued messages
//! are started in publish order (the next request starts once hyper took the previous
//! one's body, which keeps the order on the wire though not a promise of order at the
//! receiver) and each is then POSTed with the same retries for up to `retry_for`. `close`
//! refuses new publishes and returns at once: the queued messages keep being delivered
//! (the process must live on for them); [`HttpBroker::flush`] waits until they are
//! confirmed. In that mode [`Capabilities::confirmed_publish`] is false and a message that
//! cannot be delivered is logged, not returned.
//!
//! # Failure
//! - The webhook server's address in use or not bindable: `subscribe` fails with
//!   [`Error::Connection`] naming it (nothing is bound before the first `subscribe`).
//! - A receiver that is down, overloaded (429, 5xx) or silent (`request_timeout`): the
//!   publisher retries with backoff until the deadline (`publish=wait`) or `retry_for`
//!   (`publish=queue`); a retried POST may duplicate a message the receiver had taken
//!   (at least once; receivers can deduplicate by `x-pb-id`).
//! - This process dies: deliveries in progress are lost to it, their senders see the
//!   connection break and retry; nothing was acknowledged to them.
//!
//! # Capabilities
//! | | `publish=wait` | `publish=queue` |
//! |---|---|---|
//! | delivery | at least once (by the sender's retries) | same |
//! | confirmed publish | yes (2xx) | no (queued) |
//! | ordering | none (concurrent requests) | none |
//! | persistence, replay | no | no |
//! | consumer groups | yes (in one server) | yes |
//! | headers | binary (encoded) | binary |
//! | keys, request/reply | yes (headers) | yes |
//! | native delay, dead letter | no (`retry-after`; in-process dead-letter topic) | no |
//! | reconnect | no (no connection to keep) | no |
//!
//! [`DeliveryInfo::attempt`]: polybridge_core::DeliveryInfo::attempt
//! [`Receipt`]: polybridge_core::Receipt
//! [`Capabilities::confirmed_publish`]: polybridge_core::Capabilities::confirmed_publish
//! [`Error::PayloadTooLarge`]: polybridge_core::Error::PayloadTooLarge
//! [`Error::Connection`]: polybridge_core::Error::Connection
//! [`Error::Auth`]: polybridge_core::Error::Auth
//! [`Error::Permanent`]: polybridge_core::Error::Permanent
//! [`Error::Timeout`]: polybridge_core::Error::Timeout

mod config;
pub mod mapping;
mod publisher;
mod server;
mod subscriber;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use polybridge_core::{
    Broker, BrokerUrl, Capabilities, Deadline, DeliveryGuarantee, DeliveryStream, Error,
    HeaderSupport, Message, Ordering, Publisher, Receipt, Result, Subscriber, Subscription,
    Wildcards,
};
use tokio::sync::{mpsc, OnceCell, Semaphore};

pub use config::{HttpConfig, PublishMode, DEFAULT_MAX_PAYLOAD};
pub use server::SEPARATOR;

/// The adapter's name in errors and logs.
pub const BROKER: &str = "http";

/// Largest in-flight limit of a subscription (larger ones are lowered to it).
pub const MAX_IN_FLIGHT: usize = 65_536;

/// Publishes in progress allowed in `publish=wait` mode (a bound `close` can wait for).
const WAIT_MODE_PERMITS: usize = 65_536;

/// An HTTP webhook endpoint: publish POSTs to it, subscribe serves it.
pub struct HttpBroker {
    config: Arc<HttpConfig>,
    url: BrokerUrl,
    capabilities: Capabilities,
    sender: Arc<publisher::Sender>,
    server: OnceCell<server::Server>,
    permits: Arc<Semaphore>,
    capacity: usize,
    queue: OnceLock<mpsc::Sender<publisher::Queued>>,
    closed: AtomicBool,
}

impl HttpBroker {
    /// Reads `url` (`http://host:port/base?…`). Nothing is connected or bound yet: the
    /// server binds on the first `subscribe`, publishes connect per request.
    pub fn connect(url: &BrokerUrl) -> Result<Self> {
        let config = Arc::new(HttpConfig::from_url(url)?);
        let capacity = match config.publish_mode {
            PublishMode::Wait => WAIT_MODE_PERMITS,
            PublishMode::Queue => config.queue_size,
        };
        Ok(HttpBroker {
            capabilities: capabilities(&config),
            sender: Arc::new(publisher::Sender::new(config.clone())?),
            config,
            url: url.clone(),
            server: OnceCell::new(),
            permits: Arc::new(Semaphore::new(capacity)),
            queue: OnceLock::new(),
            capacity,
            closed: AtomicBool::new(false),
        })
    }

    /// What a connection to `url` can do, without connecting.
    pub fn capabilities_for(url: &BrokerUrl) -> Result<Capabilities> {
        Ok(capabilities(&HttpConfig::from_url(url)?))
    }

    /// The address the webhook server listens on, binding it now if no subscription has.
    pub async fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.server().await?.local_addr)
    }

    /// Requests the webhook server answered `401` (missing or wrong credentials) so far;
    /// 0 while it is not bound.
    pub fn unauthorized_requests(&self) -> u64 {
        self.server
            .get()
            .map_or(0, |s| s.state.unauthorized.load(AtomicOrdering::Relaxed))
    }

    /// The config read from the URL.
    pub fn config(&self) -> &HttpConfig {
        &self.config
    }

    async fn server(&self) -> Result<&server::Server> {
        self.server
            .get_or_try_init(|| server::Server::bind(self.config.clone()))
            .await
    }
}

fn capabilities(config: &HttpConfig) -> Capabilities {
    Capabilities {
        delivery: DeliveryGuarantee::AtLeastOnce,
        confirmed_publish: config.publish_mode == PublishMode::Wait,
        ordering: Ordering::None,
        persistence: false,
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
        reconnect: false,
        batched_publish: false,
    }
}

impl Broker for HttpBroker {
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

#[async_trait]
impl Publisher for HttpBroker {
    async fn publish(
        &self,
        destination: &str,
        message: &Message,
        deadline: Deadline,
    ) -> Result<Receipt> {
        if self.closed.load(AtomicOrdering::Acquire) {
            return Err(Error::closed(BROKER, "the publisher"));
        }
        if destination.is_empty() {
            return Err(Error::permanent(
                BROKER,
                destination,
                "an empty destination: publish to <base>/<destination>",
            ));
        }
        if message.payload.len() > self.config.max_payload {
            return Err(Error::PayloadTooLarge {
                broker: BROKER,
                destination: destination.to_owned(),
                size: message.payload.len(),
                limit: self.config.max_payload,
            });
        }
        let permits = self.permits.clone();
        let permit = deadline
            .run(BROKER, "publish", destination, async move {
                permits
                    .acquire_owned()
                    .await
                    .map_err(|_| Error::closed(BROKER, "the publisher"))
            })
            .await?;
        match self.config.publish_mode {
            PublishMode::Wait => {
                let result = deadline
                    .run(
                        BROKER,
                        "publish",
                        destination,
                        self.sender
                            .send(destination, message, deadline.instant(), None),
                    )
                    .await;
                drop(permit);
                result
            }
            PublishMode::Queue => {
                let queue = self.queue.get_or_init(|| {
                    let (tx, rx) = mpsc::channel(self.config.queue_size);
                    tokio::spawn(publisher::run_queue(self.sender.clone(), rx));
                    tx
                });
                // The permit bounds the queue, so this never waits.
                queue
                    .send(publisher::Queued {
                        destination: destination.to_owned(),
                        message: message.clone(),
                        permit,
                    })
                    .await
                    .map_err(|_| Error::closed(BROKER, "the publish queue"))?;
                Ok(Receipt::default())
            }
        }
    }

    async fn close(&self, deadline: Deadline) -> Result<()> {
        self.closed.store(true, AtomicOrdering::Release);
        if self.config.publish_mode == PublishMode::Queue {
            // Queued messages are confirmed only when a consumer acks them, which may
            // happen after this returns: they keep being delivered in the background (see
            // `flush` to wait for them).
            return Ok(());
        }
        self.flush(deadline).await
    }
}

impl HttpBroker {
    /// Waits until no publish is in progress and no queued message is waiting for its
    /// confirmation (`publish=queue`), then refuses new publishes.
    pub async fn flush(&self, deadline: Deadline) -> Result<()> {
        self.closed.store(true, AtomicOrdering::Release);
        let permits = self.permits.clone();
        let all = u32::try_from(self.capacity).unwrap_or(u32::MAX);
        deadline
            .run(BROKER, "close", "the publisher", async move {
                match permits.acquire_many(all).await {
                    Ok(p) => {
                        p.forget();
                        permits.close();
                        Ok(())
                    }
                    // Closed by an earlier close.
                    Err(_) => Ok(()),
                }
            })
            .await
    }
}

#[async_trait]
impl Subscriber for HttpBroker {
    async fn subscribe(&self, subscription: Subscription) -> Result<DeliveryStream> {
        subscriber::check(&subscription)?;
        let server = self.server().await?;
        let group = server.state.join(
            &subscription.pattern,
            subscription.group.as_deref(),
            subscription.dead_letter.clone(),
            self.config.queue_size,
        );
        Ok(subscriber::start(
            server.state.clone(),
            group,
            &subscription,
        ))
    }
}
