//! The body of `gearhost-init`: pid 1 of a gear's pid namespace. It builds the gear's world in
//! a fixed sequence of steps, forks the gear command as pid 2, and then stays a tiny init that
//! forwards signals to the command, reaps orphans and exits with the command's status.
//!
//! Sequence (each step its own function; a failure is reported to the node as a
//! [`SetupFailure`] naming the step):
//!
//! Before the spec — the same for every gear, so a warm helper does it ahead of time:
//!
//! 1. `unshare_early`: mount, uts and ipc namespaces;
//! 2. `rootfs::open_system` then `rootfs::prepare`: the shared part of the root at the staging
//!    path (system, shared `/etc` files, `/dev`, `/proc` and its masks);
//! 3. compile the seccomp filter;
//! 4. `receive_spec` from fd 3, with the gear's descriptors (waiting, and exiting with the
//!    node, when warm).
//!
//! With the spec:
//!
//! 5. `install_stdio`, then `join_cgroup`: write its own pid into the gear's cgroup on every
//!    hierarchy (v1; on v2 the command is cloned into its leaf at step 9 instead, see
//!    `helper/join.rs`);
//! 6. `join_netns` or `unshare_late`: cgroup (v1; on v2 the command makes its own) and
//!    (isolated mode) network namespaces;
//! 7. `set_hostname`, `bring_loopback_up`;
//! 8. `rootfs::finish_and_pivot`: identity files, home and binds, `/tmp`, `/dev/shm`, pivot;
//! 9. block the forwarded signals, fork (on v2 straight into the gear's leaf; on this CPU, see
//!    `helper/placement.rs`); in the child (`run_gear`): its affinity back, its cgroup
//!    namespace (v2), credentials, rlimits, cwd, SELinux exec label, Landlock, close-on-exec
//!    for every descriptor above 2, seccomp (last, so the setup calls above are not
//!    filtered), report, exec;
//! 10. in pid 1 (`supervise`), moved to another CPU first: on v2 follow the command into its
//!     leaf, drop privileges the same way, hold the kept output pipes at their fixed
//!     descriptors (a detached gear's), and loop on a signalfd and the node's pidfd (not
//!     watched when detached).

use std::convert::Infallible;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

use crate::protocol::{
    HelperMessage, HelperSpec, MAX_SPEC_BYTES, MAX_SPEC_FDS, PARENT_FD, REPORT_FD, SPEC_FD,
    SetupFailure, SpecFds, TEMPLATE_FD,
};
use crate::report::{FilesystemReport, LayerReport, NamespaceReport, SeccompReport};
use crate::selinux::SelinuxReport;
use crate::spec::NetworkMode;
use crate::{confine, rootfs, seccomp, sys};
use gearhost_sys::fdpass;

mod join;
mod placement;

use placement::CommandPlacement;

/// Signals pid 1 passes on to the gear command.
pub(crate) const FORWARDED: &[Signal] = &[
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

fn fail(step: &str, detail: impl Into<String>, err: nix::Error) -> SetupFailure {
    SetupFailure {
        step: step.to_string(),
        detail: format!("{}: {}", detail.into(), err.desc()),
        errno: Some(err as i32),
    }
}

/// Entry point of the `gearhost-init` binary. Never returns.
pub fn main() -> ! {
    // SAFETY: the node hands the helper its report pipe as fd 4 (see `protocol`); nothing else
    // in this process owns it.
    let mut report = unsafe { File::from_raw_fd(REPORT_FD) };
    let failure = match run(&mut report) {
        Ok(never) => match never {},
        Err(f) => f,
    };
    send(&mut report, &HelperMessage::Failed(failure));
    std::process::exit(1)
}

fn send(report: &mut File, message: &HelperMessage) {
    if let Ok(mut line) = serde_json::to_vec(message) {
        line.push(b'\n');
        // If the node is gone there is nobody to tell.
        let _ = report.write_all(&line);
    }
}

fn run(report: &mut File) -> Result<Infallible, SetupFailure> {
    // SAFETY: fd 5 is the node's pidfd (see `protocol`); nothing else in this process owns it.
    let node = unsafe { OwnedFd::from_raw_fd(PARENT_FD) };
    unshare_early()?;
    // Rootless, the node's mounts cannot be handed over as detached trees (that needs
    // privilege over the node's mount namespace), so this helper takes its spec first and finds
    // the same files in its own copy of the mounts before the staging root hides any of them.
    // A rootless node keeps no warm helpers, so nothing waits on this order.
    let early = if in_user_namespace() {
        let (hs, fds, sock) = receive_spec(&node)?;
        Some((hs, adopt_sources(fds)?, sock))
    } else {
        None
    };
    let prepared = rootfs::prepare(rootfs::open_system()?)?;
    let filter = seccomp::build().map_err(|e| SetupFailure {
        step: "seccomp".into(),
        detail: format!("build the filter: {e}"),
        errno: None,
    })?;

    let (hs, fds, sock) = match early {
        Some(spec) => spec,
        None => {
            send(report, &HelperMessage::Prepared);
            receive_spec(&node)?
        }
    };
    let node = hs.watch_parent.then_some(node);
    let kept: Vec<(OwnedFd, i32)> = fds.kept.into_iter().zip(hs.kept.iter().copied()).collect();
    install_stdio(fds.stdio)?;
    // v2: the leaf comes as a descriptor and the command is cloned into it (see `join`)
    let mut leaf = join::Leaf::new(fds.cgroup, &hs.cgroup_procs);
    if leaf.is_none() {
        join::join_cgroup(&hs.cgroup_procs)?;
    }
    let joined = match fds.netns {
        Some(ns) => join_netns(ns, hs.spec.netns.as_deref())?,
        None => false,
    };
    // with a namespace of its own joined, there is none left to make here
    let network = if joined {
        NetworkMode::Host
    } else {
        hs.spec.network
    };
    let mut unshared = unshare_late(network, leaf.is_none())?;
    if hs.rootless {
        unshared.push("user".into());
    }
    if joined {
        unshared.push(
            if hs.fresh_netns {
                "net"
            } else {
                "net (the gear's)"
            }
            .into(),
        );
    }
    set_hostname(&hs.spec.hostname)?;
    let loopback_up = joined || bring_loopback_up(network)?;
    let namespaces = NamespaceReport {
        unshared,
        hostname: hs.spec.hostname.clone(),
        network: hs.spec.network,
        loopback_up,
        nested_userns: "seccomp refuses unshare, setns and clone with namespace flags (EPERM) and clone3 (ENOSYS)".into(),
        user: hs.rootless.then(|| {
            format!(
                "user namespace: uid and gid 0 inside are {} and {} outside, nothing else is mapped",
                hs.spec.uid, hs.spec.gid
            )
        }),
    };
    // each bind's descriptor with the target the spec gives it
    let with_targets = |sources: Vec<(OwnedFd, bool)>, binds: &[(PathBuf, bool)]| {
        sources
            .into_iter()
            .zip(binds)
            .map(|((fd, dir), (target, _))| (fd, target.clone(), dir))
            .collect()
    };
    let gear = rootfs::GearSources {
        home: fds.home,
        root: fds.root,
        ro: with_targets(fds.ro, &hs.ro_binds),
        rw: with_targets(fds.rw, &hs.rw_binds),
    };
    let filesystem = rootfs::finish_and_pivot(prepared, &hs, gear)?;
    let terminal = if hs.terminal {
        Some(make_terminal(&hs, &sock)?)
    } else {
        None
    };
    drop(sock);

    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    for s in FORWARDED {
        mask.add(*s);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)
        .map_err(|e| fail("signals", "block forwarded signals", e))?;

    let placement = CommandPlacement::here();
    // SAFETY: this process is single-threaded (the helper never starts threads), so the child
    // may do anything after fork.
    let forked = unsafe { join::fork_command(leaf.as_mut()) }.inspect_err(|_| placement.restore());
    match forked? {
        ForkResult::Child => {
            placement.restore();
            let confined = join::own_namespace(leaf)
                .and_then(|()| run_gear(&hs, namespaces, filesystem, &filter, report, terminal));
            let failure = match confined {
                Ok(never) => match never {},
                Err(f) => f,
            };
            send(report, &HelperMessage::Failed(failure));
            // SAFETY: _exit ends this child at once without running the parent's atexit state.
            unsafe { libc::_exit(1) }
        }
        ForkResult::Parent { child } => {
            placement.step_aside();
            drop(terminal);
            supervise(child, &hs, node, kept, (mask, &filter), leaf)
        }
    }
}

/// Waits for the spec on fd 3 — for as long as the node lives, when this helper was started
/// ahead of time — and takes the descriptors that come with it.
fn receive_spec(
    node: &OwnedFd,
) -> Result<(HelperSpec, SpecFds<OwnedFd>, UnixStream), SetupFailure> {
    let failed = |detail: String, errno: Option<i32>| SetupFailure {
        step: "read_spec".into(),
        detail,
        errno,
    };
    // SAFETY: the node hands the helper the spec socket as fd 3; nothing else owns it.
    let sock = UnixStream::from(unsafe { OwnedFd::from_raw_fd(SPEC_FD) });
    loop {
        let mut fds = [
            PollFd::new(sock.as_fd(), PollFlags::POLLIN),
            PollFd::new(node.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(fail("read_spec", "wait for the spec", e)),
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            // The node is gone before it had a gear for this helper: nothing to report.
            std::process::exit(0);
        }
        if fds[0].revents().is_some_and(|r| !r.is_empty()) {
            break;
        }
    }
    let mut text = vec![0u8; 64 << 10];
    let (n, descriptors) =
        fdpass::recv_with_fds_max(&sock, &mut text, MAX_SPEC_FDS).map_err(|e| {
            failed(
                format!("receive the spec on fd {SPEC_FD}: {e}"),
                e.raw_os_error(),
            )
        })?;
    text.truncate(n);
    if n == 0 {
        // The node closed the socket without a spec (it discarded this helper).
        std::process::exit(0);
    }
    (&sock)
        .take(MAX_SPEC_BYTES as u64)
        .read_to_end(&mut text)
        .map_err(|e| {
            failed(
                format!("read the spec on fd {SPEC_FD}: {e}"),
                e.raw_os_error(),
            )
        })?;
    let hs: HelperSpec = serde_json::from_slice(&text).map_err(|e| {
        failed(
            format!("parse the spec (node and gearhost-init from different builds?): {e}"),
            None,
        )
    })?;
    let ro: Vec<bool> = hs.ro_binds.iter().map(|(_, dir)| *dir).collect();
    let rw: Vec<bool> = hs.rw_binds.iter().map(|(_, dir)| *dir).collect();
    let fds = SpecFds::from_vec(
        descriptors,
        hs.spec.netns.is_some() || hs.fresh_netns,
        hs.spec.root.is_some(),
        hs.cgroup_fd,
        &ro,
        &rw,
        hs.kept.len(),
    )
    .map_err(|detail| failed(detail, None))?;
    Ok((hs, fds, sock))
}

/// Whether this helper runs in a user namespace of its own (rootless mode): its uid map is
/// not the whole identity range of the host.
fn in_user_namespace() -> bool {
    std::fs::read_to_string("/proc/self/uid_map")
        .map(|m| m.split_whitespace().nth(2) != Some("4294967295"))
        .unwrap_or(false)
}

/// Rootless mode: replaces each source the node sent (a plain descriptor of the node's mount
/// namespace) with a detached clone made in this helper's own namespace, from the same path,
/// checked to be the same file, opened without following symlinks.
fn adopt_sources(fds: SpecFds<OwnedFd>) -> Result<SpecFds<OwnedFd>, SetupFailure> {
    let adopt = |fd: OwnedFd| -> Result<OwnedFd, SetupFailure> {
        let link = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
        let path = std::fs::read_link(&link).map_err(|e| SetupFailure {
            step: "open_bind_source".into(),
            detail: format!("find the path of a bind source: {e}"),
            errno: e.raw_os_error(),
        })?;
        let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))
            .map_err(|_| SetupFailure {
                step: "open_bind_source".into(),
                detail: format!("{} contains a NUL byte", path.display()),
                errno: None,
            })?;
        let own = sys::openat2_path(
            None,
            &c,
            sys::RESOLVE_NO_SYMLINKS | sys::RESOLVE_NO_MAGICLINKS,
        )
        .map_err(|e| SetupFailure {
            step: "open_bind_source".into(),
            detail: format!("open {} without following symlinks: {e}", path.display()),
            errno: e.raw_os_error(),
        })?;
        let same = |a: &OwnedFd| nix::sys::stat::fstat(a.as_fd()).map(|st| (st.st_dev, st.st_ino));
        if same(&fd).ok() != same(&own).ok() {
            return Err(SetupFailure {
                step: "open_bind_source".into(),
                detail: format!("{} changed while the gear was starting", path.display()),
                errno: None,
            });
        }
        sys::open_tree_clone(own.as_fd()).map_err(|e| SetupFailure {
            step: "open_bind_source".into(),
            detail: format!("clone {} into a detached mount: {e}", path.display()),
            errno: e.raw_os_error(),
        })
    };
    let adopt_all = |sources: Vec<(OwnedFd, bool)>| {
        sources
            .into_iter()
            .map(|(fd, dir)| Ok((adopt(fd)?, dir)))
            .collect::<Result<Vec<_>, SetupFailure>>()
    };
    Ok(SpecFds {
        stdio: fds.stdio,
        home: adopt(fds.home)?,
        netns: fds.netns,
        root: fds.root.map(adopt).transpose()?,
        cgroup: fds.cgroup,
        ro: adopt_all(fds.ro)?,
        rw: adopt_all(fds.rw)?,
        kept: fds.kept,
    })
}

/// Makes a pseudo-terminal in the gear's own `/dev/pts` (the helper has pivoted), hands the
/// terminal side to the gear's user, and sends the controlling side to the node on `sock`.
/// Returns the terminal side, for the command.
fn make_terminal(hs: &HelperSpec, sock: &UnixStream) -> Result<OwnedFd, SetupFailure> {
    use std::os::fd::AsRawFd;
    let master = nix::fcntl::open(
        "/dev/ptmx",
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| fail("terminal", "open /dev/ptmx in the gear", e))?;
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int from the pointer, which lives for the call.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } < 0 {
        return Err(fail("terminal", "unlock the terminal", nix::Error::last()));
    }
    // SAFETY: TIOCGPTPEER takes open flags and returns a new descriptor of the terminal side.
    let peer = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if peer < 0 {
        return Err(fail(
            "terminal",
            "open the terminal side",
            nix::Error::last(),
        ));
    }
    // SAFETY: the ioctl returned a fresh descriptor that only we own.
    let peer = unsafe { OwnedFd::from_raw_fd(peer) };
    let (uid, gid) = hs.ids();
    nix::unistd::fchown(
        &peer,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .map_err(|e| fail("terminal", "give the terminal to the gear's user", e))?;
    nix::sys::stat::fchmod(&peer, nix::sys::stat::Mode::from_bits_truncate(0o620))
        .map_err(|e| fail("terminal", "set the terminal's mode", e))?;
    fdpass::send_with_fds(sock, b"t", &[master.as_fd()]).map_err(|e| SetupFailure {
        step: "terminal".into(),
        detail: format!("send the terminal to the node: {e}"),
        errno: e.raw_os_error(),
    })?;
    Ok(peer)
}

/// In the command's process: a session of its own with `terminal` as its controlling
/// terminal and standard streams.
fn take_terminal(terminal: OwnedFd) -> Result<(), SetupFailure> {
    use std::os::fd::AsRawFd;
    nix::unistd::setsid().map_err(|e| fail("terminal", "start a session", e))?;
    // SAFETY: TIOCSCTTY takes an int argument (0: do not steal); the descriptor is ours.
    if unsafe { libc::ioctl(terminal.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
        return Err(fail(
            "terminal",
            "make the terminal the controlling one",
            nix::Error::last(),
        ));
    }
    for target in 0..3 {
        // SAFETY: dup2 onto a standard descriptor; `terminal` stays open for the call.
        if unsafe { libc::dup2(terminal.as_raw_fd(), target) } < 0 {
            return Err(fail("terminal", "install the terminal", nix::Error::last()));
        }
    }
    Ok(())
}

/// Puts the gear's standard streams on descriptors 0 to 2.
fn install_stdio(stdio: [OwnedFd; 3]) -> Result<(), SetupFailure> {
    for (target, fd) in stdio.iter().enumerate() {
        // SAFETY: dup2 onto a standard descriptor, which this process holds only as a
        // placeholder (/dev/null from the node); `fd` stays open for the call.
        let ret = unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(fd), target as i32) };
        if ret < 0 {
            return Err(fail(
                "stdio",
                format!("install descriptor {target}"),
                nix::Error::last(),
            ));
        }
    }
    Ok(())
}

/// Gives the helper its own mount, uts and ipc namespaces; the pid namespace was created by
/// the node's clone. Nothing here depends on the gear. The mount namespace is a copy of the
/// one the node gave on [`TEMPLATE_FD`] (the node's own without its many gear mounts, see
/// [`crate::warm::hide_from_helpers`]), or else of the node's.
fn unshare_early() -> Result<(), SetupFailure> {
    // SAFETY: F_GETFD only reads the descriptor's flags; a closed number gives EBADF.
    if unsafe { libc::fcntl(TEMPLATE_FD, libc::F_GETFD) } >= 0 {
        // SAFETY: fd 6 is the node's mount namespace template when open (see `protocol`);
        // nothing else in this process owns it.
        let template = unsafe { OwnedFd::from_raw_fd(TEMPLATE_FD) };
        nix::sched::setns(template, CloneFlags::CLONE_NEWNS)
            .map_err(|e| fail("unshare", "enter the node's mount namespace for helpers", e))?;
    }
    let flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC;
    unshare(flags).map_err(|e| fail("unshare", "create the gear's namespaces", e))
}

/// Gives the gear its cgroup namespace (after joining the gear's cgroup, so that is its root)
/// when `cgroup_ns` (v1; on v2 the helper is not in the leaf yet, and the command makes its
/// own once it starts there, see [`join`]) and, in isolated mode, its own network namespace.
/// Returns every namespace the gear has.
fn unshare_late(network: NetworkMode, cgroup_ns: bool) -> Result<Vec<String>, SetupFailure> {
    let mut flags = CloneFlags::empty();
    if cgroup_ns {
        flags |= CloneFlags::CLONE_NEWCGROUP;
    }
    let mut names = vec!["pid", "mnt", "uts", "ipc", "cgroup"];
    if network == NetworkMode::Isolated {
        flags |= CloneFlags::CLONE_NEWNET;
        names.push("net");
    }
    unshare(flags).map_err(|e| fail("unshare", "create the gear's namespaces", e))?;
    Ok(names.into_iter().map(String::from).collect())
}

/// Enters the gear's own network namespace (opened by the node).
fn join_netns(ns: OwnedFd, path: Option<&std::path::Path>) -> Result<bool, SetupFailure> {
    let shown = path.map_or_else(|| "of the gear".to_string(), |p| p.display().to_string());
    nix::sched::setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
        .map_err(|e| fail("netns", format!("join the network namespace {shown}"), e))?;
    Ok(true)
}

fn set_hostname(name: &str) -> Result<(), SetupFailure> {
    nix::unistd::sethostname(name).map_err(|e| fail("hostname", format!("set hostname {name}"), e))
}

fn bring_loopback_up(network: NetworkMode) -> Result<bool, SetupFailure> {
    if network != NetworkMode::Isolated {
        return Ok(false);
    }
    sys::loopback_up().map_err(|e| SetupFailure {
        step: "loopback".into(),
        detail: format!("bring lo up: {e}"),
        errno: e.raw_os_error(),
    })?;
    Ok(true)
}

/// Paths the gear may write: its home, /tmp, its read-write binds, and a few devices.
fn writable_paths(hs: &HelperSpec) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut dirs = vec![
        hs.spec.home_target.clone(),
        PathBuf::from("/tmp"),
        PathBuf::from("/dev/pts"),
    ];
    dirs.extend(hs.rw_binds.iter().map(|(target, _)| target.clone()));
    if hs.spec.root.is_some() {
        // an image's root is the gear's writable layer: every directory at its top but the
        // kernel's (a symlink there is not followed: what it names is listed itself)
        // (at most a few hundred: each is a rule and a descriptor while the ruleset is made)
        for entry in std::fs::read_dir("/")
            .into_iter()
            .flatten()
            .flatten()
            .take(512)
        {
            let name = entry.file_name();
            let kernel = ["proc", "dev", "sys"].iter().any(|k| name == *k);
            if !kernel && entry.file_type().is_ok_and(|t| t.is_dir()) {
                let path = Path::new("/").join(&name);
                if !dirs.contains(&path) {
                    dirs.push(path);
                }
            }
        }
    }
    let files = ["/dev/null", "/dev/zero", "/dev/full", "/dev/tty"]
        .iter()
        .map(PathBuf::from)
        .collect();
    (dirs, files)
}

/// Pid 2: confine this process and execute the gear command.
fn run_gear(
    hs: &HelperSpec,
    namespaces: NamespaceReport,
    filesystem: FilesystemReport,
    filter: &seccomp::GearFilter,
    report: &mut File,
    terminal: Option<OwnedFd>,
) -> Result<Infallible, SetupFailure> {
    let spec = &hs.spec;
    if let Some(terminal) = terminal {
        take_terminal(terminal)?;
    }
    // Handlers never reach the command; restore default dispositions (SIGPIPE included).
    for sig in Signal::iterator() {
        if sig != Signal::SIGKILL && sig != Signal::SIGSTOP {
            // SAFETY: installing SIG_DFL is always sound; no handler code is involved.
            let _ = unsafe { nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigDfl) };
        }
    }
    let (uid, gid) = hs.ids();
    // In an image's root the gear's uid is one the image never heard of: like OpenShift, it
    // belongs to the root group, so whatever the image made group-writable for root (the
    // convention for images that run as any user) it may write. Only the image's files and
    // the kernel's own are in its view; the host's files never are.
    let groups: &[u32] = if spec.root.is_some() { &[0] } else { &[] };
    let dropped = confine::drop_credentials(uid, gid, groups, hs.rootless)?;
    let rlimits = confine::apply_rlimits(&spec.limits.rlimits)?;
    let cwd = spec.effective_cwd();
    nix::unistd::chdir(cwd)
        .map_err(|e| fail("cwd", format!("enter {} as uid {uid}", cwd.display()), e))?;
    let selinux = match &hs.exec_label {
        Some(label) => {
            crate::selinux::set_exec_label(label).map_err(|detail| SetupFailure {
                step: "selinux".into(),
                detail,
                errno: None,
            })?;
            SelinuxReport::Applied {
                label: label.clone(),
            }
        }
        None => SelinuxReport::NotEnabled,
    };
    let (dirs, files) = writable_paths(hs);
    let landlock = confine::apply_landlock(&dirs, &files)?;
    sys::cloexec_from(3).map_err(|e| SetupFailure {
        step: "close_fds".into(),
        detail: format!("mark descriptors close-on-exec: {e}"),
        errno: e.raw_os_error(),
    })?;
    let credentials = confine::read_credentials(dropped)?;
    seccomp::apply(filter).map_err(|e| SetupFailure {
        step: "seccomp".into(),
        detail: format!("install the filter: {e}"),
        errno: e.raw_os_error(),
    })?;
    let layers = LayerReport {
        namespaces,
        filesystem,
        credentials,
        seccomp: SeccompReport {
            installed: true,
            rules: filter.rules,
            default_action: "allow".into(),
            deny_action: "errno EPERM (clone3 and foreign syscall ABIs: ENOSYS)".into(),
        },
        landlock,
        selinux,
        cgroup: None,
        rlimits,
        dies_with_parent: hs.watch_parent,
    };
    send(report, &HelperMessage::Ready(Box::new(layers)));

    let mut command = std::process::Command::new(&spec.argv[0]);
    command
        .args(&spec.argv[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)));
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    let err = command.exec();
    send(
        report,
        &HelperMessage::ExecFailed {
            program: spec.argv[0].clone(),
            errno: err.raw_os_error().unwrap_or(0),
        },
    );
    // SAFETY: _exit ends the child immediately.
    unsafe { libc::_exit(127) }
}

/// Pid 1 after the fork: follow the command into its v2 `leaf`, drop privileges, then forward
/// signals and reap until the command exits, or until the node dies (unless detached). `kept`
/// are reading ends of the command's output pipes to hold, never read, at the given descriptor
/// numbers, so the pipes keep a reader while no node runs (a later node takes copies with
/// `pidfd_getfd`).
fn supervise(
    child: Pid,
    hs: &HelperSpec,
    parent: Option<OwnedFd>,
    kept: Vec<(OwnedFd, i32)>,
    (mask, filter): (SigSet, &seccomp::GearFilter),
    leaf: Option<join::Leaf>,
) -> ! {
    // SAFETY: fd 4 is the report pipe (owned by the `File` in `main`, which never runs its
    // destructor because this function never returns); closing it here ends our copy, so the
    // node's read ends when the command executes.
    unsafe { libc::close(REPORT_FD) };
    // Off the start's path now (the node has the command's report once it executes): the move
    // into the leaf may wait for the kernel's grace period without delaying the start.
    if let Some(leaf) = leaf
        && let Err(f) = join::follow(leaf)
    {
        // the gear's stderr is still this process's: the reason goes to the gear's log
        let _ = writeln!(
            std::io::stderr(),
            "gearhost-init: {} failed: {}; the gear was stopped",
            f.step,
            f.detail
        );
        let _ = kill(child, Signal::SIGKILL);
        std::process::exit(125);
    }
    // Stop holding the gear's stdio open.
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        for target in 0..3 {
            // SAFETY: dup2 onto the standard descriptors; `null` stays open for the call.
            unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), target) };
        }
    }
    for (fd, at) in kept {
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        if raw == at {
            // already in place: keep it open for the life of this process
            std::mem::forget(fd);
            continue;
        }
        // SAFETY: dup2 onto a number this process does not use otherwise (see
        // `protocol::KEPT_STDOUT_FD`); `fd` stays open for the call and is closed after it.
        if unsafe { libc::dup2(raw, at) } < 0 {
            // without the copy the pipe has no reader while no node runs, and the node
            // cannot take the gear back: do not start it at all
            let _ = kill(child, Signal::SIGKILL);
            std::process::exit(125);
        }
    }

    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC);
    // Pid 1 keeps no privilege it does not need: it only waits, polls and sends signals.
    // It runs under the gear's label too (before Landlock takes /proc away from it), so no
    // process of the gear stays in the node's domain.
    let (uid, gid) = hs.ids();
    let locked = confine::drop_credentials(uid, gid, &[], hs.rootless)
        .and_then(|_| match &hs.exec_label {
            Some(label) => {
                crate::selinux::set_current_label(label).map_err(|detail| SetupFailure {
                    step: "selinux".into(),
                    detail,
                    errno: None,
                })
            }
            None => Ok(()),
        })
        .and_then(|()| {
            nix::sys::prctl::set_dumpable(false)
                .map_err(|e| fail("init", "make init non-dumpable", e))
        })
        .and_then(|()| confine::lock_down_init())
        .and_then(|()| {
            seccomp::apply(filter).map_err(|e| SetupFailure {
                step: "seccomp".into(),
                detail: format!("install the filter: {e}"),
                errno: e.raw_os_error(),
            })
        });
    let Ok(sfd) = sfd else {
        let _ = kill(child, Signal::SIGKILL);
        std::process::exit(125);
    };
    if locked.is_err() {
        // Never keep running privileged next to the gear.
        let _ = kill(child, Signal::SIGKILL);
        std::process::exit(125);
    }
    loop {
        let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        if let Some(p) = &parent {
            fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(_) => std::process::exit(125),
        }
        let parent_gone = fds
            .get(1)
            .and_then(|f| f.revents())
            .is_some_and(|r| !r.is_empty());
        if parent_gone {
            // Exiting as pid 1 makes the kernel kill every process of the gear.
            std::process::exit(137);
        }
        while let Ok(Some(info)) = sfd.read_signal() {
            let signo = info.ssi_signo as i32;
            if signo == libc::SIGCHLD {
                reap(child);
            } else if let Ok(sig) = Signal::try_from(signo) {
                let _ = kill(child, sig);
            }
        }
    }
}

/// Reaps every exited process; exits with the command's status once it is among them.
fn reap(child: Pid) {
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == child => std::process::exit(code),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => {
                std::process::exit(128 + sig as i32)
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
