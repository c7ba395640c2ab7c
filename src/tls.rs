//! TLS setup for the `wss` listener (rustls with the `aws-lc-rs` provider) and self-signed
//! certificates for tests and local use (`roomcast gen-cert`, via rcgen).
//!
//! **Resumption is on by default**, because a reconnect storm is where a push tier pays for
//! TLS: every viewer of a restarted edge or a flapping network comes back at once.
//!
//! - TLS 1.3 tickets ([`Resumption::tickets`], `wss.session_tickets`, default 1, where rustls
//!   and OpenSSL send 2: each ticket costs the server about 5 us of a ~135 us wss connect,
//!   and a reconnect uses one and gets a fresh one, so one keeps every viewer resuming;
//!   `benches/wss_storm.sh` 2026-12-01, ring then, server on one core, medians: 135 us per full
//!   connect with 1 ticket (126-140, 5 runs), 138 with 2 (133-147, 5 runs); resumed 118 us
//!   (116-119) against 125 (123-147); in memory 80 us against 85 per full handshake).
//!   Stateless: sealed with ChaCha20-Poly1305 under a key that lives only in this process and
//!   rotates every 6 hours (rustls' ring `Ticketer`, a 12 hour ticket life; with the symmetric
//!   crypto from ring, see "the cheapest provider": ~1 us cheaper per handshake than aws-lc-rs's
//!   AES-256-CBC + HMAC-SHA256 one, in memory, 2026-12-01, 47.2 / 47.2 / 48.0 against 48.3 /
//!   48.4 / 49.0 us per full handshake, alternating).
//!   One key for every worker (one `ServerConfig`, shared by `Arc`), because `SO_REUSEPORT`
//!   sends a reconnect to any worker; rustls takes a read lock on the key per ticket sealed or
//!   opened, only in handshakes, never on the delivery path. A ticket costs the server nothing
//!   while the connection lives: it is written once after the handshake and forgotten. Tickets
//!   are sent after resumed handshakes too, so a viewer that reconnects again resumes again. A
//!   restart makes every ticket unreadable: the storm after a restart is one of full
//!   handshakes. 0-RTT early data stays off (`max_early_data_size = 0`): a replayed `join` or
//!   `comment` is not harmless, and the upgrade needs a round trip anyway.
//! - A bounded server-side session cache ([`Resumption::cache_entries`], `wss.session_cache`,
//!   default 4,096 entries of a few hundred bytes: at most ~1.5 MiB) for TLS 1.2 clients that
//!   resume by session id rather than ticket. It is rustls' `ServerSessionMemoryCache` (one
//!   mutex, taken only in those handshakes). TLS 1.3 never uses it while tickets are on.
//!
//! A resumed TLS 1.3 handshake still runs an ephemeral key exchange (rustls only accepts
//! `psk_dhe_ke`), so it keeps forward secrecy; what it saves is the certificate signature on
//! the server and the chain verification on the client: ~9 us of the server's ~50 (below).
//! Resumption pays on the client (no certificate chain to verify) more than on the server;
//! without 0-RTT it saves no round trip.
//!
//! **The cheapest provider: aws-lc-rs for the public-key work, ring for the record layer**
//! ([`Crypto::SERVER`] is [`Crypto::Mixed`]). The handshake's key exchange, certificate
//! signature and random come from aws-lc-rs (rustls' default provider): its X25519 costs half
//! of ring's, and the key exchange is in every handshake, resumed too; its DRBG makes no
//! `getrandom` call per connect where ring's `SystemRandom` made 6 (`strace -c` through a
//! storm). The cipher suites (the record layer's AES-GCM and the key schedule's SHA-256 HKDF)
//! stay ring's: as fast, and ring keeps a connection's keys on the Rust heap, where AWS-LC
//! `malloc`s each direction's `EVP_AEAD_CTX` on top (~180 B more per connection, ~264 B of RSS
//! per idle wss connection). Both are rustls providers; a `CryptoProvider` is built from parts
//! by design, and ring stays linked anyway (the clients in tests and the loadgen, `crate::auth`,
//! rcgen). 2026-12-01, this machine, `taskset -c 0 target/release/examples/tls_handshake_cost
//! --rounds 1000 --provider ring|aws-lc|mixed`, thread CPU, medians (ring and aws-lc-rs: five
//! runs each at 15:44-15:46, load 2.2-3.0; the three side by side: three runs each at 16:26,
//! load ~1.4):
//!
//! | server side, in memory | ring 0.17.14 | aws-lc-rs 1.19 (aws-lc-sys 0.47) | mixed |
//! |---|---|---|---|
//! | full TLS 1.3 handshake, P-256 certificate, X25519 | 65.5 us; 66.0 at 16:26 | 49.9 us; 48.5 | 45.8 us |
//! | resumed (ticket), X25519 | 56.4 us; 56.0 | 40.9 us; 39.7 | 37.9 us |
//! | X25519 alone (generate, public key, agree) | 41.5 us | 21.1 us | aws-lc-rs's |
//! | ECDSA P-256 signature alone | 12.0 us | 10.9 us | aws-lc-rs's |
//! | heap per established buffered connection (`--hold 2000`) | 7,600 B | 7,780 B | 7,600 B |
//!
//! Over sockets (`benches/wss_storm.sh`, 10,000 connects, TLS 1.3 handshake + upgrade + hello,
//! server core 0, loadgen core 1, builds alternating, BENCHMARKS.md has the series): full
//! connects ~115 us of server CPU with ring and the buffered transport, ~87 us now (11,494
//! per server CPU-second), resumed ~95 -> ~75 us. The cost: aws-lc-sys builds its C with the
//! `cc` crate and gcc (no cmake, nasm, Go or bindgen on x86_64 Linux; about 50 s of one core
//! added to a clean build) and the release binary grows by ~3.4 MB stripped.
//!
//! **The cheapest certificate and key exchange**, from the same runs: the server signs once per
//! full handshake and agrees on a key once per handshake.
//! - Certificate: ECDSA P-256, what `gen-cert` makes (rcgen's default): 10.9 us a signature.
//!   Ed25519 signs in 5.7 us in aws-lc-rs (16.5 in ring), but no browser accepts an Ed25519
//!   server certificate, and P-256 is the one every browser and public CA supports. RSA-2048 is
//!   not measured here (rcgen cannot generate one; `--pem` takes any pair) and is known to sign
//!   far slower.
//! - Key exchange: X25519 (21.1 us to generate, derive the public key and agree) against
//!   secp256r1's 35.7 us. X25519 is also what every client sends its first key share for, so
//!   the server keeps it first. The groups are ring's three (X25519, secp256r1, secp384r1):
//!   aws-lc-rs's hybrid post-quantum `X25519MLKEM768` (33.0 us, one run) is left out, because
//!   rustls takes the first group of the client's list it supports and browsers list the hybrid
//!   first (sending a plain X25519 share with it), so enabling it would put +12 us on every
//!   browser handshake (still less than ring's plain X25519) and ~1 KiB on the server's first
//!   flight. Turning it on is one line in [`Crypto`]'s `server_provider`: a security choice,
//!   not made here.
//!
//! **The cheapest cipher suite**: the server picks `TLS13_AES_128_GCM_SHA256` (and its TLS 1.2
//! ECDHE counterparts) whatever the client's order (`ignore_client_order`). Its key schedule
//! and transcript hash are SHA-256, which x86 and ARM cores run in hardware (SHA-NI, the ARMv8
//! crypto extensions), where `AES_256_GCM_SHA384` (first in rustls' order, and so what a
//! rustls client such as the loadgen asks for) hashes with SHA-384 in software: a profile of a
//! wss storm showed `sha512_block_data_order_nohw` at 9% of the server's CPU. AES-128 also
//! seals each record in 10 rounds instead of 14, and is the 128-bit security level of the
//! P-256 certificate and the X25519 exchange (browsers offer it first anyway). 2026-12-01,
//! this machine, ring, alternating: in memory 84.4 / 81.9 -> 74.1 / 69.7 us per full
//! handshake; over sockets (`benches/wss_storm.sh`) see BENCHMARKS.md.
//!
//! Memory per idle TLS connection is a budget (DESIGN.md): nothing here keeps per-connection
//! state (tickets are stateless); a connection holds rustls' session state and no buffer, see
//! [`crate::runtime::transport`].
//!
//! Errors name the file and say what is wrong with it; an OS or rustls cause is the error's
//! `source()`, never repeated in its message, so a printed chain shows each cause once.

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::NamedGroup;
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

/// A rustls crypto provider roomcast is built with. The server uses [`Crypto::SERVER`] (see
/// the module doc, "the cheapest provider"); the clients (tests, loadgen) use ring, and
/// `examples/tls_handshake_cost.rs --provider` compares the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crypto {
    /// aws-lc-rs (AWS-LC), rustls' default provider, whole.
    AwsLc,
    /// ring.
    Ring,
    /// ring's cipher suites (the record layer's AEAD and the key schedule's hashes) and ticket
    /// sealer with aws-lc-rs's key exchange, private keys (signing) and random.
    Mixed,
}

impl Crypto {
    /// The server's provider.
    pub const SERVER: Self = Self::Mixed;

    /// The provider with its default suites, key exchange groups and key loading.
    pub fn provider(self) -> rustls::crypto::CryptoProvider {
        match self {
            Self::AwsLc => rustls::crypto::aws_lc_rs::default_provider(),
            Self::Ring => rustls::crypto::ring::default_provider(),
            Self::Mixed => rustls::crypto::CryptoProvider {
                cipher_suites: rustls::crypto::ring::default_provider().cipher_suites,
                ..rustls::crypto::aws_lc_rs::default_provider()
            },
        }
    }

    /// The provider's session ticket sealer (see the module doc, "tickets").
    fn ticketer(self) -> Result<Arc<dyn rustls::server::ProducesTickets>, rustls::Error> {
        match self {
            Self::AwsLc => rustls::crypto::aws_lc_rs::Ticketer::new(),
            Self::Mixed | Self::Ring => rustls::crypto::ring::Ticketer::new(),
        }
    }

    /// The server's provider: these suites with the AES-128-GCM / SHA-256 ones first (see the
    /// module doc, "the cheapest cipher suite").
    fn server_provider(self) -> Arc<rustls::crypto::CryptoProvider> {
        let mut provider = self.provider();
        // ring's groups, X25519 first (see the module doc, "the cheapest certificate and key
        // exchange"): aws-lc-rs's hybrid X25519MLKEM768 stays out, because rustls takes the
        // first group in the client's list that it supports, and browsers list that one first.
        provider
            .kx_groups
            .retain(|group| matches!(group.name(), NamedGroup::X25519 | NamedGroup::secp256r1 | NamedGroup::secp384r1));
        // A stable sort keeps the provider's order among the rest (AES-256 before ChaCha20).
        provider.cipher_suites.sort_by_key(|suite| match suite.suite() {
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
            | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 0,
            _ => 1,
        });
        Arc::new(provider)
    }
}

/// How returning clients may skip the full handshake (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resumption {
    /// TLS 1.3 tickets sent after each handshake, full or resumed (`wss.session_tickets`); also
    /// turns on TLS 1.2 tickets. 0: no tickets, so no TLS 1.3 resumption.
    pub tickets: usize,
    /// Sessions remembered for TLS 1.2 clients that resume by session id
    /// (`wss.session_cache`); 0: none.
    pub cache_entries: usize,
}

impl Resumption {
    /// Neither tickets nor a cache: every handshake is a full one.
    pub const OFF: Self = Self { tickets: 0, cache_entries: 0 };
}

impl Default for Resumption {
    /// The defaults of `wss.session_tickets` and `wss.session_cache`.
    fn default() -> Self {
        Self { tickets: 1, cache_entries: 4096 }
    }
}

/// The server configuration for a PEM certificate chain and private key: TLS 1.3 and 1.2,
/// no client authentication, session resumption as `resumption` says, on [`Crypto::SERVER`].
pub fn server_config(cert: &Path, key: &Path, resumption: Resumption) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    server_config_with(Crypto::SERVER, cert, key, resumption)
}

/// [`server_config`] on another provider (to compare them).
pub fn server_config_with(
    crypto: Crypto,
    cert: &Path,
    key: &Path,
    resumption: Resumption,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &read(cert)?[..])
        .collect::<Result<_, _>>()
        .map_err(|e| pem_err(cert, format!("not a valid PEM certificate file ({e})")))?;
    if certs.is_empty() {
        return Err(pem_err(cert, "holds no PEM \"CERTIFICATE\" block; expected a certificate chain"));
    }
    let key_der: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &read(key)?[..])
        .map_err(|e| pem_err(key, format!("not a valid PEM key file ({e})")))?
        .ok_or_else(|| pem_err(key, "holds no PEM private key block (PRIVATE KEY, RSA or EC PRIVATE KEY)"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(crypto.server_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)?;
    // The server's suite order wins over the client's (see the module doc).
    config.ignore_client_order = true;
    config.send_tls13_tickets = resumption.tickets;
    if resumption.tickets > 0 {
        config.ticketer = crypto.ticketer()?;
    }
    if resumption.cache_entries == 0 {
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    } else {
        config.session_storage = rustls::server::ServerSessionMemoryCache::new(resumption.cache_entries);
    }
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
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(Crypto::Ring.provider()))
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
        let server_cfg =
            server_config(&dir.join("cert.pem"), &dir.join("key.pem"), Resumption::default()).expect("server config");
        let _ = std::fs::remove_dir_all(&dir);
        let client_cfg = client_config_trusting(&cert_pem).expect("client config");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let mut client = rustls::ClientConnection::new(client_cfg, name).expect("client");
        let mut server = rustls::ServerConnection::new(server_cfg).expect("server");
        client.writer().write_all(b"ping").expect("write");
        pump(&mut client, &mut server);
        let mut got = [0u8; 4];
        server.reader().read_exact(&mut got).expect("plaintext arrives");
        assert_eq!(&got, b"ping");
        // The client (rustls' default order) asks for AES-256 first; the server picks its own.
        let suite = server.negotiated_cipher_suite().map(|s| s.suite());
        assert_eq!(suite, Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256));
    }

    /// Carry records both ways, in memory, until the handshake (and what was written) is done.
    fn pump(client: &mut rustls::ClientConnection, server: &mut rustls::ServerConnection) {
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
    }

    /// A handshake of a fresh client connection on `client_cfg` with `server_cfg`, in memory,
    /// until both are done and the server's tickets are read; the server's view of its kind.
    fn handshake_kind(
        client_cfg: &Arc<rustls::ClientConfig>,
        server_cfg: &Arc<rustls::ServerConfig>,
    ) -> Option<rustls::HandshakeKind> {
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let mut client = rustls::ClientConnection::new(Arc::clone(client_cfg), name).expect("client");
        let mut server = rustls::ServerConnection::new(Arc::clone(server_cfg)).expect("server");
        pump(&mut client, &mut server);
        assert!(!client.is_handshaking() && !server.is_handshaking());
        server.handshake_kind()
    }

    fn configs(resumption: Resumption) -> (Arc<rustls::ServerConfig>, String) {
        let (cert_pem, key_pem) = generate_self_signed(&["localhost".into()]).expect("generate");
        let dir =
            std::env::temp_dir().join(format!("roomcast-tls-resume-{}-{}", std::process::id(), resumption.tickets));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("cert.pem"), &cert_pem).expect("write");
        std::fs::write(dir.join("key.pem"), &key_pem).expect("write");
        let server = server_config(&dir.join("cert.pem"), &dir.join("key.pem"), resumption).expect("server config");
        let _ = std::fs::remove_dir_all(&dir);
        (server, cert_pem)
    }

    #[test]
    fn a_second_handshake_resumes_with_the_default_resumption() {
        let (server, cert_pem) = configs(Resumption::default());
        let client = client_config_trusting(&cert_pem).expect("client config");
        assert_eq!(handshake_kind(&client, &server), Some(rustls::HandshakeKind::Full));
        // Tickets come after resumed handshakes too: a viewer resumes again and again.
        for _ in 0..3 {
            assert_eq!(handshake_kind(&client, &server), Some(rustls::HandshakeKind::Resumed));
        }
    }

    #[test]
    fn without_tickets_every_tls13_handshake_is_full() {
        let (server, cert_pem) = configs(Resumption::OFF);
        let client = client_config_trusting(&cert_pem).expect("client config");
        assert_eq!(handshake_kind(&client, &server), Some(rustls::HandshakeKind::Full));
        assert_eq!(handshake_kind(&client, &server), Some(rustls::HandshakeKind::Full));
    }

    #[test]
    fn a_browser_like_client_listing_the_hybrid_group_first_gets_x25519_without_a_retry() {
        let (server, cert_pem) = configs(Resumption::OFF);
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut cert_pem.as_bytes()) {
            roots.add(cert.expect("cert")).expect("root");
        }
        // As Chrome and Firefox do: X25519MLKEM768 first, with a plain X25519 share beside it.
        let mut provider = Crypto::AwsLc.provider();
        provider.kx_groups =
            vec![rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768, rustls::crypto::aws_lc_rs::kx_group::X25519];
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let mut client = rustls::ClientConnection::new(Arc::new(client), name).expect("client");
        let mut server = rustls::ServerConnection::new(server).expect("server");
        pump(&mut client, &mut server);
        assert_eq!(server.handshake_kind(), Some(rustls::HandshakeKind::Full), "no HelloRetryRequest");
        let group = server.negotiated_key_exchange_group().map(|g| g.name());
        assert_eq!(group, Some(NamedGroup::X25519));
    }

    #[test]
    fn errors_name_the_file_and_report_the_cause_once() {
        let e = server_config(Path::new("/nonexistent/c.pem"), Path::new("/nonexistent/k.pem"), Resumption::OFF)
            .expect_err("missing");
        assert_eq!(e.to_string(), "cannot read /nonexistent/c.pem");
        let cause = std::error::Error::source(&e).expect("the OS error is the source").to_string();
        assert!(cause.contains("No such file"), "{cause}");
    }
}
