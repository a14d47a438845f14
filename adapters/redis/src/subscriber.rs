//! Subscribing: dispatches to the mode's consumer.

use async_trait::async_trait;
use polybridge_core::{DeliveryStream, Error, Result, Subscriber, Subscription};

use crate::config::Mode;
use crate::{lists, pubsub, streams, RedisBroker, BROKER};

#[async_trait]
impl Subscriber for RedisBroker {
    async fn subscribe(&self, subscription: Subscription) -> Result<DeliveryStream> {
        match self.config.mode {
            Mode::PubSub => pubsub::subscribe(self, subscription).await,
            Mode::Streams => {
                streams::subscribe(self, literal_key(&subscription, "streams")?, subscription).await
            }
            Mode::Lists => {
                lists::subscribe(self, literal_key(&subscription, "lists")?, subscription).await
            }
        }
    }
}

/// Streams and lists are read by key: a subscription names exactly one.
fn literal_key(subscription: &Subscription, mode: &str) -> Result<String> {
    if !subscription.pattern.is_literal() {
        return Err(Error::unsupported(
            BROKER,
            format!(
                "the wildcard subscription {} in mode={mode}: subscribe to each key (wildcards work with mode=pubsub)",
                subscription.pattern
            ),
        ));
    }
    Ok(subscription.pattern.to_string())
}
