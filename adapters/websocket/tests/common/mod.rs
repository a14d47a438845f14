//! A hub over a fresh in-memory broker per test, on a free loopback port.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};

use polybridge_websocket::{WsBroker, WsHub};

/// A hub whose backend is a new memory broker (64 KiB payloads keep tests cheap).
pub async fn hub() -> WsHub {
    static N: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "wstest{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    WsHub::bind_memory("127.0.0.1:0", &format!("memory://{name}?max_payload=65536"))
        .await
        .expect("start hub")
}

pub async fn connect(hub: &WsHub) -> WsBroker {
    WsBroker::connect(&hub.url().parse().unwrap())
        .await
        .expect("connect to the hub")
}

/// A free TCP port on 127.0.0.1 (bound and released; the test binds it again at once).
pub fn free_port() -> u16 {
    polybridge_testkit::free_loopback_port().expect("a free loopback port")
}
