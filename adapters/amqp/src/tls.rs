//! AMQP over TLS (`amqps://`): the socket lapin runs on, opened and TLS-wrapped here with
//! the rustls client configuration of [`polybridge_core::tls`] (the CA file's certificates
//! or the system's roots, and an optional client certificate for mutual TLS).
//!
//! lapin is built without a TLS feature of its own: its `amqps` path would need the client
//! identity as PKCS#12 and always adds the system roots to `ca_file`. Instead the connection
//! is handed to lapin already wrapped in rustls through `Connection::connector`.

use std::net::ToSocketAddrs;
use std::time::Duration;

use tcp_stream::{HandshakeError, HandshakeResult, RustlsConnector, TcpStream};

/// Opens a TCP connection to `host:port` and completes the TLS handshake (certificate
/// checked against `host`) within `timeout` per step, then hands the socket to lapin in
/// non-blocking mode. Runs on lapin's blocking thread.
// `HandshakeResult` is the type lapin's `Connection::connector` asks for.
#[allow(clippy::result_large_err)]
pub(crate) fn connect(
    host: &str,
    port: u16,
    timeout: Duration,
    connector: &RustlsConnector,
) -> HandshakeResult {
    let mut last = None;
    for addr in (host, port).to_socket_addrs()? {
        match std::net::TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                // Bounds a handshake with a server that accepts but never answers.
                stream.set_read_timeout(Some(timeout))?;
                stream.set_write_timeout(Some(timeout))?;
                let stream = match TcpStream::from_std(stream)?.into_rustls(connector, host) {
                    Ok(stream) => stream,
                    // A read that timed out: do not let lapin retry the handshake forever.
                    Err(HandshakeError::WouldBlock(_)) => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("no TLS handshake within {timeout:?}"),
                        )
                        .into())
                    }
                    Err(e) => return Err(e),
                };
                stream.set_read_timeout(None)?;
                stream.set_write_timeout(None)?;
                stream.set_nonblocking(true)?;
                return Ok(stream);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, "no address"))
        .into())
}
