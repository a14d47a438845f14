//! `http[s]://[user:password@]host[:port][/base]?option=value&…`: where publishes go and
//! where the webhook server listens.

use std::time::Duration;

use polybridge_core::{BasicAuth, BrokerUrl, Error, Result};

use crate::BROKER;

/// Default largest payload (request body): 4 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 4 * 1024 * 1024;

/// When `publish` resolves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishMode {
    /// `publish=wait` (default): once the receiving server answered 2xx, retrying before.
    Wait,
    /// `publish=queue`: once the request is queued in this process; a background task
    /// POSTs it with the same retries. `close` waits until the queue is empty.
    Queue,
}

/// Settings of an HTTP connection, from its URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    /// `https://`: TLS on both ends.
    pub tls: bool,
    /// PEM certificates trusted in addition to the Mozilla roots (`ca_file`).
    pub ca_file: Option<String>,
    /// PEM certificate chain the webhook server presents (`tls_cert`).
    pub tls_cert: Option<String>,
    /// PEM private key of `tls_cert` (`tls_key`).
    pub tls_key: Option<String>,
    /// `http://host:port/base` without options and without a trailing `/`: publishes POST
    /// to `<base>/<destination>`.
    pub base: String,
    /// The path prefix the webhook server serves (`/base`), `""` for the root.
    pub base_path: String,
    /// Address the webhook server binds when something subscribes (`listen`, default the
    /// URL's host and port).
    pub listen: String,
    /// When `publish` resolves (`publish`).
    pub publish_mode: PublishMode,
    /// Time allowed for one POST, answer included (`request_timeout`).
    pub request_timeout: Duration,
    /// First retry delay (`retry_initial`), doubled per attempt up to `retry_max`.
    pub retry_initial: Duration,
    /// Longest retry delay (`retry_max`).
    pub retry_max: Duration,
    /// `publish=queue`: how long a queued message is retried before it is dropped with an
    /// error log (`retry_for`).
    pub retry_for: Duration,
    /// Most attempts of one POST (`max_attempts`); `None` = until the deadline.
    pub max_attempts: Option<u32>,
    /// How long the webhook server waits for the subscriber to settle a delivery before
    /// answering 504 (`ack_timeout`).
    pub ack_timeout: Duration,
    /// Largest payload sent or accepted (`max_payload`); larger bodies get 413.
    pub max_payload: usize,
    /// `publish=queue`: most messages queued or being sent (`queue_size`).
    pub queue_size: usize,
    /// `user:password@` of the URL: HTTP Basic credentials the publisher sends and the
    /// webhook server requires (`Debug` redacts the password).
    pub auth: Option<BasicAuth>,
}

const OPTIONS: &[&str] = &[
    "listen",
    "publish",
    "request_timeout",
    "retry_initial",
    "retry_max",
    "retry_for",
    "max_attempts",
    "ack_timeout",
    "max_payload",
    "queue_size",
    "ca_file",
    "tls_cert",
    "tls_key",
];

impl HttpConfig {
    /// Reads the config from an `http://` URL.
    pub fn from_url(url: &BrokerUrl) -> Result<Self> {
        let tls = match url.scheme() {
            "http" => false,
            "https" => true,
            other => {
                return Err(Error::config(
                    BROKER,
                    format!("expected an http:// or https:// URL, got scheme {other:?} in {url}"),
                ))
            }
        };
        url.check_options(BROKER, OPTIONS)?;
        let host = url
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| Error::config(BROKER, format!("no host in {url}")))?;
        let port = url
            .as_url()
            .port_or_known_default()
            .unwrap_or(if tls { 443 } else { 80 });
        let path = url.as_url().path().trim_end_matches('/').to_owned();
        let base_path = if path == "/" { String::new() } else { path };
        let scheme = if tls { "https" } else { "http" };
        let base = format!("{scheme}://{}:{port}{base_path}", host_for_url(host));
        let listen = match url.option("listen") {
            Some(l) => l.to_owned(),
            None => format!("{}:{port}", host_for_url(host)),
        };
        let publish_mode = match url.option("publish") {
            None | Some("wait") => PublishMode::Wait,
            Some("queue") => PublishMode::Queue,
            Some(other) => {
                return Err(Error::config(
                    BROKER,
                    format!("option publish={other:?} in {url}: use wait or queue"),
                ))
            }
        };
        let duration = |name: &str, default: Duration| -> Result<Duration> {
            Ok(url.duration_option(BROKER, name)?.unwrap_or(default))
        };
        let text = |name: &str| url.option(name).map(str::to_owned);
        let config = HttpConfig {
            tls,
            ca_file: text("ca_file"),
            tls_cert: text("tls_cert"),
            tls_key: text("tls_key"),
            base,
            base_path,
            listen,
            publish_mode,
            request_timeout: duration("request_timeout", Duration::from_secs(60))?,
            retry_initial: duration("retry_initial", Duration::from_millis(100))?,
            retry_max: duration("retry_max", Duration::from_secs(10))?,
            retry_for: duration("retry_for", Duration::from_secs(300))?,
            max_attempts: url.parse_option(BROKER, "max_attempts")?,
            ack_timeout: duration("ack_timeout", Duration::from_secs(30))?,
            max_payload: url
                .parse_option(BROKER, "max_payload")?
                .unwrap_or(DEFAULT_MAX_PAYLOAD),
            queue_size: url.parse_option(BROKER, "queue_size")?.unwrap_or(1024),
            auth: BasicAuth::from_url(url),
        };
        if !tls
            && (config.tls_cert.is_some() || config.tls_key.is_some() || config.ca_file.is_some())
        {
            return Err(Error::config(
                BROKER,
                format!("ca_file, tls_cert and tls_key need an https:// URL, got {url}"),
            ));
        }
        if config.tls_cert.is_some() != config.tls_key.is_some() {
            return Err(Error::config(
                BROKER,
                format!("tls_cert and tls_key go together in {url}"),
            ));
        }
        if config.queue_size == 0 || config.max_attempts == Some(0) {
            return Err(Error::config(
                BROKER,
                format!("queue_size and max_attempts must be at least 1 in {url}"),
            ));
        }
        Ok(config)
    }
}

fn host_for_url(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_base_listen_and_options() {
        let c = HttpConfig::from_url(
            &"http://127.0.0.1:8080/hooks/?publish=queue&ack_timeout=5s"
                .parse()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(c.base, "http://127.0.0.1:8080/hooks");
        assert_eq!(c.base_path, "/hooks");
        assert_eq!(c.listen, "127.0.0.1:8080");
        assert_eq!(c.publish_mode, PublishMode::Queue);
        assert_eq!(c.ack_timeout, Duration::from_secs(5));
        let c = HttpConfig::from_url(&"http://example.com?listen=0.0.0.0:9000".parse().unwrap())
            .unwrap();
        assert_eq!(
            (c.base.as_str(), c.base_path.as_str(), c.listen.as_str()),
            ("http://example.com:80", "", "0.0.0.0:9000")
        );
        let e = HttpConfig::from_url(&"http://h?retries=3".parse().unwrap()).unwrap_err();
        assert!(e.to_string().contains("unknown option \"retries\""), "{e}");
        let c = HttpConfig::from_url(&"https://h/x?ca_file=/ca.pem".parse().unwrap()).unwrap();
        assert_eq!(
            (c.base.as_str(), c.ca_file.as_deref()),
            ("https://h:443/x", Some("/ca.pem"))
        );
        let e = HttpConfig::from_url(&"http://h?tls_cert=c.pem&tls_key=k.pem".parse().unwrap())
            .unwrap_err();
        assert!(e.to_string().contains("https://"), "{e}");
        let e = HttpConfig::from_url(&"https://h?tls_cert=c.pem".parse().unwrap()).unwrap_err();
        assert!(e.to_string().contains("together"), "{e}");
        let c = HttpConfig::from_url(&"https://u:secret@h/x".parse().unwrap()).unwrap();
        assert_eq!(c.auth, Some(BasicAuth::new("u", "secret")));
        assert_eq!(c.base, "https://h:443/x");
        let debug = format!("{c:?}");
        assert!(
            debug.contains("\"u\"") && !debug.contains("secret"),
            "{debug}"
        );
        let e = HttpConfig::from_url(&"http://u:secret@h?x=1".parse().unwrap()).unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
    }
}
