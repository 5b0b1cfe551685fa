//! `clone3` with `CLONE_INTO_CGROUP` (Linux 5.7): a fork whose child starts in a given cgroup2
//! directory, so no process is ever migrated into it (a migration by `cgroup.procs` takes the
//! kernel's global threadgroup lock for writing, whose write side may wait for an RCU grace
//! period).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::check;

/// `CLONE_INTO_CGROUP` from `<linux/sched.h>`.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` as of Linux 5.7 (`CLONE_ARGS_SIZE_VER2`, 88 bytes): every field a
/// 64-bit value, pointers passed as integers.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Which side of [`fork_into_cgroup`] the caller is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Forked {
    /// The new process.
    Child,
    /// The caller, with the child's pid (in the caller's pid namespace).
    Parent(libc::pid_t),
}

/// Forks the calling process with its child placed in the cgroup2 directory `cgroup` (opened
/// `O_RDONLY | O_DIRECTORY` or `O_PATH`) from its first instruction: `clone3` with
/// `CLONE_INTO_CGROUP`, no shared memory, `SIGCHLD` to the parent at the child's end. Both
/// sides return, as from `fork`.
///
/// [`into_cgroup_unsupported`] tells the errors of a kernel that cannot do it from the others.
///
/// # Safety
///
/// The same contract as `fork`: in a process with more than one thread, the child may only
/// call async-signal-safe functions until it executes. The child's copy of libc's record of
/// the calling thread keeps the parent's thread id (libc's own `fork` refreshes it; a raw
/// system call cannot), which glibc since 2.25 no longer takes for the process id and reads
/// only for the owner of error-checking, recursive and priority-inheriting pthread mutexes: the
/// child must not use those.
pub(crate) unsafe fn fork_into_cgroup(cgroup: BorrowedFd<'_>) -> io::Result<Forked> {
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: `args` lives for the call and its size is passed with it. Without CLONE_VM and
    // with no stack, clone3 behaves as fork: the child gets a copy-on-write image and returns 0
    // on the same stack; the caller keeps the contract of fork (see above).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match check(ret)? {
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid as libc::pid_t)),
    }
}

/// Whether `err` from [`fork_into_cgroup`] means this kernel cannot start a child in a cgroup
/// at all: no `clone3` (`ENOSYS`, before 5.3), a `clone_args` larger than it knows (`E2BIG`,
/// before 5.7) or an unknown flag (`EINVAL`). The caller then joins the cgroup and forks.
pub(crate) fn into_cgroup_unsupported(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ENOSYS | libc::E2BIG | libc::EINVAL)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Read;
    use std::os::fd::AsFd;
    use std::path::{Path, PathBuf};

    /// A cgroup made for one test below a cgroup2 mount, removed when dropped.
    struct TestGroup(PathBuf);

    impl Drop for TestGroup {
        fn drop(&mut self) {
            // rmdir fails with EBUSY while an exited child is still being released
            for _ in 0..500 {
                match std::fs::remove_dir(&self.0) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        std::thread::sleep(std::time::Duration::from_millis(2));
                    }
                    _ => return,
                }
            }
        }
    }

    /// A fresh cgroup below `root`, a cgroup2 mount.
    fn make_group(root: &Path, name: &str) -> TestGroup {
        let dir = root.join(format!("gearhost-clone3-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir)
            .unwrap_or_else(|e| panic!("create the test cgroup {}: {e}", dir.display()));
        TestGroup(dir)
    }

    /// The cgroup2 line (`0::<path>`) of `text`, a `/proc/<pid>/cgroup`.
    fn v2_line(text: &str) -> Option<&str> {
        text.lines().find(|l| l.starts_with("0::"))
    }

    /// Runs in the child: reads `/proc/self/cgroup` before anything else, writes it to
    /// `report`, then waits for end of file on `hold` (the parent looks at this process from
    /// outside meanwhile) and exits, 0 when the read worked.
    ///
    /// # Safety
    ///
    /// Only async-signal-safe calls (open, read, write, close, _exit) on this stack: the test
    /// harness runs other threads.
    unsafe fn report_own_cgroup(report: i32, hold: i32) -> ! {
        // SAFETY: see above; the path is a static C string, the buffers live on this stack.
        unsafe {
            let fd = libc::open(c"/proc/self/cgroup".as_ptr(), libc::O_RDONLY);
            let mut buf = [0u8; 4096];
            let n = if fd < 0 {
                -1
            } else {
                libc::read(fd, buf.as_mut_ptr().cast(), buf.len())
            };
            if n > 0 {
                libc::write(report, buf.as_ptr().cast(), n as usize);
            }
            libc::close(report);
            let mut byte = 0u8;
            while libc::read(hold, (&mut byte as *mut u8).cast(), 1) > 0 {}
            libc::_exit(if n > 0 { 0 } else { 1 })
        }
    }

    #[test]
    fn the_child_starts_in_the_cgroup_it_is_cloned_into() {
        if !crate::testing::privileged("create a cgroup and clone into it") {
            return;
        }
        // the v2 root on a pure v2 machine, the empty `unified` hierarchy of a hybrid one
        let root = crate::cgroup::detect().ok().and_then(|m| m.v2).expect(
            "this test needs a cgroup2 mount (the v2 root, or /sys/fs/cgroup/unified of a hybrid layout)",
        );
        let group = make_group(&root, "child");
        let relative = format!(
            "/{}",
            group
                .0
                .strip_prefix(&root)
                .expect("made below the root")
                .display()
        );
        let dir = File::open(&group.0).expect("open the test cgroup");
        let (report_read, report_write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
        let (hold_read, hold_write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
        let (report_raw, hold_raw, hold_write_raw) = (
            report_write.as_raw_fd(),
            hold_read.as_raw_fd(),
            hold_write.as_raw_fd(),
        );

        // SAFETY: the child only runs `report_own_cgroup` (and close), which keeps to
        // async-signal-safe calls as this multi-threaded test process requires.
        let forked = unsafe { fork_into_cgroup(dir.as_fd()) }.expect("clone3 into the cgroup");
        let child = match forked {
            Forked::Child => {
                // SAFETY: close is async-signal-safe; the child's copy of the holding pipe's
                // writing end must go, or it would wait for itself.
                unsafe { libc::close(hold_write_raw) };
                // SAFETY: async-signal-safe only, see the function.
                unsafe { report_own_cgroup(report_raw, hold_raw) }
            }
            Forked::Parent(pid) => pid,
        };
        drop((report_write, hold_read));
        let mut seen = String::new();
        File::from(report_read)
            .read_to_string(&mut seen)
            .expect("read what the child saw");
        // from outside, while the child waits: the kernel's view of it and the cgroup's list
        let outside = std::fs::read_to_string(format!("/proc/{child}/cgroup"))
            .expect("read the child's cgroup from outside");
        let procs = std::fs::read_to_string(group.0.join("cgroup.procs"))
            .expect("read the test cgroup's processes");
        drop(hold_write);
        let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child), None)
            .expect("reap the child");
        assert_eq!(
            status,
            nix::sys::wait::WaitStatus::Exited(nix::unistd::Pid::from_raw(child), 0),
            "the child could not read its /proc/self/cgroup"
        );
        let want = format!("0::{relative}");
        assert_eq!(
            v2_line(&seen),
            Some(want.as_str()),
            "the child's first look at /proc/self/cgroup: {seen}"
        );
        assert_eq!(v2_line(&outside), Some(want.as_str()), "{outside}");
        assert_eq!(
            procs.lines().map(str::trim).collect::<Vec<_>>(),
            vec![child.to_string().as_str()],
            "{} lists {procs:?}",
            group.0.display()
        );
        // the caller itself stayed where it was
        let own = std::fs::read_to_string("/proc/self/cgroup").expect("own cgroups");
        assert_ne!(v2_line(&own), Some(want.as_str()), "{own}");
    }

    #[test]
    fn a_directory_that_is_no_cgroup_is_refused() {
        if !crate::testing::privileged("clone3 with CLONE_INTO_CGROUP") {
            return;
        }
        let tmp = File::open(std::env::temp_dir()).expect("open the temporary directory");
        // SAFETY: the kernel refuses the descriptor before it makes a child; should one be
        // made anyway, it leaves at once through the async-signal-safe _exit.
        match unsafe { fork_into_cgroup(tmp.as_fd()) } {
            Ok(Forked::Child) => {
                // SAFETY: _exit is async-signal-safe.
                unsafe { libc::_exit(0) }
            }
            Ok(Forked::Parent(pid)) => {
                let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
                panic!("clone3 accepted a directory that is no cgroup");
            }
            Err(e) => assert!(
                e.raw_os_error() == Some(libc::EBADF) || into_cgroup_unsupported(&e),
                "a directory that is no cgroup2 directory is refused with EBADF, got {e}"
            ),
        }
    }

    #[test]
    fn the_errors_of_older_kernels_are_told_apart() {
        for errno in [libc::ENOSYS, libc::E2BIG, libc::EINVAL] {
            let err = io::Error::from_raw_os_error(errno);
            assert!(into_cgroup_unsupported(&err), "{err}");
        }
        for errno in [
            libc::EBADF,
            libc::EPERM,
            libc::EACCES,
            libc::ENOENT,
            libc::ENODEV,
        ] {
            let err = io::Error::from_raw_os_error(errno);
            assert!(!into_cgroup_unsupported(&err), "{err}");
        }
    }
}
