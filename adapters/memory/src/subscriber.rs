//! Subscribing to the in-memory broker: one pump task per subscription hands out at most
//! `max_in_flight` unsettled deliveries, waiting on the group's notifier in between.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use polybridge_core::{
    AckHandle, Acknowledger, Delivery, DeliveryStream, Error, Result, Settlement, Subscriber,
    Subscription,
};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::broker::{Next, SharedBroker};
use crate::MemoryBroker;

/// Settles the deliveries of one subscription.
struct SubscriptionAcker {
    broker: Arc<SharedBroker>,
    group: String,
    pattern: String,
    dead_letter: Option<String>,
    closed: AtomicBool,
    /// One permit per delivery that may still be handed out.
    permits: Arc<Semaphore>,
}

impl Acknowledger for SubscriptionAcker {
    fn settle(&self, token: u64, settlement: Settlement) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::closed(
                "memory",
                format!("the subscription to {}", self.pattern),
            ));
        }
        self.broker
            .settle(&self.group, token, settlement, self.dead_letter.as_deref())?;
        self.permits.add_permits(1);
        Ok(())
    }
}

#[async_trait]
impl Subscriber for MemoryBroker {
    async fn subscribe(&self, subscription: Subscription) -> Result<DeliveryStream> {
        if !subscription.options.is_empty() {
            let names: Vec<_> = subscription.options.keys().cloned().collect();
            return Err(Error::config(
                "memory",
                format!(
                    "the memory broker has no subscription options, got: {}",
                    names.join(", ")
                ),
            ));
        }
        let joined = self.shared.join(
            subscription.group.as_deref(),
            &subscription.pattern,
            &subscription.start,
        )?;
        let max_in_flight = subscription.max_in_flight.max(1);
        let acker = Arc::new(SubscriptionAcker {
            broker: self.shared.clone(),
            group: joined.group.clone(),
            pattern: subscription.pattern.to_string(),
            dead_letter: subscription.dead_letter.clone(),
            closed: AtomicBool::new(false),
            permits: Arc::new(Semaphore::new(max_in_flight)),
        });
        let (deliveries_tx, deliveries_rx) = mpsc::channel(max_in_flight);
        let (close_tx, close_rx) = oneshot::channel();
        let (closed_tx, closed_rx) = oneshot::channel::<()>();
        tokio::spawn(pump(
            acker,
            joined.subscriber,
            joined.notify,
            deliveries_tx,
            close_rx,
            closed_tx,
        ));
        Ok(DeliveryStream::new(deliveries_rx, close_tx, closed_rx))
    }
}

/// Hands out deliveries until the stream is closed, then returns the unsettled ones.
async fn pump(
    acker: Arc<SubscriptionAcker>,
    subscriber: u64,
    notify: Arc<tokio::sync::Notify>,
    deliveries: mpsc::Sender<Result<Delivery>>,
    mut close: oneshot::Receiver<()>,
    closed: oneshot::Sender<()>,
) {
    let dyn_acker: Arc<dyn Acknowledger> = acker.clone();
    'pump: loop {
        let permit = tokio::select! {
            permit = acker.permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break 'pump,
            },
            _ = &mut close => break 'pump,
        };
        // The permit comes back through `settle`, not when this value is dropped.
        permit.forget();
        let delivery = loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match acker.broker.next(&acker.group, subscriber) {
                Next::Deliver {
                    token,
                    message,
                    info,
                } => {
                    break Delivery {
                        message,
                        info,
                        handle: AckHandle::new(dyn_acker.clone(), token),
                    }
                }
                Next::Wait(due) => {
                    let sleep = async {
                        match due {
                            Some(at) => tokio::time::sleep_until(at).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        _ = notified => {}
                        _ = sleep => {}
                        _ = &mut close => break 'pump,
                    }
                }
            }
        };
        if deliveries.send(Ok(delivery)).await.is_err() {
            break 'pump;
        }
    }
    acker.closed.store(true, Ordering::Release);
    acker.broker.leave(&acker.group, subscriber);
    drop(closed);
}
