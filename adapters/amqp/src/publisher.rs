//! Publishing: `basic.publish` with `mandatory` on a confirmed channel; resolves on the
//! broker's `basic.ack`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use lapin::options::BasicPublishOptions;
use lapin::publisher_confirm::Confirmation;
use lapin::BasicProperties;
use polybridge_core::{Deadline, Error, Message, Publisher, Receipt, Result};

use crate::connection::{lapin_error, Link};
use crate::mapping::{self, Route};
use crate::{AmqpBroker, BROKER};

/// Publishes `payload` with `properties` to `route` and waits for the confirm.
pub(crate) async fn publish_confirmed(
    link: &Link,
    destination: &str,
    route: &Route,
    payload: &[u8],
    properties: BasicProperties,
) -> Result<()> {
    let channel = link.publish_channel().await?;
    let confirm = channel
        .basic_publish(
            &route.exchange,
            &route.routing_key,
            BasicPublishOptions {
                mandatory: true,
                immediate: false,
            },
            payload,
            properties,
        )
        .await
        .map_err(|e| lapin_error(e, destination))?;
    match confirm.await.map_err(|e| lapin_error(e, destination))? {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(returned)) => Err(Error::permanent(
            BROKER,
            destination,
            format!(
                "unroutable: exchange {:?} has no queue bound for routing key {:?} (the broker returned the message: {} {})",
                route.exchange, route.routing_key, returned.reply_code, returned.reply_text
            ),
        )),
        Confirmation::Nack(_) => Err(Error::transient(
            BROKER,
            destination,
            format!(
                "the broker refused (nacked) the message for exchange {:?}, routing key {:?}",
                route.exchange, route.routing_key
            ),
        )),
    }
}

/// Counts a publish in progress so `close` can wait for it.
struct InFlight<'a>(&'a AmqpBroker);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.publishing.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[async_trait]
impl Publisher for AmqpBroker {
    async fn publish(
        &self,
        destination: &str,
        message: &Message,
        deadline: Deadline,
    ) -> Result<Receipt> {
        self.publishing.fetch_add(1, Ordering::AcqRel);
        let _in_flight = InFlight(self);
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::closed(BROKER, "the publisher"));
        }
        let link = self.link.clone();
        let route = mapping::route(destination, &link.config.exchange)?;
        let limit = link.config.max_payload;
        if message.payload.len() > limit {
            return Err(Error::PayloadTooLarge {
                broker: BROKER,
                destination: destination.to_owned(),
                size: message.payload.len(),
                limit,
            });
        }
        let properties = mapping::properties(message, destination)?;
        let cap = Deadline::after(link.config.confirm_timeout);
        let deadline = if cap.instant() < deadline.instant() {
            cap
        } else {
            deadline
        };
        deadline
            .run(
                BROKER,
                "publish",
                destination,
                publish_confirmed(&link, destination, &route, &message.payload, properties),
            )
            .await?;
        Ok(Receipt::default())
    }

    async fn close(&self, deadline: Deadline) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        let idle = self.idle.clone();
        let publishing = &self.publishing;
        deadline
            .run(BROKER, "close", "the publisher", async move {
                loop {
                    let notified = idle.notified();
                    if publishing.load(Ordering::Acquire) == 0 {
                        return Ok(());
                    }
                    notified.await;
                }
            })
            .await
    }
}

/// Keeps the type used in the `idle` field nameable.
pub(crate) type Idle = Arc<tokio::sync::Notify>;
