//! Deliveries and how they are settled.
//!
//! A [`Delivery`] is a message handed to a subscriber together with an [`AckHandle`]. The
//! handle is the only way to settle it, and settling consumes it, so acking twice does not
//! compile. A handle dropped without being settled nacks the delivery (the broker redelivers
//! it) and logs why: a message is never acknowledged by accident.
//!
//! Settling is synchronous and cheap: an adapter's [`Acknowledger`] records the outcome (or
//! queues it for its connection task) and returns. What reaches the broker later is the
//! adapter's business; if it never does, the broker redelivers (at-least-once).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;
use crate::message::Message;

/// How a delivery is settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// Processed: the broker may forget it.
    Ack,
    /// Not processed: deliver it again, now or after `delay` (native where the broker can,
    /// else emulated as the adapter documents).
    Nack {
        /// How long to wait before redelivering.
        delay: Option<Duration>,
    },
    /// Never processable: move it to the dead-letter destination with this reason.
    Reject {
        /// Why, written into the dead-lettered message's headers.
        reason: String,
    },
}

/// The adapter side of settling: implemented once per subscription (or connection) and
/// shared by every delivery through an `Arc`, so settling allocates nothing per message.
pub trait Acknowledger: Send + Sync + 'static {
    /// Settles the delivery identified by `token` (a number the adapter chose when it made
    /// the delivery). Returns [`crate::Error::Closed`] when the subscription is gone: its
    /// unacknowledged deliveries have already been returned to the broker.
    fn settle(&self, token: u64, settlement: Settlement) -> Result<()>;
}

/// Settles one delivery, once. Dropping it unsettled nacks the delivery.
pub struct AckHandle {
    acker: Option<Arc<dyn Acknowledger>>,
    token: u64,
}

impl AckHandle {
    /// A handle for the delivery `token` of `acker`.
    pub fn new(acker: Arc<dyn Acknowledger>, token: u64) -> Self {
        AckHandle {
            acker: Some(acker),
            token,
        }
    }

    /// Acknowledges: the message was processed.
    pub fn ack(self) -> Result<()> {
        self.settle(Settlement::Ack)
    }

    /// Asks for redelivery now.
    pub fn nack(self) -> Result<()> {
        self.settle(Settlement::Nack { delay: None })
    }

    /// Asks for redelivery after `delay`.
    pub fn nack_after(self, delay: Duration) -> Result<()> {
        self.settle(Settlement::Nack { delay: Some(delay) })
    }

    /// Dead-letters the message with `reason`.
    pub fn reject(self, reason: impl Into<String>) -> Result<()> {
        self.settle(Settlement::Reject {
            reason: reason.into(),
        })
    }

    /// Settles with an explicit [`Settlement`].
    pub fn settle(mut self, settlement: Settlement) -> Result<()> {
        match self.acker.take() {
            Some(acker) => acker.settle(self.token, settlement),
            None => Ok(()),
        }
    }
}

impl Drop for AckHandle {
    fn drop(&mut self) {
        if let Some(acker) = self.acker.take() {
            match acker.settle(self.token, Settlement::Nack { delay: None }) {
                Ok(()) => tracing::warn!(
                    token = self.token,
                    "a delivery was dropped without being acked, nacked or rejected: nacked it so the broker redelivers it"
                ),
                Err(e) => tracing::debug!(
                    token = self.token,
                    error = %e,
                    "an unsettled delivery was dropped after its subscription closed; the broker redelivers it"
                ),
            }
        }
    }
}

impl fmt::Debug for AckHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AckHandle")
            .field("token", &self.token)
            .field("settled", &self.acker.is_none())
            .finish()
    }
}

/// Where a delivery sits in the broker, for logs, metrics and ordering lanes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Position {
    /// Kafka partition and offset.
    Offset {
        /// Partition.
        partition: i32,
        /// Offset within the partition.
        offset: i64,
    },
    /// A stream sequence: JetStream stream sequence, memory broker offset.
    Sequence(u64),
    /// A Redis stream entry id such as `1700000000000-0`.
    StreamId(String),
    /// An AMQP delivery tag or STOMP `ack` id.
    Tag(String),
}

/// What the broker says about one delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryInfo {
    /// The concrete topic, subject, queue or stream the message came from.
    pub topic: String,
    /// 1 for the first delivery, 2 for the first redelivery, …; 0 when the broker only says
    /// "redelivered" without a count.
    pub attempt: u32,
    /// Whether the broker delivered this message before.
    pub redelivered: bool,
    /// The broker's position of the message, where it has one.
    pub position: Option<Position>,
    /// The partition (or other ordering lane) the message belongs to, where the broker has
    /// one; the bridge keeps order per lane.
    pub partition: Option<i32>,
}

/// A message delivered to a subscriber, to be settled through its `handle`.
///
/// The fields are public so a consumer can move the message out and keep the handle:
/// `let Delivery { message, info, handle } = delivery;`.
#[derive(Debug)]
pub struct Delivery {
    /// The message.
    pub message: Message,
    /// Delivery metadata.
    pub info: DeliveryInfo,
    /// Settles this delivery.
    pub handle: AckHandle,
}

impl Delivery {
    /// Acknowledges the delivery.
    pub fn ack(self) -> Result<()> {
        self.handle.ack()
    }

    /// Asks for redelivery now.
    pub fn nack(self) -> Result<()> {
        self.handle.nack()
    }

    /// Asks for redelivery after `delay`.
    pub fn nack_after(self, delay: Duration) -> Result<()> {
        self.handle.nack_after(delay)
    }

    /// Dead-letters the message with `reason`.
    pub fn reject(self, reason: impl Into<String>) -> Result<()> {
        self.handle.reject(reason)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(u64, Settlement)>>);

    impl Acknowledger for Recorder {
        fn settle(&self, token: u64, settlement: Settlement) -> Result<()> {
            self.0.lock().unwrap().push((token, settlement));
            Ok(())
        }
    }

    #[test]
    fn settling_consumes_the_handle_and_dropping_nacks() {
        let rec = Arc::new(Recorder::default());
        AckHandle::new(rec.clone(), 1).ack().unwrap();
        AckHandle::new(rec.clone(), 2)
            .nack_after(Duration::from_secs(1))
            .unwrap();
        AckHandle::new(rec.clone(), 3).reject("bad").unwrap();
        drop(AckHandle::new(rec.clone(), 4));
        let got = rec.0.lock().unwrap().clone();
        assert_eq!(
            got,
            vec![
                (1, Settlement::Ack),
                (
                    2,
                    Settlement::Nack {
                        delay: Some(Duration::from_secs(1))
                    }
                ),
                (
                    3,
                    Settlement::Reject {
                        reason: "bad".into()
                    }
                ),
                (4, Settlement::Nack { delay: None }),
            ]
        );
    }
}
