//! Publishing: one idempotent `FutureProducer` per connection; `publish` resolves on the
//! delivery report with the partition and offset.

use std::sync::atomic::Ordering;

use polybridge_core::{Deadline, Error, Message, Position, Receipt, Result};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use crate::{mapping, KafkaBroker, BROKER};

/// Checks a destination is a Kafka topic name.
pub(crate) fn check_topic(destination: &str) -> Result<()> {
    let ok = !destination.is_empty()
        && destination != "."
        && destination != ".."
        && destination.len() <= 249
        && destination
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::permanent(
            BROKER,
            destination,
            "not a Kafka topic name (1 to 249 letters, digits, '.', '_' or '-'; not '.' or '..')",
        ))
    }
}

/// Sends `message` to `destination` (optionally to `partition`) and waits for its delivery
/// report until `deadline`.
pub(crate) async fn produce(
    producer: &FutureProducer,
    destination: &str,
    message: &Message,
    partition: Option<i32>,
    max_payload: usize,
    deadline: Deadline,
) -> Result<Receipt> {
    check_topic(destination)?;
    if message.payload.len() > max_payload {
        return Err(Error::PayloadTooLarge {
            broker: BROKER,
            destination: destination.to_owned(),
            size: message.payload.len(),
            limit: max_payload,
        });
    }
    let headers = mapping::to_headers(message);
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(destination)
        .payload(&message.payload[..])
        .headers(headers);
    if let Some(key) = &message.key {
        record = record.key(&key[..]);
    }
    if let Some(ts) = mapping::timestamp_millis(message) {
        record = record.timestamp(ts);
    }
    if let Some(p) = partition {
        record = record.partition(p);
    }
    let send = async {
        match producer
            .send(record, Timeout::After(deadline.remaining()))
            .await
        {
            Ok(delivery) => Ok(Receipt {
                position: Some(Position::Offset {
                    partition: delivery.partition,
                    offset: delivery.offset,
                }),
                duplicate: false,
            }),
            Err((e, _)) => Err(produce_error(destination, message, max_payload, e)),
        }
    };
    deadline.run(BROKER, "publish", destination, send).await
}

/// A produce failure as a polybridge error: size and unknown-topic failures are permanent,
/// everything about brokers, queues and time is transient.
pub(crate) fn produce_error(
    destination: &str,
    message: &Message,
    max_payload: usize,
    e: KafkaError,
) -> Error {
    let code = e.rdkafka_error_code();
    match code {
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => Error::PayloadTooLarge {
            broker: BROKER,
            destination: destination.to_owned(),
            size: message.payload.len(),
            limit: max_payload,
        },
        Some(
            RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::UnknownPartition
            | RDKafkaErrorCode::InvalidTopic
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::Fatal,
        ) => Error::Permanent {
            broker: BROKER,
            destination: destination.to_owned(),
            reason: match code {
                Some(
                    RDKafkaErrorCode::UnknownTopic | RDKafkaErrorCode::UnknownTopicOrPartition,
                ) => {
                    format!("the topic does not exist and the broker did not create it: {e}")
                }
                _ => format!("the broker refused the message: {e}"),
            },
            source: Some(Box::new(e)),
        },
        _ => Error::Transient {
            broker: BROKER,
            destination: destination.to_owned(),
            reason: format!("publish failed: {e}"),
            source: Some(Box::new(e)),
        },
    }
}

impl KafkaBroker {
    pub(crate) async fn publish_one(
        &self,
        destination: &str,
        message: &Message,
        deadline: Deadline,
    ) -> Result<Receipt> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::closed(BROKER, "the publisher"));
        }
        produce(
            &self.producer,
            destination,
            message,
            self.config.partition,
            self.config.max_payload(),
            deadline,
        )
        .await
    }

    pub(crate) async fn close_publisher(&self, deadline: Deadline) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        let producer = self.producer.clone();
        let timeout = deadline.remaining();
        let flushed = tokio::task::spawn_blocking(move || producer.flush(Timeout::After(timeout)))
            .await
            .map_err(|e| Error::transient(BROKER, "producer", format!("flush task: {e}")))?;
        flushed.map_err(|e| match e.rdkafka_error_code() {
            Some(RDKafkaErrorCode::OperationTimedOut) => Error::Timeout {
                broker: BROKER,
                operation: "close (flush)",
                destination: "producer".into(),
                after: timeout,
            },
            _ => Error::Transient {
                broker: BROKER,
                destination: "producer".into(),
                reason: format!("flush on close: {e}"),
                source: Some(Box::new(e)),
            },
        })
    }
}
