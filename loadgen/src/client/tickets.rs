//! The TLS session tickets of one client thread, for `storm --tls-resume`: every ticket any of
//! the thread's connections received, handed to whichever connection the thread opens next.
//!
//! rustls' own `ClientSessionMemoryCache` keeps at most 8 TLS 1.3 tickets per server name, and
//! every loadgen connection names the same server, so with hundreds of handshakes in flight
//! most reconnects would find none and silently do a full handshake instead. This store holds
//! up to one thread's worth (a bound set from its connection count), so a resumed round really
//! resumes. It is a plain mutex per thread (never contended: one thread uses it) and must never
//! hand out a ticket twice (rustls requires each TLS 1.3 ticket to be used at most once).

use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::pki_types::ServerName;
use rustls::NamedGroup;
use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};

/// Tickets of one thread. See the module doc.
pub(super) struct TicketPool {
    capacity: usize,
    tls13: Mutex<VecDeque<Tls13ClientSessionValue>>,
    tls12: Mutex<Option<Tls12ClientSessionValue>>,
    kx_hint: Mutex<Option<NamedGroup>>,
}

impl TicketPool {
    /// A pool holding at most `capacity` TLS 1.3 tickets (the oldest go first).
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            tls13: Mutex::new(VecDeque::new()),
            tls12: Mutex::new(None),
            kx_hint: Mutex::new(None),
        }
    }

    /// `config` with this thread's own pool for `conns` connections as its session store.
    pub(super) fn config_for(config: &Arc<rustls::ClientConfig>, conns: usize) -> Arc<rustls::ClientConfig> {
        let mut config = (**config).clone();
        // roomcast sends one ticket per handshake by default (rustls and OpenSSL two): room for a few.
        config.resumption = rustls::client::Resumption::store(Arc::new(Self::new(4 * conns + 16)));
        Arc::new(config)
    }
}

impl fmt::Debug for TicketPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held = self.tls13.lock().map(|q| q.len()).unwrap_or(0);
        f.debug_struct("TicketPool").field("capacity", &self.capacity).field("tls13_held", &held).finish()
    }
}

impl ClientSessionStore for TicketPool {
    fn set_kx_hint(&self, _: ServerName<'static>, group: NamedGroup) {
        if let Ok(mut hint) = self.kx_hint.lock() {
            *hint = Some(group);
        }
    }

    fn kx_hint(&self, _: &ServerName<'_>) -> Option<NamedGroup> {
        self.kx_hint.lock().ok().and_then(|hint| *hint)
    }

    fn set_tls12_session(&self, _: ServerName<'static>, value: Tls12ClientSessionValue) {
        if let Ok(mut session) = self.tls12.lock() {
            *session = Some(value);
        }
    }

    fn tls12_session(&self, _: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.tls12.lock().ok().and_then(|session| session.clone())
    }

    fn remove_tls12_session(&self, _: &ServerName<'static>) {
        if let Ok(mut session) = self.tls12.lock() {
            *session = None;
        }
    }

    fn insert_tls13_ticket(&self, _: ServerName<'static>, value: Tls13ClientSessionValue) {
        if let Ok(mut tickets) = self.tls13.lock() {
            if tickets.len() >= self.capacity {
                tickets.pop_front();
            }
            tickets.push_back(value);
        }
    }

    fn take_tls13_ticket(&self, _: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        // Newest first: the oldest are the likeliest to have expired.
        self.tls13.lock().ok().and_then(|mut tickets| tickets.pop_back())
    }
}
