//! Raw clients: the same client crates the adapters use, driven directly, as the baseline
//! the bridge is compared with.
//!
//! | endpoint | publish | consume |
//! |---|---|---|
//! | JetStream | `async-nats` `jetstream::Context::publish_with_headers`, each message with a unique `Nats-Msg-Id` (as the adapter: JetStream deduplicates on it), PubAcks awaited in a window of [`window`] | pull consumer (`messages()`), explicit `ack` per message |
//! | Redis streams | `redis` multiplexed connection, `XADD`s of the entry the adapter writes (`payload`, `id`, `timestamp`) pipelined [`window`] per round trip | `XREADGROUP COUNT` [`window`], one `XACK` per batch |
//! | MQTT QoS 1 | `rumqttc` (3.1.1), PUBACKs awaited with an in-flight window of [`window`] | `rumqttc` QoS 1 subscription, automatic PUBACK |
//! | RabbitMQ | `lapin`, confirm mode, persistent, with the properties the adapter sends (message id, timestamp, an empty header table), confirms awaited in a window of [`window`] | `basic.consume`, prefetch [`window`], `basic.ack` per message |
//! | STOMP (ActiveMQ) | no raw client crate exists: the polybridge STOMP adapter itself (own codec), [`window`] receipts outstanding | the adapter, `ACK` per message |
//! | memory | the in-process memory broker itself, [`window`] publishes outstanding | the memory broker, ack per message |
//! | Kafka (Tansu) | `rdkafka` `FutureProducer` with the adapter's settings (`KafkaConfig::producer`: acks=all, idempotent, `linger` 5 ms, batches of 128 records), each record with the message id in a `pb-id` header as the adapter sends it, [`window`] delivery futures outstanding, from a producer that holds its producer id (one warm-up record delivered first: `KafkaPub::new`) | `rdkafka` `StreamConsumer` with the adapter's settings (`KafkaConfig::consumer`) in a new group (in the consume run opened after the pre-fill: [`subscriber_of_filled`]), offsets stored after each message and committed asynchronously every [`window`] |

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use polybridge::{Broker, Deadline, DeliveryStream, Message, StartPosition, Subscription};

/// Publishes (or deliveries) outstanding at once in the raw clients: the route's window,
/// so both sides of a ratio have the same one ([`set_window`]).
static WINDOW: AtomicUsize = AtomicUsize::new(polybridge::DEFAULT_MAX_IN_FLIGHT);

/// Sets the raw clients' window: the route's `max_in_flight` (`--max-in-flight`, by default
/// the bridge's default, 256). Call before any raw client starts.
pub fn set_window(messages: usize) {
    WINDOW.store(messages.max(1), Ordering::Relaxed);
}

/// The raw clients' window (see [`set_window`]).
pub fn window() -> usize {
    WINDOW.load(Ordering::Relaxed)
}

/// The window as a protocol's 16-bit field (RabbitMQ's prefetch, MQTT's in-flight count).
fn window_u16() -> u16 {
    u16::try_from(window()).unwrap_or(u16::MAX)
}

/// An endpoint kind of the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The in-process memory broker.
    Memory,
    /// NATS JetStream.
    JetStream,
    /// Redis streams.
    Redis,
    /// MQTT QoS 1 (Mosquitto).
    Mqtt,
    /// RabbitMQ (AMQP 0-9-1).
    Amqp,
    /// STOMP (ActiveMQ).
    Stomp,
    /// Kafka protocol.
    Kafka,
}

impl Kind {
    /// The name used in route names.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Memory => "memory",
            Kind::JetStream => "NATS(JetStream)",
            Kind::Redis => "Redis streams",
            Kind::Mqtt => "MQTT(QoS1)",
            Kind::Amqp => "RabbitMQ",
            Kind::Stomp => "STOMP(ActiveMQ)",
            Kind::Kafka => "Kafka",
        }
    }
}

/// The JetStream stream every benchmark subject lives in.
pub const JS_STREAM: &str = "BENCH";

/// The Kafka topic each raw producer sends one record to before it is used
/// ([`KafkaPub::new`]); nothing reads it.
const KAFKA_WARMUP_TOPIC: &str = "bench-warmup";

/// A broker endpoint: its kind and URL (as the adapter takes it).
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// Kind.
    pub kind: Kind,
    /// The polybridge URL.
    pub url: String,
}

impl Endpoint {
    /// The name a destination called `base` has for this endpoint (topic, subject, key,
    /// queue) as the raw client sees it.
    pub fn raw_name(&self, base: &str) -> String {
        match self.kind {
            Kind::JetStream => format!("bench.{base}"),
            Kind::Mqtt => format!("bench/{base}"),
            _ => base.to_string(),
        }
    }

    /// The route's `from` block for a source named `base`.
    pub fn source_yaml(&self, base: &str) -> String {
        match self.kind {
            Kind::Amqp => format!(
                "{{ broker: src, topic: \"bench\", options: {{ queue: \"{}\", declare: \"true\" }} }}",
                self.raw_name(base)
            ),
            Kind::Mqtt => format!("{{ broker: src, topic: \"{}\" }}", self.raw_name(base)),
            _ => format!(
                "{{ broker: src, topic: \"{}\", group: \"g{base}\", start: earliest }}",
                self.raw_name(base)
            ),
        }
    }

    /// The route's sink destination for a sink named `base`.
    pub fn sink_destination(&self, base: &str) -> String {
        match self.kind {
            Kind::Amqp => format!("queue:{}", self.raw_name(base)),
            Kind::Stomp => format!("/queue/{}", self.raw_name(base)),
            _ => self.raw_name(base),
        }
    }
}

/// Something that publishes confirmed messages, pipelined.
pub trait RawPub: Send {
    /// Sends one message; waits only when the window is full.
    fn publish(&mut self, payload: Bytes) -> BoxFuture<'_, Result<()>>;
    /// Waits for every outstanding confirmation.
    fn flush(&mut self) -> BoxFuture<'_, Result<()>>;
    /// Sends one message to the broker now, without waiting for its confirmation (`flush`
    /// collects it); waits only when the window is full. The latency series use this: a
    /// publisher that defers sending to a batch would add its own wait.
    fn send(&mut self, payload: Bytes) -> BoxFuture<'_, Result<()>> {
        self.publish(payload)
    }
}

/// Something that receives and acknowledges messages.
pub trait RawSub: Send {
    /// The next message (acknowledged, or its acknowledgement queued).
    fn next(&mut self) -> BoxFuture<'_, Result<Arrival>>;
}

/// A message a [`RawSub`] received.
pub struct Arrival {
    /// Its payload.
    pub payload: Bytes,
    /// When the client handed it over, before it was acknowledged: the latency series end
    /// here, so a subscriber's acknowledgement (a round trip to the client's I/O task with
    /// some crates) is not counted in a hop.
    pub at: Instant,
}

impl Arrival {
    fn now(payload: Bytes) -> Arrival {
        Arrival {
            payload,
            at: Instant::now(),
        }
    }
}

/// Prepares `name` on `ep` (stream, queue) so publishes to it are stored.
pub async fn prepare(ep: &Endpoint, name: &str) -> Result<()> {
    match ep.kind {
        Kind::JetStream => {
            let client = async_nats::connect(nats_addr(&ep.url)).await?;
            let js = async_nats::jetstream::new(client);
            js.get_or_create_stream(async_nats::jetstream::stream::Config {
                name: JS_STREAM.into(),
                subjects: vec!["bench.>".into()],
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow!("creating stream {JS_STREAM}: {e}"))?;
        }
        Kind::Amqp => {
            let conn = amqp_connect(&ep.url).await?;
            let ch = conn.create_channel().await?;
            ch.queue_declare(
                &ep.raw_name(name),
                lapin::options::QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await?;
            let _ = conn.close(200, "bye").await;
        }
        _ => {}
    }
    Ok(())
}

/// Removes what a run left in `name` (keeps the brokers' memory and disks flat).
pub async fn cleanup(ep: &Endpoint, name: &str) {
    let raw = ep.raw_name(name);
    let _ = async {
        match ep.kind {
            Kind::JetStream => {
                let client = async_nats::connect(nats_addr(&ep.url)).await?;
                let js = async_nats::jetstream::new(client);
                let stream = js.get_stream(JS_STREAM).await.map_err(|e| anyhow!("{e}"))?;
                stream
                    .purge()
                    .filter(raw)
                    .await
                    .map_err(|e| anyhow!("{e}"))?;
            }
            Kind::Redis => {
                let client = redis::Client::open(ep.url.as_str())?;
                let mut con = client.get_multiplexed_async_connection().await?;
                let _: () = redis::cmd("DEL").arg(&raw).query_async(&mut con).await?;
            }
            Kind::Amqp => {
                let conn = amqp_connect(&ep.url).await?;
                let ch = conn.create_channel().await?;
                ch.queue_delete(&raw, Default::default()).await?;
                let _ = conn.close(200, "bye").await;
            }
            Kind::Stomp => {
                // STOMP cannot delete a queue, and ActiveMQ keeps what nobody consumed: left
                // there, the benchmark's queues fill its memory limit and later runs stall.
                // So the queue is drained until it is quiet.
                let mut sub = subscriber(ep, name).await?;
                while let Ok(Ok(_)) =
                    tokio::time::timeout(Duration::from_millis(300), sub.next()).await
                {
                }
            }
            _ => {}
        }
        anyhow::Ok(())
    }
    .await;
}

/// A raw publisher to `name` on `ep`.
pub async fn publisher(ep: &Endpoint, name: &str) -> Result<Box<dyn RawPub>> {
    let raw = ep.raw_name(name);
    Ok(match ep.kind {
        Kind::JetStream => {
            let client = async_nats::connect(nats_addr(&ep.url)).await?;
            Box::new(JsPub {
                js: async_nats::jetstream::new(client),
                subject: raw,
                window: VecDeque::new(),
                ids: MessageIds::default(),
            })
        }
        Kind::Redis => {
            let client = redis::Client::open(ep.url.as_str())?;
            Box::new(RedisPub {
                con: client.get_multiplexed_async_connection().await?,
                key: raw,
                pipe: redis::pipe(),
                queued: 0,
                ids: MessageIds::default(),
            })
        }
        Kind::Mqtt => Box::new(MqttPub::connect(&ep.url, raw).await?),
        Kind::Amqp => {
            let conn = amqp_connect(&ep.url).await?;
            let ch = conn.create_channel().await?;
            ch.confirm_select(Default::default()).await?;
            Box::new(AmqpPub {
                _conn: conn,
                ch,
                queue: raw,
                window: VecDeque::new(),
                ids: MessageIds::default(),
            })
        }
        Kind::Kafka => Box::new(KafkaPub::new(&ep.url, raw).await?),
        Kind::Stomp | Kind::Memory => Box::new(AdapterPub {
            broker: polybridge::connect(&ep.url).await?,
            destination: ep.sink_destination(name),
            window: FuturesUnordered::new(),
        }),
    })
}

/// Whether `ep` keeps what is published to a destination nobody subscribes to yet, so the
/// raw consume run can open its subscriber after the pre-fill ([`subscriber_of_filled`])
/// and read from the broker, as the bridged run's source does, not from what the client
/// prefetched while the destination was filled. Kafka: the log keeps every record and a
/// new consumer group starts at the earliest offset. The other endpoints keep messages
/// only for a subscription that exists (a JetStream consumer, a Redis group, a queue, a
/// persistent session), so their subscriber is opened before the pre-fill.
pub fn keeps_messages_without_subscriber(ep: &Endpoint) -> bool {
    ep.kind == Kind::Kafka
}

/// A raw subscriber to `name` on `ep`, which already holds messages
/// ([`keeps_messages_without_subscriber`]): it starts at the oldest one. It returns at
/// once; its first `next` waits for the consumer group's join and the first fetch.
pub async fn subscriber_of_filled(ep: &Endpoint, name: &str) -> Result<Box<dyn RawSub>> {
    match ep.kind {
        Kind::Kafka => Ok(Box::new(
            KafkaSub::open(&ep.url, &ep.raw_name(name), &format!("raw{name}")).await?,
        )),
        _ => bail!(
            "{} keeps no messages for a subscriber that does not exist yet",
            ep.kind.label()
        ),
    }
}

/// A raw subscriber to `name` on `ep` that receives everything published after it returns.
pub async fn subscriber(ep: &Endpoint, name: &str) -> Result<Box<dyn RawSub>> {
    let raw = ep.raw_name(name);
    Ok(match ep.kind {
        Kind::JetStream => {
            use async_nats::jetstream::consumer;
            let client = async_nats::connect(nats_addr(&ep.url)).await?;
            let js = async_nats::jetstream::new(client);
            let stream = js.get_stream(JS_STREAM).await.map_err(|e| anyhow!("{e}"))?;
            let consumer = stream
                .create_consumer(consumer::pull::Config {
                    filter_subject: raw,
                    deliver_policy: consumer::DeliverPolicy::All,
                    ack_policy: consumer::AckPolicy::Explicit,
                    max_ack_pending: (window() * 16) as i64,
                    inactive_threshold: Duration::from_secs(600),
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow!("{e}"))?;
            let messages = consumer
                .stream()
                .max_messages_per_batch(window())
                .messages()
                .await
                .map_err(|e| anyhow!("{e}"))?;
            Box::new(JsSub { messages })
        }
        Kind::Redis => {
            let client = redis::Client::open(ep.url.as_str())?;
            let mut con = client.get_multiplexed_async_connection().await?;
            let _: redis::Value = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&raw)
                .arg("raw")
                .arg("$")
                .arg("MKSTREAM")
                .query_async(&mut con)
                .await?;
            Box::new(RedisSub {
                con,
                key: raw,
                buffer: VecDeque::new(),
            })
        }
        Kind::Mqtt => Box::new(MqttSub::connect(&ep.url, raw).await?),
        Kind::Amqp => {
            let conn = amqp_connect(&ep.url).await?;
            let ch = conn.create_channel().await?;
            ch.basic_qos(window_u16(), Default::default()).await?;
            let consumer = ch
                .basic_consume(&raw, "raw", Default::default(), Default::default())
                .await?;
            Box::new(AmqpSub {
                _conn: conn,
                _ch: ch,
                consumer,
            })
        }
        Kind::Kafka => Box::new(KafkaSub::subscribe(&ep.url, &raw, &format!("raw{name}")).await?),
        Kind::Stomp | Kind::Memory => {
            let broker = polybridge::connect(&ep.url).await?;
            let pattern = if ep.kind == Kind::Stomp {
                polybridge::TopicPattern::literal(&ep.sink_destination(name), '.')
            } else {
                raw.parse()?
            };
            let stream = broker
                .subscribe(
                    Subscription::new(pattern)
                        .group(format!("raw{name}"))
                        .start(StartPosition::Latest)
                        .max_in_flight(window()),
                )
                .await?;
            Box::new(AdapterSub {
                _broker: broker,
                stream,
            })
        }
    })
}

fn nats_addr(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    rest.split(['?', '/']).next().unwrap_or(rest).to_string()
}

async fn amqp_connect(url: &str) -> Result<lapin::Connection> {
    let props = lapin::ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    lapin::Connection::connect(url, props)
        .await
        .context("connecting to RabbitMQ")
}

/// The ids a raw publisher writes where its adapter writes the message id: `<name>-<n>` for
/// its `n`-th message, unique in a run's destination (as JetStream's duplicate window
/// needs) and of the length of the adapters' ids on the benchmark's routes (tens of bytes).
#[derive(Default)]
struct MessageIds {
    /// Ids handed out so far.
    sent: u64,
    /// The last id, formatted here (kept, so no allocation per message).
    buf: String,
}

impl MessageIds {
    /// The next message's id.
    fn next(&mut self, name: &str) -> &str {
        use std::fmt::Write as _;
        self.buf.clear();
        // Writing to a `String` cannot fail.
        let _ = write!(self.buf, "{name}-{}", self.sent);
        self.sent += 1;
        &self.buf
    }
}

/// Now, in milliseconds since the Unix epoch (as the adapters write a message's timestamp).
fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

// ---- JetStream ----

struct JsPub {
    js: async_nats::jetstream::Context,
    subject: String,
    window: VecDeque<async_nats::jetstream::context::PublishAckFuture>,
    /// The `Nats-Msg-Id`s.
    ids: MessageIds,
}

impl RawPub for JsPub {
    fn publish(&mut self, payload: Bytes) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if self.window.len() >= window() {
                if let Some(ack) = self.window.pop_front() {
                    ack.await.map_err(|e| anyhow!("PubAck: {e}"))?;
                }
            }
            // The adapter sends the message id as `Nats-Msg-Id`, which JetStream keeps in its
            // duplicate window (it costs the server ~3 µs per message here): so does this.
            let mut headers = async_nats::HeaderMap::new();
            // Unique in the stream (its duplicate window spans every benchmark subject).
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                self.ids.next(&self.subject),
            );
            let ack = self
                .js
                .publish_with_headers(self.subject.clone(), headers, payload)
                .await
                .map_err(|e| anyhow!("publish: {e}"))?;
            self.window.push_back(ack);
            Ok(())
        })
    }
    fn flush(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            while let Some(ack) = self.window.pop_front() {
                ack.await.map_err(|e| anyhow!("PubAck: {e}"))?;
            }
            Ok(())
        })
    }
}

struct JsSub {
    messages: async_nats::jetstream::consumer::pull::Stream,
}

impl RawSub for JsSub {
    fn next(&mut self) -> BoxFuture<'_, Result<Arrival>> {
        Box::pin(async move {
            let m = self
                .messages
                .next()
                .await
                .ok_or_else(|| anyhow!("JetStream consumer ended"))?
                .map_err(|e| anyhow!("{e}"))?;
            let arrival = Arrival::now(m.message.payload.clone());
            m.ack().await.map_err(|e| anyhow!("ack: {e}"))?;
            Ok(arrival)
        })
    }
}

// ---- Redis streams ----

struct RedisPub {
    con: redis::aio::MultiplexedConnection,
    key: String,
    pipe: redis::Pipeline,
    queued: usize,
    /// The entries' `id`s.
    ids: MessageIds,
}

impl RawPub for RedisPub {
    fn publish(&mut self, payload: Bytes) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            // The entry the adapter writes for a message with an id and a timestamp
            // (`polybridge_redis::mapping::write_fields`), as every message of the benchmark's
            // routes has: Redis stores and indexes each field, so the raw rate is that of the
            // same entries.
            let id = self.ids.next(&self.key);
            self.pipe
                .cmd("XADD")
                .arg(&self.key)
                .arg("*")
                .arg(polybridge::redis::mapping::PAYLOAD)
                .arg(payload.as_ref())
                .arg(polybridge::redis::mapping::ID)
                .arg(id)
                .arg(polybridge::redis::mapping::TIMESTAMP)
                .arg(now_millis());
            self.queued += 1;
            if self.queued >= window() {
                self.flush().await?;
            }
            Ok(())
        })
    }
    fn flush(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if self.queued > 0 {
                let pipe = std::mem::replace(&mut self.pipe, redis::pipe());
                self.queued = 0;
                let _: redis::Value = pipe.query_async(&mut self.con).await?;
            }
            Ok(())
        })
    }
    /// Redis has no confirmation apart from the reply: the `XADD` goes out alone and its
    /// reply is awaited (one round trip, tens of µs here).
    fn send(&mut self, payload: Bytes) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.publish(payload).await?;
            self.flush().await
        })
    }
}

struct RedisSub {
    con: redis::aio::MultiplexedConnection,
    key: String,
    buffer: VecDeque<Arrival>,
}

impl RawSub for RedisSub {
    fn next(&mut self) -> BoxFuture<'_, Result<Arrival>> {
        Box::pin(async move {
            use redis::streams::{StreamReadOptions, StreamReadReply};
            use redis::AsyncCommands;
            while self.buffer.is_empty() {
                let opts = StreamReadOptions::default()
                    .group("raw", "c")
                    .count(window())
                    .block(1000);
                let reply: StreamReadReply =
                    self.con.xread_options(&[&self.key], &[">"], &opts).await?;
                let at = Instant::now();
                let mut ids = Vec::new();
                for key in reply.keys {
                    for entry in key.ids {
                        if let Some(redis::Value::BulkString(p)) = entry.map.get("payload") {
                            self.buffer.push_back(Arrival {
                                payload: Bytes::copy_from_slice(p),
                                at,
                            });
                        }
                        ids.push(entry.id);
                    }
                }
                if !ids.is_empty() {
                    let _: redis::Value = self.con.xack(&self.key, "raw", &ids).await?;
                }
            }
            self.buffer
                .pop_front()
                .ok_or_else(|| anyhow!("empty buffer"))
        })
    }
}

// ---- MQTT ----

fn mqtt_options(url: &str, id: &str) -> Result<rumqttc::MqttOptions> {
    let u: polybridge::BrokerUrl = url.parse()?;
    let host = u.host().unwrap_or("127.0.0.1").to_string();
    let port = u.port().unwrap_or(1883);
    let mut o = rumqttc::MqttOptions::new(id, host, port);
    o.set_inflight(window_u16());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    Ok(o)
}

fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

struct MqttPub {
    client: rumqttc::AsyncClient,
    topic: String,
    sent: u64,
    acked: Arc<AtomicU64>,
    notify: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl MqttPub {
    async fn connect(url: &str, topic: String) -> Result<MqttPub> {
        let (client, mut events) =
            rumqttc::AsyncClient::new(mqtt_options(url, &unique("rawp"))?, window());
        let acked = Arc::new(AtomicU64::new(0));
        let notify = Arc::new(tokio::sync::Notify::new());
        let (a, n) = (acked.clone(), notify.clone());
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                        a.fetch_add(1, Ordering::Release);
                        n.notify_one();
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .context("MQTT CONNACK")??;
        Ok(MqttPub {
            client,
            topic,
            sent: 0,
            acked,
            notify,
            task,
        })
    }
}

impl Drop for MqttPub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawPub for MqttPub {
    fn publish(&mut self, payload: Bytes) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            // rumqttc holds at most `inflight` unacknowledged publishes itself.
            self.client
                .publish_bytes(
                    self.topic.clone(),
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .await?;
            self.sent += 1;
            Ok(())
        })
    }
    fn flush(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            loop {
                let notified = self.notify.notified();
                if self.acked.load(Ordering::Acquire) >= self.sent {
                    return Ok(());
                }
                tokio::time::timeout(Duration::from_secs(30), notified)
                    .await
                    .context("MQTT PUBACKs")?;
            }
        })
    }
}

struct MqttSub {
    _client: rumqttc::AsyncClient,
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    task: tokio::task::JoinHandle<()>,
}

impl MqttSub {
    async fn connect(url: &str, topic: String) -> Result<MqttSub> {
        let (client, mut events) =
            rumqttc::AsyncClient::new(mqtt_options(url, &unique("raws"))?, window());
        client
            .subscribe(topic.clone(), rumqttc::QoS::AtLeastOnce)
            .await?;
        let (tx, rx) = tokio::sync::mpsc::channel(window());
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        if let Some(r) = ready_tx.take() {
                            let _ = r.send(());
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        if tx.send(p.payload).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .context("MQTT SUBACK")??;
        Ok(MqttSub {
            _client: client,
            rx,
            task,
        })
    }
}

impl Drop for MqttSub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawSub for MqttSub {
    fn next(&mut self) -> BoxFuture<'_, Result<Arrival>> {
        Box::pin(async move {
            self.rx
                .recv()
                .await
                .map(Arrival::now)
                .ok_or_else(|| anyhow!("MQTT connection ended"))
        })
    }
}

// ---- RabbitMQ ----

struct AmqpPub {
    _conn: lapin::Connection,
    ch: lapin::Channel,
    queue: String,
    window: VecDeque<lapin::publisher_confirm::PublisherConfirm>,
    /// The message ids.
    ids: MessageIds,
}

impl RawPub for AmqpPub {
    fn publish(&mut self, payload: Bytes) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if self.window.len() >= window() {
                if let Some(c) = self.window.pop_front() {
                    check_confirm(c.await?)?;
                }
            }
            let confirm = self
                .ch
                .basic_publish(
                    "",
                    &self.queue,
                    lapin::options::BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &payload,
                    // The properties the adapter sends for a message with an id and a
                    // timestamp and no headers (`polybridge_amqp::mapping::properties`).
                    lapin::BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_message_id(self.ids.next(&self.queue).into())
                        .with_headers(Default::default())
                        .with_timestamp(now_millis() / 1000),
                )
                .await?;
            self.window.push_back(confirm);
            Ok(())
        })
    }
    fn flush(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            while let Some(c) = self.window.pop_front() {
                check_confirm(c.await?)?;
            }
            Ok(())
        })
    }
}

fn check_confirm(c: lapin::publisher_confirm::Confirmation) -> Result<()> {
    match c {
        lapin::publisher_confirm::Confirmation::Ack(None) => Ok(()),
        other => Err(anyhow!("RabbitMQ did not confirm: {other:?}")),
    }
}

struct AmqpSub {
    _conn: lapin::Connection,
    _ch: lapin::Channel,
    consumer: lapin::Consumer,
}

impl RawSub for AmqpSub {
    fn next(&mut self) -> BoxFuture<'_, Result<Arrival>> {
        Box::pin(async move {
            let mut d = self
                .consumer
                .next()
                .await
                .ok_or_else(|| anyhow!("RabbitMQ consumer ended"))??;
            let arrival = Arrival::now(Bytes::from(std::mem::take(&mut d.data)));
            d.ack(Default::default()).await?;
            Ok(arrival)
        })
    }
}

// ---- Kafka ----

/// The Kafka adapter's settings for `url`: the raw clients are configured as the
/// adapter's producer and consumers are.
fn kafka_config(url: &str) -> Result<polybridge::kafka::KafkaConfig> {
    let url: polybridge::BrokerUrl = url.parse().context("parsing the Kafka URL")?;
    Ok(polybridge::kafka::KafkaConfig::from_url(&url)?)
}

struct KafkaPub {
    producer: rdkafka::producer::FutureProducer,
    topic: String,
    window: FuturesUnordered<rdkafka::producer::DeliveryFuture>,
    /// The records' `pb-id`s.
    ids: MessageIds,
}

impl KafkaPub {
    /// A producer to `topic`, returned once the topic exists (a metadata request, which
    /// auto-creates it, so the first publish does not wait for that) and the producer can
    /// send.
    ///
    /// An idempotent producer sends nothing before it holds a producer id. librdkafka asks
    /// for one when a metadata response arrives while a broker connection is up, else when
    /// a 500 ms timer fires (`rd_kafka_idemp_pid_timer_restart`); a producer created and
    /// asked for metadata at once, as here, often waits for the timer. Timed runs must not
    /// include that wait (a route's producer is connected before its run), so one record is
    /// sent to [`KAFKA_WARMUP_TOPIC`] and its delivery awaited first.
    async fn new(url: &str, topic: String) -> Result<KafkaPub> {
        use rdkafka::producer::Producer as _;
        // The adapter's producer settings, `--url-option`s included.
        let producer: rdkafka::producer::FutureProducer = kafka_config(url)?
            .producer()
            .create()
            .context("creating the Kafka producer")?;
        let (p, t) = (producer.clone(), topic.clone());
        tokio::task::spawn_blocking(move || {
            p.client()
                .fetch_metadata(Some(&t), Duration::from_secs(10))
                .with_context(|| format!("reading the metadata of {t}"))
        })
        .await??;
        let warmup: rdkafka::producer::FutureRecord<'_, [u8], [u8]> =
            rdkafka::producer::FutureRecord::to(KAFKA_WARMUP_TOPIC).payload(&[]);
        let delivery = producer
            .send_result(warmup)
            .map_err(|(e, _)| anyhow!("Kafka produce to {KAFKA_WARMUP_TOPIC} failed: {e}"))?;
        tokio::time::timeout(Duration::from_secs(10), delivery)
            .await
            .map_err(|_| anyhow!("no delivery report from {KAFKA_WARMUP_TOPIC} within 10 s"))
            .and_then(check_delivery)
            .context("the Kafka producer's warm-up record")?;
        Ok(KafkaPub {
            producer,
            topic,
            window: FuturesUnordered::new(),
            ids: MessageIds::default(),
        })
    }
}

fn check_delivery(
    d: Result<
        rdkafka::producer::future_producer::OwnedDeliveryResult,
        futures::channel::oneshot::Canceled,
    >,
) -> Result<()> {
    match d {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(anyhow!("Kafka delivery failed: {e}")),
        Err(_) => Err(anyhow!("Kafka producer dropped a delivery report")),
    }
}

impl RawPub for KafkaPub {
    fn publish(&mut self, payload: Bytes) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if self.window.len() >= window() {
                if let Some(d) = self.window.next().await {
                    check_delivery(d)?;
                }
            }
            // The record the adapter sends for a message without a key, content type or
            // headers: the message id in its `pb-id` header (`polybridge_kafka::mapping`),
            // the timestamp native.
            let id = self.ids.next(&self.topic);
            let headers = rdkafka::message::OwnedHeaders::new_with_capacity(1).insert(
                rdkafka::message::Header {
                    key: polybridge::kafka::mapping::ID,
                    value: Some(id.as_bytes()),
                },
            );
            let record: rdkafka::producer::FutureRecord<'_, [u8], [u8]> =
                rdkafka::producer::FutureRecord::to(&self.topic)
                    .payload(&payload[..])
                    .headers(headers);
            let future = self
                .producer
                .send_result(record)
                .map_err(|(e, _)| anyhow!("Kafka produce failed: {e}"))?;
            self.window.push(future);
            Ok(())
        })
    }
    fn flush(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            while let Some(d) = self.window.next().await {
                check_delivery(d)?;
            }
            Ok(())
        })
    }
}

struct KafkaSub {
    consumer: rdkafka::consumer::StreamConsumer,
    uncommitted: usize,
}

impl KafkaSub {
    /// A consumer in `group` on `topic` (new, unique to the run: it starts at the earliest
    /// offset), returned once it has its partitions.
    async fn subscribe(url: &str, topic: &str, group: &str) -> Result<KafkaSub> {
        use rdkafka::consumer::Consumer as _;
        let sub = KafkaSub::open(url, topic, group).await?;
        let consumer = &sub.consumer;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            // Polling serves the group join; nothing is published to the topic yet.
            match tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await {
                Ok(Ok(_)) => bail!("a message on the new topic {topic} before the test"),
                Ok(Err(e)) => eprintln!("kafka consumer of {topic}: {e}"),
                Err(_) => {}
            }
            if consumer
                .assignment()
                .map(|a| a.count() > 0)
                .unwrap_or(false)
            {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the Kafka consumer got no partitions of {topic} within 60 s");
            }
        }
        Ok(sub)
    }

    /// [`KafkaSub::new`] on a blocking thread (its metadata request blocks).
    async fn open(url: &str, topic: &str, group: &str) -> Result<KafkaSub> {
        let (url, topic, group) = (url.to_owned(), topic.to_owned(), group.to_owned());
        tokio::task::spawn_blocking(move || KafkaSub::new(&url, &topic, &group)).await?
    }

    /// A consumer in `group` on `topic`, subscribed (the topic created if it is not), before
    /// it joined the group: its first `recv` serves the join.
    fn new(url: &str, topic: &str, group: &str) -> Result<KafkaSub> {
        use rdkafka::consumer::Consumer as _;
        // The adapter's consumer settings (offsets stored and committed by the caller, the
        // bounded prefetch, `fetch_wait`), `--url-option`s included; a new group starts at
        // the earliest offset.
        let consumer: rdkafka::consumer::StreamConsumer = kafka_config(url)?
            .consumer(group)
            .create()
            .context("creating the Kafka consumer")?;
        // As the adapter does: a metadata request for the topic, which auto-creates it with
        // the broker's defaults (a subscription alone does not).
        consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .with_context(|| format!("reading the metadata of {topic}"))?;
        consumer.subscribe(&[topic])?;
        Ok(KafkaSub {
            consumer,
            uncommitted: 0,
        })
    }
}

impl RawSub for KafkaSub {
    fn next(&mut self) -> BoxFuture<'_, Result<Arrival>> {
        Box::pin(async move {
            use rdkafka::consumer::{CommitMode, Consumer as _};
            use rdkafka::Message as _;
            let m = self.consumer.recv().await?;
            let arrival = Arrival::now(Bytes::copy_from_slice(m.payload().unwrap_or_default()));
            self.consumer.store_offset_from_message(&m)?;
            drop(m);
            self.uncommitted += 1;
            if self.uncommitted >= window() {
                self.uncommitted = 0;
                self.consumer.commit_consumer_state(CommitMode::Async)?;
            }
            Ok(arrival)
        })
    }
}

// ---- adapters used as the raw client (STOMP, memory) ----

struct AdapterPub {
    broker: Arc<dyn Broker>,
    destination: String,
    window: FuturesUnordered<BoxFuture<'static, Result<()>>>,
}

impl AdapterPub {
    /// Waits for the oldest outstanding publishes while the window is full.
    async fn make_room(&mut self) -> Result<()> {
        while self.window.len() >= window() {
            if let Some(r) = self.window.next().await {
                r?;
            }
        }
        Ok(())
    }

    /// The adapter's publish of `payload`, confirmed when it completes.
    fn confirmed_publish(&self, payload: Bytes) -> impl Future<Output = Result<()>> + 'static {
        let broker = self.broker.clone();
        let destination = self.destination.clone();
        async move {
            broker
                .publish(
                    &destination,
                    &Message::new(payload),
                    Deadline::after(Duration::from_secs(30)),
                )
                .await?;
            Ok(())
        }
    }
}

impl RawPub for AdapterPub {
    fn publish(&mut self, payload: Bytes) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.make_room().await?;
            let publish = self.confirmed_publish(payload);
            self.window.push(Box::pin(publish));
            Ok(())
        })
    }
    fn flush(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            while let Some(r) = self.window.next().await {
                r?;
            }
            Ok(())
        })
    }
    /// The window's futures run only while the window is polled: a publish pushed by
    /// `publish` would wait for the next call. So each one runs as its own task here.
    fn send(&mut self, payload: Bytes) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.make_room().await?;
            let task = tokio::spawn(self.confirmed_publish(payload));
            self.window.push(Box::pin(async move {
                task.await.map_err(|e| anyhow!("publish task: {e}"))?
            }));
            Ok(())
        })
    }
}

struct AdapterSub {
    _broker: Arc<dyn Broker>,
    stream: DeliveryStream,
}

impl RawSub for AdapterSub {
    fn next(&mut self) -> BoxFuture<'_, Result<Arrival>> {
        Box::pin(async move {
            let d = self
                .stream
                .next()
                .await
                .ok_or_else(|| anyhow!("subscription ended"))??;
            let arrival = Arrival::now(d.message.payload.clone());
            d.ack()?;
            Ok(arrival)
        })
    }
}
