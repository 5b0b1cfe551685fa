//! Helper processes, and helpers started ahead of time ("warm").
//!
//! Starting a gear begins with a clone of the node into a new pid namespace and an exec of
//! `gearhost-init`, which then builds every part of the gear's root that is the same for all
//! gears (system binds, `/etc`, `/dev`, `/proc` and its masks) before it needs the gear's spec.
//! That is more than half of a start, and none of it depends on the gear, so a node can keep
//! a helper that has done all of it waiting for a spec: [`keep_warm`]. A start then takes the
//! waiting helper and only the gear's own steps remain on its path; a replacement is started
//! in the background. Without a warm helper (none configured, or taken by a concurrent start)
//! a start clones a fresh one and runs the same code in the same order.
//!
//! A waiting helper is pid 1 of an empty pid namespace, in private mount, uts and ipc
//! namespaces, in the node's cgroup, with every capability of the node and nothing of any gear.
//! It exits when the node exits (it polls the node's pidfd), and a node discards one whose
//! preparation failed: the failure is kept for [`warm_status`], and starts go on cold (where
//! the same failure, if it persists, is reported to the caller).

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::SandboxError;
use crate::protocol::{HelperMessage, PARENT_FD, REPORT_FD, SPEC_FD, TEMPLATE_FD};
use crate::sys;

/// How long a warm helper may take to prepare, in milliseconds.
const PREPARE_TIMEOUT_MS: u16 = 10_000;

/// A started `gearhost-init`, before it has a spec: pid 1 of its own pid namespace.
#[derive(Debug)]
pub(crate) struct Helper {
    pub(crate) pid: libc::pid_t,
    pub(crate) pidfd: OwnedFd,
    /// The node's end of the spec socket (fd 3 in the helper).
    pub(crate) spec: UnixStream,
    /// The reading end of the report pipe (fd 4 in the helper).
    pub(crate) report: File,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SandboxError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| SandboxError::Spawn {
        what: "create a pipe",
        source: e.into(),
    })
}

/// Duplicates `fd` to a close-on-exec descriptor numbered 10 or above, so the dup2 calls in
/// the cloned child never overwrite a source they still need.
pub(crate) fn high_dup(fd: BorrowedFd<'_>) -> Result<OwnedFd, SandboxError> {
    crate::sys::dup_at_least(fd, 10).map_err(|e| SandboxError::Spawn {
        what: "duplicate a descriptor",
        source: e,
    })
}

/// `/dev/null`, for reading and writing.
pub(crate) fn open_null() -> Result<File, SandboxError> {
    File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|source| SandboxError::Io {
            action: "open",
            path: PathBuf::from("/dev/null"),
            source,
            hint: "make sure /dev is mounted on the node",
        })
}

fn cstring(bytes: &[u8], what: &'static str) -> Result<CString, SandboxError> {
    CString::new(bytes).map_err(|_| SandboxError::Spawn {
        what,
        source: io::Error::new(io::ErrorKind::InvalidInput, "contains a NUL byte"),
    })
}

impl Helper {
    /// Clones `init` straight into a new pid namespace with its protocol descriptors
    /// (`/dev/null` as 0 to 2 until the gear's streams arrive with the spec).
    pub(crate) fn start(init: &Path) -> Result<Helper, SandboxError> {
        let path = cstring(init.as_os_str().as_bytes(), "encode the helper path")?;
        let arg0 = cstring(crate::launch::INIT_NAME.as_bytes(), "encode argv")?;
        let argv = [arg0.as_ptr(), std::ptr::null()];
        let envp = [std::ptr::null()];
        Self::start_with(sys::ChildProgram::Exec {
            path: &path,
            argv: &argv,
            envp: &envp,
        })
    }

    /// Like [`start`](Self::start), but the child is a copy of this process that runs the
    /// helper's code itself instead of executing `gearhost-init`: the exec, the dynamic
    /// loader's work and the runtime's start are saved, about 0.3 ms of a cold gear start.
    /// `None` when this process has more than one thread (see [`sys::ChildProgram::call`]).
    fn start_forked() -> Option<Result<Helper, SandboxError>> {
        let name = match cstring(
            crate::launch::INIT_NAME.as_bytes(),
            "encode the helper name",
        ) {
            Ok(name) => name,
            Err(e) => return Some(Err(e)),
        };
        let program = sys::ChildProgram::call(crate::helper::main, &name)?;
        Some(Self::start_with(program))
    }

    fn start_with(program: sys::ChildProgram<'_>) -> Result<Helper, SandboxError> {
        let null = high_dup(open_null()?.as_fd())?;
        let (spec, helper_spec) = UnixStream::pair().map_err(|e| SandboxError::Spawn {
            what: "create the spec socket",
            source: e,
        })?;
        let helper_spec = high_dup(helper_spec.as_fd())?;
        let (report_read, report_write) = pipe()?;
        let report_write = high_dup(report_write.as_fd())?;
        let own = sys::pidfd_open(std::process::id() as libc::pid_t).map_err(|source| {
            SandboxError::Spawn {
                what: "open a pidfd of the node",
                source,
            }
        })?;
        let node = high_dup(own.as_fd())?;
        drop(own);

        let template = template();
        let mut fds: Vec<(RawFd, RawFd)> = vec![
            (null.as_raw_fd(), 0),
            (null.as_raw_fd(), 1),
            (null.as_raw_fd(), 2),
            (helper_spec.as_raw_fd(), SPEC_FD),
            (report_write.as_raw_fd(), REPORT_FD),
            (node.as_raw_fd(), PARENT_FD),
        ];
        // the template's own descriptor is numbered below 10; its duplicate is not
        let template = template
            .filter(|_| !rootless())
            .map(|t| high_dup(t.as_fd()))
            .transpose()?;
        if let Some(t) = &template {
            fds.push((t.as_raw_fd(), TEMPLATE_FD));
        }
        let sync = if rootless() {
            let (wait, release) = pipe()?;
            Some((high_dup(wait.as_fd())?, release))
        } else {
            None
        };
        let plan = sys::ExecPlan {
            fds: &fds,
            program,
            userns_sync: sync.as_ref().map(|(wait, _)| wait.as_raw_fd()),
        };
        let (pid, pidfd) =
            sys::clone_into_new_pid_ns(&plan).map_err(|source| SandboxError::Spawn {
                what: "clone the gear's init into a new pid namespace",
                source,
            })?;
        if let Some((_, release)) = sync {
            let mapped = map_ids(pid);
            if let Err(e) = &mapped {
                let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
                let _ = sys::waitid_pidfd(pidfd.as_fd(), false);
                return Err(SandboxError::Spawn {
                    what: "map the caller's ids into the gear's user namespace",
                    source: io::Error::new(e.kind(), e.to_string()),
                });
            }
            // Lets the child go on (it exits if this never comes).
            let _ = nix::unistd::write(&release, &[1]);
        }
        Ok(Helper {
            pid,
            pidfd,
            spec,
            report: File::from(report_read),
        })
    }

    /// Whether the helper is still running (a warm one may have been killed while waiting).
    fn is_alive(&self) -> bool {
        let mut fds = [nix::poll::PollFd::new(
            self.pidfd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        matches!(
            nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO),
            Ok(0)
        )
    }

    /// Kills and reaps the helper.
    pub(crate) fn discard(self) {
        let _ = sys::pidfd_send_signal(self.pidfd.as_fd(), libc::SIGKILL);
        let _ = sys::waitid_pidfd(self.pidfd.as_fd(), false);
    }

    /// Reads the helper's first message: that the shared part of the root is ready, or why it
    /// could not be built.
    fn await_prepared(&mut self) -> Result<(), String> {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            // a helper that hangs while preparing is given up on, not waited for forever
            let mut fds = [nix::poll::PollFd::new(
                self.report.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            match nix::poll::poll(&mut fds, PREPARE_TIMEOUT_MS) {
                Ok(0) => return Err("gearhost-init did not finish preparing within 10 s".into()),
                Ok(_) | Err(nix::Error::EINTR) => {}
                Err(e) => return Err(format!("wait for gearhost-init: {e}")),
            }
            match self.report.read(&mut byte) {
                Ok(0) => return Err("gearhost-init exited while preparing".into()),
                Ok(_) if byte[0] == b'\n' => break,
                Ok(_) => line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read from gearhost-init: {e}")),
            }
        }
        match serde_json::from_slice::<HelperMessage>(&line) {
            Ok(HelperMessage::Prepared) => Ok(()),
            Ok(HelperMessage::Failed(f)) => Err(format!("{}: {}", f.step, f.detail)),
            Ok(other) => Err(format!("unexpected message {other:?}")),
            Err(e) => Err(format!("undecodable message: {e}")),
        }
    }
}

/// The mount namespace helpers make theirs from, once [`hide_from_helpers`] made one.
static TEMPLATE: Mutex<Option<std::sync::Arc<OwnedFd>>> = Mutex::new(None);

fn template() -> Option<std::sync::Arc<OwnedFd>> {
    gearhost_sys::lock::lock(&TEMPLATE).clone()
}

/// From now on, helpers (warm or cold) make their mount namespace from a copy of this
/// process's, taken now, in which every mount at or below `dirs` is detached, instead of from
/// this process's own.
///
/// A helper's `unshare` copies every mount of the namespace it starts from, holding the
/// kernel's mount lock for writing while it does, and gives them all back when it detaches the
/// old root. A node keeps a mount per gear (its network namespace's pin, see
/// [`crate::netns::prepare_pins`]): with ten thousand gears a copy took about 10 ms and
/// stalled every other mount operation of the node meanwhile. A helper takes what it needs of
/// the node as descriptors (see `protocol`) and builds the rest from system paths, so none of
/// those mounts is missed. The copy is made a slave of the node's mounts, so mounts that
/// propagate on the host (a systemd host shares `/`) still reach it; the pins, below a private
/// mount, never do. Does nothing for a rootless process (a helper in a user namespace of its
/// own may not enter it).
pub fn hide_from_helpers(dirs: &[PathBuf]) -> io::Result<()> {
    if rootless() {
        return Ok(());
    }
    let dirs = dirs.to_vec();
    let made = std::thread::Builder::new()
        .name("gearhost-mounts".into())
        .spawn(move || -> io::Result<OwnedFd> {
            // a thread shares its file system view with the process unless it unshares it
            nix::sched::unshare(
                nix::sched::CloneFlags::CLONE_FS | nix::sched::CloneFlags::CLONE_NEWNS,
            )
            .map_err(|e| io::Error::other(format!("make a mount namespace for helpers: {e}")))?;
            nix::mount::mount(
                None::<&str>,
                "/",
                None::<&str>,
                nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_SLAVE,
                None::<&str>,
            )
            .map_err(|e| io::Error::other(format!("make the helpers' mounts slaves: {e}")))?;
            let table = std::fs::read_to_string("/proc/thread-self/mountinfo")?;
            for point in outermost_below(&table, &dirs) {
                match nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH) {
                    Ok(()) | Err(nix::Error::EINVAL | nix::Error::ENOENT) => {}
                    Err(e) => {
                        return Err(io::Error::other(format!(
                            "detach {} from the helpers' mounts: {e}",
                            point.display()
                        )));
                    }
                }
            }
            Ok(File::open("/proc/thread-self/ns/mnt")?.into())
        })?
        .join()
        .map_err(|_| io::Error::other("the thread making the helpers' mounts panicked"))??;
    *gearhost_sys::lock::lock(&TEMPLATE) = Some(std::sync::Arc::new(made));
    Ok(())
}

/// The mount points of `mountinfo` at or below one of `dirs`, without those below another
/// one listed (detaching that one takes them along).
fn outermost_below(mountinfo: &str, dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(crate::cgroup::unescape_mountinfo(p)))
        .filter(|p| dirs.iter().any(|d| p.starts_with(d)))
        .collect();
    // sorted by component, a mount point's descendants follow it at once
    points.sort();
    points.dedup();
    let mut outermost: Vec<PathBuf> = Vec::new();
    for p in points {
        if !outermost.last().is_some_and(|o| p.starts_with(o)) {
            outermost.push(p);
        }
    }
    outermost
}

/// Whether this process starts gears rootless: it is not root, so each gear gets a user
/// namespace of its own where the caller's uid and gid are mapped to 0.
pub(crate) fn rootless() -> bool {
    !nix::unistd::geteuid().is_root()
}

/// Writes the user namespace maps of the freshly cloned `pid`: uid and gid 0 inside are the
/// caller's ids outside, and nothing else is mapped. An unprivileged process may write only
/// this one line per map, and only after refusing `setgroups` in the namespace.
fn map_ids(pid: libc::pid_t) -> io::Result<()> {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    std::fs::write(proc.join("setgroups"), "deny")?;
    std::fs::write(
        proc.join("uid_map"),
        format!("0 {} 1\n", nix::unistd::geteuid()),
    )?;
    std::fs::write(
        proc.join("gid_map"),
        format!("0 {} 1\n", nix::unistd::getegid()),
    )
}

/// The warm helpers kept for one `gearhost-init` path.
#[derive(Debug)]
struct Pool {
    init: PathBuf,
    target: usize,
    ready: Vec<Helper>,
    filling: usize,
    last_error: Option<String>,
}

static POOLS: Mutex<Vec<Pool>> = Mutex::new(Vec::new());
static CHANGED: Condvar = Condvar::new();

fn pools() -> MutexGuard<'static, Vec<Pool>> {
    // A panic elsewhere while holding the lock leaves plain data behind; keep using it.
    gearhost_sys::lock::lock(&POOLS)
}

/// Keeps `count` helpers of `init` prepared and waiting (0 stops keeping any and ends the
/// waiting ones). Returns at once; the helpers are started in the background.
pub fn keep_warm(init: &Path, count: usize) {
    // Rootless helpers are never prepared ahead (see `helper`).
    let count = if rootless() { 0 } else { count };
    let discarded = {
        let mut all = pools();
        let index = match all.iter().position(|p| p.init == init) {
            Some(i) => i,
            None => {
                all.push(Pool {
                    init: init.to_path_buf(),
                    target: 0,
                    ready: Vec::new(),
                    filling: 0,
                    last_error: None,
                });
                all.len() - 1
            }
        };
        let pool = &mut all[index];
        pool.target = count;
        pool.last_error = None;
        let extra = pool.ready.len().saturating_sub(count);
        pool.ready.drain(..extra).collect::<Vec<_>>()
    };
    for helper in discarded {
        helper.discard();
    }
    refill(init);
}

/// Waits up to `timeout` until every helper [`keep_warm`] asked for is prepared and none is
/// being prepared; false on timeout or when preparing failed (see [`warm_status`]).
pub fn wait_warm(init: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut all = pools();
    loop {
        match all.iter().find(|p| p.init == init) {
            None => return false,
            Some(p) if p.last_error.is_some() => return false,
            Some(p) if p.ready.len() >= p.target && p.filling == 0 => return true,
            Some(_) => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        all = CHANGED
            .wait_timeout(all, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// How many helpers of `init` are waiting, and why the last preparation failed, if it did.
pub fn warm_status(init: &Path) -> (usize, Option<String>) {
    pools()
        .iter()
        .find(|p| p.init == init)
        .map_or((0, None), |p| (p.ready.len(), p.last_error.clone()))
}

/// The helper [`start_forked_helper`] started, until a start takes it.
static FORKED: Mutex<Option<Helper>> = Mutex::new(None);

/// Starts the helper of this process's next gear now, as a copy of this process that runs the
/// helper's code without executing `gearhost-init` (no exec, no dynamic loader, no second
/// runtime start; ARCHITECTURE.md, "A one-gear command forks its helper"), so that it
/// prepares while the caller is still parsing its command line and making the gear's cgroup.
/// The next [`Sandbox::spawn`](crate::Sandbox::spawn) whose spec names no `init_path` takes it.
/// For a command-line tool that starts one gear, at the very beginning: it must be called
/// before anything is printed. Returns `false`, and starts nothing, when this process has
/// more than one thread (the copy could inherit a lock held by another) or when the start
/// fails (the gear's start then meets the same failure and reports it); an unused helper exits
/// with this process.
pub fn start_forked_helper() -> bool {
    match Helper::start_forked() {
        Some(Ok(helper)) => {
            if let Some(old) = gearhost_sys::lock::lock(&FORKED).replace(helper) {
                old.discard();
            }
            true
        }
        Some(Err(_)) | None => false,
    }
}

/// The helper [`start_forked_helper`] started, if it is still there.
pub(crate) fn take_forked() -> Option<Helper> {
    let helper = gearhost_sys::lock::lock(&FORKED).take()?;
    if helper.is_alive() {
        return Some(helper);
    }
    helper.discard();
    None
}

/// The helper for a start: the one this process forked ahead ([`start_forked_helper`]) when the
/// spec asks for no particular `gearhost-init` (`init_path`), else a waiting one of that init,
/// else a fresh one.
pub(crate) fn helper_for(init_path: Option<&Path>) -> Result<Helper, SandboxError> {
    match take_forked() {
        Some(forked) if init_path.is_none() => return Ok(forked),
        Some(unwanted) => unwanted.discard(),
        None => {}
    }
    let init = crate::launch::find_init(init_path)?;
    match take(&init) {
        Some(helper) => Ok(helper),
        None => Helper::start(&init),
    }
}

/// Takes a prepared helper of `init`, if one is waiting, and starts its replacement.
pub(crate) fn take(init: &Path) -> Option<Helper> {
    if rootless() {
        // A rootless helper must see its spec before it prepares (see `helper`).
        return None;
    }
    loop {
        let helper = {
            let mut all = pools();
            let pool = all.iter_mut().find(|p| p.init == init)?;
            pool.ready.pop()
        };
        refill(init);
        let helper = helper?;
        if helper.is_alive() {
            return Some(helper);
        }
        helper.discard();
    }
}

/// Starts helpers in the background until the pool of `init` holds its target.
fn refill(init: &Path) {
    let wanted = {
        let mut all = pools();
        let Some(pool) = all.iter_mut().find(|p| p.init == init) else {
            return;
        };
        if pool.last_error.is_some() {
            return;
        }
        let wanted = pool.target.saturating_sub(pool.ready.len() + pool.filling);
        pool.filling += wanted;
        wanted
    };
    for _ in 0..wanted {
        let owned = init.to_path_buf();
        let started = std::thread::Builder::new()
            .name("gearhost-warm".into())
            .spawn(move || fill_one(&owned));
        if started.is_err() {
            finish_filling(
                init,
                None,
                Some("could not start a thread to prepare a warm helper"),
            );
        }
    }
}

fn fill_one(init: &Path) {
    let outcome = Helper::start(init)
        .map_err(|e| e.to_string())
        .and_then(|mut h| match h.await_prepared() {
            Ok(()) => Ok(h),
            Err(e) => {
                h.discard();
                Err(e)
            }
        });
    match outcome {
        Ok(helper) => finish_filling(init, Some(helper), None),
        Err(e) => finish_filling(init, None, Some(&e)),
    }
}

fn finish_filling(init: &Path, helper: Option<Helper>, error: Option<&str>) {
    let leftover = {
        let mut all = pools();
        match all.iter_mut().find(|p| p.init == init) {
            Some(pool) => {
                pool.filling = pool.filling.saturating_sub(1);
                if let Some(e) = error {
                    pool.last_error = Some(e.to_string());
                }
                match helper {
                    Some(h) if pool.ready.len() < pool.target => {
                        pool.ready.push(h);
                        None
                    }
                    other => other,
                }
            }
            None => helper,
        }
    };
    CHANGED.notify_all();
    if let Some(h) = leftover {
        h.discard();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_helper_is_forked_from_a_process_with_threads() {
        // the test harness runs each test on a thread of its own, beside its main thread
        assert!(!sys::single_threaded());
        assert!(!start_forked_helper());
        assert!(take_forked().is_none());
    }

    #[test]
    fn only_the_outermost_mounts_below_the_hidden_directories_are_detached() {
        let table = "\
22 1 8:1 / / rw shared:1 - ext4 /dev/vda rw
30 22 0:5 / /var/lib/gh rw - ext4 /dev/vdb rw
31 30 0:6 / /var/lib/gh/netns rw - ext4 /dev/vdb rw
32 31 0:4 net:[1] /var/lib/gh/netns/a rw - nsfs nsfs rw
33 31 0:4 net:[2] /var/lib/gh/netns/b rw - nsfs nsfs rw
34 22 0:7 / /var/lib/gh\\040b rw - tmpfs tmpfs rw
35 22 0:8 / /srv/roots rw - tmpfs tmpfs rw
36 35 0:9 / /srv/roots/x rw - overlay overlay rw
37 22 0:10 / /srv/rootsy rw - tmpfs tmpfs rw
38 22 0:11 / /proc rw - proc proc rw
";
        let hidden = [PathBuf::from("/var/lib/gh"), PathBuf::from("/srv/roots")];
        assert_eq!(
            outermost_below(table, &hidden),
            [PathBuf::from("/srv/roots"), PathBuf::from("/var/lib/gh")],
            "a sibling whose name only starts the same (/var/lib/gh b, /srv/rootsy) stays"
        );
        // a hidden directory that is a mount point itself goes whole, its pins with it
        let hidden = [PathBuf::from("/var/lib/gh/netns/")];
        assert_eq!(outermost_below(table, &hidden).len(), 1);
        assert!(outermost_below(table, &[PathBuf::from("/nothing")]).is_empty());
    }
}
