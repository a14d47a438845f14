//! The rustls client configuration of STOMP over TLS (`stomp+ssl://`, `tls=true`): the CA file's certificates (or the
//! system's roots) and an optional client certificate for mutual TLS.

use std::sync::Arc;

use polybridge_core::{Error, Result};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsFiles;
use crate::BROKER;

fn file_error(endpoint: &str, path: &std::path::Path, e: impl std::fmt::Display) -> Error {
    Error::config(
        BROKER,
        format!("{endpoint}: cannot read {}: {e}", path.display()),
    )
}

/// Builds the TLS client configuration for `files`.
pub fn client_config(
    files: &TlsFiles,
    endpoint: &str,
) -> Result<Arc<tokio_rustls::rustls::ClientConfig>> {
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
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
    let builder = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
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
