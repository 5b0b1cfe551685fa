//! The send deadline: a client that stops reading is cut off once no byte of
//! what the frontend writes to it has gone for `http.send-timeout`.
//!
//! Without it a client that reads nothing (or, over HTTP/2, opens no window)
//! would hold its request, the gear connection behind it and the gear's
//! answer forever: the relay's body pump waits on the client, and neither
//! the header timeout (between requests) nor the response timeout (until the
//! answer's head) runs then. The bound is on progress, not on the whole
//! write: a slow link that keeps taking bytes is not cut, as with nginx's
//! `send_timeout`. The timer is made at the first write that has to wait and
//! kept for the connection's later waits, so a client that keeps up never
//! costs one.

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The send deadline of one client connection (or HTTP/2 stream).
#[derive(Debug)]
pub(crate) struct SendStall {
    limit: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    /// A write is waiting, and the timer runs for it.
    armed: bool,
    /// The deadline passed once (counted in the frontend's metrics).
    fired: bool,
}

impl SendStall {
    pub(crate) fn new(limit: Duration) -> SendStall {
        SendStall {
            limit,
            timer: None,
            armed: false,
            fired: false,
        }
    }

    /// The longest a write may wait.
    pub(crate) fn limit(&self) -> Duration {
        self.limit
    }

    /// One poll of a write, `polled`, under the deadline: a write that made
    /// progress (or ended) leaves the next wait a new deadline; one that
    /// waits fails once it has waited for the limit.
    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(r) => {
                self.armed = false;
                Poll::Ready(r)
            }
            Poll::Pending => self.waiting(cx).map(Err),
        }
    }

    /// A write has to wait: `Ready` with the error to fail it with once no
    /// progress was made within the limit, else `Pending` (the timer wakes
    /// the task at the deadline).
    fn waiting(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if !self.armed {
            // a limit past the clock's range (`Duration::MAX`) is none
            let Some(deadline) = Instant::now().checked_add(self.limit) else {
                return Poll::Pending;
            };
            match &mut self.timer {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
        }
        let Some(timer) = &mut self.timer else {
            unreachable!("armed above")
        };
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.armed = false;
        self.fired = true;
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the client took nothing of what was sent to it for {:?}",
                self.limit
            ),
        ))
    }

    /// Whether the deadline passed since the last call.
    pub(crate) fn take_fired(&mut self) -> bool {
        std::mem::take(&mut self.fired)
    }

    /// Runs `send` (one write of the client's, which cannot be split into
    /// polls of its own) under the deadline: it fails once it has waited for
    /// the limit.
    pub(crate) async fn bound<T>(
        &mut self,
        send: impl Future<Output = io::Result<T>>,
    ) -> io::Result<T> {
        let mut send = pin!(send);
        std::future::poll_fn(|cx| {
            let polled = send.as_mut().poll(cx);
            self.check(cx, polled)
        })
        .await
    }
}

/// A client's stream (or its writing half) whose writes keep the send
/// deadline; reads pass through.
pub(crate) struct Bounded<'a, S> {
    inner: &'a mut S,
    stall: &'a mut SendStall,
}

impl<'a, S> Bounded<'a, S> {
    pub(crate) fn new(inner: &'a mut S, stall: &'a mut SendStall) -> Bounded<'a, S> {
        Bounded { inner, stall }
    }

    /// Polls one write step of the inner stream under the deadline.
    fn step<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(Pin<&mut S>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>>
    where
        S: Unpin,
    {
        let polled = poll(Pin::new(&mut *self.inner), cx);
        self.stall.check(cx, polled)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Bounded<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().step(cx, |s, cx| s.poll_write(cx, data))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().step(cx, |s, cx| s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().step(cx, |s, cx| s.poll_shutdown(cx))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Bounded<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A writer that takes `room` bytes, then waits until `room` grows.
    struct Slow {
        room: usize,
        taken: usize,
    }

    impl AsyncWrite for Slow {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let n = data.len().min(this.room - this.taken);
            if n == 0 {
                return Poll::Pending;
            }
            this.taken += n;
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_waits_past_the_limit_fails_and_is_counted() {
        let mut stall = SendStall::new(Duration::from_secs(60));
        let mut slow = Slow { room: 10, taken: 0 };
        let began = Instant::now();
        let e = Bounded::new(&mut slow, &mut stall)
            .write_all(&[7u8; 25])
            .await
            .expect_err("a writer that stops taking bytes");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(began.elapsed(), Duration::from_secs(60));
        assert_eq!(slow.taken, 10, "what fit went before the wait");
        assert!(stall.take_fired());
        assert!(!stall.take_fired(), "counted once");
    }

    #[tokio::test(start_paused = true)]
    async fn progress_starts_a_new_deadline() {
        let mut stall = SendStall::new(Duration::from_secs(60));
        let (mut near, mut far) = tokio::io::duplex(8);
        let reader = tokio::spawn(async move {
            // a slow reader: 8 bytes every 50 s, always within the limit
            let mut got = Vec::new();
            let mut buf = [0u8; 8];
            while got.len() < 64 {
                tokio::time::sleep(Duration::from_secs(50)).await;
                let n = far.read(&mut buf).await.expect("read");
                got.extend_from_slice(&buf[..n]);
            }
            got
        });
        let began = Instant::now();
        Bounded::new(&mut near, &mut stall)
            .write_all(&[1u8; 64])
            .await
            .expect("a slow client that keeps reading is not cut off");
        assert!(began.elapsed() >= Duration::from_secs(350));
        assert_eq!(reader.await.expect("the reader"), vec![1u8; 64]);
        assert!(!stall.take_fired());
    }

    #[tokio::test(start_paused = true)]
    async fn a_bounded_send_fails_at_the_limit_and_one_in_time_passes() {
        let mut stall = SendStall::new(Duration::from_secs(5));
        let quick = stall
            .bound(async {
                tokio::time::sleep(Duration::from_secs(4)).await;
                Ok(1)
            })
            .await;
        assert_eq!(quick.expect("a send in time"), 1);
        let never = stall.bound(std::future::pending::<io::Result<()>>()).await;
        assert_eq!(
            never.expect_err("a send that never ends").kind(),
            io::ErrorKind::TimedOut
        );
        assert!(stall.take_fired());
    }
}
