//! Pub/sub subscriptions: `SUBSCRIBE` or `PSUBSCRIBE` on a connection of their own,
//! re-established with backoff when it drops. At most once: settling does nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use polybridge_core::{
    AckHandle, Acknowledger, Delivery, DeliveryInfo, DeliveryStream, Error, Result, Settlement,
    Subscription,
};
use tokio::sync::{mpsc, oneshot};

use crate::{command_error, mapping, RedisBroker, BROKER};

/// Pub/sub cannot redeliver: settling only checks the subscription is open.
struct PubSubAcker {
    closed: Arc<AtomicBool>,
    channel: String,
}

impl Acknowledger for PubSubAcker {
    fn settle(&self, _token: u64, _settlement: Settlement) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::closed(
                BROKER,
                format!("the subscription to {}", self.channel),
            ));
        }
        Ok(())
    }
}

/// What to subscribe to: a channel or a glob.
#[derive(Clone)]
enum Target {
    Channel(String),
    Pattern(String),
}

impl Target {
    fn name(&self) -> &str {
        match self {
            Target::Channel(c) | Target::Pattern(c) => c,
        }
    }
}

async fn subscribed(client: &redis::Client, target: &Target) -> Result<redis::aio::PubSub> {
    let mut pubsub = client
        .get_async_pubsub()
        .await
        .map_err(|e| command_error(e, target.name(), "connect for pub/sub"))?;
    match target {
        Target::Channel(c) => pubsub.subscribe(c).await,
        Target::Pattern(p) => pubsub.psubscribe(p).await,
    }
    .map_err(|e| command_error(e, target.name(), "subscribe"))?;
    Ok(pubsub)
}

pub(crate) async fn subscribe(
    broker: &RedisBroker,
    subscription: Subscription,
) -> Result<DeliveryStream> {
    if subscription.group.is_some() {
        return Err(Error::unsupported(
            BROKER,
            "consumer groups in mode=pubsub (every subscriber gets every message); use mode=streams for groups",
        ));
    }
    let target = if subscription.pattern.is_literal() {
        Target::Channel(subscription.pattern.to_string())
    } else {
        Target::Pattern(subscription.pattern.to_redis_glob()?)
    };
    // Subscribed before `subscribe` returns: what is published afterwards arrives.
    let first = subscribed(&broker.client, &target).await?;
    let client = broker.client.clone();
    let (deliveries_tx, deliveries_rx) = mpsc::channel(subscription.max_in_flight.max(1));
    let (close_tx, mut close_rx) = oneshot::channel::<()>();
    let (closed_tx, closed_rx) = oneshot::channel();
    let closed = Arc::new(AtomicBool::new(false));
    let acker: Arc<dyn Acknowledger> = Arc::new(PubSubAcker {
        closed: closed.clone(),
        channel: target.name().to_owned(),
    });
    tokio::spawn(async move {
        let mut token = 0u64;
        let mut connection = Some(first);
        let mut backoff = Duration::from_millis(100);
        'outer: loop {
            let pubsub = match connection.take() {
                Some(p) => p,
                None => {
                    tokio::select! {
                        _ = &mut close_rx => break 'outer,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    match subscribed(&client, &target).await {
                        Ok(p) => {
                            tracing::info!(
                                broker = BROKER,
                                channel = target.name(),
                                "resubscribed"
                            );
                            backoff = Duration::from_millis(100);
                            p
                        }
                        Err(e) => {
                            tracing::warn!(broker = BROKER, channel = target.name(), error = %e, retry_in = ?backoff, "cannot resubscribe");
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                            continue;
                        }
                    }
                }
            };
            let mut messages = pubsub.into_on_message();
            loop {
                let message = tokio::select! {
                    biased;
                    _ = &mut close_rx => break 'outer,
                    m = messages.next() => m,
                };
                let Some(message) = message else {
                    tracing::warn!(
                        broker = BROKER,
                        channel = target.name(),
                        "pub/sub connection lost; messages published until it is back are gone"
                    );
                    continue 'outer;
                };
                let (body, _) =
                    mapping::from_element(Bytes::copy_from_slice(message.get_payload_bytes()));
                let delivery = Delivery {
                    message: body,
                    info: DeliveryInfo {
                        topic: message.get_channel_name().to_owned(),
                        attempt: 1,
                        redelivered: false,
                        position: None,
                        partition: None,
                    },
                    handle: AckHandle::new(acker.clone(), token),
                };
                token += 1;
                tokio::select! {
                    biased;
                    _ = &mut close_rx => break 'outer,
                    sent = deliveries_tx.send(Ok(delivery)) => if sent.is_err() { break 'outer },
                }
            }
        }
        closed.store(true, Ordering::Release);
        let _ = closed_tx.send(());
    });
    Ok(DeliveryStream::new(deliveries_rx, close_tx, closed_rx))
}
