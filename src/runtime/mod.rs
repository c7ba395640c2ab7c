//! The IO shell: threads, sockets, mailboxes and signals around the pure core.
//!
//! [`run`] raises the open-files limit, binds one `SO_REUSEPORT` listener per worker (and per
//! TLS worker; a port another process listens on is refused, see [`listen`]), builds every `mio::Poll` and waker on the main thread so the mesh is complete
//! before any thread starts, starts the workers and the ingest loop, prints the ready line and
//! then waits for SIGINT/SIGTERM. On a signal every worker closes its connections with 1001;
//! the process exits once they are gone or a grace period passed.

pub mod backend;
pub mod gate;
pub mod ingest;
pub mod listen;
pub mod mesh;
pub mod nonblocking;
pub mod stall;
pub mod transport;
pub mod worker;

use crate::config::Config;
use crate::ids::WorkerId;
use crate::shard::ShardConfig;
use backend::{HealthState, MeshBackend};
use mesh::{IngestMail, Mailbox, Mesh, WorkerMail};
use mio::Poll;
use std::io::{self, Write};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use worker::{Worker, WorkerSettings};

/// Why the server could not start or stopped with an error. A message never repeats its
/// cause: print the [`std::error::Error::source`] chain (anyhow's `{:#}`) to show it.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A listener could not be bound, or its port belongs to another process.
    #[error(transparent)]
    Listen(#[from] listen::ListenError),
    /// The durable sinks could not start (a data or spool directory, a bad setting).
    #[error("durable sinks")]
    Sink(#[from] crate::sink::SinkError),
    /// The cluster broker could not start.
    #[error("cluster broker")]
    Broker(#[from] crate::broker::BrokerError),
    /// The auth keys could not be read.
    #[error("auth keys")]
    Keys(#[source] crate::auth::KeyError),
    /// TLS could not be set up from the configured files.
    #[error("TLS setup")]
    Tls(#[from] crate::tls::TlsError),
    /// A poll, waker, thread or signal handler could not be created.
    #[error("{what}")]
    Io {
        /// What failed.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

impl RunError {
    /// The process exit status for this error: 2 when the settings cannot be used (an address
    /// that cannot be bound or belongs to another process, unusable certificate or key), as
    /// for a configuration error; 1 for anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Listen(_) | Self::Tls(_) | Self::Sink(_) | Self::Keys(_) | Self::Broker(_) => 2,
            Self::Io { .. } => 1,
        }
    }
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> RunError {
    move |source| RunError::Io { what, source }
}

/// A listening socket owned by one worker.
#[derive(Debug)]
pub struct Listener {
    /// The socket.
    pub socket: mio::net::TcpListener,
    /// Whether connections accepted here speak TLS.
    pub tls: bool,
}

/// Milliseconds since the Unix epoch: the only clock the shell reads; the core is handed it.
pub fn clock_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Raise the soft open-files limit to the hard limit; returns the new soft limit.
fn raise_open_files() -> u64 {
    match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard && rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Err(_) => 0,
    }
}

/// Run the server until SIGINT or SIGTERM.
pub fn run(config: Config) -> Result<(), RunError> {
    let workers = config.worker_count();
    let files = raise_open_files();
    // Each process needs a few descriptors for listeners, epoll, eventfds and logs.
    let reserved = 16 + 4 * workers as u64;
    tracing::info!(
        open_files = files,
        max_connections = files.saturating_sub(reserved),
        workers,
        batch_window_ms = config.fanout.batch_window_ms,
        "roomcast starting"
    );

    let tls = match (&config.wss.cert, &config.wss.key) {
        (Some(cert), Some(key)) => Some(crate::tls::server_config(cert, key, config.tls_resumption())?),
        _ => None,
    };

    let share = config.reuse_port;
    let (ws_addr, ws_listeners) = listen::bind_group(config.ws.listen, workers, "ws", share)?;
    let (wss_addr, mut wss_listeners) = match &tls {
        Some(_) => {
            let (addr, l) = listen::bind_group(config.wss.listen, workers, "wss", share)?;
            (Some(addr), l.into_iter().map(Some).collect())
        }
        None => (None, (0..workers).map(|_| None).collect::<Vec<_>>()),
    };
    let (ingest_addr, ingest_listener) = listen::bind_one(config.ingest.listen, "ingest", share)?;
    let (admin_addr, admin_listener) = listen::bind_std(config.admin.listen, "admin", share)?;

    // Polls and wakers first: the mesh must be complete before any thread starts.
    let mut polls = Vec::with_capacity(workers);
    let mut worker_boxes = Vec::with_capacity(workers);
    let mut inboxes = Vec::with_capacity(workers);
    for _ in 0..workers {
        let poll = Poll::new().map_err(io_err("epoll"))?;
        let waker = mio::Waker::new(poll.registry(), Worker::WAKER_TOKEN).map_err(io_err("waker"))?;
        let (mailbox, inbox) = Mailbox::new(Arc::new(waker));
        polls.push(poll);
        worker_boxes.push(mailbox);
        inboxes.push(inbox);
    }
    let ingest_poll = Poll::new().map_err(io_err("epoll"))?;
    let ingest_waker =
        mio::Waker::new(ingest_poll.registry(), ingest::IngestLoop::WAKER_TOKEN).map_err(io_err("waker"))?;
    let (ingest_box, ingest_inbox) = Mailbox::new(Arc::new(ingest_waker));
    let mesh = Arc::new(Mesh { workers: worker_boxes, ingest: ingest_box });

    let sinks = crate::sink::start(&config.sink, Arc::new(mesh::MeshNotify(Arc::clone(&mesh))))?;
    let broker = Arc::new(crate::broker::Broker::start(&config, workers, &mesh)?);
    // Room epochs must differ between runs and between servers: the clock makes them new on
    // every restart, and the hasher's random per-process keys keep two servers started in the
    // same millisecond apart (a viewer moving from one to the other must not "recover" from
    // the other's history of a room with the same name).
    let epoch_seed = std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), clock_ms());
    let l = &config.limits;
    // max_connections = 0 is "as many as the open-files limit lets the process hold".
    let max_connections =
        if l.max_connections == 0 { files.saturating_sub(reserved) as usize } else { l.max_connections };
    let gate = Arc::new(gate::Gate::new(
        max_connections,
        l.max_connections_per_ip,
        l.max_connections_per_user,
        l.per_user_policy,
    ));
    let settings = WorkerSettings {
        tls,
        sink: Some(sinks.handle()),
        gate: Arc::clone(&gate),
        accept_rate: l.accept_rate,
        drain_ms: l.drain_ms,
        socket_unsent_bytes: l.socket_unsent_bytes as u32,
        broker: Arc::clone(&broker),
    };
    let verifier = config.auth.verifier().map_err(RunError::Keys)?.map(Arc::new);
    match &verifier {
        Some(v) => tracing::info!(keys = %v.keys().describe(), "viewers need a valid token (JWT) at the upgrade"),
        None => tracing::warn!(
            "NO AUTH KEY CONFIGURED: anyone who reaches the viewer port may connect as any user (?user=) and join any room; set auth.hmac_secret or auth.public_keys before exposing it"
        ),
    }
    if let Some(path) = &config.testing.echo_path {
        tracing::warn!(path = %path, "the testing echo endpoint is ON (testing.echo_path): for conformance tests only, never in production");
    }
    let mut threads = Vec::new();
    for (i, ((poll, inbox), ws)) in polls.into_iter().zip(inboxes).zip(ws_listeners).enumerate() {
        let id = WorkerId(i as u16);
        let mut listeners = vec![Listener { socket: ws, tls: false }];
        if let Some(wss) = wss_listeners.get_mut(i).and_then(Option::take) {
            listeners.push(Listener { socket: wss, tls: true });
        }
        let mut shard_cfg = ShardConfig::new(&config, workers, epoch_seed);
        shard_cfg.verifier = verifier.clone();
        shard_cfg.admission = Some(Arc::clone(&gate) as Arc<dyn crate::shard::Admission>);
        let worker = Worker::new(id, poll, inbox, Arc::clone(&mesh), listeners, shard_cfg, settings.clone())
            .map_err(io_err("worker setup"))?;
        let handle = std::thread::Builder::new()
            .name(format!("roomcast-w{i}"))
            .spawn(move || {
                if let Err(e) = worker.run() {
                    tracing::error!(worker = i, error = %e, "worker stopped with an error");
                }
            })
            .map_err(io_err("spawn worker"))?;
        threads.push(handle);
    }
    let ingest_settings = crate::upstream::UpstreamSettings {
        max_line: config.ingest.max_line,
        tokens: config.ingest.tokens.clone(),
        workers,
    };
    let ingest_loop =
        ingest::IngestLoop::new(ingest_poll, ingest_listener, ingest_inbox, Arc::clone(&mesh), ingest_settings)
            .map_err(io_err("ingest setup"))?;
    let ingest_thread = std::thread::Builder::new()
        .name("roomcast-ingest".into())
        .spawn(move || {
            if let Err(e) = ingest_loop.run() {
                tracing::error!(error = %e, "ingest loop stopped with an error");
            }
        })
        .map_err(io_err("spawn ingest"))?;

    let health = Arc::new(HealthState::default());
    let backend = Arc::new(
        MeshBackend::new(Arc::clone(&mesh), Arc::clone(&health), Some(sinks.handle())).with_cluster(broker.status()),
    );
    let admin = crate::admin::spawn(admin_listener, backend, crate::admin::AdminSettings::from_config(&config))
        .map_err(io_err("admin port"))?;

    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])
        .map_err(io_err("signal handler"))?;

    let wss_text = wss_addr.map_or_else(|| "off".to_owned(), |a| a.to_string());
    tracing::info!(ws = %ws_addr, wss = %wss_text, ingest = %ingest_addr, admin = %admin_addr, "roomcast ready");
    if config.admin.token.is_none() {
        tracing::info!(admin = %admin_addr, "the admin port has no token: keep it on loopback (admin.token)");
    }
    let mut stdout = io::stdout().lock();
    // A cluster node also names itself (tests and scripts tell the nodes apart by it).
    let node = broker.status().map(|s| format!(" node={}", s.node())).unwrap_or_default();
    let _ =
        writeln!(stdout, "roomcast ready ws={ws_addr} wss={wss_text} ingest={ingest_addr} admin={admin_addr}{node}");
    let _ = stdout.flush();
    drop(stdout);

    if let Some(signal) = signals.forever().next() {
        tracing::info!(signal, "shutting down: closing every connection with 1001");
    }
    health.set_stopping();
    for mailbox in &mesh.workers {
        mailbox.send(WorkerMail::Shutdown);
    }
    mesh.ingest.send(IngestMail::Shutdown);
    for t in threads {
        let _ = t.join();
    }
    let _ = ingest_thread.join();
    // The viewers are gone: the cluster hears it now rather than when the heartbeat expires.
    broker.leave(std::time::Duration::from_millis(config.cluster.timeout_ms));
    // The workers submit nothing more: the sinks write what they hold and stop.
    let sink_metrics = sinks.shutdown();
    tracing::info!(?sink_metrics, "sinks stopped");
    admin.shutdown();
    tracing::info!("roomcast stopped");
    Ok(())
}
