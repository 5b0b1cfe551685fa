//! Holding a hook's budget when its thread is stuck in the kernel, and cancelling a hook
//! call from outside.
//!
//! A hook's file operations are blocking system calls made while its instance is polled
//! (see [`crate::fsid`]). Most end quickly, but some wait on what a gear controls: opening a
//! FIFO nobody writes to, or a file under a lease the gear's process holds. The epoch
//! deadline cannot fire while the thread is in the kernel, nor can a timer of the runtime
//! that polls the hook.
//!
//! So every call is watched: [`Watched`] records which thread is inside a poll of the hook,
//! and the runtime's epoch ticker thread, at every tick, interrupts that thread (a signal,
//! [`gearhost_sys::interrupt`]) when the call's deadline has passed or it was cancelled.
//! The interrupted system call returns `EINTR`, the guest gets an error, and the epoch check
//! traps as soon as wasm code runs again. A thread is only interrupted while it is inside the
//! poll of the call that is due, never in other work.
//!
//! [`Cancel`] is how a caller stops a call before its deadline (a `gear stop` of a gear whose
//! deploy hangs): the epoch callback traps at the next tick, host calls are refused, the
//! watchdog interrupts a blocked system call, and the call's own task stops waiting.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Instant;

use gearhost_sys::interrupt::{self, Interrupter, ThreadId};

/// A cancellation flag for one or more hook calls, cheap to clone; every clone sees the same
/// flag. Cancelling is final.
#[derive(Clone, Default)]
pub struct Cancel {
    inner: Arc<CancelInner>,
}

#[derive(Default)]
struct CancelInner {
    cancelled: AtomicBool,
    reason: Mutex<Option<String>>,
    notify: tokio::sync::Notify,
}

impl std::fmt::Debug for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cancel")
            .field("cancelled", &self.is_cancelled())
            .field("reason", &self.reason())
            .finish()
    }
}

impl Cancel {
    /// A flag that is not set.
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Cancel, saying why (the first reason given is kept). Hook calls watching this flag
    /// end within a few milliseconds with [`HookError::Cancelled`](crate::HookError).
    pub fn cancel(&self, reason: impl Into<String>) {
        {
            let mut slot = gearhost_sys::lock::lock(&self.inner.reason);
            if slot.is_none() {
                *slot = Some(reason.into());
            }
        }
        self.inner.cancelled.store(true, Ordering::SeqCst);
        self.inner.notify.notify_waiters();
    }

    /// Whether it was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::SeqCst)
    }

    /// Why it was cancelled, once it was.
    pub fn reason(&self) -> Option<String> {
        gearhost_sys::lock::lock(&self.inner.reason).clone()
    }

    /// Wait until it is cancelled.
    pub async fn cancelled(&self) {
        loop {
            let notified = self.inner.notify.notified();
            let mut notified = std::pin::pin!(notified);
            // registered before the flag is read: a cancel in between still wakes us
            notified.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

/// The calls in progress, looked at by the epoch ticker.
pub(crate) struct Watchdog {
    interrupter: Interrupter,
    calls: Mutex<Vec<Weak<Watch>>>,
}

impl Watchdog {
    /// Install the interrupting signal's handler and start with no calls.
    pub(crate) fn new() -> std::io::Result<Watchdog> {
        Ok(Watchdog {
            interrupter: interrupt::interrupter()?,
            calls: Mutex::new(Vec::new()),
        })
    }

    /// Watch a call that must end by `deadline`, or when `cancel` is set.
    pub(crate) fn watch(self: &Arc<Self>, deadline: Instant, cancel: Cancel) -> Arc<Watch> {
        let watch = Arc::new(Watch {
            deadline,
            cancel,
            state: Mutex::new(WatchState::default()),
        });
        let mut calls = gearhost_sys::lock::lock(&self.calls);
        calls.retain(|w| w.strong_count() > 0);
        calls.push(Arc::downgrade(&watch));
        watch
    }

    /// One tick: interrupt every thread that polls a call that is due.
    pub(crate) fn tick(&self, now: Instant) {
        let calls: Vec<Arc<Watch>> = {
            let calls = gearhost_sys::lock::lock(&self.calls);
            calls.iter().filter_map(Weak::upgrade).collect()
        };
        for watch in calls {
            if now >= watch.deadline || watch.cancel.is_cancelled() {
                watch.interrupt(&self.interrupter);
            }
        }
    }
}

/// One watched call.
pub(crate) struct Watch {
    deadline: Instant,
    cancel: Cancel,
    state: Mutex<WatchState>,
}

#[derive(Default)]
struct WatchState {
    /// The thread inside a poll of the call right now.
    polling: Option<ThreadId>,
    /// An interruption was sent during the current poll.
    sent: bool,
    /// Interruptions sent over the whole call.
    interruptions: u32,
}

impl Watch {
    fn state(&self) -> std::sync::MutexGuard<'_, WatchState> {
        gearhost_sys::lock::lock(&self.state)
    }

    fn interrupt(&self, interrupter: &Interrupter) {
        // under the lock: the thread cannot leave the poll while the signal is sent
        let mut state = self.state();
        if let Some(thread) = state.polling
            && interrupter.interrupt(thread).is_ok()
        {
            state.sent = true;
            state.interruptions += 1;
        }
    }

    /// Whether the watchdog had to interrupt the call's thread (its outcome, whatever the
    /// guest made of the error it got, is that of a call stopped from outside).
    pub(crate) fn interrupted(&self) -> bool {
        self.state().interruptions > 0
    }

    fn enter(&self) {
        self.state().polling = Some(ThreadId::current());
        let _ = interrupt::accept();
    }

    fn leave(&self) {
        let _ = interrupt::refuse();
        let sent = {
            let mut state = self.state();
            state.polling = None;
            std::mem::take(&mut state.sent)
        };
        if sent {
            // one that arrived after `refuse` must not fire in the thread's next work
            interrupt::discard_pending();
        }
    }
}

/// A future whose polls the watchdog may interrupt (a hook's instance).
pub(crate) struct Watched<F> {
    watch: Arc<Watch>,
    inner: Pin<Box<F>>,
}

impl<F: Future> Watched<F> {
    pub(crate) fn new(watch: Arc<Watch>, inner: F) -> Self {
        Self {
            watch,
            inner: Box::pin(inner),
        }
    }
}

struct Leave<'a>(&'a Watch);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

impl<F: Future> Future for Watched<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let watch = self.watch.clone();
        watch.enter();
        let _leave = Leave(&watch);
        self.inner.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_cancel_wakes_waiters_and_keeps_the_first_reason() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio");
        let cancel = Cancel::new();
        let waiter = cancel.clone();
        rt.block_on(async move {
            let wait = tokio::spawn(async move { waiter.cancelled().await });
            tokio::time::sleep(Duration::from_millis(10)).await;
            cancel.cancel("first");
            cancel.cancel("second");
            tokio::time::timeout(Duration::from_secs(5), wait)
                .await
                .expect("woken")
                .expect("join");
            assert_eq!(cancel.reason().as_deref(), Some("first"));
            // waiting on a flag already set returns at once
            cancel.cancelled().await;
        });
    }
}
