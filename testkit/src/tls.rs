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

/// Test certificates ([`TlsFiles`]) in a new temporary directory, for tests that serve TLS
/// themselves (the HTTP and WebSocket adapters' servers). The files are removed with the
/// returned directory.
pub fn test_certificates() -> Result<(TlsFiles, tempfile::TempDir), HarnessError> {
    let dir = tempfile::Builder::new()
        .prefix("polybridge-tls-")
        .tempdir()
        .map_err(|source| HarnessError::Io {
            broker: "tls",
            what: "creating a directory for test certificates".into(),
            source,
        })?;
    Ok((generate(dir.path())?, dir))
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

/// The password of the PKCS#12 stores [`java_stores`] writes (test-only, not a secret).
pub(crate) const JAVA_STORE_PASSWORD: &str = "polybridge";

/// PKCS#12 key and trust stores for a Java broker (ActiveMQ), made from `files` in `dir`:
/// `server.p12` (the server certificate and key, by `openssl pkcs12 -export`) and
/// `trust.p12` (the test CA as a trusted certificate, by the JDK's `keytool`, which marks
/// it trusted the way Java's PKCS#12 reader needs). Returns (key store, trust store).
pub(crate) fn java_stores(
    files: &TlsFiles,
    dir: &Path,
) -> Result<(PathBuf, PathBuf), HarnessError> {
    let (keystore, truststore) = (dir.join("server.p12"), dir.join("trust.p12"));
    let pass = format!("pass:{JAVA_STORE_PASSWORD}");
    let mut export = std::process::Command::new("openssl");
    export
        .args(["pkcs12", "-export", "-name", "server", "-passout", &pass])
        .arg("-in")
        .arg(&files.server_cert)
        .arg("-inkey")
        .arg(&files.server_key)
        .arg("-out")
        .arg(&keystore);
    run(export, "openssl pkcs12 -export (the server's key store)")?;
    let _ = std::fs::remove_file(&truststore);
    let mut import = std::process::Command::new("keytool");
    import
        .args(["-importcert", "-noprompt", "-alias", "polybridge-ca"])
        .args(["-storetype", "PKCS12", "-storepass", JAVA_STORE_PASSWORD])
        .arg("-file")
        .arg(&files.ca)
        .arg("-keystore")
        .arg(&truststore);
    run(import, "keytool -importcert (the server's trust store)")?;
    Ok((keystore, truststore))
}

fn run(mut command: std::process::Command, what: &str) -> Result<(), HarnessError> {
    let output = command.output().map_err(|source| HarnessError::Io {
        broker: "tls",
        what: format!("running {what}"),
        source,
    })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(tls_error(
            what,
            format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        ))
    }
}
