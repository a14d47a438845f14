//! One STOMP connection: TCP, the CONNECT/CONNECTED handshake, heart-beats both ways and
//! dead-connection detection. Owned by exactly one task (the publisher's or a
//! subscription's), which selects over [`Link::recv`] and its own work.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use polybridge_core::{Error, Result};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::codec::Framed;

use crate::codec::{CodecError, Item, StompCodec};
use crate::config::{Flavor, StompConfig};
use crate::frame::Frame;
use crate::BROKER;

/// The byte stream under a link: TCP, or TLS over TCP.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// A live, handshaken STOMP 1.2 connection.
pub(crate) struct Link {
    framed: Framed<Box<dyn Io>, StompCodec>,
    /// The flavor in use (configured, or detected from `server`).
    pub flavor: Flavor,
    /// Send a heart-beat when nothing was written for this long.
    send_every: Option<Duration>,
    /// Declare the connection dead when nothing was read for this long.
    dead_after: Option<Duration>,
    last_sent: Instant,
    last_received: Instant,
    endpoint: String,
}

/// Whether an ERROR frame's text is about credentials.
fn is_auth_failure(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    [
        "auth",
        "password",
        "passcode",
        "access refused",
        "login",
        "credential",
        "not authorized",
        "security",
    ]
    .iter()
    .any(|k| t.contains(k))
}

/// The text of an ERROR frame: its `message` header and body.
pub(crate) fn error_text(frame: &Frame) -> String {
    let message = frame.header("message").unwrap_or("ERROR frame").trim();
    let body = String::from_utf8_lossy(&frame.body);
    let body = body.trim();
    if body.is_empty() || body == message {
        message.to_owned()
    } else {
        let body: String = body.chars().take(500).collect();
        format!("{message}: {body}")
    }
}

fn millis(d: Duration) -> u128 {
    d.as_millis()
}

impl Link {
    /// Connects and handshakes within the configured connect timeout. `client_id` is sent
    /// as `client-id` (ActiveMQ durable subscriptions need one).
    pub async fn connect(config: &StompConfig, client_id: Option<&str>) -> Result<Link> {
        let endpoint = config.endpoint();
        let deadline = Instant::now() + config.connect_timeout;
        let timeout = || Error::Connection {
            broker: BROKER,
            endpoint: config.url.to_string(),
            reason: format!(
                "no CONNECTED frame within {:?} (connect_timeout)",
                config.connect_timeout
            ),
            source: None,
        };
        let stream = tokio::time::timeout_at(
            deadline,
            TcpStream::connect((config.host.as_str(), config.port)),
        )
        .await
        .map_err(|_| timeout())?
        .map_err(|e| Error::Connection {
            broker: BROKER,
            endpoint: config.url.to_string(),
            reason: format!("TCP connect to {endpoint} failed: {e}"),
            source: Some(Box::new(e)),
        })?;
        let _ = stream.set_nodelay(true);
        let stream: Box<dyn Io> = match &config.tls {
            None => Box::new(stream),
            Some(files) => {
                let tls = std::sync::Arc::new(polybridge_core::tls::client_config(
                    crate::BROKER,
                    files,
                    polybridge_core::tls::DefaultRoots::SystemUnlessCaFile,
                )?);
                let name =
                    tokio_rustls::rustls::pki_types::ServerName::try_from(config.host.clone())
                        .map_err(|e| {
                            Error::config(
                                BROKER,
                                format!("{}: host {:?} for TLS: {e}", config.url, config.host),
                            )
                        })?;
                let connector = tokio_rustls::TlsConnector::from(tls);
                let stream = tokio::time::timeout_at(deadline, connector.connect(name, stream))
                    .await
                    .map_err(|_| timeout())?
                    .map_err(|e| Error::Connection {
                        broker: BROKER,
                        endpoint: config.url.to_string(),
                        reason: format!("TLS handshake with {endpoint} failed: {e}"),
                        source: Some(Box::new(e)),
                    })?;
                Box::new(stream)
            }
        };
        let mut framed = Framed::new(stream, StompCodec::new(config.max_frame));
        let (cx, cy) = config.heartbeat;
        let mut connect = Frame::new("CONNECT")
            .with_header("accept-version", "1.2")
            .with_header("host", config.vhost.clone())
            .with_header("heart-beat", format!("{},{}", millis(cx), millis(cy)));
        if let Some(login) = &config.login {
            connect.header_push("login", login.clone());
        }
        if let Some(passcode) = &config.passcode {
            connect.header_push("passcode", passcode.clone());
        }
        if let Some(id) = client_id {
            connect.header_push("client-id", id);
        }
        let connection_error = |reason: String| Error::Connection {
            broker: BROKER,
            endpoint: config.url.to_string(),
            reason,
            source: None,
        };
        framed
            .send(Item::Frame(connect))
            .await
            .map_err(|e| match e {
                CodecError::Malformed(m) => Error::config(
                    BROKER,
                    format!("the CONNECT frame for {} cannot be sent: {m}", config.url),
                ),
                other => connection_error(format!("sending CONNECT: {other}")),
            })?;
        let connected = loop {
            match tokio::time::timeout_at(deadline, framed.next()).await {
                Err(_) => return Err(timeout()),
                Ok(None) => {
                    return Err(connection_error(
                        "the server closed the connection during the handshake".into(),
                    ))
                }
                Ok(Some(Err(e))) => return Err(connection_error(format!("handshake: {e}"))),
                Ok(Some(Ok(Item::Heartbeat))) => continue,
                Ok(Some(Ok(Item::Frame(f)))) => break f,
            }
        };
        match connected.command.as_str() {
            "CONNECTED" => {}
            "ERROR" => {
                let text = error_text(&connected);
                return Err(if is_auth_failure(&text) {
                    Error::Auth {
                        broker: BROKER,
                        endpoint: config.url.to_string(),
                        reason: text,
                    }
                } else {
                    connection_error(format!("the server refused CONNECT: {text}"))
                });
            }
            other => return Err(connection_error(format!("expected CONNECTED, got {other}"))),
        }
        let version = connected.header("version").unwrap_or("1.0");
        if version != "1.2" {
            return Err(Error::Connection {
                broker: BROKER,
                endpoint: config.url.to_string(),
                reason: format!("the server speaks STOMP {version}; polybridge needs 1.2"),
                source: None,
            });
        }
        let (sx, sy) = connected
            .header("heart-beat")
            .and_then(|h| h.split_once(','))
            .map(|(a, b)| {
                (
                    a.trim().parse::<u64>().unwrap_or(0),
                    b.trim().parse::<u64>().unwrap_or(0),
                )
            })
            .unwrap_or((0, 0));
        let negotiated = |ours: Duration, theirs: u64| {
            (!ours.is_zero() && theirs != 0).then(|| ours.max(Duration::from_millis(theirs)))
        };
        // Send at half the agreed interval so a slow scheduler never makes us late; call
        // the server dead after twice its interval plus a second.
        let send_every = negotiated(cx, sy).map(|d| d / 2);
        let dead_after = negotiated(cy, sx).map(|d| d * 2 + Duration::from_secs(1));
        let flavor = config
            .flavor
            .unwrap_or_else(|| Flavor::from_server(connected.header("server")));
        tracing::debug!(
            endpoint = %config.url,
            server = connected.header("server").unwrap_or("?"),
            flavor = flavor.name(),
            ?send_every,
            ?dead_after,
            "stomp connected"
        );
        let now = Instant::now();
        Ok(Link {
            framed,
            flavor,
            send_every,
            dead_after,
            last_sent: now,
            last_received: now,
            endpoint: config.url.to_string(),
        })
    }

    fn broken(&self, reason: String) -> Error {
        Error::Connection {
            broker: BROKER,
            endpoint: self.endpoint.clone(),
            reason,
            source: None,
        }
    }

    /// Writes a frame (and flushes).
    pub async fn send(&mut self, frame: Frame) -> Result<()> {
        let command = frame.command.clone();
        self.framed
            .send(Item::Frame(frame))
            .await
            .map_err(|e| match e {
                CodecError::Malformed(m) => {
                    Error::permanent(BROKER, command, format!("cannot encode the frame: {m}"))
                }
                other => self.broken(format!("sending {command}: {other}")),
            })?;
        self.last_sent = Instant::now();
        Ok(())
    }

    /// Writes a frame without flushing (call [`Link::flush`] after a batch).
    pub async fn feed(&mut self, frame: Frame) -> Result<()> {
        let command = frame.command.clone();
        self.framed
            .feed(Item::Frame(frame))
            .await
            .map_err(|e| match e {
                CodecError::Malformed(m) => {
                    Error::permanent(BROKER, command, format!("cannot encode the frame: {m}"))
                }
                other => self.broken(format!("sending {command}: {other}")),
            })?;
        self.last_sent = Instant::now();
        Ok(())
    }

    /// Flushes fed frames.
    pub async fn flush(&mut self) -> Result<()> {
        SinkExt::<Item>::flush(&mut self.framed)
            .await
            .map_err(|e| self.broken(format!("flushing: {e}")))
    }

    /// The next frame from the server. Sends heart-beats while waiting and fails when the
    /// server has been silent for too long, the connection closed, or a frame is malformed
    /// ([`Error::Connection`]) or larger than `max_frame` ([`Error::PayloadTooLarge`]; the
    /// connection must then be dropped). Cancel-safe: dropping the future loses no frame.
    pub async fn recv(&mut self) -> Result<Frame> {
        loop {
            let now = Instant::now();
            let next_send = self.send_every.map(|d| self.last_sent + d);
            let dead_at = self.dead_after.map(|d| self.last_received + d);
            let wake = match (next_send, dead_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let timer = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at.max(now)).await,
                    None => futures::future::pending::<()>().await,
                }
            };
            tokio::select! {
                item = self.framed.next() => {
                    self.last_received = Instant::now();
                    match item {
                        Some(Ok(Item::Heartbeat)) => continue,
                        Some(Ok(Item::Frame(f))) => return Ok(f),
                        Some(Err(CodecError::TooLarge { size, limit })) => {
                            return Err(Error::PayloadTooLarge {
                                broker: BROKER,
                                destination: format!("a frame from {}", self.endpoint),
                                size,
                                limit,
                            })
                        }
                        Some(Err(e)) => return Err(self.broken(format!("reading: {e}"))),
                        None => return Err(self.broken("the server closed the connection".into())),
                    }
                }
                _ = timer => {
                    let now = Instant::now();
                    if let Some(dead) = dead_at {
                        if now >= dead {
                            return Err(self.broken(format!(
                                "no data or heart-beat from the server for {:?}",
                                now - self.last_received
                            )));
                        }
                    }
                    if let Some(at) = next_send {
                        if now >= at {
                            self.framed
                                .send(Item::Heartbeat)
                                .await
                                .map_err(|e| self.broken(format!("sending a heart-beat: {e}")))?;
                            self.last_sent = Instant::now();
                        }
                    }
                }
            }
        }
    }

    /// Sends DISCONNECT with a receipt and waits (briefly) for it, so everything sent before
    /// has been processed; then drops the connection.
    pub async fn disconnect(mut self, within: Duration) {
        let frame = Frame::new("DISCONNECT").with_header("receipt", "pb-disconnect");
        if self.send(frame).await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(within, async {
            while let Ok(f) = self.recv().await {
                if f.command == "RECEIPT" || f.command == "ERROR" {
                    break;
                }
            }
        })
        .await;
    }
}
