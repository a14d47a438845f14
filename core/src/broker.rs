//! A connected broker: publisher, subscriber and what it can do.

use crate::capabilities::Capabilities;
use crate::publish::Publisher;
use crate::subscribe::Subscriber;
use crate::url::BrokerUrl;

/// A connection to one broker, as every adapter offers it.
pub trait Broker: Publisher + Subscriber {
    /// The adapter's name, e.g. `"nats"`, used in errors, logs and metrics.
    fn name(&self) -> &'static str;
    /// What this adapter, in its configured mode, can do.
    fn capabilities(&self) -> &Capabilities;
    /// The URL it was connected with (prints with the password redacted).
    fn url(&self) -> &BrokerUrl;
}
