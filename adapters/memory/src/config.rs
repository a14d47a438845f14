//! `memory://NAME?max_payload=BYTES&retention=COUNT`

use polybridge_core::{BrokerUrl, Error, Result};

/// Default largest payload: 8 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 8 * 1024 * 1024;
/// Default number of messages kept per topic for replay and late groups.
pub const DEFAULT_RETENTION: usize = 100_000;

/// Settings of an in-memory broker, from its URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryConfig {
    /// The broker's name: connections to the same name share one broker.
    pub name: String,
    /// Largest payload accepted (`max_payload`).
    pub max_payload: usize,
    /// Messages kept per topic (`retention`); older ones are dropped, and a group that had
    /// not read them yet skips them (with a warning), as a Kafka consumer would.
    pub retention: usize,
}

impl MemoryConfig {
    /// Reads the config from `memory://NAME?…` (`memory://` alone is the broker `default`).
    pub fn from_url(url: &BrokerUrl) -> Result<Self> {
        if url.scheme() != "memory" {
            return Err(Error::config(
                "memory",
                format!("expected a memory:// URL, got {url}"),
            ));
        }
        url.check_options("memory", &["max_payload", "retention"])?;
        let name = url.host().unwrap_or("").to_owned();
        let retention = url
            .parse_option("memory", "retention")?
            .unwrap_or(DEFAULT_RETENTION);
        if retention == 0 {
            return Err(Error::config(
                "memory",
                "option retention must be at least 1",
            ));
        }
        Ok(MemoryConfig {
            name: if name.is_empty() {
                "default".into()
            } else {
                name
            },
            max_payload: url
                .parse_option("memory", "max_payload")?
                .unwrap_or(DEFAULT_MAX_PAYLOAD),
            retention,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_name_and_options() {
        let c = MemoryConfig::from_url(&"memory://".parse().unwrap()).unwrap();
        assert_eq!(c.name, "default");
        assert_eq!(c.max_payload, DEFAULT_MAX_PAYLOAD);
        let c = MemoryConfig::from_url(&"memory://t1?max_payload=10&retention=5".parse().unwrap())
            .unwrap();
        assert_eq!((c.name.as_str(), c.max_payload, c.retention), ("t1", 10, 5));
        let e = MemoryConfig::from_url(&"memory://t1?maxpayload=10".parse().unwrap()).unwrap_err();
        assert!(
            e.to_string().contains("unknown option \"maxpayload\""),
            "{e}"
        );
        let e = MemoryConfig::from_url(&"nats://x".parse().unwrap()).unwrap_err();
        assert!(e.to_string().contains("memory://"), "{e}");
    }
}
