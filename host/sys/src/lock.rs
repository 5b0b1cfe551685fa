//! Locking that survives a poisoned lock. A thread that panicked while holding one of the
//! node's locks has already been reported; the data it guarded is a plain value that every
//! writer leaves consistent between statements, so the others carry on with it instead of
//! panicking in turn.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `m`, taking the guard of a poisoned mutex as it is.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Locks `l` for reading, taking the guard of a poisoned lock as it is.
pub fn read<T: ?Sized>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

/// Locks `l` for writing, taking the guard of a poisoned lock as it is.
pub fn write<T: ?Sized>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Runs `f` with a clone of `shared` on a thread that panics afterwards, poisoning
    /// whatever lock `f` still holds.
    fn panic_holding<L: Send + Sync + 'static>(shared: &Arc<L>, f: fn(&L)) {
        let shared = Arc::clone(shared);
        let joined = std::thread::spawn(move || f(&shared)).join();
        assert!(joined.is_err(), "the thread panicked");
    }

    #[test]
    fn a_poisoned_mutex_still_hands_out_its_value() {
        let m = Arc::new(Mutex::new(1));
        panic_holding(&m, |m| {
            let mut g = lock(m);
            *g = 2;
            panic!("poisons the mutex");
        });
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 3);
    }

    #[test]
    fn a_poisoned_rwlock_still_reads_and_writes() {
        let l = Arc::new(RwLock::new(vec![1]));
        panic_holding(&l, |l| {
            write(l).push(2);
            let _held = write(l);
            panic!("poisons the lock");
        });
        assert!(l.is_poisoned());
        write(&l).push(3);
        assert_eq!(*read(&l), vec![1, 2, 3]);
    }
}
