//! What an adapter can promise. The bridge validates routes against these before it starts,
//! and the conformance suite runs only the tests an adapter's capabilities allow.

/// How often a published message reaches a subscriber when things fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeliveryGuarantee {
    /// Lost if no subscriber is connected or a connection breaks (core NATS, Redis pub/sub,
    /// MQTT QoS 0).
    AtMostOnce,
    /// Redelivered until acknowledged; duplicates possible.
    AtLeastOnce,
}

/// Which order the broker keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Ordering {
    /// No order promised.
    None,
    /// Messages with the same key arrive in publish order (Kafka partitions).
    PerKey,
    /// Messages on the same topic, queue or stream arrive in publish order.
    PerTopic,
}

/// What kind of header values travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum HeaderSupport {
    /// No headers on the wire (MQTT 3.1.1, Redis pub/sub): routes need an envelope.
    None,
    /// Text values only; binary values are carried with a documented encoding.
    Text,
    /// Text and binary values travel as they are.
    Binary,
}

/// Which wildcards subscriptions accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wildcards {
    /// One level (`+`, `*`).
    pub single_level: bool,
    /// Several levels at the end (`#`, `>`).
    pub multi_level: bool,
}

/// What an adapter (in its configured mode) can do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Delivery guarantee of a subscription.
    pub delivery: DeliveryGuarantee,
    /// Whether `publish` resolves only after the broker confirmed the message (as opposed to
    /// after it was written to the socket or flushed).
    pub confirmed_publish: bool,
    /// Ordering kept by the broker.
    pub ordering: Ordering,
    /// Whether messages survive a broker restart.
    pub persistence: bool,
    /// Whether a new subscriber can read messages published before it subscribed.
    pub replay: bool,
    /// Whether members of a consumer group share the messages.
    pub consumer_groups: bool,
    /// Header support.
    pub headers: HeaderSupport,
    /// Whether the message key travels (Kafka key, AMQP routing key, …); MQTT and Redis
    /// pub/sub have none.
    pub keys: bool,
    /// Whether `nack` with a delay is native (otherwise it is emulated and documented).
    pub native_delay: bool,
    /// Whether `reject` uses a native dead-letter mechanism.
    pub native_dead_letter: bool,
    /// Largest payload accepted, in bytes, if known.
    pub max_payload: Option<usize>,
    /// Wildcards in subscriptions.
    pub wildcards: Wildcards,
    /// Whether `reply_to` and `correlation_id` travel so request/reply works.
    pub request_reply: bool,
    /// Whether a broker restart is survived: the client reconnects and resubscribes by itself.
    pub reconnect: bool,
    /// Whether [`crate::Publisher::publish_batch`] pipelines the batch (every message sent,
    /// then the confirmations awaited together: one Redis pipeline, one NATS flush), so a
    /// caller that has several messages ready saves work by batching them.
    pub batched_publish: bool,
}

impl Capabilities {
    /// Whether this adapter's subscriptions redeliver unacknowledged messages.
    pub fn redelivers(&self) -> bool {
        self.delivery == DeliveryGuarantee::AtLeastOnce
    }
}
