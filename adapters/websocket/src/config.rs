//! `ws://host:port[/path][?connect_timeout=5s&max_frame=BYTES]`

use std::time::Duration;

use polybridge_core::{BrokerUrl, Error, Result};

use crate::BROKER;

/// Settings of a connection to a hub, from its URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WsConfig {
    /// The URL to connect to, without options.
    pub endpoint: String,
    /// Time allowed to connect and receive the hub's `welcome` (`connect_timeout`).
    pub connect_timeout: Duration,
}

impl WsConfig {
    /// Reads the config from a `ws://` URL.
    pub fn from_url(url: &BrokerUrl) -> Result<Self> {
        match url.scheme() {
            "ws" => {}
            "wss" => {
                return Err(Error::unsupported(
                    BROKER,
                    format!("wss in {url}: this version speaks plain WebSocket; put a TLS-terminating proxy in front of the hub"),
                ))
            }
            other => {
                return Err(Error::config(
                    BROKER,
                    format!("expected a ws:// URL, got scheme {other:?} in {url}"),
                ))
            }
        }
        url.check_options(BROKER, &["connect_timeout"])?;
        if url.username().is_some() || url.password().is_some() {
            return Err(Error::unsupported(
                BROKER,
                format!("credentials in the URL {url}: the hub has no authentication yet"),
            ));
        }
        let host = url
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| Error::config(BROKER, format!("no host in {url}")))?;
        let port = url.as_url().port_or_known_default().unwrap_or(80);
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        Ok(WsConfig {
            endpoint: format!("ws://{host}:{port}{}", url.as_url().path()),
            connect_timeout: url
                .duration_option(BROKER, "connect_timeout")?
                .unwrap_or(Duration::from_secs(5)),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_endpoint_and_options() {
        let c = WsConfig::from_url(
            &"ws://127.0.0.1:9000/hub?connect_timeout=2s"
                .parse()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(c.endpoint, "ws://127.0.0.1:9000/hub");
        assert_eq!(c.connect_timeout, Duration::from_secs(2));
        let e = WsConfig::from_url(&"ws://h?x=1".parse().unwrap()).unwrap_err();
        assert!(e.to_string().contains("unknown option \"x\""), "{e}");
        assert!(matches!(
            WsConfig::from_url(&"wss://h".parse().unwrap()),
            Err(Error::Unsupported { .. })
        ));
    }
}
