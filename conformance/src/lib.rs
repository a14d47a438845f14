//! The conformance suite every polybridge adapter runs — and that you can run on your own
//! adapter. In the spirit of Watermill's universal Pub/Sub tests: one set of behaviour
//! tests, each gated by the adapter's declared [`Capabilities`](polybridge_core::Capabilities),
//! so an adapter proves what it claims.
//!
//! An adapter implements [`Fixture`] for its test setup and expands
//! [`conformance_tests!`], which writes one `#[tokio::test]` per contract test:
//!
//! ```ignore
//! struct MyFixture;
//! #[async_trait::async_trait]
//! impl polybridge_conformance::Fixture for MyFixture { /* connect, unique_topic */ }
//! polybridge_conformance::conformance_tests!(MyFixture);
//! ```
//!
//! A test whose capability the adapter lacks prints `skipped: <test>: <reason>` and passes.
//!
//! | test | what it proves | runs when |
//! |---|---|---|
//! | `publish_subscribe` | ids, payloads (binary), headers, key, content type, reply-to, correlation id arrive | always (each field where it travels) |
//! | `concurrent_subscribe` | many subscriptions × many messages, all received | always |
//! | `multiple_topics` | each subscriber gets only its own topic | always |
//! | `resend_on_nack` | a nacked delivery comes back, marked redelivered | at-least-once |
//! | `in_flight_limit` | no delivery past `max_in_flight` until one is settled | at-least-once |
//! | `continue_after_subscriber_close` | a new group member continues where the last left off | groups, at-least-once |
//! | `concurrent_close` | many subscriptions closed at once while messages flow, no hang | always |
//! | `continue_after_errors` | a handler that fails (nacks) a few times still gets everything | at-least-once |
//! | `order_per_key` | same-key messages arrive in publish order | ordering |
//! | `publisher_close_flushes` | everything published before `close` arrives; publish after close is `Closed` | always |
//! | `topic_isolation` | a subscriber of B never sees A's messages | always |
//! | `cancellation_returns_unacked` | closing a stream gives its unacked deliveries back | groups, at-least-once |
//! | `new_subscriber_replays_history` | `StartPosition::Earliest` reads what was published before | replay |
//! | `reconnect` | the broker restarted twice during 10k messages: every message received | reconnect + a restartable broker |
//! | `consumer_groups` | two groups each get all; members of one group share | groups |
//! | `header_round_trip` | binary, unicode and repeated header values survive | headers |
//! | `nack_with_delay` | `nack_after(d)` redelivers after about `d`, not before | at-least-once |
//! | `reject_to_dead_letter` | `reject(reason)` lands in the dead-letter destination with reason headers | at-least-once |
//! | `payload_limits` | a payload of exactly the limit passes; one byte more is `PayloadTooLarge`, nothing lost | a known limit ≤ 8 MiB |
//! | `ack_after_close` | settling after the stream closed is a `Closed` error | always |
//! | `dropped_delivery_is_redelivered` | a delivery dropped unsettled is redelivered | at-least-once |
//!
//! Waits are deadlines on conditions, never sleeps used as synchronisation; the only fixed
//! waits are the bounded "nothing else arrives" checks, whose length the fixture sets.

// This crate is test code: a failed expectation panics with a message saying what was
// expected and what arrived.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod tests;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use polybridge_core::{
    Broker, Deadline, Delivery, DeliveryStream, Message, Result, Subscription, TopicPattern,
};

/// What the suite needs from an adapter's test setup.
#[async_trait]
pub trait Fixture: Send + Sync + 'static {
    /// A new connection to the broker under test.
    async fn connect(&self) -> Result<Arc<dyn Broker>>;

    /// The level separator of topics on this broker (`.` for most, `/` for MQTT).
    fn separator(&self) -> char {
        '.'
    }

    /// A topic name unique to this run, valid for the broker, built from `hint`.
    fn unique_topic(&self, hint: &str) -> String {
        static N: AtomicU64 = AtomicU64::new(0);
        let sep = self.separator();
        format!(
            "pbt{sep}{hint}{sep}{}x{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// A consumer-group name unique to this run.
    fn unique_group(&self, hint: &str) -> String {
        static N: AtomicU64 = AtomicU64::new(0);
        format!(
            "pbg-{hint}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// The subscription to exactly `topic` (with any options the adapter needs).
    fn subscription(&self, topic: &str) -> Subscription {
        Subscription::new(TopicPattern::literal(topic, self.separator()))
    }

    /// Restarts the broker for the reconnect test; `None` when this fixture cannot.
    async fn restart_broker(&self) -> Option<Result<()>> {
        None
    }

    /// Message counts are multiplied by this (slow brokers lower it).
    fn scale(&self) -> f64 {
        1.0
    }

    /// How long to wait for an expected delivery.
    fn timeout(&self) -> Duration {
        Duration::from_secs(20)
    }

    /// How long "nothing else arrives" checks wait.
    fn quiet_period(&self) -> Duration {
        Duration::from_millis(500)
    }

    /// Why the whole suite is skipped for this fixture (e.g. `POLYBRIDGE_SKIP_BROKERS`
    /// names its broker); `None` runs it.
    fn skip_reason(&self) -> Option<String> {
        None
    }

    /// The payload limit to test, if it differs from the adapter's declared one.
    fn payload_limit(&self, declared: Option<usize>) -> Option<usize> {
        declared
    }
}

/// Prints why a test is skipped. Returns true so tests can `if skip(..) { return }`.
pub fn skip(test: &str, reason: &str) -> bool {
    eprintln!("skipped: {test}: {reason}");
    true
}

/// A deadline of the fixture's timeout.
pub fn deadline<F: Fixture + ?Sized>(fixture: &F) -> Deadline {
    Deadline::after(fixture.timeout())
}

/// `n` scaled by the fixture, at least 1.
pub fn scaled<F: Fixture + ?Sized>(fixture: &F, n: usize) -> usize {
    ((n as f64 * fixture.scale()) as usize).max(1)
}

/// The next delivery within `timeout`, panicking with `what` otherwise.
pub async fn next(stream: &mut DeliveryStream, timeout: Duration, what: &str) -> Delivery {
    match tokio::time::timeout(timeout, stream.next()).await {
        Ok(Some(Ok(d))) => d,
        Ok(Some(Err(e))) => panic!("{what}: the subscription failed: {e}"),
        Ok(None) => panic!("{what}: the subscription ended"),
        Err(_) => panic!("{what}: nothing arrived within {timeout:?}"),
    }
}

/// Asserts nothing arrives on `stream` for `period`.
pub async fn expect_nothing(stream: &mut DeliveryStream, period: Duration, what: &str) {
    if let Ok(Some(d)) = tokio::time::timeout(period, stream.next()).await {
        match d {
            Ok(d) => panic!(
                "{what}: expected nothing, got message {:?} on {}",
                d.message.id, d.info.topic
            ),
            Err(e) => panic!("{what}: expected nothing, got error {e}"),
        }
    }
}

/// Receives and acks until every id in `ids` was seen (duplicates allowed), or panics after
/// `timeout` naming the missing ones. Returns how many deliveries arrived in all.
pub async fn receive_all(
    stream: &mut DeliveryStream,
    ids: &HashSet<String>,
    timeout: Duration,
    what: &str,
) -> usize {
    let mut seen = HashSet::new();
    let mut total = 0;
    let end = tokio::time::Instant::now() + timeout;
    while seen.len() < ids.len() {
        let left = end.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, stream.next()).await {
            Ok(Some(Ok(d))) => {
                total += 1;
                assert!(
                    ids.contains(&d.message.id),
                    "{what}: unexpected message {:?} on {}",
                    d.message.id,
                    d.info.topic
                );
                seen.insert(d.message.id.clone());
                d.ack().expect("ack");
            }
            Ok(Some(Err(e))) => panic!("{what}: the subscription failed: {e}"),
            Ok(None) => panic!("{what}: the subscription ended"),
            Err(_) => {
                let mut missing: Vec<_> = ids.difference(&seen).cloned().collect();
                missing.sort();
                panic!(
                    "{what}: {} of {} messages missing after {timeout:?}, e.g. {:?}",
                    missing.len(),
                    ids.len(),
                    &missing[..missing.len().min(5)]
                );
            }
        }
    }
    total
}

/// Publishes one probe to `topic` on `subscriber` (the connection that made the
/// subscription) and receives it on `stream`: afterwards the broker is known to have the
/// subscription, so messages published on other connections reach it. Where `subscribe`
/// waits for the broker this costs one message; core NATS returns once the SUB was written to
/// the socket (async-nats offers no round trip to wait on), and a message published on another
/// connection right after can reach the server first and miss the subscription. The probe
/// is sent after the SUB on the same connection, so the server handles it after the SUB.
pub async fn wait_until_subscribed<F: Fixture + ?Sized>(
    fixture: &F,
    subscriber: &dyn Broker,
    stream: &mut DeliveryStream,
    topic: &str,
) {
    let probe = publish_n(fixture, subscriber, topic, "subscribed-probe", 1).await;
    receive_all(
        stream,
        &probe,
        fixture.timeout(),
        "the subscription's probe",
    )
    .await;
}

/// Publishes `n` messages with ids `<prefix>-<i>` and payload `i` to `topic`.
pub async fn publish_n<F: Fixture + ?Sized>(
    fixture: &F,
    broker: &dyn Broker,
    topic: &str,
    prefix: &str,
    n: usize,
) -> HashSet<String> {
    let mut ids = HashSet::new();
    for i in 0..n {
        let id = format!("{prefix}-{i}");
        broker
            .publish(
                topic,
                &Message::new(i.to_string()).with_id(id.clone()),
                deadline(fixture),
            )
            .await
            .unwrap_or_else(|e| panic!("publish {id} to {topic}: {e}"));
        ids.insert(id);
    }
    ids
}

/// Expands to one `#[tokio::test]` per conformance test, each running against the fixture
/// that `$fixture` (an expression, evaluated per test) builds. The calling crate needs
/// `tokio` with the `macros` and `rt-multi-thread` features as a dev-dependency.
#[macro_export]
macro_rules! conformance_tests {
    ($fixture:expr) => {
        $crate::conformance_tests!(@each $fixture;
            publish_subscribe, concurrent_subscribe, multiple_topics, resend_on_nack,
            in_flight_limit, continue_after_subscriber_close, concurrent_close,
            continue_after_errors, order_per_key, publisher_close_flushes, topic_isolation,
            cancellation_returns_unacked, new_subscriber_replays_history, reconnect,
            consumer_groups, header_round_trip, nack_with_delay, reject_to_dead_letter,
            payload_limits, ack_after_close, dropped_delivery_is_redelivered);
    };
    (@each $fixture:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let fixture = $fixture;
                if let Some(reason) = $crate::Fixture::skip_reason(&fixture) {
                    $crate::skip(stringify!($name), &reason);
                    return;
                }
                $crate::tests::$name(&fixture).await;
            }
        )*
    };
}
