//! The mailboxes that connect the threads: one `crossbeam-channel` queue and one
//! [`mio::Waker`] per worker, and the same for the ingest loop.
//!
//! A sender pushes a whole batch (`Vec<Mail>`) per destination per loop turn and wakes the
//! destination once, so the channel and the wake-up syscall are paid per turn, not per message.

use crate::shard::mail::{IngestReply, Mail};
use crossbeam_channel::{Receiver, Sender};
use std::sync::Arc;

/// What a worker's mailbox carries.
#[derive(Debug)]
pub enum WorkerMail {
    /// Mail from another worker or the ingest loop, in the sender's order.
    Mail(Vec<Mail>),
    /// Close every connection with 1001 and stop.
    Shutdown,
}

/// What the ingest loop's mailbox carries.
#[derive(Debug)]
pub enum IngestMail {
    /// Replies from room homes.
    Replies(Vec<IngestReply>),
    /// Stop accepting and exit.
    Shutdown,
}

/// One thread's inbox as seen by the others.
#[derive(Debug)]
pub struct Mailbox<T> {
    tx: Sender<T>,
    waker: Arc<mio::Waker>,
}

impl<T> Clone for Mailbox<T> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone(), waker: Arc::clone(&self.waker) }
    }
}

impl<T> Mailbox<T> {
    /// A mailbox whose receiver is woken through `waker`.
    pub fn new(waker: Arc<mio::Waker>) -> (Self, Receiver<T>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (Self { tx, waker }, rx)
    }

    /// Deliver `msg` and wake the receiver. Fails only when the receiver has exited.
    pub fn send(&self, msg: T) -> bool {
        self.tx.send(msg).is_ok() && self.waker.wake().is_ok()
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
