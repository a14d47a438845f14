//! A webhook endpoint on a free loopback port per test: the broker that subscribes serves
//! it, the one that publishes POSTs to it (often the same broker).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use polybridge_http::HttpBroker;

/// A free TCP port on 127.0.0.1 (bound and released; the test binds it again at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `http://127.0.0.1:<free port>/hooks`.
pub struct Endpoint {
    pub base: String,
}

impl Endpoint {
    pub fn new() -> Endpoint {
        Endpoint {
            base: format!("http://127.0.0.1:{}/hooks", free_port()),
        }
    }

    /// The URL with `options`.
    pub fn url(&self, options: &str) -> String {
        if options.is_empty() {
            self.base.clone()
        } else {
            format!("{}?{options}", self.base)
        }
    }

    pub fn connect(&self, options: &str) -> HttpBroker {
        HttpBroker::connect(&self.url(options).parse().unwrap()).expect("http broker")
    }
}
