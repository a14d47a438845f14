//! NATS and JetStream adapter of polybridge, on [`async-nats`](https://docs.rs/async-nats)
//! (Apache-2.0), the client maintained by the NATS authors.
//!
//! ```no_run
//! # async fn demo() -> polybridge_core::Result<()> {
//! use std::time::Duration;
//! use polybridge_core::{Deadline, Message, Publisher, Subscriber, Subscription};
//!
//! let nats = polybridge_nats::NatsBroker::connect(
//!     &"nats://127.0.0.1:4222?mode=jetstream&stream=ORDERS&create_stream=true".parse()?,
//! )
//! .await?;
//! let mut orders = nats
//!     .subscribe(Subscription::new("ORDERS.*".parse()?).group("billing"))
//!     .await?;
//! nats.publish("ORDERS.created", &Message::new("{}"), Deadline::after(Duration::from_secs(5)))
//!     .await?; // resolves on JetStream's PubAck
//! if let Some(delivery) = orders.next().await {
//!     delivery?.ack()?; // the ack goes to JetStream only now
//! }
//! # Ok(()) }
//! ```
//!
//! # URL
//! `nats://[user:password@ | token@]host[:port][,host[:port]…][?option=value&…]`; the
//! scheme `jetstream://` is `nats://` with `mode=jetstream`. Default port 4222.
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `mode` | `core` | `core` (core NATS, at most once) or `jetstream` (at least once) |
//! | `stream` | — | JetStream: the stream to bind subscriptions to; without it the stream is looked up by subject |
//! | `create_stream` | `false` | JetStream: create `stream` if it does not exist |
//! | `stream_subjects` | `STREAM.>` | JetStream: comma-separated subjects of a created stream |
//! | `storage` | `file` | JetStream: `file` or `memory` storage of a created stream |
//! | `ack_wait` | `30s` | JetStream: redelivery after this long without an ack (held deliveries are kept alive, see below) |
//! | `max_deliver` | unlimited | JetStream: deliveries of one message before the server stops trying |
//! | `group_members` | `16` | JetStream: a consumer's `max_ack_pending` is the in-flight limit times this |
//! | `fetch_wait` | `5s` | JetStream: how long one pull request waits for messages |
//! | `inactive_threshold` | `1h` | JetStream: lifetime on the server of an abandoned consumer of a subscription without a group |
//! | `connect_timeout` | `5s` | time allowed for the first connection |
//! | `name` | `polybridge` | client name shown by the server |
//! | `tls` | `false` | require TLS (the server's `tls` block); implied by the three options below |
//! | `ca_file` | system roots | PEM file of the CA certificates to trust instead of the system's |
//! | `cert_file`, `key_file` | none | client certificate and private key (PEM) for mutual TLS (`verify: true`) |
//!
//! # Destinations and subscriptions
//! A destination is a subject (`orders.eu.created`): tokens separated by `.`, no spaces,
//! no wildcards; an invalid subject is refused before anything is sent. Subscriptions take
//! any [`TopicPattern`](polybridge_core::TopicPattern); `*` and `>` map to NATS wildcards.
//!
//! # Core NATS (`mode=core`)
//! - **At most once.** `publish` sends the message and then flushes: it resolves once the
//!   message was written to the connection's socket (async-nats's flush does not wait for
//!   the server), so a connection that breaks at that moment can still lose it. It does not
//!   promise that any subscriber received it, and nothing is stored: a message published
//!   while no one listens, or while a subscriber is disconnected, is gone. `publish_batch`
//!   sends all and flushes once.
//! - `subscribe` returns once the SUB was written to the socket, not once the server
//!   processed it: a message another connection publishes right after it returns can
//!   reach the server first and miss the subscription (core NATS keeps nothing for it).
//!   To know the server has it, publish a message to the subscribed subject through the
//!   same `NatsBroker` (one connection) and wait for it to arrive: the server handles it
//!   after the SUB (other subscribers of the subject get that message too). The conformance
//!   suite does this before it publishes from another connection.
//! - A subscription with a group is a queue subscription: members of one group share the
//!   messages. Ack, nack and reject are accepted and do nothing (core NATS cannot redeliver).
//! - Request/reply: `reply_to` is the native reply subject, so a NATS requester's inbox
//!   reaches a polybridge subscriber and a polybridge reply reaches the requester.
//!
//! # JetStream (`mode=jetstream`)
//! - `publish` resolves on the stream's PubAck, with the stream sequence as position. The
//!   message id travels in `Nats-Msg-Id`, so a publish retried inside the stream's duplicate
//!   window is stored once; the receipt then says `duplicate`. A subject no stream captures
//!   is a permanent error naming it. A refusal JetStream marks 503 (a full stream that
//!   discards new messages, a stream without quorum) is retryable; any other refusal is
//!   permanent, with JetStream's reason and error code. When no PubAck comes within 5 s,
//!   the publish asks whether a stream captures the subject: if one does, the error is
//!   retryable.
//! - `publish_batch` sends the whole batch, then waits for the PubAcks together. All
//!   PubAcks of a connection come back on one wildcard subscription (`_INBOX.<id>.*.*`,
//!   one reply subject per publish), made at the first JetStream publish; a user whose
//!   permissions list subjects must allow subscribing to `_INBOX.>`, as for any request.
//! - A subscription is a pull consumer on the stream that captures its subject (or on
//!   `stream`), created if absent: durable, named after the group, for a subscription with a
//!   group (members share it); for one without a group, a durable named `pb-<random>` that
//!   is deleted when the subscription closes and expires on the server after
//!   `inactive_threshold` if the process dies. Explicit ack; `max_ack_pending` = in-flight
//!   limit × `group_members`. Messages are pulled in batches as large as the free in-flight
//!   slots, never one per round trip. The start position applies when the consumer is
//!   created: `Latest` = new messages, `Earliest` = all, `Time`, or `Position("SEQ")`.
//! - A message is acked only when its delivery is acked, never on hand-off. `nack` =
//!   `NAK`, `nack_after(d)` = `NAK` with delay `d`; `reject` publishes the message with the
//!   [`well_known`](polybridge_core::well_known) reason headers to the subscription's
//!   `dead_letter` subject (which a stream must capture), then terminates it (`TERM`); when
//!   that publish fails the message is nacked instead, so nothing is lost. Without
//!   `dead_letter`, `reject` only terminates (the server emits its `MSG_TERMINATED`
//!   advisory). A delivery held longer than a third of `ack_wait` is kept alive with
//!   in-progress acks (`+WPI`) while the subscription runs. Closing a subscription naks what
//!   it handed out and did not see settled, with a delay that outlives its last pull
//!   request (up to `fetch_wait` plus 1 s): the group's other members get them then.
//! - The delivery count from the JetStream metadata is [`DeliveryInfo::attempt`]
//!   (`redelivered` when above 1); the position is the stream sequence.
//!
//! # Headers and metadata
//! See [`mapping`]: ids, keys, content type, timestamp, correlation id and reply-to have
//! fixed headers; header names and values that NATS cannot carry travel percent-encoded or
//! base64 and are listed in marker headers, so nothing is silently changed.
//!
//! # Payload limit
//! The server's `max_payload` (1 MiB by default) bounds payload plus headers. The adapter
//! reserves 4 KiB of it for headers: [`Capabilities::max_payload`] is `max_payload − 4096`,
//! and a larger payload, or one whose headers push it over the server's limit, is refused
//! with [`Error::PayloadTooLarge`] before anything is sent.
//!
//! # Failure
//! - The client reconnects forever with backoff and resubscribes core subscriptions; pull
//!   consumers resume: JetStream keeps what was acked and redelivers what was in flight.
//! - A restarted server has forgotten the pull requests it held. Once reconnected, a
//!   JetStream subscription asks how many the consumer still has waiting and pulls again
//!   at once, instead of waiting for its lost requests to expire (`fetch_wait` + 1 s).
//! - A consumer deleted under a subscription (by an operator, or with a memory stream lost
//!   in a restart) answers no pull request again. The subscription creates it again, from
//!   the first stream sequence it has not seen acknowledged: what came while it was gone
//!   is delivered, what was in flight is delivered again, what was acknowledged is not. In
//!   a stream that was created again, it starts at the beginning. With group members in
//!   other processes, the first to create it decides where it starts.
//! - With `create_stream=true`, a subscription creates a stream that is gone again, and so
//!   does a publish that finds no stream for its subject (it then fails retryably, once).
//!   Without it, a subscription whose stream is gone ends with a retryable error.
//! - Publishes during a disconnection fail with retryable errors (or time out), never
//!   silently. A JetStream publish not yet acknowledged when the connection was lost fails
//!   as soon as the client is back (its PubAck would have come on the lost connection),
//!   not when the ack times out; JetStream drops the copy sent again by its message id.
//! - Wrong credentials are an [`Error::Auth`].
//!
//! # Capabilities
//! | | core | JetStream |
//! |---|---|---|
//! | delivery | at most once | at least once |
//! | confirmed publish | no (flushed) | yes (PubAck) |
//! | ordering | per topic | per topic |
//! | persistence, replay | no | yes |
//! | consumer groups | queue groups | shared durable consumers |
//! | headers | binary (encoded) | binary (encoded) |
//! | keys | yes (header) | yes (header) |
//! | native delay | no | yes (`NAK` with delay) |
//! | native dead letter | no | no (emulated by republish + `TERM`) |
//! | request/reply | yes | yes (`Pb-Reply-To`) |
//!
//! [`DeliveryInfo::attempt`]: polybridge_core::DeliveryInfo::attempt
//! [`Capabilities::max_payload`]: polybridge_core::Capabilities::max_payload
//! [`Error::PayloadTooLarge`]: polybridge_core::Error::PayloadTooLarge
//! [`Error::Auth`]: polybridge_core::Error::Auth

mod config;
mod jetstream;
pub mod mapping;
mod puback;
mod publisher;
mod subscriber;

use std::sync::atomic::AtomicBool;

use async_nats::{Client, ConnectErrorKind, ConnectOptions, Event};
use polybridge_core::{
    Broker, BrokerUrl, Capabilities, DeliveryGuarantee, Error, HeaderSupport, Ordering, Result,
    Wildcards,
};
use tokio::sync::watch;

pub use config::{Mode, NatsConfig, Storage, DEFAULT_PORT};

/// The broker name in errors and metrics.
pub const BROKER: &str = "nats";

/// Bytes of the server's `max_payload` kept for headers.
pub const HEADER_RESERVE: usize = 4096;

/// A connection to a NATS server, in core or JetStream mode.
pub struct NatsBroker {
    client: Client,
    jetstream: Option<async_nats::jetstream::Context>,
    config: NatsConfig,
    url: BrokerUrl,
    capabilities: Capabilities,
    /// The server's `max_payload`, payload plus headers.
    server_max_payload: usize,
    /// Counts the client's reconnections (JetStream pulls and publishes watch it).
    reconnects: Reconnects,
    /// The subscription JetStream publishes are answered on, made at the first publish.
    pub_acks: tokio::sync::OnceCell<puback::PubAcks>,
    closed: AtomicBool,
}

impl NatsBroker {
    /// Connects to the server(s) named by `url`, and in JetStream mode creates the stream
    /// when `create_stream=true` asks for it.
    pub async fn connect(url: &BrokerUrl) -> Result<Self> {
        let config = NatsConfig::from_url(url)?;
        let (connected, connections) = watch::channel(0u64);
        let reconnects = Reconnects(connections);
        let mut options = ConnectOptions::new()
            .name(&config.client_name)
            .connection_timeout(config.connect_timeout)
            .max_reconnects(None)
            .event_callback(move |event| on_event(event, connected.clone()));
        if let (Some(user), Some(password)) = (&config.user, &config.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &config.token {
            options = options.token(token.clone());
        }
        if config.tls {
            options = options.require_tls(true);
        }
        if let Some(ca) = &config.ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &config.client_cert {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        let endpoint = url.to_string();
        let client = options
            .connect(config.servers.clone())
            .await
            .map_err(|e| match e.kind() {
                ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => {
                    Error::Auth {
                        broker: BROKER,
                        endpoint: endpoint.clone(),
                        reason: e.to_string(),
                    }
                }
                _ => Error::Connection {
                    broker: BROKER,
                    endpoint: endpoint.clone(),
                    reason: e.to_string(),
                    source: Some(Box::new(e)),
                },
            })?;
        let server_max_payload = client.server_info().max_payload;
        let jetstream = match config.mode {
            Mode::Core => None,
            Mode::JetStream => {
                let context = async_nats::jetstream::new(client.clone());
                if config.create_stream {
                    jetstream::ensure_stream(&context, &config).await?;
                }
                Some(context)
            }
        };
        Ok(NatsBroker {
            capabilities: capabilities(config.mode, server_max_payload),
            client,
            jetstream,
            config,
            url: url.clone(),
            server_max_payload,
            reconnects,
            pub_acks: tokio::sync::OnceCell::new(),
            closed: AtomicBool::new(false),
        })
    }

    /// What a connection to `url` can do, without connecting. The payload limit is the
    /// server default (1 MiB) minus the header reserve until connected.
    pub fn capabilities_for(url: &BrokerUrl) -> Result<Capabilities> {
        let config = NatsConfig::from_url(url)?;
        Ok(capabilities(config.mode, 1024 * 1024))
    }

    /// The underlying async-nats client, for what the contract does not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The settings read from the URL.
    pub fn config(&self) -> &NatsConfig {
        &self.config
    }
}

/// How many times the client has reconnected, from its connection events. A publish's
/// PubAck is answered on the connection the publish went out on, and a restarted server
/// has forgotten the pull requests it held: after a reconnect, what was not answered yet
/// may never be. The client drops an event when its queue of 128 is full; a reconnect
/// missed that way leaves lost pull requests to expire and unanswered PubAcks to time out.
#[derive(Clone)]
pub(crate) struct Reconnects(watch::Receiver<u64>);

impl Reconnects {
    /// The reconnections so far. The channel counts `connected` events, and the first
    /// connection's event may be handled after `connect` returned, so it is not counted.
    fn count_in(connected_events: u64) -> u64 {
        connected_events.saturating_sub(1)
    }

    /// The reconnections so far.
    pub(crate) fn count(&self) -> u64 {
        Self::count_in(*self.0.borrow())
    }

    /// Completes once the client has reconnected more than `seen` times, with the new
    /// count. Never completes once the client is gone.
    pub(crate) async fn after(&mut self, seen: u64) -> u64 {
        let count = self
            .0
            .wait_for(|n| Self::count_in(*n) > seen)
            .await
            .map(|n| Self::count_in(*n));
        match count {
            Ok(count) => count,
            Err(_) => std::future::pending().await,
        }
    }
}

/// Logs a connection event, and counts connections in `connected` (see [`Reconnects`]).
async fn on_event(event: Event, connected: watch::Sender<u64>) {
    match event {
        Event::Connected => {
            tracing::info!(broker = BROKER, "connected");
            connected.send_modify(|n| *n += 1);
        }
        Event::Disconnected => tracing::warn!(broker = BROKER, "disconnected; reconnecting"),
        Event::SlowConsumer(sid) => tracing::warn!(
            broker = BROKER,
            subscription = sid,
            "slow consumer: the server or client dropped messages of a core subscription"
        ),
        other => tracing::info!(broker = BROKER, event = %other, "connection event"),
    }
}

fn capabilities(mode: Mode, server_max_payload: usize) -> Capabilities {
    let jetstream = mode == Mode::JetStream;
    Capabilities {
        delivery: if jetstream {
            DeliveryGuarantee::AtLeastOnce
        } else {
            DeliveryGuarantee::AtMostOnce
        },
        confirmed_publish: jetstream,
        ordering: Ordering::PerTopic,
        persistence: jetstream,
        replay: jetstream,
        consumer_groups: true,
        headers: HeaderSupport::Binary,
        keys: true,
        native_delay: jetstream,
        native_dead_letter: false,
        max_payload: Some(server_max_payload.saturating_sub(HEADER_RESERVE)),
        wildcards: Wildcards {
            single_level: true,
            multi_level: true,
        },
        request_reply: true,
        reconnect: true,
        batched_publish: true,
    }
}

impl Broker for NatsBroker {
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
