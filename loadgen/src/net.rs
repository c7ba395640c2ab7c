//! Opening client sockets: non-blocking connect, optionally from one of several local source
//! addresses, so one run can exceed the ~28k ephemeral ports of a single address.
//!
//! `IP_BIND_ADDRESS_NO_PORT` lets the kernel choose the source port at connect time (per
//! destination) instead of at bind time (globally unique), which is what makes source-address
//! spreading work. socket2 does not expose it, so it is one `setsockopt` here.

use std::net::{IpAddr, SocketAddr};

/// Parse `127.0.0.1-127.0.0.20` (a range of the last octet) or a comma-separated list.
pub fn parse_source_ips(spec: &str) -> anyhow::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let (a, b): (std::net::Ipv4Addr, std::net::Ipv4Addr) = (a.parse()?, b.parse()?);
            let (oa, ob) = (a.octets(), b.octets());
            anyhow::ensure!(oa[..3] == ob[..3] && oa[3] <= ob[3], "range {part}: only the last octet may vary");
            for last in oa[3]..=ob[3] {
                out.push(IpAddr::from([oa[0], oa[1], oa[2], last]));
            }
        } else {
            out.push(part.parse()?);
        }
    }
    anyhow::ensure!(!out.is_empty(), "no source address in {spec:?}");
    Ok(out)
}

/// What one machine lets a run open, for [`capacity_warnings`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Files one process may open (after raising the soft limit to the hard one).
    pub open_files: u64,
    /// Ephemeral ports per source address and destination.
    pub ephemeral_ports: u64,
}

impl Limits {
    /// This process's limits: raises its own open-files soft limit to the hard limit (each
    /// loadgen process holding connections calls this) and reads the ephemeral port range.
    pub fn raise_and_read() -> Self {
        let open_files = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
        let ephemeral_ports = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|r| {
                let mut it = r.split_whitespace().map(|n| n.parse::<u64>().ok());
                Some(it.next()??.abs_diff(it.next()??) + 1)
            })
            .unwrap_or(28_232);
        Self { open_files, ephemeral_ports }
    }
}

/// Why `conns` connections over `procs` processes and `source_ips` source addresses (0: the
/// kernel's choice, one address) would not all open here, with the flag that fixes it. Said up
/// front, so that a run does not spend its connect timeout finding out.
pub fn capacity_warnings(conns: usize, procs: usize, source_ips: usize, limits: Limits) -> Vec<String> {
    let mut out = Vec::new();
    let per_proc = conns.div_ceil(procs.max(1)) as u64;
    // A few descriptors go to the poller, pipes, the ingest socket and stdio.
    let usable = limits.open_files.saturating_sub(64);
    if per_proc > usable {
        let need = (conns as u64).div_ceil(usable.max(1));
        out.push(format!(
            "{per_proc} connections per process, but a process may open {} files: use --procs {need} or more",
            limits.open_files
        ));
    }
    let addresses = source_ips.max(1) as u64;
    if conns as u64 > addresses * limits.ephemeral_ports {
        let need = (conns as u64).div_ceil(limits.ephemeral_ports.max(1));
        out.push(format!(
            "{conns} connections to one address need more than the {} ephemeral ports of {addresses} source \
             address(es): use --source-ips with {need} addresses or more (e.g. 127.0.0.1-127.0.0.{need})",
            limits.ephemeral_ports
        ));
    }
    out
}

/// Start a non-blocking connect to `to`, from `from` when given.
pub fn connect(to: SocketAddr, from: Option<IpAddr>) -> std::io::Result<mio::net::TcpStream> {
    let stream = connect_from(to, from)?;
    // Small frames must not wait for Nagle's algorithm: that would be latency we add.
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn connect_from(to: SocketAddr, from: Option<IpAddr>) -> std::io::Result<mio::net::TcpStream> {
    let Some(from) = from else { return mio::net::TcpStream::connect(to) };
    let socket = socket2::Socket::new(socket2::Domain::for_address(to), socket2::Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    bind_address_no_port(&socket)?;
    socket.bind(&SocketAddr::new(from, 0).into())?;
    match socket.connect(&to.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(mio::net::TcpStream::from_std(socket.into()))
}

#[allow(unsafe_code)]
fn bind_address_no_port(socket: &socket2::Socket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a valid, live `one`; the fd is
    // owned by `socket` for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_too_big_for_one_process_or_one_address_is_told_what_to_add() {
        let limits = Limits { open_files: 20_000, ephemeral_ports: 28_232 };
        assert!(capacity_warnings(19_000, 1, 0, limits).is_empty());
        let w = capacity_warnings(36_000, 1, 0, limits);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("--procs 2"), "{w:?}");
        assert!(w[1].contains("--source-ips with 2 addresses"), "{w:?}");
        assert!(capacity_warnings(36_000, 2, 2, limits).is_empty());
    }

    #[test]
    fn ranges_and_lists_parse() {
        assert_eq!(parse_source_ips("127.0.0.1-127.0.0.3").map(|v| v.len()).ok(), Some(3));
        assert_eq!(parse_source_ips("127.0.0.1, 127.0.0.9").map(|v| v.len()).ok(), Some(2));
        assert!(parse_source_ips("127.0.0.5-127.0.1.1").is_err());
    }
}
