//! Taking back a gear process that an earlier node started detached (`detached` and
//! `keep_output` in the spec): its init outlives the node that cloned it and keeps a copy of
//! the reading end of each output pipe. A later node checks that the pid still is that init
//! (start time, cgroup leaf, executable), holds it by a pidfd, and takes copies of the pipes
//! with `pidfd_getfd`. On cgroup v2 an init joins its leaf only after its command started
//! there (see `helper::join`): a node that restarts in that moment waits for it, briefly.
//!
//! `pidfd_getfd` needs ptrace access (`PTRACE_MODE_ATTACH_REALCREDS`) to the init, which runs
//! as the gear's user and is not dumpable: the uid check fails, and both that and the
//! dumpable check are passed by `CAP_SYS_PTRACE` in the init's user namespace, which a root
//! node holds. Yama (`ptrace_scope` 1 and 2) lets `CAP_SYS_PTRACE` through too, and at 3 it
//! refuses every attach: then adoption fails and the node starts the gear again. Landlock,
//! which confines the init, only limits what the init may trace, not who traces it. Under
//! SELinux the node's domain needs `process ptrace` over the gear's domain.
//!
//! The adopted init is usually not the node's child: its exit is seen on the pidfd, but its
//! status is not (its new parent reaps it). After `gear node restart` (the node re-executes
//! itself, its pid unchanged) the inits it cloned are still its children: an ended one is
//! reaped through its pidfd.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::cgroup::{self, GearCgroup, TeardownReport};
use crate::error::SandboxError;
use crate::launch::{INIT_NAME, Signal};
use crate::protocol::{KEPT_STDERR_FD, KEPT_STDOUT_FD};
use crate::spec::CgroupPlacement;
use crate::sys;

/// When process `pid` started, in clock ticks after boot (field 22 of `/proc/<pid>/stat`):
/// with the pid, it names one process, whatever reuses the pid later.
pub fn start_time(pid: u32) -> std::io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // the command name (field 2) is in parentheses and may hold anything: count after it
    let rest = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| std::io::Error::other("unexpected /proc stat format"))?;
    // `rest` starts with field 3 (state); the start time is field 22
    rest.split_whitespace()
        .nth(19)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| std::io::Error::other("unexpected /proc stat format"))
}

/// A gear process started by an earlier node, held again.
#[derive(Debug)]
pub struct Adopted {
    pid: u32,
    pidfd: OwnedFd,
    cgroup: GearCgroup,
    stdout: Option<File>,
    stderr: Option<File>,
    ended: bool,
}

/// Whether the process behind `pidfd` has exited (its pidfd is readable).
fn exited(pidfd: BorrowedFd<'_>, wait: Duration) -> bool {
    let timeout =
        PollTimeout::try_from(wait.as_millis().min(60_000) as u32).unwrap_or(PollTimeout::ZERO);
    let mut fds = [PollFd::new(pidfd, PollFlags::POLLIN)];
    match poll(&mut fds, timeout) {
        Ok(n) => n > 0,
        Err(_) => false,
    }
}

/// How long adoption waits for a v2 init to follow its command into the leaf.
const FOLLOW_WAIT: Duration = Duration::from_secs(1);

/// Checks that init `pid` is in the leaf of `placement`. On v2 an init is cloned outside it and
/// follows its command in right after the start (see `helper::join`): a node that restarted in
/// that moment waits for it, up to [`FOLLOW_WAIT`], before it refuses.
fn in_leaf(
    pid: u32,
    pidfd: BorrowedFd<'_>,
    placement: &CgroupPlacement,
    layout: cgroup::CgroupLayout,
) -> Result<(), String> {
    let want = format!("/{}/{}", placement.subtree, placement.leaf);
    let deadline = Instant::now() + FOLLOW_WAIT;
    loop {
        let groups = cgroup::cgroups_of(pid).map_err(|e| e.to_string())?;
        if groups.iter().any(|g| g.path.ends_with(&want)) {
            return Ok(());
        }
        let waiting = layout == cgroup::CgroupLayout::V2 && Instant::now() < deadline;
        if waiting && exited(pidfd, Duration::from_millis(5)) {
            return Err(format!("pid {pid} ended while it was being checked"));
        }
        if !waiting {
            let late = if layout == cgroup::CgroupLayout::V2 {
                format!(
                    "; an init follows its command into the leaf right after it starts, and this one did not within {FOLLOW_WAIT:?}"
                )
            } else {
                String::new()
            };
            return Err(format!(
                "pid {pid} is not in its recorded cgroup {want} (it is in {}){late}",
                groups
                    .iter()
                    .map(|g| g.path.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
}

impl Adopted {
    /// Takes back the gear init `pid`, which started at `start_time` (see [`start_time`]) in
    /// the cgroup of `placement`, with the output pipes it keeps. The error says which check
    /// failed (the process is gone, the pid belongs to another process, the pipes cannot be
    /// taken); nothing is changed then.
    pub fn adopt(
        pid: u32,
        start_time: u64,
        placement: &CgroupPlacement,
    ) -> Result<Adopted, String> {
        let pidfd = sys::pidfd_open(pid as libc::pid_t).map_err(|e| {
            if e.raw_os_error() == Some(libc::ESRCH) {
                format!("pid {pid} is gone")
            } else {
                format!("cannot open a pidfd for pid {pid}: {e}")
            }
        })?;
        // an init that ended may wait for its new parent to reap it
        if exited(pidfd.as_fd(), Duration::ZERO) {
            return Err(format!("pid {pid} is gone (it has ended)"));
        }
        // the pidfd holds the pid: while the process lives, /proc/<pid> is that process
        let started = self::start_time(pid).map_err(|e| format!("cannot read pid {pid}: {e}"))?;
        if started != start_time {
            return Err(format!(
                "pid {pid} is another process now (it started at tick {started}, the recorded one at {start_time})"
            ));
        }
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                // its memory is gone already: it is on its way out
                format!("pid {pid} is gone (it is ending)")
            } else {
                format!("cannot read the executable of pid {pid}: {e}")
            }
        })?;
        let exe_name = exe
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // a binary replaced since (an upgrade) reads as "gearhost-init (deleted)"
        if exe_name.split(' ').next() != Some(INIT_NAME) {
            return Err(format!("pid {pid} runs {}, not {INIT_NAME}", exe.display()));
        }
        let mounts = cgroup::detect_kept().map_err(|e| e.to_string())?;
        in_leaf(pid, pidfd.as_fd(), placement, mounts.layout)?;
        let take = |at: i32, what: &str| -> Result<File, String> {
            let fd = sys::pidfd_getfd(pidfd.as_fd(), at).map_err(|e| {
                format!("cannot take the {what} pipe (descriptor {at}) from pid {pid}: {e}")
            })?;
            let stat = nix::sys::stat::fstat(fd.as_fd())
                .map_err(|e| format!("cannot inspect the {what} pipe of pid {pid}: {e}"))?;
            if stat.st_mode & libc::S_IFMT != libc::S_IFIFO {
                return Err(format!(
                    "descriptor {at} of pid {pid} is not the {what} pipe"
                ));
            }
            Ok(File::from(fd))
        };
        let stdout = take(KEPT_STDOUT_FD, "stdout")?;
        let stderr = take(KEPT_STDERR_FD, "stderr")?;
        if exited(pidfd.as_fd(), Duration::ZERO) {
            return Err(format!("pid {pid} ended while it was being checked"));
        }
        Ok(Adopted {
            pid,
            pidfd,
            cgroup: GearCgroup::existing(&mounts, placement),
            stdout: Some(stdout),
            stderr: Some(stderr),
            ended: false,
        })
    }

    /// The host pid of the gear's init.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A pidfd of the gear's init: it becomes readable when the init exits.
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// The reading end of the command's stdout (a copy of the one the init keeps).
    pub fn take_stdout(&mut self) -> Option<File> {
        self.stdout.take()
    }

    /// The reading end of the command's stderr.
    pub fn take_stderr(&mut self) -> Option<File> {
        self.stderr.take()
    }

    /// Whether the init has exited (without blocking). Its status is not known here.
    pub fn has_ended(&mut self) -> bool {
        if !self.ended {
            self.ended = exited(self.pidfd.as_fd(), Duration::ZERO);
            if self.ended {
                self.reap();
            }
        }
        self.ended
    }

    /// Reaps the ended init if it is this process's child: a node that re-executed itself
    /// (`gear node restart`) keeps its pid, so the inits it cloned before are still its
    /// children, and nothing else would collect them. Another parent's child is left to it.
    fn reap(&self) {
        use nix::sys::wait::{Id, WaitPidFlag, waitid};
        let _ = waitid(
            Id::PIDFd(self.pidfd.as_fd()),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG,
        );
    }

    /// Sends `signal` to the init (through the pidfd, so never to a reused pid).
    pub fn kill(&mut self, signal: Signal) -> Result<(), SandboxError> {
        if self.has_ended() {
            return Ok(());
        }
        sys::pidfd_send_signal(self.pidfd.as_fd(), signal.raw()).map_err(|source| {
            SandboxError::Signal {
                pid: self.pid,
                source,
            }
        })
    }

    /// Kills whatever is left of the process, waits (up to 10 s) for its init to exit and
    /// removes its cgroup on every hierarchy.
    pub fn teardown(mut self) -> Result<TeardownReport, SandboxError> {
        if !self.has_ended() {
            let _ = sys::pidfd_send_signal(self.pidfd.as_fd(), libc::SIGKILL);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !exited(self.pidfd.as_fd(), Duration::from_millis(100))
                && Instant::now() < deadline
            {}
            self.reap();
        }
        Ok(self.cgroup.teardown(Duration::from_secs(10))?)
    }
}

/// Kills whatever is in the cgroup of `placement` and removes it (a recorded process that is
/// not taken back, or a start of an earlier node nobody recorded).
pub fn discard(placement: &CgroupPlacement) -> Result<TeardownReport, SandboxError> {
    let mounts = cgroup::detect_kept()?;
    Ok(GearCgroup::existing(&mounts, placement).teardown(Duration::from_secs(10))?)
}
