//! HTTP/2 at the frontend: a TLS client that negotiates `h2` by ALPN is
//! served here, and each of its streams goes through the same request
//! pipeline as an HTTP/1.1 request: the stream's request is written as an
//! HTTP/1.1 head straight from its decoded header list
//! (`gearhost_http::h2::request`), which the pipeline takes as if read from
//! a client connection of its own
//! ([`ClientStream::Http2`](super::tls::ClientStream::Http2)); it reads the
//! body from the stream and writes the answer to it (`stream`: no second
//! task, no in-memory pipe). Every phase (frame, route, wake, forward,
//! relay), every limit and timeout, the access log, the counters and the
//! drain are therefore the pipeline's; only the framing is HTTP/2's.
//!
//! The protocol is the frontend's own (`conn`: frames, streams, windows and
//! settings over `gearhost_http`'s framing and HPACK), not a general
//! HTTP/2 library's: one connection's streams run in its task, a request's
//! fields go from the HPACK decoder into the head the pipeline reads with
//! no map or URI built between, and an answer's fields from the gear's head
//! into the HPACK encoder; the answers that are ready leave together at the
//! connection's next write.
//!
//! A hostile client is bounded: at most [`MAX_STREAMS`] streams at once,
//! header lists of [`MAX_HEADER_LIST`] bytes, flow-control windows of
//! [`STREAM_WINDOW`] and [`CONNECTION_WINDOW`], frames owed to it of
//! `conn::OUT_LIMIT`, and a stream the client resets drops its work at
//! once. A connection whose client resets more than [`RESET_BUDGET`]
//! streams, and most of those it opens, is closed with `ENHANCE_YOUR_CALM`
//! (the "rapid reset" flood of CVE-2023-44487).
//!
//! Websockets stay on HTTP/1.1: extended CONNECT (RFC 8441) is not offered,
//! so a client that wants one opens an HTTP/1.1 connection.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::stream::{FuturesUnordered, StreamExt};
use gearhost_http::h2::{ErrorCode, FRAME_HEAD as FRAME_HEAD_LEN};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::backend::Backend;
use super::headers::MAX_HEAD;

mod conn;
mod stream;
use conn::{Conn, Opened};
use stream::Shared;
pub(crate) use stream::{H2Answer, H2Body, H2Stream};

/// Streams a client may have open at once on one connection.
pub(super) const MAX_STREAMS: u32 = 100;
/// Largest header list a client may send (the pipeline's head limit, with
/// room for HTTP/2's per-field overhead, so the pipeline answers 431).
pub(super) const MAX_HEADER_LIST: u32 = 2 * MAX_HEAD as u32;
/// A stream's receive window: request body bytes the client may send
/// before the gear has taken them.
pub(super) const STREAM_WINDOW: u32 = 256 * 1024;
/// The connection's receive window.
pub(super) const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Streams a client may reset before it counts as a flood (when it resets
/// most of what it opens).
pub(super) const RESET_BUDGET: usize = 200;
/// How often an idle connection looks whether the frontend drains.
const DRAIN_POLL: Duration = Duration::from_millis(100);
/// How long a connection that ends may take to pass on its last frames.
const CLOSE_TIME: Duration = Duration::from_secs(5);
/// Room kept free in the read buffer for one read.
const READ_ROOM: usize = 16 * 1024;

/// Whether a client resets streams as a flood does.
fn flooding(opened: usize, resets: usize) -> bool {
    resets > RESET_BUDGET && resets * 2 > opened
}

/// Serves one HTTP/2 connection (after TLS and ALPN) to its end, counted as
/// one client connection; its streams are served concurrently in its task.
pub(super) async fn serve<B, T>(backend: Arc<B>, io: T, peer: SocketAddr)
where
    B: Backend,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let front = backend.frontend();
    front.connections.fetch_add(1, Ordering::Relaxed);
    front.connections_total.fetch_add(1, Ordering::Relaxed);
    connection(&backend, io, peer).await;
    backend
        .frontend()
        .connections
        .fetch_sub(1, Ordering::Relaxed);
}

/// How a connection's task stands.
struct Driver<T> {
    io: T,
    conn: Shared,
    /// Bytes read and not yet taken as frames.
    rbuf: BytesMut,
    /// Bytes on their way to the client (taken from `Conn::out`), and how
    /// many of them went.
    wbuf: Vec<u8>,
    written: usize,
    flush: bool,
    /// The client closed its side, or the connection failed.
    read_closed: bool,
    /// The connection ends once `wbuf` and `out` are written (GOAWAY sent
    /// for an error, or the client gone).
    ending: bool,
}

/// Serves the connection until it ends.
async fn connection<B, T>(backend: &Arc<B>, io: T, peer: SocketAddr)
where
    B: Backend,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let header_timeout = backend.limits().header_timeout;
    // counted by a drain until the preface is in
    let mut fresh = Some(super::drain::fresh());
    let conn: Shared = Arc::new(Mutex::new(Conn::new()));
    let mut d = Driver {
        io,
        conn: conn.clone(),
        rbuf: BytesMut::with_capacity(READ_ROOM),
        wbuf: Vec::new(),
        written: 0,
        flush: false,
        read_closed: false,
        ending: false,
    };
    let client: Arc<str> = peer.ip().to_string().into();
    let mut streams = FuturesUnordered::new();
    let mut opened: Vec<Opened> = Vec::new();
    // a client says its preface in time; an idle connection (no stream
    // open) lasts as long as a kept-alive HTTP/1.1 one waits for its next
    // request; a connection that ends passes its last frames in time
    let mut deadline = pin!(tokio::time::sleep(header_timeout));
    let mut drain_poll = tokio::time::interval(DRAIN_POLL);
    drain_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut idle = true;
    let mut closing = false;
    std::future::poll_fn(|cx| {
        loop {
            let mut progress = false;
            // the streams first: the answers they have ready go out together
            while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {
                progress = true;
            }
            if !d.read_closed {
                match d.read(cx, &mut opened) {
                    Poll::Ready(true) => progress = true,
                    Poll::Ready(false) => {
                        tracing::debug!(%peer, "HTTP/2 connection closed");
                        d.read_closed = true;
                        progress = true;
                    }
                    Poll::Pending => {}
                }
                if fresh.is_some() && gearhost_sys::lock::lock(&conn).started() {
                    fresh = None;
                }
            }
            for o in opened.drain(..) {
                streams.push(stream(backend.clone(), conn.clone(), o, client.clone()));
            }
            {
                let mut c = gearhost_sys::lock::lock(&conn);
                if flooding(c.opened, c.resets) && !d.ending {
                    tracing::info!(%peer, "HTTP/2 client resets streams as a flood does: closing its connection");
                    c.fail(ErrorCode::ENHANCE_YOUR_CALM);
                    d.ending = true;
                }
                if c.going_away && (c.open() == 0 || d.ending) && !closing {
                    closing = true;
                    deadline.as_mut().reset(Instant::now() + CLOSE_TIME);
                }
                if c.peer_gone && c.open() == 0 {
                    d.ending = true;
                }
            }
            match d.write(cx) {
                Poll::Ready(Ok(true)) => progress = true,
                Poll::Ready(Ok(false)) => {}
                Poll::Ready(Err(())) => return Poll::Ready(()),
                Poll::Pending => {}
            }
            let (open, out_empty) = {
                let c = gearhost_sys::lock::lock(&conn);
                (c.open(), c.out.is_empty())
            };
            let all_out = d.wbuf.is_empty() && !d.flush && out_empty;
            if all_out && (d.ending || d.read_closed || (closing && open == 0)) {
                return Poll::Ready(());
            }
            if progress {
                continue;
            }
            // nothing more to do until something wakes the task: the timers
            if open > 0 && idle {
                idle = false;
            } else if open == 0 && !idle && !closing {
                idle = true;
                deadline.as_mut().reset(Instant::now() + header_timeout);
            }
            if (idle || closing) && deadline.as_mut().poll(cx).is_ready() {
                if closing || fresh.is_some() {
                    // the preface never came, or the last frames never left
                    return Poll::Ready(());
                }
                gearhost_sys::lock::lock(&conn).fail(ErrorCode::NO_ERROR);
                continue;
            }
            if !closing && drain_poll.poll_tick(cx).is_ready() && super::drain::draining() {
                // a draining node takes no further stream: GOAWAY, then the
                // streams open now are served
                gearhost_sys::lock::lock(&conn).fail(ErrorCode::NO_ERROR);
                continue;
            }
            return Poll::Pending;
        }
    })
    .await;
    // the connection is gone: what its streams still do ends with it
    drop(streams);
    let _ = tokio::time::timeout(Duration::from_secs(1), d.io.shutdown()).await;
}

impl<T: AsyncRead + AsyncWrite + Unpin> Driver<T> {
    /// Reads what the client sent and takes its frames: `Ready(true)` when
    /// something was read, `Ready(false)` when the client is gone (or broke
    /// the protocol: GOAWAY is on its way).
    fn read(&mut self, cx: &mut Context<'_>, opened: &mut Vec<Opened>) -> Poll<bool> {
        if self.ending || !gearhost_sys::lock::lock(&self.conn).reading() {
            return Poll::Pending;
        }
        // frames left in the buffer while the client was owed too much
        if self.rbuf.len() >= FRAME_HEAD_LEN && self.take_frames(opened) {
            return Poll::Ready(true);
        }
        if self.rbuf.capacity() - self.rbuf.len() < READ_ROOM / 4 {
            self.rbuf.reserve(READ_ROOM);
        }
        let read = pin!(self.io.read_buf(&mut self.rbuf)).poll(cx);
        match read {
            Poll::Ready(Ok(n)) if n > 0 => {
                self.take_frames(opened);
                Poll::Ready(true)
            }
            Poll::Ready(_) => Poll::Ready(false),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Lets the connection take the whole frames in the read buffer;
    /// returns whether it took any (or ended the connection for them).
    fn take_frames(&mut self, opened: &mut Vec<Opened>) -> bool {
        let before = self.rbuf.len();
        let mut conn = gearhost_sys::lock::lock(&self.conn);
        if let Err(code) = conn.receive(&mut self.rbuf, opened) {
            tracing::debug!(code = code.0, "HTTP/2 client broke the protocol");
            conn.fail(code);
            self.ending = true;
            return true;
        }
        self.rbuf.len() < before
    }

    /// Writes the frames the connection owes the client: `Ready(Ok(true))`
    /// when some went, `Ready(Ok(false))` when there was nothing to write,
    /// `Ready(Err(()))` when the client is gone.
    fn write(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, ()>> {
        let mut wrote = false;
        loop {
            if self.wbuf.is_empty() {
                let mut conn = gearhost_sys::lock::lock(&self.conn);
                if conn.out.is_empty() {
                    break;
                }
                std::mem::swap(&mut conn.out, &mut self.wbuf);
                // the streams waiting for room in `out` have it
                conn.drained();
            }
            while self.written < self.wbuf.len() {
                match Pin::new(&mut self.io).poll_write(cx, &self.wbuf[self.written..]) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Err(())),
                    Poll::Ready(Ok(n)) => {
                        self.written += n;
                        wrote = true;
                    }
                    Poll::Pending => {
                        return if wrote {
                            Poll::Ready(Ok(true))
                        } else {
                            Poll::Pending
                        };
                    }
                }
            }
            self.wbuf.clear();
            self.written = 0;
            self.flush = true;
        }
        if self.flush {
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.flush = false,
                Poll::Ready(Err(_)) => return Poll::Ready(Err(())),
                Poll::Pending => {}
            }
        }
        Poll::Ready(Ok(wrote))
    }
}

/// Serves one stream: its request head goes to the pipeline, which reads
/// the body from the stream and writes its answer to it. A reset (by the
/// client, or by the frontend for the client's error) drops the
/// pipeline's work for it at once.
async fn stream<B: Backend>(backend: Arc<B>, conn: Shared, opened: Opened, client: Arc<str>) {
    let id = opened.id;
    let stream = H2Stream::new(&conn, id, opened.request.chunked, opened.request.head);
    {
        // pinned where it is made: a `select!` would keep a second copy of
        // the pipeline's future, which is most of the stream's
        let mut served = pin!(super::pipeline::serve_stream(
            &*backend,
            stream,
            opened.head,
            opened.parsed,
            client
        ));
        std::future::poll_fn(|cx| {
            if served.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            gearhost_sys::lock::lock(&conn).poll_reset(id, cx)
        })
        .await;
    }
    gearhost_sys::lock::lock(&conn).close(id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resets_count_as_a_flood_only_past_the_budget_and_most_streams() {
        assert!(
            !flooding(10_000, RESET_BUDGET + 1),
            "a few cancels among many answers"
        );
        assert!(flooding(RESET_BUDGET + 10, RESET_BUDGET + 1));
        assert!(
            !flooding(RESET_BUDGET + 10, RESET_BUDGET),
            "within the budget"
        );
    }
}
