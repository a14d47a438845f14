//! Configuration from a `stomp://` URL.

use std::time::Duration;

use polybridge_core::{BrokerUrl, Error, Result};

use crate::BROKER;

/// Default STOMP port.
pub const DEFAULT_PORT: u16 = 61613;

/// Which broker's conventions to follow for destinations, groups and `NACK`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// Apache ActiveMQ (classic, 5.x).
    ActiveMq,
    /// The RabbitMQ STOMP plugin.
    RabbitMq,
    /// Any other STOMP 1.2 server: plain names map to `/topic/`, no consumer groups.
    Generic,
}

impl Flavor {
    /// The flavor named by a CONNECTED frame's `server` header (`ActiveMQ/5.17.6`,
    /// `RabbitMQ/3.12.1`).
    pub fn from_server(server: Option<&str>) -> Flavor {
        let s = server.unwrap_or_default().to_ascii_lowercase();
        if s.starts_with("activemq") {
            Flavor::ActiveMq
        } else if s.starts_with("rabbitmq") {
            Flavor::RabbitMq
        } else {
            Flavor::Generic
        }
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Flavor::ActiveMq => "activemq",
            Flavor::RabbitMq => "rabbitmq",
            Flavor::Generic => "generic",
        }
    }
}

/// Everything the URL configures. `Debug` never prints the passcode.
#[derive(Clone)]
pub struct StompConfig {
    /// The URL (prints with the password redacted).
    pub url: BrokerUrl,
    /// `host:port`.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Login, if any.
    pub login: Option<String>,
    /// Passcode, if any. Never logged.
    pub(crate) passcode: Option<String>,
    /// The CONNECT `host` header (RabbitMQ: the virtual host).
    pub vhost: String,
    /// Heart-beats: how often we send, how often we want to hear from the server.
    pub heartbeat: (Duration, Duration),
    /// Fixed prefetch for every subscription; `None` = the in-flight limit.
    pub prefetch: Option<usize>,
    /// `None` = detect from the server.
    pub flavor: Option<Flavor>,
    /// Default dead-letter destination; `None` = `/queue/<topic>.dlq`.
    pub dead_letter: Option<String>,
    /// Time allowed for TCP connect plus the CONNECT/CONNECTED exchange.
    pub connect_timeout: Duration,
    /// Time allowed for a RECEIPT of a SUBSCRIBE or a dead-letter SEND.
    pub receipt_timeout: Duration,
    /// Largest incoming frame.
    pub max_frame: usize,
    /// Largest payload `publish` accepts; `None` = no check by the adapter.
    pub max_payload: Option<usize>,
    /// ActiveMQ: the fewest publishes queued together that go out in one transaction
    /// (group commit, `group_commit=N`); `None` = never (the default, and `group_commit=0`).
    pub group_commit: Option<usize>,
    /// TLS (`stomp+ssl://` or `tls=true`), with these certificate files.
    pub tls: Option<TlsFiles>,
}

pub use polybridge_core::tls::TlsFiles;

impl std::fmt::Debug for StompConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StompConfig")
            .field("url", &self.url)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("login", &self.login)
            .field("passcode", &self.passcode.as_ref().map(|_| "***"))
            .field("vhost", &self.vhost)
            .field("heartbeat", &self.heartbeat)
            .field("prefetch", &self.prefetch)
            .field("flavor", &self.flavor)
            .field("dead_letter", &self.dead_letter)
            .field("connect_timeout", &self.connect_timeout)
            .field("receipt_timeout", &self.receipt_timeout)
            .field("max_frame", &self.max_frame)
            .field("max_payload", &self.max_payload)
            .field("group_commit", &self.group_commit)
            .field("tls", &self.tls)
            .finish()
    }
}

const KNOWN: &[&str] = &[
    "host",
    "heartbeat",
    "prefetch",
    "flavor",
    "dead_letter",
    "connect_timeout",
    "receipt_timeout",
    "max_frame",
    "max_payload",
    "group_commit",
    "tls",
    "ca_file",
    "cert_file",
    "key_file",
];

impl StompConfig {
    /// Reads the URL; unknown options and bad values are [`Error::Config`].
    pub fn from_url(url: &BrokerUrl) -> Result<Self> {
        if !matches!(
            url.scheme(),
            "stomp" | "stomp+activemq" | "stomp+rabbitmq" | "stomp+ssl" | "stomps"
        ) {
            return Err(Error::config(
                BROKER,
                format!(
                    "scheme {:?} in {url}: use stomp:// (or stomp+activemq://, stomp+rabbitmq://, stomp+ssl://)",
                    url.scheme()
                ),
            ));
        }
        url.check_options(BROKER, KNOWN)?;
        let host = url.host().unwrap_or("127.0.0.1").to_owned();
        let port = url.port().unwrap_or(DEFAULT_PORT);
        let path = url.path();
        let vhost = match url.option("host") {
            Some(h) => h.to_owned(),
            None if !path.is_empty() => path,
            None => "/".to_owned(),
        };
        let heartbeat = match url.option("heartbeat") {
            None => (Duration::from_secs(10), Duration::from_secs(10)),
            Some(v) => parse_heartbeat(v).map_err(|e| {
                Error::config(BROKER, format!("option heartbeat={v:?} in {url}: {e}"))
            })?,
        };
        let flavor = match (url.scheme(), url.option("flavor")) {
            ("stomp+activemq", _) | (_, Some("activemq")) => Some(Flavor::ActiveMq),
            ("stomp+rabbitmq", _) | (_, Some("rabbitmq")) => Some(Flavor::RabbitMq),
            (_, Some("generic")) => Some(Flavor::Generic),
            (_, None | Some("auto")) => None,
            (_, Some(other)) => {
                return Err(Error::config(
                    BROKER,
                    format!(
                        "option flavor={other:?} in {url}: use auto, activemq, rabbitmq or generic"
                    ),
                ))
            }
        };
        let prefetch = url.parse_option::<usize>(BROKER, "prefetch")?;
        if prefetch == Some(0) {
            return Err(Error::config(
                BROKER,
                format!("option prefetch in {url}: must be at least 1"),
            ));
        }
        let tls = TlsFiles::from_url(BROKER, url, &["stomp+ssl", "stomps"])?;
        Ok(StompConfig {
            tls,
            host,
            port,
            login: url.username(),
            passcode: url.password(),
            vhost,
            heartbeat,
            prefetch,
            flavor,
            dead_letter: url.option("dead_letter").map(str::to_owned),
            connect_timeout: url
                .duration_option(BROKER, "connect_timeout")?
                .unwrap_or(Duration::from_secs(10)),
            receipt_timeout: url
                .duration_option(BROKER, "receipt_timeout")?
                .unwrap_or(Duration::from_secs(30)),
            max_frame: url
                .parse_option::<usize>(BROKER, "max_frame")?
                .unwrap_or(crate::codec::DEFAULT_MAX_FRAME),
            max_payload: url.parse_option::<usize>(BROKER, "max_payload")?,
            group_commit: match url.parse_option::<usize>(BROKER, "group_commit")? {
                None | Some(0) => None,
                Some(1) => {
                    return Err(Error::config(
                        BROKER,
                        format!("option group_commit=1 in {url}: use 0 (never) or at least 2"),
                    ))
                }
                Some(n) => Some(n),
            },
            url: url.clone(),
        })
    }

    /// `host:port` for errors and logs.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// `10s,10s` (send, receive), `0,0` to turn heart-beats off, or one value for both.
fn parse_heartbeat(v: &str) -> std::result::Result<(Duration, Duration), String> {
    let one = |s: &str| {
        let s = s.trim();
        if s == "0" {
            Ok(Duration::ZERO)
        } else {
            polybridge_core::parse_duration(s)
        }
    };
    match v.split_once(',') {
        Some((a, b)) => Ok((one(a)?, one(b)?)),
        None => {
            let d = one(v)?;
            Ok((d, d))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_options() {
        let c = StompConfig::from_url(&"stomp://u:p@h".parse().unwrap()).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("h", DEFAULT_PORT));
        assert_eq!(c.vhost, "/");
        assert_eq!(c.login.as_deref(), Some("u"));
        assert_eq!(c.flavor, None);
        assert_eq!(c.group_commit, None);
        let c = StompConfig::from_url(&"stomp://u:s3cret@h".parse().unwrap()).unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
        let c = StompConfig::from_url(
            &"stomp://h:1/vh?heartbeat=0,5s&flavor=rabbitmq&prefetch=7&dead_letter=/queue/dl"
                .parse()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(c.vhost, "vh");
        assert_eq!(c.heartbeat, (Duration::ZERO, Duration::from_secs(5)));
        assert_eq!(c.flavor, Some(Flavor::RabbitMq));
        assert_eq!(c.prefetch, Some(7));
        assert_eq!(c.dead_letter.as_deref(), Some("/queue/dl"));
        let c = StompConfig::from_url(&"stomp://h?group_commit=0".parse().unwrap()).unwrap();
        assert_eq!(c.group_commit, None);
        let c = StompConfig::from_url(&"stomp://h?group_commit=16".parse().unwrap()).unwrap();
        assert_eq!(c.group_commit, Some(16));
        for bad in [
            "stomp://h?nope=1",
            "stomp://h?heartbeat=x",
            "stomp://h?flavor=kafka",
            "stomp://h?prefetch=0",
            "stomp://h?group_commit=1",
            "stomp://h?group_commit=x",
            "amqp://h",
        ] {
            let e = StompConfig::from_url(&bad.parse().unwrap()).unwrap_err();
            assert_eq!(e.kind(), "config", "{bad}: {e}");
        }
        assert_eq!(
            Flavor::from_server(Some("ActiveMQ/5.17.6")),
            Flavor::ActiveMq
        );
        assert_eq!(
            Flavor::from_server(Some("RabbitMQ/3.12.1")),
            Flavor::RabbitMq
        );
        assert_eq!(Flavor::from_server(None), Flavor::Generic);
    }
}
