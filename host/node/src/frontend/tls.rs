//! TLS at the frontend: a client connection is plain TCP or TLS over TCP
//! ([`ClientStream`]), and the pipeline serves both alike. TLS connections
//! come from the `[https]` listener; their handshake happens on the worker
//! that serves them, under the header timeout, with the certificate chosen
//! by SNI ([`crate::certs::Certs`]). A client that negotiates `h2` by ALPN
//! is served by `super::http2`, which hands each of its streams to the
//! pipeline as a [`ClientStream::Http2`]: reads take the stream's request
//! body, writes its answer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::http2::{H2Answer, H2Body, H2Stream};

/// A client's connection to the frontend.
#[derive(Debug)]
pub(crate) enum ClientStream {
    /// Plain HTTP.
    Tcp(TcpStream),
    /// HTTP over TLS.
    Tls(Box<TlsStream<TcpStream>>),
    /// One HTTP/2 stream of a TLS connection (see `super::http2`).
    Http2(H2Stream),
}

impl ClientStream {
    /// Whether the client speaks TLS (its requests get `X-Forwarded-Proto:
    /// https`).
    pub(crate) fn secure(&self) -> bool {
        matches!(self, ClientStream::Tls(_) | ClientStream::Http2(_))
    }

    /// Whether the request came as an HTTP/2 stream (its access log line
    /// says `HTTP/2.0`).
    pub(crate) fn http2(&self) -> bool {
        matches!(self, ClientStream::Http2(_))
    }

    /// The whole answer body has been written: an HTTP/2 stream whose
    /// answer had no stated length ends here (a connection needs nothing).
    pub(crate) fn end_of_answer(&mut self) {
        if let ClientStream::Http2(s) = self {
            s.answer.end();
        }
    }

    /// Waits until there may be something to read. For TLS the plaintext may
    /// be buffered already, so this returns at once.
    pub(crate) async fn readable(&self) -> io::Result<()> {
        match self {
            ClientStream::Tcp(s) => s.readable().await,
            ClientStream::Tls(_) | ClientStream::Http2(_) => Ok(()),
        }
    }

    /// The plain TCP stream, when the connection is one (the frontend's
    /// batched sends write to its socket directly).
    pub(crate) fn tcp(&mut self) -> Option<&mut TcpStream> {
        match self {
            ClientStream::Tcp(s) => Some(s),
            ClientStream::Tls(_) | ClientStream::Http2(_) => None,
        }
    }

    /// Its reading and writing halves, to use at once.
    pub(crate) fn split(&mut self) -> (ClientRead<'_>, ClientWrite<'_>) {
        match self {
            ClientStream::Tcp(s) => {
                let (r, w) = s.split();
                (ClientRead::Tcp(r), ClientWrite::Tcp(w))
            }
            ClientStream::Tls(s) => {
                let (r, w) = tokio::io::split(&mut **s);
                (ClientRead::Tls(r), ClientWrite::Tls(w))
            }
            ClientStream::Http2(s) => {
                let H2Stream { body, answer } = s;
                (ClientRead::Http2(body), ClientWrite::Http2(answer))
            }
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
            ClientStream::Http2(s) => Pin::new(&mut s.body).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_write(cx, data),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_write(cx, data),
            ClientStream::Http2(s) => Pin::new(&mut s.answer).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
            ClientStream::Http2(s) => Pin::new(&mut s.answer).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
            ClientStream::Http2(s) => Pin::new(&mut s.answer).poll_shutdown(cx),
        }
    }
}

/// The reading half of a [`ClientStream`].
pub(crate) enum ClientRead<'a> {
    Tcp(tokio::net::tcp::ReadHalf<'a>),
    Tls(tokio::io::ReadHalf<&'a mut TlsStream<TcpStream>>),
    Http2(&'a mut H2Body),
}

/// The writing half of a [`ClientStream`].
pub(crate) enum ClientWrite<'a> {
    Tcp(tokio::net::tcp::WriteHalf<'a>),
    Tls(tokio::io::WriteHalf<&'a mut TlsStream<TcpStream>>),
    Http2(&'a mut H2Answer),
}

impl AsyncRead for ClientRead<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientRead::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            ClientRead::Tls(r) => Pin::new(r).poll_read(cx, buf),
            ClientRead::Http2(r) => Pin::new(&mut **r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientWrite<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientWrite::Tcp(w) => Pin::new(w).poll_write(cx, data),
            ClientWrite::Tls(w) => Pin::new(w).poll_write(cx, data),
            ClientWrite::Http2(w) => Pin::new(&mut **w).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientWrite::Tcp(w) => Pin::new(w).poll_flush(cx),
            ClientWrite::Tls(w) => Pin::new(w).poll_flush(cx),
            ClientWrite::Http2(w) => Pin::new(&mut **w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientWrite::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            ClientWrite::Tls(w) => Pin::new(w).poll_shutdown(cx),
            ClientWrite::Http2(w) => Pin::new(&mut **w).poll_shutdown(cx),
        }
    }
}
