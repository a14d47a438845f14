//! Subscribing: core NATS subscriptions (queue subscriptions for groups) here, JetStream
//! pull consumers in [`crate::jetstream`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use polybridge_core::{
    AckHandle, Acknowledger, Delivery, DeliveryInfo, DeliveryStream, Error, Result, Settlement,
    Subscriber, Subscription,
};
use tokio::sync::{mpsc, oneshot};

use crate::{jetstream, mapping, NatsBroker, BROKER};

#[async_trait]
impl Subscriber for NatsBroker {
    async fn subscribe(&self, subscription: Subscription) -> Result<DeliveryStream> {
        match &self.jetstream {
            Some(context) => {
                jetstream::subscribe(
                    &self.client,
                    context,
                    &self.config,
                    self.reconnects.clone(),
                    subscription,
                )
                .await
            }
            None => self.subscribe_core(subscription).await,
        }
    }
}

/// Core NATS cannot redeliver: settling only checks that the subscription is still open.
struct CoreAcker {
    closed: Arc<AtomicBool>,
    subject: String,
}

impl Acknowledger for CoreAcker {
    fn settle(&self, _token: u64, settlement: Settlement) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::closed(
                BROKER,
                format!("the subscription to {}", self.subject),
            ));
        }
        if !matches!(settlement, Settlement::Ack) {
            tracing::debug!(broker = BROKER, subject = %self.subject, ?settlement, "core NATS cannot redeliver or dead-letter: the settlement has no effect");
        }
        Ok(())
    }
}

impl NatsBroker {
    async fn subscribe_core(&self, subscription: Subscription) -> Result<DeliveryStream> {
        let subject = subscription.pattern.to_nats()?;
        let subscribed = match &subscription.group {
            Some(group) => {
                self.client
                    .queue_subscribe(subject.clone(), group.clone())
                    .await
            }
            None => self.client.subscribe(subject.clone()).await,
        };
        let mut subscriber = subscribed.map_err(|e| Error::Transient {
            broker: BROKER,
            destination: subject.clone(),
            reason: format!("cannot subscribe: {e}"),
            source: Some(Box::new(e)),
        })?;
        // The SUB is written to the socket once the flush returns. async-nats's flush does
        // not wait for the server: a message another connection publishes right after
        // `subscribe` returns can reach the server first and miss the subscription.
        self.client.flush().await.map_err(|e| Error::Transient {
            broker: BROKER,
            destination: subject.clone(),
            reason: format!("the server did not confirm the subscription: {e}"),
            source: Some(Box::new(e)),
        })?;
        let (deliveries_tx, deliveries_rx) = mpsc::channel(subscription.max_in_flight.max(1));
        let (close_tx, mut close_rx) = oneshot::channel::<()>();
        let (closed_tx, closed_rx) = oneshot::channel();
        let closed = Arc::new(AtomicBool::new(false));
        let acker: Arc<dyn Acknowledger> = Arc::new(CoreAcker {
            closed: closed.clone(),
            subject: subject.clone(),
        });
        tokio::spawn(async move {
            let mut token = 0u64;
            loop {
                let message = tokio::select! {
                    biased;
                    _ = &mut close_rx => break,
                    message = subscriber.next() => message,
                };
                let Some(message) = message else {
                    break;
                };
                if message.status.is_some() {
                    continue;
                }
                let reply = message.reply.as_ref().map(|r| r.to_string());
                let delivery = Delivery {
                    message: mapping::from_nats(
                        message.payload,
                        message.headers.as_ref(),
                        reply,
                        mapping::fresh_id,
                    ),
                    info: DeliveryInfo {
                        topic: message.subject.to_string(),
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
                    _ = &mut close_rx => break,
                    sent = deliveries_tx.send(Ok(delivery)) => if sent.is_err() { break },
                }
            }
            closed.store(true, Ordering::Release);
            if let Err(e) = subscriber.unsubscribe().await {
                tracing::debug!(broker = BROKER, subject = %subject, error = %e, "unsubscribe failed (the connection may be closed)");
            }
            let _ = closed_tx.send(());
        });
        Ok(DeliveryStream::new(deliveries_rx, close_tx, closed_rx))
    }
}
