//! WebSocket-specific behaviour: a raw tokio-tungstenite client stands in for a browser —
//! it subscribes and receives, acks, watches with `auto_ack`, publishes and gets `ok`,
//! gets `error` frames for bad input; a client that disconnects gives its unsettled
//! deliveries back; the Rust client refuses what the hub cannot do.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use polybridge_core::{
    Deadline, Delivery, DeliveryStream, Error, Message, Publisher, Subscriber, Subscription,
    TopicPattern,
};
use serde_json::{json, Value as Json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const WAIT: Duration = Duration::from_secs(10);

type Browser = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn deadline() -> Deadline {
    Deadline::after(WAIT)
}

fn subscription(pattern: &str) -> Subscription {
    Subscription::new(TopicPattern::parse(pattern).unwrap())
}

async fn next(stream: &mut DeliveryStream, what: &str) -> Delivery {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {WAIT:?}"))
        .unwrap_or_else(|| panic!("{what}: stream ended"))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// A "browser": a bare WebSocket client that has read the hub's welcome.
async fn browser(hub: &polybridge_websocket::WsHub) -> Browser {
    let (mut ws, _) = tokio_tungstenite::connect_async(hub.url()).await.unwrap();
    let welcome = read(&mut ws, "welcome").await;
    assert_eq!(welcome["op"], "welcome");
    assert_eq!(welcome["broker"], "memory");
    assert_eq!(welcome["capabilities"]["delivery"], "at_least_once");
    ws
}

async fn send(ws: &mut Browser, frame: Json) {
    ws.send(Frame::text(frame.to_string())).await.unwrap();
}

async fn read(ws: &mut Browser, what: &str) -> Json {
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap_or_else(|_| panic!("{what}: no frame within {WAIT:?}"))
            .unwrap_or_else(|| panic!("{what}: connection closed"))
            .unwrap();
        if let Frame::Text(t) = frame {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

async fn nothing_within(ws: &mut Browser, period: Duration, what: &str) {
    if let Ok(Some(Ok(f))) = tokio::time::timeout(period, ws.next()).await {
        panic!("{what}: unexpected frame {f:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_subscribes_receives_and_acks() {
    let hub = common::hub().await;
    let service = common::connect(&hub).await;
    let mut ws = browser(&hub).await;
    send(&mut ws, json!({"op": "subscribe", "ref": 1, "sub": "b1", "pattern": "orders.*", "max_in_flight": 1})).await;
    assert_eq!(
        read(&mut ws, "subscribed").await,
        json!({"op": "ok", "ref": 1, "sub": "b1"})
    );
    service
        .publish(
            "orders.created",
            &Message::new("{\"id\":7}")
                .with_id("o7")
                .with_header("trace", "t1")
                .with_content_type("application/json"),
            deadline(),
        )
        .await
        .unwrap();
    service
        .publish(
            "orders.binary",
            &Message::new(vec![0u8, 0xff]).with_id("o8"),
            deadline(),
        )
        .await
        .unwrap();
    let m = read(&mut ws, "first message").await;
    assert_eq!(m["op"], "message");
    assert_eq!(m["sub"], "b1");
    assert_eq!(m["topic"], "orders.created");
    assert_eq!(m["id"], "o7");
    assert_eq!(m["payload"], "{\"id\":7}");
    assert_eq!(m["content_type"], "application/json");
    assert_eq!(m["headers"], json!([["trace", "t1"]]));
    assert_eq!(
        (m["attempt"].as_u64(), m["redelivered"].as_bool()),
        (Some(1), Some(false))
    );
    // In-flight 1: the second waits for the ack.
    nothing_within(
        &mut ws,
        Duration::from_millis(300),
        "a second message before the ack",
    )
    .await;
    send(&mut ws, json!({"op": "ack", "tag": m["tag"]})).await;
    let m = read(&mut ws, "second message").await;
    assert_eq!(
        (m["id"].as_str(), m["payload_b64"].as_str()),
        (Some("o8"), Some("AP8="))
    );
    // A nack from the browser redelivers.
    send(&mut ws, json!({"op": "nack", "tag": m["tag"]})).await;
    let again = read(&mut ws, "redelivery").await;
    assert_eq!(
        (again["id"].as_str(), again["redelivered"].as_bool()),
        (Some("o8"), Some(true))
    );
    send(&mut ws, json!({"op": "ack", "tag": again["tag"]})).await;
    send(&mut ws, json!({"op": "unsubscribe", "ref": 2, "sub": "b1"})).await;
    assert_eq!(
        read(&mut ws, "unsubscribed").await,
        json!({"op": "ok", "ref": 2, "sub": "b1"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watching_browser_with_auto_ack_gets_everything() {
    let hub = common::hub().await;
    let service = common::connect(&hub).await;
    let mut ws = browser(&hub).await;
    send(&mut ws, json!({"op": "subscribe", "ref": 1, "sub": "w", "pattern": "prices.>", "max_in_flight": 2, "auto_ack": true})).await;
    assert_eq!(read(&mut ws, "subscribed").await["op"], "ok");
    for i in 0..10 {
        service
            .publish(
                &format!("prices.eu.{i}"),
                &Message::new(i.to_string()),
                deadline(),
            )
            .await
            .unwrap();
    }
    for i in 0..10 {
        let m = read(&mut ws, "price").await;
        assert_eq!(
            m["payload"],
            i.to_string(),
            "in order, none held back by in-flight 2"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_publishes_and_gets_ok_once_the_backend_confirmed() {
    let hub = common::hub().await;
    let service = common::connect(&hub).await;
    let mut sub = service.subscribe(subscription("chat.*")).await.unwrap();
    let mut ws = browser(&hub).await;
    send(&mut ws, json!({"op": "publish", "ref": 9, "topic": "chat.room1", "id": "c1", "payload": "hello", "headers": {"from": "ana"}, "key": "room1"})).await;
    assert_eq!(
        read(&mut ws, "publish answer").await,
        json!({"op": "ok", "ref": 9})
    );
    send(
        &mut ws,
        json!({"op": "publish", "ref": 10, "topic": "chat.room1", "payload_b64": "AAE="}),
    )
    .await;
    assert_eq!(
        read(&mut ws, "publish answer").await,
        json!({"op": "ok", "ref": 10})
    );
    let d = next(&mut sub, "from the browser").await;
    assert_eq!(
        (d.message.id.as_str(), &d.message.payload[..]),
        ("c1", &b"hello"[..])
    );
    assert_eq!(d.message.headers.get_str("from"), Some("ana"));
    assert_eq!(d.message.key.as_deref(), Some(&b"room1"[..]));
    d.ack().unwrap();
    let d = next(&mut sub, "binary from the browser").await;
    assert_eq!(&d.message.payload[..], &[0u8, 1]);
    d.ack().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_error_frames() {
    let hub = common::hub().await;
    let mut ws = browser(&hub).await;
    ws.send(Frame::text("not json")).await.unwrap();
    let e = read(&mut ws, "bad json").await;
    assert_eq!(
        (e["op"].as_str(), e["kind"].as_str()),
        (Some("error"), Some("config"))
    );
    send(&mut ws, json!({"op": "publish", "ref": 1, "topic": "t"})).await;
    let e = read(&mut ws, "no payload").await;
    assert_eq!(
        (e["ref"].as_u64(), e["kind"].as_str()),
        (Some(1), Some("config"))
    );
    assert!(e["message"].as_str().unwrap().contains("payload"), "{e}");
    send(
        &mut ws,
        json!({"op": "publish", "ref": 2, "topic": "t", "payload": "x".repeat(65537)}),
    )
    .await;
    let e = read(&mut ws, "too large").await;
    assert_eq!(
        (e["ref"].as_u64(), e["kind"].as_str(), e["limit"].as_u64()),
        (Some(2), Some("payload_too_large"), Some(65536))
    );
    send(
        &mut ws,
        json!({"op": "subscribe", "ref": 3, "sub": "s", "pattern": "a.#.b"}),
    )
    .await;
    let e = read(&mut ws, "bad pattern").await;
    assert_eq!(
        (e["ref"].as_u64(), e["op"].as_str()),
        (Some(3), Some("error"))
    );
    send(&mut ws, json!({"op": "ack", "ref": 4, "tag": 12345})).await;
    let e = read(&mut ws, "unknown tag").await;
    assert_eq!(e["ref"].as_u64(), Some(4));
    send(&mut ws, json!({"op": "fly", "ref": 5})).await;
    let e = read(&mut ws, "unknown op").await;
    assert!(e["message"].as_str().unwrap().contains("fly"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_browser_s_unsettled_deliveries_go_to_the_rest_of_its_group() {
    let hub = common::hub().await;
    let service = common::connect(&hub).await;
    let mut ws = browser(&hub).await;
    send(
        &mut ws,
        json!({"op": "subscribe", "ref": 1, "sub": "g", "pattern": "work", "group": "workers"}),
    )
    .await;
    assert_eq!(read(&mut ws, "subscribed").await["op"], "ok");
    service
        .publish("work", &Message::new("job").with_id("j1"), deadline())
        .await
        .unwrap();
    let m = read(&mut ws, "job").await;
    assert_eq!(m["id"], "j1");
    drop(ws); // gone without acking
    let mut other = service
        .subscribe(subscription("work").group("workers"))
        .await
        .unwrap();
    let d = next(&mut other, "redelivery to the other member").await;
    assert_eq!((d.message.id.as_str(), d.info.redelivered), ("j1", true));
    d.ack().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reports_what_it_cannot_do() {
    let hub = common::hub().await;
    let service = common::connect(&hub).await;
    assert_eq!(service.backend(), "memory");
    // Without connecting, a client assumes a memory-backed hub: what this one is.
    let offline = polybridge_websocket::WsBroker::capabilities_for(
        &format!("{}?", hub.url()).parse().unwrap(),
    )
    .unwrap();
    use polybridge_core::Broker;
    assert_eq!(
        offline.max_payload,
        Some(polybridge_memory::DEFAULT_MAX_PAYLOAD),
        "the default limit, not this hub's"
    );
    assert_eq!(
        (offline.delivery, offline.replay, offline.consumer_groups),
        (
            service.capabilities().delivery,
            service.capabilities().replay,
            service.capabilities().consumer_groups
        )
    );
    let e = service
        .publish("t", &Message::new(vec![0u8; 65537]), deadline())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::PayloadTooLarge {
                size: 65537,
                limit: 65536,
                ..
            }
        ),
        "{e}"
    );
    let e = service
        .subscribe(
            subscription("t").start(polybridge_core::StartPosition::Time(
                std::time::SystemTime::now(),
            )),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    let e = service
        .subscribe(subscription("t").option("x", "1"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Config { .. }), "{e}");
    // A port where no hub listens.
    let port = polybridge_testkit::free_loopback_port().unwrap();
    let e = polybridge_websocket::WsBroker::connect(
        &format!("ws://127.0.0.1:{port}/").parse().unwrap(),
    )
    .await
    .err()
    .expect("no hub there");
    assert!(matches!(e, Error::Connection { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_hub_is_away_publishes_fail_then_the_client_reconnects_and_resubscribes() {
    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    let memory = format!("memory://wsgone{}?max_payload=65536", std::process::id());
    let hub = polybridge_websocket::WsHub::bind_memory(&addr, &memory)
        .await
        .unwrap();
    let service = polybridge_websocket::WsBroker::connect(&hub.url().parse().unwrap())
        .await
        .unwrap();
    let mut sub = service.subscribe(subscription("t")).await.unwrap();
    drop(hub);
    let e = service
        .publish("t", &Message::new("lost"), deadline())
        .await
        .unwrap_err();
    // `Connection` if the publish met the dead socket, `Transient` if the client had
    // already noticed and is reconnecting: either way a retryable error, never a success.
    assert!(
        matches!(e, Error::Connection { .. } | Error::Transient { .. }),
        "{e}"
    );
    assert!(e.is_retryable(), "{e}");
    // The hub comes back (on the same backend): the client reconnects and subscribes again.
    let end = tokio::time::Instant::now() + WAIT;
    let _hub = loop {
        match polybridge_websocket::WsHub::bind_memory(&addr, &memory).await {
            Ok(h) => break h,
            Err(e) => {
                assert!(tokio::time::Instant::now() < end, "rebinding the hub: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    loop {
        match service
            .publish("t", &Message::new("back").with_id("b1"), deadline())
            .await
        {
            Ok(_) => break,
            Err(e) if e.is_retryable() => {
                assert!(
                    tokio::time::Instant::now() < end,
                    "publishing after the restart: {e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let d = next(&mut sub, "after the reconnect").await;
    assert_eq!(d.message.id, "b1");
    d.ack().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_the_hub_in_process_for_browsers() {
    let port = common::free_port();
    let served = polybridge_websocket::WsBroker::connect(
        &format!("ws://127.0.0.1:{port}/?serve=true")
            .parse()
            .unwrap(),
    )
    .await
    .unwrap();
    let hub = served.hub().expect("serve=true runs a hub");
    let mut ws = browser(hub).await;
    send(
        &mut ws,
        json!({"op": "subscribe", "ref": 1, "sub": "s", "pattern": "ticks", "auto_ack": true}),
    )
    .await;
    assert_eq!(read(&mut ws, "subscribed").await["op"], "ok");
    served
        .publish("ticks", &Message::new("42"), deadline())
        .await
        .unwrap();
    assert_eq!(read(&mut ws, "tick").await["payload"], "42");
}
