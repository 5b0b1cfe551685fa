//! Socket sends from many tasks of one thread, handed to the kernel in one
//! system call (io_uring).
//!
//! A proxy thread that sends a request to an app, or an answer to a client,
//! wakes the process on the other end; on a busy machine that process is put on
//! the sender's CPU and takes it as soon as the `send` returns, so a thread
//! working through thirty ready connections is switched out up to thirty times.
//! A [`SendBatch`] lets each task queue its send instead; one flusher task, run
//! after the others that were ready, passes all of them to the kernel in a single
//! `io_uring_enter`. The receivers are woken by the same call, and the first
//! switch comes after the whole batch.
//!
//! Everything a queued send needs is owned by the batch until the kernel is done
//! with it: the bytes (moved in, handed back with the result) and the socket (a
//! duplicate descriptor, shared). A flush waits for every send it submitted, so
//! nothing is in the kernel's hands once it returns, and a [`Ticket`] dropped
//! before its flush takes its send out of the queue.
//!
//! Sends are non-blocking: a socket without room completes at once with the bytes
//! that fit (or `WouldBlock`), and the caller writes the rest the usual way.

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use io_uring::{IoUring, opcode, types};

/// Submission queue entries of a batch's ring; a bigger batch is passed in parts.
const RING_ENTRIES: u32 = 256;

/// Sends queued by the tasks of one thread, passed to the kernel together by
/// [`SendBatch::flusher`].
pub struct SendBatch {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("SendBatch")
            .field("queued", &inner.queued.len())
            .field("broken", &inner.broken.is_some())
            .finish()
    }
}

struct Inner {
    ring: IoUring,
    slots: Vec<Slot>,
    free: Vec<usize>,
    queued: Vec<usize>,
    flusher: Option<Waker>,
    /// Flushes that passed sends to the kernel, and the sends they passed.
    flushes: u64,
    sent: u64,
    /// Set when the ring failed in a way that may leave sends in the kernel's
    /// hands: their bytes and sockets are kept here for as long as the ring
    /// lives, and no more sends are queued.
    broken: Option<Vec<(Arc<OwnedFd>, Vec<u8>)>>,
}

enum Slot {
    Free,
    Queued {
        fd: Arc<OwnedFd>,
        data: Vec<u8>,
        waker: Option<Waker>,
    },
    Done {
        result: io::Result<usize>,
        data: Vec<u8>,
    },
}

impl SendBatch {
    /// A batch with its own io_uring; an error when this kernel has none, or
    /// does not allow it (`kernel.io_uring_disabled`), or has no `send` for it.
    pub fn new() -> io::Result<Arc<SendBatch>> {
        let ring = IoUring::builder().setup_submit_all().build(RING_ENTRIES)?;
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        if !probe.is_supported(opcode::Send::CODE) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this kernel's io_uring has no send operation",
            ));
        }
        Ok(Arc::new(SendBatch {
            inner: Mutex::new(Inner {
                ring,
                slots: Vec::new(),
                free: Vec::new(),
                queued: Vec::new(),
                flusher: None,
                flushes: 0,
                sent: 0,
                broken: None,
            }),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        crate::lock::lock(&self.inner)
    }

    /// Queues `data` to be sent on the socket `fd` at the next flush. The ticket
    /// resolves to the result of that one `send` (bytes written, which may be
    /// fewer than all) and gives `data` back. `Err` with `data` when the batch
    /// takes no more sends (its ring failed): send the usual way.
    pub fn queue(self: &Arc<Self>, fd: &Arc<OwnedFd>, data: Vec<u8>) -> Result<Ticket, Vec<u8>> {
        let mut inner = self.lock();
        if inner.broken.is_some() {
            return Err(data);
        }
        let slot = Slot::Queued {
            fd: fd.clone(),
            data,
            waker: None,
        };
        let index = match inner.free.pop() {
            Some(i) => {
                inner.slots[i] = slot;
                i
            }
            None => {
                inner.slots.push(slot);
                inner.slots.len() - 1
            }
        };
        inner.queued.push(index);
        if inner.queued.len() == 1
            && let Some(flusher) = &inner.flusher
        {
            flusher.wake_by_ref();
        }
        Ok(Ticket {
            batch: self.clone(),
            slot: Some(index),
        })
    }

    /// The task that passes the queued sends to the kernel, woken by the first
    /// send of each batch. Spawn it once on the thread whose tasks queue sends:
    /// woken behind the tasks that were already ready, it flushes after them.
    pub fn flusher(self: Arc<Self>) -> impl Future<Output = ()> + Send + 'static {
        std::future::poll_fn(move |cx| {
            let mut inner = self.lock();
            if !inner.queued.is_empty() {
                inner.flush();
            }
            if !inner
                .flusher
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                inner.flusher = Some(cx.waker().clone());
            }
            Poll::Pending
        })
    }

    /// Passes every queued send to the kernel now and waits for their results.
    pub fn flush(&self) {
        self.lock().flush();
    }

    /// What the batch has done so far.
    pub fn stats(&self) -> BatchStats {
        let inner = self.lock();
        BatchStats {
            flushes: inner.flushes,
            sends: inner.sent,
            working: inner.broken.is_none(),
        }
    }
}

/// What a [`SendBatch`] has done so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchStats {
    /// Flushes that passed sends to the kernel, one call each.
    pub flushes: u64,
    /// Sends they passed (`sends / flushes` is the mean batch).
    pub sends: u64,
    /// Whether the batch still takes sends (its ring has not failed).
    pub working: bool,
}

impl Inner {
    fn flush(&mut self) {
        let queued = std::mem::take(&mut self.queued);
        self.flushes += 1;
        self.sent += queued.len() as u64;
        for part in queued.chunks(RING_ENTRIES as usize) {
            if self.broken.is_some() {
                // not given to the kernel: their tasks send the usual way
                for &i in part {
                    self.resolve(i, Err(io::ErrorKind::WouldBlock.into()));
                }
            } else if let [one] = part {
                self.send_alone(*one);
            } else {
                self.flush_part(part);
            }
        }
        // keep the allocation for the next batch
        self.queued = queued;
        self.queued.clear();
    }

    /// A batch of one send: a plain `send(2)`, which wakes the receiver as the ring
    /// would, for less than the ring's submission and completion (a connection
    /// alone on its worker sends one answer per flush, about 1 % of its request's
    /// time here).
    fn send_alone(&mut self, i: usize) {
        let Slot::Queued { fd, data, .. } = &self.slots[i] else {
            return;
        };
        // SAFETY: `data` is a live buffer of `data.len()` bytes owned by slot `i` for the
        // length of the call, and `fd` an open socket owned by it; the call copies the bytes
        // before it returns and keeps no pointer.
        let sent = unsafe {
            libc::send(
                fd.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        let result = if sent >= 0 {
            Ok(sent as usize)
        } else {
            Err(io::Error::last_os_error())
        };
        self.resolve(i, result);
    }

    fn flush_part(&mut self, part: &[usize]) {
        let mut pushed = 0;
        {
            let mut sq = self.ring.submission();
            for &i in part {
                let Slot::Queued { fd, data, .. } = &self.slots[i] else {
                    pushed += 1;
                    continue;
                };
                let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
                let entry = opcode::Send::new(types::Fd(fd.as_raw_fd()), data.as_ptr(), len)
                    .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
                    .build()
                    .user_data(i as u64);
                // SAFETY: the entry points at `data`'s heap bytes and names `fd`; both
                // are owned by slot `i`, which stays `Queued` (neither freed nor
                // changed: the lock is held) until this function has reaped the
                // entry's completion below, or, if the ring fails, are moved to
                // `broken` and kept for the ring's life.
                if unsafe { sq.push(&entry) }.is_err() {
                    break;
                }
                pushed += 1;
            }
        }
        // the part fits the ring and the ring was empty, so this does not
        // happen; if it did, those tasks send the usual way
        for &i in &part[pushed..] {
            self.resolve(i, Err(io::ErrorKind::WouldBlock.into()));
        }
        let in_kernel = part[..pushed]
            .iter()
            .filter(|&&i| matches!(self.slots[i], Slot::Queued { .. }))
            .count();
        let mut reaped = 0;
        while reaped < in_kernel {
            match self.ring.submit_and_wait(in_kernel - reaped) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) => {}
                Err(e) => {
                    self.fail(&part[..pushed], &e);
                    return;
                }
            }
            loop {
                let next = self.ring.completion().next();
                let Some(cqe) = next else { break };
                reaped += 1;
                let result = cqe.result();
                self.resolve(
                    cqe.user_data() as usize,
                    if result >= 0 {
                        Ok(result as usize)
                    } else {
                        Err(io::Error::from_raw_os_error(-result))
                    },
                );
            }
        }
    }

    /// A queued send is over: its ticket gets `result` and its bytes back.
    fn resolve(&mut self, i: usize, result: io::Result<usize>) {
        if let Some(Slot::Queued { data, waker, .. }) = self.slots.get_mut(i) {
            let data = std::mem::take(data);
            if let Some(w) = waker.take() {
                w.wake();
            }
            self.slots[i] = Slot::Done { result, data };
        }
    }

    /// The ring failed: the sends of `part` may still be in the kernel's hands.
    fn fail(&mut self, part: &[usize], error: &io::Error) {
        let kept = self.broken.get_or_insert_with(Vec::new);
        for &i in part {
            if let Slot::Queued { fd, data, waker } = &mut self.slots[i] {
                // the kernel may still read these bytes: they stay, a copy goes back
                let copy = data.clone();
                kept.push((fd.clone(), std::mem::take(data)));
                if let Some(w) = waker.take() {
                    w.wake();
                }
                self.slots[i] = Slot::Done {
                    result: Err(io::Error::new(
                        error.kind(),
                        format!("the send batch failed: {error}"),
                    )),
                    data: copy,
                };
            }
        }
    }
}

/// One queued send: resolves to its result and the bytes given to [`SendBatch::queue`].
#[derive(Debug)]
pub struct Ticket {
    batch: Arc<SendBatch>,
    slot: Option<usize>,
}

impl Future for Ticket {
    type Output = (io::Result<usize>, Vec<u8>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(index) = this.slot else {
            return Poll::Ready((
                Err(io::Error::other("a send ticket polled after it resolved")),
                Vec::new(),
            ));
        };
        let mut inner = this.batch.lock();
        let inner = &mut *inner;
        match &mut inner.slots[index] {
            Slot::Queued { waker, .. } => {
                if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            slot @ Slot::Done { .. } => {
                let Slot::Done { result, data } = std::mem::replace(slot, Slot::Free) else {
                    unreachable!("matched as done")
                };
                inner.free.push(index);
                this.slot = None;
                Poll::Ready((result, data))
            }
            Slot::Free => unreachable!("a ticket's slot is free only after it resolved"),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let Some(index) = self.slot else { return };
        let mut inner = self.batch.lock();
        // not flushed yet: it never goes to the kernel
        inner.queued.retain(|&i| i != index);
        inner.slots[index] = Slot::Free;
        inner.free.push(index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    use std::task::Wake;

    struct Flag(std::sync::atomic::AtomicUsize);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn poll<F: Future + Unpin>(f: &mut F, waker: &Waker) -> Poll<F::Output> {
        Pin::new(f).poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn queued_sends_go_out_together_at_the_flush() {
        let batch = SendBatch::new().expect("io_uring");
        let flag = Arc::new(Flag(0.into()));
        let waker = Waker::from(flag.clone());
        let (a, mut a_peer) = UnixStream::pair().expect("pair");
        let (b, mut b_peer) = UnixStream::pair().expect("pair");
        let a: Arc<OwnedFd> = Arc::new(a.into());
        let b: Arc<OwnedFd> = Arc::new(b.into());
        let mut first = batch.queue(&a, b"one".to_vec()).expect("queued");
        let mut second = batch.queue(&b, b"two".to_vec()).expect("queued");
        assert!(poll(&mut first, &waker).is_pending());
        assert!(poll(&mut second, &waker).is_pending());
        // nothing is sent before the flush
        a_peer.set_nonblocking(true).expect("nonblocking");
        assert!(a_peer.read(&mut [0u8; 8]).is_err());
        batch.flush();
        let stats = batch.stats();
        assert_eq!(
            (stats.flushes, stats.sends, stats.working),
            (1, 2, true),
            "one flush passed both sends"
        );
        assert_eq!(flag.0.load(std::sync::atomic::Ordering::SeqCst), 2);
        let Poll::Ready((sent, data)) = poll(&mut first, &waker) else {
            panic!("resolved after the flush")
        };
        assert_eq!(sent.expect("sent"), 3);
        assert_eq!(data, b"one");
        let Poll::Ready((sent, _)) = poll(&mut second, &waker) else {
            panic!("resolved after the flush")
        };
        assert_eq!(sent.expect("sent"), 3);
        let mut got = [0u8; 3];
        a_peer.set_nonblocking(false).expect("blocking");
        a_peer.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"one");
        b_peer.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"two");
    }

    #[test]
    fn a_dropped_ticket_sends_nothing_and_a_full_socket_takes_what_fits() {
        // (a flush of one send is a plain send(2), of more the ring's: both are checked)
        let batch = SendBatch::new().expect("io_uring");
        let (a, mut a_peer) = UnixStream::pair().expect("pair");
        let a: Arc<OwnedFd> = Arc::new(a.into());
        drop(batch.queue(&a, b"never".to_vec()).expect("queued"));
        batch.flush();
        a_peer.set_nonblocking(true).expect("nonblocking");
        assert_eq!(
            a_peer
                .read(&mut [0u8; 8])
                .map_err(|e| e.kind())
                .expect_err("nothing to read"),
            io::ErrorKind::WouldBlock,
            "a dropped ticket's bytes went out"
        );
        // more than the socket holds: the send takes part of it, without blocking
        let big = vec![7u8; 8 << 20];
        let flag = Arc::new(Flag(0.into()));
        let waker = Waker::from(flag);
        let mut ticket = batch.queue(&a, big).expect("queued");
        assert!(poll(&mut ticket, &waker).is_pending());
        batch.flush();
        let Poll::Ready((sent, data)) = poll(&mut ticket, &waker) else {
            panic!("resolved after the flush")
        };
        let sent = sent.expect("sent part");
        assert!(
            sent > 0 && sent < data.len(),
            "sent {sent} of {}",
            data.len()
        );
        // and a socket with no room at all says so
        let mut full = batch.queue(&a, vec![1u8; 4096]).expect("queued");
        assert!(poll(&mut full, &waker).is_pending());
        batch.flush();
        let Poll::Ready((sent, _)) = poll(&mut full, &waker) else {
            panic!("resolved after the flush")
        };
        assert_eq!(
            sent.map_err(|e| e.kind()).expect_err("no room"),
            io::ErrorKind::WouldBlock
        );
        // the same through the ring, where the flush has more than one send
        let mut first = batch.queue(&a, vec![2u8; 4096]).expect("queued");
        let mut second = batch.queue(&a, vec![3u8; 4096]).expect("queued");
        assert!(poll(&mut first, &waker).is_pending());
        assert!(poll(&mut second, &waker).is_pending());
        batch.flush();
        for ticket in [&mut first, &mut second] {
            let Poll::Ready((sent, _)) = poll(ticket, &waker) else {
                panic!("resolved after the flush")
            };
            assert_eq!(
                sent.map_err(|e| e.kind()).expect_err("no room"),
                io::ErrorKind::WouldBlock
            );
        }
        assert_eq!(batch.stats().flushes, 4);
    }
}
