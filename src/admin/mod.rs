//! The admin port: the query API, `/metrics`, the dashboard and its live stream, over HTTP.
//!
//! It runs on one thread of its own ([`spawn`]), with axum on a *current-thread* tokio
//! runtime that exists only on that thread. axum (tokio's HTTP framework, on hyper) gives
//! routing, percent-decoded paths, typed query strings, body limits and RFC 6455 upgrades
//! without writing an HTTP server; a current-thread runtime keeps its cost to one thread and
//! keeps async out of everything else: the workers and the ingest loop stay mio loops and
//! never see a future. (tiny_http would have needed a second WebSocket server for the
//! stream; hyper alone, the routing and extraction axum adds.) The minimal features are used
//! (`http1`, `json`, `query`, `ws`, `tokio`; tokio with `rt`, `net`, `time`, `sync`,
//! `macros`); axum's WebSocket brings tokio-tungstenite 0.28, so tungstenite 0.29 is compiled
//! beside the workers' 0.30 until axum moves on.
//!
//! The admin thread owns no data: every answer comes from the owners through a [`Backend`]
//! (blocking, bounded by a deadline, called from `spawn_blocking` so a slow answer never
//! stalls the other requests). It must never be on the per-message path: the workers do not
//! wait for it, a feed to a slow dashboard drops items rather than queueing them
//! ([`TapSender::offer`]), and the once-a-second snapshot is asked only while a dashboard is
//! open, once for all of them.
//!
//! Paths (PROTOCOL.md "Admin and query API"; README "Admin port"): `GET /healthz`,
//! `/readyz`, `/metrics`, `/api/rooms`, `/api/rooms/{room}`, `/api/rooms/{room}/presence`,
//! `POST /api/publish|state|kick|close_room|delete_comment`, `GET /admin` (the dashboard) and
//! `GET /admin/stream` (WebSocket). Errors are `{"error":CODE,"message":TEXT}`.

pub mod backend;

mod auth;
mod error;
mod exposition;
mod pulse;
mod routes;
mod stream;

pub use backend::{tap_channel, Backend, BackendError, Caller, Health, Offer, Tap, TapSender, UpstreamOp};

use crate::config::Config;
use error::ApiError;
use std::future::IntoFuture;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Most backend calls in flight at once (threads of the runtime's blocking pool); more wait.
const BLOCKING_THREADS: usize = 8;

/// How long open requests and dashboards get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How the admin port behaves; [`AdminSettings::from_config`] fills it from the
/// configuration.
#[derive(Clone, Debug)]
pub struct AdminSettings {
    /// `admin.token`: when set, every path but `/healthz` needs it.
    pub token: Option<String>,
    /// Whether ingest tokens are configured, so an upstream command's bearer may be an
    /// ingest token rather than the admin token.
    pub ingest_tokens: bool,
    /// Largest request body in bytes (`ingest.max_line`); larger is 413.
    pub max_body: usize,
    /// How long one question to the owners may take before the request fails with 503.
    pub deadline: Duration,
    /// How often `/admin/stream` sends a snapshot (and refreshes a watched room).
    pub pulse_interval: Duration,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            token: None,
            ingest_tokens: false,
            max_body: 64 * 1024,
            deadline: Duration::from_secs(2),
            pulse_interval: Duration::from_secs(1),
        }
    }
}

impl AdminSettings {
    /// The settings of a configuration: `admin.token`, and `ingest.tokens` and
    /// `ingest.max_line` so the upstream paths behave as the ingest socket does.
    pub fn from_config(config: &Config) -> Self {
        Self {
            token: config.admin.token.clone(),
            ingest_tokens: !config.ingest.tokens.is_empty(),
            max_body: config.ingest.max_line,
            ..Self::default()
        }
    }
}

/// What every handler shares. Cloned per request (it is a handful of `Arc`s).
#[derive(Clone)]
struct AppState {
    backend: Arc<dyn Backend>,
    settings: Arc<AdminSettings>,
    hub: Arc<stream::PulseHub>,
    stop: watch::Receiver<bool>,
    /// Held by every open dashboard stream; shutdown waits until all are dropped.
    drain: mpsc::Sender<()>,
}

impl AppState {
    /// Ask the owners on the blocking pool, with the configured deadline.
    async fn ask<T: Send + 'static>(
        &self,
        question: impl FnOnce(&dyn Backend, Instant) -> Result<T, BackendError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let backend = Arc::clone(&self.backend);
        let deadline = Instant::now() + self.settings.deadline;
        match tokio::task::spawn_blocking(move || question(&*backend, deadline)).await {
            Ok(answer) => answer.map_err(ApiError::from),
            Err(e) => Err(ApiError::Internal(format!("the question to the workers failed: {e}"))),
        }
    }
}

/// Resolves once `stop` says true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    // An error means the handle is gone, which is a stop as well.
    let _ = stop.wait_for(|stop| *stop).await;
}

/// The running admin port. [`AdminHandle::shutdown`] (or dropping it) stops it: dashboards
/// are closed with 1001, open requests get a grace period (2 s) to finish, then the thread
/// ends.
#[derive(Debug)]
pub struct AdminHandle {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl AdminHandle {
    /// The address the port listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop the port and wait for its thread (a few seconds at most).
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.send_replace(true);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the admin thread panicked");
            }
        }
    }
}

impl Drop for AdminHandle {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Serve the admin port on `listener` (bound by the caller, so the ready line can name its
/// address) from a new thread, `roomcast-admin`, answering from `backend`. Returns once the
/// thread runs; errors are those of setting up the runtime, the listener or the thread.
pub fn spawn(
    listener: std::net::TcpListener,
    backend: Arc<dyn Backend>,
    settings: AdminSettings,
) -> io::Result<AdminHandle> {
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_name("roomcast-admin-ask")
        .build()?;
    let listener = {
        let _entered = runtime.enter();
        tokio::net::TcpListener::from_std(listener)?
    };
    let (stop_tx, stop) = watch::channel(false);
    let (drain, drained) = mpsc::channel(1);
    let state = AppState { backend, settings: Arc::new(settings), hub: Arc::new(stream::PulseHub::new()), stop, drain };
    let thread = std::thread::Builder::new().name("roomcast-admin".into()).spawn(move || {
        runtime.block_on(serve(listener, state, drained));
        runtime.shutdown_timeout(SHUTDOWN_GRACE);
    })?;
    tracing::info!(%addr, "admin port serving");
    Ok(AdminHandle { addr, stop: stop_tx, thread: Some(thread) })
}

async fn serve(listener: tokio::net::TcpListener, state: AppState, mut drained: mpsc::Receiver<()>) {
    let producer = tokio::spawn(stream::produce(state.clone()));
    let server = axum::serve(listener, routes::router(state.clone()))
        .with_graceful_shutdown(stopped(state.stop.clone()))
        .into_future();
    let stop = state.stop.clone();
    tokio::select! {
        result = server => {
            if let Err(e) = result {
                tracing::error!(error = %e, "the admin port stopped with an error");
            }
        }
        () = async { stopped(stop).await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
            tracing::warn!("admin requests still open at shutdown were dropped");
        }
    }
    producer.abort();
    let _ = producer.await;
    drop(state);
    // Every stream holds a sender: `recv` returns `None` once the last one closed.
    if tokio::time::timeout(SHUTDOWN_GRACE, drained.recv()).await.is_err() {
        tracing::warn!("admin streams still open at shutdown were dropped");
    }
    tracing::info!("admin port stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_follow_the_configuration() {
        let mut config = Config::default();
        let s = AdminSettings::from_config(&config);
        assert_eq!((s.token, s.ingest_tokens, s.max_body), (None, false, 64 * 1024));
        config.admin.token = Some("t".into());
        config.ingest.tokens = vec!["i".into()];
        config.ingest.max_line = 4096;
        let s = AdminSettings::from_config(&config);
        assert_eq!((s.token.as_deref(), s.ingest_tokens, s.max_body), (Some("t"), true, 4096));
    }
}
