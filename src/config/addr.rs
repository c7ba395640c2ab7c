//! Listen addresses as people write them: `0.0.0.0:8080`, `[::]:8080`, `localhost:8080`.
//!
//! A host name is resolved once, when the configuration is read, and the first address the
//! resolver gives is kept, so the rest of the program only ever sees a typed [`SocketAddr`]
//! (the runtime binds exactly what the ready line prints). The same function serves the TOML
//! keys (through [`deserialize`]) and the flags (as clap's value parser, [`parse`]), so a file
//! and a flag accept the same spellings. This module never binds or connects; it must never
//! resolve again later (a name that changes its address would move a listener unseen).
//! The standard library's resolver (`ToSocketAddrs`, getaddrinfo) is used: no crate does it
//! better for a one-off lookup at startup.

use serde::{Deserialize, Deserializer};
use std::net::{SocketAddr, ToSocketAddrs};

/// `HOST:PORT` (an IP address, `[v6]` or a host name) to one socket address.
pub fn parse(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("expected HOST:PORT such as 127.0.0.1:8080 or localhost:8080 (got {text:?})"));
    };
    if host.is_empty() {
        return Err(format!("the host is missing; use 0.0.0.0:{port} for every interface (got {text:?})"));
    }
    if port.parse::<u16>().is_err() {
        return Err(format!("the port must be a number 0..=65535 (got {text:?})"));
    }
    let mut addrs = text.to_socket_addrs().map_err(|e| format!("cannot resolve {host:?}: {e}"))?;
    addrs.next().ok_or_else(|| format!("{host:?} resolves to no address"))
}

/// Serde `deserialize_with` for a listen address written as a string.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    parse(&text).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_host_names_resolve() {
        assert_eq!(parse("0.0.0.0:8080").map(|a| a.to_string()), Ok("0.0.0.0:8080".to_owned()));
        assert_eq!(parse("[::]:8443").map(|a| a.to_string()), Ok("[::]:8443".to_owned()));
        let local = parse("localhost:8080").expect("localhost resolves");
        assert!(local.ip().is_loopback() && local.port() == 8080, "{local}");
    }

    #[test]
    fn bad_spellings_say_what_is_expected() {
        assert!(parse("8080").expect_err("no host").contains("HOST:PORT"));
        assert!(parse(":8080").expect_err("empty host").contains("0.0.0.0:8080"));
        assert!(parse("localhost:http").expect_err("port").contains("port must be a number"));
        assert!(parse("no-such-host.invalid:80").expect_err("unknown").contains("cannot resolve"));
    }
}
