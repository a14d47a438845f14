//! Subscriptions: a member of a consumer group pulls requests from the group's queue while
//! it has fewer than `max_in_flight` unsettled, hands them out as deliveries and answers
//! each request when its delivery is settled.

use std::collections::HashMap;
use std::sync::Arc;

use polybridge_core::{
    AckHandle, Acknowledger, Delivery, DeliveryInfo, DeliveryStream, Error, Result, Settlement,
    StartPosition, Subscription,
};
use tokio::sync::{mpsc, oneshot};

use crate::server::{Group, Job, State};
use crate::BROKER;

/// Settles by telling the member task; fails with `Closed` once the member is gone.
struct Acker {
    settle: mpsc::UnboundedSender<(u64, Settlement)>,
    what: String,
}

impl Acknowledger for Acker {
    fn settle(&self, token: u64, settlement: Settlement) -> Result<()> {
        self.settle
            .send((token, settlement))
            .map_err(|_| Error::closed(BROKER, self.what.clone()))
    }
}

/// Checks what an HTTP subscription cannot do.
pub(crate) fn check(subscription: &Subscription) -> Result<()> {
    if subscription.start != StartPosition::Latest {
        return Err(Error::unsupported(
            BROKER,
            format!(
                "start position {:?}: a webhook server keeps no history, it receives what is POSTed while it subscribes",
                subscription.start
            ),
        ));
    }
    if let Some(name) = subscription.options.keys().next() {
        return Err(Error::config(
            BROKER,
            format!("unknown subscription option {name:?}; the http adapter has none"),
        ));
    }
    Ok(())
}

/// Starts a member of `group`.
pub(crate) fn start(
    state: Arc<State>,
    group: Arc<Group>,
    subscription: &Subscription,
) -> DeliveryStream {
    let max_in_flight = subscription.max_in_flight.clamp(1, crate::MAX_IN_FLIGHT);
    let (deliveries_tx, deliveries_rx) = mpsc::channel(max_in_flight);
    let (close_tx, close_rx) = oneshot::channel();
    let (closed_tx, closed_rx) = oneshot::channel::<()>();
    let (settle_tx, settle_rx) = mpsc::unbounded_channel();
    let acker: Arc<dyn Acknowledger> = Arc::new(Acker {
        settle: settle_tx,
        what: format!("the subscription to {}", subscription.pattern),
    });
    tokio::spawn(async move {
        member(
            state,
            group,
            max_in_flight,
            deliveries_tx,
            close_rx,
            settle_rx,
            acker,
        )
        .await;
        drop(closed_tx);
    });
    DeliveryStream::new(deliveries_rx, close_tx, closed_rx)
}

async fn member(
    state: Arc<State>,
    group: Arc<Group>,
    max_in_flight: usize,
    deliveries: mpsc::Sender<Result<Delivery>>,
    mut close: oneshot::Receiver<()>,
    mut settle: mpsc::UnboundedReceiver<(u64, Settlement)>,
    acker: Arc<dyn Acknowledger>,
) {
    let mut pending: HashMap<u64, oneshot::Sender<Settlement>> = HashMap::new();
    let mut next_token = 0u64;
    let jobs = group.rx.clone();
    loop {
        tokio::select! {
            biased;
            _ = &mut close => break,
            Some((token, settlement)) = settle.recv() => {
                if let Some(respond) = pending.remove(&token) {
                    let _ = respond.send(settlement);
                }
            }
            job = jobs.recv(), if pending.len() < max_in_flight => {
                let Ok(Job { message, topic, attempt, respond }) = job else { break };
                if respond.is_closed() {
                    // The sender gave up (timeout or disconnect) and will retry.
                    continue;
                }
                next_token += 1;
                let delivery = Delivery {
                    message,
                    info: DeliveryInfo {
                        topic,
                        attempt,
                        redelivered: attempt > 1,
                        position: None,
                        partition: None,
                    },
                    handle: AckHandle::new(acker.clone(), next_token),
                };
                pending.insert(next_token, respond);
                if deliveries.try_send(Ok(delivery)).is_err() {
                    // The stream was dropped (its close signal follows).
                    break;
                }
            }
        }
    }
    // Refuse settlements from now on, answer what was handed out and not settled with a
    // nack (the sender retries), then leave the group.
    settle.close();
    while let Ok((token, settlement)) = settle.try_recv() {
        if let Some(respond) = pending.remove(&token) {
            let _ = respond.send(settlement);
        }
    }
    drop(settle);
    for (_, respond) in pending.drain() {
        let _ = respond.send(Settlement::Nack { delay: None });
    }
    state.leave(&group);
}
