//! Publishing through the connection's session: `publish` resolves on PUBACK (QoS 1) or
//! PUBCOMP (QoS 2); QoS 0 resolves once the packet is written and is not confirmed.

use std::sync::atomic::Ordering;

use async_trait::async_trait;
use polybridge_core::{Deadline, Error, Message, Publisher, Receipt, Result};
use tokio::sync::oneshot;

use crate::session::Command;
use crate::{mapping, MqttBroker, BROKER};

/// The longest topic MQTT can carry.
pub const MAX_TOPIC_BYTES: usize = 65_535;

#[async_trait]
impl Publisher for MqttBroker {
    async fn publish(
        &self,
        destination: &str,
        message: &Message,
        deadline: Deadline,
    ) -> Result<Receipt> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::closed(BROKER, "the publisher"));
        }
        check_topic(destination)?;
        let size = message.payload.len();
        if size > self.config.max_payload {
            return Err(Error::PayloadTooLarge {
                broker: BROKER,
                destination: destination.to_owned(),
                size,
                limit: self.config.max_payload,
            });
        }
        let (payload, properties) = mapping::to_mqtt(&self.config, message);
        // Values with control characters are escaped by the mapping; names cannot be.
        if let Some(name) = properties
            .user
            .iter()
            .map(|(name, _)| name)
            .chain(properties.content_type.iter())
            .chain(properties.response_topic.iter())
            .find(|s| mapping::has_control(s))
        {
            return Err(Error::permanent(
                BROKER,
                destination,
                format!("{name:?} contains control characters, which MQTT 5 strings cannot carry"),
            ));
        }
        deadline
            .run(BROKER, "publish", destination, async {
                // Bounds the publishes waiting for confirmation.
                let _permit = self
                    .publish_permits
                    .acquire()
                    .await
                    .map_err(|_| Error::closed(BROKER, "the publisher"))?;
                let (reply, confirmed) = oneshot::channel();
                self.publisher
                    .send(Command::Publish {
                        topic: destination.to_owned(),
                        payload,
                        properties,
                        qos: self.config.qos,
                        retain: self.config.retain,
                        reply,
                    })
                    .await
                    .map_err(|_| Error::closed(BROKER, "the publisher's connection"))?;
                confirmed
                    .await
                    .map_err(|_| Error::closed(BROKER, "the publisher's connection"))??;
                Ok(Receipt::default())
            })
            .await
    }

    async fn close(&self, deadline: Deadline) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        // Wait for the publishes in flight: every permit back means none is pending.
        let all = u32::try_from(crate::MAX_PENDING_PUBLISHES).unwrap_or(u32::MAX);
        let drained = deadline
            .run(BROKER, "close", "the publisher", async {
                self.publish_permits
                    .acquire_many(all)
                    .await
                    .map(|p| p.forget())
                    .map_err(|_| Error::closed(BROKER, "the publisher"))
            })
            .await;
        let (done, stopped) = oneshot::channel();
        if self.publisher.send(Command::Close { done }).await.is_ok() {
            let _ = stopped.await;
        }
        drained
    }
}

/// A publish topic: not empty, no wildcards, no NUL, at most 65535 bytes.
pub(crate) fn check_topic(topic: &str) -> Result<()> {
    let bad = |why: String| {
        Err(Error::permanent(
            BROKER,
            topic.chars().take(200).collect::<String>(),
            format!("invalid topic: {why}"),
        ))
    };
    if topic.is_empty() {
        return bad("it is empty".into());
    }
    if topic.len() > MAX_TOPIC_BYTES {
        return bad(format!(
            "{} bytes, MQTT allows {MAX_TOPIC_BYTES}",
            topic.len()
        ));
    }
    if topic.contains(['+', '#']) {
        return bad("wildcards ('+', '#') cannot be published to".into());
    }
    if topic.contains('\0') {
        return bad("it contains NUL".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_checked_before_sending() {
        assert!(check_topic("sensors/1/temp").is_ok());
        assert!(check_topic("a//b").is_ok(), "empty levels are valid MQTT");
        for (t, why) in [
            (String::new(), "empty"),
            ("a/+/b".to_owned(), "wildcards"),
            ("a/#".to_owned(), "wildcards"),
            ("a\0b".to_owned(), "NUL"),
            ("x".repeat(70_000), "65535"),
        ] {
            let e = check_topic(&t)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(why), "{e}");
        }
    }
}
