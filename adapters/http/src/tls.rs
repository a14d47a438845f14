//! TLS for `https://`: the client trusts the Mozilla roots (webpki-roots) plus `ca_file`;
//! the webhook server presents `tls_cert` with `tls_key`. rustls with the ring provider.

use std::sync::Arc;

use polybridge_core::{Error, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::BROKER;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(option: &str, path: &str) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Error::config(BROKER, format!("option {option}: cannot read {path}: {e}")))
}

fn certificates(option: &str, path: &str) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read(option, path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| {
            Error::config(
                BROKER,
                format!("option {option}: {path} is not PEM certificates: {e:?}"),
            )
        })?;
    if certs.is_empty() {
        return Err(Error::config(
            BROKER,
            format!("option {option}: no certificate in {path}"),
        ));
    }
    Ok(certs)
}

/// The client side: webpki roots plus the certificates of `ca_file`.
pub(crate) fn client_config(ca_file: Option<&str>) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        for cert in certificates("ca_file", path)? {
            roots
                .add(cert)
                .map_err(|e| Error::config(BROKER, format!("option ca_file: {path}: {e}")))?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::config(BROKER, format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The server side: `cert` (PEM chain) and `key` (PEM private key).
pub(crate) fn acceptor(cert: &str, key: &str) -> Result<tokio_rustls::TlsAcceptor> {
    let chain = certificates("tls_cert", cert)?;
    let key = PrivateKeyDer::from_pem_slice(&read("tls_key", key)?).map_err(|e| {
        Error::config(
            BROKER,
            format!("option tls_key: {key} holds no PEM private key: {e:?}"),
        )
    })?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::config(BROKER, format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| Error::config(BROKER, format!("options tls_cert/tls_key: {e}")))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
