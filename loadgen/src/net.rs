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
    fn ranges_and_lists_parse() {
        assert_eq!(parse_source_ips("127.0.0.1-127.0.0.3").map(|v| v.len()).ok(), Some(3));
        assert_eq!(parse_source_ips("127.0.0.1, 127.0.0.9").map(|v| v.len()).ok(), Some(2));
        assert!(parse_source_ips("127.0.0.5-127.0.1.1").is_err());
    }
}
