//! HTTP Basic auth of the WebSocket upgrade from `user:password@` in the URL: a client
//! sends it, a hub requires it (401 with a `Basic` challenge otherwise); a refused client
//! gets `Error::Auth` from `connect`, and no error or `Debug` shows the password.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use polybridge_core::{
    BasicAuth, Broker, Deadline, Error, Message, Publisher, Subscriber, Subscription, TopicPattern,
};
use polybridge_websocket::{WsBroker, WsHub};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error as WsError;

const WAIT: Duration = Duration::from_secs(10);

async fn connect(url: &str) -> polybridge_core::Result<WsBroker> {
    WsBroker::connect(&url.parse().unwrap()).await
}

fn assert_auth_error_without_password(e: &Error) {
    assert!(matches!(e, Error::Auth { .. }), "{e:?}");
    assert!(!e.is_retryable(), "{e}");
    let (text, debug) = (e.to_string(), format!("{e:?}"));
    assert!(text.contains("401"), "{text}");
    assert!(
        !text.contains("s3cret") && !debug.contains("s3cret"),
        "{debug}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serving_hub_lets_the_right_password_through_and_refuses_others() {
    let port = common::free_port();
    let served = connect(&format!(
        "ws://app:right-s3cret@127.0.0.1:{port}/?serve=true"
    ))
    .await
    .unwrap();
    let hub = served.hub().unwrap();

    // The right credentials: the round trip works.
    let client = connect(&format!("ws://app:right-s3cret@127.0.0.1:{port}/"))
        .await
        .expect("the right password");
    let mut sub = client
        .subscribe(Subscription::new(TopicPattern::parse("orders").unwrap()))
        .await
        .unwrap();
    served
        .publish("orders", &Message::new("paid"), Deadline::after(WAIT))
        .await
        .unwrap();
    let d = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a delivery through the authenticated hub")
        .unwrap()
        .unwrap();
    assert_eq!(&d.message.payload[..], b"paid");
    d.ack().unwrap();
    assert_eq!(hub.unauthorized_requests(), 0);

    // A wrong password and no credentials: Error::Auth at once.
    let e = connect(&format!("ws://app:wrong-s3cret@127.0.0.1:{port}/"))
        .await
        .err()
        .expect("a wrong password is refused");
    assert_auth_error_without_password(&e);
    assert!(e.to_string().contains("\"app\""), "{e}");
    let e = connect(&format!("ws://127.0.0.1:{port}/"))
        .await
        .err()
        .expect("no credentials are refused");
    assert_auth_error_without_password(&e);

    // A bare WebSocket client sees the 401 and the challenge.
    match tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/")).await {
        Err(WsError::Http(response)) => {
            assert_eq!(response.status(), 401);
            assert_eq!(
                response.headers().get("www-authenticate").unwrap(),
                "Basic realm=\"polybridge\""
            );
        }
        other => panic!("expected a 401, got {:?}", other.map(|(_, r)| r.status())),
    }
    assert_eq!(hub.unauthorized_requests(), 3);

    // With the header, the same bare client is let in.
    let mut request = format!("ws://127.0.0.1:{port}/")
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "authorization",
        BasicAuth::new("app", "right-s3cret")
            .header_value()
            .parse()
            .unwrap(),
    );
    tokio_tungstenite::connect_async(request)
        .await
        .expect("a bare client with the header");
    assert_eq!(hub.unauthorized_requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_authenticated_guards_a_hub_in_front_of_any_backend() {
    let backend: Arc<dyn Broker> = Arc::new(
        polybridge_memory::MemoryBroker::connect(
            &format!("memory://wsauth{}", std::process::id())
                .parse()
                .unwrap(),
        )
        .unwrap(),
    );
    let hub = WsHub::bind_authenticated(
        "127.0.0.1:0",
        backend,
        BasicAuth::new("svc", "hub-s3cret"),
        None,
    )
    .await
    .unwrap();
    let port = hub.local_addr().port();
    let client = connect(&format!("ws://svc:hub-s3cret@127.0.0.1:{port}/"))
        .await
        .expect("the right password");
    client
        .publish("t", &Message::new("x"), Deadline::after(WAIT))
        .await
        .expect("a publish through the authenticated hub");
    let e = connect(&format!("ws://svc:s3cret@127.0.0.1:{port}/"))
        .await
        .err()
        .expect("a wrong password is refused");
    assert_auth_error_without_password(&e);
    assert_eq!(hub.unauthorized_requests(), 1);
}
