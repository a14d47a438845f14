//! `ws[s]://[user:password@]host:port[/path][?connect_timeout=5s&serve=true&max_payload=BYTES&ca_file=…&tls_cert=…&tls_key=…]`

use std::time::Duration;

use polybridge_core::{BasicAuth, BrokerUrl, Error, Result};

use crate::BROKER;

/// Settings of a connection to a hub, from its URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WsConfig {
    /// The hub's host (no brackets).
    pub host: String,
    /// The hub's port.
    pub port: u16,
    /// `wss://`.
    pub tls: bool,
    /// `wss`: PEM certificates trusted besides the Mozilla roots (`ca_file`).
    pub ca_file: Option<String>,
    /// `wss` with `serve=true`: the hub's PEM certificate chain (`tls_cert`).
    pub tls_cert: Option<String>,
    /// `wss` with `serve=true`: the PEM private key of `tls_cert` (`tls_key`).
    pub tls_key: Option<String>,
    /// The URL to connect to, without options.
    pub endpoint: String,
    /// Time allowed to connect and receive the hub's `welcome` (`connect_timeout`).
    pub connect_timeout: Duration,
    /// `serve=true`: run the hub at `host:port` in this process over a new in-memory
    /// broker, instead of connecting to one.
    pub serve: Option<String>,
    /// `serve=true`: the in-memory backend's largest payload (`max_payload`).
    pub max_payload: Option<usize>,
    /// `user:password@` of the URL: HTTP Basic credentials a client sends with its upgrade
    /// request and a hub (`serve=true`) requires (`Debug` redacts the password).
    pub auth: Option<BasicAuth>,
}

impl WsConfig {
    /// Reads the config from a `ws://` URL.
    pub fn from_url(url: &BrokerUrl) -> Result<Self> {
        let tls = match url.scheme() {
            "ws" => false,
            "wss" => true,
            other => {
                return Err(Error::config(
                    BROKER,
                    format!("expected a ws:// or wss:// URL, got scheme {other:?} in {url}"),
                ))
            }
        };
        url.check_options(
            BROKER,
            &[
                "connect_timeout",
                "serve",
                "max_payload",
                "ca_file",
                "tls_cert",
                "tls_key",
            ],
        )?;
        let host = url
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| Error::config(BROKER, format!("no host in {url}")))?;
        let port = url
            .as_url()
            .port_or_known_default()
            .unwrap_or(if tls { 443 } else { 80 });
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
        let text = |name: &str| url.option(name).map(str::to_owned);
        let (ca_file, tls_cert, tls_key) = (text("ca_file"), text("tls_cert"), text("tls_key"));
        if !tls && (ca_file.is_some() || tls_cert.is_some() || tls_key.is_some()) {
            return Err(Error::config(
                BROKER,
                format!("ca_file, tls_cert and tls_key need a wss:// URL, got {url}"),
            ));
        }
        if tls && serve && (tls_cert.is_none() || tls_key.is_none()) {
            return Err(Error::config(
                BROKER,
                format!("serving wss:// needs tls_cert and tls_key (PEM files) in {url}"),
            ));
        }
        Ok(WsConfig {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            tls,
            ca_file,
            tls_cert,
            tls_key,
            serve: serve.then(|| format!("{host}:{port}")),
            max_payload,
            auth: BasicAuth::from_url(url),
            endpoint: format!(
                "{}://{host}:{port}{}",
                if tls { "wss" } else { "ws" },
                url.as_url().path()
            ),
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
        let c = WsConfig::from_url(&"wss://h/x?ca_file=ca.pem".parse().unwrap()).unwrap();
        assert_eq!(
            (c.endpoint.as_str(), c.ca_file.as_deref()),
            ("wss://h:443/x", Some("ca.pem"))
        );
        let e = WsConfig::from_url(&"wss://h?serve=true".parse().unwrap()).unwrap_err();
        assert!(e.to_string().contains("tls_cert"), "{e}");
        let c = WsConfig::from_url(&"wss://u:secret@h/x".parse().unwrap()).unwrap();
        assert_eq!(c.auth, Some(BasicAuth::new("u", "secret")));
        assert_eq!(c.endpoint, "wss://h:443/x");
        let debug = format!("{c:?}");
        assert!(
            debug.contains("\"u\"") && !debug.contains("secret"),
            "{debug}"
        );
        let e = WsConfig::from_url(&"ws://u:secret@h?x=1".parse().unwrap()).unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
    }
}
