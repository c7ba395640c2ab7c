//! The server's CPU per TLS 1.3 handshake, without sockets: the floor under a wss connect.
//!
//! A rustls client and server (roomcast's own server configuration, `roomcast::tls`) shake
//! hands in memory, in one thread; only the server's calls are timed (`read_tls`,
//! `process_new_packets`, `write_tls`), in this thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`,
//! so other processes on a shared machine do not inflate it), so the figure is what one server
//! core spends on the handshake itself, before any upgrade, hello or socket work. The
//! primitives underneath (the provider's signatures and key agreements, called through rustls'
//! `CryptoProvider` as a handshake calls them) are timed alone as well. It compares the
//! certificate (ECDSA P-256 as `gen-cert` makes it, Ed25519; any other PEM pair with
//! `--pem CERT KEY`, e.g. an RSA-2048 one from `openssl req -x509 -newkey rsa:2048 -nodes ...`),
//! the key exchange the client offers (X25519, secp256r1) and full against resumed handshakes
//! (a session ticket from the previous one). `--provider ring|aws-lc` picks the server's
//! crypto provider (default: the one `roomcast serve` uses, [`roomcast::tls::Crypto::SERVER`]);
//! the client is always ring, and its work is not timed.
//!
//! `--hold N` measures memory instead: N full handshakes (P-256, X25519), each followed by a
//! small request and reply as an upgrade makes, with every server connection kept and every
//! client dropped; it prints the malloc heap in use (glibc's `mallinfo2`, which counts the C
//! allocations of aws-lc as well as Rust's) and the RSS grown per held connection.
//!
//! ```sh
//! cargo run --release --example tls_handshake_cost [-- --rounds 2000] [-- --pem cert.pem key.pem]
//! cargo run --release --example tls_handshake_cost -- --provider ring --hold 2000
//! ```
//!
//! It prints one line per case: microseconds of server CPU per handshake (the median of five
//! batches) and handshakes per server core-second, then one line per primitive.

use roomcast::tls::Crypto;
use rustls::crypto::{ring as client_provider, CryptoProvider, SupportedKxGroup};
use rustls::pki_types::ServerName;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Batches per case; the median is printed.
const BATCHES: usize = 5;

/// CPU time this thread has used.
#[allow(unsafe_code)]
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one `timespec` through a pointer to a valid, live, owned one.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "CLOCK_THREAD_CPUTIME_ID is readable");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A certificate and key on disk, with a name for the table.
struct Identity {
    name: String,
    cert: PathBuf,
    key: PathBuf,
    cert_pem: String,
}

fn generated(
    name: &str,
    alg: &'static rcgen::SignatureAlgorithm,
    dir: &Path,
) -> Result<Identity, Box<dyn std::error::Error>> {
    let key = rcgen::KeyPair::generate_for(alg)?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])?.self_signed(&key)?;
    let (cert_path, key_path) = (dir.join(format!("{name}-cert.pem")), dir.join(format!("{name}-key.pem")));
    std::fs::write(&cert_path, cert.pem())?;
    std::fs::write(&key_path, key.serialize_pem())?;
    Ok(Identity { name: name.to_owned(), cert: cert_path, key: key_path, cert_pem: cert.pem() })
}

/// A client trusting `identity`, offering only `kx`, resuming or not.
fn client(identity: &Identity, kx: &'static dyn SupportedKxGroup, resume: bool) -> Arc<rustls::ClientConfig> {
    let provider = CryptoProvider { kx_groups: vec![kx], ..client_provider::default_provider() };
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut identity.cert_pem.as_bytes()).flatten() {
        let _ = roots.add(cert);
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Arc::new(config)
}

/// Everything `from` has to send, into `buf` (emptied first).
fn take_output<D>(from: &mut rustls::ConnectionCommon<D>, buf: &mut Vec<u8>) {
    buf.clear();
    while from.wants_write() {
        from.write_tls(buf).expect("TLS output");
    }
}

/// `bytes` read and processed by `into`.
fn feed<D: rustls::SideData>(into: &mut rustls::ConnectionCommon<D>, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        into.read_tls(&mut bytes).expect("TLS input");
        into.process_new_packets().expect("TLS records");
    }
}

/// One handshake in memory; returns the server's time in it and whether it resumed.
fn handshake(client_cfg: &Arc<rustls::ClientConfig>, server_cfg: &Arc<rustls::ServerConfig>) -> (Duration, bool) {
    let name = ServerName::try_from("localhost").expect("a valid name");
    let mut client = rustls::ClientConnection::new(Arc::clone(client_cfg), name).expect("client");
    let mut server_time = Duration::ZERO;
    let started = thread_cpu();
    let mut server = rustls::ServerConnection::new(Arc::clone(server_cfg)).expect("server");
    server_time += thread_cpu() - started;
    let mut to_server = Vec::new();
    let mut to_client = Vec::new();
    // Until the client has read the server's tickets: they are part of the server's cost.
    for _ in 0..6 {
        take_output(&mut client, &mut to_server);
        let started = thread_cpu();
        feed(&mut server, &to_server);
        take_output(&mut server, &mut to_client);
        server_time += thread_cpu() - started;
        feed(&mut client, &to_client);
        if !client.is_handshaking() && !server.is_handshaking() && to_client.is_empty() && !client.wants_write() {
            break;
        }
    }
    (server_time, server.handshake_kind() == Some(rustls::HandshakeKind::Resumed))
}

/// Median server microseconds per handshake over [`BATCHES`] batches of `rounds`.
fn measure(
    client_cfg: &Arc<rustls::ClientConfig>,
    server_cfg: &Arc<rustls::ServerConfig>,
    rounds: usize,
    resume: bool,
) -> f64 {
    // A first handshake leaves the ticket the resumed case starts from (and warms caches).
    let _ = handshake(client_cfg, server_cfg);
    let mut batches: Vec<f64> = (0..BATCHES)
        .map(|_| {
            let mut total = Duration::ZERO;
            for _ in 0..rounds {
                let (t, resumed) = handshake(client_cfg, server_cfg);
                assert_eq!(resumed, resume, "the handshake resumed as the case says");
                total += t;
            }
            total.as_secs_f64() * 1e6 / rounds as f64
        })
        .collect();
    batches.sort_by(f64::total_cmp);
    batches[BATCHES / 2]
}

/// Median microseconds of this thread's CPU per call of `op`, over [`BATCHES`] batches.
fn per_call(rounds: usize, mut op: impl FnMut()) -> f64 {
    let mut batches: Vec<f64> = (0..BATCHES)
        .map(|_| {
            let started = thread_cpu();
            for _ in 0..rounds {
                op();
            }
            (thread_cpu() - started).as_secs_f64() * 1e6 / rounds as f64
        })
        .collect();
    batches.sort_by(f64::total_cmp);
    batches[BATCHES / 2]
}

/// What a handshake is made of, alone, through the provider's rustls interface: the server's
/// signature (full handshakes only) and its half of the key agreement (every handshake).
fn primitives(crypto: Crypto, identities: &[Identity], rounds: usize) -> Result<(), Box<dyn std::error::Error>> {
    use rustls::SignatureScheme;
    let provider = crypto.provider();
    let message = [7u8; 130]; // about what TLS 1.3 signs: 64 spaces, a context string, a hash
    for identity in identities {
        let key_der = rustls_pemfile::private_key(&mut &std::fs::read(&identity.key)?[..])?.ok_or("no key")?;
        let key = provider.key_provider.load_private_key(key_der)?;
        let schemes =
            [SignatureScheme::ECDSA_NISTP256_SHA256, SignatureScheme::ED25519, SignatureScheme::RSA_PSS_SHA256];
        let signer = key.choose_scheme(&schemes).ok_or("no signature scheme for the key")?;
        let us = per_call(rounds, || {
            let _ = signer.sign(&message);
        });
        println!("sign         {:<19} {us:>7.1} us", identity.name);
    }
    // The hybrid post-quantum group only aws-lc-rs has, which the server leaves out.
    for name in ["x25519", "secp256r1", "x25519mlkem768"] {
        let Some(&group) = provider.kx_groups.iter().find(|g| format!("{:?}", g.name()).eq_ignore_ascii_case(name))
        else {
            continue;
        };
        // The peer's share, made once: the server generates its own and agrees, per handshake.
        let peer = group.start()?.pub_key().to_vec();
        let us = per_call(rounds, || {
            let _ = group.start_and_complete(&peer);
        });
        println!("key exchange {name:<19} {us:>7.1} us (generate, public key, agree)");
    }
    Ok(())
}

/// Heap bytes in use (glibc malloc, Rust's and C's allocations alike) and the RSS, in bytes.
#[allow(unsafe_code)]
fn heap_and_rss() -> (usize, usize) {
    // SAFETY: mallinfo2 takes no arguments and returns a struct by value.
    let info = unsafe { libc::mallinfo2() };
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    (info.uordblks + info.hblkhd, pages * 4096)
}

/// One full handshake and a small request and reply; the server connection, established.
fn established(
    client_cfg: &Arc<rustls::ClientConfig>,
    server_cfg: &Arc<rustls::ServerConfig>,
) -> rustls::ServerConnection {
    let name = ServerName::try_from("localhost").expect("a valid name");
    let mut client = rustls::ClientConnection::new(Arc::clone(client_cfg), name).expect("client");
    let mut server = rustls::ServerConnection::new(Arc::clone(server_cfg)).expect("server");
    client.writer().write_all(&[b'G'; 200]).expect("request");
    let mut got = [0u8; 200];
    let mut buf = Vec::new();
    for _ in 0..8 {
        take_output(&mut client, &mut buf);
        feed(&mut server, &buf);
        if server.reader().read_exact(&mut got).is_ok() {
            server.writer().write_all(&[b'H'; 150]).expect("reply");
        }
        take_output(&mut server, &mut buf);
        feed(&mut client, &buf);
        let mut reply = [0u8; 150];
        if client.reader().read_exact(&mut reply).is_ok() {
            break;
        }
    }
    assert!(!server.is_handshaking(), "the handshake completed");
    server
}

/// Heap and RSS per established server connection, `n` of them held.
fn hold(crypto: Crypto, identity: &Identity, n: usize) -> Result<(), Box<dyn std::error::Error>> {
    let server_cfg = roomcast::tls::server_config_with(crypto, &identity.cert, &identity.key, Default::default())?;
    let client_cfg = client(identity, client_provider::kx_group::X25519, false);
    for _ in 0..100 {
        drop(established(&client_cfg, &server_cfg)); // warm up what is made once
    }
    let mut held = Vec::with_capacity(n);
    let (heap0, rss0) = heap_and_rss();
    for _ in 0..n {
        held.push(established(&client_cfg, &server_cfg));
    }
    let (heap1, rss1) = heap_and_rss();
    let inline = size_of::<rustls::ServerConnection>();
    println!(
        "{crypto:?}: {n} established server connections held: heap {:.0} B each beyond the {inline} B \
         ServerConnection itself ({:.0} B in all), RSS {:.0} B each (the Vec was reserved before)",
        (heap1 as f64 - heap0 as f64) / n as f64,
        (heap1 as f64 - heap0 as f64) / n as f64 + inline as f64,
        rss1.saturating_sub(rss0) as f64 / n as f64,
    );
    drop(held);
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(1000);
    let crypto = match args.iter().position(|a| a == "--provider").map(|i| args.get(i + 1).map(String::as_str)) {
        None => Crypto::SERVER,
        Some(Some("ring")) => Crypto::Ring,
        Some(Some("aws-lc")) => Crypto::AwsLc,
        Some(Some("mixed")) => Crypto::Mixed,
        Some(_) => return Err("--provider ring|aws-lc|mixed".into()),
    };
    let dir = std::env::temp_dir().join(format!("roomcast-tls-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut identities = vec![
        generated("ecdsa-p256", &rcgen::PKCS_ECDSA_P256_SHA256, &dir)?,
        generated("ed25519", &rcgen::PKCS_ED25519, &dir)?,
    ];
    if let Some(i) = args.iter().position(|a| a == "--pem") {
        let (cert, key) = (args.get(i + 1).ok_or("--pem CERT KEY")?, args.get(i + 2).ok_or("--pem CERT KEY")?);
        identities.push(Identity {
            name: Path::new(cert).file_stem().map_or("pem".into(), |s| s.to_string_lossy().into_owned()),
            cert: cert.into(),
            key: key.into(),
            cert_pem: std::fs::read_to_string(cert)?,
        });
    }
    if let Some(n) = args.iter().position(|a| a == "--hold").and_then(|i| args.get(i + 1)) {
        hold(crypto, &identities[0], n.parse()?)?;
        let _ = std::fs::remove_dir_all(&dir);
        return Ok(());
    }
    let kx_groups: [(&str, &'static dyn SupportedKxGroup); 2] =
        [("x25519", client_provider::kx_group::X25519), ("secp256r1", client_provider::kx_group::SECP256R1)];
    println!("server CPU per TLS 1.3 handshake ({crypto:?}), in memory, median of {BATCHES} batches of {rounds}");
    for identity in &identities {
        let server_cfg = roomcast::tls::server_config_with(crypto, &identity.cert, &identity.key, Default::default())?;
        for (kx_name, kx) in kx_groups {
            for resume in [false, true] {
                let us = measure(&client(identity, kx, resume), &server_cfg, rounds, resume);
                println!(
                    "{:<12} {:<10} {:<8} {us:>7.1} us  {:>7.0} handshakes per server core-second",
                    identity.name,
                    kx_name,
                    if resume { "resumed" } else { "full" },
                    1e6 / us
                );
            }
        }
    }
    println!(
        "server CPU per primitive ({crypto:?}, through rustls' provider), median of {BATCHES} batches of {rounds}"
    );
    let primitives = primitives(crypto, &identities, rounds);
    let _ = std::fs::remove_dir_all(&dir);
    primitives
}
