//! One HTTP/2 stream as a client of the request pipeline ([`H2Stream`]),
//! with no second task and no in-memory pipe between them: the pipeline
//! reads the stream's request body as the HTTP/1.1 body its head declares
//! ([`H2Body`], chunked when the client gave no length), and what it writes
//! as the answer goes out as the stream's response ([`H2Answer`]): a head
//! written as HTTP/1.1 is parsed once whole and sent as HEADERS (interim
//! answers as informational ones), the body that follows as DATA frames
//! within the client's flow-control window.
//!
//! The pipeline writes answer bodies to an HTTP/2 client without chunk
//! framing (it decodes a chunked answer, as for an HTTP/1.0 client), so a
//! body here is either of a stated length, which ends the stream when it
//! is all out, or ends when the pipeline says so ([`H2Answer::end`]). A
//! stream the pipeline leaves without a whole answer is reset, so the
//! client cannot take a cut answer for a whole one.
//!
//! The answer side is shared with the stream's future ([`H2Answer::reset`]),
//! which drops the pipeline's work at once when the client resets the
//! stream; both run in the connection's task, so the lock is never
//! contended.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::response;
use crate::frontend::headers::{self, MAX_ANSWER_HEAD};
use crate::frontend::wire::{Framing, ResponseHead};

/// An HTTP/2 stream, as the pipeline's client connection.
#[derive(Debug)]
pub(crate) struct H2Stream {
    pub(crate) body: H2Body,
    pub(crate) answer: H2Answer,
}

impl H2Stream {
    pub(super) fn new(body: RecvStream, chunked: bool, answer: H2Answer) -> H2Stream {
        H2Stream {
            body: H2Body {
                recv: Some(body),
                chunked,
                pieces: std::collections::VecDeque::new(),
            },
            answer,
        }
    }
}

/// Bytes of the request body not yet read by the pipeline; `payload` when
/// they are the client's (their window opens again as they are read), not
/// the chunk framing around them.
#[derive(Debug)]
struct Piece {
    bytes: Bytes,
    payload: bool,
}

/// The request body of a stream, read as HTTP/1.1 body bytes.
#[derive(Debug)]
pub(crate) struct H2Body {
    /// `None` once the client's body has ended.
    recv: Option<RecvStream>,
    chunked: bool,
    pieces: std::collections::VecDeque<Piece>,
}

impl AsyncRead for H2Body {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if let Some(piece) = this.pieces.front_mut() {
                let n = piece.bytes.len().min(buf.remaining());
                buf.put_slice(&piece.bytes[..n]);
                piece.bytes.advance(n);
                if piece.payload
                    && let Some(recv) = &mut this.recv
                {
                    // the window opens again for what the pipeline took
                    let _ = recv.flow_control().release_capacity(n);
                }
                if piece.bytes.is_empty() {
                    this.pieces.pop_front();
                }
                return Poll::Ready(Ok(()));
            }
            let Some(recv) = &mut this.recv else {
                // the end of the body
                return Poll::Ready(Ok(()));
            };
            match ready!(recv.poll_data(cx)) {
                Some(Ok(data)) if data.is_empty() => {}
                Some(Ok(data)) => {
                    if this.chunked {
                        let size = format!("{:x}\r\n", data.len());
                        this.pieces.push_back(Piece {
                            bytes: Bytes::from(size),
                            payload: false,
                        });
                    }
                    this.pieces.push_back(Piece {
                        bytes: data,
                        payload: true,
                    });
                    if this.chunked {
                        this.pieces.push_back(Piece {
                            bytes: Bytes::from_static(b"\r\n"),
                            payload: false,
                        });
                    }
                }
                // the client reset its stream: its body is cut short
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
                None => {
                    this.recv = None;
                    if this.chunked {
                        this.pieces.push_back(Piece {
                            bytes: Bytes::from_static(b"0\r\n\r\n"),
                            payload: false,
                        });
                    }
                }
            }
        }
    }
}

/// Where a stream's answer stands.
#[derive(Debug)]
enum Answer {
    /// No final head sent yet: what is written collects here until a
    /// whole head is in.
    Head {
        respond: SendResponse<Bytes>,
        written: Vec<u8>,
        head_request: bool,
    },
    /// The head is out; body bytes go as DATA. `left` is what a stated
    /// length still expects, `None` when the pipeline ends the body.
    Body {
        send: SendStream<Bytes>,
        left: Option<u64>,
    },
    /// The stream ended (`END_STREAM` sent) or was reset.
    Over,
}

/// The answer side of a stream, shared between the pipeline (which writes
/// it) and the stream's future (which watches for the client's reset).
#[derive(Debug, Clone)]
pub(crate) struct H2Answer(Arc<Mutex<Answer>>);

fn broken(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, why)
}

impl H2Answer {
    pub(super) fn new(respond: SendResponse<Bytes>, head_request: bool) -> H2Answer {
        H2Answer(Arc::new(Mutex::new(Answer::Head {
            respond,
            written: Vec::new(),
            head_request,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Answer> {
        gearhost_sys::lock::lock(&self.0)
    }

    /// Waits for the client to reset the stream (or for the connection to
    /// go away).
    pub(super) async fn reset(&self) {
        std::future::poll_fn(|cx| {
            let mut answer = self.lock();
            let polled = match &mut *answer {
                Answer::Head { respond, .. } => respond.poll_reset(cx),
                Answer::Body { send, .. } => send.poll_reset(cx),
                // nothing left to cut short
                Answer::Over => return Poll::Pending,
            };
            polled.map(|_| ())
        })
        .await;
    }

    /// The pipeline passed the whole answer body: a body of no stated
    /// length ends here.
    pub(crate) fn end(&self) {
        let mut answer = self.lock();
        if let Answer::Body { send, left: None } = &mut *answer {
            let _ = send.send_data(Bytes::new(), true);
            *answer = Answer::Over;
        }
    }

    /// After the pipeline is done with the stream: an answer it left
    /// unfinished (or never began) is reset, never ended as if whole.
    pub(super) fn finish(&self) {
        let mut answer = self.lock();
        match &mut *answer {
            Answer::Head { respond, .. } => respond.send_reset(Reason::INTERNAL_ERROR),
            Answer::Body { send, .. } => send.send_reset(Reason::INTERNAL_ERROR),
            Answer::Over => return,
        }
        *answer = Answer::Over;
    }
}

/// Takes `data` as (more of) an answer head: once `written` and it hold a
/// whole head, that head is sent as the stream's response (or as an
/// informational one, after which another head follows). Returns how many
/// bytes of `data` were taken: all of them while the head is not whole,
/// else those up to its end (what follows is body).
fn take_head(answer: &mut Answer, data: &[u8]) -> io::Result<usize> {
    let Answer::Head {
        respond,
        written,
        head_request,
    } = answer
    else {
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
    let Some(message) = response(written, &head) else {
        return Err(broken("an answer field HTTP/2 cannot carry"));
    };
    if (100..200).contains(&head.status) {
        // interim: the final head follows (a switch of protocols never
        // reaches an HTTP/2 client; the pipeline refuses it)
        if head.status == 101 || respond.send_informational(message).is_err() {
            return Err(broken("the interim answer could not be sent"));
        }
        written.clear();
        return Ok(taken);
    }
    let rf = gearhost_http::fields::facts(written, &head.headers);
    let left = match headers::answer_framing(head.status, *head_request, &rf) {
        Framing::Empty => Some(0),
        Framing::Length(n) => Some(n),
        // written unchunked (see the module's description)
        Framing::Chunked => return Err(broken("a chunked answer body for HTTP/2")),
        Framing::Close => None,
    };
    let end = left == Some(0);
    let send = respond
        .send_response(message, end)
        .map_err(|_| broken("the client reset the stream"))?;
    *answer = if end {
        Answer::Over
    } else {
        Answer::Body { send, left }
    };
    Ok(taken)
}

/// Sends up to `data.len()` body bytes as far as the window lets them;
/// returns how many went.
fn send_body(answer: &mut Answer, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
    let Answer::Body { send, left } = answer else {
        return Poll::Ready(Err(broken("the answer is over")));
    };
    let mut n = data.len();
    if let Some(left) = left {
        // a stated length: nothing beyond it
        n = n.min(usize::try_from(*left).unwrap_or(usize::MAX));
    }
    if n == 0 {
        return Poll::Ready(Ok(data.len()));
    }
    send.reserve_capacity(n);
    while send.capacity() == 0 {
        match ready!(send.poll_capacity(cx)) {
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Poll::Ready(Err(broken("the client reset the stream"))),
        }
    }
    let n = n.min(send.capacity());
    let end = match left {
        Some(left) => {
            *left -= n as u64;
            *left == 0
        }
        None => false,
    };
    if send
        .send_data(Bytes::copy_from_slice(&data[..n]), end)
        .is_err()
    {
        return Poll::Ready(Err(broken("the client reset the stream")));
    }
    if end {
        *answer = Answer::Over;
    }
    Poll::Ready(Ok(n))
}

impl AsyncWrite for H2Answer {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut answer = self.lock();
        if let Answer::Head { .. } = &*answer {
            // the body (if any) comes with the next write
            return Poll::Ready(take_head(&mut answer, data));
        }
        send_body(&mut answer, cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
