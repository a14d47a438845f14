//! The broker-neutral messaging contract of polybridge.
//!
//! One abstraction — publish, subscribe, ack/nack — that every adapter implements
//! (RabbitMQ, Kafka, NATS, Redis, MQTT, STOMP, and the in-memory reference broker), so a
//! service writes its messaging code once and picks the broker by URL.
//!
//! The contract is built so that at-least-once holds by construction:
//! - [`Publisher::publish`] resolves only once the broker confirmed the message.
//! - A [`Delivery`] is settled only through its [`AckHandle`], which settles once; dropping
//!   it unsettled nacks it, so nothing is acknowledged by accident.
//! - Subscriptions are bounded by [`Subscription::max_in_flight`].
//! - Every waiting call takes a [`Deadline`].
//!
//! This crate holds no broker code. Adapters live in `polybridge-<broker>` crates; the
//! `polybridge` crate re-exports this one and picks an adapter from a URL.

pub mod basic_auth;
pub mod broker;
pub mod capabilities;
pub mod deadline;
pub mod delivery;
pub mod envelope;
pub mod error;
pub mod message;
pub mod publish;
pub mod subscribe;
#[cfg(feature = "tls")]
pub mod tls;
pub mod topic;
pub mod url;

pub use basic_auth::BasicAuth;
pub use broker::Broker;
pub use capabilities::{Capabilities, DeliveryGuarantee, HeaderSupport, Ordering, Wildcards};
pub use deadline::{parse_duration, Deadline};
pub use delivery::{AckHandle, Acknowledger, Delivery, DeliveryInfo, Position, Settlement};
pub use error::{BoxError, Error, Result};
pub use message::{new_message_id, well_known, HeaderValue, Headers, Message};
pub use publish::{Outgoing, Publisher, Receipt};
pub use subscribe::{
    DeliveryStream, StartPosition, Subscriber, Subscription, DEFAULT_MAX_IN_FLIGHT,
};
pub use topic::{PatternError, Segment, Syntax, TopicPattern};
pub use url::{redact_text, BrokerUrl};

pub use bytes::Bytes;
