//! One HTTP/2 stream as a client of the request pipeline ([`H2Stream`]),
//! with no second task and no in-memory pipe between them: the pipeline
//! reads the stream's request body as the HTTP/1.1 body its head declares
//! ([`H2Body`], chunked when the client gave no length), and its answer goes
//! out as the stream's response ([`H2Answer`]): a gear's answer head is
//! HPACK-coded into HEADERS at once, with the fields the header policy
//! passes ([`H2Answer::respond`], `headers::answer_fields`, as for
//! HTTP/1.1); a head the frontend writes itself as HTTP/1.1 (its pages,
//! interim answers) is parsed once whole and sent the same way (1xx as
//! informational responses); the body that follows goes as DATA frames
//! within the client's flow-control windows.
//!
//! The pipeline writes answer bodies to an HTTP/2 client without chunk
//! framing (it decodes a chunked answer, as for an HTTP/1.0 client), so a
//! body here is either of a stated length, which ends the stream when it
//! is all out, or ends when the pipeline says so ([`H2Answer::end`]). A
//! stream the pipeline leaves without a whole answer is reset
//! (`Conn::close`), so the client cannot take a cut answer for a whole one.
//!
//! Both sides reach the stream's state in the connection's [`Conn`] under
//! its lock; the streams and the connection run in one task, so the lock is
//! never contended, and what a stream writes leaves at the connection's
//! next flush.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use gearhost_http::fields::Facts;
use gearhost_http::h2 as wire2;
use gearhost_http::hpack::Encoder;

use super::conn::{Answer, Conn};
use crate::frontend::headers::{self, AnswerShape, MAX_ANSWER_HEAD};
use crate::frontend::wire::{Framing, ResponseHead};

/// A connection's state, shared by its task and its streams.
pub(super) type Shared = Arc<Mutex<Conn>>;

fn lock(conn: &Shared) -> MutexGuard<'_, Conn> {
    gearhost_sys::lock::lock(conn)
}

fn broken(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, why)
}

/// An HTTP/2 stream, as the pipeline's client connection.
#[derive(Debug)]
pub(crate) struct H2Stream {
    pub(crate) body: H2Body,
    pub(crate) answer: H2Answer,
}

impl H2Stream {
    pub(super) fn new(conn: &Shared, id: u32, chunked: bool, head_request: bool) -> H2Stream {
        H2Stream {
            body: H2Body {
                conn: conn.clone(),
                id,
                chunked,
                framed: Vec::new(),
                at: 0,
                ended: false,
            },
            answer: H2Answer {
                conn: conn.clone(),
                id,
                head_request,
            },
        }
    }
}

/// Most body bytes taken into one chunk of a chunked request body.
const CHUNK: usize = 64 * 1024;

/// The request body of a stream, read as HTTP/1.1 body bytes.
#[derive(Debug)]
pub(crate) struct H2Body {
    conn: Shared,
    id: u32,
    chunked: bool,
    /// A chunked body's next bytes (the client's data in chunk framing) and
    /// how far they were read.
    framed: Vec<u8>,
    at: usize,
    /// The client's body has ended (and a chunked one's last chunk is in
    /// `framed`).
    ended: bool,
}

impl AsyncRead for H2Body {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.at < this.framed.len() {
                let n = (this.framed.len() - this.at).min(buf.remaining());
                buf.put_slice(&this.framed[this.at..this.at + n]);
                this.at += n;
                if this.at == this.framed.len() {
                    this.framed.clear();
                    this.at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.ended {
                return Poll::Ready(Ok(()));
            }
            let mut conn = lock(&this.conn);
            if !this.chunked {
                let n = ready!(conn.read(this.id, cx, buf.remaining(), |d| buf.put_slice(d)))?;
                this.ended = n == 0;
                return Poll::Ready(Ok(()));
            }
            let framed = &mut this.framed;
            let n = ready!(conn.read(this.id, cx, CHUNK, |d| {
                framed.extend_from_slice(format!("{:x}\r\n", d.len()).as_bytes());
                framed.extend_from_slice(d);
                framed.extend_from_slice(b"\r\n");
            }))?;
            if n == 0 {
                framed.extend_from_slice(b"0\r\n\r\n");
                this.ended = true;
            }
        }
    }
}

/// The answer side of a stream, which the pipeline writes (the stream's
/// future watches for the client's reset in the connection's state).
#[derive(Debug)]
pub(crate) struct H2Answer {
    conn: Shared,
    id: u32,
    head_request: bool,
}

impl H2Answer {
    /// Sends the gear's answer head (in `data`, parsed into `head`, its
    /// fields' facts `rf`) as the stream's response, shaped as `shape` says
    /// (unchunked: the pipeline decodes a chunked body for HTTP/2); the body
    /// is written after it.
    pub(in crate::frontend) fn respond(
        &self,
        data: &[u8],
        head: &ResponseHead,
        rf: &Facts,
        shape: AnswerShape,
    ) -> io::Result<()> {
        let left = body_left(shape.framing, shape.decode)?;
        let mut conn = lock(&self.conn);
        send_head(&mut conn, self.id, head.status, left, |encoder, out| {
            headers::answer_fields(data, head, rf, shape, |name, value| {
                encode_field(encoder, name, value, out);
            });
        })
    }

    /// The pipeline passed the whole answer body: a body of no stated
    /// length ends here.
    pub(crate) fn end(&self) {
        let mut conn = lock(&self.conn);
        if let Ok(slot) = conn.slot(self.id)
            && let Answer::Body { left: None } = slot.answer
        {
            conn.end(self.id);
        }
    }
}

/// Fields that never pass into an HTTP/2 answer (RFC 9113 §8.2.2).
fn connection_specific(name: &[u8]) -> bool {
    gearhost_http::fields::is_one_of(
        name,
        &[
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "upgrade",
        ],
    )
}

/// HPACK-codes one answer field, its name in lowercase as HTTP/2 writes
/// it (the gear's head was parsed strictly: names are tokens, values
/// hold no line break).
fn encode_field(encoder: &mut Encoder, name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    if connection_specific(name) {
        return;
    }
    if name.iter().any(u8::is_ascii_uppercase) {
        let mut lower = [0u8; 64];
        if let Some(lower) = lower.get_mut(..name.len()) {
            for (l, b) in lower.iter_mut().zip(name) {
                *l = b.to_ascii_lowercase();
            }
            encoder.field(lower, value, out);
        } else {
            encoder.field(&name.to_ascii_lowercase(), value, out);
        }
    } else {
        encoder.field(name, value, out);
    }
}

/// Sends stream `id`'s final answer head: `:status`, then the fields
/// `fields` encodes, ending the stream when the body is empty (`left` is
/// what is left of it: `Some(n)` bytes of a stated length, `None` when the
/// pipeline ends it).
fn send_head(
    conn: &mut Conn,
    id: u32,
    status: u16,
    left: Option<u64>,
    fields: impl FnOnce(&mut Encoder, &mut Vec<u8>),
) -> io::Result<()> {
    let max_frame = conn.peer_max_frame;
    let slot = conn.slot(id)?;
    if !matches!(slot.answer, Answer::Head { .. }) {
        return Err(broken("the answer's head went out already"));
    }
    let end = left == Some(0);
    slot.answer = if end {
        Answer::Over
    } else {
        Answer::Body { left }
    };
    let Conn { out, encoder, .. } = conn;
    let start = wire2::begin_headers(out);
    encoder.status(status, out);
    fields(encoder, out);
    wire2::end_headers(out, start, id, end, max_frame);
    Ok(())
}

/// What is left of a body of `framing` once its head is out: `Some(n)`
/// bytes of a stated length, `None` when the pipeline ends it (a chunked
/// body only when the pipeline `decoded` it: chunk framing never goes into
/// DATA frames).
fn body_left(framing: Framing, decoded: bool) -> io::Result<Option<u64>> {
    match framing {
        Framing::Empty => Ok(Some(0)),
        Framing::Length(n) => Ok(Some(n)),
        Framing::Chunked if decoded => Ok(None),
        Framing::Chunked => Err(broken("a chunked answer body for HTTP/2")),
        Framing::Close => Ok(None),
    }
}

/// Takes `data` as (more of) an answer head written as HTTP/1.1 (the
/// frontend's own pages, interim answers): once the head is whole it is
/// sent as the stream's response (or as an informational one, after which
/// another head follows). Returns how many bytes of `data` were taken: all
/// of them while the head is not whole, else those up to its end (what
/// follows is body).
fn take_head(conn: &mut Conn, id: u32, head_request: bool, data: &[u8]) -> io::Result<usize> {
    let slot = conn.slot(id)?;
    let Answer::Head { written } = &mut slot.answer else {
        return Ok(0);
    };
    let before = written.len();
    written.extend_from_slice(data);
    let mut head = ResponseHead::default();
    match gearhost_http::head::parse_response(written, &mut head) {
        Ok(true) => {}
        Ok(false) if written.len() < MAX_ANSWER_HEAD => return Ok(data.len()),
        _ => return Err(broken("the pipeline wrote no valid answer head")),
    }
    // the head ended in `data` (it was not whole before it)
    let taken = head.len - before;
    written.truncate(head.len);
    let written = std::mem::take(written);
    let rf = gearhost_http::fields::facts(&written, &head.headers);
    let framing = headers::answer_framing(head.status, head_request, &rf);
    let shape = AnswerShape {
        framing,
        decode: true,
        keep: true,
        head_request,
        client_minor: 1,
        hsts: None,
    };
    let fields = |encoder: &mut Encoder, out: &mut Vec<u8>| {
        headers::answer_fields(&written, &head, &rf, shape, |name, value| {
            encode_field(encoder, name, value, out);
        });
    };
    if (100..200).contains(&head.status) {
        // interim: the final head follows (a switch of protocols never
        // reaches an HTTP/2 client; the pipeline refuses it)
        if head.status == 101 {
            return Err(broken("the interim answer could not be sent"));
        }
        let max_frame = conn.peer_max_frame;
        let Conn { out, encoder, .. } = conn;
        let start = wire2::begin_headers(out);
        encoder.status(head.status, out);
        fields(encoder, out);
        wire2::end_headers(out, start, id, false, max_frame);
        return Ok(taken);
    }
    // what the pipeline writes itself is never chunked (see the module's description)
    send_head(conn, id, head.status, body_left(framing, false)?, fields)?;
    Ok(taken)
}

impl AsyncWrite for H2Answer {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut conn = lock(&self.conn);
        let slot = conn.slot(self.id)?;
        let left = match slot.answer {
            // the body (if any) comes with the next write
            Answer::Head { .. } => {
                return Poll::Ready(take_head(&mut conn, self.id, self.head_request, data));
            }
            Answer::Body { left } => left,
            Answer::Over => return Poll::Ready(Err(broken("the answer is over"))),
        };
        // a stated length: nothing beyond it
        let n = left.map_or(data.len(), |l| {
            data.len().min(usize::try_from(l).unwrap_or(usize::MAX))
        });
        if n == 0 {
            return Poll::Ready(Ok(data.len()));
        }
        let sent = ready!(conn.send(self.id, cx, &data[..n], left == Some(n as u64)))?;
        if let Ok(slot) = conn.slot(self.id)
            && let Answer::Body { left: Some(l) } = &mut slot.answer
        {
            *l -= sent as u64;
        }
        Poll::Ready(Ok(sent))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_left_of_a_body_follows_its_framing() {
        assert_eq!(
            body_left(Framing::Length(7), false).expect("a length"),
            Some(7)
        );
        assert_eq!(body_left(Framing::Empty, false).expect("empty"), Some(0));
        assert_eq!(body_left(Framing::Chunked, true).expect("decoded"), None);
        assert!(body_left(Framing::Chunked, false).is_err());
        assert!(connection_specific(b"Keep-Alive") && !connection_specific(b"content-type"));
    }
}
