//! Draining the frontend before `gear node restart`: the acceptors stop taking connections
//! (new ones wait in the listen backlogs, which the next image of the node inherits), the
//! requests in flight finish, a connection accepted just before gets its first request
//! served, and a kept-alive connection is closed after its current request.
//!
//! The counts are the process's: one node runs per process.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static DRAINING: AtomicBool = AtomicBool::new(false);
/// Requests between their head and their answer's end (an upgraded connection stops
/// counting once its bytes are spliced: it cannot finish within a drain).
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
/// Connections accepted that have not brought their first head yet.
static FRESH: AtomicUsize = AtomicUsize::new(0);
/// Connections handed to a worker that it has not taken from its queue yet.
static QUEUED: AtomicUsize = AtomicUsize::new(0);
/// Acceptor threads still accepting.
static ACCEPTING: AtomicUsize = AtomicUsize::new(0);

/// How often an acceptor looks whether the frontend drains.
pub(super) const ACCEPT_POLL: Duration = Duration::from_millis(20);
/// How long a connection accepted before the drain has to send its first head.
const FRESH_LIMIT: Duration = Duration::from_secs(2);

/// A count held while the guard lives.
#[derive(Debug)]
pub(super) struct Counted(&'static AtomicUsize);

impl Counted {
    fn on(count: &'static AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Counted(count)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A request in flight, until dropped.
pub(super) fn request() -> Counted {
    Counted::on(&IN_FLIGHT)
}

/// A connection waiting for its first head, until dropped.
pub(super) fn fresh() -> Counted {
    Counted::on(&FRESH)
}

/// A connection put in a worker's queue.
pub(super) fn queued() {
    QUEUED.fetch_add(1, Ordering::SeqCst);
}

/// A connection taken from a worker's queue (or not queued after all).
pub(super) fn unqueued() {
    QUEUED.fetch_sub(1, Ordering::SeqCst);
}

/// Runs `fut`, holding `held` until its first poll is over: a connection counts as fresh
/// from the worker's queue until the pipeline counts it itself.
pub(super) async fn holding<F: std::future::Future>(held: Counted, fut: F) -> F::Output {
    let mut held = Some(held);
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(move |cx| {
        let polled = fut.as_mut().poll(cx);
        held.take();
        polled
    })
    .await
}

/// An acceptor thread, until dropped.
pub(super) fn acceptor() -> Counted {
    Counted::on(&ACCEPTING)
}

/// Whether the frontend drains (no new connections, no further requests on kept-alive ones).
pub fn draining() -> bool {
    DRAINING.load(Ordering::SeqCst)
}

/// What a drain left when it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Requests still in flight (the limit was reached).
    pub in_flight: usize,
    /// Connections still waiting for their first head.
    pub fresh: usize,
    /// How long the drain took.
    pub took: Duration,
}

/// Stops the acceptors and waits, up to `limit`, for the requests in flight and the
/// connections accepted just before to be served.
pub async fn drain(limit: Duration) -> Drained {
    let began = Instant::now();
    DRAINING.store(true, Ordering::SeqCst);
    loop {
        let accepting = ACCEPTING.load(Ordering::SeqCst);
        let in_flight = IN_FLIGHT.load(Ordering::SeqCst);
        let fresh = FRESH.load(Ordering::SeqCst) + QUEUED.load(Ordering::SeqCst);
        let fresh_over = began.elapsed() >= FRESH_LIMIT;
        let done = accepting == 0 && in_flight == 0 && (fresh == 0 || fresh_over);
        if done || began.elapsed() >= limit {
            return Drained {
                in_flight,
                fresh,
                took: began.elapsed(),
            };
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
