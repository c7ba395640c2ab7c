//! The mailboxes that connect the threads: one `crossbeam-channel` queue and one
//! [`mio::Waker`] per worker, and the same for the ingest loop.
//!
//! A sender pushes a whole batch (`Vec<Mail>`) per destination per loop turn and wakes the
//! destination once, so the channel and the wake-up syscall are paid per turn, not per message.
//!
//! The queues are unbounded (a worker must never block on another: two workers sending to
//! each other would deadlock), and what can queue is bounded at its source instead. Each worker
//! mailbox counts the mails waiting in it (one relaxed atomic add per batch sent, one subtract
//! per batch handled, never per message); the ingest loop, the one producer that is not paced
//! by viewers, stops reading upstreams while any worker has more than
//! [`crate::upstream::MailPressure`]'s high mark waiting and resumes below its low mark. Mail
//! from viewers is paced by their own sockets (and their rate limits), and every fan-out
//! `Deliver` is caused by a sequenced message, so the queues stay bounded by the high mark plus
//! what viewers send within one turn.

use crate::metrics::{IngestCounts, WorkerLoad};
use crate::shard::ask::{Answer, Question};
use crate::shard::mail::{IngestReply, Mail};
use crossbeam_channel::{Receiver, Sender};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// What a worker's mailbox carries.
#[derive(Debug)]
pub enum WorkerMail {
    /// Mail from another worker or the ingest loop, in the sender's order.
    Mail(Vec<Mail>),
    /// A question from the admin port; the answer (with the worker's load) goes back on
    /// `reply`, which the asker reads with a deadline (a late answer is dropped).
    Ask {
        /// The question.
        question: Question,
        /// Where the answer goes.
        reply: Sender<(Answer, WorkerLoad)>,
    },
    /// Close every connection with 1001 and stop.
    Shutdown,
}

/// What the ingest loop's mailbox carries.
#[derive(Debug)]
pub enum IngestMail {
    /// Replies from room homes.
    Replies(Vec<IngestReply>),
    /// One upstream command over HTTP (`POST /api/publish` and the like), handled exactly as
    /// an ingest line; the reply line goes back on `reply`.
    Http {
        /// The command's op, from the path.
        op: &'static str,
        /// The request body (a JSON object).
        body: Vec<u8>,
        /// The request's bearer token, checked like an ingest `auth`.
        bearer: Option<String>,
        /// Whether the request carried the admin token (no ingest token needed then).
        operator: bool,
        /// Where the reply line goes.
        reply: Sender<Vec<u8>>,
    },
    /// The upstream commands counted so far (by op and outcome), for a scrape.
    Counters {
        /// Where the counts go.
        reply: Sender<IngestCounts>,
    },
    /// Stop accepting and exit.
    Shutdown,
}

/// One thread's inbox as seen by the others.
#[derive(Debug)]
pub struct Mailbox<T> {
    tx: Sender<T>,
    waker: Arc<mio::Waker>,
    /// Mails sent and not yet handled (see the module doc).
    depth: Arc<AtomicUsize>,
}

impl<T> Clone for Mailbox<T> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone(), waker: Arc::clone(&self.waker), depth: Arc::clone(&self.depth) }
    }
}

impl<T> Mailbox<T> {
    /// A mailbox whose receiver is woken through `waker`.
    pub fn new(waker: Arc<mio::Waker>) -> (Self, Receiver<T>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (Self { tx, waker, depth: Arc::new(AtomicUsize::new(0)) }, rx)
    }

    /// Deliver `msg` and wake the receiver. Fails only when the receiver has exited.
    pub fn send(&self, msg: T) -> bool {
        self.tx.send(msg).is_ok() && self.waker.wake().is_ok()
    }

    /// Mails waiting (sent with [`Mailbox::send_mail`], not yet [`Mailbox::handled`]).
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// The receiver handled `n` mails.
    pub fn handled(&self, n: usize) {
        self.depth.fetch_sub(n, Ordering::Relaxed);
    }
}

impl Mailbox<WorkerMail> {
    /// Deliver a batch of mail, counted in the depth, and wake the worker.
    pub fn send_mail(&self, mail: Vec<Mail>) -> bool {
        self.depth.fetch_add(mail.len(), Ordering::Relaxed);
        self.send(WorkerMail::Mail(mail))
    }
}

/// Every mailbox in the process, shared by all threads.
#[derive(Debug)]
pub struct Mesh {
    /// Worker mailboxes, indexed by worker id.
    pub workers: Vec<Mailbox<WorkerMail>>,
    /// The ingest loop's mailbox.
    pub ingest: Mailbox<IngestMail>,
}

impl Mesh {
    /// The most mails waiting in any worker's mailbox.
    pub fn deepest_worker_queue(&self) -> usize {
        self.workers.iter().map(Mailbox::depth).max().unwrap_or(0)
    }
}
