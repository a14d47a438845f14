//! `redis[s]://[[user]:password@]host[:port][/db][?option=value&…]`
//!
//! See the crate documentation for every option.

use std::time::Duration;

use polybridge_core::{BrokerUrl, Error, Result};

use crate::BROKER;

/// How messages travel through Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Streams with consumer groups: at least once (the default).
    Streams,
    /// `PUBLISH`/`SUBSCRIBE`: at most once.
    PubSub,
    /// Lists as a reliable queue: at least once, competing consumers.
    Lists,
}

/// What a pub/sub message or list element holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The payload only: any Redis client reads and writes it.
    Raw,
    /// A JSON envelope with id, headers, key and the rest.
    Envelope,
}

/// Settings of a Redis connection, from its URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisConfig {
    /// `mode=streams|pubsub|lists` (default `streams`).
    pub mode: Mode,
    /// `format=raw|envelope` for pub/sub and lists (default `raw`).
    pub format: Format,
    /// `maxlen=N`: streams are trimmed to about N entries on `XADD` (`MAXLEN ~`).
    pub maxlen: Option<u64>,
    /// `claim_idle` (default 30s): a stream entry pending this long with a consumer that
    /// does not answer is claimed by another consumer (`XAUTOCLAIM`); held deliveries are
    /// kept younger than this while their subscription runs.
    pub claim_idle: Duration,
    /// `max_deliveries=N` (default 0 = unlimited): a stream entry or list element delivered
    /// N times goes to the dead-letter destination instead of an N+1th delivery.
    pub max_deliveries: u32,
    /// `block` (default 1s): how long one blocking read waits.
    pub block: Duration,
    /// `consumer_timeout` (default 10s): a list consumer whose heartbeat is older than
    /// this is dead, and its processing list goes back to the queue.
    pub consumer_timeout: Duration,
    /// `connect_timeout` (default 5s).
    pub connect_timeout: Duration,
    /// `rediss://` only: PEM file of the CA(s) to trust instead of the system's
    /// (`ca_file`), and a client certificate and key for mutual TLS (`cert_file`,
    /// `key_file`, both or neither).
    pub tls: TlsFiles,
}

/// Certificate files of a `rediss://` connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificates (PEM) to trust instead of the system's.
    pub ca_file: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    pub cert_file: Option<std::path::PathBuf>,
    /// Client private key (PEM) for mutual TLS.
    pub key_file: Option<std::path::PathBuf>,
}

const OPTIONS: &[&str] = &[
    "mode",
    "format",
    "maxlen",
    "claim_idle",
    "max_deliveries",
    "block",
    "consumer_timeout",
    "connect_timeout",
    "ca_file",
    "cert_file",
    "key_file",
];

impl RedisConfig {
    /// Reads the config from a `redis://` or `rediss://` URL.
    pub fn from_url(url: &BrokerUrl) -> Result<Self> {
        if !matches!(url.scheme(), "redis" | "rediss") {
            return Err(Error::config(
                BROKER,
                format!("expected a redis:// or rediss:// URL, got {url}"),
            ));
        }
        url.check_options(BROKER, OPTIONS)?;
        let path = url.path();
        let db = path.trim_matches('/');
        if !db.is_empty() && db.parse::<u32>().is_err() {
            return Err(Error::config(
                BROKER,
                format!("the path of {url} must be a database number, e.g. /0"),
            ));
        }
        let mode = match url.option("mode") {
            None | Some("streams") => Mode::Streams,
            Some("pubsub") => Mode::PubSub,
            Some("lists") => Mode::Lists,
            Some(other) => {
                return Err(Error::config(
                    BROKER,
                    format!("option mode={other:?} in {url}: use streams, pubsub or lists"),
                ))
            }
        };
        let format = match url.option("format") {
            None | Some("raw") => Format::Raw,
            Some("envelope") => Format::Envelope,
            Some(other) => {
                return Err(Error::config(
                    BROKER,
                    format!("option format={other:?} in {url}: use raw or envelope"),
                ))
            }
        };
        if mode == Mode::Streams && url.option("format").is_some() {
            return Err(Error::config(
                BROKER,
                format!("option format in {url} applies to pubsub and lists; streams carry every field natively"),
            ));
        }
        let claim_idle = url
            .duration_option(BROKER, "claim_idle")?
            .unwrap_or(Duration::from_secs(30));
        if claim_idle < Duration::from_millis(100) {
            return Err(Error::config(
                BROKER,
                format!("option claim_idle in {url} must be at least 100ms"),
            ));
        }
        let consumer_timeout = url
            .duration_option(BROKER, "consumer_timeout")?
            .unwrap_or(Duration::from_secs(10));
        if consumer_timeout < Duration::from_millis(300) {
            return Err(Error::config(
                BROKER,
                format!("option consumer_timeout in {url} must be at least 300ms"),
            ));
        }
        let tls = TlsFiles {
            ca_file: url.option("ca_file").map(Into::into),
            cert_file: url.option("cert_file").map(Into::into),
            key_file: url.option("key_file").map(Into::into),
        };
        if tls != TlsFiles::default() && url.scheme() != "rediss" {
            return Err(Error::config(
                BROKER,
                format!("options ca_file, cert_file and key_file in {url} need a rediss:// URL"),
            ));
        }
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return Err(Error::config(
                BROKER,
                format!("options cert_file and key_file in {url} go together"),
            ));
        }
        Ok(RedisConfig {
            tls,
            mode,
            format,
            maxlen: url.parse_option(BROKER, "maxlen")?,
            claim_idle,
            max_deliveries: url.parse_option(BROKER, "max_deliveries")?.unwrap_or(0),
            block: url
                .duration_option(BROKER, "block")?
                .unwrap_or(Duration::from_secs(1))
                .max(Duration::from_millis(10)),
            consumer_timeout,
            connect_timeout: url
                .duration_option(BROKER, "connect_timeout")?
                .unwrap_or(Duration::from_secs(5)),
        })
    }
}

/// The URL the `redis` crate connects with: ours without polybridge's options.
pub fn client_url(url: &BrokerUrl) -> String {
    let mut u = url.as_url().clone();
    u.set_query(None);
    u.to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(url: &str) -> Result<RedisConfig> {
        RedisConfig::from_url(&url.parse().unwrap())
    }

    #[test]
    fn reads_modes_and_options() {
        let c = config("redis://h").unwrap();
        assert_eq!((c.mode, c.format), (Mode::Streams, Format::Raw));
        let c = config("redis://:pw@h:6380/2?mode=lists&format=envelope&max_deliveries=3").unwrap();
        assert_eq!(
            (c.mode, c.format, c.max_deliveries),
            (Mode::Lists, Format::Envelope, 3)
        );
        let c = config("rediss://h?maxlen=1000&claim_idle=5s").unwrap();
        assert_eq!(
            (c.maxlen, c.claim_idle),
            (Some(1000), Duration::from_secs(5))
        );
        assert_eq!(
            client_url(&"redis://:pw@h:6380/2?mode=lists".parse().unwrap()),
            "redis://:pw@h:6380/2"
        );
    }

    #[test]
    fn reads_tls_files() {
        let c = config("rediss://h?ca_file=/c.pem&cert_file=/a.pem&key_file=/k.pem").unwrap();
        assert_eq!(
            c.tls.ca_file.as_deref(),
            Some(std::path::Path::new("/c.pem"))
        );
        assert_eq!(
            c.tls.key_file.as_deref(),
            Some(std::path::Path::new("/k.pem"))
        );
        assert_eq!(config("rediss://h").unwrap().tls, TlsFiles::default());
    }

    #[test]
    fn refuses_bad_options_without_the_password() {
        for (url, expected) in [
            ("redis://:pw@h?mode=queue", "use streams, pubsub or lists"),
            (
                "redis://:pw@h?format=json&mode=lists",
                "use raw or envelope",
            ),
            ("redis://:pw@h?format=raw", "applies to pubsub and lists"),
            ("redis://:pw@h/abc", "database number"),
            ("redis://:pw@h?claim_idle=1ms", "at least 100ms"),
            ("redis://:pw@h?maxlen=lots", "maxlen"),
            ("redis://:pw@h?modes=x", "unknown option"),
            ("redis://:pw@h?ca_file=/c.pem", "need a rediss:// URL"),
            ("rediss://:pw@h?cert_file=/c.pem", "go together"),
        ] {
            let e = config(url).unwrap_err().to_string();
            assert!(e.contains(expected), "{url}: {e}");
            assert!(!e.contains(":pw@"), "{url}: {e}");
        }
    }
}
