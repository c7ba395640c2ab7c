//! TLS setup for the `wss` listener (rustls with the `ring` provider) and self-signed
//! certificates for tests and local use (`roomcast gen-cert`, via rcgen).
//!
//! Memory per idle TLS connection is a budget (DESIGN.md): session tickets are off, so a
//! connection holds no ticket state, and nothing here keeps per-connection buffers.
//!
//! Errors name the file and say what is wrong with it; an OS or rustls cause is the error's
//! `source()`, never repeated in its message, so a printed chain shows each cause once.

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// Why TLS could not be set up; the message names the file, the cause is the `source()`.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file holds no usable PEM item of the expected kind.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: String,
        /// What is missing or wrong.
        message: String,
    },
    /// rustls refused the certificate/key pair.
    #[error("the certificate and key do not form a valid TLS configuration")]
    Rustls(#[from] rustls::Error),
    /// Certificate generation failed.
    #[error("cannot generate a certificate")]
    Generate(#[from] rcgen::Error),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.display().to_string(), source })
}

fn pem_err(path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::Pem { path: path.display().to_string(), message: message.into() }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server configuration for a PEM certificate chain and private key: TLS 1.3 and 1.2,
/// no client authentication, no session tickets.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &read(cert)?[..])
        .collect::<Result<_, _>>()
        .map_err(|e| pem_err(cert, format!("not a valid PEM certificate file ({e})")))?;
    if certs.is_empty() {
        return Err(pem_err(cert, "holds no PEM \"CERTIFICATE\" block; expected a certificate chain"));
    }
    let key_der: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &read(key)?[..])
        .map_err(|e| pem_err(key, format!("not a valid PEM key file ({e})")))?
        .ok_or_else(|| pem_err(key, "holds no PEM private key block (PRIVATE KEY, RSA or EC PRIVATE KEY)"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)?;
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// A self-signed certificate for `hosts` (DNS names or IP addresses): `(cert_pem, key_pem)`.
pub fn generate_self_signed(hosts: &[String]) -> Result<(String, String), TlsError> {
    let certified = rcgen::generate_simple_self_signed(hosts.to_vec())?;
    Ok((certified.cert.pem(), certified.signing_key.serialize_pem()))
}

/// A client configuration that trusts exactly the certificate in `cert_pem` (tests, loadgen).
pub fn client_config_trusting(cert_pem: &str) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut cert_pem.as_bytes()) {
        let cert = cert.map_err(|e| pem_err(Path::new("<cert>"), format!("bad PEM: {e}")))?;
        roots.add(cert)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn generated_certificate_serves_a_handshake_in_memory() {
        let (cert_pem, key_pem) = generate_self_signed(&["localhost".into()]).expect("generate");
        let dir = std::env::temp_dir().join(format!("roomcast-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("cert.pem"), &cert_pem).expect("write");
        std::fs::write(dir.join("key.pem"), &key_pem).expect("write");
        let server_cfg = server_config(&dir.join("cert.pem"), &dir.join("key.pem")).expect("server config");
        let _ = std::fs::remove_dir_all(&dir);
        let client_cfg = client_config_trusting(&cert_pem).expect("client config");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let mut client = rustls::ClientConnection::new(client_cfg, name).expect("client");
        let mut server = rustls::ServerConnection::new(server_cfg).expect("server");
        client.writer().write_all(b"ping").expect("write");
        for _ in 0..10 {
            let mut buf = Vec::new();
            client.write_tls(&mut buf).expect("client out");
            server.read_tls(&mut &buf[..]).expect("server in");
            server.process_new_packets().expect("server ok");
            let mut buf = Vec::new();
            server.write_tls(&mut buf).expect("server out");
            client.read_tls(&mut &buf[..]).expect("client in");
            client.process_new_packets().expect("client ok");
        }
        let mut got = [0u8; 4];
        server.reader().read_exact(&mut got).expect("plaintext arrives");
        assert_eq!(&got, b"ping");
    }

    #[test]
    fn errors_name_the_file_and_report_the_cause_once() {
        let e = server_config(Path::new("/nonexistent/c.pem"), Path::new("/nonexistent/k.pem")).expect_err("missing");
        assert_eq!(e.to_string(), "cannot read /nonexistent/c.pem");
        let cause = std::error::Error::source(&e).expect("the OS error is the source").to_string();
        assert!(cause.contains("No such file"), "{cause}");
    }
}
