//! The frontend's state of one gear: its pools of idle connections (one per
//! worker), its counters and access log, its activity (for idling) and the
//! wake-up in progress; and the node's monotonic clock that activity is
//! measured on.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::access::AccessLog;
use super::metrics::Stats;
use super::wire::Upstream;
use gearhost_sys::lock::lock;

/// Most idle connections kept open to one gear (per worker). HTTP/2 clients
/// keep many requests in flight at once, and their answers come back in
/// bursts: a pool smaller than the requests in flight closes connections
/// that the next burst opens again (each a thread entering the gear's
/// network namespace).
const POOL_MAX: usize = 1024;
/// An idle pooled connection older than this is closed instead of reused
/// (apps close idle keep-alive connections after a while themselves).
const POOL_IDLE: Duration = Duration::from_secs(30);

/// The result of a wake-up, shared by every request that waited for it.
pub(crate) type WakeResult = Option<Result<(), String>>;

thread_local! {
    /// Which frontend worker this thread is (0: not a worker).
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Make this thread frontend worker `i` (from 1): requests it serves use
/// the gears' pools of that worker.
pub(super) fn set_worker(i: usize) {
    WORKER.set(i);
}

/// The frontend's state of one gear: its connection pools, counters, access
/// log, activity and wake-up.
#[derive(Debug)]
pub struct GearFront {
    /// Idle connections to the gear, one pool per frontend worker (a
    /// connection's task runs on the worker that opened it, so a request
    /// never hops threads), plus one for everything else.
    pools: Vec<Mutex<Vec<Upstream>>>,
    /// Request counters.
    pub stats: Stats,
    /// The access log.
    pub access: AccessLog,
    /// Requests (and upgraded connections) in flight.
    pub(crate) active: AtomicUsize,
    /// When the last request arrived or ended, or the gear started: the
    /// node's monotonic milliseconds.
    pub(crate) last_active: AtomicU64,
    /// The wake-up in progress, if any: every request for the idle gear
    /// waits on the same one.
    pub(crate) waking: Mutex<Option<tokio::sync::watch::Receiver<WakeResult>>>,
    /// The frontend's listener inside the gear's network namespace (its task owns it),
    /// while the gear runs.
    pub(super) door: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Set while the gear is being idled. With `active` it makes a
    /// handshake (both sequentially consistent): the idler sets this, then
    /// looks at `active`; a request raises `active`, then looks at this. So
    /// either the idler sees the request and leaves the gear alone, or the
    /// request sees the idler and waits for the wake-up after it, instead of
    /// reaching an app that is being stopped.
    pub(crate) closing: AtomicBool,
    /// Requests being passed to the gear now (past the wake-up check, until
    /// their answer is through). Idling waits for them: with `closing` it
    /// makes the same handshake as `active`.
    pub(crate) forwarding: AtomicUsize,
    /// Which slot of the app serves (see [`LiveSlot`]).
    pub(crate) live: Arc<LiveSlot>,
    /// Set while the gear moves to another node ([`MoveHold`]): new requests
    /// wait before they count as the gear's, and are routed again after.
    moving: AtomicBool,
    /// The end of the move in progress, which waiting requests watch.
    moved: Mutex<Option<tokio::sync::watch::Receiver<bool>>>,
    /// Requests between their route and their admission. With `moving` it
    /// makes the same handshake as `active` with `closing`: a move sets
    /// `moving`, then waits for this to be zero; a request raises this, then
    /// looks at `moving`. So a request either waits for the move or is
    /// counted before the move goes on.
    pub(crate) entering: AtomicUsize,
}

/// A gear's new requests held while it moves to another node: from
/// [`GearFront::hold_for_move`] until this is dropped. The requests then
/// look their host up again (the gear's names lead to its new node by then,
/// or still here when the move failed).
#[derive(Debug)]
pub struct MoveHold<'a> {
    front: &'a GearFront,
    done: tokio::sync::watch::Sender<bool>,
}

impl Drop for MoveHold<'_> {
    fn drop(&mut self) {
        *lock(&self.front.moved) = None;
        self.front.moving.store(false, Ordering::SeqCst);
        let _ = self.done.send(true);
    }
}

/// Which of its two slots a gear's app serves from, and the frontend's
/// connections to each. An app started beside the serving one listens on
/// the other slot's ports (`gearhost_runtime::manifest::slot_port`); once
/// it answers, the node switches the slot, and new requests go to it, while
/// the connections still open to the old slot are waited for before the old
/// app stops. A connection counts against its slot from before the slot is
/// read until it is closed, so a switch never misses one (see [`LiveSlot::lease`]).
#[derive(Debug, Default)]
pub struct LiveSlot {
    slot: AtomicU8,
    connections: [AtomicUsize; 2],
}

impl LiveSlot {
    /// The slot serving now.
    pub fn get(&self) -> u8 {
        self.slot.load(Ordering::SeqCst)
    }

    /// Serve from `slot` from now on (the node, at a switch or a start).
    pub fn set(&self, slot: u8) {
        self.slot.store(slot & 1, Ordering::SeqCst);
    }

    /// Count a new connection against the serving slot: the count is raised
    /// before the slot is read again, so a switch that changed the slot in
    /// between is either seen here (and the lease taken on the new slot) or
    /// sees this connection in the old slot's count.
    pub fn lease(self: &Arc<Self>) -> SlotLease {
        loop {
            let slot = self.get();
            self.connections[usize::from(slot)].fetch_add(1, Ordering::SeqCst);
            if self.get() == slot {
                return SlotLease {
                    live: self.clone(),
                    slot,
                };
            }
            self.connections[usize::from(slot)].fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Connections open to `slot`'s app.
    pub fn connections(&self, slot: u8) -> usize {
        self.connections[usize::from(slot & 1)].load(Ordering::SeqCst)
    }
}

/// A connection counted against a slot until it is dropped.
#[derive(Debug)]
pub struct SlotLease {
    live: Arc<LiveSlot>,
    /// The slot.
    pub slot: u8,
}

impl SlotLease {
    /// Whether the gear still serves from this connection's slot.
    pub fn current(&self) -> bool {
        self.live.get() == self.slot
    }
}

impl Drop for SlotLease {
    fn drop(&mut self) {
        self.live.connections[usize::from(self.slot)].fetch_sub(1, Ordering::SeqCst);
    }
}

impl GearFront {
    /// The frontend state of a gear whose logs are in `logs`, for `workers`
    /// frontend workers.
    pub fn new(logs: &std::path::Path, max_bytes: u64, keep: usize, workers: usize) -> GearFront {
        GearFront::with_log(
            AccessLog::new(logs.join("access.log"), max_bytes, keep),
            workers,
        )
    }

    /// The frontend state of another node of the cluster, which requests for
    /// the gears it holds are passed to: pools of connections to its
    /// frontend and counters, no access log (the node that holds a gear keeps
    /// its log).
    pub fn for_node(workers: usize) -> GearFront {
        GearFront::with_log(AccessLog::none(), workers)
    }

    fn with_log(access: AccessLog, workers: usize) -> GearFront {
        GearFront {
            pools: (0..=workers).map(|_| Mutex::new(Vec::new())).collect(),
            stats: Stats::default(),
            access,
            active: AtomicUsize::new(0),
            last_active: AtomicU64::new(now_ms()),
            waking: Mutex::new(None),
            door: Mutex::new(None),
            closing: AtomicBool::new(false),
            forwarding: AtomicUsize::new(0),
            live: Arc::default(),
            moving: AtomicBool::new(false),
            moved: Mutex::new(None),
            entering: AtomicUsize::new(0),
        }
    }

    /// Hold the gear's new requests while it moves (see [`MoveHold`]).
    pub fn hold_for_move(&self) -> MoveHold<'_> {
        let (done, wait) = tokio::sync::watch::channel(false);
        *lock(&self.moved) = Some(wait);
        self.moving.store(true, Ordering::SeqCst);
        MoveHold { front: self, done }
    }

    /// The end of the move in progress to wait for, if the gear is moving.
    /// Called with the request counted in `entering`.
    pub(crate) fn moving(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        if !self.moving.load(Ordering::SeqCst) {
            return None;
        }
        lock(&self.moved).clone()
    }

    /// Close the frontend's listener inside the gear (it stopped, or is being
    /// destroyed): once this returns, the listener is closed and its port free
    /// for the next door. Connections it accepted are served to their end.
    pub async fn close_door(&self) {
        let door = lock(&self.door).take();
        if let Some(door) = door {
            door.abort();
            let _ = door.await;
        }
    }

    /// Whether the frontend listens inside the gear now.
    pub fn has_door(&self) -> bool {
        lock(&self.door).as_ref().is_some_and(|d| !d.is_finished())
    }

    /// Note activity now (a request, a start).
    pub fn touch(&self) {
        self.last_active.store(now_ms(), Ordering::Relaxed);
    }

    /// Note activity at `at`.
    pub(super) fn touch_at(&self, at: Instant) {
        self.last_active.store(ms_at(at), Ordering::Relaxed);
    }

    /// How long since the last activity.
    pub fn idle_for(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.last_active.load(Ordering::Relaxed)))
    }

    /// Close every pooled connection (the gear stopped).
    pub fn clear_pool(&self) {
        for pool in &self.pools {
            lock(pool).clear();
        }
    }

    /// Close the pooled connections to a slot that no longer serves.
    pub fn clear_pool_of(&self, slot: u8) {
        for pool in &self.pools {
            lock(pool).retain(|u| u.lease.as_ref().is_none_or(|l| l.slot != slot));
        }
    }

    /// This thread's pool.
    fn pool(&self) -> &Mutex<Vec<Upstream>> {
        &self.pools[WORKER.get() % self.pools.len()]
    }

    /// Keep a connection that can carry another request, idle since `now`.
    pub(super) fn put(&self, mut upstream: Upstream, now: Instant) {
        if upstream.lease.as_ref().is_some_and(|l| !l.current()) {
            // its app no longer serves: closing it lets that app be stopped
            return;
        }
        upstream.since = now;
        upstream.buf.release();
        let mut pool = lock(self.pool());
        if pool.len() < POOL_MAX {
            pool.push(upstream);
        }
    }

    /// An idle connection to the gear that can carry a request, if one is pooled.
    pub(super) fn take(&self, now: Instant) -> Option<Upstream> {
        loop {
            let upstream = lock(self.pool()).pop()?;
            if now.saturating_duration_since(upstream.since) <= POOL_IDLE
                && upstream.lease.as_ref().is_none_or(SlotLease::current)
                && upstream.usable()
            {
                return Some(upstream);
            }
        }
    }

    /// Connections idle in this thread's pool.
    #[cfg(test)]
    pub(super) fn pooled(&self) -> usize {
        lock(self.pool()).len()
    }
}

/// Counts a request in [`GearFront::forwarding`] while it lives.
pub(super) struct Forwarding<'a>(&'a GearFront);

impl<'a> Forwarding<'a> {
    /// Count a request as being passed to the gear, unless the gear is being
    /// idled (then `None`: the request waits for the wake-up after it).
    pub(super) fn begin(front: &'a GearFront) -> Option<Forwarding<'a>> {
        front.forwarding.fetch_add(1, Ordering::SeqCst);
        if !front.closing.load(Ordering::SeqCst) {
            return Some(Forwarding(front));
        }
        front.forwarding.fetch_sub(1, Ordering::SeqCst);
        None
    }
}

impl Drop for Forwarding<'_> {
    fn drop(&mut self) {
        self.0.forwarding.fetch_sub(1, Ordering::SeqCst);
    }
}

static CLOCK_START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Milliseconds on the node's monotonic clock.
pub fn now_ms() -> u64 {
    ms_at(Instant::now())
}

/// `at` in milliseconds on the node's monotonic clock.
fn ms_at(at: Instant) -> u64 {
    at.saturating_duration_since(*CLOCK_START.get_or_init(Instant::now))
        .as_millis() as u64
        + 1
}
