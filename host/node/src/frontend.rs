//! The front door: an HTTP/1.1 reverse proxy that routes
//! `http://<gear>-<namespace>.<domain>:<port>/` (and a gear's aliases) to the
//! app listening on its private port inside the gear's own network
//! namespace, through sockets the node opens inside that namespace (no veth,
//! no NAT).
//!
//! Every request is routed on its own (a kept-alive client connection may
//! carry requests for several gears), gets `X-Forwarded-For`, `-Host` and
//! `-Proto`, is bounded in head time, body size and response time, and is
//! written to the gear's access log and the node's metrics. The frontend
//! runs on worker threads of its own (`http.workers`), each serving its
//! client connections to the end and keeping its own pool of connections to
//! each gear for reuse. Websocket (and any other) upgrades are passed
//! through: both sides are upgraded, then bytes are spliced. A request for
//! an idle gear wakes it (see [`crate::idle`]) and is served once it answers.
//! The same proxy listens inside every gear (its door), and the operator's
//! `/metrics` on an address of its own.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use gearhost_http::fields::{facts, response_field_passes};
use gearhost_http::request::{BadRequest, check_request, host_name, write_request_head};

use crate::proxy::{
    self, BodyState, Framing, HeadError, ReadBuf, RequestHead, ResponseHead, Upstream,
};

use crate::logs::LogFile;
use crate::node::{Gear, Node};
use crate::state::GearState;
use gearhost_sys::lock::lock;

/// Most idle connections kept open to one gear.
const POOL_MAX: usize = 256;
/// An idle pooled connection older than this is closed instead of reused
/// (apps close idle keep-alive connections after a while themselves).
const POOL_IDLE: Duration = Duration::from_secs(30);
/// Largest request head (request line and headers) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// An access log buffer is written out when it grows past this.
const ACCESS_FLUSH: usize = 64 * 1024;

/// Upper bounds of the request-latency histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

/// Why the frontend answered a request itself instead of a gear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No gear answers to the host name (404).
    UnknownHost,
    /// The request names no host, or uses a method the frontend does not
    /// forward (400, 405).
    BadRequest,
    /// The gear is stopped, failed or starting (503).
    NotRunning,
    /// The gear was idle and could not be woken (503).
    WakeFailed,
    /// The gear did not accept a connection or broke it (502).
    BadGateway,
    /// The gear did not answer in time (504).
    Timeout,
    /// The request body is larger than the node allows (413).
    TooLarge,
}

impl Refusal {
    const ALL: [Refusal; 7] = [
        Refusal::UnknownHost,
        Refusal::BadRequest,
        Refusal::NotRunning,
        Refusal::WakeFailed,
        Refusal::BadGateway,
        Refusal::Timeout,
        Refusal::TooLarge,
    ];

    fn name(self) -> &'static str {
        match self {
            Refusal::UnknownHost => "unknown_host",
            Refusal::BadRequest => "bad_request",
            Refusal::NotRunning => "not_running",
            Refusal::WakeFailed => "wake_failed",
            Refusal::BadGateway => "bad_gateway",
            Refusal::Timeout => "timeout",
            Refusal::TooLarge => "too_large",
        }
    }
}

/// Request counters of one gear (or of the node, for requests no gear got).
#[derive(Debug, Default)]
pub struct Stats {
    /// Responses by status class: 1xx .. 5xx.
    status: [AtomicU64; 5],
    /// Answers the frontend gave itself, by [`Refusal`].
    refused: [AtomicU64; 7],
    /// Latency histogram (time to the response head), cumulative per bucket
    /// when rendered; stored per bucket, the last one is `+Inf`.
    latency: [AtomicU64; 13],
    /// Sum of latencies, microseconds.
    latency_us: AtomicU64,
    /// Wake-ups by a request that succeeded.
    pub(crate) wakeups: AtomicU64,
    /// Wake-ups that failed.
    pub(crate) wake_failures: AtomicU64,
    /// Time spent waking, microseconds.
    pub(crate) wake_us: AtomicU64,
    /// Connections opened to the gear.
    upstream_connections: AtomicU64,
    /// Upgraded connections (websockets) passed through.
    upgrades: AtomicU64,
}

impl Stats {
    fn response(&self, status: StatusCode, latency: Duration) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.status[class].fetch_add(1, Ordering::Relaxed);
        let secs = latency.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_us
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
    }

    fn refused(&self, why: Refusal) {
        let i = Refusal::ALL.iter().position(|r| *r == why).unwrap_or(0);
        self.refused[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// A gear's access log: one line per request, buffered in memory and
/// written out when the buffer fills and once a second.
#[derive(Debug)]
pub struct AccessLog {
    buf: Mutex<Vec<u8>>,
    file: LogFile,
}

impl AccessLog {
    fn record(&self, line: &str) {
        let full = {
            let mut buf = lock(&self.buf);
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
            (buf.len() >= ACCESS_FLUSH).then(|| std::mem::take(&mut *buf))
        };
        if let Some(bytes) = full {
            self.file.write_lines(&bytes);
        }
    }

    /// Write out what is buffered.
    pub fn flush(&self) {
        let bytes = std::mem::take(&mut *lock(&self.buf));
        if !bytes.is_empty() {
            self.file.write_lines(&bytes);
        }
    }

    /// The log file's path.
    pub fn path(&self) -> std::path::PathBuf {
        self.file.path()
    }
}

/// The result of a wake-up, shared by every request that waited for it.
pub(crate) type WakeResult = Option<Result<(), String>>;

thread_local! {
    /// Which frontend worker this thread is (0: not a worker).
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
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
    /// The frontend's listener inside the gear's network namespace.
    door: Mutex<Option<tokio::task::AbortHandle>>,
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
}

/// Counts a request in [`GearFront::forwarding`] while it lives.
struct Forwarding<'a>(&'a GearFront);

impl Drop for Forwarding<'_> {
    fn drop(&mut self) {
        self.0.forwarding.fetch_sub(1, Ordering::SeqCst);
    }
}

impl GearFront {
    /// The frontend state of a gear whose logs are in `logs`, for `workers`
    /// frontend workers.
    pub fn new(logs: &std::path::Path, max_bytes: u64, keep: usize, workers: usize) -> GearFront {
        GearFront {
            pools: (0..=workers).map(|_| Mutex::new(Vec::new())).collect(),
            stats: Stats::default(),
            access: AccessLog {
                buf: Mutex::new(Vec::new()),
                file: LogFile::new(logs.join("access.log"), max_bytes, keep),
            },
            active: AtomicUsize::new(0),
            last_active: AtomicU64::new(now_ms()),
            waking: Mutex::new(None),
            door: Mutex::new(None),
            closing: AtomicBool::new(false),
            forwarding: AtomicUsize::new(0),
        }
    }

    /// Close the frontend's listener inside the gear (it is being destroyed).
    pub fn close_door(&self) {
        if let Some(door) = lock(&self.door).take() {
            door.abort();
        }
    }

    /// Note activity now (a request, a start).
    pub fn touch(&self) {
        self.last_active.store(now_ms(), Ordering::Relaxed);
    }

    /// Note activity at `at`.
    fn touch_at(&self, at: Instant) {
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

    /// This thread's pool.
    fn pool(&self) -> &Mutex<Vec<Upstream>> {
        &self.pools[WORKER.get() % self.pools.len()]
    }

    fn put(&self, mut upstream: Upstream, now: Instant) {
        upstream.since = now;
        upstream.buf.release();
        let mut pool = lock(self.pool());
        if pool.len() < POOL_MAX {
            pool.push(upstream);
        }
    }

    /// An idle connection to the gear that can carry a request, if one is pooled.
    fn take(&self, now: Instant) -> Option<Upstream> {
        loop {
            let upstream = lock(self.pool()).pop()?;
            if now.saturating_duration_since(upstream.since) <= POOL_IDLE && upstream.usable() {
                return Some(upstream);
            }
        }
    }
}

/// Where a host name leads.
#[derive(Debug)]
pub struct Target {
    /// The gear.
    pub gear: Arc<Gear>,
    /// `<gear>-<namespace>`, for pages and metrics.
    pub label: String,
    /// The private port of its first HTTP endpoint.
    pub port: u16,
}

/// The node-wide frontend state: the routing table and counters for
/// requests that reached no gear.
#[derive(Debug, Default)]
pub struct Frontend {
    routes: RwLock<std::collections::HashMap<String, Arc<Target>>>,
    /// Requests no gear got.
    pub stats: Stats,
    /// Client connections open now.
    pub connections: AtomicUsize,
    /// Client connections accepted.
    pub connections_total: AtomicU64,
    /// The send batches of the workers that have one (`http.batch-sends`).
    pub batches: Mutex<Vec<Arc<gearhost_sys::sendbatch::SendBatch>>>,
    /// The workers' queues of new connections, and which worker is next.
    workers: Mutex<Vec<WorkerQueue>>,
    next_worker: AtomicUsize,
}

/// A connection accepted for a frontend worker, with its peer's address and,
/// for one a gear opened at its door, its place in the gear's connections.
type Accepted = (std::net::TcpStream, SocketAddr, Option<crate::conns::Slot>);
type WorkerQueue = tokio::sync::mpsc::UnboundedSender<Accepted>;

impl Frontend {
    /// Hands an accepted connection to the next frontend worker, in turn; a
    /// worker that is gone leaves the others the work. The connection comes
    /// back when there is no worker.
    fn dispatch(&self, connection: Accepted) -> Result<(), Accepted> {
        let mut workers = lock(&self.workers);
        let mut connection = connection;
        while !workers.is_empty() {
            let i = self.next_worker.fetch_add(1, Ordering::Relaxed) % workers.len();
            match workers[i].send(connection) {
                Ok(()) => return Ok(()),
                Err(back) => {
                    workers.remove(i);
                    connection = back.0;
                }
            }
        }
        Err(connection)
    }

    /// Replace the routing table.
    pub fn set_routes(&self, routes: std::collections::HashMap<String, Arc<Target>>) {
        *gearhost_sys::lock::write(&self.routes) = routes;
    }

    /// Which gear answers to `hostname` (lower-case, without port).
    pub fn lookup(&self, hostname: &str) -> Option<Arc<Target>> {
        gearhost_sys::lock::read(&self.routes)
            .get(hostname)
            .cloned()
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

// -- requests -----------------------------------------------------------

/// Most bytes, and longest time, spent reading a refused body to its end.
const DRAIN_BYTES: u64 = 64 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// What is left to do when a response is finished: the access log line,
/// the gear's activity, and returning its connection to the pool.
#[derive(Debug)]
struct Finish {
    gear: Arc<Gear>,
    /// `<peer> "<method> <path> <version>"` followed by ` "<user agent>"`,
    /// which starts at `split`.
    line: String,
    split: usize,
    status: u16,
    start: Instant,
    bytes: u64,
    /// The connection the response came on, returned when it can carry
    /// another request.
    upstream: Option<Upstream>,
}

impl Drop for Finish {
    fn drop(&mut self) {
        let front = &self.gear.front;
        let now = Instant::now();
        if let Some(upstream) = self.upstream.take() {
            front.put(upstream, now);
        }
        let micros = now.saturating_duration_since(self.start).as_micros();
        let (request, agent) = self.line.split_at(self.split.min(self.line.len()));
        LINE.with_borrow_mut(|line| {
            line.clear();
            stamp(line);
            line.push(' ');
            line.push_str(request);
            line.push(' ');
            push_number(line, u64::from(self.status));
            line.push(' ');
            push_number(line, self.bytes);
            line.push(' ');
            push_number(line, (micros / 1000) as u64);
            line.push('.');
            push_number(line, (micros % 1000 / 100) as u64);
            line.push_str("ms");
            line.push_str(agent);
            front.access.record(line);
        });
        front.active.fetch_sub(1, Ordering::Relaxed);
        front.touch_at(now);
    }
}

thread_local! {
    /// The access log line being written (one buffer per thread).
    static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    /// The current second, formatted, and which second it is.
    static SECOND: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
}

/// Append `bytes` for the access log: as they are when they are printable
/// ASCII without quotes or backslashes (nearly always), escaped otherwise.
fn push_escaped(line: &mut String, bytes: &[u8]) {
    if bytes
        .iter()
        .all(|b| (0x20..0x7f).contains(b) && *b != b'"' && *b != b'\\')
    {
        // printable ASCII is UTF-8
        line.push_str(std::str::from_utf8(bytes).unwrap_or_default());
    } else {
        line.extend(String::from_utf8_lossy(bytes).escape_debug());
    }
}

/// Append a number in decimal, without the formatting machinery.
fn push_number(line: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    line.push_str(std::str::from_utf8(&digits[i..]).unwrap_or_default());
}

/// Append the time now as `logs::timestamp` writes it, formatting the date
/// and time once a second per thread.
fn stamp(out: &mut String) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    SECOND.with_borrow_mut(|(second, text)| {
        if *second != now.as_secs() || text.is_empty() {
            let full = crate::logs::timestamp();
            *text = full.split('.').next().unwrap_or(&full).to_string();
            *second = now.as_secs();
        }
        out.push_str(text);
    });
    let ms = now.subsec_millis();
    out.push('.');
    if ms < 100 {
        out.push('0');
    }
    if ms < 10 {
        out.push('0');
    }
    push_number(out, u64::from(ms));
    out.push('Z');
}

// -- pages --------------------------------------------------------------

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A whole response of the frontend's own: a small HTML page saying why.
fn page(status: StatusCode, title: &str, html: &str, head_only: bool, close: bool) -> Vec<u8> {
    let body = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{} {title}</title></head>\n\
         <body><h1>{title}</h1><p>{html}</p><hr><p>gearhost</p></body></html>\n",
        status.as_u16()
    );
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/html; charset=utf-8\r\ncache-control: no-store\r\ncontent-length: {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        out.push_str("retry-after: 5\r\n");
    }
    if close {
        out.push_str("connection: close\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(&body);
    }
    out.into_bytes()
}

// -- the proxy ----------------------------------------------------------

/// Serve the frontend on `listener` with `http.workers` worker threads, each
/// with a single-threaded runtime of its own that serves the connections it
/// is given to the end, with its own connections to gears: a request never
/// changes threads (nginx's worker model). One acceptor thread hands
/// connections to the workers in turn, so they share the load evenly, and so
/// do the doors inside gears. Wake-ups and every other operation on gears
/// still run on the node's main runtime.
pub fn start_workers(node: &Arc<Node>, listener: std::net::TcpListener) -> std::io::Result<()> {
    listener.set_nonblocking(false)?;
    for i in 1..=node.config().frontend_workers {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Accepted>();
        lock(&node.frontend.workers).push(tx);
        let node = node.clone();
        std::thread::Builder::new()
            .name(format!("gear-frontend-{i}"))
            .spawn(move || {
                gearhost_runtime::fsid::reset_thread();
                WORKER.set(i);
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .enable_time()
                    .on_thread_start(gearhost_runtime::fsid::reset_thread)
                    .build();
                let runtime = match runtime {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start a frontend worker");
                        return;
                    }
                };
                runtime.block_on(async move {
                    if node.config().frontend_batch_sends {
                        match proxy::start_batching() {
                            Ok(batch) => lock(&node.frontend.batches).push(batch),
                            Err(e) => tracing::warn!(
                                error = %e,
                                "frontend worker {i} sends one call per connection: this kernel does not allow io_uring here"
                            ),
                        }
                    }
                    while let Some((stream, peer, slot)) = rx.recv().await {
                        let stream = stream
                            .set_nonblocking(true)
                            .and_then(|()| TcpStream::from_std(stream));
                        match stream {
                            Ok(stream) => {
                                tokio::spawn(serve_connection(node.clone(), stream, peer, slot));
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "a frontend worker cannot take a connection")
                            }
                        }
                    }
                });
            })?;
    }
    std::thread::Builder::new()
        .name("gear-frontend-accept".into())
        .spawn({
            let node = node.clone();
            move || loop {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        if node.frontend.dispatch((stream, peer, None)).is_err() {
                            tracing::error!("every frontend worker is gone");
                            return;
                        }
                    }
                    Err(e) => {
                        // out of descriptors and the like: back off instead of spinning
                        tracing::warn!(error = %e, "frontend cannot accept a connection");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })?;
    Ok(())
}

/// Open the frontend's door inside a gear: a listener on
/// `127.0.0.1:<frontend port>` in the gear's network namespace that serves
/// exactly what the frontend serves, so code in a gear reaches other gears
/// (and itself) by their public names and nothing else: the node API is a
/// unix socket outside the gear's mount namespace, `/metrics` listens on the
/// host only, and every request is routed by name like any other.
pub async fn open_door(node: &Arc<Node>, gear: &Arc<Gear>) {
    let Some(port) = node.frontend_addr().map(|a| a.port()) else {
        return;
    };
    let netns = gear.paths.netns();
    let listener = tokio::task::spawn_blocking(move || {
        let l = gearhost_sandbox::netns::listen(&netns, ([127, 0, 0, 1], port).into())?;
        l.set_nonblocking(true)?;
        Ok::<_, std::io::Error>(l)
    })
    .await
    .map_err(std::io::Error::other)
    .and_then(|r| r)
    .and_then(TcpListener::from_std);
    match listener {
        Ok(listener) => {
            let task = tokio::spawn(accept_loop(node.clone(), listener, gear.clone()));
            if let Some(old) = lock(&gear.front.door).replace(task.abort_handle()) {
                old.abort();
            }
        }
        Err(e) => {
            gear.hook_log.line(
                "frontend[node]",
                &format!(
                    "cannot listen on 127.0.0.1:{port} inside the gear, so it cannot reach gears by their public names: {e}"
                ),
            );
        }
    }
}

/// Accepts connections at a gear's door and hands them to the frontend's
/// workers, like the host's listener does (served here when there is none).
/// Each counts against the gear's connections (`crate::conns`); one over
/// the bounds is closed at once.
async fn accept_loop(node: Arc<Node>, listener: TcpListener, gear: Arc<Gear>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // out of descriptors and the like: back off instead of spinning
                tracing::warn!(error = %e, "frontend cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let slot = match node.admission.admit(&gear.conns) {
            Ok(slot) => slot,
            Err((why, first)) => {
                if first {
                    gear.hook_log.line(
                        "frontend[node]",
                        &format!("closed a connection at the door: {why}"),
                    );
                }
                continue;
            }
        };
        let back = match stream.into_std() {
            Ok(stream) => node.frontend.dispatch((stream, peer, Some(slot))),
            Err(e) => {
                tracing::warn!(error = %e, "frontend cannot take a connection at a gear's door");
                continue;
            }
        };
        if let Err((stream, peer, slot)) = back {
            match TcpStream::from_std(stream) {
                Ok(stream) => {
                    tokio::spawn(serve_connection(node.clone(), stream, peer, slot));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "frontend cannot take a connection at a gear's door")
                }
            }
        }
    }
}

/// Serve one client connection to its end, counted (and, for a gear's,
/// holding its place among the gear's connections until then).
async fn serve_connection(
    node: Arc<Node>,
    stream: TcpStream,
    peer: SocketAddr,
    slot: Option<crate::conns::Slot>,
) {
    let front = &node.frontend;
    front.connections.fetch_add(1, Ordering::Relaxed);
    front.connections_total.fetch_add(1, Ordering::Relaxed);
    connection(&node, stream, peer).await;
    node.frontend.connections.fetch_sub(1, Ordering::Relaxed);
    drop(slot);
}

/// Polls `fut` once: its output if it is ready at once, else `None` (it can
/// be polled again later).
async fn futures_poll_once<F: std::future::Future + Unpin>(fut: F) -> Option<F::Output> {
    let mut fut = fut;
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut fut).poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

/// A client connection's state that lives from one request to the next.
struct Client {
    stream: TcpStream,
    sendfd: proxy::SendFd,
    buf: ReadBuf,
    head: RequestHead,
    forwarded_for: String,
    /// The head (and first body bytes) going to the gear.
    to_gear: Vec<u8>,
    /// The head (and first body bytes) going back to the client.
    to_client: Vec<u8>,
    /// Request body bytes on their way to the gear.
    body_out: Vec<u8>,
    response: ResponseHead,
}

async fn connection(node: &Arc<Node>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let mut c = Client {
        stream,
        sendfd: proxy::SendFd::default(),
        buf: ReadBuf::default(),
        head: RequestHead::default(),
        forwarded_for: peer.ip().to_string(),
        to_gear: Vec::with_capacity(1024),
        to_client: Vec::with_capacity(1024),
        body_out: Vec::new(),
        response: ResponseHead::default(),
    };
    let header_timeout = node.config().header_timeout;
    // one timer per connection, moved for each request
    let timer = tokio::time::sleep(header_timeout);
    tokio::pin!(timer);
    loop {
        // a connection waiting for its next request holds no buffer
        c.buf.release();
        proxy::give_buffer(std::mem::take(&mut c.body_out));
        let read = {
            let (stream, buf, parsed) = (&mut c.stream, &mut c.buf, &mut c.head);
            let head = async move {
                if buf.data.is_empty() {
                    // take a buffer only once there is something to read
                    stream.readable().await.map_err(HeadError::Io)?;
                }
                proxy::read_request_head(stream, buf, parsed, MAX_HEAD).await
            };
            tokio::pin!(head);
            // a head already buffered (pipelining) needs no timer
            match futures_poll_once(head.as_mut()).await {
                Some(r) => r,
                None => {
                    timer
                        .as_mut()
                        .reset(tokio::time::Instant::now() + header_timeout);
                    tokio::select! {
                        r = head => r,
                        () = timer.as_mut() => Err(HeadError::Timeout),
                    }
                }
            }
        };
        match read {
            Ok(()) => {}
            Err(HeadError::Closed | HeadError::Io(_) | HeadError::Timeout) => return,
            Err(HeadError::Malformed(e)) => {
                node.frontend.stats.refused(Refusal::BadRequest);
                let bytes = page(
                    StatusCode::BAD_REQUEST,
                    "Bad request",
                    &format!(
                        "The request is not HTTP/1.1 the frontend can read: {}.",
                        escape(&e)
                    ),
                    false,
                    true,
                );
                let _ = c.stream.write_all(&bytes).await;
                return;
            }
            Err(HeadError::TooLarge) => {
                node.frontend.stats.refused(Refusal::BadRequest);
                let bytes = page(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "Request head too large",
                    &format!(
                        "The frontend reads request heads of at most {MAX_HEAD} bytes and {} headers.",
                        gearhost_http::head::MAX_REQUEST_HEADERS
                    ),
                    false,
                    true,
                );
                let _ = c.stream.write_all(&bytes).await;
                return;
            }
        }
        match request(node, &mut c).await {
            Next::KeepAlive => {}
            Next::Close => return,
            Next::Drain(left) => {
                // a refused body: read (and drop) what the client still
                // sends, so that it reads the answer instead of a reset
                let _ = c.stream.shutdown().await;
                let _ = tokio::time::timeout(DRAIN_TIME, async {
                    let mut left = left.min(DRAIN_BYTES);
                    let mut sink = vec![0u8; 16 * 1024];
                    while left > 0 {
                        match c.stream.read(&mut sink).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => left = left.saturating_sub(n as u64),
                        }
                    }
                })
                .await;
                return;
            }
        }
    }
}

/// What happens to a client connection after a request.
enum Next {
    /// Read the next request.
    KeepAlive,
    /// Close it.
    Close,
    /// Close it after reading and dropping up to this many bytes.
    Drain(u64),
}

/// Open a connection to `port` inside the gear's network namespace.
async fn connect(node: &Node, target: &Target) -> Result<Upstream, String> {
    let netns = target.gear.paths.netns();
    let port = target.port;
    let timeout = node.config().connect_timeout;
    let stream = tokio::task::spawn_blocking(move || {
        let s = gearhost_sandbox::netns::connect(&netns, ([127, 0, 0, 1], port).into(), timeout)?;
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
        Ok::<_, std::io::Error>(s)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("nothing answers on port {port} inside the gear ({e})"))?;
    let stream = TcpStream::from_std(stream).map_err(|e| e.to_string())?;
    target
        .gear
        .front
        .stats
        .upstream_connections
        .fetch_add(1, Ordering::Relaxed);
    Ok(Upstream::new(stream))
}

/// What the not-running page says about a gear in `state`.
fn not_running(state: GearState) -> &'static str {
    match state {
        GearState::Starting | GearState::Building => "is starting; try again in a moment",
        GearState::Stopping => "is stopping",
        GearState::Failed => {
            "has failed; its owner can see why with <code>gear status</code> and <code>gear logs</code>"
        }
        GearState::New => "has nothing deployed yet; deploy with <code>gear deploy</code>",
        _ => "is stopped; start it with <code>gear start</code>",
    }
}

/// Writes a page of the frontend's own to the client, and says what happens
/// to the connection: a body the request announced and nobody read is
/// drained before the connection closes.
#[allow(clippy::too_many_arguments)]
async fn refusal(
    c: &mut Client,
    status: StatusCode,
    title: &str,
    html: &str,
    head_only: bool,
    keep: bool,
    pending: Option<u64>,
) -> Next {
    let close = !keep || pending.is_some();
    let bytes = page(status, title, html, head_only, close);
    if c.stream.write_all(&bytes).await.is_err() {
        return Next::Close;
    }
    match pending {
        Some(left) => Next::Drain(left),
        None if close => Next::Close,
        None => Next::KeepAlive,
    }
}

/// Serves one request whose head is in `c.head`: route, wake, refuse, or
/// pass it to the gear and its answer back.
#[allow(clippy::too_many_lines)]
async fn request(node: &Arc<Node>, c: &mut Client) -> Next {
    let start = Instant::now();
    let head_len = c.head.len;
    let client_minor = c.head.minor;
    let checked = check_request(&c.buf.data, &c.head);
    let (is_head, is_connect, idempotent) = {
        let method = &c.buf.data[c.head.method.clone()];
        let idempotent = [
            &b"GET"[..],
            b"HEAD",
            b"OPTIONS",
            b"TRACE",
            b"PUT",
            b"DELETE",
        ]
        .contains(&method);
        (method == b"HEAD", method == b"CONNECT", idempotent)
    };
    let checked = match checked {
        Ok(checked) => checked,
        Err(why) => {
            // a body whose framing is known is read and dropped so that the
            // client reads the answer; one framed two ways is not
            let f = facts(&c.buf.data, &c.head.headers);
            let framing_known = !matches!(
                why,
                BadRequest::BadLength
                    | BadRequest::BadCoding
                    | BadRequest::LengthAndCoding
                    | BadRequest::CodingInOldHttp
            );
            let pending = match f.content_length {
                _ if !framing_known => None,
                Some(n) if n > 0 => Some(n),
                _ if f.encodings > 0 => Some(DRAIN_BYTES),
                _ => None,
            };
            node.frontend.stats.refused(Refusal::BadRequest);
            c.buf.consume(head_len);
            if why == BadRequest::NoHost {
                return refusal(
                    c,
                    StatusCode::BAD_REQUEST,
                    "No host name",
                    "The request names no host. Gears are reached by name, e.g. \
                     <code>http://&lt;gear&gt;-&lt;namespace&gt;.DOMAIN/</code>.",
                    is_head,
                    false,
                    pending,
                )
                .await;
            }
            let html = format!(
                "The request cannot be passed on: {}. Send one request per message, \
                 framed one way, with one <code>Host</code> naming the gear.",
                escape(&why.to_string())
            );
            return refusal(
                c,
                StatusCode::BAD_REQUEST,
                "Bad request",
                &html,
                is_head,
                false,
                pending,
            )
            .await;
        }
    };
    let f = &checked.facts;
    // keep-alive: HTTP/1.1 unless `close`, HTTP/1.0 only when asked
    let keep = if client_minor == 0 {
        f.keep_alive && !f.close
    } else {
        !f.close
    };
    let framing = checked.framing;
    // what the request still has to send, were it refused before its body
    let unread = match framing {
        Framing::Length(0) | Framing::Empty => None,
        Framing::Length(n) => Some(n),
        Framing::Chunked | Framing::Close => Some(DRAIN_BYTES),
    };

    // route it, on the authority the gear will see as its Host
    let routed: Result<Arc<Target>, String> = {
        let authority = &c.buf.data[checked.authority.clone()];
        let host = host_name(authority).unwrap_or_default();
        node.frontend.lookup(&host).ok_or_else(|| escape(&host))
    };
    let target = match routed {
        Ok(t) => t,
        Err(host) => {
            node.frontend.stats.refused(Refusal::UnknownHost);
            node.frontend
                .stats
                .response(StatusCode::NOT_FOUND, start.elapsed());
            c.buf.consume(head_len);
            let html = format!(
                "No gear answers to <code>{host}</code> on this node. Gears are reached at \
                 <code>&lt;gear&gt;-&lt;namespace&gt;.{}</code> or at an alias their owner \
                 added with <code>gear alias add</code>.",
                escape(&node.config().domain)
            );
            return refusal(
                c,
                StatusCode::NOT_FOUND,
                "No such gear",
                &html,
                is_head,
                keep,
                unread,
            )
            .await;
        }
    };
    let front = &target.gear.front;
    front.active.fetch_add(1, Ordering::SeqCst);
    front.touch_at(start);

    // the access log line and the head for the gear, straight from the
    // client's bytes; then the head is done with
    let upgrade = checked.upgrade;
    let mut line = String::with_capacity(160);
    let split;
    {
        let data = &c.buf.data;
        let head = &c.head;
        line.push_str(&c.forwarded_for);
        line.push_str(" \"");
        push_escaped(&mut line, &data[head.method.clone()]);
        line.push(' ');
        push_escaped(&mut line, &data[head.target.clone()]);
        line.push_str(if head.minor == 0 {
            " HTTP/1.0\""
        } else {
            " HTTP/1.1\""
        });
        split = line.len();
        line.push_str(" \"");
        match f.user_agent.clone() {
            Some(r) => push_escaped(&mut line, &data[r]),
            None => line.push('-'),
        }
        line.push('"');
        write_request_head(data, head, &checked, &c.forwarded_for, &mut c.to_gear);
    }
    c.buf.consume(head_len);
    let mut finish = Finish {
        gear: target.gear.clone(),
        line,
        split,
        status: 0,
        start,
        bytes: 0,
        upstream: None,
    };
    let label = escape(&target.label);

    // a refusal from here on: counted, logged, answered with a page
    macro_rules! refuse {
        ($why:expr, $status:expr, $title:expr, $html:expr, $pending:expr) => {{
            let status: StatusCode = $status;
            front.stats.refused($why);
            front.stats.response(status, start.elapsed());
            finish.status = status.as_u16();
            let html: String = $html;
            return refusal(c, status, $title, &html, is_head, keep, $pending).await;
        }};
    }

    if is_connect {
        refuse!(
            Refusal::BadRequest,
            StatusCode::METHOD_NOT_ALLOWED,
            "Not a forward proxy",
            "The frontend routes requests to gears by name; it does not open tunnels.".into(),
            unread
        );
    }

    // an idle gear is woken, and the request waits for it
    let state = target.gear.state();
    let waking = || front.waking.lock().is_ok_and(|w| w.is_some());
    let closing = front.closing.load(Ordering::SeqCst);
    let wake = match state {
        GearState::Running => closing,
        GearState::Idle => true,
        // being idled, or woken by another request
        GearState::Stopping => closing,
        GearState::Starting => waking(),
        _ => false,
    };
    if wake {
        if let Err(e) = node.wake(&target.gear).await {
            let now = target.gear.state();
            // stopped meanwhile (`gear stop`) rather than failed to start
            if matches!(now, GearState::Stopped | GearState::New) {
                refuse!(
                    Refusal::NotRunning,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Gear not running",
                    format!("Gear <code>{label}</code> {}.", not_running(now)),
                    unread
                );
            }
            refuse!(
                Refusal::WakeFailed,
                StatusCode::SERVICE_UNAVAILABLE,
                "Gear could not be woken",
                format!(
                    "Gear <code>{label}</code> was idle and did not start again: {}. \
                     Its owner can see why with <code>gear logs</code> and start it with \
                     <code>gear start</code>.",
                    escape(&e)
                ),
                unread
            );
        }
    } else if state != GearState::Running {
        refuse!(
            Refusal::NotRunning,
            StatusCode::SERVICE_UNAVAILABLE,
            "Gear not running",
            format!("Gear <code>{label}</code> {}.", not_running(state)),
            unread
        );
    }

    // from here the request goes to the gear: an idling that began meanwhile
    // is waited out (it waits for the requests already counted here)
    let _forwarding = loop {
        front.forwarding.fetch_add(1, Ordering::SeqCst);
        if !front.closing.load(Ordering::SeqCst) {
            break Forwarding(front);
        }
        front.forwarding.fetch_sub(1, Ordering::SeqCst);
        if let Err(e) = node.wake(&target.gear).await {
            refuse!(
                Refusal::WakeFailed,
                StatusCode::SERVICE_UNAVAILABLE,
                "Gear could not be woken",
                format!(
                    "Gear <code>{label}</code> was idled and did not start again: {}.",
                    escape(&e)
                ),
                unread
            );
        }
    };

    // the body limit: known lengths are refused before anything is sent
    let limit = node.config().max_body;
    let too_large = || format!("This node accepts request bodies of at most {limit} bytes.");
    if f.content_length.is_some_and(|n| n > limit) {
        refuse!(
            Refusal::TooLarge,
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request body too large",
            too_large(),
            unread
        );
    }
    if f.expect_continue && unread.is_some() && client_minor == 1 {
        // the frontend reads the body itself, so it asks for it itself
        if c.stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .is_err()
        {
            return Next::Close;
        }
    }
    // the body's first bytes go with the head
    let mut body = BodyState::new(framing);
    let mut sent: u64 = 0;
    match body.take(&mut c.buf, &mut c.to_gear, false) {
        Ok(n) => sent += n,
        Err(e) => refuse!(
            Refusal::BadRequest,
            StatusCode::BAD_REQUEST,
            "Bad request",
            format!(
                "The request's chunked body is malformed: {}.",
                chunk_error(&e)
            ),
            Some(DRAIN_BYTES)
        ),
    }
    if sent > limit {
        refuse!(
            Refusal::TooLarge,
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request body too large",
            too_large(),
            Some(DRAIN_BYTES)
        );
    }

    // a pooled connection, or a new one. A pooled one the gear closed just
    // before it was used (an app's keep-alive timeout racing the request) is
    // replaced by a new one, once, when the request can be sent again whole
    // and safely: no answer byte came back, all of the body went in the first
    // write, and the method is idempotent (the app may have acted on it)
    let response_timeout = node.config().response_timeout;
    let deadline = tokio::time::Instant::from_std(start) + response_timeout;
    let not_answering = |e: &str| {
        format!(
            "Gear <code>{label}</code> does not accept connections: {}.",
            escape(e)
        )
    };
    let whole_in_first_write = body.done();
    let mut fresh_only = false;
    let (mut upstream, answered, body_error) = loop {
        let pooled = if fresh_only { None } else { front.take(start) };
        let reused = pooled.is_some();
        let mut upstream = match pooled {
            Some(u) => u,
            None => match connect(node, &target).await {
                Ok(u) => u,
                Err(e) => refuse!(
                    Refusal::BadGateway,
                    StatusCode::BAD_GATEWAY,
                    "Gear not answering",
                    not_answering(&e),
                    (!body.done()).then_some(DRAIN_BYTES)
                ),
            },
        };
        if let Err(e) =
            proxy::send_all(&mut upstream.stream, &mut upstream.sendfd, &mut c.to_gear).await
        {
            if reused {
                fresh_only = true;
                continue;
            }
            refuse!(
                Refusal::BadGateway,
                StatusCode::BAD_GATEWAY,
                "Gear answered badly",
                format!(
                    "Gear <code>{label}</code> broke the connection: {}.",
                    escape(&e.to_string())
                ),
                (!body.done()).then_some(DRAIN_BYTES)
            );
        }

        // the rest of the body goes up while the answer is awaited: a gear
        // may answer (and stop reading) before the body is through
        let mut body_error: Option<proxy::CopyError> = None;
        let answered: Result<(), HeadError> = {
            let (mut up_read, mut up_write) = upstream.stream.split();
            let (mut client_read, mut client_write) = c.stream.split();
            let pump = proxy::pump(
                &mut client_read,
                &mut c.buf,
                &mut up_write,
                &mut body,
                false,
                limit,
                &mut sent,
                &mut c.body_out,
            );
            let answer = read_answer(
                &mut up_read,
                &mut upstream.buf,
                &mut c.response,
                &mut client_write,
                client_minor,
            );
            tokio::pin!(pump);
            tokio::pin!(answer);
            let mut pumping = true;
            loop {
                tokio::select! {
                    r = &mut pump, if pumping => {
                        pumping = false;
                        if let Err(e) = r {
                            let stop = !matches!(e, proxy::CopyError::Write);
                            body_error = Some(e);
                            if stop {
                                break Ok(());
                            }
                        }
                    }
                    r = &mut answer => break r,
                    () = tokio::time::sleep_until(deadline) => break Err(HeadError::Timeout),
                }
            }
        };
        if reused
            && idempotent
            && whole_in_first_write
            && matches!(answered, Err(HeadError::Closed))
            && matches!(body_error, None | Some(proxy::CopyError::Write))
        {
            fresh_only = true;
            continue;
        }
        break (upstream, answered, body_error);
    };
    match body_error {
        Some(proxy::CopyError::TooLarge) => refuse!(
            Refusal::TooLarge,
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request body too large",
            too_large(),
            Some(DRAIN_BYTES)
        ),
        Some(proxy::CopyError::Framing(why)) => refuse!(
            Refusal::BadRequest,
            StatusCode::BAD_REQUEST,
            "Bad request",
            format!("The request's chunked body is malformed: {}.", escape(why)),
            Some(DRAIN_BYTES)
        ),
        Some(proxy::CopyError::Read) => {
            // the client went away in the middle of its body
            finish.status = 499;
            return Next::Close;
        }
        Some(proxy::CopyError::Write) | None => {}
    }
    let body_through = body.done();
    if let Err(e) = answered {
        if matches!(e, HeadError::Timeout) {
            refuse!(
                Refusal::Timeout,
                StatusCode::GATEWAY_TIMEOUT,
                "Gear too slow",
                format!(
                    "Gear <code>{label}</code> did not answer within {}.",
                    humantime::format_duration(response_timeout)
                ),
                (!body_through).then_some(DRAIN_BYTES)
            );
        }
        let why = match e {
            HeadError::Closed => "the connection closed without an answer".to_string(),
            HeadError::Io(e) => e.to_string(),
            HeadError::Malformed(e) => format!("not HTTP: {e}"),
            HeadError::TooLarge | HeadError::Timeout => "a response head too large".to_string(),
        };
        refuse!(
            Refusal::BadGateway,
            StatusCode::BAD_GATEWAY,
            "Gear answered badly",
            format!(
                "Gear <code>{label}</code> broke the connection or sent something that \
                 is not HTTP: {}.",
                escape(&why)
            ),
            (!body_through).then_some(DRAIN_BYTES)
        );
    }

    // the answer's head is in upstream.buf
    let status = c.response.status;
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let rf = facts(&upstream.buf.data, &c.response.headers);
    if status == 101 && !upgrade {
        refuse!(
            Refusal::BadGateway,
            StatusCode::BAD_GATEWAY,
            "Gear answered badly",
            format!("Gear <code>{label}</code> switched protocols unasked."),
            (!body_through).then_some(DRAIN_BYTES)
        );
    }
    if rf.bad_length {
        refuse!(
            Refusal::BadGateway,
            StatusCode::BAD_GATEWAY,
            "Gear answered badly",
            format!("Gear <code>{label}</code> sent an answer with a broken Content-Length."),
            (!body_through).then_some(DRAIN_BYTES)
        );
    }
    front.stats.response(code, start.elapsed());
    finish.status = status;
    let rframing = if status == 101 || is_head || status == 204 || status == 304 {
        Framing::Empty
    } else if rf.chunked {
        Framing::Chunked
    } else if rf.other_coding {
        Framing::Close
    } else if let Some(n) = rf.content_length {
        Framing::Length(n)
    } else {
        Framing::Close
    };
    // an HTTP/1.0 client gets a chunked answer unchunked, delimited by the close
    let decode = rframing == Framing::Chunked && client_minor == 0;
    let keep = keep && body_through && rframing != Framing::Close && !decode;

    // the answer's head for the client
    {
        let data = &upstream.buf.data;
        let out = &mut c.to_client;
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(code.as_str().as_bytes());
        out.push(b' ');
        if c.response.reason.is_empty() {
            out.extend_from_slice(code.canonical_reason().unwrap_or("").as_bytes());
        } else {
            out.extend_from_slice(&data[c.response.reason.clone()]);
        }
        out.extend_from_slice(b"\r\n");
        for (n, v) in &c.response.headers {
            let name = &data[n.clone()];
            if !response_field_passes(name, data, &rf.connection, status == 101) {
                continue;
            }
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(&data[v.clone()]);
            out.extend_from_slice(b"\r\n");
        }
        match rframing {
            Framing::Chunked if !decode => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
            Framing::Length(n) => {
                use std::io::Write;
                let _ = write!(out, "content-length: {n}\r\n");
            }
            Framing::Empty if is_head || status == 304 => {
                if let Some(n) = rf.content_length {
                    use std::io::Write;
                    let _ = write!(out, "content-length: {n}\r\n");
                }
            }
            _ => {}
        }
        if status != 101 {
            if !keep {
                out.extend_from_slice(b"connection: close\r\n");
            } else if client_minor == 0 {
                out.extend_from_slice(b"connection: keep-alive\r\n");
            }
        }
        out.extend_from_slice(b"\r\n");
    }
    let answer_len = c.response.len;
    upstream.buf.consume(answer_len);

    if status == 101 {
        // both sides switch: what each already sent the other goes first
        front.stats.upgrades.fetch_add(1, Ordering::Relaxed);
        c.to_client.extend_from_slice(&upstream.buf.data);
        upstream.buf.data.clear();
        let to_gear = std::mem::take(&mut c.buf.data);
        drop(finish);
        front.active.fetch_add(1, Ordering::Relaxed);
        if c.stream.write_all(&c.to_client).await.is_ok()
            && upstream.stream.write_all(&to_gear).await.is_ok()
        {
            let _ = tokio::io::copy_bidirectional(&mut c.stream, &mut upstream.stream).await;
        }
        front.active.fetch_sub(1, Ordering::Relaxed);
        front.touch();
        return Next::Close;
    }

    // the body: its first bytes with the head, the rest as it comes
    let mut rbody = BodyState::new(rframing);
    match rbody.take(&mut upstream.buf, &mut c.to_client, decode) {
        Ok(n) => finish.bytes = n,
        Err(_) => return Next::Close,
    }
    if proxy::send_all(&mut c.stream, &mut c.sendfd, &mut c.to_client)
        .await
        .is_err()
    {
        return Next::Close;
    }
    let mut copied = finish.bytes;
    let pumped = proxy::pump(
        &mut upstream.stream,
        &mut upstream.buf,
        &mut c.stream,
        &mut rbody,
        decode,
        u64::MAX,
        &mut copied,
        &mut c.body_out,
    )
    .await;
    finish.bytes = copied;
    if pumped.is_err() {
        // cut short: the client cannot tell where this answer ends otherwise
        return Next::Close;
    }
    // the gear's connection goes back to the pool when it can carry another request
    if rbody.done()
        && rframing != Framing::Close
        && body_through
        && !rf.close
        && c.response.minor == 1
        && upstream.buf.data.is_empty()
    {
        finish.upstream = Some(upstream);
    }
    drop(finish);
    if keep { Next::KeepAlive } else { Next::Close }
}

/// What a copy error says about a chunked body, for a page.
fn chunk_error(e: &proxy::CopyError) -> String {
    match e {
        proxy::CopyError::Framing(why) => escape(why),
        _ => "it ended early".into(),
    }
}

/// Reads the gear's answer head into `buf` and `head`, passing interim
/// answers (1xx other than 101) on to an HTTP/1.1 client and dropping
/// `100 Continue`, which the frontend already sent.
async fn read_answer(
    up: &mut (impl tokio::io::AsyncRead + Unpin),
    buf: &mut ReadBuf,
    head: &mut ResponseHead,
    client: &mut (impl tokio::io::AsyncWrite + Unpin),
    client_minor: u8,
) -> Result<(), HeadError> {
    loop {
        proxy::read_response_head(up, buf, head, MAX_HEAD * 4).await?;
        if !(100..200).contains(&head.status) || head.status == 101 {
            return Ok(());
        }
        if head.status != 100 && client_minor == 1 {
            // written anew, like every head the client gets from a gear
            let mut bytes = Vec::with_capacity(head.len + 16);
            gearhost_http::head::write_interim_head(&buf.data, head, &mut bytes);
            client.write_all(&bytes).await.map_err(HeadError::Io)?;
        }
        buf.consume(head.len);
    }
}

// -- metrics ------------------------------------------------------------

fn counter(out: &mut String, name: &str, help: &str, kind: &str) {
    use std::fmt::Write;
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The node's metrics in the Prometheus text format.
pub fn render_metrics(node: &Node) -> String {
    use std::fmt::Write;
    let gears = node.gears_snapshot();
    let node_stats = &node.frontend.stats;
    let mut all: Vec<(String, &Stats)> = vec![(String::new(), node_stats)];
    for g in &gears {
        let r = g.record();
        all.push((r.label(), &g.front.stats));
    }
    let mut out = String::with_capacity(4096);
    counter(
        &mut out,
        "gearhost_frontend_requests_total",
        "Requests answered through the frontend, by gear and status class (gear=\"\": no gear).",
        "counter",
    );
    for (label, s) in &all {
        for (i, n) in s.status.iter().enumerate() {
            let n = n.load(Ordering::Relaxed);
            if n > 0 || !label.is_empty() {
                let _ = writeln!(
                    out,
                    "gearhost_frontend_requests_total{{gear=\"{label}\",status=\"{}xx\"}} {n}",
                    i + 1
                );
            }
        }
    }
    counter(
        &mut out,
        "gearhost_frontend_errors_total",
        "Requests the frontend answered itself, by gear and reason.",
        "counter",
    );
    for (label, s) in &all {
        for (i, why) in Refusal::ALL.iter().enumerate() {
            let n = s.refused[i].load(Ordering::Relaxed);
            if n > 0 || !label.is_empty() {
                let _ = writeln!(
                    out,
                    "gearhost_frontend_errors_total{{gear=\"{label}\",reason=\"{}\"}} {n}",
                    why.name()
                );
            }
        }
    }
    counter(
        &mut out,
        "gearhost_frontend_request_duration_seconds",
        "Time from a request's arrival to its response head, by gear.",
        "histogram",
    );
    for (label, s) in all.iter().skip(1) {
        let mut cumulative = 0;
        for (i, n) in s.latency.iter().enumerate() {
            cumulative += n.load(Ordering::Relaxed);
            let le = BUCKETS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(
                out,
                "gearhost_frontend_request_duration_seconds_bucket{{gear=\"{label}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "gearhost_frontend_request_duration_seconds_sum{{gear=\"{label}\"}} {}\n\
             gearhost_frontend_request_duration_seconds_count{{gear=\"{label}\"}} {cumulative}",
            s.latency_us.load(Ordering::Relaxed) as f64 / 1e6
        );
    }
    for (name, help, get) in [
        (
            "gearhost_frontend_wakeups_total",
            "Idle gears started again by a request.",
            (|s: &Stats| s.wakeups.load(Ordering::Relaxed) as f64) as fn(&Stats) -> f64,
        ),
        (
            "gearhost_frontend_wake_failures_total",
            "Idle gears that did not start again when a request came.",
            |s: &Stats| s.wake_failures.load(Ordering::Relaxed) as f64,
        ),
        (
            "gearhost_frontend_wake_seconds_total",
            "Time spent waking idle gears.",
            |s: &Stats| s.wake_us.load(Ordering::Relaxed) as f64 / 1e6,
        ),
        (
            "gearhost_frontend_upstream_connections_total",
            "Connections the frontend opened to gears.",
            |s: &Stats| s.upstream_connections.load(Ordering::Relaxed) as f64,
        ),
        (
            "gearhost_frontend_upgrades_total",
            "Upgraded connections (websockets) passed through to gears.",
            |s: &Stats| s.upgrades.load(Ordering::Relaxed) as f64,
        ),
    ] {
        counter(&mut out, name, help, "counter");
        for (label, s) in all.iter().skip(1) {
            let _ = writeln!(out, "{name}{{gear=\"{label}\"}} {}", get(s));
        }
    }
    counter(
        &mut out,
        "gearhost_frontend_connections",
        "Client connections open now.",
        "gauge",
    );
    let _ = writeln!(
        out,
        "gearhost_frontend_connections {}",
        node.frontend.connections.load(Ordering::Relaxed)
    );
    counter(
        &mut out,
        "gearhost_frontend_connections_total",
        "Client connections accepted.",
        "counter",
    );
    let _ = writeln!(
        out,
        "gearhost_frontend_connections_total {}",
        node.frontend.connections_total.load(Ordering::Relaxed)
    );
    let (mut flushes, mut sent, mut working) = (0, 0, 0);
    for batch in lock(&node.frontend.batches).iter() {
        let stats = batch.stats();
        flushes += stats.flushes;
        sent += stats.sends;
        working += usize::from(stats.working);
    }
    counter(
        &mut out,
        "gearhost_frontend_batching_workers",
        "Frontend workers passing their sends to the kernel in batches (http.batch-sends).",
        "gauge",
    );
    let _ = writeln!(out, "gearhost_frontend_batching_workers {working}");
    counter(
        &mut out,
        "gearhost_frontend_send_batches_total",
        "Batches of sends passed to the kernel, one call each.",
        "counter",
    );
    let _ = writeln!(out, "gearhost_frontend_send_batches_total {flushes}");
    counter(
        &mut out,
        "gearhost_frontend_batched_sends_total",
        "Sends passed to the kernel in batches.",
        "counter",
    );
    let _ = writeln!(out, "gearhost_frontend_batched_sends_total {sent}");
    counter(&mut out, "gearhost_gears", "Gears by state.", "gauge");
    let mut states: std::collections::BTreeMap<String, usize> = Default::default();
    for g in &gears {
        let state = serde_json::to_value(g.state())
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        *states.entry(state).or_default() += 1;
    }
    for (state, n) in states {
        let _ = writeln!(out, "gearhost_gears{{state=\"{state}\"}} {n}");
    }
    if let Ok(init) = gearhost_sandbox::find_init(None) {
        let (waiting, failed) = gearhost_sandbox::warm_status(&init);
        counter(
            &mut out,
            "gearhost_warm_helpers",
            "Gear helpers prepared and waiting for a start (gears.warm-helpers).",
            "gauge",
        );
        let _ = writeln!(out, "gearhost_warm_helpers {waiting}");
        counter(
            &mut out,
            "gearhost_warm_helpers_failing",
            "1 when preparing a helper failed and starts go on without one (the node's log says why).",
            "gauge",
        );
        let _ = writeln!(
            out,
            "gearhost_warm_helpers_failing {}",
            u8::from(failed.is_some())
        );
    }
    out
}

/// Serve `GET /metrics` on the operator's metrics address until it fails.
pub async fn serve_metrics(node: Arc<Node>, listener: TcpListener) -> anyhow::Result<()> {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(metrics_connection(node.clone(), stream));
    }
}

/// Answers `GET /metrics` (and `HEAD`) on one connection, kept alive.
async fn metrics_connection(node: Arc<Node>, mut stream: TcpStream) {
    let mut buf = ReadBuf::default();
    let mut head = RequestHead::default();
    loop {
        let read = proxy::with_deadline(
            Duration::from_secs(30),
            proxy::read_request_head(&mut stream, &mut buf, &mut head, MAX_HEAD),
        )
        .await;
        if read.is_err() {
            return;
        }
        let (method, path) = {
            let data = &buf.data;
            let target = &data[head.target.clone()];
            let path = target.split(|b| *b == b'?').next().unwrap_or_default();
            (data[head.method.clone()].to_vec(), path == b"/metrics")
        };
        let f = facts(&buf.data, &head.headers);
        buf.consume(head.len);
        let is_head = method == b"HEAD";
        let has_body = f.chunked || f.content_length.is_some_and(|n| n > 0);
        let close = f.close || head.minor == 0 || has_body;
        let bytes = if path && (method == b"GET" || is_head) {
            let body = render_metrics(&node);
            let mut out = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\ncontent-length: {}\r\n{}\r\n",
                body.len(),
                if close { "connection: close\r\n" } else { "" }
            );
            if !is_head {
                out.push_str(&body);
            }
            out.into_bytes()
        } else {
            page(
                StatusCode::NOT_FOUND,
                "Not found",
                "The node's metrics are at <code>/metrics</code>.",
                is_head,
                close,
            )
        };
        if stream.write_all(&bytes).await.is_err() || close {
            return;
        }
    }
}

/// Write out every gear's buffered access log lines once a second.
pub async fn flush_access_logs(node: Arc<Node>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        for g in node.gears_snapshot() {
            g.front.access.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_log_pieces_are_written_plainly_or_escaped() {
        let mut line = String::new();
        push_escaped(&mut line, b"/a?b=1");
        push_escaped(&mut line, b" \"q\"");
        push_escaped(&mut line, b"\xff");
        assert_eq!(line, "/a?b=1 \\\"q\\\"\u{fffd}");
        let mut n = String::new();
        for v in [0, 7, 10, 12345, u64::MAX] {
            push_number(&mut n, v);
            n.push(',');
        }
        assert_eq!(n, format!("0,7,10,12345,{},", u64::MAX));
    }

    #[test]
    fn latency_lands_in_its_bucket() {
        let s = Stats::default();
        s.response(StatusCode::OK, Duration::from_micros(300));
        s.response(StatusCode::BAD_GATEWAY, Duration::from_secs(60));
        assert_eq!(s.latency[0].load(Ordering::Relaxed), 1);
        assert_eq!(s.latency[12].load(Ordering::Relaxed), 1);
        assert_eq!(s.status[1].load(Ordering::Relaxed), 1);
        assert_eq!(s.status[4].load(Ordering::Relaxed), 1);
    }
}
