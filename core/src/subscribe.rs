//! Subscribing: a [`Subscription`] in, a bounded stream of [`Delivery`] out.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use async_trait::async_trait;
use futures::Stream;
use tokio::sync::{mpsc, oneshot};

use crate::delivery::Delivery;
use crate::error::Result;
use crate::topic::TopicPattern;

/// Where a new consumer group starts reading. A group that already has a position (a Kafka
/// committed offset, a JetStream durable, a Redis stream group) resumes from it and ignores
/// this.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StartPosition {
    /// Only messages published after subscribing.
    #[default]
    Latest,
    /// Everything the broker still holds.
    Earliest,
    /// Messages published at or after this time.
    Time(SystemTime),
    /// A broker-specific position: an offset, a stream id, a sequence number.
    Position(String),
}

/// Default bound on unsettled deliveries per subscription.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;

/// What to subscribe to and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    /// Topics to receive, with wildcards; converted to the broker's syntax (an error if the
    /// broker cannot express it exactly).
    pub pattern: TopicPattern,
    /// Consumer group: members of one group share the messages, each group gets all of
    /// them. `None` means a private subscription that sees every message.
    pub group: Option<String>,
    /// Where a new group starts.
    pub start: StartPosition,
    /// At most this many deliveries are handed out and not yet settled. The broker's own
    /// prefetch is set from it where it has one.
    pub max_in_flight: usize,
    /// Where `reject` sends messages; `None` means the adapter's documented default.
    pub dead_letter: Option<String>,
    /// Adapter-specific options, documented by each adapter; unknown ones are an error.
    pub options: BTreeMap<String, String>,
}

impl Subscription {
    /// A private subscription to `pattern` from the latest position, with the default
    /// in-flight bound.
    pub fn new(pattern: TopicPattern) -> Self {
        Subscription {
            pattern,
            group: None,
            start: StartPosition::Latest,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            dead_letter: None,
            options: BTreeMap::new(),
        }
    }

    /// Joins consumer group `group`.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Sets the start position of a new group.
    pub fn start(mut self, start: StartPosition) -> Self {
        self.start = start;
        self
    }

    /// Bounds unsettled deliveries (at least 1).
    pub fn max_in_flight(mut self, max_in_flight: usize) -> Self {
        self.max_in_flight = max_in_flight.max(1);
        self
    }

    /// Sets where rejected messages go.
    pub fn dead_letter(mut self, destination: impl Into<String>) -> Self {
        self.dead_letter = Some(destination.into());
        self
    }

    /// Sets an adapter-specific option.
    pub fn option(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.insert(name.into(), value.into());
        self
    }
}

/// Subscribes to topics.
#[async_trait]
pub trait Subscriber: Send + Sync {
    /// Starts a subscription. Returns once the broker has registered it (messages published
    /// after this returns are received, for brokers that do not replay).
    async fn subscribe(&self, subscription: Subscription) -> Result<DeliveryStream>;
}

/// The deliveries of one subscription.
///
/// Bounded: the adapter hands out at most `max_in_flight` unsettled deliveries. An `Err` item
/// reports a failure the adapter could not recover from; the stream ends after it.
/// [`DeliveryStream::close`] (or dropping the stream) cancels the subscription: the broker
/// takes back every delivery not yet acknowledged and redelivers it.
pub struct DeliveryStream {
    deliveries: mpsc::Receiver<Result<Delivery>>,
    close: Option<oneshot::Sender<()>>,
    closed: Option<oneshot::Receiver<()>>,
}

impl DeliveryStream {
    /// A stream reading `deliveries`. The adapter's subscription task watches `close`
    /// (resolved or dropped when the consumer closes the stream) and, once it has returned
    /// unsettled deliveries and released the subscription, drops `closed_tx` (the sender
    /// paired with `closed`), which [`DeliveryStream::close`] awaits.
    pub fn new(
        deliveries: mpsc::Receiver<Result<Delivery>>,
        close: oneshot::Sender<()>,
        closed: oneshot::Receiver<()>,
    ) -> Self {
        DeliveryStream {
            deliveries,
            close: Some(close),
            closed: Some(closed),
        }
    }

    /// The next delivery, or `None` once the subscription has ended.
    pub async fn next(&mut self) -> Option<Result<Delivery>> {
        self.deliveries.recv().await
    }

    /// Cancels the subscription and waits until the adapter has released it.
    pub async fn close(mut self) {
        if let Some(close) = self.close.take() {
            let _ = close.send(());
        }
        self.deliveries.close();
        if let Some(closed) = self.closed.take() {
            let _ = closed.await;
        }
    }
}

impl Stream for DeliveryStream {
    type Item = Result<Delivery>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.deliveries.poll_recv(cx)
    }
}

impl Drop for DeliveryStream {
    fn drop(&mut self) {
        if let Some(close) = self.close.take() {
            let _ = close.send(());
        }
    }
}

impl std::fmt::Debug for DeliveryStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryStream").finish_non_exhaustive()
    }
}
