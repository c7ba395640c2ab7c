//! What can queue in a worker's mailbox is bounded at its source: the ingest loop stops reading
//! upstreams while a worker has more than `MailPressure::HIGH` mails waiting (see
//! `runtime::mesh`). Here the real ingest loop serves a real socket, and the "worker" is this
//! test: it takes mail off its mailbox but marks it handled only once the ingest has stopped for
//! it, as a worker far slower than the upstream would. An upstream floods a million publishes
//! with acks off; the queue never grows past the mark (plus one read's worth of lines), the
//! upstream is held back by TCP meanwhile, and every publish arrives in the end.

use roomcast::runtime::ingest::IngestLoop;
use roomcast::runtime::mesh::{IngestMail, Mailbox, Mesh, WorkerMail};
use roomcast::shard::mail::Mail;
use roomcast::upstream::{MailPressure, UpstreamSettings};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LINES: usize = 1_000_000;
/// Lines in one 64 KiB read of the ingest loop (the lines below are about 60 bytes).
const LINES_PER_READ: usize = 64 * 1024 / 50;
const WAIT: Duration = Duration::from_secs(120);

#[test]
fn a_flood_of_publishes_never_queues_more_than_the_mark_and_loses_nothing() {
    // The fake worker's mailbox, and the ingest loop's own.
    let worker_poll = mio::Poll::new().expect("poll");
    let worker_waker = Arc::new(mio::Waker::new(worker_poll.registry(), mio::Token(0)).expect("waker"));
    let (worker_box, worker_inbox) = Mailbox::new(worker_waker);
    let ingest_poll = mio::Poll::new().expect("poll");
    let ingest_waker = Arc::new(mio::Waker::new(ingest_poll.registry(), IngestLoop::WAKER_TOKEN).expect("waker"));
    let (ingest_box, ingest_inbox) = Mailbox::<IngestMail>::new(ingest_waker);
    let mesh = Arc::new(Mesh { workers: vec![worker_box], ingest: ingest_box });

    let listener = mio::net::TcpListener::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let settings = UpstreamSettings { max_line: 65_536, tokens: Vec::new(), workers: 1 };
    let ingest = IngestLoop::new(ingest_poll, listener, ingest_inbox, Arc::clone(&mesh), settings).expect("ingest");
    let ingest_thread = std::thread::spawn(move || ingest.run());

    let written = Arc::new(AtomicBool::new(false));
    let writer = {
        let written = Arc::clone(&written);
        std::thread::spawn(move || {
            let mut sock = std::net::TcpStream::connect(addr).expect("connect");
            let mut flood = String::from("{\"op\":\"hello\",\"acks\":false}\n");
            for i in 0..LINES {
                flood.push_str(&format!("{{\"op\":\"publish\",\"room\":\"r\",\"type\":\"t\",\"data\":{i}}}\n"));
            }
            sock.write_all(flood.as_bytes()).expect("the flood is written");
            written.store(true, Ordering::Relaxed);
            sock
        })
    };

    let started = Instant::now();
    let (mut received, mut held, mut deepest, mut pauses) = (0usize, Vec::new(), 0usize, 0);
    let mut expected = 0u64;
    while received < LINES {
        assert!(started.elapsed() < WAIT, "only {received} of {LINES} publishes arrived within {WAIT:?}");
        let Ok(WorkerMail::Mail(batch)) = worker_inbox.recv_timeout(WAIT) else { panic!("the mail stopped") };
        for mail in &batch {
            let Mail::Publish { data, .. } = mail else { panic!("only publishes were sent: {mail:?}") };
            assert_eq!(data.parse::<u64>().ok(), Some(expected), "publishes arrive in order, none lost");
            expected += 1;
        }
        received += batch.len();
        held.push(batch.len());
        deepest = deepest.max(mesh.workers[0].depth());
        // A slow worker: it gets through its backlog only once the ingest stopped for it.
        if mesh.workers[0].depth() >= MailPressure::HIGH {
            pauses += 1;
            if pauses == 1 {
                assert!(!written.load(Ordering::Relaxed), "the upstream is held back while the worker is behind");
            }
            for n in held.drain(..) {
                mesh.workers[0].handled(n);
            }
        }
    }
    for n in held.drain(..) {
        mesh.workers[0].handled(n);
    }
    assert!(pauses >= 5, "the flood ({LINES} lines) hit the mark {pauses} times");
    assert!(
        deepest <= MailPressure::HIGH + LINES_PER_READ,
        "at most one read past the mark may queue: {deepest} mails waited"
    );
    let sock = writer.join().expect("writer");
    assert!(written.load(Ordering::Relaxed));
    drop(sock);
    assert!(mesh.ingest.send(IngestMail::Shutdown));
    ingest_thread.join().expect("ingest thread").expect("ingest loop ran");
}
