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

use gearhost_sys::interrupt::{self, Alarm, Interrupter, OnInterrupt, ThreadId};

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
    /// The alarms of calls run by their caller's thread (a runtime for few calls), rung at
    /// the cancel: no watchdog thread looks at the flag for them.
    alarms: Mutex<Vec<Weak<Alarm>>>,
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
        let alarms: Vec<Arc<Alarm>> = gearhost_sys::lock::lock(&self.inner.alarms)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for alarm in alarms {
            // a timer that cannot be set leaves the call to its deadline
            let _ = alarm.ring_now();
        }
    }

    /// Rings `alarm` when this is cancelled (at once if it already is).
    fn ring_on_cancel(&self, alarm: &Arc<Alarm>) {
        {
            let mut alarms = gearhost_sys::lock::lock(&self.inner.alarms);
            alarms.retain(|a| a.strong_count() > 0);
            alarms.push(Arc::downgrade(alarm));
        }
        // a cancel that came before the alarm was listed
        if self.is_cancelled() {
            let _ = alarm.ring_now();
        }
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
            kick: None,
        });
        let mut calls = gearhost_sys::lock::lock(&self.calls);
        calls.retain(|w| w.strong_count() > 0);
        calls.push(Arc::downgrade(&watch));
        watch
    }

    /// Watch a call that its caller's thread runs, in a runtime without a ticker thread: an
    /// alarm interrupts that thread from `deadline` on (and at once when `cancel` is set),
    /// every [`EPOCH_TICK`](crate::EPOCH_TICK), and each interruption also advances
    /// `engine`'s epoch, so the hook's deadline callback runs. The returned guard holds the
    /// alarm; dropping it (outside the call's polls) stops the alarm and drops an interruption
    /// still pending.
    pub(crate) fn watch_in_caller(
        &self,
        deadline: Instant,
        cancel: Cancel,
        engine: &wasmtime::Engine,
    ) -> std::io::Result<(Arc<Watch>, CallerAlarm)> {
        // the alarm is only let in during the call's polls (`Watched`); one an earlier call's
        // alarm sent at its very end (a cancel racing its last moments) is dropped first
        interrupt::refuse()?;
        interrupt::discard_pending();
        let after = deadline.saturating_duration_since(Instant::now());
        let alarm = Arc::new(self.interrupter.alarm(after, crate::EPOCH_TICK)?);
        cancel.ring_on_cancel(&alarm);
        let watch = Arc::new(Watch {
            deadline,
            cancel,
            state: Mutex::new(WatchState::default()),
            kick: Some(EpochKick {
                engine: engine.clone(),
                fired: AtomicBool::new(false),
            }),
        });
        Ok((watch, CallerAlarm { alarm: Some(alarm) }))
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
    /// For a call its caller's thread runs: what an interruption does besides breaking a
    /// system call.
    kick: Option<EpochKick>,
}

/// What the alarm of a call run by its caller's thread does in the signal handler: advance
/// the engine's epoch (an atomic add), so wasm code reaches the deadline callback, and note
/// that it rang.
struct EpochKick {
    engine: wasmtime::Engine,
    fired: AtomicBool,
}

impl OnInterrupt for EpochKick {
    fn on_interrupt(&self) {
        self.engine.increment_epoch();
        self.fired.store(true, Ordering::Relaxed);
    }
}

/// Holds the alarm of a call run by its caller's thread (see [`Watchdog::watch_in_caller`]).
pub(crate) struct CallerAlarm {
    alarm: Option<Arc<Alarm>>,
}

impl Drop for CallerAlarm {
    fn drop(&mut self) {
        // the last strong reference: the timer is deleted (a cancel only holds a weak one)
        drop(self.alarm.take());
        // an interruption it sent after the call's last poll must not fire in later work
        interrupt::discard_pending();
    }
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
        // a ring counts once the call was due: one left from an earlier call cannot make
        // this one look stopped
        self.state().interruptions > 0
            || self.kick.as_ref().is_some_and(|kick| {
                kick.fired.load(Ordering::Relaxed)
                    && (self.cancel.is_cancelled() || Instant::now() >= self.deadline)
            })
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
        let mut poll = || {
            watch.enter();
            let _leave = Leave(&watch);
            self.inner.as_mut().poll(cx)
        };
        match &watch.kick {
            Some(kick) => interrupt::with_action(kick, poll),
            None => poll(),
        }
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
