//! The brokers of the STOMP tests: the shared ActiveMQ (it takes 10-20 s to start) and the
//! shared RabbitMQ with its STOMP plugin, or the external ones from `POLYBRIDGE_STOMP_URL`
//! and `POLYBRIDGE_RABBITMQ_STOMP_URL`.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use polybridge_core::{Deadline, Message};
use polybridge_stomp::StompBroker;
use polybridge_testkit::{BrokerKind, Endpoint};

/// The URL of the shared broker of `kind`, or `None` (reason printed) when skipped.
pub fn url(kind: BrokerKind) -> Option<String> {
    if let Some(reason) = polybridge_testkit::skip_reason(kind) {
        eprintln!("{reason}");
        return None;
    }
    let broker = polybridge_testkit::shared(kind).expect("start the broker");
    Some(broker.url(Endpoint::Stomp).expect("stomp endpoint"))
}

pub async fn connect(url: &str) -> StompBroker {
    StompBroker::connect(&url.parse().unwrap())
        .await
        .expect("connect over STOMP")
}

pub fn deadline() -> Deadline {
    Deadline::after(Duration::from_secs(20))
}

pub fn msg(id: &str, payload: &'static [u8]) -> Message {
    Message::new(payload).with_id(id)
}

/// A name unique to this test run.
pub fn unique(hint: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "pbt.{hint}.{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
