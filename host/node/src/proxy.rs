//! The frontend's HTTP/1.1 engine: reads requests from a client connection,
//! writes them to a gear over a pooled connection inside its network
//! namespace, and writes the answers back, with as little work per request
//! as the protocol allows.
//!
//! Heads are parsed in place with `httparse` and rewritten straight from the
//! read buffer into the write buffer (no header map, no per-header
//! allocation); bodies are passed through as bytes, chunked ones verbatim
//! while a scanner follows their framing to find where each message ends.
//! One task serves one client connection: it owns the gear connection for
//! the length of a request, so nothing travels between tasks. What a
//! request may do (routing, waking, refusals, limits) is decided in
//! [`crate::frontend`]; this module is the wire.
//!
//! On a frontend worker the heads (with the first body bytes) go out through
//! the worker's [`SendBatch`]: the sends of every connection that was ready
//! at once reach the kernel in one call, so the processes they wake cannot
//! take the worker's CPU between one connection and the next.

use std::cell::RefCell;
use std::ops::Range;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gearhost_sandbox::sendbatch::SendBatch;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Most headers in one head.
pub(crate) const MAX_HEADERS: usize = 128;
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

/// A request head parsed in place: every field is a range of the
/// connection's read buffer.
#[derive(Debug, Default)]
pub(crate) struct RequestHead {
    pub method: Range<usize>,
    pub target: Range<usize>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub headers: Vec<(Range<usize>, Range<usize>)>,
    /// Length of the head, including its final empty line.
    pub len: usize,
}

/// A response head parsed in place, like [`RequestHead`].
#[derive(Debug, Default)]
pub(crate) struct ResponseHead {
    pub status: u16,
    pub reason: Range<usize>,
    pub minor: u8,
    pub headers: Vec<(Range<usize>, Range<usize>)>,
    pub len: usize,
}

fn offset(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
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
    mut parse: impl FnMut(&[u8]) -> Result<bool, httparse::Error>,
) -> Result<(), HeadError> {
    loop {
        if !buf.data.is_empty() {
            match parse(&buf.data) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
                Err(e) => return Err(HeadError::Malformed(e.to_string())),
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

/// The headers of a parsed head as ranges of `data`.
fn header_ranges(
    data: &[u8],
    headers: &[httparse::Header<'_>],
    into: &mut Vec<(Range<usize>, Range<usize>)>,
) {
    into.clear();
    for h in headers {
        into.push((offset(data, h.name.as_bytes()), offset(data, h.value)));
    }
}

/// Reads until `buf` holds a complete request head; parses it into `head`.
pub(crate) async fn read_request_head(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut ReadBuf,
    head: &mut RequestHead,
    max: usize,
) -> Result<(), HeadError> {
    read_head(stream, buf, max, |data| {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let httparse::Status::Complete(len) = req.parse(data)? else {
            return Ok(false);
        };
        head.method = offset(data, req.method.unwrap_or_default().as_bytes());
        head.target = offset(data, req.path.unwrap_or_default().as_bytes());
        head.minor = req.version.unwrap_or(1);
        header_ranges(data, req.headers, &mut head.headers);
        head.len = len;
        Ok(true)
    })
    .await
}

/// Reads until `buf` holds a complete response head; parses it into `head`.
pub(crate) async fn read_response_head(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut ReadBuf,
    head: &mut ResponseHead,
    max: usize,
) -> Result<(), HeadError> {
    read_head(stream, buf, max, |data| {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(len) = resp.parse(data)? else {
            return Ok(false);
        };
        head.status = resp.code.unwrap_or(0);
        head.reason = match resp.reason {
            Some(r) if !r.is_empty() => offset(data, r.as_bytes()),
            _ => 0..0,
        };
        head.minor = resp.version.unwrap_or(1);
        header_ranges(data, resp.headers, &mut head.headers);
        head.len = len;
        Ok(true)
    })
    .await
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

/// Whether `list` (a comma-separated header value) names `token`.
pub(crate) fn has_token(list: &[u8], token: &str) -> bool {
    list.split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (responses only).
    Close,
}

/// Follows the framing of a chunked body passed through verbatim: says how
/// many bytes of what is fed belong to the body, and counts its data bytes.
#[derive(Debug, Default)]
pub(crate) struct ChunkScanner {
    state: ChunkState,
    /// Data bytes seen (the payload, without the framing).
    pub data: u64,
    /// Hex digits of the size line being read.
    size: u64,
    size_digits: u8,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    /// After the size: extensions, up to the line's end.
    SizeRest,
    SizeLf,
    Data(u64),
    DataCr,
    DataLf,
    /// A trailer line (or the final empty line) begins.
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

/// A chunked body that breaks its framing.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BadChunk(pub &'static str);

impl ChunkScanner {
    /// Whether the body is complete.
    pub(crate) fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Feeds `bytes`; returns how many of them belong to the body (all of
    /// them unless it ended inside), calling `data` with each run of payload
    /// bytes.
    pub(crate) fn feed(
        &mut self,
        bytes: &[u8],
        mut data: impl FnMut(&[u8]),
    ) -> Result<usize, BadChunk> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            match self.state {
                ChunkState::Size => match (b as char).to_digit(16) {
                    Some(d) => {
                        if self.size_digits >= 15 {
                            return Err(BadChunk("chunk size too large"));
                        }
                        self.size = self.size * 16 + u64::from(d);
                        self.size_digits += 1;
                    }
                    None if self.size_digits == 0 => return Err(BadChunk("no chunk size")),
                    None if b == b'\r' => self.state = ChunkState::SizeLf,
                    None if b == b';' || b == b' ' || b == b'\t' => {
                        self.state = ChunkState::SizeRest
                    }
                    None => return Err(BadChunk("bad chunk size")),
                },
                ChunkState::SizeRest => {
                    if b == b'\r' {
                        self.state = ChunkState::SizeLf;
                    } else if b == b'\n' {
                        return Err(BadChunk("bare line feed in a chunk size line"));
                    }
                }
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(BadChunk("chunk size line without line feed"));
                    }
                    self.state = if self.size == 0 {
                        ChunkState::TrailerStart
                    } else {
                        ChunkState::Data(self.size)
                    };
                    self.size = 0;
                    self.size_digits = 0;
                }
                ChunkState::Data(left) => {
                    let n = (bytes.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    data(&bytes[i..i + n]);
                    self.data += n as u64;
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        ChunkState::DataCr
                    } else {
                        ChunkState::Data(left)
                    };
                    i += n;
                    continue;
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err(BadChunk("chunk data longer than its size"));
                    }
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(BadChunk("chunk data without line end"));
                    }
                    self.state = ChunkState::Size;
                }
                ChunkState::TrailerStart => {
                    self.state = if b == b'\r' {
                        ChunkState::EndLf
                    } else {
                        ChunkState::TrailerLine
                    };
                }
                ChunkState::TrailerLine => {
                    if b == b'\r' {
                        self.state = ChunkState::TrailerLf;
                    }
                }
                ChunkState::TrailerLf => {
                    if b != b'\n' {
                        return Err(BadChunk("trailer line without line feed"));
                    }
                    self.state = ChunkState::TrailerStart;
                }
                ChunkState::EndLf => {
                    if b != b'\n' {
                        return Err(BadChunk("chunked body without final line feed"));
                    }
                    self.state = ChunkState::Done;
                    return Ok(i + 1);
                }
                ChunkState::Done => return Ok(i),
            }
            i += 1;
        }
        Ok(i)
    }
}

/// An open connection to a gear, with what was read from it and not used.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub stream: TcpStream,
    pub sendfd: SendFd,
    pub buf: ReadBuf,
    pub since: Instant,
}

impl Upstream {
    pub(crate) fn new(stream: TcpStream) -> Upstream {
        Upstream {
            stream,
            sendfd: SendFd::default(),
            buf: ReadBuf::default(),
            since: Instant::now(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(parts: &[&[u8]]) -> (Result<usize, BadChunk>, Vec<u8>, bool) {
        let mut s = ChunkScanner::default();
        let mut payload = Vec::new();
        let mut total = 0;
        for p in parts {
            match s.feed(p, |d| payload.extend_from_slice(d)) {
                Ok(n) => {
                    total += n;
                    if s.done() {
                        break;
                    }
                }
                Err(e) => return (Err(e), payload, false),
            }
        }
        (Ok(total), payload, s.done())
    }

    #[test]
    fn chunked_bodies_are_followed_across_reads() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
        let (used, payload, done) = scan(&[body]);
        assert_eq!(used, Ok(body.len() - "GET / HTTP/1.1\r\n".len()));
        assert_eq!(payload, b"hello world");
        assert!(done);
        // the same, one byte at a time
        let bytes: Vec<&[u8]> = body[..body.len() - 16].chunks(1).collect();
        let (_, payload, done) = scan(&bytes);
        assert_eq!(payload, b"hello world");
        assert!(done);
        // trailers
        let (_, payload, done) = scan(&[b"3\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n"]);
        assert_eq!(payload, b"abc");
        assert!(done);
    }

    #[test]
    fn broken_chunked_bodies_are_refused() {
        assert!(scan(&[b"zz\r\n"]).0.is_err());
        assert!(scan(&[b"3\r\nabcd\r\n"]).0.is_err());
        assert!(scan(&[b"fffffffffffffffff\r\n"]).0.is_err());
        assert!(scan(&[b"3\nabc"]).0.is_err());
        let (used, _, done) = scan(&[b"3\r\nab"]);
        assert_eq!(used, Ok(5));
        assert!(!done);
    }

    #[test]
    fn tokens_are_found_in_lists() {
        assert!(has_token(b"keep-alive, Upgrade", "upgrade"));
        assert!(!has_token(b"keep-alive", "close"));
        assert!(has_token(b"close", "close"));
    }
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

/// Writes all of `data` to `stream`, through this thread's send batch when it
/// has one. `data` is handed to the batch and comes back with the result.
pub(crate) async fn send_all(
    stream: &mut TcpStream,
    fd: &mut SendFd,
    data: &mut Vec<u8>,
) -> std::io::Result<()> {
    let Some(batch) = BATCH.with(|b| b.borrow().clone()) else {
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
