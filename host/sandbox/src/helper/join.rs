//! How the gear's processes get into its cgroup without a migration on the start's path.
//!
//! Moving a process into a cgroup by writing `cgroup.procs` takes the kernel's global
//! threadgroup lock for writing, whose write side waits for an RCU grace period when no
//! migration happened just before: 10-28 ms on a start measured on a quiet machine, most of a
//! start. So:
//!
//! - on v1 (and hybrid) layouts the one-thread helper moves only itself, through `tasks`, before
//!   it forks: the kernel moves the calling thread alone without that lock ([`join_cgroup`]);
//! - on v2, which has no `tasks` file, the helper does not join before the fork: it clones the
//!   command straight into the leaf ([`fork_command`], `clone3` with `CLONE_INTO_CGROUP`), and
//!   follows it there itself ([`follow`]) once the node has the command's report. The command
//!   makes its own cgroup namespace ([`own_namespace`]); the helper's is made after it joined,
//!   so both are rooted at the leaf, as on v1. A kernel without `CLONE_INTO_CGROUP` (before
//!   5.7) gets the join right before the fork instead.
//!
//! Between the fork and [`follow`] the helper sits in the cgroup it was cloned in (the node's),
//! never anywhere the gear could reach. The races with the node's side: a leaf already gone
//! when the helper follows (the command ended and the node removed the leaf) is left alone; a
//! helper killed by the node (through pid 1's pidfd, which ends the whole pid namespace before
//! the node's wait returns) never follows afterwards; and when a node empties the leaf by its
//! processes alone (`GearCgroup::teardown`), a helper that joins while it looks is killed in
//! the next round, and one that joins after the last look finds its command killed, reaps it
//! and exits, which lets the removal's retries (`EBUSY`) through.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, openat};
use nix::sched::{CloneFlags, unshare};
use nix::sys::stat::Mode;
use nix::unistd::{ForkResult, Pid, fork};

use super::fail;
use crate::protocol::SetupFailure;
use crate::sys;

/// The gear's leaf on a cgroup v2 layout, by descriptor.
pub(super) struct Leaf {
    dir: OwnedFd,
    /// The leaf's path, for messages.
    shown: PathBuf,
    /// Whether this process is in the leaf already (a kernel without `CLONE_INTO_CGROUP`).
    joined: bool,
}

impl Leaf {
    /// The leaf the node sent (`procs` names its `cgroup.procs` for messages), if it sent one.
    pub(super) fn new(dir: Option<OwnedFd>, procs: &[PathBuf]) -> Option<Leaf> {
        let shown = procs
            .first()
            .and_then(|p| p.parent())
            .map_or_else(|| PathBuf::from("the gear's cgroup"), Path::to_path_buf);
        dir.map(|dir| Leaf {
            dir,
            shown,
            joined: false,
        })
    }

    /// Moves this process into the leaf (`0` into its `cgroup.procs`, found from the
    /// descriptor, so it works after `pivot_root` too).
    fn join(&self) -> nix::Result<()> {
        let procs = openat(
            self.dir.as_fd(),
            "cgroup.procs",
            OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        nix::unistd::write(&procs, b"0").map(drop)
    }

    fn failure(&self, step: &str, err: nix::Error) -> SetupFailure {
        fail(step, format!("move into {}", self.shown.display()), err)
    }
}

/// Forks the gear's command: into `leaf` from its first instruction when there is one and the
/// kernel can (`CLONE_INTO_CGROUP`), after joining it when the kernel cannot, and as a plain
/// fork otherwise (the helper joined its v1 cgroups before).
///
/// # Safety
///
/// The contract of `fork`: the helper has one thread, so the child may run any code.
pub(super) unsafe fn fork_command(leaf: Option<&mut Leaf>) -> Result<ForkResult, SetupFailure> {
    let forked = |e: nix::Error| fail("fork", "fork the gear command", e);
    let Some(leaf) = leaf else {
        // SAFETY: the caller's contract.
        return unsafe { fork() }.map_err(forked);
    };
    // SAFETY: the caller's contract; the child returns here like from fork and, with one
    // thread in the helper, may run normal code. It uses no error-checking, recursive or
    // priority-inheriting pthread mutex (Rust's own locks are futexes of their own).
    match unsafe { sys::fork_into_cgroup(leaf.dir.as_fd()) } {
        Ok(sys::Forked::Child) => Ok(ForkResult::Child),
        Ok(sys::Forked::Parent(pid)) => Ok(ForkResult::Parent {
            child: Pid::from_raw(pid),
        }),
        Err(e) if sys::into_cgroup_unsupported(&e) => {
            leaf.join().map_err(|e| leaf.failure("join_cgroup", e))?;
            leaf.joined = true;
            // SAFETY: the caller's contract.
            unsafe { fork() }.map_err(forked)
        }
        Err(e) => Err(SetupFailure {
            step: "fork".into(),
            detail: format!(
                "start the gear command in {}: {e}; check that it is a cgroup2 directory",
                leaf.shown.display()
            ),
            errno: e.raw_os_error(),
        }),
    }
}

/// In the command, before anything else: a cgroup namespace of its own, rooted at the leaf it
/// was started in (the gear's `/proc/self/cgroup` reads `0::/`). Before seccomp, which refuses
/// `unshare`, and while the command still has the privilege to make one.
pub(super) fn own_namespace(leaf: Option<Leaf>) -> Result<(), SetupFailure> {
    let Some(leaf) = leaf else {
        // v1: the helper made it after joining, and the command shares it
        return Ok(());
    };
    // the command has no use for the leaf's descriptor
    drop(leaf);
    unshare(CloneFlags::CLONE_NEWCGROUP)
        .map_err(|e| fail("unshare", "create the gear's cgroup namespace", e))
}

/// In pid 1 after the fork, once the node has the command's report: follows the command into
/// the leaf, so pid 1 is in the gear's cgroup as on v1 (adoption checks it; the freezer and
/// the memory accounting count it), then makes its cgroup namespace there. A leaf that is gone
/// already (the command ended and the node removed it) is left alone.
pub(super) fn follow(leaf: Leaf) -> Result<(), SetupFailure> {
    if !leaf.joined {
        match leaf.join() {
            Ok(()) => {}
            // ENOENT: the leaf was removed before the open; ENODEV: between open and write
            Err(nix::Error::ENOENT | nix::Error::ENODEV) => return Ok(()),
            Err(e) => return Err(leaf.failure("join_cgroup", e)),
        }
    }
    unshare(CloneFlags::CLONE_NEWCGROUP)
        .map_err(|e| fail("unshare", "create the init's cgroup namespace", e))
}

/// Moves this process into the gear's cgroup on every hierarchy (v1 and hybrid layouts).
///
/// On a v1 hierarchy a helper that has one thread writes itself into `tasks` instead of
/// `cgroup.procs`: with one thread, moving the calling thread moves the whole process, and a
/// move of the caller alone is the one the kernel makes without the global threadgroup lock,
/// whose write side waits for an RCU grace period when no migration happened just before
/// (10-28 ms per start measured on a quiet machine, most of a cold start). The result is the
/// same membership; everything the gear forks later inherits it. With more than one thread, or
/// when the count cannot be read, every hierarchy gets `cgroup.procs` as before. A v2 leaf
/// (no `tasks` file) comes as a [`Leaf`] instead and is not joined here.
pub(super) fn join_cgroup(procs: &[PathBuf]) -> Result<(), SetupFailure> {
    let failure = |file: &Path, e: std::io::Error| SetupFailure {
        step: "join_cgroup".into(),
        detail: format!("write to {}: {e}", file.display()),
        errno: e.raw_os_error(),
    };
    let alone = sys::single_threaded();
    for file in procs {
        if alone {
            let tasks = file.with_file_name("tasks");
            match write_existing(&tasks, b"0") {
                Ok(()) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(failure(&tasks, e)),
            }
        }
        write_existing(file, b"0").map_err(|e| failure(file, e))?;
    }
    Ok(())
}

/// Writes `data` to an existing file (cgroup files are never created).
fn write_existing(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(data)
}
