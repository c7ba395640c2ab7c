//! The server process as this machine shows it (`--server-pid`): its CPU time, its resident
//! memory and the TCP connections it holds, read from `/proc`. Reading `/proc` is cheap and
//! needs no cooperation from the server; a value that cannot be read is `None`, never a guess.
//! Several server processes (the nodes of a cluster, [`Servers`]) are read as one: their sums,
//! and `None` when any of them cannot be read.
//!
//! It must never signal or otherwise touch the server.

use std::collections::HashSet;

/// Clock ticks per second of `/proc/PID/stat` times (`USER_HZ`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU seconds (user + system) process `pid` has used.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / TICKS_PER_SECOND)
}

/// Resident memory of process `pid`, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Established TCP connections process `pid` holds: its socket descriptors whose inode is an
/// established connection in `/proc/PID/net/tcp{,6}` (listeners and other sockets are not
/// counted).
pub fn established_connections(pid: u32) -> Option<u64> {
    let mut inodes = HashSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()? {
        let Ok(link) = entry.and_then(|e| std::fs::read_link(e.path())) else { continue };
        let link = link.to_string_lossy();
        if let Some(inode) = link.strip_prefix("socket:[").and_then(|l| l.strip_suffix(']')) {
            inodes.insert(inode.to_owned());
        }
    }
    let mut count = 0;
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else { continue };
        count += established_in(&text, &inodes);
    }
    Some(count)
}

/// Socket descriptors process `pid` holds, in any state (a connection it has not yet let go of
/// counts until it closes the descriptor).
pub fn socket_fds(pid: u32) -> Option<u64> {
    let mut count = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()? {
        let Ok(link) = entry.and_then(|e| std::fs::read_link(e.path())) else { continue };
        if link.to_string_lossy().starts_with("socket:[") {
            count += 1;
        }
    }
    Some(count)
}

/// The server processes of a run (`--server-pid`, given once per process): every figure is
/// the sum over all of them, `None` when there are none or any one cannot be read (a sum that
/// left a process out would be a guess).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Servers {
    /// The process ids.
    pub pids: Vec<u32>,
}

impl Servers {
    /// The processes `pids`.
    pub fn new(pids: &[u32]) -> Self {
        Self { pids: pids.to_vec() }
    }

    /// Whether no server process was named.
    pub fn is_empty(&self) -> bool {
        self.pids.is_empty()
    }

    /// `read` of every process, summed.
    fn sum<T: std::iter::Sum<T>>(&self, read: impl Fn(u32) -> Option<T>) -> Option<T> {
        if self.pids.is_empty() {
            return None;
        }
        self.pids.iter().map(|&pid| read(pid)).sum()
    }

    /// CPU seconds (user + system) of every process, summed.
    pub fn cpu_seconds(&self) -> Option<f64> {
        self.sum(cpu_seconds)
    }

    /// Each process's CPU seconds, in `pids` order.
    pub fn cpu_seconds_each(&self) -> Vec<Option<f64>> {
        self.pids.iter().map(|&pid| cpu_seconds(pid)).collect()
    }

    /// Resident memory of every process, summed, KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        self.sum(rss_kib)
    }

    /// Established TCP connections of every process, summed (a connection between two of them
    /// counts at both ends).
    pub fn established_connections(&self) -> Option<u64> {
        self.sum(established_connections)
    }

    /// Socket descriptors of every process, summed.
    pub fn socket_fds(&self) -> Option<u64> {
        self.sum(socket_fds)
    }
}

/// TCP state `01` in `/proc/net/tcp` (include/net/tcp_states.h: `TCP_ESTABLISHED = 1`).
const TCP_ESTABLISHED: &str = "01";

/// Rows of a `/proc/net/tcp` table in state ESTABLISHED whose inode is in `inodes`.
fn established_in(table: &str, inodes: &HashSet<String>) -> u64 {
    table
        .lines()
        .skip(1)
        .filter(|row| {
            let fields: Vec<&str> = row.split_whitespace().collect();
            fields.get(3) == Some(&TCP_ESTABLISHED) && fields.get(9).is_some_and(|inode| inodes.contains(*inode))
        })
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_established_rows_of_the_process_count() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:A000 01 00000000:00000000 00:00000000 00000000     0        0 1002 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:1F90 0100007F:A001 01 00000000:00000000 00:00000000 00000000     0        0 1003 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:A002 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 1004 1 0000000000000000 20 4 30 10 -1";
        let mine: HashSet<String> = ["1001", "1002", "1003"].map(String::from).into();
        assert_eq!(established_in(table, &mine), 2, "the listener (0A) and another process's socket do not count");
    }

    #[test]
    fn this_process_is_readable() {
        let me = std::process::id();
        assert!(rss_kib(me).is_some_and(|kib| kib > 0));
        assert!(cpu_seconds(me).is_some());
        let before = established_connections(me).expect("own /proc is readable");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let _client = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let _server = listener.accept().expect("accept");
        assert_eq!(established_connections(me), Some(before + 2), "both ends are this process's");
        assert!(socket_fds(me).is_some_and(|n| n >= 3), "the listener and both ends are sockets");
    }

    #[test]
    fn several_servers_sum_and_one_unreadable_is_none() {
        let me = std::process::id();
        let one = Servers::new(&[me]);
        let twice = Servers::new(&[me, me]);
        let rss = one.rss_kib().expect("own /proc is readable");
        // RSS may move a little between the reads; twice must be about double.
        let double = twice.rss_kib().expect("readable");
        assert!(double >= rss && double <= 2 * rss + 2 * 1024, "{double} vs 2 x {rss}");
        assert_eq!(twice.cpu_seconds_each().len(), 2);
        assert!(twice.cpu_seconds().is_some_and(|c| c >= 0.0));
        // No process has pid u32::MAX (pid_max is at most 2^22).
        let gone = Servers::new(&[me, u32::MAX]);
        assert_eq!((gone.cpu_seconds(), gone.rss_kib(), gone.socket_fds()), (None, None, None));
        assert_eq!(gone.cpu_seconds_each()[1], None);
        let none = Servers::default();
        assert!(none.is_empty() && none.cpu_seconds().is_none() && none.established_connections().is_none());
    }
}
