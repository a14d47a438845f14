//! One MQTT connection, 3.1.1 or 5, behind one small interface: a client handle to send
//! publishes, acks and subscriptions, and a stream of normalised events from a task that
//! polls rumqttc's event loop (reconnecting with backoff). Everything above this module is
//! written once for both protocol versions.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::QoS as QoS4;
use tokio::sync::{mpsc, oneshot};

use polybridge_core::Result;

use crate::config::{MqttConfig, Version};

/// MQTT 5 publish properties that polybridge maps (empty for 3.1.1).
#[derive(Clone, Debug, Default)]
pub struct Properties {
    /// User properties, in order.
    pub user: Vec<(String, String)>,
    /// Content type.
    pub content_type: Option<String>,
    /// Correlation data.
    pub correlation: Option<Bytes>,
    /// Response topic.
    pub response_topic: Option<String>,
    /// Message expiry in seconds.
    pub expiry: Option<u32>,
}

/// An incoming publish, kept whole so it can be acknowledged.
#[derive(Clone, Debug)]
pub enum RawPublish {
    /// MQTT 3.1.1.
    V4(rumqttc::Publish),
    /// MQTT 5.
    V5(p5::Publish),
}

impl RawPublish {
    /// What acknowledging it needs (packet id and QoS), without the topic, payload and
    /// properties, for acknowledgements that wait for the client.
    pub fn into_ack_only(self) -> RawPublish {
        match self {
            RawPublish::V4(mut p) => {
                p.topic = String::new();
                p.payload = Bytes::new();
                RawPublish::V4(p)
            }
            RawPublish::V5(mut p) => {
                p.topic = Bytes::new();
                p.payload = Bytes::new();
                p.properties = None;
                RawPublish::V5(p)
            }
        }
    }
}

/// What the connection reports.
#[derive(Debug)]
// `Publish` is the common, large variant; boxing it would allocate once per message.
#[allow(clippy::large_enum_variant)]
pub enum WireEvent {
    /// Connected; `session_present` says whether the broker kept our session.
    Connected { session_present: bool },
    /// The broker refused the connection (bad credentials, bad client id …).
    Refused { reason: String, auth: bool },
    /// A publish arrived.
    Publish {
        topic: String,
        payload: Bytes,
        qos: u8,
        dup: bool,
        properties: Properties,
        raw: RawPublish,
    },
    /// An outgoing publish got its packet id (0 for QoS 0) and was written.
    Sent(u16),
    /// The broker confirmed a QoS 1 publish (PUBACK) or completed a QoS 2 one (PUBCOMP);
    /// `error` carries an MQTT 5 failure reason.
    Confirmed { pkid: u16, error: Option<String> },
    /// The broker answered a subscription; `error` when it refused it.
    Subscribed { error: Option<String> },
    /// The connection dropped; `taken_over` when the broker said another client took the
    /// session (MQTT 5). The poll task reconnects once `quiesced` is answered (or dropped):
    /// by then the session sends no more PUBACKs for the lost connection, and the ones it
    /// queued meanwhile are discarded instead of reaching the next connection, where their
    /// packet ids may already name other messages.
    Disconnected {
        reason: String,
        taken_over: bool,
        quiesced: Option<oneshot::Sender<()>>,
    },
    /// Our DISCONNECT was written after every request queued before it, and the broker
    /// closed the connection (or did not within [`CLOSE_TIMEOUT`]); it is not reopened.
    DisconnectSent,
}

/// Sends requests into one connection.
#[derive(Clone)]
pub enum Client {
    /// MQTT 3.1.1.
    V4(rumqttc::AsyncClient),
    /// MQTT 5.
    V5(rumqttc::v5::AsyncClient),
}

fn qos4(q: u8) -> QoS4 {
    match q {
        0 => QoS4::AtMostOnce,
        1 => QoS4::AtLeastOnce,
        _ => QoS4::ExactlyOnce,
    }
}

fn qos5(q: u8) -> QoS5 {
    match q {
        0 => QoS5::AtMostOnce,
        1 => QoS5::AtLeastOnce,
        _ => QoS5::ExactlyOnce,
    }
}

/// The MQTT 5 properties of an outgoing publish.
fn publish_properties(properties: Properties) -> p5::PublishProperties {
    p5::PublishProperties {
        message_expiry_interval: properties.expiry,
        response_topic: properties.response_topic,
        correlation_data: properties.correlation,
        user_properties: properties.user,
        content_type: properties.content_type,
        ..Default::default()
    }
}

impl Client {
    /// Queues a publish; its packet id comes back as [`WireEvent::Sent`].
    pub async fn publish(
        &self,
        topic: String,
        qos: u8,
        retain: bool,
        payload: Bytes,
        properties: Properties,
    ) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .publish_bytes(topic, qos4(qos), retain, payload)
                .await
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .publish_with_properties(
                    topic,
                    qos5(qos),
                    retain,
                    payload,
                    publish_properties(properties),
                )
                .await
                .map_err(|e| e.to_string()),
        }
    }

    /// Queues the acknowledgement of an incoming publish (PUBACK, or PUBREC for QoS 2)
    /// without waiting: false when the client's request queue is full (or closed), so the
    /// caller keeps it and tries again. Never waiting matters: the client only takes
    /// requests while its connection is polled, and the poll task waits for the session.
    pub fn try_ack(&self, raw: &RawPublish) -> bool {
        match (self, raw) {
            (Client::V4(c), RawPublish::V4(p)) => c.try_ack(p).is_ok(),
            (Client::V5(c), RawPublish::V5(p)) => c.try_ack(p).is_ok(),
            // Not possible: a session's client and its publishes have one version.
            _ => true,
        }
    }

    /// Queues a publish without waiting (see [`Client::try_ack`]); an error when the
    /// client's request queue is full or closed.
    pub fn try_publish(
        &self,
        topic: String,
        qos: u8,
        retain: bool,
        payload: Bytes,
        properties: Properties,
    ) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .try_publish(topic, qos4(qos), retain, payload.to_vec())
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .try_publish_with_properties(
                    topic,
                    qos5(qos),
                    retain,
                    payload,
                    publish_properties(properties),
                )
                .map_err(|e| e.to_string()),
        }
    }

    /// Subscribes to a filter.
    pub async fn subscribe(&self, filter: &str, qos: u8) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .subscribe(filter, qos4(qos))
                .await
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .subscribe(filter, qos5(qos))
                .await
                .map_err(|e| e.to_string()),
        }
    }

    /// Sends DISCONNECT (the session stays on the broker when it is persistent).
    pub async fn disconnect(&self) {
        let _ = match self {
            Client::V4(c) => c.disconnect().await.map_err(|e| e.to_string()),
            Client::V5(c) => c.disconnect().await.map_err(|e| e.to_string()),
        };
    }
}

/// Opens a connection with `client_id` and starts the task that polls it.
pub fn connect(
    config: &MqttConfig,
    client_id: &str,
    receive_maximum: u16,
) -> Result<(Client, mpsc::Receiver<WireEvent>)> {
    let tls = match &config.tls {
        Some(files) => Some(std::sync::Arc::new(polybridge_core::tls::client_config(
            crate::BROKER,
            files,
            polybridge_core::tls::DefaultRoots::SystemUnlessCaFile,
        )?)),
        None => None,
    };
    let (tx, rx) = mpsc::channel(1024);
    // Room for every in-flight publish plus the acks a paused session may queue (up to its
    // backlog bound, see `session::BACKLOG_FACTOR`), so sends rarely wait.
    let capacity =
        4096.max(usize::from(receive_maximum) * (crate::session::BACKLOG_FACTOR + 1) + 1024);
    let packet_limit = config.max_packet_size();

    match config.version {
        Version::V311 => {
            let mut o = rumqttc::MqttOptions::new(client_id, config.host.clone(), config.port);
            o.set_keep_alive(config.keep_alive)
                .set_clean_session(config.clean_session)
                .set_manual_acks(true)
                .set_max_packet_size(packet_limit, packet_limit)
                .set_inflight(receive_maximum.max(1));
            if let (Some(u), Some(p)) = (&config.username, &config.password) {
                o.set_credentials(u.clone(), p.clone());
            }
            if let Some(tls) = &tls {
                o.set_transport(rumqttc::Transport::tls_with_config(
                    rumqttc::TlsConfiguration::Rustls(tls.clone()),
                ));
            }
            if let Some(will) = &config.will {
                o.set_last_will(rumqttc::LastWill::new(
                    will.topic.clone(),
                    will.payload.clone(),
                    qos4(will.qos),
                    will.retain,
                ));
            }
            let (client, eventloop) = rumqttc::AsyncClient::new(o, capacity);
            tokio::spawn(poll_v4(eventloop, tx));
            Ok((Client::V4(client), rx))
        }
        Version::V5 => {
            let mut o = rumqttc::v5::MqttOptions::new(client_id, config.host.clone(), config.port);
            o.set_keep_alive(config.keep_alive)
                .set_clean_start(config.clean_session)
                .set_manual_acks(true)
                .set_max_packet_size(Some(u32::try_from(packet_limit).unwrap_or(u32::MAX)))
                .set_receive_maximum(Some(receive_maximum.max(1)))
                .set_outgoing_inflight_upper_limit(receive_maximum.max(1));
            if !config.clean_session {
                o.set_session_expiry_interval(Some(config.session_expiry_secs));
            }
            if let (Some(u), Some(p)) = (&config.username, &config.password) {
                o.set_credentials(u.clone(), p.clone());
            }
            if let Some(tls) = &tls {
                o.set_transport(rumqttc::Transport::tls_with_config(
                    rumqttc::TlsConfiguration::Rustls(tls.clone()),
                ));
            }
            if let Some(will) = &config.will {
                o.set_last_will(p5::LastWill::new(
                    will.topic.clone(),
                    will.payload.clone(),
                    qos5(will.qos),
                    will.retain,
                    None,
                ));
            }
            let (client, eventloop) = rumqttc::v5::AsyncClient::new(o, capacity);
            tokio::spawn(poll_v5(eventloop, tx));
            Ok((Client::V5(client), rx))
        }
    }
}

const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a closing connection waits for the broker to close it after DISCONNECT.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a reconnect waits for the session to stop acknowledging the lost connection's
/// deliveries (it answers at once unless it is itself waiting on this connection).
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(5);

/// Tells the session the connection was lost and waits (at most [`QUIESCE_TIMEOUT`]) until
/// it has stopped acknowledging that connection's deliveries. False when nobody listens.
async fn report_loss(tx: &mpsc::Sender<WireEvent>, reason: String) -> bool {
    if tx.is_closed() {
        return false;
    }
    let (quiesced, settled) = oneshot::channel();
    let _ = tx
        .send(WireEvent::Disconnected {
            reason,
            taken_over: false,
            quiesced: Some(quiesced),
        })
        .await;
    let _ = tokio::time::timeout(QUIESCE_TIMEOUT, settled).await;
    true
}

async fn poll_v4(mut eventloop: rumqttc::EventLoop, tx: mpsc::Sender<WireEvent>) {
    use rumqttc::{ConnectionError, Event, Outgoing, Packet};
    let mut backoff = Duration::from_millis(100);
    loop {
        let event = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = Duration::from_millis(100);
                Some(WireEvent::Connected {
                    session_present: ack.session_present,
                })
            }
            Ok(Event::Incoming(Packet::Publish(p))) => Some(WireEvent::Publish {
                topic: p.topic.clone(),
                payload: p.payload.clone(),
                qos: p.qos as u8,
                dup: p.dup,
                properties: Properties::default(),
                raw: RawPublish::V4(p),
            }),
            Ok(Event::Incoming(Packet::PubAck(a))) => Some(WireEvent::Confirmed {
                pkid: a.pkid,
                error: None,
            }),
            Ok(Event::Incoming(Packet::PubComp(c))) => Some(WireEvent::Confirmed {
                pkid: c.pkid,
                error: None,
            }),
            Ok(Event::Incoming(Packet::SubAck(s))) => Some(WireEvent::Subscribed {
                error: s
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                    .then(|| "the broker refused the subscription".to_owned()),
            }),
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Some(WireEvent::Sent(pkid)),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                // Read until the broker closes the connection: closing it ourselves with
                // unread data pending makes the kernel reset it, and the broker then drops
                // what it had not read yet — the last PUBACKs and the DISCONNECT.
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                    while eventloop.poll().await.is_ok() {}
                })
                .await;
                let _ = tx.send(WireEvent::DisconnectSent).await;
                return;
            }
            Ok(_) => None,
            Err(ConnectionError::RequestsDone) => return,
            Err(ConnectionError::ConnectionRefused(code)) => {
                let auth = matches!(
                    code,
                    rumqttc::ConnectReturnCode::BadUserNamePassword
                        | rumqttc::ConnectReturnCode::NotAuthorized
                );
                // A refusal is final: retrying the same credentials or id cannot help.
                let _ = tx
                    .send(WireEvent::Refused {
                        reason: format!("connection refused: {code:?}"),
                        auth,
                    })
                    .await;
                return;
            }
            Err(e) => {
                if !report_loss(&tx, e.to_string()).await {
                    return; // nobody listens: do not reconnect
                }
                eventloop.clean(); // drops the stale PUBACKs queued since the loss
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                None
            }
        };
        if let Some(event) = event {
            if tx.send(event).await.is_err() {
                return;
            }
        }
    }
}

async fn poll_v5(mut eventloop: rumqttc::v5::EventLoop, tx: mpsc::Sender<WireEvent>) {
    use rumqttc::v5::{ConnectionError, Event};
    use rumqttc::Outgoing;
    let mut backoff = Duration::from_millis(100);
    loop {
        let event = match eventloop.poll().await {
            Ok(Event::Incoming(p5::Packet::ConnAck(ack))) => {
                backoff = Duration::from_millis(100);
                Some(WireEvent::Connected {
                    session_present: ack.session_present,
                })
            }
            Ok(Event::Incoming(p5::Packet::Publish(p))) => {
                let props = p.properties.clone().unwrap_or_default();
                Some(WireEvent::Publish {
                    topic: String::from_utf8_lossy(&p.topic).into_owned(),
                    payload: p.payload.clone(),
                    qos: p.qos as u8,
                    dup: p.dup,
                    properties: Properties {
                        user: props.user_properties,
                        content_type: props.content_type,
                        correlation: props.correlation_data,
                        response_topic: props.response_topic,
                        expiry: props.message_expiry_interval,
                    },
                    raw: RawPublish::V5(p),
                })
            }
            Ok(Event::Incoming(p5::Packet::PubAck(a))) => Some(WireEvent::Confirmed {
                pkid: a.pkid,
                error: match a.reason {
                    p5::PubAckReason::Success | p5::PubAckReason::NoMatchingSubscribers => None,
                    other => Some(format!("the broker refused the message: {other:?}")),
                },
            }),
            Ok(Event::Incoming(p5::Packet::PubComp(c))) => Some(WireEvent::Confirmed {
                pkid: c.pkid,
                error: match c.reason {
                    p5::PubCompReason::Success => None,
                    other => Some(format!(
                        "the broker did not complete the message: {other:?}"
                    )),
                },
            }),
            Ok(Event::Incoming(p5::Packet::SubAck(s))) => Some(WireEvent::Subscribed {
                error: s
                    .return_codes
                    .iter()
                    .find(|c| !matches!(c, p5::SubscribeReasonCode::Success(_)))
                    .map(|c| format!("the broker refused the subscription: {c:?}")),
            }),
            Ok(Event::Incoming(p5::Packet::Disconnect(d))) => {
                let taken_over = d.reason_code == p5::DisconnectReasonCode::SessionTakenOver;
                Some(WireEvent::Disconnected {
                    reason: format!("the broker disconnected: {:?}", d.reason_code),
                    taken_over,
                    quiesced: None,
                })
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Some(WireEvent::Sent(pkid)),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                // Read until the broker closes the connection: closing it ourselves with
                // unread data pending makes the kernel reset it, and the broker then drops
                // what it had not read yet — the last PUBACKs and the DISCONNECT.
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                    while eventloop.poll().await.is_ok() {}
                })
                .await;
                let _ = tx.send(WireEvent::DisconnectSent).await;
                return;
            }
            Ok(_) => None,
            Err(ConnectionError::RequestsDone) => return,
            Err(ConnectionError::ConnectionRefused(code)) => {
                let auth = matches!(
                    code,
                    p5::ConnectReturnCode::BadUserNamePassword
                        | p5::ConnectReturnCode::NotAuthorized
                );
                // A refusal is final: retrying the same credentials or id cannot help.
                let _ = tx
                    .send(WireEvent::Refused {
                        reason: format!("connection refused: {code:?}"),
                        auth,
                    })
                    .await;
                return;
            }
            Err(e) => {
                if !report_loss(&tx, e.to_string()).await {
                    return; // nobody listens: do not reconnect
                }
                eventloop.clean(); // drops the stale PUBACKs queued since the loss
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                None
            }
        };
        if let Some(event) = event {
            if tx.send(event).await.is_err() {
                return;
            }
        }
    }
}
