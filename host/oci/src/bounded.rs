//! Sinks for a blob that take at most the bytes its descriptor promised.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

/// Passes at most `most` bytes on to `inner`; a write past that fails, and is
/// remembered.
#[derive(Debug)]
pub(crate) struct Bounded<W> {
    inner: W,
    written: u64,
    most: u64,
    overflowed: bool,
}

/// A bounded sink into memory.
pub(crate) type Sink = Bounded<Vec<u8>>;

impl Sink {
    pub(crate) fn new(most: u64) -> Sink {
        Bounded::over(
            Vec::with_capacity(usize::try_from(most.min(1 << 20)).unwrap_or(0)),
            most,
        )
    }
}

impl<W> Bounded<W> {
    pub(crate) fn over(inner: W, most: u64) -> Bounded<W> {
        Bounded {
            inner,
            written: 0,
            most,
            overflowed: false,
        }
    }

    pub(crate) fn overflowed(&self) -> bool {
        self.overflowed
    }

    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    pub(crate) fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Bounded<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.written + buf.len() as u64 > self.most {
            self.overflowed = true;
            return Poll::Ready(Err(io::Error::other(
                "more bytes than the descriptor's size",
            )));
        }
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.written += n as u64;
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
