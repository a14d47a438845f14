//! TLS configuration shared by the adapters whose client crates take a rustls
//! configuration (MQTT, STOMP, HTTP, WebSocket): certificate files named in the broker URL
//! (`ca_file`, `cert_file`, `key_file`), turned into rustls client and server
//! configurations with the ring provider. Feature `tls`.
//!
//! Errors are [`Error::Config`] naming the broker, the option and the file; file contents
//! (keys) never appear in them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::{BrokerUrl, Error, Result};

/// Certificate files of a TLS client connection, from the URL options `ca_file`,
/// `cert_file` and `key_file`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificates (PEM) to trust (`ca_file`); see [`DefaultRoots`] for what is trusted
    /// without it.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and private key (PEM) for mutual TLS (`cert_file`, `key_file`).
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// The URL options [`TlsFiles::from_url`] reads, for the adapters' lists of known options.
pub const TLS_OPTIONS: &[&str] = &["tls", "ca_file", "cert_file", "key_file"];

impl TlsFiles {
    /// The TLS files of `url`, or `None` when the connection is plain. TLS is on when the
    /// URL's scheme is one of `tls_schemes`, when `tls=true`, or when any file option is
    /// given. `cert_file` and `key_file` go together.
    pub fn from_url(
        broker: &'static str,
        url: &BrokerUrl,
        tls_schemes: &[&str],
    ) -> Result<Option<TlsFiles>> {
        let client_cert = match (url.option("cert_file"), url.option("key_file")) {
            (Some(c), Some(k)) => Some((c.into(), k.into())),
            (None, None) => None,
            _ => {
                return Err(Error::config(
                    broker,
                    format!("options cert_file and key_file in {url} go together"),
                ))
            }
        };
        let files = TlsFiles {
            ca_file: url.option("ca_file").map(Into::into),
            client_cert,
        };
        let tls = tls_schemes.contains(&url.scheme())
            || url.parse_option::<bool>(broker, "tls")?.unwrap_or(false)
            || files != TlsFiles::default();
        Ok(tls.then_some(files))
    }
}

/// What a client trusts besides or instead of `ca_file`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultRoots {
    /// The operating system's roots, used only when no `ca_file` is given (brokers: a
    /// private CA replaces the public ones).
    SystemUnlessCaFile,
    /// The Mozilla roots (webpki-roots) always, plus `ca_file` (HTTP and WebSocket: public
    /// endpoints stay reachable).
    MozillaPlusCaFile,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn file_error(broker: &'static str, option: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::config(
        broker,
        format!("option {option}: cannot use {}: {e}", path.display()),
    )
}

/// The PEM certificates of `path`, at least one.
fn certificates(
    broker: &'static str,
    option: &str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(broker, option, path, e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| file_error(broker, option, path, e))?;
    if certs.is_empty() {
        return Err(file_error(
            broker,
            option,
            path,
            "no PEM certificate in the file",
        ));
    }
    Ok(certs)
}

fn private_key(broker: &'static str, option: &str, path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(broker, option, path, e))
}

/// The rustls client configuration for `files`.
pub fn client_config(
    broker: &'static str,
    files: &TlsFiles,
    roots: DefaultRoots,
) -> Result<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    if roots == DefaultRoots::MozillaPlusCaFile {
        store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    match &files.ca_file {
        Some(path) => {
            for cert in certificates(broker, "ca_file", path)? {
                store
                    .add(cert)
                    .map_err(|e| file_error(broker, "ca_file", path, e))?;
            }
        }
        None if roots == DefaultRoots::SystemUnlessCaFile => {
            // Unreadable system certificates are skipped: the handshake then fails with a
            // clear "unknown issuer" if the broker needed one of them.
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = store.add(cert);
            }
        }
        None => {}
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::config(broker, format!("TLS: {e}")))?
        .with_root_certificates(store);
    let config = match &files.client_cert {
        Some((cert, key)) => {
            let chain = certificates(broker, "cert_file", cert)?;
            let key = private_key(broker, "key_file", key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| Error::config(broker, format!("client certificate: {e}")))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// The rustls server configuration presenting the PEM chain `cert` with the PEM private
/// key `key`, without client authentication. `cert_option` and `key_option` name the URL
/// options the files came from, for errors.
pub fn server_config(
    broker: &'static str,
    (cert_option, cert): (&str, &Path),
    (key_option, key): (&str, &Path),
) -> Result<rustls::ServerConfig> {
    let chain = certificates(broker, cert_option, cert)?;
    let key = private_key(broker, key_option, key)?;
    rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::config(broker, format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| Error::config(broker, format!("options {cert_option}/{key_option}: {e}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn url(text: &str) -> BrokerUrl {
        BrokerUrl::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn tls_is_on_by_scheme_option_or_files() {
        let plain = TlsFiles::from_url("mqtt", &url("mqtt://h"), &["mqtts"]).unwrap();
        assert_eq!(plain, None);
        let by_scheme = TlsFiles::from_url("mqtt", &url("mqtts://h"), &["mqtts"]).unwrap();
        assert_eq!(by_scheme, Some(TlsFiles::default()));
        let by_option = TlsFiles::from_url("mqtt", &url("mqtt://h?tls=true"), &["mqtts"]);
        assert_eq!(by_option.unwrap(), Some(TlsFiles::default()));
        let by_file = TlsFiles::from_url("mqtt", &url("mqtt://h?ca_file=/ca.pem"), &["mqtts"]);
        assert_eq!(
            by_file.unwrap().and_then(|f| f.ca_file),
            Some(PathBuf::from("/ca.pem"))
        );
    }

    #[test]
    fn a_certificate_without_its_key_is_refused() {
        let e = TlsFiles::from_url("stomp", &url("stomps://h?cert_file=/c.pem"), &["stomps"])
            .unwrap_err();
        assert!(e.to_string().contains("cert_file and key_file"), "{e}");
    }

    #[test]
    fn missing_and_empty_files_name_the_option_and_the_file() {
        let files = TlsFiles {
            ca_file: Some("/nonexistent/ca.pem".into()),
            client_cert: None,
        };
        let e = client_config("mqtt", &files, DefaultRoots::SystemUnlessCaFile).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("ca_file") && text.contains("/nonexistent/ca.pem"),
            "{text}"
        );

        let dir = std::env::temp_dir().join(format!("pb-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let files = TlsFiles {
            ca_file: Some(empty.clone()),
            client_cert: None,
        };
        let e = client_config("mqtt", &files, DefaultRoots::MozillaPlusCaFile).unwrap_err();
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        let e = server_config("http", ("tls_cert", &empty), ("tls_key", &empty)).unwrap_err();
        assert!(e.to_string().contains("tls_cert"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
