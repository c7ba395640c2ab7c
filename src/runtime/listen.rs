//! Listening sockets: one `SO_REUSEPORT` group per listener, one port per server.
//!
//! Every worker gets its own listening socket on the same port (`SO_REUSEPORT`), so the kernel
//! spreads new connections over the workers' accept queues. The same option would let a
//! second, unrelated roomcast (or anything else run by the same user) join the group and take
//! half of the viewers and publishes without a word. So before a group is bound on a fixed
//! port, a probe binds that address *without* `SO_REUSEPORT`: if it fails with
//! `EADDRINUSE`, another process listens there and the server refuses to start, naming the
//! address and, when `/proc` tells, the process (`pid 1234 (roomcast)`). Sharing stays
//! possible on purpose with `reuse_port = true` (`--reuse-port`), which the several-processes
//! benchmarks use. Port 0 needs no probe: the kernel picks a free port.
//!
//! This module must never bind without the probe on a fixed port when sharing is off, and
//! never hold the probe socket once it answered. The holder is looked up only on that error
//! path; `/proc` parsing is plain functions, tested on sample text. socket2 does the socket
//! options (already the crate's choice for the listeners); there is no well-kept crate for
//! "which process owns this port" that is smaller than the forty lines below.

use socket2::{Domain, Protocol, Socket, Type};
use std::fmt;
use std::io;
use std::net::SocketAddr;

/// Backlog of every listening socket.
const LISTEN_BACKLOG: i32 = 4096;

/// TCP state `LISTEN` in `/proc/net/tcp{,6}` (`TCP_LISTEN` in the kernel's `tcp_states.h`).
const TCP_LISTEN_STATE: &str = "0A";

/// Why a listener could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// The OS refused the socket, an option, the bind or the listen.
    #[error("cannot listen on {addr} ({what})")]
    Bind {
        /// The listener's role (`ws`, `wss`, `ingest`).
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// Another process already listens on the address and sharing was not asked for.
    #[error(
        "cannot listen on {addr} ({what}): {holder} already listens on port {port}; stop it, choose another \
         address, or share the port on purpose with reuse_port = true (--reuse-port)",
        port = addr.port()
    )]
    InUse {
        /// The listener's role.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Who holds the port, as far as `/proc` tells.
        holder: Holder,
    },
}

/// The process that listens on a port, if it could be found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// Found through `/proc`: its pid and command name.
    Process {
        /// Process id.
        pid: u32,
        /// `/proc/PID/comm`.
        comm: String,
    },
    /// Not visible (another user's process, no `/proc`, or gone meanwhile).
    Unknown,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Process { pid, comm } => write!(f, "pid {pid} ({comm})"),
            Self::Unknown => f.write_str("another process"),
        }
    }
}

/// Bind `workers` listeners on `addr` as one `SO_REUSEPORT` group and return the bound address
/// (the port the kernel chose, for port 0) with the sockets. Unless `share`, a fixed port that
/// another process listens on is refused ([`ListenError::InUse`]).
pub fn bind_group(
    addr: SocketAddr,
    workers: usize,
    what: &'static str,
    share: bool,
) -> Result<(SocketAddr, Vec<mio::net::TcpListener>), ListenError> {
    let (bound, first) = bind_one(addr, what, share)?;
    let mut all = vec![first];
    for _ in 1..workers.max(1) {
        all.push(bind_reuseport(bound, what)?);
    }
    Ok((bound, all))
}

/// One listener (the ingest socket), with the same probe as [`bind_group`].
pub fn bind_one(
    addr: SocketAddr,
    what: &'static str,
    share: bool,
) -> Result<(SocketAddr, mio::net::TcpListener), ListenError> {
    if addr.port() != 0 && !share {
        probe(addr, what)?;
    }
    let socket = bind_reuseport(addr, what)?;
    let bound = socket.local_addr().map_err(|source| ListenError::Bind { what, addr, source })?;
    Ok((bound, socket))
}

/// Bind `addr` alone, without `SO_REUSEPORT` (`SO_REUSEADDR` only, so a previous run's
/// `TIME_WAIT` sockets do not count), then let it go.
fn probe(addr: SocketAddr, what: &'static str) -> Result<(), ListenError> {
    let err = |source| ListenError::Bind { what, addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    match socket.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            Err(ListenError::InUse { what, addr, holder: holder_of(addr.port()) })
        }
        Err(e) => Err(err(e)),
    }
}

/// Bind a non-blocking listener with `SO_REUSEPORT`, so every worker has its own accept queue
/// on the same port and the kernel spreads connections over them.
/// A blocking `std` listener (the admin port's HTTP server takes one), with the same refusal
/// of a port another process holds unless sharing was asked for.
pub fn bind_std(
    addr: SocketAddr,
    what: &'static str,
    share: bool,
) -> Result<(SocketAddr, std::net::TcpListener), ListenError> {
    if addr.port() != 0 && !share {
        probe(addr, what)?;
    }
    let err = |source| ListenError::Bind { what, addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    socket.set_reuse_port(share).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(LISTEN_BACKLOG).map_err(err)?;
    let listener: std::net::TcpListener = socket.into();
    let bound = listener.local_addr().map_err(|source| ListenError::Bind { what, addr, source })?;
    Ok((bound, listener))
}

fn bind_reuseport(addr: SocketAddr, what: &'static str) -> Result<mio::net::TcpListener, ListenError> {
    let err = |source| ListenError::Bind { what, addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    socket.set_reuse_port(true).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(LISTEN_BACKLOG).map_err(err)?;
    Ok(mio::net::TcpListener::from_std(socket.into()))
}

/// The process listening on TCP `port` (any address, IPv4 or IPv6), found by the socket's
/// inode in `/proc/net/tcp{,6}` and the `/proc/PID/fd` link that names `socket:[INODE]`.
pub fn holder_of(port: u16) -> Holder {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            inodes.extend(listening_inodes(&text, port));
        }
    }
    if inodes.is_empty() {
        return Holder::Unknown;
    }
    let Ok(procs) = std::fs::read_dir("/proc") else { return Holder::Unknown };
    for entry in procs.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        let owns = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .ok()
                .and_then(|link| link.to_str().and_then(socket_inode))
                .is_some_and(|inode| inodes.contains(&inode))
        });
        if owns {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            return Holder::Process { pid, comm: comm.trim().to_owned() };
        }
    }
    Holder::Unknown
}

/// Inodes of the sockets in a `/proc/net/tcp{,6}` table that listen on `port`.
fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit_once(':')?.1;
            let listening = *fields.get(3)? == TCP_LISTEN_STATE;
            let matches = u16::from_str_radix(local_port, 16).ok()? == port;
            (listening && matches).then(|| fields.get(9)?.parse::<u64>().ok()).flatten()
        })
        .filter(|inode| *inode != 0)
        .collect()
}

/// The inode of a `/proc/PID/fd` link target `socket:[INODE]`.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41234 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 41299 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:1B9E 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41240 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn listening_sockets_are_found_by_port() {
        assert_eq!(listening_inodes(TCP, 8080), vec![41234], "the established socket on 8080 is not a listener");
        assert_eq!(listening_inodes(TCP, 7070), vec![41240]);
        assert!(listening_inodes(TCP, 9090).is_empty());
        assert_eq!(socket_inode("socket:[41234]"), Some(41234));
        assert_eq!(socket_inode("pipe:[41234]"), None);
    }

    #[test]
    fn a_taken_port_is_refused_and_its_holder_named() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let err = bind_group(addr, 2, "ws", false).expect_err("the port is taken");
        let ListenError::InUse { holder, .. } = &err else { panic!("expected InUse, got {err}") };
        assert!(
            matches!(holder, Holder::Process { pid, .. } if *pid == std::process::id()),
            "this test process holds the port: {err}"
        );
        let text = err.to_string();
        assert!(text.starts_with(&format!("cannot listen on {addr} (ws): pid ")), "{text}");
        assert!(text.contains("--reuse-port"), "{text}");
    }

    #[test]
    fn a_group_shares_one_port_and_port_zero_needs_no_probe() {
        let (bound, sockets) = bind_group("127.0.0.1:0".parse().expect("addr"), 3, "ws", false).expect("bind");
        assert_eq!(sockets.len(), 3);
        assert_ne!(bound.port(), 0);
        for s in &sockets {
            assert_eq!(s.local_addr().expect("addr"), bound);
        }
        // A second group on the same fixed port: refused unless sharing is asked for.
        assert!(matches!(bind_group(bound, 1, "ws", false), Err(ListenError::InUse { .. })));
        let (again, _) = bind_group(bound, 1, "ws", true).expect("sharing on purpose");
        assert_eq!(again, bound);
    }
}
