//! TLS session resumption over real sockets: a viewer that reconnects to `wss` resumes its
//! session (no certificate signature on the server) with the default configuration, with a
//! TLS 1.3 ticket or a TLS 1.2 session id, on whichever worker its reconnect lands, and again on
//! the next reconnect; turning tickets and the cache off makes every handshake a full one.
//!
//! The client is tungstenite's over rustls, with one `ClientConfig` (and so one session store)
//! per simulated viewer, as a browser keeps one per site. Each connect reads the `101` and the
//! `hello`, which also proves the tickets the server sends after its handshake were read.

mod support;

use rustls::client::{Resumption, Tls12Resumption};
use rustls::HandshakeKind;
use std::net::TcpStream;
use std::sync::Arc;
use support::{client_tls_config, Server, WAIT};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::Message;

/// Connect to the server's wss port as `user` with `config`, read the `hello`, and say how the
/// TLS handshake went (the client's view: `Resumed` only when the server accepted the session).
fn connect(server: &Server, config: &Arc<rustls::ClientConfig>, user: &str) -> HandshakeKind {
    let addr = server.wss.as_deref().expect("server has wss");
    let tcp = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    tcp.set_read_timeout(Some(WAIT)).expect("read timeout");
    tcp.set_write_timeout(Some(WAIT)).expect("write timeout");
    let port = addr.rsplit(':').next().expect("port");
    let url = format!("wss://localhost:{port}/ws?user={user}");
    let connector = tungstenite::Connector::Rustls(Arc::clone(config));
    let (mut ws, response) = tungstenite::client_tls_with_config(url, tcp, None, Some(connector)).expect("wss upgrade");
    assert_eq!(response.status(), 101);
    match ws.read().expect("hello arrives") {
        Message::Text(t) => assert!(t.as_str().contains(r#""op":"hello""#), "first message is hello: {t}"),
        other => panic!("expected the hello, got {other:?}"),
    }
    let kind = match ws.get_ref() {
        MaybeTlsStream::Rustls(s) => s.conn.handshake_kind(),
        _ => panic!("a wss connection is a rustls stream"),
    };
    let _ = ws.close(None);
    kind.expect("the handshake is complete once hello arrived")
}

/// The client config of one viewer limited to `versions`, with its own session store.
fn viewer_config(server: &Server, versions: &[&'static rustls::SupportedProtocolVersion]) -> Arc<rustls::ClientConfig> {
    client_tls_config(server.cert_pem.as_deref().expect("cert"), versions)
}

#[test]
fn a_reconnecting_tls13_viewer_resumes_with_a_ticket_on_every_worker() {
    let server = Server::start_tls(&[]);
    let config = viewer_config(&server, &[&rustls::version::TLS13]);
    assert_eq!(connect(&server, &config, "r13"), HandshakeKind::Full, "the first connect is a full handshake");
    // The server has two workers and the kernel spreads connections over their listeners, so
    // some of these land on the other worker: one ticket key serves them all. Each resumed
    // handshake brings new tickets, so a viewer resumes on every reconnect.
    for i in 0..8 {
        assert_eq!(connect(&server, &config, "r13"), HandshakeKind::Resumed, "reconnect {i} resumes");
    }
    // Another viewer (its own store) still gets a full handshake: nothing is shared by accident.
    let stranger = viewer_config(&server, &[&rustls::version::TLS13]);
    assert_eq!(connect(&server, &stranger, "other"), HandshakeKind::Full);
}

#[test]
fn a_tls12_viewer_resumes_by_ticket_or_by_session_id() {
    let server = Server::start_tls(&[]);
    for (how, tls12) in
        [("ticket", Tls12Resumption::SessionIdOrTickets), ("session id", Tls12Resumption::SessionIdOnly)]
    {
        let mut config = (*viewer_config(&server, &[&rustls::version::TLS12])).clone();
        config.resumption = Resumption::in_memory_sessions(16).tls12_resumption(tls12);
        let config = Arc::new(config);
        assert_eq!(connect(&server, &config, "r12"), HandshakeKind::Full, "{how}: first connect");
        for i in 0..4 {
            assert_eq!(connect(&server, &config, "r12"), HandshakeKind::Resumed, "{how}: reconnect {i} resumes");
        }
    }
}

#[test]
fn with_tickets_and_the_cache_off_every_handshake_is_full() {
    let server = Server::start_tls(&["--tls-session-tickets", "0", "--tls-session-cache", "0"]);
    for versions in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let config = viewer_config(&server, &[versions]);
        for i in 0..3 {
            assert_eq!(connect(&server, &config, "full"), HandshakeKind::Full, "{versions:?}: connect {i}");
        }
    }
}

#[test]
fn tickets_alone_serve_tls13_and_the_cache_alone_serves_tls12_session_ids() {
    // Tickets off, cache on: TLS 1.3 cannot resume (no ticket is ever sent), a TLS 1.2 session
    // id can.
    let server = Server::start_tls(&["--tls-session-tickets", "0"]);
    let t13 = viewer_config(&server, &[&rustls::version::TLS13]);
    assert_eq!(connect(&server, &t13, "a"), HandshakeKind::Full);
    assert_eq!(connect(&server, &t13, "a"), HandshakeKind::Full);
    let t12 = viewer_config(&server, &[&rustls::version::TLS12]);
    assert_eq!(connect(&server, &t12, "b"), HandshakeKind::Full);
    assert_eq!(connect(&server, &t12, "b"), HandshakeKind::Resumed);
}
