//! [`TestBroker`]: the broker one adapter test talks to, whichever way it was obtained — a
//! private process the test may restart or freeze, the binary's shared one, or an external
//! one from `POLYBRIDGE_<X>_URL`. The adapters' `tests/common` modules wrap it with their
//! own `connect`.

use std::sync::{Arc, Mutex};

use crate::{BrokerKind, BrokerProcess, Endpoint, HarnessError};

/// A broker for an adapter test: its URL, and the process when the test owns it.
#[derive(Debug, Clone)]
pub struct TestBroker {
    /// The URL of the endpoint the test asked for.
    pub url: String,
    /// The broker process, when this test started it (restart and freeze need it).
    pub process: Option<Arc<Mutex<BrokerProcess>>>,
}

fn skipped(kind: BrokerKind) -> bool {
    match crate::skip_reason(kind) {
        Some(reason) => {
            eprintln!("{reason}");
            true
        }
        None => false,
    }
}

fn url_or_panic(process: &BrokerProcess, kind: BrokerKind, endpoint: Endpoint) -> String {
    match process.url(endpoint) {
        Some(url) => url,
        None => panic!("{} serves no {endpoint:?} endpoint", kind.name()),
    }
}

impl TestBroker {
    /// The external broker of `POLYBRIDGE_<X>_URL` if set, else a private one started for
    /// this test (for brokers that start in milliseconds). `None`, with the reason
    /// printed, when the broker's tests are skipped. Panics when the broker cannot start:
    /// a test harness failure must fail the test.
    pub fn private_or_external(kind: BrokerKind, endpoint: Endpoint) -> Option<TestBroker> {
        if skipped(kind) {
            return None;
        }
        if let Ok(url) = std::env::var(kind.env_var(endpoint)) {
            return Some(TestBroker { url, process: None });
        }
        Self::start_private(kind, endpoint)
    }

    /// A private broker only (the test restarts or freezes it); `None`, with the reason
    /// printed, when the broker's tests are skipped or an external broker is configured.
    pub fn private(kind: BrokerKind, endpoint: Endpoint) -> Option<TestBroker> {
        if skipped(kind) {
            return None;
        }
        let var = kind.env_var(endpoint);
        if std::env::var(var).is_ok() {
            eprintln!("skipped: {var} names an external broker, which a test cannot restart");
            return None;
        }
        Self::start_private(kind, endpoint)
    }

    /// The binary's shared broker ([`crate::shared`]); `None`, with the reason printed,
    /// when the broker's tests are skipped.
    pub fn shared(kind: BrokerKind, endpoint: Endpoint) -> Option<TestBroker> {
        if skipped(kind) {
            return None;
        }
        let shared = match crate::shared(kind) {
            Ok(shared) => shared,
            Err(e) => panic!("starting the shared {}: {e}", kind.name()),
        };
        let url = match shared.url(endpoint) {
            Some(url) => url,
            None => panic!("{} serves no {endpoint:?} endpoint", kind.name()),
        };
        Some(TestBroker { url, process: None })
    }

    fn start_private(kind: BrokerKind, endpoint: Endpoint) -> Option<TestBroker> {
        let process = match crate::private(kind) {
            Ok(process) => process,
            Err(e) => panic!("starting a private {}: {e}", kind.name()),
        };
        let url = url_or_panic(&process, kind, endpoint);
        Some(TestBroker {
            url,
            process: Some(Arc::new(Mutex::new(process))),
        })
    }

    /// The URL with the query `options` (`a=1&b=2`) appended.
    pub fn url_with(&self, options: &str) -> String {
        crate::url_with(&self.url, options)
    }

    /// Restarts a private broker on the same port with the same data, blocking until it
    /// answers; `None` for a shared or external one.
    pub fn restart(&self) -> Option<Result<(), HarnessError>> {
        let process = self.process.as_ref()?;
        let mut process = process.lock().unwrap_or_else(|e| e.into_inner());
        Some(process.restart())
    }

    /// Freezes (`SIGSTOP`, `true`) or thaws (`SIGCONT`, `false`) a private broker; `None`
    /// for a shared or external one.
    pub fn freeze(&self, frozen: bool) -> Option<Result<(), HarnessError>> {
        let process = self.process.as_ref()?;
        let process = process.lock().unwrap_or_else(|e| e.into_inner());
        Some(if frozen {
            process.pause()
        } else {
            process.resume()
        })
    }
}
