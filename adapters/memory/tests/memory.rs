//! Behaviour specific to the in-memory broker (the shared contract is covered by the
//! conformance suite).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use polybridge_core::{
    well_known, Deadline, Error, Message, Publisher, StartPosition, Subscriber, Subscription,
};
use polybridge_memory::MemoryBroker;

fn broker(name: &str) -> MemoryBroker {
    MemoryBroker::connect(&format!("memory://{name}").parse().unwrap()).unwrap()
}

fn deadline() -> Deadline {
    Deadline::after(Duration::from_secs(5))
}

async fn next(stream: &mut polybridge_core::DeliveryStream) -> polybridge_core::Delivery {
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("a delivery within 5 s")
        .expect("stream open")
        .expect("no error")
}

#[tokio::test]
async fn connections_to_one_name_share_a_broker() {
    let a = broker("shared-name");
    let b = broker("shared-name");
    let mut sub = b
        .subscribe(Subscription::new("t.x".parse().unwrap()))
        .await
        .unwrap();
    a.publish("t.x", &Message::new("hi"), deadline())
        .await
        .unwrap();
    let d = next(&mut sub).await;
    assert_eq!(&d.message.payload[..], b"hi");
    d.ack().unwrap();
}

#[tokio::test]
async fn wildcards_match_levels() {
    let b = broker("wildcards");
    let mut single = b
        .subscribe(Subscription::new("s.*.t".parse().unwrap()))
        .await
        .unwrap();
    let mut multi = b
        .subscribe(Subscription::new("s.>".parse().unwrap()))
        .await
        .unwrap();
    for topic in ["s.a.t", "s.a.b.t", "s.b.t"] {
        b.publish(topic, &Message::new(topic), deadline())
            .await
            .unwrap();
    }
    let got: Vec<String> = vec![next(&mut single).await, next(&mut single).await]
        .into_iter()
        .map(|d| {
            let t = d.info.topic.clone();
            d.ack().unwrap();
            t
        })
        .collect();
    assert_eq!(got, ["s.a.t", "s.b.t"]);
    for expected in ["s.a.t", "s.a.b.t", "s.b.t"] {
        let d = next(&mut multi).await;
        assert_eq!(d.info.topic, expected);
        d.ack().unwrap();
    }
}

#[tokio::test]
async fn start_positions_for_a_new_group() {
    let b = broker("start-positions");
    for i in 0..5 {
        b.publish("sp", &Message::new(format!("{i}")), deadline())
            .await
            .unwrap();
    }
    let mut from_2 = b
        .subscribe(
            Subscription::new("sp".parse().unwrap())
                .group("g2")
                .start(StartPosition::Position("2".into())),
        )
        .await
        .unwrap();
    let d = next(&mut from_2).await;
    assert_eq!(&d.message.payload[..], b"2");
    d.ack().unwrap();
    let bad = b
        .subscribe(
            Subscription::new("sp".parse().unwrap())
                .group("g3")
                .start(StartPosition::Position("two".into())),
        )
        .await
        .unwrap_err();
    assert!(matches!(bad, Error::Config { .. }), "{bad}");
}

#[tokio::test]
async fn reject_goes_to_the_default_dead_letter_topic_with_reason() {
    let b = broker("dlq-default");
    let mut sub = b
        .subscribe(Subscription::new("orders".parse().unwrap()))
        .await
        .unwrap();
    let mut dlq = b
        .subscribe(Subscription::new("orders.dlq".parse().unwrap()))
        .await
        .unwrap();
    b.publish("orders", &Message::new("x").with_id("m1"), deadline())
        .await
        .unwrap();
    next(&mut sub).await.reject("cannot parse").unwrap();
    let d = next(&mut dlq).await;
    assert_eq!(d.message.id, "m1");
    assert_eq!(
        d.message.headers.get_str(well_known::REJECT_REASON),
        Some("cannot parse")
    );
    assert_eq!(
        d.message.headers.get_str(well_known::ORIGINAL_TOPIC),
        Some("orders")
    );
    assert_eq!(d.message.headers.get_str(well_known::ATTEMPTS), Some("1"));
    d.ack().unwrap();
}

#[tokio::test]
async fn a_group_has_one_pattern() {
    let b = broker("group-pattern");
    let _s = b
        .subscribe(Subscription::new("a.*".parse().unwrap()).group("g"))
        .await
        .unwrap();
    let e = b
        .subscribe(Subscription::new("b.*".parse().unwrap()).group("g"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("already subscribes to a.*"), "{e}");
}

#[tokio::test]
async fn invalid_destinations_and_options_are_refused() {
    let b = broker("invalid");
    for bad in ["", "a..b", "a.*", "a.>"] {
        let e = b
            .publish(bad, &Message::new("x"), deadline())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("invalid topic"), "{bad}: {e}");
    }
    let e = b
        .subscribe(Subscription::new("a".parse().unwrap()).option("prefetch", "1"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("prefetch"), "{e}");
}

#[tokio::test]
async fn retention_drops_the_oldest_messages() {
    let b = MemoryBroker::connect(&"memory://retention?retention=3".parse().unwrap()).unwrap();
    for i in 0..5 {
        b.publish("r", &Message::new(format!("{i}")), deadline())
            .await
            .unwrap();
    }
    let mut sub = b
        .subscribe(Subscription::new("r".parse().unwrap()).start(StartPosition::Earliest))
        .await
        .unwrap();
    let d = next(&mut sub).await;
    assert_eq!(&d.message.payload[..], b"2");
    d.ack().unwrap();
}
