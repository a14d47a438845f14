//! AMQP over TLS (`amqps://`): the rustls client configuration — the CA file's
//! certificates (or the system's roots) and an optional client certificate for mutual TLS —
//! and the socket lapin runs on, opened and TLS-wrapped here.
//!
//! lapin is built without a TLS feature of its own: its `amqps` path would need the client
//! identity as PKCS#12 and always adds the system roots to `ca_file`. Instead the connection
//! is handed to lapin already wrapped in rustls through `Connection::connector`.

use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::Duration;

use polybridge_core::{Error, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tcp_stream::{HandshakeError, HandshakeResult, RustlsConnector, TcpStream};

use crate::config::TlsFiles;
use crate::BROKER;

fn file_error(endpoint: &str, path: &std::path::Path, e: impl std::fmt::Display) -> Error {
    Error::config(
        BROKER,
        format!("{endpoint}: cannot read {}: {e}", path.display()),
    )
}

/// Builds the TLS client configuration for `files`; `endpoint` (password redacted) names
/// the broker in errors.
pub(crate) fn client_config(files: &TlsFiles, endpoint: &str) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    match &files.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| file_error(endpoint, path, e))?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| file_error(endpoint, path, e))?;
            if certs.is_empty() {
                return Err(file_error(endpoint, path, "no certificate in the file"));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| file_error(endpoint, path, e))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::config(BROKER, format!("{endpoint}: TLS: {e}")))?
    .with_root_certificates(roots);
    let config = match &files.client_cert {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| file_error(endpoint, cert, e))?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| file_error(endpoint, cert, e))?;
            if chain.is_empty() {
                return Err(file_error(endpoint, cert, "no certificate in the file"));
            }
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(endpoint, key, e))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                Error::config(BROKER, format!("{endpoint}: client certificate: {e}"))
            })?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

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
