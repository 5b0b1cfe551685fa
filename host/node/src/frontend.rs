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

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use crate::logs::LogFile;
use crate::node::{Gear, Node, lock};
use crate::state::GearState;

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

struct Pooled {
    sender: SendRequest<ReqBody>,
    since: Instant,
}

impl std::fmt::Debug for Pooled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pooled")
            .field("since", &self.since)
            .finish()
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
    pools: Vec<Mutex<Vec<Pooled>>>,
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
    fn pool(&self) -> &Mutex<Vec<Pooled>> {
        &self.pools[WORKER.get() % self.pools.len()]
    }

    fn put(&self, sender: SendRequest<ReqBody>) {
        if sender.is_closed() {
            return;
        }
        let mut pool = lock(self.pool());
        if pool.len() < POOL_MAX {
            pool.push(Pooled {
                sender,
                since: Instant::now(),
            });
        }
    }

    async fn take(&self) -> Option<SendRequest<ReqBody>> {
        loop {
            let mut p = lock(self.pool()).pop()?;
            if p.sender.is_closed() || p.since.elapsed() > POOL_IDLE {
                continue;
            }
            if p.sender.is_ready() {
                return Some(p.sender);
            }
            // returned at the end of a response body: the connection's task
            // may not have seen the end yet
            if let Ok(Ok(())) =
                tokio::time::timeout(Duration::from_millis(50), p.sender.ready()).await
            {
                return Some(p.sender);
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
}

impl Frontend {
    /// Replace the routing table.
    pub fn set_routes(&self, routes: std::collections::HashMap<String, Arc<Target>>) {
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = routes;
    }

    /// Which gear answers to `hostname` (lower-case, without port).
    pub fn lookup(&self, hostname: &str) -> Option<Arc<Target>> {
        self.routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(hostname)
            .cloned()
    }
}

/// Milliseconds on the node's monotonic clock.
pub fn now_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

// -- bodies -------------------------------------------------------------

/// Why a forwarded request body ended early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body is larger than `http.max-body`.
    #[error(
        "the request body is larger than {0} bytes; send less, or raise http.max-body in the node configuration"
    )]
    TooLarge(u64),
    /// Reading from the client failed.
    #[error("cannot read the request body from the client: {0}")]
    Client(#[from] hyper::Error),
}

/// A request body on its way to a gear, cut off at the node's limit.
#[derive(Debug)]
pub struct ReqBody {
    /// The client's body; taken away to be drained when the limit is hit.
    inner: Option<Incoming>,
    remaining: u64,
    limit: u64,
    /// Set when the limit was hit (only for bodies of unknown length).
    tripped: Option<Arc<AtomicBool>>,
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let Some(inner) = &mut this.inner else {
            return Poll::Ready(Some(Err(BodyError::TooLarge(this.limit))));
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > this.remaining {
                        if let Some(t) = &this.tripped {
                            t.store(true, Ordering::Relaxed);
                        }
                        // read what the client still sends (within bounds),
                        // so that it gets to read the 413 instead of a reset
                        if let Some(inner) = this.inner.take() {
                            tokio::spawn(drain(inner));
                        }
                        return Poll::Ready(Some(Err(BodyError::TooLarge(this.limit))));
                    }
                    this.remaining -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Client(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Incoming::size_hint)
    }
}

/// Most bytes, and longest time, spent reading a refused body to its end.
const DRAIN_BYTES: u64 = 64 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// Read and discard the rest of a refused request body, so the client,
/// which may still be sending, reads the answer instead of a broken
/// connection (what nginx calls a lingering close).
async fn drain(mut body: Incoming) {
    use std::future::poll_fn;
    let mut left = DRAIN_BYTES;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while let Some(Ok(frame)) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            let n = frame.data_ref().map_or(0, |d| d.len() as u64);
            if n >= left {
                return;
            }
            left -= n;
        }
    })
    .await;
}

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
    /// The connection the response came on, returned when the body ended.
    sender: Option<SendRequest<ReqBody>>,
    /// The body was read to its end.
    complete: bool,
}

impl Drop for Finish {
    fn drop(&mut self) {
        let front = &self.gear.front;
        if let Some(sender) = self.sender.take()
            && self.complete
        {
            front.put(sender);
        }
        let micros = self.start.elapsed().as_micros();
        let (request, agent) = self.line.split_at(self.split.min(self.line.len()));
        LINE.with_borrow_mut(|line| {
            use std::fmt::Write;
            line.clear();
            stamp(line);
            let _ = write!(
                line,
                " {request} {} {} {}.{}ms{agent}",
                self.status,
                self.bytes,
                micros / 1000,
                micros % 1000 / 100
            );
            front.access.record(line);
        });
        front.active.fetch_sub(1, Ordering::Relaxed);
        front.touch();
    }
}

thread_local! {
    /// The access log line being written (one buffer per thread).
    static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    /// The current second, formatted, and which second it is.
    static SECOND: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
}

/// Append the time now as `logs::timestamp` writes it, formatting the date
/// and time once a second per thread.
fn stamp(out: &mut String) {
    use std::fmt::Write;
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
    let _ = write!(out, ".{:03}Z", now.subsec_millis());
}

/// A response body: a page of the frontend's own, or a gear's body streamed through.
#[derive(Debug)]
pub struct RespBody {
    inner: Option<Incoming>,
    page: Option<Bytes>,
    finish: Option<Finish>,
}

impl RespBody {
    fn page(bytes: Bytes, finish: Option<Finish>) -> RespBody {
        let mut finish = finish;
        if let Some(f) = &mut finish {
            f.bytes = bytes.len() as u64;
            f.complete = true;
        }
        RespBody {
            inner: None,
            page: Some(bytes),
            finish,
        }
    }

    fn empty(finish: Option<Finish>) -> RespBody {
        RespBody {
            inner: None,
            page: None,
            finish,
        }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(page) = this.page.take() {
            return Poll::Ready(Some(Ok(Frame::data(page))));
        }
        let Some(inner) = &mut this.inner else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(f)) = (frame.data_ref(), &mut this.finish) {
                    f.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) => {
                if let Some(f) = &mut this.finish {
                    f.complete = true;
                }
                // done: the connection goes back to the pool now, not when
                // the client's connection gets around to dropping the body
                this.finish = None;
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.page.is_none() && self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.page, &self.inner) {
            (Some(p), _) => SizeHint::with_exact(p.len() as u64),
            (None, Some(b)) => b.size_hint(),
            (None, None) => SizeHint::with_exact(0),
        }
    }
}

impl Drop for RespBody {
    fn drop(&mut self) {
        if let (Some(f), Some(inner)) = (&mut self.finish, &self.inner) {
            // a body without content (HEAD, 204, 304) is complete unread
            f.complete = f.complete || inner.is_end_stream();
        }
    }
}

// -- pages --------------------------------------------------------------

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn page(status: StatusCode, title: &str, html: &str, finish: Option<Finish>) -> Response<RespBody> {
    let body = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{} {title}</title></head>\n\
         <body><h1>{title}</h1><p>{html}</p><hr><p>gearhost</p></body></html>\n",
        status.as_u16()
    );
    let mut finish = finish;
    if let Some(f) = &mut finish {
        f.status = status.as_u16();
    }
    let mut response = Response::new(RespBody::page(Bytes::from(body), finish));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    response
}

// -- the proxy ----------------------------------------------------------

/// Serve the frontend on `listener` with `http.workers` worker threads, each
/// with a single-threaded runtime of its own that serves the connections it
/// is given to the end, with its own connections to gears: a request never
/// changes threads (nginx's worker model). One acceptor thread hands
/// connections to the workers in turn, so they share the load evenly. Wake-ups
/// and every other operation on gears still run on the node's main runtime.
pub fn start_workers(node: &Arc<Node>, listener: std::net::TcpListener) -> std::io::Result<()> {
    listener.set_nonblocking(false)?;
    let mut workers_tx = Vec::new();
    for i in 1..=node.config().frontend_workers {
        let (tx, mut rx) =
            tokio::sync::mpsc::unbounded_channel::<(std::net::TcpStream, SocketAddr)>();
        workers_tx.push(tx);
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
                    while let Some((stream, peer)) = rx.recv().await {
                        let stream = stream
                            .set_nonblocking(true)
                            .and_then(|()| TcpStream::from_std(stream));
                        match stream {
                            Ok(stream) => {
                                tokio::spawn(serve_connection(node.clone(), stream, peer));
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
        .spawn(move || {
            let mut next = 0;
            loop {
                match listener.accept() {
                    Ok(connection) => {
                        // a worker that is gone leaves the others the work
                        if workers_tx[next % workers_tx.len()]
                            .send(connection)
                            .is_err()
                        {
                            workers_tx.remove(next % workers_tx.len());
                            if workers_tx.is_empty() {
                                tracing::error!("every frontend worker is gone");
                                return;
                            }
                        }
                        next = next.wrapping_add(1);
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
            let task = tokio::spawn(accept_loop(node.clone(), listener));
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

async fn accept_loop(node: Arc<Node>, listener: TcpListener) {
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
        tokio::spawn(serve_connection(node.clone(), stream, peer));
    }
}

/// Serve one client connection to its end, counted.
async fn serve_connection(node: Arc<Node>, stream: TcpStream, peer: SocketAddr) {
    let front = &node.frontend;
    front.connections.fetch_add(1, Ordering::Relaxed);
    front.connections_total.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = connection(node.clone(), stream, peer).await {
        tracing::debug!(error = %e, %peer, "frontend connection ended with an error");
    }
    node.frontend.connections.fetch_sub(1, Ordering::Relaxed);
}

async fn connection(node: Arc<Node>, stream: TcpStream, peer: SocketAddr) -> hyper::Result<()> {
    let _ = stream.set_nodelay(true);
    let forwarded_for = HeaderValue::from_str(&peer.ip().to_string()).ok();
    let config = node.config();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_buf_size(MAX_HEAD)
        .keep_alive(true);
    let service = hyper::service::service_fn(move |req| {
        let node = node.clone();
        let forwarded_for = forwarded_for.clone();
        async move { Ok::<_, Infallible>(proxy(node, req, peer, forwarded_for).await) }
    });
    builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await
}

/// The host name a request is for: the authority of an absolute URI, else
/// the `Host` header; without the port or a final dot.
fn hostname(req: &Request<Incoming>) -> Option<Cow<'_, str>> {
    let host = match req.uri().authority() {
        Some(a) => a.host(),
        None => {
            let h = req.headers().get(header::HOST)?.to_str().ok()?;
            if h.starts_with('[') {
                h.split_inclusive(']').next().unwrap_or(h)
            } else {
                h.rsplit_once(':').map_or(h, |(name, port)| {
                    if port.bytes().all(|b| b.is_ascii_digit()) {
                        name
                    } else {
                        h
                    }
                })
            }
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
}

fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Remove hop-by-hop headers (those of this connection, not of the
/// message); `upgrade` keeps `Connection: upgrade` and `Upgrade`.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !(upgrade && t.eq_ignore_ascii_case("upgrade")))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in listed {
            headers.remove(name);
        }
        if !upgrade {
            headers.remove(header::CONNECTION);
        }
    }
    if !upgrade {
        headers.remove(header::UPGRADE);
    }
    for name in [
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// Open a connection to `port` inside the gear's network namespace.
async fn connect(node: &Node, target: &Target) -> Result<SendRequest<ReqBody>, String> {
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
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(MAX_HEAD.max(8192) * 4)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "connection to a gear ended with an error");
        }
    });
    target
        .gear
        .front
        .stats
        .upstream_connections
        .fetch_add(1, Ordering::Relaxed);
    Ok(sender)
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

async fn proxy(
    node: Arc<Node>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    forwarded_for: Option<HeaderValue>,
) -> Response<RespBody> {
    let start = Instant::now();
    let Some(host) = hostname(&req) else {
        node.frontend.stats.refused(Refusal::BadRequest);
        return page(
            StatusCode::BAD_REQUEST,
            "No host name",
            "The request names no host. Gears are reached by name, e.g. \
             <code>http://&lt;gear&gt;-&lt;namespace&gt;.DOMAIN/</code>.",
            None,
        );
    };
    let Some(target) = node.frontend.lookup(&host) else {
        node.frontend.stats.refused(Refusal::UnknownHost);
        node.frontend
            .stats
            .response(StatusCode::NOT_FOUND, start.elapsed());
        return page(
            StatusCode::NOT_FOUND,
            "No such gear",
            &format!(
                "No gear answers to <code>{}</code> on this node. Gears are reached at \
                 <code>&lt;gear&gt;-&lt;namespace&gt;.{}</code> or at an alias their owner \
                 added with <code>gear alias add</code>.",
                escape(&host),
                escape(&node.config().domain)
            ),
            None,
        );
    };
    drop(host);
    let front = &target.gear.front;
    front.active.fetch_add(1, Ordering::SeqCst);
    front.touch();
    let ua = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let mut line = format!(
        "{} \"{} {} {:?}\"",
        peer.ip(),
        req.method(),
        req.uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .escape_debug(),
        req.version(),
    );
    let split = line.len();
    {
        use std::fmt::Write;
        let _ = write!(line, " \"{}\"", ua.escape_debug());
    }
    let mut finish = Finish {
        gear: target.gear.clone(),
        line,
        split,
        status: 0,
        start,
        bytes: 0,
        sender: None,
        complete: false,
    };
    let refuse = |why: Refusal, status: StatusCode, title: &str, html: &str, finish: Finish| {
        front.stats.refused(why);
        front.stats.response(status, start.elapsed());
        page(status, title, html, Some(finish))
    };
    let label = escape(&target.label);
    let not_answering = |e: &str, finish: Finish| {
        refuse(
            Refusal::BadGateway,
            StatusCode::BAD_GATEWAY,
            "Gear not answering",
            &format!(
                "Gear <code>{label}</code> does not accept connections: {}.",
                escape(e)
            ),
            finish,
        )
    };

    if req.method() == Method::CONNECT {
        return refuse(
            Refusal::BadRequest,
            StatusCode::METHOD_NOT_ALLOWED,
            "Not a forward proxy",
            "The frontend routes requests to gears by name; it does not open tunnels.",
            finish,
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
                return refuse(
                    Refusal::NotRunning,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Gear not running",
                    &format!("Gear <code>{label}</code> {}.", not_running(now)),
                    finish,
                );
            }
            return refuse(
                Refusal::WakeFailed,
                StatusCode::SERVICE_UNAVAILABLE,
                "Gear could not be woken",
                &format!(
                    "Gear <code>{label}</code> was idle and did not start again: {}. \
                     Its owner can see why with <code>gear logs</code> and start it with \
                     <code>gear start</code>.",
                    escape(&e)
                ),
                finish,
            );
        }
    } else if state != GearState::Running {
        return refuse(
            Refusal::NotRunning,
            StatusCode::SERVICE_UNAVAILABLE,
            "Gear not running",
            &format!("Gear <code>{label}</code> {}.", not_running(state)),
            finish,
        );
    }

    // the body limit: known lengths are refused before anything is sent
    let limit = node.config().max_body;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return refuse(
            Refusal::TooLarge,
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request body too large",
            &format!("This node accepts request bodies of at most {limit} bytes."),
            finish,
        );
    }

    let upgrade = wants_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, incoming) = req.into_parts();
    if parts.uri.authority().is_some() {
        // absolute form (a proxy-style request): the gear gets the origin form
        let pq = parts.uri.path_and_query().map_or_else(
            || hyper::http::uri::PathAndQuery::from_static("/"),
            Clone::clone,
        );
        parts.uri = hyper::Uri::from(pq);
    }
    let host_value = parts.headers.get(header::HOST).cloned();
    strip_hop_by_hop(&mut parts.headers, upgrade);
    let h = &mut parts.headers;
    match forwarded_for {
        Some(v) => h.insert(HeaderName::from_static("x-forwarded-for"), v),
        None => h.remove("x-forwarded-for"),
    };
    match host_value {
        Some(v) => h.insert(HeaderName::from_static("x-forwarded-host"), v),
        None => h.remove("x-forwarded-host"),
    };
    h.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("http"),
    );
    let tripped =
        (declared.is_none() && !incoming.is_end_stream()).then(|| Arc::new(AtomicBool::new(false)));
    let body = ReqBody {
        inner: Some(incoming),
        remaining: limit,
        limit,
        tripped: tripped.clone(),
    };
    let request = Request::from_parts(parts, body);

    // a pooled connection, or a new one; a pooled one the gear closed
    // before the request went out is replaced once
    let response_timeout = node.config().response_timeout;
    let pooled = front.take().await;
    let reused = pooled.is_some();
    let mut sender = match pooled {
        Some(s) => s,
        None => match connect(&node, &target).await {
            Ok(s) => s,
            Err(e) => {
                return not_answering(&e, finish);
            }
        },
    };
    let mut sent = tokio::time::timeout(response_timeout, sender.try_send_request(request)).await;
    if reused
        && let Ok(Err(e)) = &mut sent
        && let Some(request) = e.take_message()
    {
        match connect(&node, &target).await {
            Ok(s) => {
                sender = s;
                sent =
                    tokio::time::timeout(response_timeout, sender.try_send_request(request)).await;
            }
            Err(e) => {
                return not_answering(&e, finish);
            }
        }
    }
    let mut response = match sent {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            if tripped.is_some_and(|t| t.load(Ordering::Relaxed)) {
                return refuse(
                    Refusal::TooLarge,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "Request body too large",
                    &format!("This node accepts request bodies of at most {limit} bytes."),
                    finish,
                );
            }
            let e = e.into_error();
            return refuse(
                Refusal::BadGateway,
                StatusCode::BAD_GATEWAY,
                "Gear answered badly",
                &format!(
                    "Gear <code>{label}</code> broke the connection or sent something that \
                     is not HTTP: {}.",
                    escape(&e.to_string())
                ),
                finish,
            );
        }
        Err(_) => {
            return refuse(
                Refusal::Timeout,
                StatusCode::GATEWAY_TIMEOUT,
                "Gear too slow",
                &format!(
                    "Gear <code>{label}</code> did not answer within {}.",
                    humantime::format_duration(response_timeout)
                ),
                finish,
            );
        }
    };
    let status = response.status();
    front.stats.response(status, start.elapsed());
    finish.status = status.as_u16();

    if status == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let gear_upgrade = hyper::upgrade::on(&mut response);
            front.stats.upgrades.fetch_add(1, Ordering::Relaxed);
            let gear = target.gear.clone();
            gear.front.active.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                if let (Ok(client), Ok(upstream)) = tokio::join!(client_upgrade, gear_upgrade) {
                    let mut client = TokioIo::new(client);
                    let mut upstream = TokioIo::new(upstream);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
                gear.front.active.fetch_sub(1, Ordering::Relaxed);
                gear.front.touch();
            });
        }
        let (parts, _) = response.into_parts();
        return Response::from_parts(parts, RespBody::empty(Some(finish)));
    }

    finish.sender = Some(sender);
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    Response::from_parts(
        parts,
        RespBody {
            inner: Some(body),
            page: None,
            finish: Some(finish),
        },
    )
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
        all.push((format!("{}-{}", r.name, r.namespace), &g.front.stats));
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
        let node = node.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let node = node.clone();
                async move {
                    let response = if req.uri().path() == "/metrics"
                        && matches!(*req.method(), Method::GET | Method::HEAD)
                    {
                        let mut r =
                            Response::new(RespBody::page(Bytes::from(render_metrics(&node)), None));
                        r.headers_mut().insert(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                        );
                        r
                    } else {
                        page(
                            StatusCode::NOT_FOUND,
                            "Not found",
                            "The node's metrics are at <code>/metrics</code>.",
                            None,
                        )
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
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
    fn hop_by_hop_headers_are_removed_and_upgrades_kept() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::ACCEPT));

        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert!(h.contains_key(header::CONNECTION) && h.contains_key(header::UPGRADE));
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
