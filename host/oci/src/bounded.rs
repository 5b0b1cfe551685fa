//! A sink for a blob that keeps at most the bytes its descriptor promised.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Collects at most `most` bytes; a write past that fails, and is remembered.
#[derive(Debug)]
pub(crate) struct Sink {
    bytes: Vec<u8>,
    most: u64,
    overflowed: bool,
}

impl Sink {
    pub(crate) fn new(most: u64) -> Sink {
        Sink {
            bytes: Vec::with_capacity(usize::try_from(most.min(1 << 20)).unwrap_or(0)),
            most,
            overflowed: false,
        }
    }

    pub(crate) fn overflowed(&self) -> bool {
        self.overflowed
    }

    pub(crate) fn into_inner(self) -> Vec<u8> {
        self.bytes
    }
}

impl tokio::io::AsyncWrite for Sink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.bytes.len() as u64 + buf.len() as u64 > self.most {
            self.overflowed = true;
            return Poll::Ready(Err(io::Error::other(
                "more bytes than the descriptor's size",
            )));
        }
        self.bytes.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
