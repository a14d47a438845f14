//! Readiness probes: each speaks just enough of its broker's protocol to know the broker
//! serves clients, not merely that a port is open.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::Endpoint;

/// Whether the endpoint on `port` answers its protocol's hello.
pub fn ready(endpoint: Endpoint, port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    match endpoint {
        Endpoint::Redis => exchange(&mut s, b"PING\r\n", |r| r.starts_with(b"+PONG")),
        Endpoint::Mqtt => {
            // MQTT 3.1.1 CONNECT, clean session, keep-alive 60, empty client id.
            let connect = [0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 0];
            exchange(&mut s, &connect, |r| {
                r.len() >= 4 && r[0] == 0x20 && r[3] == 0
            }) && s.write_all(&[0xe0, 0]).is_ok()
        }
        Endpoint::Nats => {
            let mut info = [0u8; 4];
            s.read_exact(&mut info).is_ok()
                && &info == b"INFO"
                && exchange(&mut s, b"CONNECT {\"verbose\":false}\r\nPING\r\n", |r| {
                    r.windows(4).any(|w| w == b"PONG")
                })
        }
        Endpoint::Amqp => exchange(&mut s, b"AMQP\x00\x00\x09\x01", |r| r.first() == Some(&1)),
        Endpoint::Stomp => exchange(
            &mut s,
            b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\0",
            |r| r.starts_with(b"CONNECTED"),
        ),
        Endpoint::Kafka => {
            // ApiVersions v0: api_key 18, version 0, correlation id 7, client id "probe".
            let body: Vec<u8> = [
                &18i16.to_be_bytes()[..],
                &0i16.to_be_bytes(),
                &7i32.to_be_bytes(),
                &5i16.to_be_bytes(),
                b"probe",
            ]
            .concat();
            let mut req = (body.len() as i32).to_be_bytes().to_vec();
            req.extend_from_slice(&body);
            exchange(&mut s, &req, |r| {
                r.len() >= 8 && r[4..8] == 7i32.to_be_bytes()
            })
        }
    }
}

/// Whether a TLS listener on `port` accepts connections (NATS: sends its `INFO` first).
pub fn listening(endpoint: Endpoint, port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    if endpoint == Endpoint::Nats {
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut info = [0u8; 4];
        return s.read_exact(&mut info).is_ok() && &info == b"INFO";
    }
    true
}

/// Sends `request` and checks what comes back (reading until `ok` holds or the peer stops).
fn exchange(s: &mut TcpStream, request: &[u8], ok: impl Fn(&[u8]) -> bool) -> bool {
    if s.write_all(request).is_err() {
        return false;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while got.len() < 4096 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return ok(&got),
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if ok(&got) {
                    return true;
                }
            }
        }
    }
    ok(&got)
}
