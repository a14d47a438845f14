//! `ws://host:port[/path][?connect_timeout=5s&serve=true&max_payload=BYTES]`

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
    /// `serve=true`: run the hub at `host:port` in this process over a new in-memory
    /// broker, instead of connecting to one.
    pub serve: Option<String>,
    /// `serve=true`: the in-memory backend's largest payload (`max_payload`).
    pub max_payload: Option<usize>,
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
        url.check_options(BROKER, &["connect_timeout", "serve", "max_payload"])?;
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
        let serve = url.parse_option::<bool>(BROKER, "serve")?.unwrap_or(false);
        let max_payload = url.parse_option(BROKER, "max_payload")?;
        if max_payload.is_some() && !serve {
            return Err(Error::config(
                BROKER,
                format!("max_payload is an option of serve=true (the hub's backend) in {url}; a client learns the limit from the hub"),
            ));
        }
        Ok(WsConfig {
            serve: serve.then(|| format!("{host}:{port}")),
            max_payload,
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
        let c = WsConfig::from_url(
            &"ws://0.0.0.0:8090/?serve=true&max_payload=10"
                .parse()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            (c.serve.as_deref(), c.max_payload),
            (Some("0.0.0.0:8090"), Some(10))
        );
        let e = WsConfig::from_url(&"ws://h?x=1".parse().unwrap()).unwrap_err();
        assert!(e.to_string().contains("unknown option \"x\""), "{e}");
        assert!(matches!(
            WsConfig::from_url(&"wss://h".parse().unwrap()),
            Err(Error::Unsupported { .. })
        ));
    }
}
