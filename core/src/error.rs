//! The one error type every adapter returns.
//!
//! Each variant names the broker (`"nats"`, `"amqp"`, …) and, where there is one, the
//! destination and the cause. Endpoints are always printed with the password redacted
//! (see [`crate::BrokerUrl`]); adapters never put a secret into an error.

use std::time::Duration;

use crate::topic::PatternError;

/// A boxed underlying cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong talking to a broker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The broker cannot be reached or the connection broke. Retryable.
    #[error("{broker}: cannot connect to {endpoint}: {reason}")]
    Connection {
        /// Broker name, e.g. `"nats"`.
        broker: &'static str,
        /// The endpoint, password redacted.
        endpoint: String,
        /// What happened.
        reason: String,
        /// The underlying cause.
        #[source]
        source: Option<BoxError>,
    },
    /// Credentials were refused. Not retryable: retrying the same password will not help.
    #[error("{broker}: authentication to {endpoint} failed: {reason}")]
    Auth {
        /// Broker name.
        broker: &'static str,
        /// The endpoint, password redacted.
        endpoint: String,
        /// What the broker said.
        reason: String,
    },
    /// A failure that may pass: a broker busy, a leader election, a full buffer. Retryable.
    #[error("{broker}: temporary failure on {destination}: {reason}")]
    Transient {
        /// Broker name.
        broker: &'static str,
        /// The topic, queue or subject involved.
        destination: String,
        /// What happened.
        reason: String,
        /// The underlying cause.
        #[source]
        source: Option<BoxError>,
    },
    /// A failure that will happen again for the same input: an unknown queue, a refused
    /// message, a broker nack. Not retryable as is.
    #[error("{broker}: {destination}: {reason}")]
    Permanent {
        /// Broker name.
        broker: &'static str,
        /// The topic, queue or subject involved.
        destination: String,
        /// What happened.
        reason: String,
        /// The underlying cause.
        #[source]
        source: Option<BoxError>,
    },
    /// The adapter cannot do what was asked (see [`crate::Capabilities`]).
    #[error("{broker} does not support {feature}")]
    Unsupported {
        /// Broker name.
        broker: &'static str,
        /// What was asked for, and why it cannot be done.
        feature: String,
    },
    /// The payload is larger than the broker accepts. Nothing was sent.
    #[error("{broker}: message of {size} bytes for {destination} exceeds the broker's limit of {limit} bytes")]
    PayloadTooLarge {
        /// Broker name.
        broker: &'static str,
        /// Where it was going.
        destination: String,
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The URL or options are wrong.
    #[error("{broker}: invalid configuration: {reason}")]
    Config {
        /// Broker name (or `"polybridge"` before a broker is chosen).
        broker: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The publisher, subscription or connection was closed.
    #[error("{broker}: {what} is closed")]
    Closed {
        /// Broker name.
        broker: &'static str,
        /// What was closed, e.g. `"the subscription to orders.*"`.
        what: String,
    },
    /// The deadline passed before the broker answered. Whether the broker acted is unknown:
    /// retrying may duplicate (at-least-once).
    #[error("{broker}: {operation} on {destination} did not complete within {after:?}")]
    Timeout {
        /// Broker name.
        broker: &'static str,
        /// What was being done, e.g. `"publish"`.
        operation: &'static str,
        /// The topic, queue or subject involved.
        destination: String,
        /// How long was allowed.
        after: Duration,
    },
    /// A topic pattern is invalid or cannot be expressed by this broker.
    #[error(transparent)]
    Pattern(#[from] PatternError),
}

impl Error {
    /// Whether trying the same operation again later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Connection { .. } | Error::Transient { .. } | Error::Timeout { .. }
        )
    }

    /// The broker this error is about.
    pub fn broker(&self) -> &'static str {
        match self {
            Error::Connection { broker, .. }
            | Error::Auth { broker, .. }
            | Error::Transient { broker, .. }
            | Error::Permanent { broker, .. }
            | Error::Unsupported { broker, .. }
            | Error::PayloadTooLarge { broker, .. }
            | Error::Config { broker, .. }
            | Error::Closed { broker, .. }
            | Error::Timeout { broker, .. } => broker,
            Error::Pattern(_) => "polybridge",
        }
    }

    /// A short, stable name for the kind of error, for metrics labels and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Connection { .. } => "connection",
            Error::Auth { .. } => "auth",
            Error::Transient { .. } => "transient",
            Error::Permanent { .. } => "permanent",
            Error::Unsupported { .. } => "unsupported",
            Error::PayloadTooLarge { .. } => "payload_too_large",
            Error::Config { .. } => "config",
            Error::Closed { .. } => "closed",
            Error::Timeout { .. } => "timeout",
            Error::Pattern(_) => "pattern",
        }
    }

    /// Shorthand for [`Error::Transient`] without a source.
    pub fn transient(
        broker: &'static str,
        destination: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Error::Transient {
            broker,
            destination: destination.into(),
            reason: reason.into(),
            source: None,
        }
    }

    /// Shorthand for [`Error::Permanent`] without a source.
    pub fn permanent(
        broker: &'static str,
        destination: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Error::Permanent {
            broker,
            destination: destination.into(),
            reason: reason.into(),
            source: None,
        }
    }

    /// Shorthand for [`Error::Unsupported`].
    pub fn unsupported(broker: &'static str, feature: impl Into<String>) -> Self {
        Error::Unsupported {
            broker,
            feature: feature.into(),
        }
    }

    /// Shorthand for [`Error::Config`].
    pub fn config(broker: &'static str, reason: impl Into<String>) -> Self {
        Error::Config {
            broker,
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Closed`].
    pub fn closed(broker: &'static str, what: impl Into<String>) -> Self {
        Error::Closed {
            broker,
            what: what.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_broker_destination_and_cause() {
        let e = Error::PayloadTooLarge {
            broker: "nats",
            destination: "orders".into(),
            size: 2_000_000,
            limit: 1_048_576,
        };
        assert_eq!(
            e.to_string(),
            "nats: message of 2000000 bytes for orders exceeds the broker's limit of 1048576 bytes"
        );
        assert!(!e.is_retryable());
        assert_eq!(e.kind(), "payload_too_large");
        let t = Error::transient("amqp", "q1", "channel closed");
        assert!(t.is_retryable());
        assert_eq!(
            t.to_string(),
            "amqp: temporary failure on q1: channel closed"
        );
        assert_eq!(t.broker(), "amqp");
    }
}
