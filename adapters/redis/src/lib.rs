//! Redis adapter of polybridge, on the [`redis`](https://docs.rs/redis) crate (BSD-3-Clause),
//! in three modes chosen by URL: streams with consumer groups (the default), pub/sub, and
//! lists as a reliable queue.
//!
//! ```no_run
//! # async fn demo() -> polybridge_core::Result<()> {
//! use std::time::Duration;
//! use polybridge_core::{Deadline, Message, Publisher, Subscriber, Subscription};
//!
//! let redis = polybridge_redis::RedisBroker::connect(&"redis://127.0.0.1:6379".parse()?).await?;
//! let mut orders = redis
//!     .subscribe(Subscription::new("orders".parse()?).group("billing"))
//!     .await?;
//! redis
//!     .publish("orders", &Message::new("{}"), Deadline::after(Duration::from_secs(5)))
//!     .await?; // XADD answered: the entry id is in the receipt
//! if let Some(delivery) = orders.next().await {
//!     delivery?.ack()?; // XACK
//! }
//! # Ok(()) }
//! ```
//!
//! # URL
//! `redis://[[user]:password@]host[:port][/db][?option=value&…]`; `rediss://` for TLS.
//! Default port 6379, database 0.
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `mode` | `streams` | `streams`, `pubsub` or `lists` |
//! | `format` | `raw` | pub/sub and lists: `raw` (payload only) or `envelope` (JSON with every field, see [`mapping`]) |
//! | `maxlen` | none | streams: `XADD … MAXLEN ~ N` |
//! | `claim_idle` | `30s` | streams: pending entries idle this long are claimed from dead consumers (`XAUTOCLAIM`) |
//! | `max_deliveries` | `0` (unlimited) | streams and lists: after N deliveries a message goes to the dead-letter destination |
//! | `block` | `1s` | how long one blocking read (`XREADGROUP BLOCK`, `BLMOVE`) waits |
//! | `consumer_timeout` | `10s` | lists: a consumer silent this long is dead and its processing list is requeued |
//! | `connect_timeout` | `5s` | time allowed to connect |
//! | `ca_file` | system roots | `rediss://`: PEM file of the CA certificates to trust instead of the system's |
//! | `cert_file`, `key_file` | none | `rediss://`: client certificate and private key (PEM) for mutual TLS (`tls-auth-clients yes`) |
//!
//! # Streams (`mode=streams`): at least once
//! - A destination is a stream key. `publish` is `XADD` (with `MAXLEN ~` when `maxlen` is
//!   set) and resolves with the entry id once Redis answered (durability then follows the
//!   server's AOF/RDB settings). `publish_batch` pipelines the `XADD`s in one round trip.
//! - A subscription reads one stream key (no wildcards) through a consumer group
//!   (`XGROUP CREATE … MKSTREAM`, then `XREADGROUP … >` for as many entries as there are
//!   free in-flight slots). A subscription without a group gets a group of its own, destroyed
//!   when it closes. The start position applies when the group is created: `Latest` = `$`,
//!   `Earliest` = `0`, `Time(t)` = the first id at `t`, `Position("ID")` = after that id.
//! - `ack` = `XACK`. `nack` redelivers at once through `XCLAIM` (which counts the delivery),
//!   `nack_after(d)` after `d`. `reject` adds the entry with the
//!   [`well_known`](polybridge_core::well_known) reason headers to the dead-letter stream (the
//!   subscription's `dead_letter`, default `<key>.dlq`) and acks it, atomically
//!   (`MULTI`/`EXEC`). The delivery count of the pending entry is
//!   [`DeliveryInfo::attempt`](polybridge_core::DeliveryInfo::attempt); with
//!   `max_deliveries=N`, an entry about to be delivered an N+1th time is dead-lettered instead.
//! - A crashed consumer's pending entries are claimed by the other members after
//!   `claim_idle` (`XAUTOCLAIM`), and counted as redeliveries. While a subscription runs, its
//!   held deliveries are kept from looking idle (`XCLAIM … JUSTID`, which does not count a
//!   delivery). Closing a subscription marks what it did not settle as idle so the group's
//!   next reader claims it at once.
//!
//! # Pub/sub (`mode=pubsub`): at most once
//! `PUBLISH` resolves when Redis answered; it stores nothing, so a message published while no
//! one subscribes, or while a subscriber is reconnecting, is gone. Subscriptions use
//! `SUBSCRIBE`, or `PSUBSCRIBE` for patterns (`orders.>` → `orders.*`; a single-level `*`
//! before the end cannot be expressed as a glob and is refused). No consumer groups. With
//! `format=raw` nothing but the payload travels (`Capabilities::headers` is `None`): routes
//! that need headers must use `format=envelope` or their own envelope.
//!
//! # Lists (`mode=lists`): at least once, competing consumers
//! `publish` is `LPUSH`. A subscription moves elements with `LMOVE`/`BLMOVE` from the list
//! into a processing list of its own (`<key>:pb-processing:<consumer>`) and keeps a
//! heartbeat key (`<key>:pb-alive:<consumer>`, expiring after `consumer_timeout`). `ack`
//! removes the element from the processing list; `nack` moves it back to the head of the
//! queue (redelivered next); `reject` moves it to the dead-letter list (default
//! `<key>.dlq`). Any subscriber that finds a processing list without a live heartbeat moves
//! its elements back to the queue, so a crashed consumer loses nothing. All subscribers of a
//! list compete for its elements whatever their group (lists cannot fan out). With
//! `format=envelope` the attempt count travels in the element; with `format=raw` it is
//! unknown and every delivery says attempt 1.
//!
//! # Failure
//! Connections reconnect with backoff; reads resume from the group's position (streams)
//! or the list. Publishes during a disconnection fail with retryable errors. A wrong
//! password is an [`Error::Auth`](polybridge_core::Error::Auth); a key holding another type
//! (a list where a stream is expected) is a permanent error naming the key.
//!
//! A consumer group that is gone (destroyed by an operator, or with its stream key deleted
//! or lost in a restart of a Redis without persistence) makes every read fail with
//! `NOGROUP`. The subscription then creates the group again (with `MKSTREAM`), after the
//! first entry it has not seen acknowledged: what came while the group was gone is
//! delivered, what was in flight is delivered again, what was acknowledged is not. Entry
//! ids grow with time, so this also holds in a stream created again. With group members in
//! other processes, the first to create it decides where it starts.
//!
//! # Capabilities
//! | | streams | pub/sub | lists |
//! |---|---|---|---|
//! | delivery | at least once | at most once | at least once |
//! | confirmed publish | yes | no (not stored) | yes |
//! | ordering | per topic | per topic | per topic |
//! | persistence | yes | no | yes |
//! | replay | yes | no | no |
//! | consumer groups | yes | no | no (one competing queue) |
//! | headers, keys | binary, yes | envelope only | envelope only |
//! | native delay, dead letter | no, no | no, no | no, no |
//! | wildcards | no | yes (`>` only at the end) | no |

mod config;
mod lists;
pub mod mapping;
mod publisher;
mod pubsub;
mod streams;
mod subscriber;

use std::sync::atomic::AtomicBool;

use polybridge_core::{
    Broker, BrokerUrl, Capabilities, DeliveryGuarantee, Error, HeaderSupport, Ordering, Result,
    Wildcards,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError};

pub use config::{Format, Mode, RedisConfig, TlsFiles};

/// The broker name in errors and metrics.
pub const BROKER: &str = "redis";

/// Largest payload: Redis's `proto-max-bulk-len` default, 512 MiB.
pub const MAX_PAYLOAD: usize = 512 * 1024 * 1024;

/// A connection to a Redis server in one of the three modes.
pub struct RedisBroker {
    client: redis::Client,
    connection: ConnectionManager,
    config: RedisConfig,
    url: BrokerUrl,
    capabilities: Capabilities,
    closed: AtomicBool,
}

impl RedisBroker {
    /// Connects to the server named by `url`.
    pub async fn connect(url: &BrokerUrl) -> Result<Self> {
        let config = RedisConfig::from_url(url)?;
        let client = open_client(&config, url)?;
        let connection = connect_manager(&client, &config, url).await?;
        Ok(RedisBroker {
            capabilities: capabilities(&config),
            client,
            connection,
            config,
            url: url.clone(),
            closed: AtomicBool::new(false),
        })
    }

    /// What a connection to `url` can do, without connecting.
    pub fn capabilities_for(url: &BrokerUrl) -> Result<Capabilities> {
        Ok(capabilities(&RedisConfig::from_url(url)?))
    }

    /// The settings read from the URL.
    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// A new connection of its own (blocking reads must not share one).
    pub(crate) async fn dedicated_connection(&self) -> Result<ConnectionManager> {
        connect_manager(&self.client, &self.config, &self.url).await
    }
}

/// The `redis` client: with the certificate files of `ca_file`, `cert_file`, `key_file`
/// when given.
fn open_client(config: &RedisConfig, url: &BrokerUrl) -> Result<redis::Client> {
    let invalid = |e: RedisError| {
        Error::config(
            BROKER,
            format!("{url}: {}", e.detail().unwrap_or("invalid URL")),
        )
    };
    let tls = &config.tls;
    if tls == &config::TlsFiles::default() {
        return redis::Client::open(config::client_url(url)).map_err(invalid);
    }
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            Error::config(
                BROKER,
                format!("{url}: cannot read {}: {e}", path.display()),
            )
        })
    };
    let root_cert = tls.ca_file.as_deref().map(read).transpose()?;
    let client_tls = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read(cert)?,
            client_key: read(key)?,
        }),
        _ => None,
    };
    redis::Client::build_with_tls(
        config::client_url(url),
        redis::TlsCertificates {
            client_tls,
            root_cert,
        },
    )
    .map_err(invalid)
}

async fn connect_manager(
    client: &redis::Client,
    config: &RedisConfig,
    url: &BrokerUrl,
) -> Result<ConnectionManager> {
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(config.connect_timeout)
        .set_number_of_retries(3)
        .set_max_delay(2000);
    ConnectionManager::new_with_config(client.clone(), manager_config)
        .await
        .map_err(|e| connect_error(e, url))
}

fn connect_error(e: RedisError, url: &BrokerUrl) -> Error {
    if e.kind() == ErrorKind::AuthenticationFailed
        || e.code() == Some("WRONGPASS")
        || e.code() == Some("NOAUTH")
    {
        return Error::Auth {
            broker: BROKER,
            endpoint: url.to_string(),
            reason: polybridge_core::redact_text(&e.to_string()),
        };
    }
    Error::Connection {
        broker: BROKER,
        endpoint: url.to_string(),
        reason: polybridge_core::redact_text(&e.to_string()),
        source: None,
    }
}

/// Maps a command's error: connection trouble is retryable, a key of the wrong type names
/// the key, anything else Redis refused is permanent.
pub(crate) fn command_error(e: RedisError, key: &str, what: &str) -> Error {
    let text = polybridge_core::redact_text(&e.to_string());
    if e.code() == Some("WRONGTYPE") {
        return Error::permanent(
            BROKER,
            key,
            format!("{what}: the key {key:?} holds a value of another type ({text})"),
        );
    }
    if e.kind() == ErrorKind::AuthenticationFailed || e.code() == Some("NOAUTH") {
        return Error::Auth {
            broker: BROKER,
            endpoint: key.to_owned(),
            reason: text,
        };
    }
    let retryable = e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(
            e.kind(),
            ErrorKind::BusyLoadingError
                | ErrorKind::TryAgain
                | ErrorKind::MasterDown
                | ErrorKind::ClusterDown
                | ErrorKind::ReadOnly
        );
    if retryable {
        Error::transient(BROKER, key, format!("{what}: {text}"))
    } else {
        Error::permanent(BROKER, key, format!("{what}: {text}"))
    }
}

fn capabilities(config: &RedisConfig) -> Capabilities {
    let envelope = config.format == Format::Envelope;
    let (delivery, confirmed, persistence, replay, groups, headers, keys, wildcards) =
        match config.mode {
            Mode::Streams => (
                DeliveryGuarantee::AtLeastOnce,
                true,
                true,
                true,
                true,
                HeaderSupport::Binary,
                true,
                false,
            ),
            Mode::PubSub => (
                DeliveryGuarantee::AtMostOnce,
                false,
                false,
                false,
                false,
                if envelope {
                    HeaderSupport::Binary
                } else {
                    HeaderSupport::None
                },
                envelope,
                true,
            ),
            Mode::Lists => (
                DeliveryGuarantee::AtLeastOnce,
                true,
                true,
                false,
                false,
                if envelope {
                    HeaderSupport::Binary
                } else {
                    HeaderSupport::None
                },
                envelope,
                false,
            ),
        };
    Capabilities {
        delivery,
        confirmed_publish: confirmed,
        ordering: Ordering::PerTopic,
        persistence,
        replay,
        consumer_groups: groups,
        headers,
        keys,
        native_delay: false,
        native_dead_letter: false,
        max_payload: Some(MAX_PAYLOAD),
        wildcards: Wildcards {
            single_level: false,
            multi_level: wildcards,
        },
        request_reply: config.mode == Mode::Streams || envelope,
        reconnect: true,
        batched_publish: true,
    }
}

impl Broker for RedisBroker {
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
