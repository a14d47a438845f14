//! `mqtt://[user:password@]host[:port][?option=value&…]`
//!
//! See the crate documentation for every option.

use std::time::Duration;

use bytes::Bytes;
use polybridge_core::{BrokerUrl, Error, Result};

use crate::BROKER;

/// The port MQTT brokers listen on unless the URL says otherwise.
pub const DEFAULT_PORT: u16 = 1883;
/// Default port of `mqtts://`.
pub const DEFAULT_TLS_PORT: u16 = 8883;

/// The protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (`version=3.1.1`).
    V311,
    /// MQTT 5 (`version=5`, the default).
    V5,
}

/// What a publish carries with MQTT 3.1.1 (which has no properties).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The payload only.
    Raw,
    /// The polybridge JSON envelope (id, headers, key, …).
    Envelope,
}

/// The last will, from `will_topic` and friends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Will {
    /// Topic of the will.
    pub topic: String,
    /// Its payload.
    pub payload: Bytes,
    /// Its QoS.
    pub qos: u8,
    /// Whether it is retained.
    pub retain: bool,
}

/// Settings of an MQTT connection, from its URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MqttConfig {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// User name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// `version=5|3.1.1` (default 5).
    pub version: Version,
    /// `client_id`: the base of every client id this connection uses (default
    /// `polybridge-<random>`).
    pub client_id: String,
    /// Whether `client_id` was given (sessions can then be resumed across restarts).
    pub stable_client_id: bool,
    /// `clean_session` (default `false` with a `client_id`, `true` without).
    pub clean_session: bool,
    /// `qos=0|1|2` for publishes and subscriptions (default 1).
    pub qos: u8,
    /// `retain=true` publishes retained messages.
    pub retain: bool,
    /// `keep_alive` (default 30s).
    pub keep_alive: Duration,
    /// `shared=true|false` (default true): consumer groups as `$share/<group>/<filter>`.
    pub shared_subscriptions: bool,
    /// `max_payload` (default 1 MiB).
    pub max_payload: usize,
    /// `format=raw|envelope` for MQTT 3.1.1 (default raw).
    pub format: Format,
    /// `message_expiry` of MQTT 5 publishes.
    pub message_expiry: Option<Duration>,
    /// `session_expiry` of MQTT 5 persistent sessions (default 1h).
    pub session_expiry_secs: u32,
    /// The last will, from `will_topic`, `will_payload`, `will_qos`, `will_retain`.
    pub will: Option<Will>,
    /// `mqtts://` (or `tls=true`): TLS, with these certificate files.
    pub tls: Option<TlsFiles>,
}

pub use polybridge_core::tls::TlsFiles;

const OPTIONS: &[&str] = &[
    "version",
    "client_id",
    "clean_session",
    "qos",
    "retain",
    "keep_alive",
    "shared",
    "max_payload",
    "format",
    "message_expiry",
    "session_expiry",
    "will_topic",
    "will_payload",
    "will_qos",
    "will_retain",
    "tls",
    "ca_file",
    "cert_file",
    "key_file",
];

impl MqttConfig {
    /// Reads the config from an `mqtt://` URL.
    pub fn from_url(url: &BrokerUrl) -> Result<Self> {
        if !matches!(url.scheme(), "mqtt" | "mqtts") {
            return Err(Error::config(
                BROKER,
                format!("expected an mqtt:// or mqtts:// URL, got {url}"),
            ));
        }
        url.check_options(BROKER, OPTIONS)?;
        let (host, port) = url
            .hosts(if url.scheme() == "mqtts" {
                DEFAULT_TLS_PORT
            } else {
                DEFAULT_PORT
            })
            .into_iter()
            .next()
            .ok_or_else(|| Error::config(BROKER, format!("no host in {url}")))?;
        let version = match url.option("version") {
            None | Some("5") | Some("5.0") => Version::V5,
            Some("3.1.1") | Some("4") => Version::V311,
            Some(other) => {
                return Err(Error::config(
                    BROKER,
                    format!("option version={other:?} in {url}: use 5 or 3.1.1"),
                ))
            }
        };
        let given_id = url.option("client_id").map(str::to_owned);
        if let Some(id) = &given_id {
            if id.is_empty() || id.len() > 200 {
                return Err(Error::config(
                    BROKER,
                    format!("option client_id in {url} must be 1 to 200 characters"),
                ));
            }
        }
        let stable_client_id = given_id.is_some();
        let clean_session = url
            .parse_option::<bool>(BROKER, "clean_session")?
            .unwrap_or(!stable_client_id);
        let qos = url.parse_option::<u8>(BROKER, "qos")?.unwrap_or(1);
        if qos > 2 {
            return Err(Error::config(
                BROKER,
                format!("option qos={qos} in {url}: use 0, 1 or 2"),
            ));
        }
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
        let max_payload = url
            .parse_option::<usize>(BROKER, "max_payload")?
            .unwrap_or(1024 * 1024);
        if max_payload > 180 * 1024 * 1024 {
            return Err(Error::config(
                BROKER,
                format!("option max_payload in {url} exceeds 180 MiB (MQTT packets are at most 256 MiB, and envelopes grow by a third)"),
            ));
        }
        let will = match url.option("will_topic") {
            None => None,
            Some(topic) => Some(Will {
                topic: topic.to_owned(),
                payload: Bytes::from(url.option("will_payload").unwrap_or("").to_owned()),
                qos: url
                    .parse_option::<u8>(BROKER, "will_qos")?
                    .unwrap_or(1)
                    .min(2),
                retain: url
                    .parse_option::<bool>(BROKER, "will_retain")?
                    .unwrap_or(false),
            }),
        };
        let tls = TlsFiles::from_url(BROKER, url, &["mqtts"])?;
        Ok(MqttConfig {
            tls,
            host,
            port,
            username: url.username(),
            password: url.password(),
            version,
            client_id: given_id
                .unwrap_or_else(|| format!("polybridge-{}", polybridge_core::new_message_id())),
            stable_client_id,
            clean_session,
            qos,
            retain: url.parse_option::<bool>(BROKER, "retain")?.unwrap_or(false),
            keep_alive: url
                .duration_option(BROKER, "keep_alive")?
                .unwrap_or(Duration::from_secs(30))
                .max(Duration::from_secs(5)),
            shared_subscriptions: url.parse_option::<bool>(BROKER, "shared")?.unwrap_or(true),
            max_payload,
            format,
            message_expiry: url.duration_option(BROKER, "message_expiry")?,
            session_expiry_secs: url
                .duration_option(BROKER, "session_expiry")?
                .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
                .unwrap_or(3600),
            will,
        })
    }

    /// The packet size limit given to the client: the payload limit plus room for the
    /// topic (up to 64 KiB) and properties; with envelopes, room for base64 (4/3) and the
    /// envelope's fields too.
    pub fn max_packet_size(&self) -> usize {
        match self.format {
            Format::Raw => self.max_payload + 70_000,
            Format::Envelope => self.max_payload / 3 * 4 + 4 + 200_000,
        }
    }

    /// Whether messages travel with their metadata (MQTT 5, or 3.1.1 with envelopes).
    pub fn carries_metadata(&self) -> bool {
        self.version == Version::V5 || self.format == Format::Envelope
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(url: &str) -> Result<MqttConfig> {
        MqttConfig::from_url(&url.parse().unwrap())
    }

    #[test]
    fn reads_versions_sessions_and_options() {
        let c = config("mqtt://h").unwrap();
        assert_eq!((c.version, c.port, c.qos), (Version::V5, 1883, 1));
        assert!(c.clean_session && !c.stable_client_id);
        let c =
            config("mqtt://u:p@h:1884?version=3.1.1&client_id=svc&qos=2&format=envelope").unwrap();
        assert_eq!(
            (c.version, c.qos, c.format),
            (Version::V311, 2, Format::Envelope)
        );
        assert!(
            !c.clean_session,
            "a stable client id gets a persistent session"
        );
        assert_eq!(
            (c.username.as_deref(), c.password.as_deref()),
            (Some("u"), Some("p"))
        );
        let c =
            config("mqtt://h?will_topic=status/svc&will_payload=gone&will_retain=true").unwrap();
        assert_eq!(c.will.unwrap().payload, Bytes::from_static(b"gone"));
    }

    #[test]
    fn refuses_bad_options_without_the_password() {
        for (url, expected) in [
            ("mqtt://u:pw@h?version=6", "use 5 or 3.1.1"),
            ("mqtt://u:pw@h?qos=3", "use 0, 1 or 2"),
            ("mqtt://u:pw@h?format=xml", "use raw or envelope"),
            ("mqtt://u:pw@h?max_payload=999999999", "180 MiB"),
            ("mqtt://u:pw@h?qs=1", "unknown option"),
        ] {
            let e = config(url).unwrap_err().to_string();
            assert!(e.contains(expected), "{url}: {e}");
            assert!(!e.contains(":pw@"), "{url}: {e}");
        }
    }
}
