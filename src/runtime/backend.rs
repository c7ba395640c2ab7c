//! The admin port's [`Backend`]: every question goes to the owners of the data.
//!
//! A question about one room goes to the room's home worker, a question about everything to
//! every worker, each through its mailbox ([`WorkerMail::Ask`]) with a fresh reply channel;
//! the answers are awaited until the request's deadline and merged here (lists with
//! [`RoomsQuery::merge`], counters with [`Metrics::merge`]). Nothing is cached, so an answer is
//! exactly what the owners held when they answered. Upstream commands go to the ingest loop
//! ([`IngestMail::Http`]), which runs them through the same protocol logic as the ingest
//! socket. This thread never touches worker state and takes no lock a worker takes.

use super::mesh::{IngestMail, Mesh, WorkerMail};
use crate::admin::backend::{Backend, BackendError, Caller, Health, Tap, TapSender, UpstreamOp, TAP_CAPACITY};
use crate::ids::WorkerId;
use crate::metrics::{Metrics, WorkerLoad};
use crate::query::{FeedItem, PageQuery, PresencePage, RoomDetail, RoomsPage, RoomsQuery, Since};
use crate::shard::ask::{Answer, FeedSink, Question};
use crate::shard::{home_of, ViewerActivity};
use crate::sink::SinkHandle;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// What the process is doing, set by the main thread, read by `/healthz` and `/readyz`.
#[derive(Debug, Default)]
pub struct HealthState(AtomicU8);

impl HealthState {
    const READY: u8 = 0;
    const DRAINING: u8 = 1;
    const STOPPING: u8 = 2;

    /// The process stops accepting viewers and is shutting down.
    pub fn set_stopping(&self) {
        self.0.store(Self::STOPPING, Ordering::Relaxed);
    }

    /// The process drains: it keeps its viewers for now but accepts no new ones.
    pub fn set_draining(&self) {
        self.0.store(Self::DRAINING, Ordering::Relaxed);
    }

    fn get(&self) -> Health {
        match self.0.load(Ordering::Relaxed) {
            Self::READY => Health::Ready,
            Self::DRAINING => Health::Draining,
            _ => Health::Stopping,
        }
    }
}

/// The real backend. See the module doc.
#[derive(Debug)]
pub struct MeshBackend {
    mesh: Arc<Mesh>,
    health: Arc<HealthState>,
    sinks: Option<SinkHandle>,
    cluster: Option<Arc<crate::broker::ClusterStatus>>,
}

impl MeshBackend {
    /// A backend asking the workers of `mesh` (and `sinks` for their counters).
    pub fn new(mesh: Arc<Mesh>, health: Arc<HealthState>, sinks: Option<SinkHandle>) -> Self {
        Self { mesh, health, sinks, cluster: None }
    }

    /// Report the cluster broker's status too (a cluster node).
    pub fn with_cluster(mut self, cluster: Option<Arc<crate::broker::ClusterStatus>>) -> Self {
        self.cluster = cluster;
        self
    }

    fn workers(&self) -> usize {
        self.mesh.workers.len()
    }

    /// Send a question to one worker; the receiver of its answer.
    fn ask(&self, worker: WorkerId, question: Question) -> Result<Receiver<(Answer, WorkerLoad)>, BackendError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let mailbox = self.mesh.workers.get(usize::from(worker.0)).ok_or(BackendError::Timeout)?;
        if !mailbox.send(WorkerMail::Ask { question, reply: tx }) {
            return Err(BackendError::Unavailable("the workers have stopped".into()));
        }
        Ok(rx)
    }

    /// Ask every worker (`make` builds each one's question) and wait for all the answers.
    fn ask_all(
        &self,
        make: impl Fn() -> Question,
        deadline: Instant,
    ) -> Result<Vec<(Answer, WorkerLoad)>, BackendError> {
        let pending: Vec<_> =
            (0..self.workers()).map(|w| self.ask(WorkerId(w as u16), make())).collect::<Result<_, _>>()?;
        pending.into_iter().map(|rx| wait(&rx, deadline)).collect()
    }

    /// Ask a room's home.
    fn ask_home(&self, room: &str, question: Question, deadline: Instant) -> Result<Answer, BackendError> {
        let rx = self.ask(home_of(room, self.workers()), question)?;
        wait(&rx, deadline).map(|(answer, _)| answer)
    }
}

fn wait(rx: &Receiver<(Answer, WorkerLoad)>, deadline: Instant) -> Result<(Answer, WorkerLoad), BackendError> {
    rx.recv_deadline(deadline).map_err(|e| match e {
        RecvTimeoutError::Timeout => BackendError::Timeout,
        RecvTimeoutError::Disconnected => BackendError::Unavailable("the workers have stopped".into()),
    })
}

/// An answer of the wrong kind: a bug, reported as the workers not answering properly.
fn mismatch() -> BackendError {
    BackendError::Unavailable("a worker answered another question".into())
}

impl Backend for MeshBackend {
    fn health(&self, _deadline: Instant) -> Result<Health, BackendError> {
        Ok(self.health.get())
    }

    fn rooms(&self, query: &RoomsQuery, deadline: Instant) -> Result<RoomsPage, BackendError> {
        let answers = self.ask_all(|| Question::Rooms(query.clone()), deadline)?;
        let parts = answers.into_iter().map(|(answer, _)| match answer {
            Answer::Rooms(part) => Ok(part),
            _ => Err(mismatch()),
        });
        Ok(query.merge(parts.collect::<Result<Vec<_>, _>>()?))
    }

    fn room(&self, room: &str, since: &Since, deadline: Instant) -> Result<RoomDetail, BackendError> {
        let since = since.since.map(|s| (s, since.epoch.clone()));
        match self.ask_home(room, Question::Room { room: room.to_owned(), since: since.clone() }, deadline)? {
            Answer::Room(Some(detail)) => Ok(*detail),
            // In a cluster a room this node does not follow is read from Redis.
            Answer::Room(None) => match &self.cluster {
                Some(cluster) => {
                    let since = Since { since: since.as_ref().map(|s| s.0), epoch: since.and_then(|s| s.1) };
                    match cluster.room_detail(room, &since) {
                        Ok(Some(detail)) => Ok(detail),
                        Ok(None) => Err(BackendError::UnknownRoom(room.to_owned())),
                        Err(e) => Err(BackendError::Unavailable(format!("the cluster's Redis did not answer: {e}"))),
                    }
                }
                None => Err(BackendError::UnknownRoom(room.to_owned())),
            },
            _ => Err(mismatch()),
        }
    }

    fn presence(&self, room: &str, page: &PageQuery, deadline: Instant) -> Result<PresencePage, BackendError> {
        let question = Question::Members { room: room.to_owned(), page: page.clone() };
        let mut page = match self.ask_home(room, question, deadline)? {
            Answer::Members(Some(page)) => page,
            Answer::Members(None) => return Err(BackendError::UnknownRoom(room.to_owned())),
            _ => return Err(mismatch()),
        };
        // Heartbeats stay on the viewers' workers: ask them all about this page's users and
        // combine (latest frame seen anywhere, shortest silence anywhere).
        let users: Vec<String> = page.members.iter().map(|m| m.user.clone()).collect();
        let mut seen: Vec<Option<ViewerActivity>> = vec![None; users.len()];
        for (answer, _) in
            self.ask_all(|| Question::Activity { room: room.to_owned(), users: users.clone() }, deadline)?
        {
            let Answer::Activity(activity) = answer else { return Err(mismatch()) };
            for (slot, here) in seen.iter_mut().zip(activity) {
                *slot = match (*slot, here) {
                    (Some(a), Some(b)) => Some(ViewerActivity {
                        last_seen_ms: a.last_seen_ms.max(b.last_seen_ms),
                        silent_ms: a.silent_ms.min(b.silent_ms),
                    }),
                    (a, b) => a.or(b),
                };
            }
        }
        for (member, seen) in page.members.iter_mut().zip(seen) {
            if let Some(seen) = seen {
                member.last_seen = seen.last_seen_ms;
                member.silent_ms = seen.silent_ms;
            }
        }
        Ok(page)
    }

    fn upstream(
        &self,
        op: UpstreamOp,
        body: &[u8],
        caller: &Caller,
        deadline: Instant,
    ) -> Result<Vec<u8>, BackendError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let (bearer, operator) = match caller {
            Caller::Operator => (None, true),
            Caller::Upstream { bearer } => (bearer.clone(), false),
        };
        let mail = IngestMail::Http { op: op.as_str(), body: body.to_vec(), bearer, operator, reply: tx };
        if !self.mesh.ingest.send(mail) {
            return Err(BackendError::Unavailable("the ingest loop has stopped".into()));
        }
        rx.recv_deadline(deadline).map_err(|e| match e {
            RecvTimeoutError::Timeout => BackendError::Timeout,
            RecvTimeoutError::Disconnected => BackendError::Unavailable("the ingest loop has stopped".into()),
        })
    }

    fn counters(&self, deadline: Instant) -> Result<Metrics, BackendError> {
        let (tx, ingest) = crossbeam_channel::bounded(1);
        if !self.mesh.ingest.send(IngestMail::Counters { reply: tx }) {
            return Err(BackendError::Unavailable("the ingest loop has stopped".into()));
        }
        let mut metrics = Metrics::default();
        for (answer, load) in self.ask_all(|| Question::Counters, deadline)? {
            let Answer::Counters(counters) = answer else { return Err(mismatch()) };
            metrics.merge(&Metrics::of_worker(*counters, load));
        }
        let counts = ingest.recv_deadline(deadline).map_err(|_| BackendError::Timeout)?;
        metrics.totals.ingest.merge(&counts);
        metrics.sinks = self.sinks.as_ref().map(SinkHandle::metrics);
        metrics.cluster = self.cluster();
        Ok(metrics)
    }

    fn cluster(&self) -> Option<crate::broker::ClusterReport> {
        self.cluster.as_ref().map(|s| s.report())
    }

    fn tap(&self, room: &str, deadline: Instant) -> Result<Tap, BackendError> {
        let (sender, tap) = crate::admin::backend::tap_channel(TAP_CAPACITY);
        let question = Question::Tap { room: room.to_owned(), sink: Box::new(sender) };
        match self.ask_home(room, question, deadline)? {
            Answer::Tapped(true) => Ok(tap),
            Answer::Tapped(false) => Err(BackendError::UnknownRoom(room.to_owned())),
            _ => Err(mismatch()),
        }
    }
}

impl FeedSink for TapSender {
    fn offer(&mut self, item: FeedItem) -> bool {
        !matches!(Self::offer(self, item), crate::admin::backend::Offer::Closed)
    }
}
