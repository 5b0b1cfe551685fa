//! One HTTP/2 stream as a client of the request pipeline ([`H2Stream`]),
//! with no second task and no in-memory pipe between them: the pipeline
//! reads the stream's request body as the HTTP/1.1 body its head declares
//! ([`H2Body`], chunked when the client gave no length), and its answer goes
//! out as the stream's response ([`H2Answer`]): a gear's answer head is
//! made into HEADERS at once, with the fields the header policy passes
//! ([`H2Answer::respond`], `headers::answer_fields`, as for HTTP/1.1); a head
//! the frontend writes itself as HTTP/1.1 (its pages, interim answers) is
//! parsed once whole and sent the same way (1xx as informational responses);
//! the body that follows goes as DATA frames within the client's
//! flow-control window.
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

use gearhost_http::fields::Facts;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use crate::frontend::headers::{self, AnswerShape, MAX_ANSWER_HEAD};
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
        let Some(message) = message(data, head, rf, shape) else {
            return Err(broken("an answer field HTTP/2 cannot carry"));
        };
        send_final(
            &mut self.lock(),
            message,
            body_left(shape.framing, shape.decode)?,
        )
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

/// The stream's response for an answer head (in `data`, parsed into `head`,
/// its fields' facts `rf`): the fields the header policy passes
/// ([`headers::answer_fields`], the same as for HTTP/1.1); `None` when one
/// cannot be carried in HTTP/2.
fn message(
    data: &[u8],
    head: &ResponseHead,
    rf: &Facts,
    shape: AnswerShape,
) -> Option<Response<()>> {
    let mut fields = HeaderMap::with_capacity(head.headers.len() + 2);
    let mut carried = true;
    headers::answer_fields(data, head, rf, shape, |name, value| {
        match (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            (Ok(name), Ok(value)) => {
                fields.append(name, value);
            }
            _ => carried = false,
        }
    });
    let mut response = Response::new(());
    *response.status_mut() = StatusCode::from_u16(head.status).ok()?;
    *response.headers_mut() = fields;
    carried.then_some(response)
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

/// Sends `message` as the stream's response, its body `left` to come.
fn send_final(answer: &mut Answer, message: Response<()>, left: Option<u64>) -> io::Result<()> {
    let Answer::Head { respond, .. } = answer else {
        return Err(broken("the answer's head went out already"));
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
    Ok(())
}

/// Takes `data` as (more of) an answer head written as HTTP/1.1 (the
/// frontend's own pages, interim answers): once `written` and it hold a
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
    let rf = gearhost_http::fields::facts(written, &head.headers);
    let framing = headers::answer_framing(head.status, *head_request, &rf);
    let shape = AnswerShape {
        framing,
        decode: true,
        keep: true,
        head_request: *head_request,
        client_minor: 1,
        hsts: None,
    };
    let Some(message) = message(written, &head, &rf, shape) else {
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
    // what the pipeline writes itself is never chunked (see the module's description)
    send_final(answer, message, body_left(framing, false)?)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_head_loses_its_connection_fields_and_states_its_length() {
        let data =
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: keep-alive, X-Hop\r\n\
                     X-Hop: 1\r\nKeep-Alive: 5\r\nContent-Length: 7\r\nSet-Cookie: a=1\r\n\
                     Set-Cookie: b=2\r\n\r\n";
        let mut head = ResponseHead::default();
        assert_eq!(
            gearhost_http::head::parse_response(data, &mut head),
            Ok(true)
        );
        let rf = gearhost_http::fields::facts(data, &head.headers);
        let framing = headers::answer_framing(head.status, false, &rf);
        assert_eq!(framing, Framing::Length(7));
        let shape = AnswerShape {
            framing,
            decode: true,
            keep: true,
            head_request: false,
            client_minor: 1,
            hsts: Some(60),
        };
        let response = message(data, &head, &rf, shape).expect("a response");
        assert_eq!(response.status(), StatusCode::OK);
        let h = response.headers();
        assert_eq!(h["content-type"], "text/plain");
        assert_eq!(h["content-length"], "7");
        assert_eq!(h["strict-transport-security"], "max-age=60");
        for gone in ["connection", "keep-alive", "x-hop", "transfer-encoding"] {
            assert!(h.get(gone).is_none(), "{gone} passed");
        }
        assert_eq!(h.get_all("set-cookie").iter().count(), 2);
        assert_eq!(body_left(framing, false).expect("a length"), Some(7));
        assert_eq!(body_left(Framing::Chunked, true).expect("decoded"), None);
        assert!(body_left(Framing::Chunked, false).is_err());
    }
}
