//! The frontend's HTTP/1.1 engine: reads requests from a client connection,
//! writes them to a gear over a pooled connection inside its network
//! namespace, and writes the answers back, with as little work per request
//! as the protocol allows.
//!
//! Heads are parsed in place (the wire format is `gearhost_http`'s) and
//! rewritten straight from the read buffer into the write buffer (no header
//! map, no per-header allocation); bodies are passed through as bytes,
//! chunked ones verbatim while a scanner follows their framing to find where
//! each message ends.
//! One task serves one client connection: it owns the gear connection for
//! the length of a request, so nothing travels between tasks. What a
//! request may do (routing, waking, refusals, limits) is decided by the
//! request pipeline (`super::pipeline`) and the header policy
//! (`super::headers`); this module is the wire.
//!
//! On a frontend worker the heads (with the first body bytes) go out through
//! the worker's [`SendBatch`]: the sends of every connection that was ready
//! at once reach the kernel in one call, so the processes they wake cannot
//! take the worker's CPU between one connection and the next.

use std::cell::RefCell;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gearhost_http::head::{MAX_REQUEST_HEADERS, ParseError, parse_request, parse_response};
pub(crate) use gearhost_http::head::{RequestHead, ResponseHead};
pub(crate) use gearhost_http::{ChunkScanner, Framing};
use gearhost_sys::sendbatch::SendBatch;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bytes read from a socket at a time.
const CHUNK: usize = 16 * 1024;

/// Why a head could not be read.
#[derive(Debug)]
pub(crate) enum HeadError {
    /// The peer closed the connection before a head began (a normal end).
    Closed,
    /// The peer closed or failed in the middle of a head.
    Io(std::io::Error),
    /// Not HTTP/1.x, or malformed.
    Malformed(String),
    /// Larger than the limit.
    TooLarge,
    /// No complete head within the time allowed.
    Timeout,
}

/// A connection's read side: the socket's bytes not yet consumed.
#[derive(Debug, Default)]
pub(crate) struct ReadBuf {
    pub data: Vec<u8>,
}

/// Most spare buffers a thread keeps.
const SPARE_MAX: usize = 256;

thread_local! {
    /// Buffers of connections that are waiting, for the next one that reads.
    static SPARE: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An empty buffer with room for at least one read, from this thread's spares.
pub(crate) fn take_buffer() -> Vec<u8> {
    SPARE
        .with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| Vec::with_capacity(CHUNK))
}

/// Gives an unused buffer back to this thread's spares (a large one is freed).
pub(crate) fn give_buffer(mut buf: Vec<u8>) {
    if buf.capacity() == 0 || buf.capacity() > 4 * CHUNK {
        return;
    }
    buf.clear();
    SPARE.with_borrow_mut(|spare| {
        if spare.len() < SPARE_MAX {
            spare.push(buf);
        }
    });
}

impl ReadBuf {
    /// Reads more bytes from `stream` into spare capacity; `Ok(0)` at end
    /// of stream.
    pub(crate) async fn fill(
        &mut self,
        stream: &mut (impl AsyncRead + Unpin),
    ) -> std::io::Result<usize> {
        if self.data.capacity() == 0 {
            self.data = take_buffer();
        }
        if self.data.capacity() - self.data.len() < CHUNK {
            self.data.reserve(CHUNK);
        }
        stream.read_buf(&mut self.data).await
    }

    /// Lets go of the buffer while nothing is in it, so a connection that
    /// waits holds no buffer.
    pub(crate) fn release(&mut self) {
        if self.data.is_empty() {
            give_buffer(std::mem::take(&mut self.data));
        }
    }

    /// Forgets the first `n` bytes.
    pub(crate) fn consume(&mut self, n: usize) {
        if n >= self.data.len() {
            self.data.clear();
        } else {
            self.data.drain(..n);
        }
    }
}

/// Reads into `buf` until `parse` finds a complete head in it (`Ok(true)`),
/// it is malformed, or it grows past `max`.
async fn read_head(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut ReadBuf,
    max: usize,
    mut parse: impl FnMut(&[u8]) -> Result<bool, ParseError>,
) -> Result<(), HeadError> {
    loop {
        if !buf.data.is_empty() {
            match parse(&buf.data) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(head_error(e)),
            }
            if buf.data.len() >= max {
                return Err(HeadError::TooLarge);
            }
        }
        match buf.fill(stream).await {
            Ok(0) if buf.data.is_empty() => return Err(HeadError::Closed),
            Ok(0) => {
                return Err(HeadError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the connection closed in the middle of a head",
                )));
            }
            Ok(_) => {}
            // a peer that resets an idle connection simply left
            Err(e) if buf.data.is_empty() && is_reset(&e) => return Err(HeadError::Closed),
            Err(e) => return Err(HeadError::Io(e)),
        }
    }
}

/// Why a head that does not parse is refused.
fn head_error(e: ParseError) -> HeadError {
    match e {
        ParseError::TooManyHeaders => HeadError::TooLarge,
        e => HeadError::Malformed(e.to_string()),
    }
}

/// Holds a whole request head that is already in `data` and parsed (an
/// HTTP/2 stream's, written by the frontend) to the limits of one read
/// from a connection: no longer than `max`, no more fields than a client's
/// head may have.
pub(crate) fn handed_request_head(
    data: &[u8],
    head: &RequestHead,
    max: usize,
) -> Result<(), HeadError> {
    if data.len() >= max || head.headers.len() > MAX_REQUEST_HEADERS {
        return Err(HeadError::TooLarge);
    }
    Ok(())
}

/// Reads until `buf` holds a complete request head; parses it into `head`.
pub(crate) async fn read_request_head(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut ReadBuf,
    head: &mut RequestHead,
    max: usize,
) -> Result<(), HeadError> {
    read_head(stream, buf, max, |data| parse_request(data, head)).await
}

/// Reads until `buf` holds a complete response head; parses it into `head`.
pub(crate) async fn read_response_head(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut ReadBuf,
    head: &mut ResponseHead,
    max: usize,
) -> Result<(), HeadError> {
    read_head(stream, buf, max, |data| parse_response(data, head)).await
}

fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe
    )
}

/// Reads a head with a deadline.
pub(crate) async fn with_deadline<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, HeadError>>,
) -> Result<T, HeadError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(HeadError::Timeout),
    }
}

/// An open connection to a gear, with what was read from it and not used.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub stream: TcpStream,
    pub sendfd: SendFd,
    pub buf: ReadBuf,
    pub since: Instant,
    /// The gear slot the connection leads to, counted while it is open.
    pub lease: Option<super::gear::SlotLease>,
}

impl Upstream {
    pub(crate) fn new(stream: TcpStream, lease: Option<super::gear::SlotLease>) -> Upstream {
        Upstream {
            stream,
            sendfd: SendFd::default(),
            buf: ReadBuf::default(),
            since: Instant::now(),
            lease,
        }
    }

    /// Whether a pooled connection can carry another request: the gear has
    /// not closed it and sent nothing unasked.
    pub(crate) fn usable(&self) -> bool {
        if !self.buf.data.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(
            self.stream.try_read(&mut probe),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        )
    }
}

/// Where a body passed through stands.
#[derive(Debug)]
pub(crate) enum BodyState {
    /// Nothing (more) to pass.
    Done,
    /// This many bytes left.
    Length(u64),
    /// A chunked body, followed by its scanner.
    Chunked(ChunkScanner),
    /// Everything until the sender closes.
    Close,
}

impl BodyState {
    pub(crate) fn new(framing: Framing) -> BodyState {
        match framing {
            Framing::Empty | Framing::Length(0) => BodyState::Done,
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked => BodyState::Chunked(ChunkScanner::default()),
            Framing::Close => BodyState::Close,
        }
    }

    pub(crate) fn done(&self) -> bool {
        matches!(self, BodyState::Done)
    }

    /// Moves the body's bytes that are in `buf` to `out` (only the payload
    /// of a chunked body when `decode`); returns the payload bytes moved.
    pub(crate) fn take(
        &mut self,
        buf: &mut ReadBuf,
        out: &mut Vec<u8>,
        decode: bool,
    ) -> Result<u64, CopyError> {
        match self {
            BodyState::Done => Ok(0),
            BodyState::Length(left) => {
                let n = (buf.data.len() as u64).min(*left) as usize;
                out.extend_from_slice(&buf.data[..n]);
                buf.consume(n);
                *left -= n as u64;
                if *left == 0 {
                    *self = BodyState::Done;
                }
                Ok(n as u64)
            }
            BodyState::Chunked(scanner) => {
                let before = scanner.data;
                let used = if decode {
                    scanner.feed(&buf.data, |d| out.extend_from_slice(d))
                } else {
                    scanner.feed(&buf.data, |_| {})
                }
                .map_err(|e| CopyError::Framing(e.0))?;
                if !decode {
                    out.extend_from_slice(&buf.data[..used]);
                }
                buf.consume(used);
                let moved = scanner.data - before;
                if scanner.done() {
                    *self = BodyState::Done;
                }
                Ok(moved)
            }
            BodyState::Close => {
                let n = buf.data.len();
                out.extend_from_slice(&buf.data);
                buf.data.clear();
                Ok(n as u64)
            }
        }
    }
}

/// Passes the rest of a body from `from` (its next bytes may already be in
/// `buf`) to `to`, counting its payload in `sent` and refusing more than
/// `limit`. What follows the body stays in `buf`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn pump(
    from: &mut (impl AsyncRead + Unpin),
    buf: &mut ReadBuf,
    to: &mut (impl AsyncWrite + Unpin),
    state: &mut BodyState,
    decode: bool,
    limit: u64,
    sent: &mut u64,
    out: &mut Vec<u8>,
) -> Result<(), CopyError> {
    loop {
        if state.done() {
            return Ok(());
        }
        if buf.data.is_empty() {
            let n = buf.fill(from).await.map_err(|_| CopyError::Read)?;
            if n == 0 {
                if matches!(state, BodyState::Close) {
                    *state = BodyState::Done;
                    return Ok(());
                }
                return Err(CopyError::Read);
            }
        }
        out.clear();
        *sent += state.take(buf, out, decode)?;
        if *sent > limit {
            return Err(CopyError::TooLarge);
        }
        if !out.is_empty() {
            to.write_all(out).await.map_err(|_| CopyError::Write)?;
        }
    }
}

/// Why copying a body stopped.
#[derive(Debug)]
pub(crate) enum CopyError {
    /// The sending side failed or ended early.
    Read,
    /// The receiving side failed.
    Write,
    /// The body is larger than allowed.
    TooLarge,
    /// A chunked body broke its framing.
    Framing(&'static str),
}

// -- batched sends ------------------------------------------------------

thread_local! {
    /// This thread's send batch: set on frontend workers where io_uring works.
    static BATCH: RefCell<Option<Arc<SendBatch>>> = const { RefCell::new(None) };
}

/// Gives the calling frontend worker a send batch and spawns its flusher on
/// the worker's runtime; the batch is returned for the metrics. An error (no
/// io_uring here) leaves the worker sending the usual way.
pub(crate) fn start_batching() -> std::io::Result<Arc<SendBatch>> {
    let batch = SendBatch::new()?;
    tokio::spawn(batch.clone().flusher());
    BATCH.with(|b| *b.borrow_mut() = Some(batch.clone()));
    Ok(batch)
}

/// The descriptor a connection's batched sends use: a duplicate of the
/// socket's, made at the first such send, so a send still queued never names
/// a descriptor number that was closed (and perhaps reused).
#[derive(Debug, Default)]
pub(crate) struct SendFd(Option<Arc<OwnedFd>>);

/// [`send_all`] to a client: TLS encrypts in the node, so its sends cannot go
/// through the batch and are written directly.
pub(crate) async fn send_to_client(
    stream: &mut super::tls::ClientStream,
    fd: &mut SendFd,
    data: &mut Vec<u8>,
) -> std::io::Result<()> {
    if let Some(tcp) = stream.tcp() {
        return send_all(tcp, fd, data).await;
    }
    stream.write_all(data).await
}

thread_local! {
    /// The requests this thread is serving: admitted and not yet finished.
    static IN_FLIGHT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// One request being served on this thread, counted until it is dropped: a
/// worker with one request has no other send to batch its sends with (see
/// [`send_all`]).
#[derive(Debug)]
pub(crate) struct InFlight(());

impl InFlight {
    pub(crate) fn begin() -> InFlight {
        IN_FLIGHT.with(|n| n.set(n.get().saturating_add(1)));
        InFlight(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // saturating: a task of another runtime may end on another thread than it began
        IN_FLIGHT.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

/// Writes all of `data` to `stream`, through this thread's send batch when it
/// has one and more than one request is in flight here. `data` is handed to the
/// batch and comes back with the result. With one request in flight the send
/// is made at once: the flusher would pass it alone anyway, after a round
/// through the runtime (waking the flusher, and the sender again after it),
/// which at one connection was about 0.6 µs of the worker's 8 µs per request
/// between its system calls.
pub(crate) async fn send_all(
    stream: &mut TcpStream,
    fd: &mut SendFd,
    data: &mut Vec<u8>,
) -> std::io::Result<()> {
    let batch = if IN_FLIGHT.with(std::cell::Cell::get) > 1 {
        BATCH.with(|b| b.borrow().clone())
    } else {
        None
    };
    let Some(batch) = batch else {
        return stream.write_all(data).await;
    };
    let fd = match &mut fd.0 {
        Some(fd) => fd,
        empty => empty.insert(Arc::new(stream.as_fd().try_clone_to_owned()?)),
    };
    let ticket = match batch.queue(fd, std::mem::take(data)) {
        Ok(ticket) => ticket,
        Err(back) => {
            // its ring failed (the metrics show one batching worker fewer)
            BATCH.with(|b| b.borrow_mut().take());
            tracing::warn!(
                "a frontend worker's send batch failed; the worker sends one call per connection from now on"
            );
            *data = back;
            return stream.write_all(data).await;
        }
    };
    let (result, back) = ticket.await;
    *data = back;
    let sent = match result {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    // what did not fit waits for room the usual way
    if sent < data.len() {
        stream.write_all(&data[sent..]).await?;
    }
    Ok(())
}
