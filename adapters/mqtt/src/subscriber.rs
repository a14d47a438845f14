//! Subscribing: each subscription is an MQTT connection of its own, with a client id that is
//! the same across restarts for the same filter and group, so a persistent session resumes
//! and the broker redelivers what was not acknowledged.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use polybridge_core::{Acknowledger, DeliveryStream, Error, Result, Subscriber, Subscription};
use tokio::sync::{mpsc, oneshot};

use crate::session::{self, Command, SessionAcker, SubscriptionSpec};
use crate::{MqttBroker, BROKER};

#[async_trait]
impl Subscriber for MqttBroker {
    async fn subscribe(&self, subscription: Subscription) -> Result<DeliveryStream> {
        let filter = subscription.pattern.to_mqtt()?;
        let wire_filter = match &subscription.group {
            None => filter.clone(),
            Some(group) if self.config.shared_subscriptions => {
                if group.is_empty() || group.contains(['/', '+', '#']) {
                    return Err(Error::config(
                        BROKER,
                        format!("group {group:?}: a shared subscription name has no '/', '+' or '#'"),
                    ));
                }
                format!("$share/{group}/{filter}")
            }
            // Without shared subscriptions a group names a durable subscriber: one member at
            // a time, whose session (client id from the group) outlives restarts.
            Some(_) => filter.clone(),
        };
        let slot_key = match (&subscription.group, self.config.shared_subscriptions) {
            (Some(group), false) => format!("{group}\u{0}{wire_filter}"),
            _ => wire_filter.clone(),
        };
        let slot = ClientSlot::take(&self.config.client_id, &slot_key);
        let max_in_flight = subscription.max_in_flight.max(1);
        let (commands_tx, commands_rx) = mpsc::channel(max_in_flight * 2 + 16);
        let (deliveries_tx, deliveries_rx) = mpsc::channel(max_in_flight);
        let closed = Arc::new(AtomicBool::new(false));
        let acker: Arc<dyn Acknowledger> = Arc::new(SessionAcker {
            commands: commands_tx.clone(),
            closed: closed.clone(),
            filter: filter.clone(),
        });
        let spec = SubscriptionSpec {
            filter: wire_filter,
            max_in_flight,
            dead_letter: subscription
                .dead_letter
                .clone()
                .unwrap_or_else(|| "dlq/{topic}".to_owned()),
            deliveries: deliveries_tx,
            closed: closed.clone(),
        };
        session::start(
            &self.config,
            slot.client_id.clone(),
            Some(spec),
            commands_rx,
            Some(acker),
            self.url.to_string(),
        )
        .await?;
        let (close_tx, close_rx) = oneshot::channel::<()>();
        let (closed_tx, closed_rx) = oneshot::channel();
        tokio::spawn(async move {
            // Closing (or dropping) the stream disconnects the session; the client id is
            // free again for the next subscription to the same filter and group.
            let _ = close_rx.await;
            let (done, stopped) = oneshot::channel();
            if commands_tx.send(Command::Close { done }).await.is_ok() {
                let _ = stopped.await;
            }
            drop(slot);
            let _ = closed_tx.send(());
        });
        Ok(DeliveryStream::new(deliveries_rx, close_tx, closed_rx))
    }
}

/// A client id in use by one subscription of this process: `<base>-<hash of filter>-<n>`,
/// `n` the lowest free number, so ids are stable across restarts and never shared by two
/// live connections.
struct ClientSlot {
    key: String,
    index: usize,
    client_id: String,
}

fn slots() -> &'static Mutex<HashMap<String, BTreeSet<usize>>> {
    static SLOTS: OnceLock<Mutex<HashMap<String, BTreeSet<usize>>>> = OnceLock::new();
    SLOTS.get_or_init(Default::default)
}

impl ClientSlot {
    fn take(base: &str, wire_filter: &str) -> ClientSlot {
        let key = format!("{base}\u{0}{wire_filter}");
        let mut map = slots().lock().unwrap_or_else(|e| e.into_inner());
        let used = map.entry(key.clone()).or_default();
        let index = (0..).find(|i| !used.contains(i)).unwrap_or(0);
        used.insert(index);
        ClientSlot {
            client_id: format!("{base}-{:08x}-{index}", fnv1a(wire_filter)),
            key,
            index,
        }
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut map = slots().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(used) = map.get_mut(&self.key) {
            used.remove(&self.index);
        }
    }
}

/// FNV-1a: a stable hash (std's is randomised per process).
fn fnv1a(s: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}
