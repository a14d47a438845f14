//! Apache Kafka adapter of polybridge, on [`rdkafka`](https://docs.rs/rdkafka) (MIT), the
//! Rust binding of librdkafka (BSD-2-Clause, built from the crate's bundled source).
//!
//! ```no_run
//! # async fn demo() -> polybridge_core::Result<()> {
//! use std::time::Duration;
//! use polybridge_core::{Deadline, Message, Publisher, Subscriber, Subscription};
//!
//! let kafka = polybridge_kafka::KafkaBroker::connect(
//!     &"kafka://127.0.0.1:9092?linger=5ms&compression=lz4".parse()?,
//! )
//! .await?;
//! let mut orders = kafka
//!     .subscribe(Subscription::new("orders.*".parse()?).group("billing"))
//!     .await?; // returns once the group gave this member its partitions
//! let receipt = kafka
//!     .publish("orders.eu", &Message::new("{}").with_key("customer-7"),
//!              Deadline::after(Duration::from_secs(5)))
//!     .await?; // the delivery report: partition and offset in receipt.position
//! if let Some(delivery) = orders.next().await {
//!     delivery?.ack()?; // counts toward the committed watermark of its partition
//! }
//! # Ok(()) }
//! ```
//!
//! # URL
//! `kafka://[user:password@]host[:port][,host[:port]…][?option=value&…]`, `kafkas://…` for
//! TLS. Default port 9092. A user and password select SASL (`security.protocol`
//! `sasl_plaintext`, or `sasl_ssl` with `kafkas://`) with `sasl_mechanism`.
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `sasl_mechanism` | `SCRAM-SHA-512` | with `user:password@`: `SCRAM-SHA-512`, `SCRAM-SHA-256` or `PLAIN` (`sasl.mechanisms`); PLAIN sends the password as is, use it with `kafkas://` |
//! | `ca_file` | system roots | `kafkas://`: PEM file of the CA certificates to trust instead of the system's (`ssl.ca.location`) |
//! | `cert_file`, `key_file` | none | `kafkas://`: client certificate and private key (PEM) for mutual TLS (`ssl.certificate.location`, `ssl.key.location`) |
//! | `acks` | `all` | producer acknowledgements: `all`, `1` or `0` (`0` = publish resolves unconfirmed) |
//! | `idempotence` | `true` with `acks=all` | the idempotent producer (`enable.idempotence`): retries never duplicate or reorder within a partition |
//! | `compression` | `none` | `none`, `gzip`, `snappy`, `lz4` or `zstd` |
//! | `linger` | `5ms` | how long the producer waits to fill a batch (`linger.ms`) |
//! | `batch_size` | librdkafka's | largest batch in bytes (`batch.size`) |
//! | `batch_messages` | `128` | largest batch in records (`batch.num.messages`, 1 to 1000000): a full batch is sent without waiting for `linger`, so a publisher with a bounded window (a route's `max_in_flight`) keeps a batch in flight while the next fills |
//! | `fetch_wait` | `10ms` | longest time the broker may hold a fetch without new data (`fetch.wait.max.ms`); Tansu holds it that long even when data arrives, so it bounds delivery latency there |
//! | `partition` | the partitioner's pick | every publish goes to this partition |
//! | `start` | `latest` | where a new group starts when the subscription keeps the default `StartPosition::Latest`: `latest` or `earliest` |
//! | `session_timeout` | `10s` | consumer group session timeout (`session.timeout.ms`) |
//! | `heartbeat_interval` | `1s` | consumer heartbeat (`heartbeat.interval.ms`) |
//! | `commit_interval` | `500ms` | how often a moved watermark is committed (always also on revoke and close) |
//! | `close_timeout` | `10s` | how long closing a subscription may take before its consumer is abandoned |
//! | `dead_letter` | `{topic}.dlq` | dead-letter topic of subscriptions that name none; `{topic}` is the message's topic |
//! | `auto_create` | `true` | subscribing may auto-create a missing topic (if the broker allows); `false`: a missing topic is an error |
//! | `client_id` | `polybridge` | `client.id` |
//! | `rdkafka.<key>` | — | any librdkafka setting, passed to the producer and the consumers |
//!
//! `rdkafka.` options are validated by librdkafka when [`KafkaBroker::connect`] creates the
//! clients: an unknown key or a bad value is an [`Error::Config`] naming it. The settings
//! at-least-once depends on (`group.id`, `enable.auto.commit`, `enable.auto.offset.store`,
//! `enable.partition.eof`, `bootstrap.servers`) are refused. `message.max.bytes` sets the
//! payload limit (see below).
//!
//! # TLS and authentication
//! - `kafkas://` speaks TLS to every broker (librdkafka with OpenSSL; the server
//!   certificate must match the host name, `ssl.endpoint.identification.algorithm=https`).
//!   `ca_file` replaces the system roots; `cert_file` and `key_file` present a client
//!   certificate. `ssl.*` and `sasl.*` librdkafka settings can still be passed as
//!   `rdkafka.` options.
//! - `user:password@` logs in with SASL: SCRAM-SHA-512 unless `sasl_mechanism` says
//!   otherwise (SCRAM never sends the password; it is what Tansu supports). GSSAPI
//!   (Kerberos) and OAUTHBEARER are not offered.
//! - [`KafkaBroker::connect`] waits until a broker answers: a refused login is an
//!   [`Error::Auth`] and a failed TLS handshake (an unknown CA, a certificate not matching
//!   the host) an [`Error::Connection`] saying why, as soon as librdkafka reports them
//!   (0.6 to 1.0 s against a local Tansu, printed by
//!   `cargo test -p polybridge-kafka --test tls -- --nocapture`) rather than after the 10 s
//!   connect timeout. Error texts never contain the password (librdkafka's messages do not carry it,
//!   and it is blanked out should one ever do).
//! - A client certificate the server refuses under TLS 1.3 shows up as a closed connection,
//!   so it is reported after the 10 s connect timeout as a [`Error::Connection`] whose
//!   reason ends with librdkafka's last error (against the test listener: "tlsv13 alert
//!   certificate required").
//!
//! # Publishing
//! - One idempotent `FutureProducer` per connection (`enable.idempotence=true`,
//!   `acks=all`). `publish` resolves on the delivery report and its receipt carries
//!   [`Position::Offset`](polybridge_core::Position::Offset) (partition, offset).
//! - A destination is a topic name (letters, digits, `.`, `_`, `-`, at most 249); anything
//!   else is refused before sending. The message key is the record key, so messages with one
//!   key go to one partition and keep their order; messages without a key are spread by
//!   librdkafka's partitioner and keep no order between them.
//! - Failures: a topic the broker does not have and will not create is a permanent error
//!   naming it; broker, queue and network failures are retryable; past the deadline the
//!   publish is a [`Error::Timeout`] (the record may still be delivered: librdkafka keeps
//!   retrying it until `message.timeout.ms`).
//! - `close` flushes: it waits until every queued record has its delivery report.
//!
//! # Subscribing
//! - Every subscription is its own librdkafka consumer on a thread of its own, joined to
//!   the subscription's group. A subscription without a group joins a new unique group
//!   (`pb-private-…`) and so sees every message. A literal pattern subscribes to one topic
//!   (which must exist, or be auto-created); a pattern with wildcards becomes an anchored
//!   regex subscription (`orders.*` → `^orders\.[^.]*$`, see
//!   [`TopicPattern::to_kafka_regex`](polybridge_core::TopicPattern::to_kafka_regex)), which
//!   follows topics as they are created.
//! - `subscribe` returns once the group assigned this member its partitions, so it takes
//!   as long as a group join: about `group.initial.rebalance.delay.ms` (3 s by default) on
//!   Kafka for a new group, about half the session timeout on Tansu. Each newly
//!   assigned partition starts at the group's committed offset; a partition the group has
//!   no offset for starts at the subscription's start position (`Latest` = the end now,
//!   `Earliest` = the beginning, `Time(t)` = the first offset at `t`, `Position("N")` =
//!   offset N, clamped to what the partition holds), and that start is committed at once, so
//!   a group's position never depends on when its first message arrives. If a committed
//!   offset no longer exists (retention, a broker that lost its data), the partition
//!   restarts at its earliest offset (`auto.offset.reset=earliest`): re-read, never skipped.
//! - Throughput, measured on a 2-core machine against Tansu (release build, 100-byte
//!   messages): about 100 000 messages/s published with `publish_batch`, 125 000/s consumed
//!   and acked by one subscription with `max_in_flight` 1000.
//! - At most `max_in_flight` deliveries are unsettled; at the limit, polled records wait in
//!   the consumer's stash, and once it holds two windows the partitions are paused until
//!   it is empty (the thread keeps polling, so heartbeats and rebalances go on).
//! - Memory: librdkafka prefetches up to 8 MB or 20 000 records per partition
//!   (`queued.max.messages.kbytes`, `queued.min.messages`; its defaults are 64 MB and
//!   100 000), so that is what a subscription whose sink is down holds beyond its window.
//!   A full queue is looked at again after 10 ms (`fetch.queue.backoff.ms`; its default
//!   of 1 s made a small queue slow). Raise them with `rdkafka.<setting>=N` in the
//!   URL for topics of large records where throughput matters more than memory.
//!
//! # Offsets: at least once, commit after ack
//! Auto-commit and automatic offset storing are off (the librdkafka default,
//! `enable.auto.offset.store=true`, commits what was *fetched*: closing after processing 1
//! of 10 messages commits offset 10). The adapter commits per partition only the
//! **contiguous acknowledged watermark**: the first offset handed out and not acked (or,
//! when all are acked, the offset after the last one handed out). Acks out of order never
//! commit past an unacked delivery: ack 2..10 but not 1, and the next member starts at 1.
//! The watermark is committed every `commit_interval` while it moves, synchronously when
//! partitions are revoked, and when the subscription closes (after the settlements made
//! before `close`).
//!
//! Each commit carries metadata `pb:<n>`: offsets below `n` were handed out before. A member
//! that resumes a partition marks those deliveries `redelivered` (with `attempt` 0,
//! unknown). Brokers that drop commit metadata (Tansu) lose this across processes; within a
//! process the adapter remembers what the members of each group handed out.
//!
//! # Settling
//! - `ack`: the offset counts toward the watermark.
//! - `nack` / `nack_after(d)`: **the partition is rewound** to the nacked offset: that
//!   delivery and every later one of the same partition already handed out are taken back
//!   (settling them becomes a no-op) and the partition is fetched again from the nacked
//!   offset — at once, or after `d` with the partition paused meanwhile (other partitions
//!   keep flowing). So per-partition order holds through redeliveries, and later messages
//!   of that partition wait for the nacked one. Redeliveries carry `redelivered` and the
//!   attempt count (kept in memory while the partition stays assigned). Dropping a delivery
//!   unsettled is a `nack`.
//! - `reject(reason)`: the message (payload, key, headers) is published to the dead-letter
//!   topic — the subscription's `dead_letter`, else the URL's `dead_letter` template,
//!   default `<topic>.dlq` — with the [`well_known`](polybridge_core::well_known) reason,
//!   original topic and attempts headers plus `x-polybridge-original-partition` and
//!   `x-polybridge-original-offset`. Only when that publish is confirmed does the offset
//!   count as acked; if it fails, the partition is rewound as for a `nack`, so nothing is
//!   lost.
//!
//! # Rebalances
//! On revoke (eager or cooperative protocol, whatever `partition.assignment.strategy`
//! picks) the acknowledged watermark of the revoked partitions is committed synchronously
//! (unless librdkafka reports the assignment lost), then their deliveries are forgotten:
//! settling one of them afterwards is a no-op, and whatever was not acked is redelivered by
//! the partition's next owner from the committed watermark.
//!
//! # Closing
//! Closing a subscription (or dropping its stream) commits the watermark, closes the
//! consumer (leaving the group, so its partitions move at once) and destroys it. That is
//! bounded: `close` returns after at most `close_timeout`. A consumer that has not closed
//! by then is leaked rather than destroyed, because `rd_kafka_destroy` has been seen to
//! block forever (rust-rdkafka #509; reproduced with Tansu); the group then takes its
//! partitions back after the session timeout. Settling after `close` is
//! [`Error::Closed`].
//!
//! # Headers and metadata
//! See [`mapping`]: the key, payload and timestamp are native; id, content type,
//! correlation id and reply-to travel as `pb-` headers; user headers keep names, order,
//! repeated names and binary values (a `pb-binary` header lists which values are binary).
//!
//! # Payload limit
//! [`Capabilities::max_payload`](polybridge_core::Capabilities::max_payload) is
//! `message.max.bytes` (librdkafka default 1 000 000, settable with
//! `rdkafka.message.max.bytes`) minus [`RECORD_RESERVE`] (16 KiB for key, headers and record
//! overhead). A larger payload is [`Error::PayloadTooLarge`] before anything is sent; a
//! record whose key and headers push it past librdkafka's or the broker's limit is reported
//! the same way.
//!
//! # Failure
//! librdkafka reconnects by itself. While brokers are unreachable, publishes wait (until
//! their deadline) and consumers stop receiving; afterwards fetching resumes at the
//! position reached and commits go on, so nothing acknowledged is lost and everything not
//! acknowledged is redelivered. If the group evicted the member meanwhile, its partitions
//! are reassigned and resume from the committed watermark (redeliveries, never loss).
//!
//! # Tested against
//! The tests run against [Tansu](https://github.com/tansu-io/tansu), a Kafka-protocol broker
//! the test harness starts (or a real Kafka given by `POLYBRIDGE_KAFKA_URL`). Differences
//! found, worked around in the tests only: Tansu joins a group after about half the session
//! timeout (tests use `session_timeout=3s`), keeps data in memory only (the outage tests
//! freeze it with SIGSTOP instead of restarting it), and drops commit metadata.
//!
//! TLS and SASL against Tansu 0.6.0 (`tests/tls.rs`), as far as it allows:
//! - Tansu 0.6.0 cannot serve TLS: its `--cert` and `--key` options exclude each other
//!   (`tansu broker --cert c.pem --key k.pem` exits with "the argument '--cert <CERT>'
//!   cannot be used with '--key <KEY>'"), and `--cert` alone leaves the listener plaintext.
//!   Its source builds the TLS settings only from both, without client-certificate
//!   verification (`with_no_client_auth`): Tansu has no mutual TLS. The tests therefore put
//!   `socat`'s OpenSSL listener (requiring a client certificate signed by the test CA) in
//!   front of Tansu: publish and consume work over mutual TLS, and a wrong CA, the system
//!   roots, a missing client certificate and plaintext are refused.
//! - Tansu's `--authentication` offers SCRAM-SHA-256 and SCRAM-SHA-512 (a PLAIN handshake
//!   is refused with "NoSharedMechanism"). Its users live in its storage, memory only in
//!   the installed build, and the request that adds one (`AlterUserScramCredentials`,
//!   `tansu user create`) is refused with `NotAuthenticated` on a connection that has not
//!   logged in: an authenticating Tansu can never have a user. So the tests check that a
//!   refused login (SCRAM-SHA-512 and -256) is an [`Error::Auth`] without the password; a
//!   successful SASL login is not tested against a real broker here (only the librdkafka
//!   settings it produces, in the unit tests).
//!
//! # Capabilities
//! | | |
//! |---|---|
//! | delivery | at least once |
//! | confirmed publish | yes (delivery report; not with `acks=0`) |
//! | ordering | per key (per partition) |
//! | persistence, replay | yes |
//! | consumer groups | yes |
//! | headers | binary |
//! | keys | yes (native) |
//! | native delay | no (rewind after a paused delay) |
//! | native dead letter | no (publish to a topic, then ack) |
//! | wildcards | single and multi level (regex subscriptions) |
//! | request/reply | yes (`pb-reply-to`, `pb-correlation-id`) |
//!
//! [`Error::Auth`]: polybridge_core::Error::Auth
//! [`Error::Connection`]: polybridge_core::Error::Connection
//! [`Error::Config`]: polybridge_core::Error::Config
//! [`Error::Timeout`]: polybridge_core::Error::Timeout
//! [`Error::Closed`]: polybridge_core::Error::Closed
//! [`Error::PayloadTooLarge`]: polybridge_core::Error::PayloadTooLarge

mod config;
mod consumer;
pub mod mapping;
mod publisher;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use polybridge_core::{
    Broker, BrokerUrl, Capabilities, Deadline, DeliveryGuarantee, DeliveryStream, Error,
    HeaderSupport, Message, Ordering, Publisher, Receipt, Result, Subscriber, Subscription,
    Wildcards,
};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;
use rdkafka::ClientContext;

pub use config::{
    DefaultStart, KafkaConfig, SaslMechanism, DEFAULT_BATCH_MESSAGES, DEFAULT_MESSAGE_MAX_BYTES,
    DEFAULT_PORT, RECORD_RESERVE,
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
    /// bad one) and checks that a broker answers: a refused login is an [`Error::Auth`], a
    /// failed TLS handshake an [`Error::Connection`] saying why, both as soon as librdkafka
    /// reports them.
    pub async fn connect(url: &BrokerUrl) -> Result<Self> {
        let config = KafkaConfig::from_url(url)?;
        let producer: FutureProducer = config
            .producer()
            .create()
            .map_err(|e| client_error(url, "producer", e))?;
        // The consumer settings are validated too, so a bad option fails here rather than at
        // the first subscribe. Without a group id the probe has no group to leave, so
        // dropping it cannot wait on the broker; it also runs the connection check.
        let mut consumer_config = config.consumer("polybridge-config-check");
        consumer_config.remove("group.id");
        let probe: BaseConsumer<CheckContext> = consumer_config
            .create_with_context(CheckContext::default())
            .map_err(|e| client_error(url, "consumer", e))?;
        let checked = tokio::task::spawn_blocking(move || check_connection(&probe))
            .await
            .map_err(|e| Error::Connection {
                broker: BROKER,
                endpoint: url.to_string(),
                reason: format!("connection check task: {e}"),
                source: None,
            })?;
        if let Err(failure) = checked {
            return Err(failure.into_error(url, &config));
        }
        Ok(KafkaBroker {
            capabilities: capabilities(&config),
            producer: Arc::new(producer),
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

/// How long [`KafkaBroker::connect`] waits for a broker to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Keeps what librdkafka reported at error level during the connection check, so a refused
/// login or TLS handshake is reported with librdkafka's reason.
#[derive(Default)]
struct CheckContext {
    last_error: Mutex<Option<String>>,
}

impl CheckContext {
    fn remember(&self, text: &str) {
        // "N/M brokers are down" follows the message that says why; keep the why.
        if text.contains("brokers are down") {
            return;
        }
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(text.to_owned());
        }
    }

    fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|last| last.clone())
    }
}

impl ClientContext for CheckContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        use RDKafkaLogLevel as L;
        if matches!(level, L::Emerg | L::Alert | L::Critical | L::Error) {
            self.remember(message);
        }
        tracing::debug!(broker = BROKER, facility = fac, "librdkafka: {message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.remember(reason);
        tracing::debug!(broker = BROKER, error = %error, "connection check: {reason}");
    }
}

impl ConsumerContext for CheckContext {}

/// Why the connection check failed.
enum CheckFailure {
    /// The broker refused the SASL login.
    Auth(String),
    /// The TLS handshake failed (an unknown CA, a refused client certificate, no TLS).
    Tls(String),
    /// No broker answered in time (with what librdkafka last reported, if anything).
    NoAnswer(KafkaError, Option<String>),
}

impl CheckFailure {
    fn into_error(self, url: &BrokerUrl, config: &KafkaConfig) -> Error {
        let scrub = |text: String| scrub_secret(&text, config.password.as_deref());
        match self {
            CheckFailure::Auth(reason) => Error::Auth {
                broker: BROKER,
                endpoint: url.to_string(),
                reason: scrub(reason),
            },
            CheckFailure::Tls(reason) => Error::Connection {
                broker: BROKER,
                endpoint: url.to_string(),
                reason: format!("TLS handshake failed: {}", scrub(reason)),
                source: None,
            },
            CheckFailure::NoAnswer(e, last) => Error::Connection {
                broker: BROKER,
                endpoint: url.to_string(),
                reason: match last {
                    Some(last) => format!(
                        "no broker answered within {}s: {e}; last error: {}",
                        CONNECT_TIMEOUT.as_secs(),
                        scrub(last)
                    ),
                    None => format!(
                        "no broker answered within {}s: {e}",
                        CONNECT_TIMEOUT.as_secs()
                    ),
                },
                source: Some(Box::new(e)),
            },
        }
    }
}

/// `text` with URL passwords and `secret` itself blanked out: librdkafka's messages do not
/// contain the SASL password, and this keeps it that way whatever they say.
fn scrub_secret(text: &str, secret: Option<&str>) -> String {
    let text = polybridge_core::redact_text(text);
    match secret {
        Some(s) if !s.is_empty() => text.replace(s, "***"),
        _ => text,
    }
}

/// Polls `probe` for broker errors while asking for metadata, until a broker answers, the
/// login or the TLS handshake is refused, or [`CONNECT_TIMEOUT`] passes.
fn check_connection(probe: &BaseConsumer<CheckContext>) -> std::result::Result<(), CheckFailure> {
    let end = Instant::now() + CONNECT_TIMEOUT;
    loop {
        // Broker errors (a failed login or handshake) arrive as error events on the probe's
        // queue; librdkafka would otherwise retry them until the deadline.
        while let Some(Err(e)) = probe.poll(Duration::ZERO) {
            let reason = || {
                probe
                    .context()
                    .last_error()
                    .unwrap_or_else(|| e.to_string())
            };
            match e.rdkafka_error_code() {
                Some(RDKafkaErrorCode::Authentication) => return Err(CheckFailure::Auth(reason())),
                Some(RDKafkaErrorCode::SSL) => return Err(CheckFailure::Tls(reason())),
                _ => {}
            }
        }
        let left = end.saturating_duration_since(Instant::now());
        match probe.fetch_metadata(None, left.min(Duration::from_millis(250))) {
            Ok(_) => return Ok(()),
            Err(e) if left.is_zero() => {
                return Err(CheckFailure::NoAnswer(e, probe.context().last_error()))
            }
            Err(_) => {}
        }
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
        batched_publish: false,
    }
}

#[async_trait]
impl Publisher for KafkaBroker {
    async fn publish(
        &self,
        destination: &str,
        message: &Message,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubbed_texts_lack_the_password() {
        let text = "kafka://alice:s3cret@h failed: login s3cret refused";
        let scrubbed = scrub_secret(text, Some("s3cret"));
        assert!(!scrubbed.contains("s3cret"), "{scrubbed}");
        assert!(scrubbed.contains("login *** refused"), "{scrubbed}");
        assert_eq!(scrub_secret("no secret here", Some("")), "no secret here");
        assert_eq!(scrub_secret("no secret here", None), "no secret here");
    }
}
