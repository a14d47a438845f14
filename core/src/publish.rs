//! Publishing: `publish` resolves only once the broker has confirmed the message.

use async_trait::async_trait;

use crate::deadline::Deadline;
use crate::delivery::Position;
use crate::error::Result;
use crate::message::Message;

/// What the broker said when it confirmed a message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Receipt {
    /// Where the message was stored, if the broker says (Kafka partition and offset,
    /// JetStream sequence, Redis stream id).
    pub position: Option<Position>,
    /// The broker recognised the message id as a duplicate and did not store it again
    /// (JetStream's duplicate window).
    pub duplicate: bool,
}

/// One message of a batch and where it goes (borrowed: the caller keeps both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outgoing<'a> {
    /// Destination in the broker's syntax (see each adapter's docs).
    pub destination: &'a str,
    /// The message.
    pub message: &'a Message,
}

/// Publishes messages.
#[async_trait]
pub trait Publisher: Send + Sync {
    /// Publishes `message` to `destination` and resolves once the broker confirmed it
    /// (publisher confirm, delivery report, PubAck, PUBACK/PUBCOMP, RECEIPT, server reply).
    /// An adapter that cannot confirm says so in [`crate::Capabilities::confirmed_publish`]
    /// and documents what resolving means instead.
    ///
    /// Past `deadline` the call fails with [`crate::Error::Timeout`]; the message may or may
    /// not have been stored.
    ///
    /// The message is borrowed: adapters encode it into their client's format (a copy the
    /// client needs anyway), so a caller that keeps the message for a retry or a dead-letter
    /// envelope does not have to clone it per attempt.
    async fn publish(
        &self,
        destination: &str,
        message: &Message,
        deadline: Deadline,
    ) -> Result<Receipt>;

    /// Publishes a batch with one result per message, in order. Adapters that pipeline the
    /// batch (all messages sent, then all confirmations awaited) say so in
    /// [`crate::Capabilities::batched_publish`]; the default publishes them concurrently
    /// through [`Publisher::publish`].
    async fn publish_batch(
        &self,
        batch: &[Outgoing<'_>],
        deadline: Deadline,
    ) -> Vec<Result<Receipt>> {
        let publishes = batch
            .iter()
            .map(|o| async move { self.publish(o.destination, o.message, deadline).await });
        futures::future::join_all(publishes).await
    }

    /// Waits until every publish in progress is confirmed, then refuses new ones with
    /// [`crate::Error::Closed`].
    async fn close(&self, deadline: Deadline) -> Result<()>;
}
