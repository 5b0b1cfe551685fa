//! A gear's operation lock: one operation on a gear at a time, and a way for `gear stop` and
//! `gear destroy` to take it from an operation that is stuck.
//!
//! Every holder of the lock gets a [`Cancel`] for what it does under it; the node runs the
//! operation's hooks with it (and waits like the one for an app's port watch it). A
//! preempting caller ([`OpLock::preempt`]) cancels the holder's flag, and the flag of every
//! operation that takes the lock before it does, then waits for the lock as usual: a hook
//! blocked on something the gear did (a FIFO where a file should be) ends within
//! milliseconds, the operation fails as it would on any hook failure, and the preempting
//! operation proceeds. Whatever holds the lock keeps its own guarantees: an operation is
//! never interrupted between two of its steps, only its hooks and waits end early.

use std::sync::Mutex;

use gearhost_runtime::Cancel;

/// The lock of one gear's operations.
#[derive(Debug, Default)]
pub(crate) struct OpLock {
    mutex: tokio::sync::Mutex<()>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The flag of the operation holding the lock.
    current: Option<Cancel>,
    /// Callers of `preempt` still waiting for the lock, and why the last one came.
    preempting: usize,
    why: String,
}

/// Held while an operation runs on the gear.
#[derive(Debug)]
pub(crate) struct OpGuard<'a> {
    lock: &'a OpLock,
    _held: tokio::sync::MutexGuard<'a, ()>,
}

impl Drop for OpGuard<'_> {
    fn drop(&mut self) {
        // cleared before the mutex is released (the fields drop after this)
        self.lock.state().current = None;
    }
}

/// The lock is taken (by [`OpLock::try_lock`]).
#[derive(Debug)]
pub(crate) struct Busy;

/// Undoes a preempting caller's mark if it stops waiting.
struct Waiting<'a>(&'a OpLock);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.preempting = state.preempting.saturating_sub(1);
    }
}

impl OpLock {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        gearhost_sys::lock::lock(&self.state)
    }

    fn install<'a>(&'a self, held: tokio::sync::MutexGuard<'a, ()>) -> OpGuard<'a> {
        let cancel = Cancel::new();
        let mut state = self.state();
        if state.preempting > 0 {
            // someone is waiting to stop or destroy the gear: this operation gives way
            cancel.cancel(state.why.clone());
        }
        state.current = Some(cancel);
        OpGuard {
            lock: self,
            _held: held,
        }
    }

    /// Wait for the lock.
    pub(crate) async fn lock(&self) -> OpGuard<'_> {
        let held = self.mutex.lock().await;
        self.install(held)
    }

    /// Take the lock if it is free.
    pub(crate) fn try_lock(&self) -> Result<OpGuard<'_>, Busy> {
        let held = self.mutex.try_lock().map_err(|_| Busy)?;
        Ok(self.install(held))
    }

    /// Take the lock from whatever holds it: cancel the holder's hooks and waits (and those
    /// of operations queued before this one), saying `why`, then wait for the lock.
    pub(crate) async fn preempt(&self, why: &str) -> OpGuard<'_> {
        let waiting = {
            let mut state = self.state();
            state.preempting += 1;
            why.clone_into(&mut state.why);
            if let Some(current) = &state.current {
                current.cancel(why);
            }
            Waiting(self)
        };
        let held = self.mutex.lock().await;
        drop(waiting);
        self.install(held)
    }

    /// The cancel flag of the operation holding the lock (a fresh one when none does).
    pub(crate) fn cancel(&self) -> Cancel {
        self.state().current.clone().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn preempting_cancels_the_holder_and_those_queued_before_it() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio");
        rt.block_on(async {
            let lock = Arc::new(OpLock::default());
            let held = lock.lock().await;
            let holder = lock.cancel();
            assert!(!holder.is_cancelled());
            // an ordinary operation queues behind the holder
            let queued = {
                let lock = lock.clone();
                tokio::spawn(async move {
                    let _g = lock.lock().await;
                    lock.cancel()
                })
            };
            tokio::time::sleep(Duration::from_millis(10)).await;
            let stopper = {
                let lock = lock.clone();
                tokio::spawn(async move {
                    let _g = lock.preempt("a stop came").await;
                    lock.cancel()
                })
            };
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert!(holder.is_cancelled());
            assert_eq!(holder.reason().as_deref(), Some("a stop came"));
            drop(held);
            let queued = queued.await.expect("queued");
            assert!(
                queued.is_cancelled(),
                "the queued operation did not give way"
            );
            let stopper = stopper.await.expect("stopper");
            assert!(!stopper.is_cancelled(), "the stop itself was cancelled");
            // and later operations run normally again
            let _g = lock.lock().await;
            assert!(!lock.cancel().is_cancelled());
        });
    }

    #[test]
    fn a_preempt_that_gives_up_waiting_leaves_no_mark() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio");
        rt.block_on(async {
            let lock = OpLock::default();
            let held = lock.lock().await;
            let gave_up =
                tokio::time::timeout(Duration::from_millis(10), lock.preempt("stop")).await;
            assert!(gave_up.is_err());
            drop(held);
            let _g = lock.lock().await;
            assert!(!lock.cancel().is_cancelled());
            assert!(lock.try_lock().is_err());
        });
    }
}
