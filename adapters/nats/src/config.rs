//! `nats://[user:password@ | token@]host[:port][,host:port…][?option=value&…]`
//!
//! See the crate documentation for every option.

use std::time::Duration;

use polybridge_core::{BrokerUrl, Error, Result};

use crate::BROKER;

/// The port NATS listens on unless the URL says otherwise.
pub const DEFAULT_PORT: u16 = 4222;

/// Which NATS the connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Core NATS: subjects, queue groups, request/reply; at most once.
    Core,
    /// JetStream: streams and durable pull consumers; at least once.
    JetStream,
}

/// Where a created stream keeps its messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// On disk (survives a server restart).
    File,
    /// In memory.
    Memory,
}

/// Settings of a NATS connection, from its URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsConfig {
    /// `host:port` of every server in the URL.
    pub servers: Vec<String>,
    /// User name, with `password`.
    pub user: Option<String>,
    /// Password for `user`.
    pub password: Option<String>,
    /// Token (`nats://TOKEN@host`: a user name without a password).
    pub token: Option<String>,
    /// Core NATS or JetStream (`mode=core|jetstream`, or the scheme `jetstream://`).
    pub mode: Mode,
    /// The stream to bind to (`stream=NAME`); without it, the stream is found by subject.
    pub stream: Option<String>,
    /// Create the stream when it does not exist (`create_stream=true`; needs `stream`).
    pub create_stream: bool,
    /// Subjects of a created stream (`stream_subjects=a.>,b.*`; default `NAME.>`).
    pub stream_subjects: Vec<String>,
    /// Storage of a created stream (`storage=file|memory`, default file).
    pub storage: Storage,
    /// How long JetStream waits for an ack before redelivering (`ack_wait`, default 30s).
    /// Deliveries held longer than a third of it are kept alive with in-progress acks.
    pub ack_wait: Duration,
    /// How many times JetStream delivers a message before giving up (`max_deliver`,
    /// default unlimited).
    pub max_deliver: Option<i64>,
    /// How many members a consumer group may have (`group_members`, default 16): the
    /// consumer's `max_ack_pending` is the in-flight limit times this.
    pub group_members: usize,
    /// How long a pull request waits for messages before it is renewed (`fetch_wait`,
    /// default 5s).
    pub fetch_wait: Duration,
    /// How long an unused consumer of a subscription without a group lives on the server
    /// after its process died (`inactive_threshold`, default 1h).
    pub inactive_threshold: Duration,
    /// How long to wait for the first connection (`connect_timeout`, default 5s).
    pub connect_timeout: Duration,
    /// Client name shown by the server (`name`, default `polybridge`).
    pub client_name: String,
    /// Require TLS (`tls=true`; implied by `ca_file`, `cert_file`, `key_file`).
    pub tls: bool,
    /// PEM file of the CA certificates to trust instead of the system's (`ca_file`).
    pub ca_file: Option<std::path::PathBuf>,
    /// Client certificate and private key (PEM) for mutual TLS (`cert_file`, `key_file`).
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

const OPTIONS: &[&str] = &[
    "mode",
    "stream",
    "create_stream",
    "stream_subjects",
    "storage",
    "ack_wait",
    "max_deliver",
    "group_members",
    "fetch_wait",
    "inactive_threshold",
    "connect_timeout",
    "name",
    "tls",
    "ca_file",
    "cert_file",
    "key_file",
];

impl NatsConfig {
    /// Reads the config from a `nats://` or `jetstream://` URL.
    pub fn from_url(url: &BrokerUrl) -> Result<Self> {
        let scheme_mode = match url.scheme() {
            "nats" => None,
            "jetstream" => Some(Mode::JetStream),
            _ => {
                return Err(Error::config(
                    BROKER,
                    format!("expected a nats:// or jetstream:// URL, got {url}"),
                ))
            }
        };
        url.check_options(BROKER, OPTIONS)?;
        let mode = match (scheme_mode, url.option("mode")) {
            (Some(m), None) => m,
            (Some(_), Some("jetstream")) => Mode::JetStream,
            (Some(_), Some(other)) => {
                return Err(Error::config(
                    BROKER,
                    format!("option mode={other:?} contradicts the jetstream:// scheme in {url}"),
                ))
            }
            (None, None | Some("core")) => Mode::Core,
            (None, Some("jetstream")) => Mode::JetStream,
            (None, Some(other)) => {
                return Err(Error::config(
                    BROKER,
                    format!("option mode={other:?} in {url}: use core or jetstream"),
                ))
            }
        };
        let servers: Vec<String> = url
            .hosts(DEFAULT_PORT)
            .into_iter()
            .map(|(h, p)| format!("{h}:{p}"))
            .collect();
        if servers.is_empty() {
            return Err(Error::config(BROKER, format!("no server in {url}")));
        }
        let (user, password, token) = match (url.username(), url.password()) {
            (Some(u), Some(p)) => (Some(u), Some(p), None),
            (Some(t), None) => (None, None, Some(t)),
            _ => (None, None, None),
        };
        let stream = url.option("stream").map(str::to_owned);
        if let Some(name) = &stream {
            if name.is_empty() || name.contains(['.', ' ', '*', '>', '\t']) {
                return Err(Error::config(
                    BROKER,
                    format!("option stream={name:?} in {url}: a stream name has no '.', spaces, '*' or '>'"),
                ));
            }
        }
        let create_stream = url
            .parse_option::<bool>(BROKER, "create_stream")?
            .unwrap_or(false);
        if create_stream && stream.is_none() {
            return Err(Error::config(
                BROKER,
                format!("create_stream=true in {url} needs stream=NAME"),
            ));
        }
        let stream_subjects = match (url.option("stream_subjects"), &stream) {
            (Some(list), _) => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            (None, Some(name)) => vec![format!("{name}.>")],
            (None, None) => Vec::new(),
        };
        let storage = match url.option("storage") {
            None | Some("file") => Storage::File,
            Some("memory") => Storage::Memory,
            Some(other) => {
                return Err(Error::config(
                    BROKER,
                    format!("option storage={other:?} in {url}: use file or memory"),
                ))
            }
        };
        let group_members = url
            .parse_option::<usize>(BROKER, "group_members")?
            .unwrap_or(16);
        if group_members == 0 {
            return Err(Error::config(
                BROKER,
                format!("option group_members in {url} must be at least 1"),
            ));
        }
        let max_deliver = url.parse_option::<i64>(BROKER, "max_deliver")?;
        if matches!(max_deliver, Some(n) if n < 1) {
            return Err(Error::config(
                BROKER,
                format!("option max_deliver in {url} must be at least 1"),
            ));
        }
        let ack_wait = url
            .duration_option(BROKER, "ack_wait")?
            .unwrap_or(Duration::from_secs(30));
        if ack_wait < Duration::from_millis(100) {
            return Err(Error::config(
                BROKER,
                format!("option ack_wait in {url} must be at least 100ms"),
            ));
        }
        let ca_file = url.option("ca_file").map(std::path::PathBuf::from);
        let client_cert = match (url.option("cert_file"), url.option("key_file")) {
            (Some(c), Some(k)) => Some((c.into(), k.into())),
            (None, None) => None,
            _ => {
                return Err(Error::config(
                    BROKER,
                    format!("options cert_file and key_file in {url} go together"),
                ))
            }
        };
        let tls = url.parse_option::<bool>(BROKER, "tls")?.unwrap_or(false)
            || ca_file.is_some()
            || client_cert.is_some();
        Ok(NatsConfig {
            tls,
            ca_file,
            client_cert,
            servers,
            user,
            password,
            token,
            mode,
            stream,
            create_stream,
            stream_subjects,
            storage,
            ack_wait,
            max_deliver,
            group_members,
            fetch_wait: url
                .duration_option(BROKER, "fetch_wait")?
                .unwrap_or(Duration::from_secs(5))
                .max(Duration::from_millis(100)),
            inactive_threshold: url
                .duration_option(BROKER, "inactive_threshold")?
                .unwrap_or(Duration::from_secs(3600)),
            connect_timeout: url
                .duration_option(BROKER, "connect_timeout")?
                .unwrap_or(Duration::from_secs(5)),
            client_name: url.option("name").unwrap_or("polybridge").to_owned(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(url: &str) -> Result<NatsConfig> {
        NatsConfig::from_url(&url.parse().unwrap())
    }

    #[test]
    fn reads_servers_credentials_and_mode() {
        let c = config("nats://alice:s3cret@h1:4223,h2").unwrap();
        assert_eq!(c.servers, ["h1:4223", "h2:4222"]);
        assert_eq!(
            (c.user.as_deref(), c.password.as_deref()),
            (Some("alice"), Some("s3cret"))
        );
        assert_eq!(c.mode, Mode::Core);
        let c = config("nats://tok@h1").unwrap();
        assert_eq!(c.token.as_deref(), Some("tok"));
        let c = config("jetstream://h1?stream=ORDERS&create_stream=true").unwrap();
        assert_eq!(c.mode, Mode::JetStream);
        assert_eq!(c.stream_subjects, ["ORDERS.>"]);
        let c = config("nats://h1?mode=jetstream&stream=S&stream_subjects=a.>,b.*&ack_wait=2s")
            .unwrap();
        assert_eq!(c.mode, Mode::JetStream);
        assert_eq!(c.stream_subjects, ["a.>", "b.*"]);
        assert_eq!(c.ack_wait, Duration::from_secs(2));
    }

    #[test]
    fn refuses_bad_options_without_the_password() {
        for (url, expected) in [
            ("nats://u:pw@h?mode=fast", "use core or jetstream"),
            ("nats://u:pw@h?create_stream=true", "needs stream=NAME"),
            ("nats://u:pw@h?stream=a.b", "stream name"),
            ("nats://u:pw@h?ack_wait=soon", "invalid duration"),
            ("nats://u:pw@h?streem=x", "unknown option \"streem\""),
            ("jetstream://u:pw@h?mode=core", "contradicts"),
            ("redis://u:pw@h", "expected a nats://"),
        ] {
            let e = config(url).unwrap_err().to_string();
            assert!(e.contains(expected), "{url}: {e}");
            assert!(!e.contains("pw@"), "{url}: {e}");
        }
    }
}
