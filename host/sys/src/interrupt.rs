//! Breaking a thread out of a blocking system call: the node's way to hold a hook's time
//! budget when the hook's file operation waits on something a gear controls (opening a FIFO
//! nobody writes to, a file under a lease, ...).
//!
//! A signal whose handler does nothing, installed without `SA_RESTART`, makes an interruptible
//! wait in the kernel return `EINTR` to the thread it was sent to, and the caller sees an error
//! instead of waiting on. The signal is `SIGURG`: nothing else in the node uses it, it does not
//! queue (however often it is sent, at most one is pending), and its default action is to be
//! ignored, so a `SIGURG` that reaches the process for any other reason changes nothing but a
//! retried system call.
//!
//! A signal sent to a thread that has left the code it was meant for would interrupt whatever
//! that thread does next. So a thread accepts interruptions only between [`accept`] and
//! [`refuse`] (the signal is unblocked there and blocked outside), and whoever decides to
//! interrupt it must know that it is between the two (the caller keeps that under its own
//! lock). After [`refuse`], [`discard_pending`] drops an interruption that arrived too late to
//! matter, so it cannot fire in later work. Threads that never call [`accept`] are unaffected.
//!
//! A thread can also be interrupted by a timer instead of by another thread ([`Alarm`]: from a
//! given moment on, at a given period), and can have the handler do a little work of its own
//! while it waits for interruptions ([`with_action`]): a process that runs one hook on its
//! main thread needs no watchdog thread at all (`gearhost_runtime`'s runtime for few calls).

use std::cell::Cell;
use std::io;
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal};

/// The signal used to interrupt threads.
const SIGNAL: Signal = Signal::SIGURG;

/// A thread of this process, by its kernel thread id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ThreadId(libc::pid_t);

impl ThreadId {
    /// The calling thread.
    pub fn current() -> ThreadId {
        ThreadId(nix::unistd::gettid().as_raw())
    }
}

/// Proof that the handler is installed: only with it may threads be interrupted (without a
/// handler the signal would simply be ignored and interrupt nothing).
#[derive(Debug, Clone, Copy)]
pub struct Interrupter {
    _installed: (),
}

/// Work the handler does in the interrupted thread (see [`with_action`]).
pub trait OnInterrupt: Sync {
    /// Called from the signal handler, in the interrupted thread: only async-signal-safe work
    /// may be done here (atomic operations; no locks, no allocation, no I/O).
    fn on_interrupt(&self);
}

thread_local! {
    /// The calling thread's action, if [`with_action`] set one: a thin pointer (one word, so a
    /// signal never sees half of it) to a reference on that call's stack.
    static ACTION: Cell<*const &'static dyn OnInterrupt> = const { Cell::new(std::ptr::null()) };
}

extern "C" fn on_interrupt(_: libc::c_int) {
    // being delivered is the point (the interrupted call returns EINTR); the thread's action,
    // if any, is the only work done here
    let _ = ACTION.try_with(|action| {
        let action = action.get();
        if !action.is_null() {
            // SAFETY: a non-null pointer was set by `with_action` in this very thread and
            // points at a reference on its stack that lives until the pointer is reset, which
            // `with_action` does before returning or unwinding; the handler runs in this thread.
            unsafe { (*action).on_interrupt() }
        }
    });
}

/// Runs `body` with `action` done by the signal handler at every interruption of the calling
/// thread that arrives meanwhile (it is done in the handler, so it must be async-signal-safe;
/// see [`OnInterrupt`]).
pub fn with_action<R>(action: &dyn OnInterrupt, body: impl FnOnce() -> R) -> R {
    struct Restore(*const &'static dyn OnInterrupt);
    impl Drop for Restore {
        fn drop(&mut self) {
            ACTION.with(|slot| slot.set(self.0));
        }
    }
    // SAFETY: only the lifetime is erased: the reference is reachable through `ACTION` until
    // `Restore` puts the previous value back, on return and on unwind alike, before `action`'s
    // borrow ends.
    let action: &'static dyn OnInterrupt =
        unsafe { std::mem::transmute::<&dyn OnInterrupt, &'static dyn OnInterrupt>(action) };
    let holder: &'static dyn OnInterrupt = action;
    let previous = ACTION.with(|slot| slot.replace(&raw const holder));
    let _restore = Restore(previous);
    body()
}

/// A timer that interrupts one thread from a given moment on, again at every period, until it
/// is dropped: a POSIX timer delivering the signal to that thread alone. The thread is only
/// interrupted while it accepts interruptions ([`accept`]); one that lands outside waits for
/// the next [`accept`] or [`discard_pending`]. Dropping it deletes the timer.
pub struct Alarm {
    timer: std::sync::Mutex<nix::sys::timer::Timer>,
    period: Duration,
}

// SAFETY: a POSIX timer is a process-wide kernel object named by an id (`timer_t`); any thread
// may set or delete it, and the mutex serialises this process's own uses.
unsafe impl Send for Alarm {}
// SAFETY: as above; every use goes through the mutex.
unsafe impl Sync for Alarm {}

impl std::fmt::Debug for Alarm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alarm").finish_non_exhaustive()
    }
}

impl Interrupter {
    /// An [`Alarm`] that interrupts the calling thread `after` from now, then every `period`.
    ///
    /// # Errors
    ///
    /// The error of `timer_create` or `timer_settime`.
    pub fn alarm(&self, after: Duration, period: Duration) -> io::Result<Alarm> {
        use nix::sys::signal::{SigEvent, SigevNotify};
        use nix::sys::timer::{Expiration, Timer, TimerSetTimeFlags};
        let event = SigEvent::new(SigevNotify::SigevThreadId {
            signal: SIGNAL,
            thread_id: nix::unistd::gettid().as_raw(),
            si_value: 0,
        });
        let mut timer = Timer::new(nix::time::ClockId::CLOCK_MONOTONIC, event)?;
        // a zero first expiry would disarm the timer: the moment may have passed already
        let after = after.max(Duration::from_nanos(1));
        timer.set(
            Expiration::IntervalDelayed(after.into(), period.into()),
            TimerSetTimeFlags::empty(),
        )?;
        Ok(Alarm {
            timer: std::sync::Mutex::new(timer),
            period,
        })
    }
}

impl Alarm {
    /// Interrupts the thread at once, then every period, from any thread (a cancel that must
    /// not wait for the moment the alarm was set for).
    ///
    /// # Errors
    ///
    /// The error of `timer_settime`.
    pub fn ring_now(&self) -> io::Result<()> {
        use nix::sys::timer::{Expiration, TimerSetTimeFlags};
        crate::lock::lock(&self.timer)
            .set(
                Expiration::IntervalDelayed(Duration::from_nanos(1).into(), self.period.into()),
                TimerSetTimeFlags::empty(),
            )
            .map_err(io::Error::from)
    }
}

/// Installs the handler (once per process) and returns the interrupter.
///
/// # Errors
///
/// The error of `sigaction` if the handler cannot be installed.
pub fn interrupter() -> io::Result<Interrupter> {
    static INSTALLED: OnceLock<Result<(), nix::errno::Errno>> = OnceLock::new();
    let installed = INSTALLED.get_or_init(|| {
        // no SA_RESTART: interrupted calls must return EINTR instead of being restarted;
        // SA_ONSTACK: run on the thread's alternate stack where one exists (wasm code may
        // run close to the end of its own stack when the signal lands)
        let action = SigAction::new(
            SigHandler::Handler(on_interrupt),
            SaFlags::SA_ONSTACK,
            SigSet::empty(),
        );
        // SAFETY: the handler is an `extern "C"` function that does nothing at all (trivially
        // async-signal-safe), installed for a signal nothing else in the process handles; the
        // previous disposition (default: ignore) is not needed back.
        unsafe { nix::sys::signal::sigaction(SIGNAL, &action) }.map(drop)
    });
    match installed {
        Ok(()) => Ok(Interrupter { _installed: () }),
        Err(e) => Err(io::Error::from(*e)),
    }
}

impl Interrupter {
    /// Interrupts `thread`: a blocking, interruptible system call it is in (or enters before
    /// the signal is delivered) returns `EINTR`. Has an effect only while the thread is
    /// between [`accept`] and [`refuse`]; otherwise the interruption waits, blocked, for
    /// [`discard_pending`] or the next [`accept`].
    ///
    /// # Errors
    ///
    /// `ESRCH` if the thread is gone.
    pub fn interrupt(&self, thread: ThreadId) -> io::Result<()> {
        // SAFETY: tgkill takes plain integers and touches no memory of ours; the thread group
        // is our own process, so at worst (a thread id reused after its thread ended) another
        // thread of this process gets a signal whose handler does nothing.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_tgkill,
                nix::unistd::getpid().as_raw(),
                thread.0,
                SIGNAL as libc::c_int,
            )
        };
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

fn signal_set() -> SigSet {
    let mut set = SigSet::empty();
    set.add(SIGNAL);
    set
}

/// Lets the calling thread be interrupted from now on (until [`refuse`]).
///
/// # Errors
///
/// The error of `pthread_sigmask`.
pub fn accept() -> io::Result<()> {
    signal_set().thread_unblock().map_err(io::Error::from)
}

/// Stops interruptions of the calling thread: one sent from now on stays pending until
/// [`discard_pending`] (or the next [`accept`]).
///
/// # Errors
///
/// The error of `pthread_sigmask`.
pub fn refuse() -> io::Result<()> {
    signal_set().thread_block().map_err(io::Error::from)
}

/// Drops an interruption of the calling thread that is pending (sent after [`refuse`]).
/// Call it after [`refuse`], once nobody will interrupt this thread any more for what it
/// was doing.
pub fn discard_pending() {
    let set = signal_set();
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    loop {
        // SAFETY: `set` and `zero` are valid for the call; a null info pointer is allowed.
        // With a zero timeout the call does not wait: it takes a pending signal of the set
        // (blocked in this thread, see `refuse`) or fails with EAGAIN.
        let got = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &zero) };
        if got < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if got < 0 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    /// A FIFO in a directory of its own (kept while the directory lives).
    fn fifo() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("dir");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        (dir, fifo)
    }

    fn open_no_retry(path: &std::path::Path) -> io::Result<std::os::fd::OwnedFd> {
        nix::fcntl::open(
            path,
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(io::Error::from)
    }

    #[test]
    fn a_blocked_fifo_open_returns_eintr_when_interrupted() {
        let (_dir, fifo) = fifo();
        let interrupter = interrupter().expect("handler");
        let (tx, rx) = mpsc::channel();
        let path = fifo.clone();
        let worker = std::thread::spawn(move || {
            accept().expect("accept");
            tx.send(ThreadId::current()).expect("send");
            let started = Instant::now();
            // no writer: this open waits until interrupted (std's File::open would retry
            // after EINTR; cap-std, which WASI uses, does not)
            let opened = open_no_retry(&path);
            refuse().expect("refuse");
            discard_pending();
            (opened.map(drop), started.elapsed())
        });
        let thread = rx.recv().expect("thread id");
        std::thread::sleep(Duration::from_millis(100));
        // the worker may not have entered open yet: interrupt until it is out
        let deadline = Instant::now() + Duration::from_secs(5);
        while !worker.is_finished() {
            assert!(Instant::now() < deadline, "the open was not interrupted");
            interrupter.interrupt(thread).expect("interrupt");
            std::thread::sleep(Duration::from_millis(5));
        }
        let (opened, waited) = worker.join().expect("worker");
        let err = opened.expect_err("nobody wrote to the fifo");
        assert_eq!(err.kind(), io::ErrorKind::Interrupted, "{err}");
        assert!(waited >= Duration::from_millis(100), "{waited:?}");
    }

    #[test]
    fn an_interruption_after_refuse_is_discarded_and_does_not_reach_later_work() {
        let interrupter = interrupter().expect("handler");
        let (tx, rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let (_dir, fifo) = fifo();
        let path = fifo.clone();
        let worker = std::thread::spawn(move || {
            accept().expect("accept");
            refuse().expect("refuse");
            tx.send(ThreadId::current()).expect("send");
            go_rx.recv().expect("go");
            discard_pending();
            // a later accept must not see the old interruption: this open would fail
            // at once with EINTR if it did; a writer opens the fifo after 200 ms
            accept().expect("accept");
            let opened = open_no_retry(&path);
            refuse().expect("refuse");
            opened.map(drop)
        });
        let thread = rx.recv().expect("thread id");
        interrupter.interrupt(thread).expect("interrupt");
        go_tx.send(()).expect("go");
        std::thread::sleep(Duration::from_millis(200));
        let _writer = std::fs::OpenOptions::new()
            .write(true)
            .open(&fifo)
            .expect("writer");
        worker
            .join()
            .expect("worker")
            .expect("the open waited for the writer instead of being interrupted");
    }

    #[test]
    fn an_alarm_interrupts_its_thread_from_its_moment_on_and_runs_the_action() {
        use std::sync::atomic::{AtomicU32, Ordering};
        struct Count(AtomicU32);
        impl OnInterrupt for Count {
            fn on_interrupt(&self) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let (_dir, fifo) = fifo();
        let interrupter = interrupter().expect("handler");
        let count = Count(AtomicU32::new(0));
        refuse().expect("refuse");
        let started = Instant::now();
        let alarm = interrupter
            .alarm(Duration::from_millis(150), Duration::from_millis(5))
            .expect("alarm");
        let opened = with_action(&count, || {
            accept().expect("accept");
            // no writer: the open waits until the alarm rings
            let opened = open_no_retry(&fifo);
            refuse().expect("refuse");
            opened
        });
        let waited = started.elapsed();
        drop(alarm);
        discard_pending();
        let err = opened.expect_err("nobody wrote to the fifo");
        assert_eq!(err.kind(), io::ErrorKind::Interrupted, "{err}");
        assert!(
            waited >= Duration::from_millis(150),
            "rang early: {waited:?}"
        );
        assert!(waited < Duration::from_secs(5), "{waited:?}");
        assert!(
            count.0.load(Ordering::Relaxed) >= 1,
            "the action did not run"
        );
        // outside `with_action` an interruption runs no action
        let before = count.0.load(Ordering::Relaxed);
        let alarm = interrupter
            .alarm(Duration::from_millis(1), Duration::from_millis(1))
            .expect("alarm");
        accept().expect("accept");
        std::thread::sleep(Duration::from_millis(20));
        refuse().expect("refuse");
        drop(alarm);
        discard_pending();
        assert_eq!(count.0.load(Ordering::Relaxed), before);
    }

    #[test]
    fn an_alarm_rung_early_from_another_thread_interrupts_at_once() {
        let (_dir, fifo) = fifo();
        let interrupter = interrupter().expect("handler");
        refuse().expect("refuse");
        let alarm = std::sync::Arc::new(
            interrupter
                .alarm(Duration::from_secs(3600), Duration::from_millis(5))
                .expect("alarm"),
        );
        let ringer = alarm.clone();
        let started = Instant::now();
        let ring = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            ringer.ring_now().expect("ring");
        });
        accept().expect("accept");
        let opened = open_no_retry(&fifo);
        refuse().expect("refuse");
        ring.join().expect("ringer");
        drop(alarm);
        discard_pending();
        let err = opened.expect_err("nobody wrote to the fifo");
        assert_eq!(err.kind(), io::ErrorKind::Interrupted, "{err}");
        assert!(started.elapsed() < Duration::from_secs(60));
    }
}
