//! Test certificates for TLS brokers, generated with `rcgen`: a CA, a server certificate
//! for `localhost`/`127.0.0.1` and a client certificate, both signed by that CA, and a
//! second CA that signed neither (for "unknown CA" tests).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::HarnessError;

/// PEM files of a TLS test broker, in its data directory.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA that signed the server and client certificates.
    pub ca: PathBuf,
    /// The server certificate (`localhost`, `127.0.0.1`).
    pub server_cert: PathBuf,
    /// The server's private key (PKCS#8).
    pub server_key: PathBuf,
    /// A client certificate signed by [`TlsFiles::ca`] (CN `polybridge-client`).
    pub client_cert: PathBuf,
    /// The client's private key (PKCS#8).
    pub client_key: PathBuf,
    /// A CA that signed nothing here: a client trusting only it must refuse the server.
    pub other_ca: PathBuf,
}

fn tls_error(what: &str, e: impl std::fmt::Display) -> HarnessError {
    HarnessError::Io {
        broker: "tls",
        what: format!("{what}: {e}"),
        source: std::io::Error::other(e.to_string()),
    }
}

fn ca(name: &str) -> Result<CertifiedIssuer<'static, KeyPair>, HarnessError> {
    let key = KeyPair::generate().map_err(|e| tls_error("generating a CA key", e))?;
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| tls_error("CA params", e))?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, key).map_err(|e| tls_error("signing the CA", e))
}

fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    cn: &str,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> Result<(String, String), HarnessError> {
    let key = KeyPair::generate().map_err(|e| tls_error("generating a key", e))?;
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .map_err(|e| tls_error("certificate params", e))?;
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    let cert = params
        .signed_by(&key, issuer)
        .map_err(|e| tls_error("signing a certificate", e))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Generates the certificates into `dir`.
pub fn generate(dir: &Path) -> Result<TlsFiles, HarnessError> {
    let ca_issuer = ca("polybridge test CA")?;
    let other = ca("polybridge other CA")?;
    let (server_cert, server_key) = leaf(
        &ca_issuer,
        "localhost",
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let (client_cert, client_key) = leaf(
        &ca_issuer,
        "polybridge-client",
        &["polybridge-client"],
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    let files = TlsFiles {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server-key.pem"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client-key.pem"),
        other_ca: dir.join("other-ca.pem"),
    };
    for (path, text) in [
        (&files.ca, ca_issuer.pem()),
        (&files.server_cert, server_cert),
        (&files.server_key, server_key),
        (&files.client_cert, client_cert),
        (&files.client_key, client_key),
        (&files.other_ca, other.pem()),
    ] {
        std::fs::write(path, text).map_err(|source| HarnessError::Io {
            broker: "tls",
            what: format!("writing {}", path.display()),
            source,
        })?;
    }
    Ok(files)
}
