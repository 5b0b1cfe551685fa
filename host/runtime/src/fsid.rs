//! The file-system identity a hook's file operations run under.
//!
//! The node runs as root, and WASI performs a hook's file operations in the
//! node's process. Left alone, every file a hook creates in a gear's home
//! would belong to root, and the gear's own processes could not change it
//! (an nginx configuration directory the gear's nginx must write into, a
//! virtualenv the gear's pip fills ...). Worse, the hook could open what the
//! gear's user cannot.
//!
//! So while a hook's instance runs, the thread that polls it takes the
//! gear's file-system uid and gid (`setfsuid`/`setfsgid`, which are
//! per-thread and change nothing else): files it creates belong to the gear,
//! and the kernel checks its access as the gear's user, with root's file
//! capabilities dropped for the duration. WASI runs directory operations
//! (open, create, rename, remove) on the polling thread (the runtime enables
//! `allow_blocking_current_thread`), so they all happen under that identity;
//! reads and writes on files already open may run on other threads, and do
//! not depend on it. Whenever the hook calls back into the node (logs,
//! environment, exec, spawn ...), [`AsNode`] switches the thread back to the
//! node's own identity for that call only.
//!
//! The polling thread is the hook's own: a thread of the host runtime's
//! blocking pool, never one of its workers (see
//! [`Cartridge::call_cancellable`](crate::Cartridge::call_cancellable)). A
//! file operation that waits on what the gear did (a FIFO, a leased file)
//! blocks that thread only, and the runtime's watchdog interrupts it when the
//! call is due. Each poll takes the identity and gives it back, so the thread
//! leaves every poll, and the call, as the node.
//!
//! A thread inherits the file-system identity of the thread that creates it,
//! and WASI may start a blocking-pool thread from inside a hook's poll. A
//! host that gives hooks a [`FileOwner`] must therefore build its tokio
//! runtime with [`reset_thread`] as `on_thread_start`, so that every new
//! thread starts as the process itself.

// the guards below serve hook calls, which exist with the `engine` feature only
#![cfg_attr(not(feature = "engine"), allow(dead_code))]

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use nix::unistd::{Gid, Uid, setfsgid, setfsuid};

/// Whose files a hook's file operations create and may touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileOwner {
    /// File-system uid.
    pub uid: u32,
    /// File-system gid.
    pub gid: u32,
}

thread_local! {
    /// The identity this thread runs under while it polls a hook, if any,
    /// and the node's identity to return to.
    static ACTIVE: Cell<Option<(FileOwner, FileOwner)>> = const { Cell::new(None) };
}

/// Switch this thread's file-system identity; returns the previous one.
fn switch(to: FileOwner) -> FileOwner {
    let gid = setfsgid(Gid::from_raw(to.gid));
    let uid = setfsuid(Uid::from_raw(to.uid));
    FileOwner {
        uid: uid.as_raw(),
        gid: gid.as_raw(),
    }
}

/// Give the calling thread the process's own file-system identity (its
/// effective uid and gid). For `on_thread_start` of the runtime that polls
/// hooks: see the module's documentation.
pub fn reset_thread() {
    switch(FileOwner {
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
    });
    ACTIVE.with(|a| a.set(None));
}

/// Whether this process can take `owner`'s file identity: switches, reads
/// the identity back, and switches back.
///
/// `setfsuid` reports failure only by not changing anything, so the check
/// is made explicitly before a hook relies on it.
pub fn can_take(owner: FileOwner) -> bool {
    let before = switch(owner);
    // setting the same value again returns the value now in force
    let now = switch(owner);
    switch(before);
    now == owner
}

/// Restores the identity a guard was created over, even on unwind.
struct Restore {
    previous: FileOwner,
    active: Option<(FileOwner, FileOwner)>,
}

impl Drop for Restore {
    fn drop(&mut self) {
        switch(self.previous);
        ACTIVE.with(|a| a.set(self.active));
    }
}

/// A future polled under a gear's file identity (a hook's instance).
pub(crate) struct AsOwner<F> {
    owner: Option<FileOwner>,
    inner: Pin<Box<F>>,
}

impl<F: Future> AsOwner<F> {
    /// Poll `inner` as `owner`; with `None`, as the node itself.
    pub(crate) fn new(owner: Option<FileOwner>, inner: F) -> Self {
        Self {
            owner,
            inner: Box::pin(inner),
        }
    }
}

impl<F: Future> Future for AsOwner<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let Some(owner) = self.owner else {
            return self.inner.as_mut().poll(cx);
        };
        let previous = switch(owner);
        let _restore = Restore {
            previous,
            active: ACTIVE.with(|a| a.replace(Some((owner, previous)))),
        };
        self.inner.as_mut().poll(cx)
    }
}

/// Run `f` as the node (when called from inside a hook's poll).
pub(crate) fn as_node<T>(f: impl FnOnce() -> T) -> T {
    match ACTIVE.with(Cell::get) {
        None => f(),
        Some((_, node)) => {
            let previous = switch(node);
            let _restore = Restore {
                previous,
                active: ACTIVE.with(|a| a.replace(None)),
            };
            f()
        }
    }
}

/// A future polled as the node, even when a hook's poll drives it (a host
/// call such as exec awaiting a process).
pub(crate) struct AsNode<F> {
    inner: Pin<Box<F>>,
}

impl<F: Future> AsNode<F> {
    /// Wrap `inner`.
    pub(crate) fn new(inner: F) -> Self {
        Self {
            inner: Box::pin(inner),
        }
    }
}

impl<F: Future> Future for AsNode<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let inner = self.inner.as_mut();
        as_node(|| inner.poll(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    fn current() -> FileOwner {
        // setting -1 (an invalid id) changes nothing and returns the current one
        let now = switch(FileOwner {
            uid: u32::MAX,
            gid: u32::MAX,
        });
        switch(now);
        now
    }

    #[test]
    fn a_hook_poll_creates_files_as_the_owner_and_host_calls_run_as_the_node() {
        let owner = FileOwner {
            uid: 64999,
            gid: 64999,
        };
        if !is_root() {
            // without CAP_SETUID the identity cannot be taken, and the check says so
            assert!(!can_take(owner));
            return;
        }
        assert!(can_take(owner));
        let dir = tempfile::tempdir().expect("dir");
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .expect("chmod");
        let root_only = tempfile::tempdir().expect("dir");
        std::fs::set_permissions(
            root_only.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .expect("chmod");
        let gear_file = dir.path().join("by-hook");
        let node_file = dir.path().join("by-node");
        let denied = root_only.path().join("x");
        let fut = AsOwner::new(Some(owner), async {
            std::fs::write(&gear_file, "hook").expect("the owner can write here");
            // the owner cannot write where only root may
            assert!(std::fs::write(&denied, "no").is_err());
            AsNode::new(async { std::fs::write(&node_file, "node").expect("node write") }).await;
            as_node(|| std::fs::write(&denied, "yes").expect("the node can"));
        });
        futures_lite_block_on(fut);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&gear_file).expect("meta").uid(), 64999);
        assert_eq!(std::fs::metadata(&node_file).expect("meta").uid(), 0);
        assert_eq!(std::fs::metadata(&denied).expect("meta").uid(), 0);
        // and the thread is itself again
        assert_eq!(current(), FileOwner { uid: 0, gid: 0 });
    }

    #[test]
    fn a_thread_started_under_a_hook_identity_is_reset_by_reset_thread() {
        if !is_root() {
            return;
        }
        let owner = FileOwner {
            uid: 64998,
            gid: 64998,
        };
        let inherited = futures_lite_block_on(AsOwner::new(Some(owner), async {
            std::thread::spawn(|| {
                let inherited = current();
                reset_thread();
                (inherited, current())
            })
            .join()
            .expect("thread")
        }));
        assert_eq!(inherited.0, owner, "threads inherit the identity");
        assert_eq!(inherited.1, FileOwner { uid: 0, gid: 0 });
    }

    /// Poll a future that never waits to completion on this thread.
    fn futures_lite_block_on<F: Future>(fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        loop {
            if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }
}
